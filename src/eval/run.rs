//! The evaluation job (`POST /v1/evaluations`, `agp eval`): splits, candidate lists, every
//! method on the same lists and LLM, metrics per seed, and the report.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::base::{Cooc, Popularity, Recommend};
use super::metrics::{self, Metrics};
use super::report::{Cost, MethodResult, PromptShown, Report, SeedMetrics, StageCost};
use super::score::{ProfileMode, Scorer};
use super::{BaseRecommender, Case, Holdout, Protocol, UserSeq, protocol, split};
use crate::jobs::{JobContext, JobError};
use crate::llm::usage::TallySnapshot;

/// Largest seed: integers above 2^53 - 1 do not survive every JSON parser.
pub const MAX_SEED: u64 = 9_007_199_254_740_991;

/// Settings shared by evaluations and optimizations (all optional; defaults shown in API.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct DataParams {
    /// Candidate protocol: `llmrank` (target + random items) or `base-topk` (a base recommender's top-n).
    #[arg(long, value_enum, default_value_t = Protocol::Llmrank)]
    pub protocol: Protocol,
    /// Training users (optimization batches come from them).
    #[arg(long, default_value_t = 100)]
    #[schema(maximum = 100000)]
    pub train_users: usize,
    /// Validation users (validation acceptance).
    #[arg(long, default_value_t = 50)]
    #[schema(maximum = 100000)]
    pub validation_users: usize,
    /// Test users (final metrics).
    #[arg(long, default_value_t = 200)]
    #[schema(maximum = 100000)]
    pub test_users: usize,
    /// Seed of the split, candidate lists and shuffles.
    #[arg(long, default_value_t = 7)]
    #[schema(maximum = 9007199254740991_u64)]
    pub seed: u64,
    /// Candidates per list (llmrank: 1 target + n-1 random; base-topk: the base's top-n).
    #[arg(long, default_value_t = 20)]
    #[schema(minimum = 2, maximum = 200)]
    pub candidates: usize,
    /// Recent items a profile is written from (L).
    #[arg(long, default_value_t = 5)]
    #[schema(minimum = 1, maximum = 50)]
    pub history_len: usize,
    /// Summarize items with `p_sum` before writing profiles (false: raw metadata).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub summaries: bool,
    /// Base recommender of the base-topk protocol.
    #[arg(long, value_enum, default_value_t = BaseRecommender::Cooc)]
    pub base: BaseRecommender,
    /// Rankings in shuffled orders summed per list (1 = off).
    #[arg(long, default_value_t = 1)]
    #[schema(minimum = 1, maximum = 10)]
    pub rank_repeats: usize,
}

impl Default for DataParams {
    fn default() -> Self {
        DataParams {
            protocol: Protocol::Llmrank,
            train_users: 100,
            validation_users: 50,
            test_users: 200,
            seed: 7,
            candidates: 20,
            history_len: 5,
            summaries: true,
            base: BaseRecommender::Cooc,
            rank_repeats: 1,
        }
    }
}

impl DataParams {
    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let limits = [
            ("train_users", self.train_users, 0, 100_000),
            ("validation_users", self.validation_users, 0, 100_000),
            ("test_users", self.test_users, 0, 100_000),
            ("candidates", self.candidates, 2, 200),
            ("history_len", self.history_len, 1, 50),
            ("rank_repeats", self.rank_repeats, 1, 10),
        ];
        for (name, v, lo, hi) in limits {
            if v < lo || v > hi {
                return Err(format!("{name} must be between {lo} and {hi}, got {v}"));
            }
        }
        if self.seed > MAX_SEED {
            return Err(format!(
                "seed must be at most {MAX_SEED}, got {}",
                self.seed
            ));
        }
        Ok(())
    }
}

/// Request of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct EvalParams {
    #[serde(flatten)]
    #[command(flatten)]
    pub data: DataParams,
    /// Seeds to repeat the whole evaluation with (default: `[seed]`); spread is over seeds.
    #[arg(long, value_delimiter = ',')]
    #[schema(min_items = 1, max_items = 10, value_type = Option<Vec<SeedDoc>>)]
    pub seeds: Option<Vec<u64>>,
    /// Methods to run (default all): base, random, popularity, llm_no_profile, llm_manual.
    #[arg(long, value_delimiter = ',')]
    #[schema(min_items = 1, value_type = Option<Vec<MethodDoc>>)]
    pub methods: Option<Vec<String>>,
    /// Stored `p_gen` versions to evaluate as methods `llm_pgen_v<N>`.
    #[arg(long, value_delimiter = ',')]
    #[schema(max_items = 10, value_type = Vec<VersionDoc>)]
    pub versions: Vec<i32>,
    /// Which split's users to evaluate on: test (default), validation or train.
    #[arg(long, default_value = "test")]
    #[schema(value_type = SplitDoc)]
    pub split: String,
}

/// How a seed is documented: an integer JSON can carry exactly.
struct SeedDoc;

impl utoipa::PartialSchema for SeedDoc {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        int_schema(0, 9_007_199_254_740_991)
    }
}
impl ToSchema for SeedDoc {}

/// How a `p_gen` version number is documented.
struct VersionDoc;

impl utoipa::PartialSchema for VersionDoc {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        int_schema(1, i32::MAX as i64)
    }
}
impl ToSchema for VersionDoc {}

fn int_schema(min: i64, max: i64) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .minimum(Some(min as f64))
        .maximum(Some(max as f64))
        .into()
}

/// An evaluation method.
#[derive(ToSchema)]
#[schema(as = Method)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum MethodDoc {
    Base,
    Random,
    Popularity,
    LlmNoProfile,
    LlmManual,
}

/// Which split's users an evaluation scores.
#[derive(ToSchema)]
#[schema(as = EvalSplit)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum SplitDoc {
    Test,
    Validation,
    Train,
}

impl Default for EvalParams {
    fn default() -> Self {
        EvalParams {
            data: DataParams::default(),
            seeds: None,
            methods: None,
            versions: Vec::new(),
            split: "test".into(),
        }
    }
}

/// The methods every evaluation knows.
pub const METHODS: [&str; 5] = [
    "base",
    "random",
    "popularity",
    "llm_no_profile",
    "llm_manual",
];

impl EvalParams {
    /// Checks the request; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        self.data.validate()?;
        if let Some(m) = &self.methods {
            if m.is_empty() {
                return Err("methods must not be empty (leave it out for all)".into());
            }
            if let Some(bad) = m.iter().find(|m| !METHODS.contains(&m.as_str())) {
                return Err(format!(
                    "unknown method {bad:?} (methods: {})",
                    METHODS.join(", ")
                ));
            }
        }
        if let Some(s) = &self.seeds
            && (s.is_empty() || s.len() > 10 || s.iter().any(|x| *x > MAX_SEED))
        {
            return Err(format!(
                "seeds must list 1 to 10 seeds of at most {MAX_SEED}"
            ));
        }
        if !["test", "validation", "train"].contains(&self.split.as_str()) {
            return Err(format!(
                "split must be test, validation or train, got {:?}",
                self.split
            ));
        }
        if self.versions.len() > 10 || self.versions.iter().any(|v| *v < 1) {
            return Err("versions must list up to 10 p_gen versions (numbers from 1)".into());
        }
        Ok(())
    }

    fn seeds(&self) -> Vec<u64> {
        self.seeds.clone().unwrap_or_else(|| vec![self.data.seed])
    }

    fn method_list(&self) -> Vec<String> {
        let mut m: Vec<String> = self
            .methods
            .clone()
            .unwrap_or_else(|| METHODS.iter().map(|s| s.to_string()).collect());
        m.extend(self.versions.iter().map(|v| format!("llm_pgen_v{v}")));
        m
    }
}

/// Users, splits and candidate lists of one seed.
pub struct Prepared {
    pub train: Vec<Case>,
    pub validation: Vec<Case>,
    pub test: Vec<Case>,
    pub popularity: Popularity,
    pub notes: Vec<String>,
}

/// Builds the cases of one seed from the project's stored interactions.
pub async fn prepare(ctx: &JobContext, p: &DataParams, seed: u64) -> Result<Prepared, JobError> {
    let rows = crate::store::catalog::user_sequences(&ctx.pool, ctx.project()).await?;
    let seqs: Vec<UserSeq> = rows
        .into_iter()
        .map(|(user_id, items)| UserSeq { user_id, items })
        .collect();
    let order = crate::store::catalog::history_order(&ctx.pool, ctx.project()).await?;
    let holdout = if order == "unordered" {
        Holdout::Random
    } else {
        Holdout::Last
    };
    Ok(prepare_from(&seqs, holdout, p, seed))
}

/// `prepare` over given sequences (pure).
pub fn prepare_from(seqs: &[UserSeq], holdout: Holdout, p: &DataParams, seed: u64) -> Prepared {
    let mut notes = Vec::new();
    match holdout {
        Holdout::Last => notes.push("held-out item: each user's last item; history: the items before it".into()),
        Holdout::Random => notes.push(
            "this data has no timestamps: a seeded random item of each user was held out, and the history is the \
             user's other items in file order"
                .into(),
        ),
    }
    let s = split::split_users(
        seqs,
        p.train_users,
        p.validation_users,
        p.test_users,
        seed,
        2,
    );
    let eligible = seqs.iter().filter(|u| u.items.len() >= 2).count();
    notes.push(format!(
        "{} users, {} with at least 2 items; split with seed {seed}: {} train, {} validation, {} test",
        seqs.len(),
        eligible,
        s.train.len(),
        s.validation.len(),
        s.test.len()
    ));
    if s.train.len() < p.train_users
        || s.validation.len() < p.validation_users
        || s.test.len() < p.test_users
    {
        notes.push("fewer users than asked for: the splits hold what there is".into());
    }
    // Base recommenders learn from every sequence with the evaluated users' targets removed.
    let mut held: HashMap<String, (Vec<String>, String)> = HashMap::new();
    for u in s.train.iter().chain(&s.validation).chain(&s.test) {
        if let Some(h) = protocol::hold_out(u, holdout, seed) {
            held.insert(u.user_id.clone(), h);
        }
    }
    let training: Vec<Vec<String>> = seqs
        .iter()
        .map(|u| {
            held.get(&u.user_id)
                .map(|(h, _)| h.clone())
                .unwrap_or_else(|| u.items.clone())
        })
        .collect();
    let popularity = Popularity::fit(&training);
    let mut pool: Vec<String> = training
        .iter()
        .flatten()
        .cloned()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    pool.sort();
    let cooc = (p.protocol == Protocol::BaseTopk && p.base == BaseRecommender::Cooc)
        .then(|| Cooc::fit(&training, 5, 5));
    let mut missing = 0usize;
    let mut total = 0usize;
    let mut build = |users: &[UserSeq]| -> Vec<Case> {
        let mut out = Vec::new();
        for u in users {
            let Some((history, target)) = held.get(&u.user_id).cloned() else {
                continue;
            };
            match p.protocol {
                Protocol::Llmrank => out.push(protocol::llmrank_case(
                    u,
                    history,
                    target,
                    &pool,
                    p.candidates,
                    seed,
                )),
                Protocol::BaseTopk => {
                    let rec: &dyn Recommend = match &cooc {
                        Some(c) => c,
                        None => &popularity,
                    };
                    let (case, inside) =
                        protocol::base_topk_case(&u.user_id, history, target, rec, p.candidates);
                    total += 1;
                    if inside {
                        out.push(case);
                    } else {
                        missing += 1;
                    }
                }
            }
        }
        out
    };
    let train = build(&s.train);
    let validation = build(&s.validation);
    let test = build(&s.test);
    match p.protocol {
        Protocol::Llmrank => notes.push(format!(
            "candidates (llmrank): the held-out item + {} random items the user never interacted with, shuffled (seed {seed})",
            p.candidates.saturating_sub(1)
        )),
        Protocol::BaseTopk => notes.push(format!(
            "candidates (base-topk): the top {} of the {:?} base recommender; {missing} of {total} users had the held-out \
             item outside the list and are not scored (reported, not hidden)",
            p.candidates, p.base
        )),
    }
    Prepared {
        train,
        validation,
        test,
        popularity,
        notes,
    }
}

/// Ranks of the non-LLM methods.
pub fn cheap_ranks(method: &str, cases: &[Case], pop: &Popularity, seed: u64) -> Vec<usize> {
    cases
        .iter()
        .map(|c| {
            let mut order: Vec<usize> = (0..c.candidates.len()).collect();
            match method {
                "random" => {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(
                        seed ^ crate::hash::stable_hash(&c.user_id),
                    );
                    order.shuffle(&mut rng);
                }
                "popularity" => {
                    order.sort_by_key(|&i| std::cmp::Reverse(pop.score(&c.candidates[i])))
                }
                _ => {}
            }
            c.target_rank(&order).unwrap_or(c.candidates.len() + 1)
        })
        .collect()
}

/// Difference of two snapshots (usage of one phase).
pub fn cost_between(before: &TallySnapshot, after: &TallySnapshot, wall_ms: u64) -> Cost {
    Cost {
        llm_calls: after.llm_calls - before.llm_calls,
        cache_hits: after.cache_hits - before.cache_hits,
        prompt_tokens: after.prompt_tokens - before.prompt_tokens,
        completion_tokens: after.completion_tokens - before.completion_tokens,
        wall_ms,
    }
}

/// Stage costs of a job from its usage rows.
pub async fn stage_costs(ctx: &JobContext) -> Result<(Vec<StageCost>, Cost), JobError> {
    let rows = crate::store::llm::job_usage_by_role(&ctx.pool, ctx.id()).await?;
    let stage = |role: &str| -> String {
        match role {
            "summarize" => "summaries",
            "profile" => "profiles",
            "rank" => "ranking",
            "feedback" => "feedback",
            "aggregate" => "aggregation",
            "optimize" => "update",
            other => other,
        }
        .to_string()
    };
    let mut total = Cost::default();
    let stages = rows
        .into_iter()
        .map(|(role, t)| {
            let c = Cost {
                llm_calls: t.calls,
                cache_hits: t.cache_hits,
                prompt_tokens: t.prompt_tokens,
                completion_tokens: t.completion_tokens,
                wall_ms: t.latency_ms,
            };
            total.llm_calls += c.llm_calls;
            total.cache_hits += c.cache_hits;
            total.prompt_tokens += c.prompt_tokens;
            total.completion_tokens += c.completion_tokens;
            total.wall_ms += c.wall_ms;
            StageCost {
                stage: stage(&role),
                cost: c,
            }
        })
        .collect();
    Ok((stages, total))
}

/// A prompt version's template.
pub async fn template_of(ctx: &JobContext, version: i32) -> Result<Arc<String>, JobError> {
    let row = crate::store::prompts::version(&ctx.pool, ctx.project(), "p_gen", version)
        .await?
        .ok_or_else(|| {
            JobError::Failed(anyhow::anyhow!("p_gen version {version} does not exist"))
        })?;
    Ok(Arc::new(row.template))
}

/// Runs an evaluation job.
pub async fn run(ctx: &JobContext) -> Result<Report, JobError> {
    let params: EvalParams =
        serde_json::from_value(ctx.job.params.clone()).map_err(|e| JobError::Failed(e.into()))?;
    params
        .validate()
        .map_err(|e| JobError::Failed(anyhow::anyhow!(e)))?;
    let started = chrono::Utc::now();
    let seeds = params.seeds();
    let methods = params.method_list();
    let mut done: Vec<(u64, String, Metrics, Cost)> = ctx
        .saved_state()
        .and_then(|s| serde_json::from_value(s.get("done").cloned().unwrap_or(Value::Null)).ok())
        .unwrap_or_default();
    let mut notes = Vec::new();
    let mut prompts: Vec<PromptShown> = Vec::new();

    for (si, &seed) in seeds.iter().enumerate() {
        ctx.check_cancel()?;
        ctx.tick(|p| {
            p.phase = "preparing".into();
            p.message = format!("seed {seed}: building splits and candidate lists");
        });
        let prep = prepare(ctx, &params.data, seed).await?;
        if si == 0 {
            notes = prep.notes.clone();
        }
        let cases = match params.split.as_str() {
            "train" => &prep.train,
            "validation" => &prep.validation,
            _ => &prep.test,
        };
        let total = (seeds.len() * methods.len() * cases.len()) as u64;
        let scorer = Scorer::new(
            ctx.reranker.clone(),
            ctx.llm.clone(),
            ctx.project(),
            cases,
            params.data.history_len,
            params.data.summaries,
            params.data.rank_repeats,
        )
        .await
        .map_err(|e| JobError::Failed(anyhow::anyhow!("{e}")))?;
        for method in &methods {
            ctx.check_cancel()?;
            if done.iter().any(|(s, m, _, _)| *s == seed && m == method) {
                continue;
            }
            let before = ctx.tally.snapshot();
            let t0 = std::time::Instant::now();
            ctx.tick(|p| {
                p.phase = "scoring".into();
                p.total = total;
                p.message = format!("seed {seed}: {method}");
            });
            let ranks: Vec<usize> = match method.as_str() {
                "base" | "random" | "popularity" => {
                    let r = cheap_ranks(method, cases, &prep.popularity, seed);
                    ctx.tick(|p| p.done += cases.len() as u64);
                    r
                }
                llm => {
                    let mode =
                        match llm {
                            "llm_no_profile" => ProfileMode::HistoryOnly,
                            "llm_manual" => ProfileMode::Prompt {
                                version: 1,
                                template: template_of(ctx, 1).await?,
                            },
                            other => {
                                let v: i32 =
                                    other.trim_start_matches("llm_pgen_v").parse().map_err(
                                        |_| JobError::Failed(anyhow::anyhow!("bad method {other}")),
                                    )?;
                                ProfileMode::Prompt {
                                    version: v,
                                    template: template_of(ctx, v).await?,
                                }
                            }
                        };
                    if let ProfileMode::Prompt { version, template } = &mode
                        && !prompts.iter().any(|p| p.version == *version)
                    {
                        prompts.push(PromptShown {
                            label: format!("p_gen v{version}"),
                            version: *version,
                            template: template.to_string(),
                        });
                    }
                    let call = ctx.call_ctx();
                    let counter = AtomicU64::new(0);
                    let tick = || {
                        counter.fetch_add(1, Ordering::Relaxed);
                        ctx.tick(|p| p.done += 1);
                    };
                    let outcomes = scorer.score_all(cases, &mode, &call, &tick).await;
                    let failures = outcomes.iter().filter(|o| o.failure.is_some()).count();
                    if failures > 0 {
                        notes.push(format!(
                            "seed {seed}, {method}: {failures} of {} lists fell back to the incoming order (LLM failure)",
                            outcomes.len()
                        ));
                    }
                    let repaired = outcomes.iter().filter(|o| o.repaired).count();
                    if repaired > 0 {
                        notes.push(format!(
                            "seed {seed}, {method}: {repaired} of {} ranking answers needed repair",
                            outcomes.len()
                        ));
                    }
                    outcomes.iter().map(|o| o.rank).collect()
                }
            };
            let m = metrics::from_ranks(&ranks);
            let cost = cost_between(
                &before,
                &ctx.tally.snapshot(),
                t0.elapsed().as_millis() as u64,
            );
            done.push((seed, method.clone(), m, cost));
            ctx.save(json!({ "done": done })).await?;
        }
    }

    let mut results: Vec<MethodResult> = Vec::new();
    for method in &methods {
        let per_seed: Vec<SeedMetrics> = done
            .iter()
            .filter(|(_, m, _, _)| m == method)
            .map(|(s, _, met, _)| SeedMetrics {
                seed: *s,
                metrics: *met,
            })
            .collect();
        let ms: Vec<Metrics> = per_seed.iter().map(|s| s.metrics).collect();
        let (mean, std) = metrics::mean_and_std(&ms);
        let mut cost = Cost::default();
        for (_, _, _, c) in done.iter().filter(|(_, m, _, _)| m == method) {
            cost.llm_calls += c.llm_calls;
            cost.cache_hits += c.cache_hits;
            cost.prompt_tokens += c.prompt_tokens;
            cost.completion_tokens += c.completion_tokens;
            cost.wall_ms += c.wall_ms;
        }
        results.push(MethodResult {
            method: method.clone(),
            description: describe(method),
            per_seed,
            mean,
            std,
            cost,
        });
    }
    let (stages, total_cost) = stage_costs(ctx).await?;
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
    if let Some(base) = results.iter().find(|r| r.method == "base") {
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
        kind: "evaluation".into(),
        job_id: ctx.id().to_string(),
        status: "succeeded".into(),
        started_at: ctx.job.started_at.or(Some(started)),
        finished_at: Some(chrono::Utc::now()),
        settings: serde_json::to_value(&params).unwrap_or(Value::Null),
        data_notes: notes,
        methods: results,
        steps: Vec::new(),
        stages,
        total_cost,
        prompts,
        summary,
    })
}

/// One-line description of a method.
pub fn describe(method: &str) -> String {
    match method {
        "base" => "the candidate list in its incoming order".into(),
        "random" => "a seeded random order".into(),
        "popularity" => "most-interacted items first".into(),
        "llm_no_profile" => {
            "LLM listwise ranking given the raw recent items (no written profile)".into()
        }
        "llm_manual" => "LLM ranking with a profile from the manual p_gen (version 1)".into(),
        other => format!(
            "LLM ranking with a profile from p_gen {}",
            other.trim_start_matches("llm_pgen_")
        ),
    }
}
