//! The evaluation job (`POST /v1/evaluations`, `agp eval`): for each seed, the splits and
//! candidate lists, every method on the same lists and LLM, metrics per seed (saved after
//! each method, so a killed job resumes), then the report.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::context::{JobContext, JobError, failed};
use crate::agp::prompt::PromptName;
use crate::eval::cases::Prepared;
use crate::eval::metrics::{self, Metrics};
use crate::eval::params::{EvalParams, EvalSplit, Method, Scored};
use crate::eval::score::{ProfileMode, Scorer};
use crate::llm::usage::{Cost, cost_between};
use crate::rankers::{Incoming, Random, Ranker};
use crate::report::{MethodResult, PromptShown, Report, SeedMetrics};

/// One finished (seed, method): the resumable state is the list of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Done(u64, String, Metrics, Cost);

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    done: Vec<Done>,
}

/// Runs an evaluation job.
pub async fn run(ctx: &JobContext) -> Result<Report, JobError> {
    let params: EvalParams = ctx.params()?;
    params.validate().map_err(failed)?;
    let seeds = params.seeds();
    let scored = params.scored();
    let mut st: State = ctx.saved_state().unwrap_or_default();
    let mut notes = Vec::new();
    let mut prompts: Vec<PromptShown> = Vec::new();
    for (si, &seed) in seeds.iter().enumerate() {
        ctx.check_cancel()?;
        ctx.tick(|p| {
            p.phase = "preparing".into();
            p.message = format!("seed {seed}: building splits and candidate lists");
        });
        let prep = ctx.prepare(&params.data, seed).await?;
        if si == 0 {
            notes = prep.notes.clone();
        }
        let cases = match params.split {
            EvalSplit::Train => &prep.train,
            EvalSplit::Validation => &prep.validation,
            EvalSplit::Test => &prep.test,
        };
        let total = (seeds.len() * scored.len() * cases.len()) as u64;
        let needs_llm = scored.iter().any(|s| ranker_for(*s, &prep, seed).is_none());
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
                None => {
                    let scorer = scorer.as_ref().ok_or_else(|| failed("no scorer"))?;
                    llm_ranks(ctx, scorer, cases, what, seed, &mut prompts, &mut notes).await?
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
    report(ctx, &params, &scored, &st, notes, prompts).await
}

/// The non-LLM method's ranker, or `None` for an LLM method.
fn ranker_for<'a>(what: Scored, prep: &'a Prepared, seed: u64) -> Option<Box<dyn Ranker + 'a>> {
    match what {
        Scored::Method(Method::Base) => Some(Box::new(Incoming)),
        Scored::Method(Method::Random) => Some(Box::new(Random { seed })),
        Scored::Method(Method::Popularity) => Some(Box::new(&prep.popularity)),
        _ => None,
    }
}

/// Ranks of an LLM method (noting failures and repairs, and the prompts it used).
async fn llm_ranks(
    ctx: &JobContext,
    scorer: &Scorer,
    cases: &[crate::agp::case::Case],
    what: Scored,
    seed: u64,
    prompts: &mut Vec<PromptShown>,
    notes: &mut Vec<String>,
) -> Result<Vec<usize>, JobError> {
    let version = match what {
        Scored::Method(Method::LlmManual) => Some(1),
        Scored::PGen(v) => Some(v),
        _ => None,
    };
    let mode = match version {
        Some(v) => {
            let template = ctx.template(PromptName::PGen, v).await?;
            if !prompts.iter().any(|p| p.version == v) {
                prompts.push(PromptShown {
                    label: format!("p_gen v{v}"),
                    version: v,
                    template: template.to_string(),
                });
            }
            ProfileMode::Prompt {
                version: v,
                template,
            }
        }
        None => ProfileMode::HistoryOnly,
    };
    let call = ctx.call_ctx();
    let tick = || ctx.tick(|p| p.done += 1);
    let outcomes = scorer.score_all(cases, &mode, &call, &tick).await;
    let name = what.name();
    let failures = outcomes.iter().filter(|o| o.failure.is_some()).count();
    if failures > 0 {
        notes.push(format!(
            "seed {seed}, {name}: {failures} of {} lists fell back to the incoming order (LLM failure)",
            outcomes.len()
        ));
    }
    let repaired = outcomes.iter().filter(|o| o.repaired).count();
    if repaired > 0 {
        notes.push(format!(
            "seed {seed}, {name}: {repaired} of {} ranking answers needed repair",
            outcomes.len()
        ));
    }
    Ok(outcomes.iter().map(|o| o.rank).collect())
}

/// The report: each method's metrics per seed, mean and spread, and costs.
async fn report(
    ctx: &JobContext,
    params: &EvalParams,
    scored: &[Scored],
    st: &State,
    notes: Vec<String>,
    prompts: Vec<PromptShown>,
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
            MethodResult {
                method: name,
                description: what.describe(),
                per_seed,
                mean,
                std,
                cost: mine.iter().map(|d| d.3).sum(),
            }
        })
        .collect();
    let (stages, total_cost) = ctx.stage_costs().await?;
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
        title: format!("Evaluation of project {}", ctx.project()),
        kind: super::JobKind::Evaluation.as_str().into(),
        job_id: ctx.id().to_string(),
        status: "succeeded".into(),
        started_at: ctx.job.started_at.or(Some(chrono::Utc::now())),
        finished_at: Some(chrono::Utc::now()),
        settings: serde_json::to_value(params).unwrap_or(Value::Null),
        data_notes: notes,
        methods: results,
        steps: Vec::new(),
        stages,
        total_cost,
        prompts,
        summary,
    })
}
