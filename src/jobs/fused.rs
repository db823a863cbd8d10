//! The evaluation's `fused` method: the evaluation's last LLM method fused with the
//! incoming order, popularity and item-kNN. The weights are tuned on the validation users
//! (their LLM rankings are computed once; the grid itself makes no LLM call), then applied to
//! the evaluated users, whose LLM rankings the LLM method already made (cache hits). The
//! first seed's blend is stored as a blend version (and can be promoted to a label).

use serde_json::json;

use super::context::{JobContext, JobError, failed};
use super::evaluate::llm_outcomes::{NotesAndPrompts, llm_outcomes};
use crate::agp::case::Case;
use crate::eval::cases::Prepared;
use crate::eval::metrics::{self, Metrics};
use crate::eval::params::{EvalParams, EvalSplit, Scored};
use crate::eval::score::Scorer;
use crate::eval::tune::{self, CaseOrders, Tuned};
use crate::rankers::{BlendWeights, Component, ItemKnn, Ranker};
use crate::store::Invalidation;
use crate::store::blends::{self, BLEND};
use crate::store::prompts::NewVersion;

/// One seed of the evaluation, as the fused method needs it.
pub(super) struct SeedRun<'a> {
    pub params: &'a EvalParams,
    pub prep: &'a Prepared,
    pub seed: u64,
    /// The LLM method to fuse, with the scorer of the evaluated users (none: no LLM method).
    pub llm: Option<(Scored, &'a Scorer)>,
    /// Store the tuned blend as a version (the first seed).
    pub store_blend: bool,
}

/// The fused method's target ranks on the evaluated users.
pub(super) async fn ranks(
    ctx: &JobContext,
    run: &SeedRun<'_>,
    shown: &mut NotesAndPrompts,
    blend_version: &mut Option<i32>,
) -> Result<Vec<usize>, JobError> {
    let validation = &run.prep.validation;
    if validation.is_empty() {
        return Err(failed(
            "the fused method tunes its weights on validation users and this split has none: \
             ask for validation_users > 0 (or leave fused out of methods)",
        ));
    }
    let val_scorer = match run.llm {
        Some(_) => Some(
            Scorer::new(
                ctx.reranker.clone(),
                ctx.llm.clone(),
                ctx.project(),
                validation,
                &run.params.data,
            )
            .await
            .map_err(failed)?,
        ),
        None => None,
    };
    let llm_val = run.llm.zip(val_scorer.as_ref()).map(|((m, _), s)| (m, s));
    let val_orders = orders(ctx, run, validation, llm_val, shown).await?;
    let tuned = tune::tune(&val_orders, &tune::grid(run.llm.is_some()));
    let cases = run.prep.cases(run.params.split);
    let test_orders = orders(ctx, run, cases, run.llm, shown).await?;
    let ranks = tune::fused_ranks(&test_orders, &tuned.weights);
    shown.notes.push(describe(run, &tuned, validation.len()));
    if run.params.split == EvalSplit::Validation {
        shown.notes.push(
            "fused: tuned and scored on the same (validation) users, so its figure is optimistic"
                .into(),
        );
    }
    if run.store_blend && blend_version.is_none() {
        let test = metrics::from_ranks(&ranks);
        let v = store(ctx, run, &tuned, &test, validation.len()).await?;
        *blend_version = Some(v);
        shown.notes.push(match &run.params.promote_blend {
            Some(label) => format!("fused: stored as blend version {v}, now labelled {label:?}"),
            None => format!(
                "fused: stored as blend version {v} (PUT /v1/blends/labels/production with {{\"version\": {v}}} to serve it)"
            ),
        });
    }
    Ok(ranks)
}

/// Each case's component orders: the LLM's (from `llm`), popularity's and item-kNN's.
async fn orders(
    ctx: &JobContext,
    run: &SeedRun<'_>,
    cases: &[Case],
    llm: Option<(Scored, &Scorer)>,
    shown: &mut NotesAndPrompts,
) -> Result<Vec<CaseOrders>, JobError> {
    let llm_orders: Vec<Option<Vec<usize>>> = match llm {
        Some((method, scorer)) => llm_outcomes(ctx, scorer, cases, method, run.seed, shown)
            .await?
            .into_iter()
            .map(|o| o.failure.is_none().then_some(o.order))
            .collect(),
        None => vec![None; cases.len()],
    };
    let knn = ItemKnn::last(run.prep.knn(), run.params.data.history_len);
    Ok(cases
        .iter()
        .zip(llm_orders)
        .map(|(c, llm)| CaseOrders {
            target: c.candidates.iter().position(|x| *x == c.target),
            n: c.candidates.len(),
            llm,
            popularity: run
                .prep
                .popularity
                .rank(&c.user_id, &c.history, &c.candidates),
            item_knn: knn.rank(&c.user_id, &c.history, &c.candidates),
        })
        .collect())
}

/// The note saying what was tuned and how it compares with each component alone.
fn describe(run: &SeedRun<'_>, t: &Tuned, users: usize) -> String {
    let singles = t
        .singles
        .iter()
        .map(|(c, m)| format!("{} {:.4}", c.as_str(), m.ndcg_10))
        .collect::<Vec<_>>()
        .join(", ");
    let llm = run.llm.map_or("no LLM method".to_string(), |(m, _)| {
        format!("LLM = {}", m.name())
    });
    format!(
        "seed {}, fused ({llm}): weights {} tuned over {} combinations on {users} validation users: \
         validation NDCG@10 {:.4} (each component alone: {singles})",
        run.seed,
        weights_text(&t.weights),
        t.tried,
        t.metrics.ndcg_10
    )
}

/// `llm 1, incoming 0.5` (components with weight only).
pub(crate) fn weights_text(w: &BlendWeights) -> String {
    w.active()
        .into_iter()
        .map(|c| format!("{} {}", c.as_str(), w.get(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Stores the tuned blend (once per job, even across restarts) and moves the asked label.
async fn store(
    ctx: &JobContext,
    run: &SeedRun<'_>,
    t: &Tuned,
    test: &Metrics,
    users: usize,
) -> Result<i32, JobError> {
    let project = ctx.project();
    let existing = blends::versions(&ctx.pool, project)
        .await?
        .into_iter()
        .find(|v| v.run_id == Some(ctx.id()));
    let version = match existing {
        Some(v) => v.version,
        None => {
            let best_single = t
                .singles
                .iter()
                .filter(|(c, _)| *c != Component::Llm)
                .max_by(|a, b| a.1.ndcg_10.total_cmp(&b.1.ndcg_10));
            let scores = json!({
                "seed": run.seed,
                "validation_users": users,
                "validation_ndcg_10": t.metrics.ndcg_10,
                "test_ndcg_10": test.ndcg_10,
                "test_users": test.n,
                "llm_method": run.llm.map(|(m, _)| m.name()),
                "best_non_llm_component": best_single.map(|(c, m)| json!({"component": c.as_str(), "validation_ndcg_10": m.ndcg_10})),
            });
            let message = format!(
                "tuned by evaluation {} on {users} validation users (seed {}): {}",
                ctx.id(),
                run.seed,
                weights_text(&t.weights)
            );
            let meta = NewVersion {
                message: &message,
                source: crate::store::states::VersionSource::Evaluation,
                run_id: Some(ctx.id()),
                parent_version: None,
                scores: Some(scores),
            };
            blends::create(
                &ctx.pool,
                project,
                &blends::BlendSpec {
                    weights: t.weights,
                    rank_mode: (t.weights.llm > 0.0)
                        .then(|| run.llm.map(|(m, _)| m.rank_mode(run.params.data.rank_mode)))
                        .flatten(),
                },
                &meta,
            )
            .await?
        }
    };
    if let Some(label) = &run.params.promote_blend {
        crate::store::prompts::set_label(&ctx.pool, project, BLEND, label, Some(version), None)
            .await?;
        ctx.reranker
            .caches
            .invalidate(&Invalidation::Labels(project.to_string()));
    }
    Ok(version)
}
