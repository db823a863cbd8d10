//! The production rerank path (latency-bound): resolve the prompts (label, A/B split or
//! version), load candidates and history (in-process caches first), write the profile from
//! the item summaries (cached; one generation per key at a time, finished in the background
//! when the deadline passes), one listwise ranking call, then the answer and its log row.
//! The LLM's order is then fused with the caller's order and the built-in rankers by the
//! request's blend (weights, versioned like prompts); a blend whose LLM weight is 0 makes no
//! LLM call. Every LLM fault answers the blend without the LLM instead (or the fallback
//! ranker), within a per-request deadline.
//!
//! - `blend`: which weights, the non-LLM orders, the fused answer, the item-kNN models
//! - `prompts`: which version answers (labels, splits), template cache
//! - `items`: candidates and histories (catalog cache)
//! - `profiles`: summaries and profiles (caches, single flight, detached generation)
//! - `fallback`: the order when the LLM cannot be used, and `strict`
//! - `log`: the request log row, journaled before the answer leaves
//! - `cache`: the caches, their named keys, cross-replica invalidation

mod blend;
pub mod cache;
mod fallback;
mod items;
mod log;
mod profiles;
pub mod prompts;
pub mod refresh;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;
use tracing::{Instrument, info_span};
use uuid::Uuid;

use crate::agp::profile;
use crate::agp::rank::{self, RankMode, RankOptions};
use crate::experiment::interleave::{self, Team, team_draft};
use crate::llm::usage::TallySnapshot;
use crate::llm::{CallContext, LlmClient, LlmError, Role, Tally};
use crate::store::journal::{Journal, JournalOptions};
use crate::store::states::ProfileWriter;
use cache::{CachedProfile, Caches, ProfileKey, SingleFlight, SummaryKey};

pub use blend::{BlendSelector, BlendUsed, FitError};
pub use prompts::{Prompts, choose_arm, label_version};

/// The cheap ranker used when the LLM cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FallbackRanker {
    /// Return the candidates in the order they came.
    Incoming,
    /// Most-interacted-with items first (ties keep the incoming order).
    Popularity,
    /// Co-occurrence item-kNN from the user's recent items (the incoming order until the
    /// project's model is fit).
    ItemKnn,
}

/// Default bound on the LLM part of a rerank: interactive traffic, a hosted model.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// Settings of the rerank path.
#[derive(Debug, Clone)]
pub struct RerankSettings {
    pub max_candidates: usize,
    /// Recent items a profile is written from (L).
    pub history_len: usize,
    pub rank: RankOptions,
    /// Bound on the whole LLM part of one request.
    pub deadline: Duration,
    /// Summarize history items with `p_sum` (off: raw metadata).
    pub summaries: bool,
    pub fallback_ranker: FallbackRanker,
    /// Entries per in-process cache.
    pub cache_entries: usize,
}

impl Default for RerankSettings {
    fn default() -> Self {
        RerankSettings {
            max_candidates: 200,
            history_len: profile::DEFAULT_HISTORY_LEN,
            rank: RankOptions::default(),
            deadline: DEFAULT_DEADLINE,
            summaries: true,
            fallback_ranker: FallbackRanker::Incoming,
            cache_entries: 100_000,
        }
    }
}

/// A candidate or history entry: a catalog id, or an inline item.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRef {
    pub id: String,
    pub title: Option<String>,
    pub text: Option<String>,
}

impl ItemRef {
    pub(crate) fn is_inline(&self) -> bool {
        self.title.is_some() || self.text.is_some()
    }
}

/// Which `p_gen` to use.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptSelector {
    Label(String),
    Version(i32),
}

/// A validated rerank request.
#[derive(Debug, Clone)]
pub struct RerankRequest {
    pub project: String,
    pub request_id: String,
    pub user_id: String,
    pub candidates: Vec<ItemRef>,
    pub top_n: usize,
    pub prompt: PromptSelector,
    pub history: Option<Vec<ItemRef>>,
    pub strict: bool,
    pub blend: BlendSelector,
    /// How the LLM ranks (default: the blend's mode, else the server's).
    pub rank_mode: Option<RankMode>,
}

/// How the LLM ranking was made, as reported in `meta.rank`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RankInfo {
    /// The mode asked for (the request's, else the blend's, else the server's).
    pub mode: RankMode,
    /// Ranking calls made (one per window, and per repeat).
    pub calls: usize,
    /// Log-probability windows the server answered without log-probabilities: they were
    /// ranked again in generation mode (0 in generation mode).
    pub windows_without_logprobs: usize,
}

/// Why the fallback order was returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    ColdStart,
    LlmTimeout,
    LlmError,
    UnusableOutput,
    /// The project's interactive LLM budget is spent (until its window rolls).
    Budget,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::ColdStart => "cold_start",
            Fallback::LlmTimeout => "llm_timeout",
            Fallback::LlmError => "llm_error",
            Fallback::UnusableOutput => "unusable_output",
            Fallback::Budget => "budget",
        }
    }
}

/// Where the profile a rerank used came from (`meta.profile_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProfileSource {
    /// Stored before this request, written by an earlier rerank.
    Fresh,
    /// Written by a refresh ahead of time (new interactions arrived for the user).
    RefreshedAhead,
    /// Written during this request (its LLM call is in this request's usage).
    Inline,
}

/// The profile a rerank or a refresh got.
#[derive(Debug, Clone)]
pub struct UsedProfile {
    pub id: Uuid,
    pub text: Arc<String>,
    pub source: ProfileSource,
}

impl UsedProfile {
    fn of(p: CachedProfile, written_now: bool) -> UsedProfile {
        let source = match (p.written_by, written_now) {
            (ProfileWriter::Ahead, _) => ProfileSource::RefreshedAhead,
            (ProfileWriter::Inline, true) => ProfileSource::Inline,
            (ProfileWriter::Inline, false) => ProfileSource::Fresh,
        };
        UsedProfile {
            id: p.id,
            text: p.text,
            source,
        }
    }
}

/// One ranked candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    pub index: usize,
    pub id: String,
    pub score: f64,
}

/// The answer.
#[derive(Debug, Clone, Serialize)]
pub struct RerankOutcome {
    /// Best first, cut to `top_n`.
    pub results: Vec<Ranked>,
    /// The whole order (indices into the request's candidates), as logged.
    pub order: Vec<usize>,
    pub prompt_version: i32,
    pub prompt_versions: HashMap<&'static str, i32>,
    pub profile_id: Option<Uuid>,
    /// Where that profile came from.
    pub profile_source: Option<ProfileSource>,
    pub model: Option<String>,
    pub fallback: Option<Fallback>,
    pub fallback_detail: Option<String>,
    pub repaired: bool,
    pub blend: BlendUsed,
    /// How the LLM ranked (none when it was not asked or failed).
    pub rank: Option<RankInfo>,
    /// The history the answer was made for (item ids, oldest first), as logged.
    pub history: Vec<String>,
    /// An interleaved request's two sides and the team of every position of `order`.
    pub interleaving: Option<InterleavingUsed>,
    pub usage: TallySnapshot,
    pub latency_ms: u64,
}

/// An interleaved answer: what was merged, and which side supplied each position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InterleavingUsed {
    /// `p_gen` or `blend`: what the experiment compares.
    pub name: &'static str,
    pub control: i32,
    pub treatment: i32,
    /// Per position of the order, whose item it is (the team a click on it credits).
    pub teams: Vec<Team>,
}

/// Failures that are not answered with a fallback.
#[derive(Debug, thiserror::Error)]
pub enum RerankError {
    /// The request names something that does not exist or breaks a rule (422).
    #[error("{0}")]
    Invalid(String),
    /// `strict` request and the LLM timed out (504).
    #[error("{0}")]
    StrictTimeout(String),
    /// `strict` request and the LLM failed (502).
    #[error("{0}")]
    StrictUpstream(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The rerank service; one per process, shared by handlers.
pub struct Reranker {
    pool: PgPool,
    llm: LlmClient,
    pub caches: Arc<Caches>,
    /// A profile being written, shared by every request (and refresh) that needs it; the
    /// flag says whether this flight wrote it (rather than found it stored).
    profile_flights: SingleFlight<ProfileKey, Result<(CachedProfile, bool), LlmError>>,
    summary_flights: SingleFlight<SummaryKey, Result<Arc<String>, LlmError>>,
    /// Where answered requests are logged (none if no journal could be opened: then the
    /// row is inserted directly).
    journal: Option<Arc<Journal>>,
    knn: Arc<blend::KnnModels>,
    pub settings: RerankSettings,
}

impl std::fmt::Debug for Reranker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reranker")
            .field("settings", &self.settings)
            .finish()
    }
}

/// The LLM's part of one rerank: its order (or the fallback reason), profile and ranking details.
#[derive(Clone)]
struct LlmRanking {
    order: Option<Vec<usize>>,
    fallback: Option<(Fallback, String)>,
    repaired: bool,
    profile_id: Option<Uuid>,
    profile_source: Option<ProfileSource>,
    rank: Option<RankInfo>,
}

impl LlmRanking {
    /// No LLM answer (the blend does not ask the LLM).
    fn none() -> LlmRanking {
        LlmRanking {
            order: None,
            fallback: None,
            repaired: false,
            profile_id: None,
            profile_source: None,
            rank: None,
        }
    }
}

impl Reranker {
    /// A reranker over `pool` and `llm`, with its caches listening for invalidations.
    pub fn new(pool: PgPool, llm: LlmClient, settings: RerankSettings) -> Arc<Self> {
        let caches = Arc::new(Caches::new(settings.cache_entries));
        caches.start_listener(pool.clone());
        // The LLM client's journal: a rerank's usage rows are then on disk before its log row.
        let journal = llm.journal().or_else(|| {
            Journal::open(pool.clone(), JournalOptions::default())
                .inspect_err(|e| tracing::error!(error = %e, "no journal: rerank log rows are inserted directly"))
                .ok()
        });
        Arc::new(Reranker {
            pool,
            llm,
            caches,
            profile_flights: SingleFlight::default(),
            summary_flights: SingleFlight::default(),
            journal,
            knn: Arc::default(),
            settings,
        })
    }

    /// Reranks. Client mistakes are errors; LLM faults are fallbacks unless `strict`.
    pub async fn rerank(&self, req: &RerankRequest) -> Result<RerankOutcome, RerankError> {
        let started = Instant::now();
        let ((prompts, control_prompts), (mut blend, control_blend)) = async {
            Ok::<_, RerankError>((self.prompts_for(req).await?, self.blend_for(req).await?))
        }
        .instrument(info_span!("rerank.resolve"))
        .await?;
        // One interleaved experiment per project (checked at start); should a `p_gen` and a
        // blend label both interleave for this user, the `p_gen` one is served.
        let control_blend = control_blend.filter(|_| control_prompts.is_none());
        let candidates = self
            .load_items(&req.project, &req.candidates, "candidates")
            .instrument(info_span!("rerank.candidates", n = req.candidates.len()))
            .await?;
        let history = self
            .recent_history(req)
            .instrument(info_span!("rerank.history"))
            .await?;
        let tally = Arc::new(Tally::default());
        let mode = req
            .rank_mode
            .or(blend.rank_mode)
            .unwrap_or(self.settings.rank.mode);
        let llm_needed =
            blend.weights.llm > 0.0 || control_blend.as_ref().is_some_and(|b| b.weights.llm > 0.0);
        let (history_ref, candidates_ref) = (&history[..], &candidates[..]);
        let ranked = |p: Prompts| {
            let tally = tally.clone();
            async move {
                self.llm_answer(req, &p, history_ref, candidates_ref, &tally, mode)
                    .instrument(info_span!("rerank.llm", p_gen = p.profile.0))
                    .await
            }
        };
        let (answer, control_answer) = match (&control_prompts, llm_needed) {
            (_, false) => (LlmRanking::none(), None),
            (None, true) => (ranked(prompts.clone()).await?, None),
            // An interleaved `p_gen` request: both profiles and both rankings, side by side.
            (Some(cp), true) => {
                let (t, c) = tokio::join!(ranked(prompts.clone()), ranked(cp.clone()));
                (t?, Some(c?))
            }
        };
        let control_side = match (&control_prompts, control_blend) {
            (Some(cp), _) => Some((
                "p_gen",
                cp.profile.0,
                prompts.profile.0,
                blend.clone(),
                control_answer.unwrap_or_else(LlmRanking::none),
            )),
            (None, Some(cb)) => Some((
                crate::store::blends::BLEND,
                cb.version.unwrap_or_default(),
                blend.version.unwrap_or_default(),
                cb,
                answer.clone(),
            )),
            (None, None) => None,
        };
        let mut order = self
            .fused_order(
                req,
                &mut blend,
                answer.order.as_deref(),
                &candidates,
                &history,
            )
            .instrument(info_span!("rerank.fuse"))
            .await;
        let mut interleaving = None;
        if let Some((name, control, treatment, mut cb, ca)) = control_side {
            let control_order = self
                .fused_order(req, &mut cb, ca.order.as_deref(), &candidates, &history)
                .await;
            let merged = team_draft(&control_order, &order, interleave::seed(&req.request_id));
            order = merged.order;
            interleaving = Some(InterleavingUsed {
                name,
                control,
                treatment,
                teams: merged.teams,
            });
        }
        let n = candidates.len();
        let outcome = RerankOutcome {
            results: order
                .iter()
                .take(req.top_n)
                .enumerate()
                .map(|(pos, &c)| Ranked {
                    index: c,
                    id: req.candidates[c].id.clone(),
                    score: rank::rank_score(pos, n),
                })
                .collect(),
            prompt_version: prompts.profile_version(),
            prompt_versions: prompts.versions(),
            profile_id: answer.profile_id,
            profile_source: answer.profile_source,
            model: llm_needed
                .then(|| self.llm.model(Role::Rank).map(str::to_string))
                .flatten(),
            fallback: answer.fallback.as_ref().map(|f| f.0),
            fallback_detail: answer.fallback.map(|f| f.1),
            repaired: answer.repaired,
            blend,
            rank: answer.rank,
            history: history.iter().map(|h| h.id.clone()).collect(),
            usage: tally.snapshot(),
            latency_ms: started.elapsed().as_millis() as u64,
            order,
            interleaving,
        };
        self.log(req, &outcome, started)
            .instrument(info_span!("rerank.journal"))
            .await;
        Ok(outcome)
    }

    /// The LLM's answer with these prompts, or the fallback's (an error if `strict`).
    async fn llm_answer(
        &self,
        req: &RerankRequest,
        prompts: &Prompts,
        history: &[Arc<crate::store::rerank::ItemLite>],
        candidates: &[Arc<crate::store::rerank::ItemLite>],
        tally: &Arc<Tally>,
        mode: RankMode,
    ) -> Result<LlmRanking, RerankError> {
        match self
            .ranked_by_llm(req, prompts, history, candidates, tally, mode)
            .await
        {
            Ok(answer) => Ok(answer),
            Err((reason, detail)) => self.fall_back(req, reason, detail),
        }
    }

    /// The call context of a rerank's LLM calls: interactive, bounded by the deadline.
    fn call_context(&self, req: &RerankRequest, tally: &Arc<Tally>) -> CallContext {
        let mut ctx = CallContext::interactive(req.project.clone())
            .with_tally(tally.clone())
            .with_deadline(Instant::now() + self.settings.deadline);
        ctx.request_id = Some(req.request_id.clone());
        ctx
    }
}
