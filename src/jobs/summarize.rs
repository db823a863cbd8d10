//! The catalog summaries job (`POST /v1/summaries`): summarizes every item of the project
//! that has no summary yet for the production `p_sum` and the summarize model, in chunks,
//! saving its position after each chunk.

use serde::{Deserialize, Serialize};

use super::context::{JobContext, JobError, failed};
use crate::agp::prompt::PromptName;
use crate::report::Report;

/// Where the job is (items done).
#[derive(Debug, Serialize, Deserialize)]
struct Offset {
    offset: usize,
}

/// The background catalog job (`summarize_catalog`): summarizes every item of the project
/// that has no summary yet for the production `p_sum` and the summarize model, in chunks,
/// saving its position after each chunk. Returns a small report.
pub async fn run(ctx: &JobContext) -> Result<Report, JobError> {
    const CHUNK: usize = 50;
    ctx.require_llm(&[crate::llm::Role::Summarize])?;
    let project = ctx.project().to_string();
    let ids = crate::store::catalog::item_ids(&ctx.pool, &project).await?;
    let prod = crate::serving::PromptSelector::Label(crate::store::prompts::PRODUCTION.into());
    let sum = ctx
        .reranker
        .resolve_prompt(&project, PromptName::PSum, &prod, "")
        .await
        .map_err(failed)?;
    let start = ctx.saved_state::<Offset>().map_or(0, |s| s.offset);
    let call = ctx.call_ctx();
    let mut failures = 0usize;
    for (n, chunk) in ids.chunks(CHUNK).enumerate().skip(start / CHUNK) {
        ctx.check_cancel()?;
        let refs: Vec<crate::serving::ItemRef> = chunk
            .iter()
            .map(|id| crate::serving::ItemRef {
                id: id.clone(),
                title: None,
                text: None,
            })
            .collect();
        let items = ctx
            .reranker
            .load_items(&project, &refs, "items")
            .await
            .map_err(failed)?;
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
        ctx.save(&Offset { offset: done }).await?;
    }
    let (stages, total_cost) = ctx.stage_costs().await?;
    Ok(Report {
        title: format!("Item summaries for project {project}"),
        kind: super::JobKind::SummarizeCatalog,
        job_id: ctx.id().to_string(),
        status: super::JobStatus::Succeeded,
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
