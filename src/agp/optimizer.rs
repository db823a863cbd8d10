//! The AGP optimization loop (AGP.md): batches of B training users, position-aware
//! per-user feedback, one aggregated critique per batch, an update carrying the error count
//! and an update strength, up to `verify_steps` candidates, epochs. Acceptance `paper`
//! (same batch, mean rank strictly better) or `validation` (screened on the batch, then
//! validation NDCG@10 with a beam of the best prompts and early stop). Every candidate is
//! stored as a `p_gen` version with its scores and the reason it was kept or rejected; the
//! run's state is saved after every batch so a killed job resumes where it was.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::prompt::{self, PromptName, render};
use crate::eval::Case;
use crate::eval::metrics;
use crate::eval::report::{Cost, MethodResult, PromptShown, Report, SeedMetrics, StepRow};
use crate::eval::run::{DataParams, cost_between, prepare, stage_costs, template_of};
use crate::eval::score::{CaseOutcome, ProfileMode, Scorer};
use crate::jobs::{JobContext, JobError};
use crate::llm::{ChatRequest, Message, Role};
use crate::store::jobs as jobs_db;
use crate::store::prompts::{self as prompts_db, NewVersion, PRODUCTION};

/// How a candidate prompt is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Acceptance {
    /// The paper's rule: re-score on the same batch; keep if the mean true-item rank strictly improves.
    Paper,
    /// Not worse on the batch, and strictly better validation NDCG@10 than the best so far.
    Validation,
}

/// Request of an optimization (the data settings plus the loop's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct OptParams {
    #[serde(flatten)]
    #[command(flatten)]
    pub data: DataParams,
    /// Users per batch (B): one update per batch.
    #[arg(long, default_value_t = 10)]
    #[schema(minimum = 1, maximum = 100)]
    pub batch_size: usize,
    /// Passes over the training users.
    #[arg(long, default_value_t = 1)]
    #[schema(minimum = 1, maximum = 20)]
    pub epochs: usize,
    /// Candidate prompts tried per batch.
    #[arg(long, default_value_t = 3)]
    #[schema(minimum = 1, maximum = 10)]
    pub verify_steps: usize,
    /// Acceptance rule: `validation` (default) or `paper`.
    #[arg(long, value_enum, default_value_t = Acceptance::Validation)]
    pub acceptance: Acceptance,
    /// Tell feedback where the true item landed, and scale the update strength by it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub position_feedback: bool,
    /// One aggregated critique per batch (false: the per-user critiques are concatenated).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub aggregate: bool,
    /// The `p_gen` version to start from (default: the production label's).
    #[arg(long)]
    #[schema(minimum = 1, maximum = 2147483647)]
    pub base_version: Option<i32>,
    /// Best prompts kept (validation acceptance).
    #[arg(long, default_value_t = 3)]
    #[schema(minimum = 1, maximum = 20)]
    pub beam_width: usize,
    /// Batches without a validation improvement before stopping early (0: never).
    #[arg(long, default_value_t = 3)]
    #[schema(maximum = 1000)]
    pub patience: usize,
    /// Longest accepted candidate, in words.
    #[arg(long, default_value_t = 250)]
    #[schema(minimum = 20, maximum = 2000)]
    pub max_prompt_words: usize,
    /// Sampling temperature of the update step (candidates must differ from each other).
    #[arg(long, default_value_t = 0.7)]
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub update_temperature: f64,
    /// Move this label to the best version at the end (when it beats the baseline on test).
    #[arg(long)]
    #[schema(pattern = "LABEL")]
    pub promote_to: Option<String>,
}

impl Default for OptParams {
    fn default() -> Self {
        OptParams {
            data: DataParams::default(),
            batch_size: 10,
            epochs: 1,
            verify_steps: 3,
            acceptance: Acceptance::Validation,
            position_feedback: true,
            aggregate: true,
            base_version: None,
            beam_width: 3,
            patience: 3,
            max_prompt_words: 250,
            update_temperature: 0.7,
            promote_to: None,
        }
    }
}

impl OptParams {
    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        self.data.validate()?;
        for (name, v, lo, hi) in [
            ("batch_size", self.batch_size, 1, 100),
            ("epochs", self.epochs, 1, 20),
            ("verify_steps", self.verify_steps, 1, 10),
            ("beam_width", self.beam_width, 1, 20),
            ("max_prompt_words", self.max_prompt_words, 20, 2000),
            ("patience", self.patience, 0, 1000),
        ] {
            if v < lo || v > hi {
                return Err(format!("{name} must be between {lo} and {hi}, got {v}"));
            }
        }
        if self.data.train_users == 0 {
            return Err("train_users must be at least 1".into());
        }
        if self.acceptance == Acceptance::Validation && self.data.validation_users == 0 {
            return Err("validation acceptance needs validation_users > 0".into());
        }
        if !(0.0..=2.0).contains(&self.update_temperature) {
            return Err("update_temperature must be between 0 and 2".into());
        }
        if let Some(l) = &self.promote_to
            && (l.is_empty()
                || l.len() > 64
                || !l
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(
                "promote_to must be a label of 1 to 64 characters of a-z, A-Z, 0-9, - and _".into(),
            );
        }
        Ok(())
    }
}

/// The update strength (1..=10) from the batch's mean true-item rank among `k` candidates:
/// true items near the bottom ask for a large rewrite, near the top for a small edit.
pub fn update_strength(mean_rank: f64, k: usize) -> u32 {
    if k <= 1 {
        return 1;
    }
    let x = (mean_rank - 1.0) / (k as f64 - 1.0);
    (1.0 + 9.0 * x.clamp(0.0, 1.0)).round() as u32
}

/// Words that give the evaluation away.
const LEAK_WORDS: [&str; 9] = [
    "ground truth",
    "ground-truth",
    "held-out",
    "held out",
    "heldout",
    "hold-out",
    "target item",
    "correct item",
    "test set",
];

/// Why a candidate is rejected before scoring, if it is: not a valid `p_gen`, too long, or
/// leaking (an item title or user id of the training data, or evaluation words).
pub fn screen(
    candidate: &str,
    max_words: usize,
    titles: &[String],
    users: &[String],
) -> Option<String> {
    if let Err(e) = prompt::validate(PromptName::PGen, candidate) {
        return Some(format!("invalid template: {e}"));
    }
    let words = candidate.split_whitespace().count();
    if words > max_words {
        return Some(format!("too long: {words} words (limit {max_words})"));
    }
    let lower = candidate.to_lowercase();
    if let Some(w) = LEAK_WORDS.iter().find(|w| lower.contains(*w)) {
        return Some(format!("leak: mentions {w:?}"));
    }
    if let Some(t) = titles
        .iter()
        .find(|t| t.chars().count() >= 8 && lower.contains(&t.to_lowercase()))
    {
        return Some(format!("leak: names the item title {t:?}"));
    }
    if let Some(u) = users
        .iter()
        .find(|u| u.chars().count() >= 4 && contains_word(&lower, &u.to_lowercase()))
    {
        return Some(format!("leak: names the user id {u:?}"));
    }
    None
}

fn contains_word(hay: &str, needle: &str) -> bool {
    hay.match_indices(needle).any(|(i, _)| {
        let before = hay[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        let after = hay[i + needle.len()..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_alphanumeric());
        before && after
    })
}

/// The candidate prompt from an update answer: code fences and surrounding quotes removed.
pub fn clean_candidate(answer: &str) -> String {
    let mut s = answer.trim();
    if let Some(rest) = s.strip_prefix("```") {
        s = rest.split_once('\n').map(|(_, r)| r).unwrap_or(rest);
        s = s.trim_end().strip_suffix("```").unwrap_or(s);
    }
    let s = s.trim();
    let s = s.strip_prefix("New instructions:").unwrap_or(s).trim();
    s.trim_matches('"').trim().to_string()
}

/// Appends the history block when a candidate lost its `{{history}}` placeholder; says whether it did.
pub fn ensure_history_placeholder(candidate: String) -> (String, bool) {
    if prompt::placeholders(&candidate)
        .iter()
        .any(|p| p == "history")
        || candidate.trim().is_empty()
    {
        return (candidate, false);
    }
    (
        format!(
            "{}\n\nRecent items, oldest first:\n{{{{history}}}}",
            candidate.trim_end()
        ),
        true,
    )
}

/// Mean rank of outcomes.
fn mean_rank(o: &[CaseOutcome]) -> f64 {
    if o.is_empty() {
        0.0
    } else {
        o.iter().map(|x| x.rank as f64).sum::<f64>() / o.len() as f64
    }
}

/// The loop's resumable state, saved after every batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    /// Next (epoch, batch) to run.
    epoch: usize,
    batch: usize,
    /// Next step number.
    step: i32,
    current: i32,
    /// Validation NDCG@10 of the current/best prompt (validation mode).
    best_val: Option<f64>,
    /// (version, validation NDCG@10), best first.
    beam: Vec<(i32, f64)>,
    since_improvement: usize,
    stopped_early: bool,
    finished_loop: bool,
    /// Wall time spent in the batch loop so far (over all attempts), milliseconds.
    #[serde(default)]
    loop_ms: u64,
    /// Upstream LLM calls made in the batch loop so far.
    #[serde(default)]
    loop_calls: u64,
}

/// Runs an optimization job.
pub async fn run(ctx: &JobContext) -> Result<Report, JobError> {
    let params: OptParams =
        serde_json::from_value(ctx.job.params.clone()).map_err(|e| JobError::Failed(e.into()))?;
    params
        .validate()
        .map_err(|e| JobError::Failed(anyhow::anyhow!(e)))?;
    let p = &params;
    let project = ctx.project().to_string();
    let base_version = match p.base_version {
        Some(v) => v,
        None => crate::store::prompts::label(&ctx.pool, &project, "p_gen", PRODUCTION)
            .await?
            .and_then(|l| {
                l.version
                    .or_else(|| l.split.and_then(|s| s.first().map(|a| a.version)))
            })
            .unwrap_or(1),
    };
    let base_template = template_of(ctx, base_version).await?;

    ctx.tick(|pr| {
        pr.phase = "preparing".into();
        pr.message = "building splits and candidate lists".into();
    });
    let prep = prepare(ctx, &p.data, p.data.seed).await?;
    if prep.train.is_empty() {
        return Err(JobError::Failed(anyhow::anyhow!(
            "no training users: import interactions first"
        )));
    }
    let all_cases: Vec<Case> = prep
        .train
        .iter()
        .chain(&prep.validation)
        .chain(&prep.test)
        .cloned()
        .collect();
    let scorer = Scorer::new(
        ctx.reranker.clone(),
        ctx.llm.clone(),
        &project,
        &all_cases,
        p.data.history_len,
        p.data.summaries,
        p.data.rank_repeats,
    )
    .await
    .map_err(|e| JobError::Failed(anyhow::anyhow!("{e}")))?;
    let titles = item_titles(ctx, &all_cases).await?;
    let users: Vec<String> = all_cases.iter().map(|c| c.user_id.clone()).collect();
    let fb_template = prompt_template(ctx, PromptName::PFb).await?;
    let agg_template = prompt_template(ctx, PromptName::PAgg).await?;
    let opt_template = prompt_template(ctx, PromptName::POpt).await?;

    let batches_per_epoch = prep.train.len().div_ceil(p.batch_size);
    let total_batches = (batches_per_epoch * p.epochs) as u64;
    let mut st: State = ctx
        .saved_state()
        .and_then(|s| serde_json::from_value(s).ok())
        .unwrap_or(State {
            current: base_version,
            step: 1,
            ..Default::default()
        });
    let call = ctx.call_ctx();
    let templates = |v: i32| template_of(ctx, v);

    // Baseline on validation (validation mode), once.
    if p.acceptance == Acceptance::Validation && st.best_val.is_none() {
        ctx.tick(|pr| {
            pr.phase = "baseline".into();
            pr.message = format!(
                "scoring p_gen v{base_version} on {} validation users",
                prep.validation.len()
            );
        });
        let before = ctx.tally.snapshot();
        let t0 = std::time::Instant::now();
        let mode = ProfileMode::Prompt {
            version: base_version,
            template: base_template.clone(),
        };
        let out = scorer
            .score_all(&prep.validation, &mode, &call, &|| {})
            .await;
        let ranks: Vec<usize> = out.iter().map(|o| o.rank).collect();
        let val = metrics::from_ranks(&ranks).ndcg_10;
        st.best_val = Some(val);
        st.beam = vec![(base_version, val)];
        let cost = phase_cost(ctx, &before, t0);
        jobs_db::put_step(
            &ctx.pool,
            ctx.id(),
            0,
            0,
            0,
            "baseline",
            Some(base_version),
            &json!({"validation_ndcg_10": val}),
            None,
            "starting prompt",
            &serde_json::to_value(cost).unwrap_or_default(),
        )
        .await?;
        ctx.save(serde_json::to_value(&st).unwrap_or_default())
            .await?;
    }

    while !st.finished_loop {
        ctx.check_cancel()?;
        let batch_started = std::time::Instant::now();
        let batch_calls = ctx.tally.snapshot().llm_calls;
        let (epoch, batch) = (st.epoch, st.batch);
        // Each epoch visits the training users in a seeded order.
        let mut order: Vec<usize> = (0..prep.train.len()).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
            p.data.seed.wrapping_add(epoch as u64),
        ));
        let batch_cases: Vec<Case> = order
            .iter()
            .skip(batch * p.batch_size)
            .take(p.batch_size)
            .map(|&i| prep.train[i].clone())
            .collect();
        let done_batches = (epoch * batches_per_epoch + batch) as u64;
        ctx.tick(|pr| {
            pr.phase = "optimizing".into();
            pr.done = done_batches;
            pr.total = total_batches;
            pr.message = format!(
                "epoch {} batch {}/{}",
                epoch + 1,
                batch + 1,
                batches_per_epoch
            );
        });

        // Summaries of the next batch's users do not depend on this batch: make them in the
        // slots this batch leaves idle (its single aggregation and update calls).
        let next_cases: Vec<Case> = if batch + 1 < batches_per_epoch {
            order
                .iter()
                .skip((batch + 1) * p.batch_size)
                .take(p.batch_size)
                .map(|&i| prep.train[i].clone())
                .collect()
        } else {
            Vec::new()
        };
        let prefetch = scorer.prefetch_summaries(&next_cases, &call);
        let body = async {
            // This batch's scoring with the current prompt, feedback and aggregation are
            // charged to its feedback step.
            let before = ctx.tally.snapshot();
            let t0 = std::time::Instant::now();
            let current_template = templates(st.current).await?;
            let cur_mode = ProfileMode::Prompt {
                version: st.current,
                template: current_template.clone(),
            };
            // Score each user with the current prompt and, when the true item is not first, ask
            // for that user's feedback right away (no barrier between the two phases).
            let scored = futures_util::future::join_all(batch_cases.iter().map(|case| {
                let (scorer, cur_mode, call, titles, fb_template, current_template) = (
                    &scorer,
                    &cur_mode,
                    &call,
                    &titles,
                    &fb_template,
                    &current_template,
                );
                async move {
                    let out = scorer.score(case, cur_mode, call).await;
                    let fb = if out.rank > 1 {
                        user_feedback(
                            ctx,
                            p,
                            fb_template,
                            current_template,
                            titles,
                            case,
                            &out,
                            call,
                        )
                        .await
                    } else {
                        None
                    };
                    (out, fb)
                }
            }))
            .await;
            let (cur_out, fbs): (Vec<CaseOutcome>, Vec<Option<String>>) =
                scored.into_iter().unzip();
            let cur_mean = mean_rank(&cur_out);
            let errors: Vec<usize> = (0..batch_cases.len())
                .filter(|&i| cur_out[i].rank > 1)
                .collect();
            let mut accepted_any = false;

            if errors.is_empty() {
                record(
                    ctx,
                    &mut st,
                    epoch,
                    batch,
                    "skip",
                    None,
                    json!({"batch_mean_rank": cur_mean}),
                    None,
                    "every true item ranked first: nothing to learn",
                    phase_cost(ctx, &before, t0),
                )
                .await?;
            } else {
                let critiques: Vec<String> = fbs
                    .into_iter()
                    .flatten()
                    .filter(|c| !c.is_empty())
                    .collect();
                let critique = if critiques.is_empty() {
                    "Profiles should capture the user's specific preferences more precisely."
                        .to_string()
                } else if p.aggregate {
                    let list: String = critiques
                        .iter()
                        .enumerate()
                        .map(|(i, c)| format!("{}. {}\n", i + 1, c.replace('\n', " ")))
                        .collect();
                    let mut vars = BTreeMap::new();
                    vars.insert("critiques", list);
                    vars.insert("count", critiques.len().to_string());
                    let req = ChatRequest {
                        max_tokens: Some(300),
                        ..ChatRequest::new(vec![
                            Message::system(PromptName::PAgg.system()),
                            Message::user(render(&agg_template, &vars)),
                        ])
                    };
                    match ctx.llm.chat(Role::Aggregate, &req, &call).await {
                        Ok(r) if !r.content.trim().is_empty() => r.content.trim().to_string(),
                        _ => critiques.join("\n"),
                    }
                } else {
                    critiques
                        .iter()
                        .map(|c| format!("- {}", c.replace('\n', " ")))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                let k = batch_cases
                    .first()
                    .map(|c| c.candidates.len())
                    .unwrap_or(p.data.candidates);
                let strength = if p.position_feedback {
                    update_strength(cur_mean, k)
                } else {
                    5
                };
                let feedback_cost = phase_cost(ctx, &before, t0);
                let current = st.current;
                record(
                    ctx,
                    &mut st,
                    epoch,
                    batch,
                    "feedback",
                    Some(current),
                    json!({"batch_mean_rank": cur_mean, "errors": errors.len(), "strength": strength, "critique": critique}),
                    None,
                    &format!("{} of {} users had the true item below first place", errors.len(), batch_cases.len()),
                    feedback_cost,
                )
                .await?;

                // The update calls do not depend on each other: ask for all candidates at once,
                // then evaluate them in order and stop at the first accepted one.
                let answers = futures_util::future::join_all((0..p.verify_steps).map(|attempt| {
                    let mut vars = BTreeMap::new();
                    vars.insert("prompt", current_template.to_string());
                    vars.insert("critique", critique.clone());
                    vars.insert("errors", errors.len().to_string());
                    vars.insert("batch_size", batch_cases.len().to_string());
                    vars.insert("strength", strength.to_string());
                    vars.insert(
                        "mean_rank",
                        if p.position_feedback {
                            format!("{cur_mean:.2}")
                        } else {
                            "not shown".into()
                        },
                    );
                    vars.insert("max_words", p.max_prompt_words.to_string());
                    let seed = crate::hash::stable_hash(&format!(
                        "{}/{epoch}/{batch}/{attempt}",
                        ctx.id()
                    ));
                    let req = ChatRequest {
                        temperature: Some(p.update_temperature as f32),
                        seed: Some(seed),
                        cache_seeded: true,
                        max_tokens: Some((p.max_prompt_words as u32) * 2 + 64),
                        ..ChatRequest::new(vec![
                            Message::system(PromptName::POpt.system()),
                            Message::user(render(&opt_template, &vars)),
                        ])
                    };
                    let call = &call;
                    async move {
                        ctx.llm
                            .chat(Role::Optimize, &req, call)
                            .await
                            .map(|r| clean_candidate(&r.content))
                    }
                }))
                .await;
                for answer in answers {
                    ctx.check_cancel()?;
                    let before = ctx.tally.snapshot();
                    let t0 = std::time::Instant::now();
                    let answer = match answer {
                        Ok(a) => a,
                        Err(e) => {
                            let cost = phase_cost(ctx, &before, t0);
                            record(
                                ctx,
                                &mut st,
                                epoch,
                                batch,
                                "candidate",
                                None,
                                json!({}),
                                Some(false),
                                &format!("update call failed: {e}"),
                                cost,
                            )
                            .await?;
                            continue;
                        }
                    };
                    // Weak models often drop the placeholder: put the history block back rather than
                    // waste the candidate (the step says so).
                    let (answer, repaired) = ensure_history_placeholder(answer);
                    if answer.trim() == current_template.trim() {
                        let cost = phase_cost(ctx, &before, t0);
                        let current = st.current;
                        record(
                            ctx,
                            &mut st,
                            epoch,
                            batch,
                            "candidate",
                            Some(current),
                            json!({}),
                            Some(false),
                            "identical to the current prompt",
                            cost,
                        )
                        .await?;
                        continue;
                    }
                    if let Some(why) =
                        screen(&answer, p.max_prompt_words, &titles_list(&titles), &users)
                    {
                        let version = store_candidate(ctx, &answer, st.current, &why).await?;
                        let cost = phase_cost(ctx, &before, t0);
                        record(
                            ctx,
                            &mut st,
                            epoch,
                            batch,
                            "candidate",
                            version,
                            json!({"text": answer}),
                            Some(false),
                            &why,
                            cost,
                        )
                        .await?;
                        continue;
                    }
                    let version = store_candidate(ctx, &answer, st.current, "")
                        .await?
                        .unwrap_or(st.current);
                    let cand_template = Arc::new(answer.clone());
                    let cand_mode = ProfileMode::Prompt {
                        version,
                        template: cand_template,
                    };
                    let cand_out = scorer
                        .score_all(&batch_cases, &cand_mode, &call, &|| {})
                        .await;
                    let cand_mean = mean_rank(&cand_out);
                    let (accepted, reason, val) = match p.acceptance {
                        Acceptance::Paper => {
                            let ok = cand_mean < cur_mean;
                            (
                                ok,
                                format!(
                                    "batch mean rank {cur_mean:.2} -> {cand_mean:.2}{}",
                                    if ok { "" } else { ": not better" }
                                ),
                                None,
                            )
                        }
                        Acceptance::Validation => {
                            if cand_mean > cur_mean {
                                (
                                    false,
                                    format!(
                                        "worse on the batch: mean rank {cur_mean:.2} -> {cand_mean:.2}"
                                    ),
                                    None,
                                )
                            } else {
                                let out = scorer
                                    .score_all(&prep.validation, &cand_mode, &call, &|| {})
                                    .await;
                                let ranks: Vec<usize> = out.iter().map(|o| o.rank).collect();
                                let v = metrics::from_ranks(&ranks).ndcg_10;
                                let best = st.best_val.unwrap_or(0.0);
                                let ok = v > best;
                                (
                                    ok,
                                    format!(
                                        "batch mean rank {cur_mean:.2} -> {cand_mean:.2}; validation NDCG@10 {best:.4} -> {v:.4}{}",
                                        if ok { "" } else { ": not better" }
                                    ),
                                    Some(v),
                                )
                            }
                        }
                    };
                    let scores = json!({"batch_mean_rank": cand_mean, "current_batch_mean_rank": cur_mean, "validation_ndcg_10": val,
                                        "placeholder_added": repaired});
                    let reason = if repaired {
                        format!("{reason} ({{{{history}}}} was missing and was added)")
                    } else {
                        reason
                    };
                    let key = format!("{}#{}", ctx.id(), st.step);
                    prompts_db::set_scores(
                        &ctx.pool,
                        &project,
                        "p_gen",
                        version,
                        &json!({ key: scores.clone() }),
                    )
                    .await?;
                    let cost = phase_cost(ctx, &before, t0);
                    record(
                        ctx,
                        &mut st,
                        epoch,
                        batch,
                        "candidate",
                        Some(version),
                        scores,
                        Some(accepted),
                        &reason,
                        cost,
                    )
                    .await?;
                    if accepted {
                        accepted_any = true;
                        st.current = version;
                        if let Some(v) = val {
                            st.best_val = Some(v);
                            st.beam.push((version, v));
                            st.beam.sort_by(|a, b| b.1.total_cmp(&a.1));
                            st.beam.truncate(p.beam_width);
                        }
                        break;
                    }
                }
            }
            Ok::<bool, JobError>(accepted_any)
        };
        let (res, ()) = futures_util::future::join(body, prefetch).await;
        let accepted_any = res?;

        // Advance and save: a crash after this point resumes at the next batch.
        if accepted_any {
            st.since_improvement = 0;
        } else {
            st.since_improvement += 1;
        }
        st.batch += 1;
        if st.batch >= batches_per_epoch {
            st.batch = 0;
            st.epoch += 1;
        }
        if st.epoch >= p.epochs {
            st.finished_loop = true;
        }
        if p.acceptance == Acceptance::Validation
            && p.patience > 0
            && st.since_improvement >= p.patience
            && !st.finished_loop
        {
            st.finished_loop = true;
            st.stopped_early = true;
        }
        ctx.tick(|pr| pr.done = done_batches + 1);
        st.loop_ms += batch_started.elapsed().as_millis() as u64;
        st.loop_calls += ctx.tally.snapshot().llm_calls - batch_calls;
        ctx.save(serde_json::to_value(&st).unwrap_or_default())
            .await?;
    }

    // The best prompt: the beam's head (validation) or the last accepted (paper).
    let best = match p.acceptance {
        Acceptance::Validation => st.beam.first().map(|b| b.0).unwrap_or(st.current),
        Acceptance::Paper => st.current,
    };
    ctx.tick(|pr| {
        pr.phase = "testing".into();
        pr.message = format!(
            "baseline v{base_version} vs best v{best} on {} test users",
            prep.test.len()
        );
    });
    // Baseline and best are scored on the test split at the same time, each with its own
    // tally so their costs stay apart.
    let versions = if best == base_version {
        vec![base_version]
    } else {
        vec![base_version, best]
    };
    let mut modes = Vec::new();
    for &v in &versions {
        modes.push(ProfileMode::Prompt {
            version: v,
            template: templates(v).await?,
        });
    }
    let scored = futures_util::future::join_all(versions.iter().zip(&modes).map(|(&v, mode)| {
        let tally = Arc::new(crate::llm::Tally::default());
        let call = ctx.call_ctx().with_tally(tally.clone());
        let (scorer, test) = (&scorer, &prep.test);
        async move {
            let t0 = std::time::Instant::now();
            let out = scorer.score_all(test, mode, &call, &|| {}).await;
            let m = metrics::from_ranks(&out.iter().map(|o| o.rank).collect::<Vec<_>>());
            let cost = cost_between(
                &Default::default(),
                &tally.snapshot(),
                t0.elapsed().as_millis() as u64,
            );
            (v, m, cost)
        }
    }))
    .await;
    let mut methods = Vec::new();
    let mut results: Vec<(i32, metrics::Metrics)> = Vec::new();
    for (v, m, cost) in scored {
        let name = if v == base_version {
            format!("baseline_pgen_v{v}")
        } else {
            format!("best_pgen_v{v}")
        };
        methods.push(MethodResult {
            method: name,
            description: if v == base_version {
                "the starting p_gen".into()
            } else {
                "the best p_gen found".into()
            },
            per_seed: vec![SeedMetrics {
                seed: p.data.seed,
                metrics: m,
            }],
            mean: m,
            std: metrics::Metrics {
                n: 1,
                ..Default::default()
            },
            cost,
        });
        results.push((v, m));
    }
    let base_ranks =
        crate::eval::run::cheap_ranks("base", &prep.test, &prep.popularity, p.data.seed);
    let bm = metrics::from_ranks(&base_ranks);
    methods.push(MethodResult {
        method: "base".into(),
        description: "the candidate list in its incoming order".into(),
        per_seed: vec![SeedMetrics {
            seed: p.data.seed,
            metrics: bm,
        }],
        mean: bm,
        std: metrics::Metrics {
            n: 1,
            ..Default::default()
        },
        cost: Cost::default(),
    });

    let base_ndcg = results.first().map(|r| r.1.ndcg_10).unwrap_or(0.0);
    let best_ndcg = results.last().map(|r| r.1.ndcg_10).unwrap_or(0.0);
    let mut summary = vec![
        format!(
            "test NDCG@10: baseline p_gen v{base_version} {base_ndcg:.4}, best p_gen v{best} {best_ndcg:.4}"
        ),
        format!(
            "acceptance {:?}; {} candidate prompts tried",
            p.acceptance,
            jobs_db::count_steps(&ctx.pool, ctx.id(), "candidate").await?
        ),
    ];
    if st.stopped_early {
        summary.push(format!(
            "stopped early: no validation improvement in {} batches",
            p.patience
        ));
    }
    if let Some(label) = &p.promote_to {
        if best != base_version && best_ndcg > base_ndcg {
            prompts_db::set_label(&ctx.pool, &project, "p_gen", label, Some(best), None).await?;
            summary.push(format!("label {label:?} now points at p_gen v{best}"));
        } else {
            summary.push(format!(
                "label {label:?} not moved: the best prompt does not beat the baseline on test"
            ));
        }
    }
    let (stages, total_cost) = stage_costs(ctx).await?;
    summary.push(format!(
        "{} LLM calls, {} cache hits",
        total_cost.llm_calls, total_cost.cache_hits
    ));
    let steps = jobs_db::steps(&ctx.pool, ctx.id())
        .await?
        .into_iter()
        .map(|s| StepRow {
            step: s.step,
            epoch: s.epoch,
            batch: s.batch,
            kind: s.kind,
            version: s.prompt_version,
            accepted: s.accepted,
            reason: s.reason.unwrap_or_default(),
            batch_mean_rank: s.scores.get("batch_mean_rank").and_then(Value::as_f64),
            validation_ndcg_10: s.scores.get("validation_ndcg_10").and_then(Value::as_f64),
            cost: serde_json::from_value(s.usage).unwrap_or_default(),
        })
        .collect();
    let mut prompts_shown = vec![PromptShown {
        label: format!("baseline p_gen v{base_version}"),
        version: base_version,
        template: base_template.to_string(),
    }];
    if best != base_version {
        prompts_shown.push(PromptShown {
            label: format!("best p_gen v{best}"),
            version: best,
            template: templates(best).await?.to_string(),
        });
    }
    Ok(Report {
        title: format!("AGP optimization of p_gen for project {project}"),
        kind: "optimization".into(),
        job_id: ctx.id().to_string(),
        status: "succeeded".into(),
        started_at: ctx.job.started_at,
        finished_at: Some(chrono::Utc::now()),
        settings: serde_json::to_value(p).unwrap_or_default(),
        data_notes: prep.notes,
        methods,
        steps,
        stages,
        total_cost,
        prompts: prompts_shown,
        summary,
    })
}

/// One user's critique (`p_fb`): the profile, the candidates as ranked, the true item and
/// (with position feedback) where it landed, and the prompt that wrote the profile.
#[allow(clippy::too_many_arguments)]
async fn user_feedback(
    ctx: &JobContext,
    p: &OptParams,
    fb_template: &str,
    current_template: &str,
    titles: &BTreeMap<String, String>,
    case: &Case,
    out: &CaseOutcome,
    call: &crate::llm::CallContext,
) -> Option<String> {
    let ranked: String = out
        .order
        .iter()
        .enumerate()
        .map(|(pos, &c)| format!("{}. {}\n", pos + 1, title_of(titles, &case.candidates[c])))
        .collect();
    let mut vars = BTreeMap::new();
    vars.insert(
        "profile",
        out.profile
            .as_deref()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "(no profile)".into()),
    );
    vars.insert("ranked", ranked);
    vars.insert("target", title_of(titles, &case.target));
    vars.insert(
        "position",
        if p.position_feedback {
            out.rank.to_string()
        } else {
            "somewhere below the first place".into()
        },
    );
    vars.insert("count", case.candidates.len().to_string());
    vars.insert("prompt", current_template.to_string());
    let req = ChatRequest {
        max_tokens: Some(200),
        ..ChatRequest::new(vec![
            Message::system(PromptName::PFb.system()),
            Message::user(render(fb_template, &vars)),
        ])
    };
    ctx.llm
        .chat(Role::Feedback, &req, call)
        .await
        .ok()
        .map(|r| r.content.trim().to_string())
}

/// Cost of a phase that started at `t0` with the tally at `before`.
fn phase_cost(
    ctx: &JobContext,
    before: &crate::llm::usage::TallySnapshot,
    t0: std::time::Instant,
) -> Cost {
    cost_between(
        before,
        &ctx.tally.snapshot(),
        t0.elapsed().as_millis() as u64,
    )
}

#[allow(clippy::too_many_arguments)]
async fn record(
    ctx: &JobContext,
    st: &mut State,
    epoch: usize,
    batch: usize,
    kind: &str,
    version: Option<i32>,
    scores: Value,
    accepted: Option<bool>,
    reason: &str,
    cost: Cost,
) -> Result<(), JobError> {
    jobs_db::put_step(
        &ctx.pool,
        ctx.id(),
        st.step,
        epoch as i32 + 1,
        batch as i32 + 1,
        kind,
        version,
        &scores,
        accepted,
        reason,
        &serde_json::to_value(cost).unwrap_or_default(),
    )
    .await?;
    st.step += 1;
    Ok(())
}

/// Stores a candidate as a `p_gen` version (once per run and text); `None` when the text is
/// not a valid template (it cannot be a version).
async fn store_candidate(
    ctx: &JobContext,
    text: &str,
    parent: i32,
    rejected: &str,
) -> Result<Option<i32>, JobError> {
    if prompt::validate(PromptName::PGen, text).is_err() {
        return Ok(None);
    }
    if let Some(v) =
        jobs_db::run_version_with_template(&ctx.pool, ctx.project(), ctx.id(), text).await?
    {
        return Ok(Some(v));
    }
    let message = if rejected.is_empty() {
        "AGP candidate".to_string()
    } else {
        format!("AGP candidate, rejected: {rejected}")
    };
    let meta = NewVersion {
        message: &message,
        source: "optimization",
        run_id: Some(ctx.id()),
        parent_version: Some(parent),
        scores: None,
    };
    Ok(Some(
        prompts_db::create_version(&ctx.pool, ctx.project(), "p_gen", text, &meta).await?,
    ))
}

async fn prompt_template(ctx: &JobContext, name: PromptName) -> Result<Arc<String>, JobError> {
    let label = crate::store::prompts::label(&ctx.pool, ctx.project(), name.as_str(), PRODUCTION)
        .await?
        .ok_or_else(|| JobError::Failed(anyhow::anyhow!("{name} has no production label")))?;
    let v = crate::rerank::label_version(&label, "").unwrap_or(1);
    let row = crate::store::prompts::version(&ctx.pool, ctx.project(), name.as_str(), v)
        .await?
        .ok_or_else(|| JobError::Failed(anyhow::anyhow!("{name} v{v} missing")))?;
    Ok(Arc::new(row.template))
}

async fn item_titles(
    ctx: &JobContext,
    cases: &[Case],
) -> Result<BTreeMap<String, String>, JobError> {
    let mut ids: Vec<&str> = cases
        .iter()
        .flat_map(|c| {
            c.history
                .iter()
                .chain(&c.candidates)
                .chain(std::iter::once(&c.target))
        })
        .map(String::as_str)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(
        crate::store::rerank::items_by_ids(&ctx.pool, ctx.project(), &ids)
            .await?
            .into_iter()
            .map(|i| (i.id, i.title))
            .collect(),
    )
}

fn title_of(titles: &BTreeMap<String, String>, id: &str) -> String {
    titles.get(id).cloned().unwrap_or_else(|| id.to_string())
}

fn titles_list(titles: &BTreeMap<String, String>) -> Vec<String> {
    titles.values().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strength_follows_the_mean_rank() {
        assert_eq!(update_strength(1.0, 20), 1);
        assert_eq!(update_strength(20.0, 20), 10);
        assert_eq!(update_strength(10.5, 20), 6);
        assert_eq!(update_strength(3.0, 1), 1);
    }

    #[test]
    fn screening_rejects_leaks_length_and_bad_templates() {
        let titles = vec![
            "Fire Emblem: The Sacred Stones".to_string(),
            "Halo".to_string(),
        ];
        let users = vec!["user_1234".to_string(), "7".to_string()];
        let ok = "Recent items:\n{{history}}\nDescribe the user's favourite genres.";
        assert_eq!(screen(ok, 100, &titles, &users), None);
        assert!(
            screen("Describe the user.", 100, &titles, &users)
                .unwrap()
                .contains("invalid template")
        );
        assert!(
            screen(
                &format!("{ok} {}", "word ".repeat(200)),
                100,
                &titles,
                &users
            )
            .unwrap()
            .contains("too long")
        );
        assert!(
            screen(
                &format!("{ok} Make sure the ground truth item is first."),
                100,
                &titles,
                &users
            )
            .unwrap()
            .contains("leak")
        );
        assert!(
            screen(
                &format!("{ok} Users who liked fire emblem: the sacred stones"),
                100,
                &titles,
                &users
            )
            .unwrap()
            .contains("item title")
        );
        assert!(
            screen(&format!("{ok} especially user_1234"), 100, &titles, &users)
                .unwrap()
                .contains("user id")
        );
        // Short titles and ids are not treated as leaks (too many false alarms).
        assert_eq!(
            screen(
                &format!("{ok} halo effects, 7 genres"),
                100,
                &titles,
                &users
            ),
            None
        );
    }

    #[test]
    fn a_lost_placeholder_is_put_back() {
        let (t, added) = ensure_history_placeholder("Describe the user.".into());
        assert!(added && t.ends_with("{{history}}"), "{t}");
        assert!(prompt::validate(PromptName::PGen, &t).is_ok());
        let (t, added) = ensure_history_placeholder("Items: {{history}}".into());
        assert!(!added && t == "Items: {{history}}");
    }

    #[test]
    fn candidates_are_cleaned() {
        assert_eq!(
            clean_candidate("```\nHello {{history}}\n```"),
            "Hello {{history}}"
        );
        assert_eq!(
            clean_candidate("```text\nHello {{history}}```"),
            "Hello {{history}}"
        );
        assert_eq!(
            clean_candidate("\"Hello {{history}}\""),
            "Hello {{history}}"
        );
        assert_eq!(
            clean_candidate("New instructions: Hello {{history}}"),
            "Hello {{history}}"
        );
    }
}
