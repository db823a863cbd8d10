//! Step 0 of AGP: a short item summary written by `p_sum` from raw metadata.

use std::collections::BTreeMap;

use super::prompt::{PromptName, render};
use crate::llm::{CallContext, ChatRequest, LlmClient, LlmError, Message, Role};

/// The raw metadata text of an item: title, then text, then attributes, on one line each.
pub fn item_text(
    title: &str,
    text: Option<&str>,
    attributes: Option<&serde_json::Value>,
) -> String {
    let mut s = title.trim().to_string();
    if let Some(t) = text.map(str::trim).filter(|t| !t.is_empty()) {
        s.push_str(" | ");
        s.push_str(t);
    }
    if let Some(serde_json::Value::Object(map)) = attributes {
        for (k, v) in map {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            s.push_str(&format!(" | {k}: {v}"));
        }
    }
    s
}

/// Summarizes one item with `template` (a `p_sum` version).
pub async fn summarize(
    llm: &LlmClient,
    template: &str,
    item: &str,
    ctx: &CallContext,
) -> Result<String, LlmError> {
    let mut vars = BTreeMap::new();
    vars.insert("item", item.to_string());
    let mut req = ChatRequest::new(vec![
        Message::system(PromptName::PSum.system()),
        Message::user(render(template, &vars)),
    ]);
    req.max_tokens = Some(96);
    let resp = llm.chat(Role::Summarize, &req, ctx).await?;
    let s = resp.content.trim().to_string();
    if s.is_empty() {
        return Err(LlmError::Garbage("empty summary".into()));
    }
    Ok(s)
}

/// The background catalog job (`summarize_catalog`): summarizes every item of the project
/// that has no summary yet for the production `p_sum` and the summarize model, in chunks,
/// saving its position after each chunk. Returns a small report.
pub async fn run_catalog_job(
    ctx: &crate::jobs::JobContext,
) -> Result<crate::eval::report::Report, crate::jobs::JobError> {
    use crate::jobs::JobError;
    const CHUNK: usize = 50;
    let project = ctx.project().to_string();
    let ids = crate::store::catalog::item_ids(&ctx.pool, &project).await?;
    let prod = crate::rerank::PromptSelector::Label(crate::store::prompts::PRODUCTION.into());
    let sum = ctx
        .reranker
        .resolve_prompt(&project, PromptName::PSum, &prod, "")
        .await
        .map_err(|e| JobError::Failed(anyhow::anyhow!("{e}")))?;
    let start = ctx
        .saved_state()
        .and_then(|s| s.get("offset").and_then(|o| o.as_u64()))
        .unwrap_or(0) as usize;
    let call = ctx.call_ctx();
    let mut failures = 0usize;
    for (n, chunk) in ids.chunks(CHUNK).enumerate().skip(start / CHUNK) {
        ctx.check_cancel()?;
        let refs: Vec<crate::rerank::ItemRef> = chunk
            .iter()
            .map(|id| crate::rerank::ItemRef {
                id: id.clone(),
                title: None,
                text: None,
            })
            .collect();
        let items = ctx
            .reranker
            .load_items(&project, &refs, "items")
            .await
            .map_err(|e| JobError::Failed(anyhow::anyhow!("{e}")))?;
        // Summaries already stored are cache hits; the missing ones are made and stored.
        if let Err(e) = ctx
            .reranker
            .history_texts(&project, &items, Some(&sum), &call)
            .await
        {
            failures += chunk.len();
            tracing::warn!(error = %e, "summaries of a chunk failed; continuing");
        }
        let done = ((n + 1) * CHUNK).min(ids.len());
        ctx.tick(|p| {
            p.phase = "summarizing".into();
            p.done = done as u64;
            p.total = ids.len() as u64;
            p.message = format!("{done} of {} items", ids.len());
        });
        ctx.save(serde_json::json!({ "offset": done })).await?;
    }
    let (stages, total_cost) = crate::eval::run::stage_costs(ctx).await?;
    Ok(crate::eval::report::Report {
        title: format!("Item summaries for project {project}"),
        kind: crate::jobs::SUMMARIZE_CATALOG.into(),
        job_id: ctx.id().to_string(),
        status: "succeeded".into(),
        started_at: ctx.job.started_at,
        finished_at: Some(chrono::Utc::now()),
        settings: serde_json::json!({ "p_sum_version": sum.0 }),
        summary: vec![
            format!(
                "{} items; summaries made now: {} calls, {} already cached",
                ids.len(),
                total_cost.llm_calls,
                total_cost.cache_hits
            ),
            format!("{failures} items could not be summarized (LLM errors); a rerun retries them"),
        ],
        stages,
        total_cost,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_text_joins_metadata() {
        let a = serde_json::json!({"platform": "GBA", "year": 2004});
        assert_eq!(
            item_text(" Zelda ", Some("RPG"), Some(&a)),
            "Zelda | RPG | platform: GBA | year: 2004"
        );
        assert_eq!(item_text("Zelda", Some(" "), None), "Zelda");
    }
}
