//! The optimization job (`POST /v1/optimizations`, `agp optimize`): AGP on `p_gen` over the
//! project's data. It loads the cases and prompts, runs `agp::batch` for each batch of
//! training users, stores every step and candidate, saves its state after every batch (a
//! killed job resumes where it was, with no duplicate steps or versions), then scores the
//! starting and the best prompt on the test users and writes the report.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::Instrument;
use utoipa::ToSchema;

use super::context::{BestSoFar, JobContext, JobError, failed};
use crate::agp::accept::{self, Acceptance};
use crate::agp::batch::{
    self, BatchHost, BatchSpec, DatasetNames, Prompt, Settings, Step, StepKind, Templates,
};
use crate::agp::case::{Case, CaseOutcome};
use crate::agp::prompt::{self, PromptName};
use crate::agp::{Chat, LlmCall};
use crate::eval::cases::Prepared;
use crate::eval::metrics::{self, Metrics};
use crate::eval::params::DataParams;
use crate::eval::score::{ProfileMode, Scorer};
use crate::llm::CallContext;
use crate::llm::usage::{Cost, TallySnapshot, cost_between};
use crate::rankers::{Incoming, Ranker};
use crate::report::{MethodResult, PromptShown, Report, SeedMetrics, StepRow};
use crate::store::jobs as jobs_db;
use crate::store::prompts::{self as prompts_db, NewVersion};
use crate::store::states::VersionSource;

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
        if let Some(v) = self.base_version
            && v < 1
        {
            return Err(format!("base_version must be at least 1, got {v}"));
        }
        if let Some(l) = &self.promote_to {
            prompt::check_label("promote_to", l)?;
        }
        Ok(())
    }

    fn settings(&self) -> Settings {
        Settings {
            verify_steps: self.verify_steps,
            acceptance: self.acceptance,
            position_feedback: self.position_feedback,
            aggregate: self.aggregate,
            max_prompt_words: self.max_prompt_words,
            update_temperature: self.update_temperature,
        }
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

/// What a run needs that does not change from batch to batch.
struct Setup {
    params: OptParams,
    base: Prompt,
    prep: Prepared,
    scorer: Scorer,
    templates: Templates,
    known: DatasetNames,
    batches_per_epoch: usize,
}

/// The job's batch host: the scorer on the rerank path's caches, the database, the job's tally.
struct JobHost<'a> {
    ctx: &'a JobContext,
    scorer: &'a Scorer,
    validation: &'a [Case],
    call: CallContext,
}

impl BatchHost for JobHost<'_> {
    async fn score(&self, case: &Case, prompt: &Prompt) -> CaseOutcome {
        self.scorer
            .score(case, &mode(prompt), self.scorer.rank_mode(), &self.call)
            .await
    }

    async fn validate(&self, prompt: &Prompt) -> f64 {
        validation_ndcg(self.scorer, self.validation, prompt, &self.call).await
    }

    async fn store_candidate(
        &self,
        text: &str,
        parent: i32,
        rejected: &str,
    ) -> anyhow::Result<Option<i32>> {
        store_candidate(self.ctx, text, parent, rejected).await
    }

    fn usage(&self) -> TallySnapshot {
        self.ctx.tally.snapshot()
    }

    fn cancelled(&self) -> bool {
        self.ctx.cancelled()
    }
}

fn mode(p: &Prompt) -> ProfileMode {
    ProfileMode::Prompt {
        version: p.version,
        template: p.template.clone(),
    }
}

async fn validation_ndcg(scorer: &Scorer, cases: &[Case], p: &Prompt, call: &CallContext) -> f64 {
    let out = scorer
        .score_all(cases, &mode(p), scorer.rank_mode(), call, &|| {})
        .await;
    metrics::from_ranks(&out.iter().map(|o| o.rank).collect::<Vec<_>>()).ndcg_10
}

/// Runs an optimization job.
pub async fn run(ctx: &JobContext) -> Result<Report, JobError> {
    use crate::llm::Role;
    ctx.require_llm(&[
        Role::Profile,
        Role::Rank,
        Role::Feedback,
        Role::Aggregate,
        Role::Optimize,
    ])?;
    let setup = setup(ctx).await?;
    let mut st: State = ctx.saved_state().unwrap_or(State {
        current: setup.base.version,
        step: 1,
        ..Default::default()
    });
    if setup.params.acceptance == Acceptance::Validation && st.best_val.is_none() {
        baseline(ctx, &setup, &mut st).await?;
    }
    while !st.finished_loop {
        ctx.check_cancel()?;
        one_batch(ctx, &setup, &mut st).await?;
    }
    finish(ctx, &setup, &st).await
}

/// Loads the parameters, the starting prompt, the cases, the scorer and the prompts of
/// steps 3-5.
async fn setup(ctx: &JobContext) -> Result<Setup, JobError> {
    let params: OptParams = ctx.params()?;
    params.validate().map_err(failed)?;
    let base_version = match params.base_version {
        Some(v) => v,
        None => ctx.production_version(PromptName::PGen).await?,
    };
    let base = Prompt {
        version: base_version,
        template: ctx.template(PromptName::PGen, base_version).await?,
    };
    ctx.tick(|pr| {
        pr.phase = "preparing".into();
        pr.message = "building splits and candidate lists".into();
    });
    let prep = ctx.prepare(&params.data, params.data.seed).await?;
    if prep.train.is_empty() {
        return Err(failed("no training users: import interactions first"));
    }
    let all: Vec<Case> = prep
        .train
        .iter()
        .chain(&prep.validation)
        .chain(&prep.test)
        .cloned()
        .collect();
    let scorer = Scorer::new(
        ctx.reranker.clone(),
        ctx.llm.clone(),
        ctx.project(),
        &all,
        &params.data,
    )
    .await
    .map_err(failed)?;
    let titles = ctx.item_titles(&all).await?;
    let known = DatasetNames {
        title_list: titles.values().cloned().collect(),
        titles,
        users: all.iter().map(|c| c.user_id.clone()).collect(),
    };
    let templates = Templates {
        feedback: ctx.production_template(PromptName::PFb).await?,
        aggregate: ctx.production_template(PromptName::PAgg).await?,
        update: ctx.production_template(PromptName::POpt).await?,
    };
    let batches_per_epoch = prep.train.len().div_ceil(params.batch_size);
    Ok(Setup {
        params,
        base,
        prep,
        scorer,
        templates,
        known,
        batches_per_epoch,
    })
}

/// Scores the starting prompt on validation (validation acceptance), once.
async fn baseline(ctx: &JobContext, setup: &Setup, st: &mut State) -> Result<(), JobError> {
    let validation = &setup.prep.validation;
    ctx.tick(|pr| {
        pr.phase = "baseline".into();
        pr.message = format!(
            "scoring p_gen v{} on {} validation users",
            setup.base.version,
            validation.len()
        );
    });
    let before = ctx.tally.snapshot();
    let t0 = std::time::Instant::now();
    let val = validation_ndcg(&setup.scorer, validation, &setup.base, &ctx.call_ctx()).await;
    st.best_val = Some(val);
    st.beam = vec![(setup.base.version, val)];
    let step = Step {
        kind: StepKind::Baseline,
        version: Some(setup.base.version),
        scores: json!({"validation_ndcg_10": val}),
        accepted: None,
        reason: "starting prompt".into(),
        cost: cost_between(
            &before,
            &ctx.tally.snapshot(),
            t0.elapsed().as_millis() as u64,
        ),
        scored: false,
    };
    put_step(ctx, 0, 0, 0, &step).await?;
    save(ctx, st).await
}

/// The training users of batch `batch` of `epoch` (each epoch has its seeded order).
fn batch_cases(setup: &Setup, epoch: usize, batch: usize) -> Vec<Case> {
    let train = &setup.prep.train;
    let b = setup.params.batch_size;
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
        setup.params.data.seed.wrapping_add(epoch as u64),
    ));
    order
        .iter()
        .skip(batch * b)
        .take(b)
        .map(|&i| train[i].clone())
        .collect()
}

/// Runs the next batch, stores its steps, moves the state on and saves it.
async fn one_batch(ctx: &JobContext, setup: &Setup, st: &mut State) -> Result<(), JobError> {
    let p = &setup.params;
    let started = std::time::Instant::now();
    let calls_before = ctx.tally.snapshot().llm_calls;
    let (epoch, batch) = (st.epoch, st.batch);
    let done_batches = (epoch * setup.batches_per_epoch + batch) as u64;
    ctx.tick(|pr| {
        pr.phase = "optimizing".into(); // not a state: the phase shown
        pr.done = done_batches;
        pr.total = (setup.batches_per_epoch * p.epochs) as u64;
        pr.message = format!(
            "epoch {} batch {}/{}",
            epoch + 1,
            batch + 1,
            setup.batches_per_epoch
        );
    });
    let cases = batch_cases(setup, epoch, batch);
    // The next batch's summaries do not depend on this one: make them in the slots this
    // batch leaves idle (its single aggregation and update calls).
    let next = if batch + 1 < setup.batches_per_epoch {
        batch_cases(setup, epoch, batch + 1)
    } else {
        Vec::new()
    };
    let call = ctx.call_ctx();
    let current = Prompt {
        version: st.current,
        template: ctx.template(PromptName::PGen, st.current).await?,
    };
    let settings = p.settings();
    let spec = BatchSpec {
        cases: &cases,
        current,
        best_validation: st.best_val.unwrap_or(0.0),
        seed_key: format!("{}/{epoch}/{batch}", ctx.id()),
        settings: &settings,
        templates: &setup.templates,
        known: &setup.known,
    };
    let host = JobHost {
        ctx,
        scorer: &setup.scorer,
        validation: &setup.prep.validation,
        call: call.clone(),
    };
    let llm = LlmCall {
        client: &ctx.llm,
        ctx: &call,
    };
    let (outcome, ()) = futures_util::future::join(
        batch_in(&llm, &host, &spec),
        setup.scorer.prefetch_summaries(&next, &call),
    )
    .instrument(tracing::info_span!("job.batch", epoch, batch))
    .await;
    let outcome = outcome?;
    for step in &outcome.steps {
        record(ctx, st, epoch, batch, step).await?;
    }
    if let Some(a) = outcome.accepted {
        st.current = a.version;
        if let Some(v) = a.validation {
            st.best_val = Some(v);
            accept::push_beam(&mut st.beam, a.version, v, p.beam_width);
        }
        st.since_improvement = 0;
    } else {
        st.since_improvement += 1;
    }
    advance(st, p, setup.batches_per_epoch);
    ctx.tick(|pr| pr.done = done_batches + 1);
    st.loop_ms += started.elapsed().as_millis() as u64;
    st.loop_calls += ctx.tally.snapshot().llm_calls - calls_before;
    save(ctx, st).await
}

/// Publishes the best version so far (the beam's head; the current prompt before anything
/// was scored) and saves the resume state.
async fn save(ctx: &JobContext, st: &State) -> Result<(), JobError> {
    let best = match st.beam.first() {
        Some(&(version, score)) => BestSoFar {
            version,
            score: Some(score),
        },
        None => BestSoFar {
            version: st.current,
            score: None,
        },
    };
    ctx.tick(|p| p.best = Some(best));
    ctx.save(st).await
}

async fn batch_in(
    llm: &impl Chat,
    host: &impl BatchHost,
    spec: &BatchSpec<'_>,
) -> Result<batch::BatchOutcome, JobError> {
    batch::run(llm, host, spec).await.map_err(|e| match e {
        batch::Stopped::Cancelled => JobError::Cancelled,
        batch::Stopped::Failed(e) => JobError::Failed(e),
    })
}

/// Moves to the next batch (and epoch), and decides whether the loop is over.
fn advance(st: &mut State, p: &OptParams, batches_per_epoch: usize) {
    st.batch += 1;
    if st.batch >= batches_per_epoch {
        st.batch = 0;
        st.epoch += 1;
    }
    if st.epoch >= p.epochs {
        st.finished_loop = true;
    } else if accept::stop_early(p.acceptance, p.patience, st.since_improvement) {
        st.finished_loop = true;
        st.stopped_early = true;
    }
}

/// Stores a batch step (numbered) and, for a scored candidate, its scores on its version.
async fn record(
    ctx: &JobContext,
    st: &mut State,
    epoch: usize,
    batch: usize,
    step: &Step,
) -> Result<(), JobError> {
    if step.scored
        && let Some(v) = step.version
    {
        let key = format!("{}#{}", ctx.id(), st.step);
        prompts_db::set_scores(
            &ctx.pool,
            ctx.project(),
            PromptName::PGen.as_str(),
            v,
            &json!({ key: step.scores.clone() }),
        )
        .await?;
    }
    put_step(ctx, st.step, epoch as i32 + 1, batch as i32 + 1, step).await?;
    st.step += 1;
    Ok(())
}

async fn put_step(
    ctx: &JobContext,
    number: i32,
    epoch: i32,
    batch: i32,
    step: &Step,
) -> Result<(), JobError> {
    let cost = serde_json::to_value(step.cost).map_err(|e| failed(format!("step cost: {e}")))?;
    jobs_db::put_step(
        &ctx.pool,
        ctx.id(),
        number,
        epoch,
        batch,
        step.kind.as_str(),
        step.version,
        &step.scores,
        step.accepted,
        &step.reason,
        &cost,
    )
    .await?;
    Ok(())
}

/// Stores a candidate as a `p_gen` version (once per run and text); `None` when the text is
/// not a valid template (it cannot be a version).
async fn store_candidate(
    ctx: &JobContext,
    text: &str,
    parent: i32,
    rejected: &str,
) -> anyhow::Result<Option<i32>> {
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
        source: VersionSource::Optimization,
        run_id: Some(ctx.id()),
        parent_version: Some(parent),
        scores: None,
    };
    Ok(Some(
        prompts_db::create_version(
            &ctx.pool,
            ctx.project(),
            PromptName::PGen.as_str(),
            text,
            &meta,
        )
        .await?,
    ))
}

/// The best prompt: the beam's head (validation) or the last accepted (paper).
fn best_version(p: &OptParams, st: &State) -> i32 {
    match p.acceptance {
        Acceptance::Validation => st.beam.first().map(|b| b.0).unwrap_or(st.current),
        Acceptance::Paper => st.current,
    }
}

/// Scores the starting and the best prompt on the test users (at once, each with its own
/// tally so their costs stay apart) and the incoming order.
async fn test_scores(
    ctx: &JobContext,
    setup: &Setup,
    best: &Prompt,
) -> Vec<(Option<i32>, Metrics, Cost)> {
    let base = &setup.base;
    let prompts: Vec<&Prompt> = if best.version == base.version {
        vec![base]
    } else {
        vec![base, best]
    };
    let test = &setup.prep.test;
    let mut out = futures_util::future::join_all(prompts.iter().map(|p| async move {
        let tally = std::sync::Arc::new(crate::llm::Tally::default());
        let call = ctx.call_ctx().with_tally(tally.clone());
        let t0 = std::time::Instant::now();
        let outcomes = setup
            .scorer
            .score_all(test, &mode(p), setup.scorer.rank_mode(), &call, &|| {})
            .await;
        let m = metrics::from_ranks(&outcomes.iter().map(|o| o.rank).collect::<Vec<_>>());
        let cost = cost_between(
            &Default::default(),
            &tally.snapshot(),
            t0.elapsed().as_millis() as u64,
        );
        (Some(p.version), m, cost)
    }))
    .await;
    let incoming: Vec<usize> = test
        .iter()
        .map(|c| c.rank_or_last(&Incoming.rank(&c.user_id, &c.history, &c.candidates)))
        .collect();
    out.push((None, metrics::from_ranks(&incoming), Cost::default()));
    out
}

/// The test scores, the label move, the steps and the costs, as the report.
async fn finish(ctx: &JobContext, setup: &Setup, st: &State) -> Result<Report, JobError> {
    let p = &setup.params;
    let base = &setup.base;
    let best = Prompt {
        version: best_version(p, st),
        template: ctx.template(PromptName::PGen, best_version(p, st)).await?,
    };
    ctx.tick(|pr| {
        pr.phase = "testing".into();
        pr.message = format!(
            "baseline v{} vs best v{} on {} test users",
            base.version,
            best.version,
            setup.prep.test.len()
        );
    });
    let scores = test_scores(ctx, setup, &best).await;
    let ndcg = |v: i32| {
        scores
            .iter()
            .find(|s| s.0 == Some(v))
            .map_or(0.0, |s| s.1.ndcg_10)
    };
    let (base_ndcg, best_ndcg) = (ndcg(base.version), ndcg(best.version));
    let mut summary = vec![
        format!(
            "test NDCG@10: baseline p_gen v{} {base_ndcg:.4}, best p_gen v{} {best_ndcg:.4}",
            base.version, best.version
        ),
        format!(
            "acceptance {:?}; {} candidate prompts tried",
            p.acceptance,
            jobs_db::count_steps(&ctx.pool, ctx.id(), StepKind::Candidate.as_str()).await?
        ),
    ];
    if st.stopped_early {
        summary.push(format!(
            "stopped early: no validation improvement in {} batches",
            p.patience
        ));
    }
    if let Some(label) = &p.promote_to {
        if best.version != base.version && best_ndcg > base_ndcg {
            prompts_db::set_label(
                &ctx.pool,
                ctx.project(),
                PromptName::PGen.as_str(),
                label,
                Some(best.version),
                None,
            )
            .await?;
            summary.push(format!(
                "label {label:?} now points at p_gen v{}",
                best.version
            ));
        } else {
            summary.push(format!(
                "label {label:?} not moved: the best prompt does not beat the baseline on test"
            ));
        }
    }
    let (stages, total_cost) = ctx.stage_costs().await?;
    summary.push(format!(
        "{} LLM calls, {} cache hits",
        total_cost.llm_calls, total_cost.cache_hits
    ));
    let mut prompts = vec![PromptShown {
        label: format!("baseline p_gen v{}", base.version),
        version: base.version,
        template: base.template.to_string(),
    }];
    if best.version != base.version {
        prompts.push(PromptShown {
            label: format!("best p_gen v{}", best.version),
            version: best.version,
            template: best.template.to_string(),
        });
    }
    Ok(Report {
        title: format!("AGP optimization of p_gen: {}", ctx.subject(&p.data).await?),
        kind: super::JobKind::Optimization,
        job_id: ctx.id().to_string(),
        status: super::JobStatus::Succeeded,
        started_at: ctx.job.started_at,
        finished_at: Some(chrono::Utc::now()),
        settings: {
            let mut v = serde_json::to_value(p).unwrap_or_default();
            crate::eval::params::drop_inapplicable(&mut v, &p.data, true);
            v
        },
        data_notes: setup.prep.notes.clone(),
        methods: methods(p, base.version, &scores),
        steps: steps(ctx).await?,
        stages,
        total_cost,
        prompts,
        summary,
    })
}

/// The report's rows for the test scores.
fn methods(p: &OptParams, base: i32, scores: &[(Option<i32>, Metrics, Cost)]) -> Vec<MethodResult> {
    scores
        .iter()
        .map(|&(v, m, cost)| {
            let (method, description) = match v {
                Some(v) if v == base => (format!("baseline_pgen_v{v}"), "the starting p_gen"),
                Some(v) => (format!("best_pgen_v{v}"), "the best p_gen found"),
                None => (
                    "base".to_string(),
                    "the candidate list in its incoming order",
                ),
            };
            MethodResult {
                method,
                description: description.into(),
                per_seed: vec![SeedMetrics {
                    seed: p.data.seed,
                    metrics: m,
                }],
                mean: m,
                std: Metrics {
                    n: 1,
                    ..Default::default()
                },
                all_users: None,
                cost,
            }
        })
        .collect()
}

/// Every stored step of the run, for the report.
async fn steps(ctx: &JobContext) -> Result<Vec<StepRow>, JobError> {
    Ok(jobs_db::steps(&ctx.pool, ctx.id())
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
        .collect())
}
