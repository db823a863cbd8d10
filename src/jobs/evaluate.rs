//! The evaluation job (`POST /v1/evaluations`, `agp eval`): for each seed, the splits and
//! candidate lists, every method on the same lists and LLM, metrics per seed (saved after
//! each method, so a killed job resumes), then the report.

pub(super) mod llm_outcomes;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::context::{JobContext, JobError, failed};
use super::fused;
use crate::agp::case::Case;
use crate::eval::Protocol;
use crate::eval::cases::Prepared;
use crate::eval::metrics::{self, Metrics};
use crate::eval::params::{EvalParams, EvalSplit, Method, Scored, drop_inapplicable};
use crate::eval::score::Scorer;
use crate::llm::usage::{Cost, cost_between};
use crate::rankers::{Cooc, Incoming, ItemKnn, Random, Ranker};
use crate::report::{MethodResult, Report, SeedMetrics};
use llm_outcomes::{NotesAndPrompts, llm_outcomes};

/// One finished (seed, method): the resumable state is the list of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Done(u64, String, Metrics, Cost);

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    done: Vec<Done>,
    /// Per seed: evaluated users whose held-out item was outside the base-topk list.
    #[serde(default)]
    outside: Vec<(u64, usize)>,
    /// The blend version the `fused` method stored.
    #[serde(default)]
    blend_version: Option<i32>,
}

/// Runs an evaluation job.
pub async fn run(ctx: &JobContext) -> Result<Report, JobError> {
    let params: EvalParams = ctx.params()?;
    params.validate().map_err(failed)?;
    let seeds = params.seeds();
    let scored = params.scored();
    let mut st: State = ctx.saved_state().unwrap_or_default();
    let mut shown = NotesAndPrompts::default();
    for (si, &seed) in seeds.iter().enumerate() {
        ctx.check_cancel()?;
        ctx.tick(|p| {
            p.phase = "preparing".into();
            p.message = format!("seed {seed}: building splits and candidate lists");
        });
        let prep = ctx.prepare(&params.data, seed).await?;
        if si == 0 {
            shown.notes = prep.notes.clone();
        }
        let cases = prep.cases(params.split);
        if params.data.protocol == Protocol::BaseTopk {
            let outside = prep.outside(params.split);
            shown.notes.push(format!(
                "seed {seed}: {outside} of {} {} users had the held-out item outside the list",
                outside + cases.len(),
                split_name(params.split)
            ));
            st.outside.retain(|o| o.0 != seed);
            st.outside.push((seed, outside));
        }
        let mut total = (seeds.len() * scored.len() * cases.len()) as u64;
        if scored.contains(&Scored::Method(Method::Fused)) && scored.iter().any(|s| s.uses_llm()) {
            // the fused method ranks the validation users, then the evaluated ones again
            total += (seeds.len() * (prep.validation.len() + cases.len())) as u64;
        }
        let needs_llm = scored.iter().any(|s| s.uses_llm());
        let scorer = if needs_llm {
            Some(
                Scorer::new(
                    ctx.reranker.clone(),
                    ctx.llm.clone(),
                    ctx.project(),
                    cases,
                    &params.data,
                )
                .await
                .map_err(failed)?,
            )
        } else {
            None
        };
        for &what in &scored {
            ctx.check_cancel()?;
            if st.done.iter().any(|d| d.0 == seed && d.1 == what.name()) {
                continue;
            }
            let before = ctx.tally.snapshot();
            let t0 = std::time::Instant::now();
            ctx.tick(|p| {
                p.phase = "scoring".into();
                p.total = total;
                p.message = format!("seed {seed}: {}", what.name());
            });
            let ranks = match ranker_for(what, &prep, seed) {
                Some(ranker) => {
                    ctx.tick(|p| p.done += cases.len() as u64);
                    cases
                        .iter()
                        .map(|c| {
                            c.rank_or_last(&ranker.rank(&c.user_id, &c.history, &c.candidates))
                        })
                        .collect()
                }
                None if what == Scored::Method(Method::Fused) => {
                    let llm = scored.iter().rev().copied().find(|s| s.uses_llm());
                    let seed_run = fused::SeedRun {
                        params: &params,
                        prep: &prep,
                        seed,
                        llm: llm.zip(scorer.as_ref()),
                        store_blend: si == 0,
                    };
                    fused::ranks(ctx, &seed_run, &mut shown, &mut st.blend_version).await?
                }
                None => {
                    let scorer = scorer.as_ref().ok_or_else(|| failed("no scorer"))?;
                    llm_ranks(ctx, scorer, cases, what, seed, &mut shown).await?
                }
            };
            let m = metrics::from_ranks(&ranks);
            let cost = cost_between(
                &before,
                &ctx.tally.snapshot(),
                t0.elapsed().as_millis() as u64,
            );
            st.done.push(Done(seed, what.name(), m, cost));
            ctx.save(&st).await?;
        }
    }
    report(ctx, &params, &scored, &st, shown).await
}

/// The non-LLM method's ranker, or `None` for an LLM method.
pub(super) fn ranker_for<'a>(
    what: Scored,
    prep: &'a Prepared,
    seed: u64,
) -> Option<Box<dyn Ranker + 'a>> {
    match what {
        Scored::Method(Method::Base) => Some(Box::new(Incoming)),
        Scored::Method(Method::Random) => Some(Box::new(Random { seed })),
        Scored::Method(Method::Popularity) => Some(Box::new(&prep.popularity)),
        Scored::Method(Method::ItemKnn) => {
            Some(Box::new(ItemKnn::last(prep.knn(), Cooc::DEFAULT_RECENT)))
        }
        Scored::Method(Method::ItemKnnAll) => Some(Box::new(ItemKnn::whole_history(prep.knn()))),
        Scored::Method(
            Method::LlmNoProfile
            | Method::LlmManual
            | Method::LlmNoProfileLogprobs
            | Method::LlmManualLogprobs
            | Method::Fused,
        )
        | Scored::PGen(_) => None,
    }
}

fn split_name(split: EvalSplit) -> &'static str {
    match split {
        EvalSplit::Train => "train",
        EvalSplit::Validation => "validation",
        EvalSplit::Test => "test",
    }
}

/// Ranks of an LLM method (noting failures and repairs, and the prompts it used).
async fn llm_ranks(
    ctx: &JobContext,
    scorer: &Scorer,
    cases: &[Case],
    what: Scored,
    seed: u64,
    shown: &mut NotesAndPrompts,
) -> Result<Vec<usize>, JobError> {
    let outcomes = llm_outcomes(ctx, scorer, cases, what, seed, shown).await?;
    Ok(outcomes.iter().map(|o| o.rank).collect())
}

/// The report: each method's metrics per seed, mean and spread, and costs.
async fn report(
    ctx: &JobContext,
    params: &EvalParams,
    scored: &[Scored],
    st: &State,
    shown: NotesAndPrompts,
) -> Result<Report, JobError> {
    let results: Vec<MethodResult> = scored
        .iter()
        .map(|&what| {
            let name = what.name();
            let mine: Vec<&Done> = st.done.iter().filter(|d| d.1 == name).collect();
            let per_seed: Vec<SeedMetrics> = mine
                .iter()
                .map(|d| SeedMetrics {
                    seed: d.0,
                    metrics: d.2,
                })
                .collect();
            let ms: Vec<Metrics> = per_seed.iter().map(|s| s.metrics).collect();
            let (mean, std) = metrics::mean_and_std(&ms);
            let all_users = (params.data.protocol == Protocol::BaseTopk).then(|| {
                let all: Vec<Metrics> = per_seed
                    .iter()
                    .map(|s| {
                        let misses = st.outside.iter().find(|o| o.0 == s.seed).map_or(0, |o| o.1);
                        s.metrics.with_misses(misses, params.data.candidates + 1)
                    })
                    .collect();
                Metrics {
                    // users per seed, not seeds
                    n: all.iter().map(|m| m.n).max().unwrap_or(0),
                    ..metrics::mean_and_std(&all).0
                }
            });
            MethodResult {
                method: name,
                description: what.describe(),
                per_seed,
                mean,
                std,
                all_users,
                cost: mine.iter().map(|d| d.3).sum(),
            }
        })
        .collect();
    let (stages, total_cost) = ctx.stage_costs().await?;
    let mut settings = serde_json::to_value(params).unwrap_or(Value::Null);
    let uses_llm = scored.iter().any(|s| s.uses_llm());
    drop_inapplicable(&mut settings, &params.data, uses_llm);
    let mut summary = Vec::new();
    if let Some(best) = results
        .iter()
        .max_by(|a, b| a.mean.ndcg_10.total_cmp(&b.mean.ndcg_10))
    {
        summary.push(format!(
            "best NDCG@10: {} with {:.3}",
            best.method, best.mean.ndcg_10
        ));
    }
    if let Some(base) = results.iter().find(|r| r.method == Method::Base.as_str()) {
        summary.push(format!(
            "base order NDCG@10 on the same lists: {:.3}",
            base.mean.ndcg_10
        ));
    }
    summary.push(format!(
        "{} LLM calls, {} cache hits",
        total_cost.llm_calls, total_cost.cache_hits
    ));
    Ok(Report {
        title: format!("Evaluation: {}", ctx.subject(&params.data).await?),
        kind: super::JobKind::Evaluation,
        job_id: ctx.id().to_string(),
        status: super::JobStatus::Succeeded,
        started_at: ctx.job.started_at.or(Some(chrono::Utc::now())),
        finished_at: Some(chrono::Utc::now()),
        settings,
        data_notes: shown.notes,
        methods: results,
        steps: Vec::new(),
        stages,
        total_cost,
        prompts: shown.prompts,
        summary,
    })
}
