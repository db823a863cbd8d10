//! The production rerank path: resolve the prompt (label, A/B split or version), load
//! candidates and history (in-process caches first), summaries and profile (cached, one
//! generation per user at a time), one listwise ranking call, then the response; every
//! LLM fault returns the fallback order instead, within a per-request deadline.

pub mod cache;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::agp::prompt::PromptName;
use crate::agp::rank::{self, RankError, RankOptions};
use crate::agp::{profile, summarize};
use crate::llm::usage::TallySnapshot;
use crate::llm::{CallContext, LlmClient, LlmError, Role, Tally};
use crate::store::journal::{Journal, JournalOptions, Record};
use crate::store::prompts::{LabelRow, PRODUCTION, SplitArm};
use crate::store::rerank::{self as db, ItemLite, RerankLogRow};
use cache::{Caches, ProfileKey, SingleFlight};

/// The cheap ranker used when the LLM cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FallbackRanker {
    /// Return the candidates in the order they came.
    Incoming,
    /// Most-interacted-with items first (ties keep the incoming order).
    Popularity,
}

/// Default bound on the LLM part of a rerank: interactive traffic, a hosted model.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// Longest wait for the journal before answering anyway (a sick disk must not stall answers).
const LOG_WAIT: Duration = Duration::from_secs(2);

/// Time after the deadline for a call that ran into it to report back.
const DEADLINE_GRACE: Duration = Duration::from_millis(100);

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
    fn is_inline(&self) -> bool {
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
}

/// Why the fallback order was returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    ColdStart,
    LlmTimeout,
    LlmError,
    UnusableOutput,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::ColdStart => "cold_start",
            Fallback::LlmTimeout => "llm_timeout",
            Fallback::LlmError => "llm_error",
            Fallback::UnusableOutput => "unusable_output",
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
    pub results: Vec<Ranked>,
    pub prompt_version: i32,
    pub prompt_versions: HashMap<&'static str, i32>,
    pub profile_id: Option<Uuid>,
    pub model: Option<String>,
    pub fallback: Option<Fallback>,
    pub fallback_detail: Option<String>,
    pub repaired: bool,
    pub usage: TallySnapshot,
    pub latency_ms: u64,
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

type ProfileResult = Result<(Uuid, Arc<String>), LlmError>;

/// The rerank service; one per process, shared by handlers.
pub struct Reranker {
    pool: PgPool,
    llm: LlmClient,
    pub caches: Arc<Caches>,
    profile_flights: SingleFlight<ProfileKey, ProfileResult>,
    summary_flights: SingleFlight<cache::SummaryKey, Result<Arc<String>, LlmError>>,
    /// Where answered requests are logged (none if no journal could be opened: then the
    /// row is inserted directly).
    journal: Option<Arc<Journal>>,
    pub settings: RerankSettings,
}

impl std::fmt::Debug for Reranker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reranker")
            .field("settings", &self.settings)
            .finish()
    }
}

enum LlmPart {
    Ranked {
        order: Vec<usize>,
        repaired: bool,
        profile_id: Uuid,
    },
    Failed(Fallback, String),
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
            settings,
        })
    }

    /// Waits until every logged request is stored (feedback joins, tests, shutdown).
    pub async fn flush(&self) {
        if let Some(j) = &self.journal {
            j.flush().await;
        }
    }

    /// Waits (up to `within`) until every logged request is in Postgres.
    pub async fn flush_within(&self, within: Duration) -> bool {
        match &self.journal {
            Some(j) => j.flush_within(within).await,
            None => true,
        }
    }

    /// Logs an answered request before the answer leaves: on disk (the journal) when this
    /// returns, in Postgres soon after. A failure is counted and logged; the answer still goes.
    async fn log(&self, row: RerankLogRow) {
        let Some(journal) = &self.journal else {
            if let Err(e) = db::insert_rerank_logs(&self.pool, std::slice::from_ref(&row)).await {
                metrics::counter!("agp_journal_dropped_total", "kind" => "rerank").increment(1);
                tracing::warn!(error = %e, request_id = %row.id, "rerank log row lost");
            }
            return;
        };
        let request_id = row.id.clone();
        match tokio::time::timeout(LOG_WAIT, journal.append(&Record::Rerank(row))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, %request_id, "rerank log row not journaled"),
            Err(_) => {
                metrics::counter!("agp_journal_slow_total").increment(1);
                tracing::warn!(%request_id, "the journal took over 2 s; answering before the row is on disk");
            }
        }
    }

    /// Reranks. Client mistakes are errors; LLM faults are fallbacks unless `strict`.
    pub async fn rerank(&self, req: &RerankRequest) -> Result<RerankOutcome, RerankError> {
        let started = Instant::now();
        let project = req.project.as_str();
        let (gen_version, gen_template) = self
            .resolve_prompt(project, PromptName::PGen, &req.prompt, &req.user_id)
            .await?;
        let production = PromptSelector::Label(PRODUCTION.into());
        let (rank_version, rank_template) = self
            .resolve_prompt(project, PromptName::PRank, &production, &req.user_id)
            .await?;
        let sum = if self.settings.summaries {
            Some(
                self.resolve_prompt(project, PromptName::PSum, &production, &req.user_id)
                    .await?,
            )
        } else {
            None
        };
        let mut prompt_versions = HashMap::from([("p_gen", gen_version), ("p_rank", rank_version)]);
        if let Some((v, _)) = &sum {
            prompt_versions.insert("p_sum", *v);
        }

        let candidates = self
            .load_items(project, &req.candidates, "candidates")
            .await?;
        let history = match &req.history {
            Some(h) => Some(self.load_items(project, h, "history").await?),
            None => self.stored_history(project, &req.user_id).await?,
        };
        let history: Vec<Arc<ItemLite>> = history.unwrap_or_default();
        let start = history.len().saturating_sub(self.settings.history_len);
        let history = &history[start..];

        let tally = Arc::new(Tally::default());
        let deadline = Instant::now() + self.settings.deadline;
        let mut ctx = CallContext::interactive(project)
            .with_tally(tally.clone())
            .with_deadline(deadline);
        ctx.request_id = Some(req.request_id.clone());

        let part = if history.is_empty() {
            LlmPart::Failed(
                Fallback::ColdStart,
                "no history for this user: nothing to write a profile from".into(),
            )
        } else {
            let fut = self.llm_part(
                project,
                &req.user_id,
                history,
                &candidates,
                gen_version,
                &gen_template,
                &rank_template,
                sum.as_ref(),
                &ctx,
            );
            // LLM calls stop at the deadline themselves (and tell the circuit breaker); this
            // bound catches the rest (a summary or profile still being written, a slow query).
            match tokio::time::timeout_at((deadline + DEADLINE_GRACE).into(), fut).await {
                Ok(p) => p,
                Err(_) => LlmPart::Failed(
                    Fallback::LlmTimeout,
                    format!(
                        "the rerank deadline of {} ms passed (AGP_RERANK_DEADLINE_MS)",
                        self.settings.deadline.as_millis()
                    ),
                ),
            }
        };

        let n = candidates.len();
        let (order, fallback, detail, repaired, profile_id) = match part {
            LlmPart::Ranked {
                order,
                repaired,
                profile_id,
            } => (order, None, None, repaired, Some(profile_id)),
            LlmPart::Failed(reason, detail) => {
                if req.strict {
                    match reason {
                        Fallback::LlmTimeout => return Err(RerankError::StrictTimeout(detail)),
                        Fallback::LlmError | Fallback::UnusableOutput => {
                            return Err(RerankError::StrictUpstream(detail));
                        }
                        Fallback::ColdStart => {}
                    }
                }
                let order = self.fallback_order(project, &candidates).await;
                (order, Some(reason), Some(detail), false, None)
            }
        };
        let results: Vec<Ranked> = order
            .iter()
            .take(req.top_n)
            .enumerate()
            .map(|(pos, &c)| Ranked {
                index: c,
                id: req.candidates[c].id.clone(),
                score: rank::rank_score(pos, n),
            })
            .collect();
        let usage = tally.snapshot();
        let latency_ms = started.elapsed().as_millis() as u64;
        let model = self.llm.model(Role::Rank).map(str::to_string);

        metrics::counter!("agp_rerank_total", "fallback" => fallback.map(|f| f.as_str()).unwrap_or("none")).increment(1);
        metrics::histogram!("agp_rerank_duration_seconds").record(started.elapsed().as_secs_f64());
        self.log(RerankLogRow {
            id: req.request_id.clone(),
            created_at: chrono::Utc::now(),
            project: project.to_string(),
            user_id: req.user_id.clone(),
            candidates: serde_json::Value::from(
                req.candidates
                    .iter()
                    .map(|c| c.id.clone())
                    .collect::<Vec<_>>(),
            ),
            result_order: serde_json::Value::from(
                order
                    .iter()
                    .map(|&c| req.candidates[c].id.clone())
                    .collect::<Vec<_>>(),
            ),
            prompt_version: Some(gen_version),
            prompt_versions: serde_json::to_value(&prompt_versions).unwrap_or_default(),
            profile_id,
            model: model.clone(),
            fallback: fallback.map(|f| f.as_str().to_string()),
            repaired,
            latency_ms: latency_ms.min(i32::MAX as u64) as i32,
            usage: serde_json::to_value(usage).unwrap_or_default(),
        })
        .await;
        Ok(RerankOutcome {
            results,
            prompt_version: gen_version,
            prompt_versions,
            profile_id,
            model,
            fallback,
            fallback_detail: detail,
            repaired,
            usage,
            latency_ms,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn llm_part(
        &self,
        project: &str,
        user: &str,
        history: &[Arc<ItemLite>],
        candidates: &[Arc<ItemLite>],
        gen_version: i32,
        gen_template: &str,
        rank_template: &str,
        sum: Option<&(i32, Arc<String>)>,
        ctx: &CallContext,
    ) -> LlmPart {
        let fail = |e: LlmError| {
            let reason = if e.is_timeout() {
                Fallback::LlmTimeout
            } else {
                Fallback::LlmError
            };
            tracing::warn!(request_id = ?ctx.request_id, error = %e, reason = reason.as_str(), "rerank falls back");
            LlmPart::Failed(reason, e.public_message())
        };
        let texts = match self.history_texts(project, history, sum, ctx).await {
            Ok(t) => t,
            Err(e) => return fail(e),
        };
        let (profile_id, profile) = match self
            .profile(project, user, &texts, gen_version, gen_template, ctx)
            .await
        {
            Ok(p) => p,
            Err(e) => return fail(e),
        };
        let cand_texts: Vec<String> = candidates
            .iter()
            .map(|c| summarize::item_text(&c.title, c.text.as_deref(), c.attributes.as_ref()))
            .collect();
        let refs: Vec<&str> = cand_texts.iter().map(String::as_str).collect();
        let llm = crate::agp::LlmCall {
            client: &self.llm,
            ctx,
        };
        match rank::llm_rank(
            &llm,
            rank_template,
            Some(&profile),
            None,
            &refs,
            &self.settings.rank,
        )
        .await
        {
            Ok(o) => LlmPart::Ranked {
                order: o.order,
                repaired: o.repaired,
                profile_id,
            },
            Err(RankError::Unusable) => LlmPart::Failed(
                Fallback::UnusableOutput,
                "the LLM's ranking answer held no usable candidate number".into(),
            ),
            Err(RankError::Llm(e)) => fail(e),
        }
    }

    /// Summaries of the history items (cached per content, p_sum version and model), or their
    /// raw metadata when summaries are off.
    pub async fn history_texts(
        &self,
        project: &str,
        history: &[Arc<ItemLite>],
        sum: Option<&(i32, Arc<String>)>,
        ctx: &CallContext,
    ) -> Result<Vec<String>, LlmError> {
        let raw: Vec<String> = history
            .iter()
            .map(|i| summarize::item_text(&i.title, i.text.as_deref(), i.attributes.as_ref()))
            .collect();
        let Some((version, template)) = sum else {
            return Ok(raw);
        };
        let model = self
            .llm
            .model(Role::Summarize)
            .ok_or_else(|| LlmError::NotConfigured("summarize".into()))?
            .to_string();
        let key = |i: &ItemLite| {
            (
                project.to_string(),
                i.id.clone(),
                i.content_hash.clone(),
                *version,
                model.clone(),
            )
        };
        let mut out: Vec<Option<String>> = history
            .iter()
            .map(|i| self.caches.summaries.get(&key(i)).map(|s| s.to_string()))
            .collect();
        let missing: Vec<(&str, &[u8])> = history
            .iter()
            .zip(&out)
            .filter(|(_, s)| s.is_none())
            .map(|(i, _)| (i.id.as_str(), i.content_hash.as_slice()))
            .collect();
        if !missing.is_empty() {
            match db::get_summaries(&self.pool, project, &missing, *version, &model).await {
                Ok(found) => {
                    for (slot, item) in out.iter_mut().zip(history) {
                        if slot.is_none()
                            && let Some(s) = found.get(&item.id)
                        {
                            self.caches.summaries.insert(key(item), Arc::new(s.clone()));
                            *slot = Some(s.clone());
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "summary cache lookup failed"),
            }
        }
        let todo: Vec<usize> = (0..history.len()).filter(|&i| out[i].is_none()).collect();
        // One LLM call per missing summary, shared by concurrent requests for the same item.
        let made = futures_util::future::join_all(todo.iter().map(|&i| {
            let item = &history[i];
            let raw = &raw[i];
            async move {
                let key = key(item);
                let (pool, llm, caches) =
                    (self.pool.clone(), self.llm.clone(), self.caches.clone());
                let (template, raw, ctx) = (template.clone(), raw.clone(), ctx.without_deadline());
                self.summary_flights
                    .run(key.clone(), || {
                        // Detached: a rerank that gives up at its deadline still leaves the
                        // summary for the next request.
                        detached(async move {
                            let s = summarize::summarize(
                                &crate::agp::LlmCall {
                                    client: &llm,
                                    ctx: &ctx,
                                },
                                &template,
                                &raw,
                            )
                            .await?;
                            let (project, id, hash, version, model) = &key;
                            if let Err(e) =
                                db::put_summary(&pool, project, id, hash, *version, model, &s).await
                            {
                                tracing::warn!(error = %e, "could not store a summary");
                            }
                            let s = Arc::new(s);
                            caches.summaries.insert(key, s.clone());
                            Ok(s)
                        })
                    })
                    .await
            }
        }))
        .await;
        for (&i, s) in todo.iter().zip(made) {
            out[i] = Some(s?.to_string());
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// The profile for this history under this `p_gen` version: memory, then Postgres, then
    /// one LLM call shared by all concurrent requests for the same key.
    pub async fn profile(
        &self,
        project: &str,
        user: &str,
        texts: &[String],
        version: i32,
        template: &str,
        ctx: &CallContext,
    ) -> Result<(Uuid, Arc<String>), LlmError> {
        let model = self
            .llm
            .model(Role::Profile)
            .ok_or_else(|| LlmError::NotConfigured("profile".into()))?
            .to_string();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let key: ProfileKey = (
            project.to_string(),
            user.to_string(),
            profile::history_hash(&refs),
            version,
            model.clone(),
        );
        if let Some(p) = self.caches.profiles.get(&key) {
            return Ok(p);
        }
        let (pool, llm, caches) = (self.pool.clone(), self.llm.clone(), self.caches.clone());
        let (template, texts, ctx) = (template.to_string(), texts.to_vec(), ctx.without_deadline());
        self.profile_flights
            .run(key.clone(), || {
                // Detached: a rerank that gives up at its deadline still leaves the profile
                // for the user's next request.
                detached(async move {
                    let (project, user, hash, version, model) = &key;
                    match db::get_profile(&pool, project, user, hash, *version, model).await {
                        Ok(Some((id, p))) => {
                            let v = (id, Arc::new(p));
                            caches.profiles.insert(key.clone(), v.clone());
                            return Ok(v);
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "profile cache lookup failed"),
                    }
                    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                    let text = profile::generate(
                        &crate::agp::LlmCall {
                            client: &llm,
                            ctx: &ctx,
                        },
                        &template,
                        &refs,
                    )
                    .await?;
                    let stored =
                        db::put_profile(&pool, project, user, hash, *version, model, &text).await;
                    let v = match stored {
                        Ok((id, p)) => (id, Arc::new(p)),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not store a profile");
                            (Uuid::new_v4(), Arc::new(text))
                        }
                    };
                    caches.profiles.insert(key.clone(), v.clone());
                    Ok(v)
                })
            })
            .await
    }

    /// Catalog items for `refs` (inline items as given). Unknown ids without inline text are
    /// a client error naming the first.
    pub async fn load_items(
        &self,
        project: &str,
        refs: &[ItemRef],
        field: &str,
    ) -> Result<Vec<Arc<ItemLite>>, RerankError> {
        let mut found: HashMap<&str, Arc<ItemLite>> = HashMap::new();
        let mut to_fetch: Vec<&str> = Vec::new();
        for r in refs.iter().filter(|r| !r.is_inline()) {
            match self.caches.items.get(&(project.to_string(), r.id.clone())) {
                Some(i) => {
                    found.insert(r.id.as_str(), i);
                }
                None => to_fetch.push(r.id.as_str()),
            }
        }
        if !to_fetch.is_empty() {
            for item in db::items_by_ids(&self.pool, project, &to_fetch).await? {
                let item = Arc::new(item);
                self.caches
                    .items
                    .insert((project.to_string(), item.id.clone()), item.clone());
                if let Some(k) = to_fetch.iter().find(|k| **k == item.id) {
                    found.insert(k, item);
                }
            }
        }
        let mut out = Vec::with_capacity(refs.len());
        for (i, r) in refs.iter().enumerate() {
            if r.is_inline() {
                let item = crate::catalog::NewItem {
                    id: r.id.clone(),
                    title: r.title.clone().unwrap_or_default(),
                    text: r.text.clone(),
                    attributes: None,
                };
                let content_hash = crate::store::catalog::content_hash(&item);
                out.push(Arc::new(ItemLite {
                    id: item.id,
                    title: item.title,
                    text: item.text,
                    attributes: None,
                    content_hash,
                }));
            } else {
                match found.get(r.id.as_str()) {
                    Some(item) => out.push(item.clone()),
                    None => {
                        return Err(RerankError::Invalid(format!(
                            "{field}[{i}].id {:?} is not in the catalog; add it with PUT /v1/items or send it inline with a title or text",
                            r.id
                        )));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The user's stored recent items (`None`: unknown user).
    async fn stored_history(
        &self,
        project: &str,
        user: &str,
    ) -> Result<Option<Vec<Arc<ItemLite>>>, RerankError> {
        let key = (project.to_string(), user.to_string());
        if let Some(h) = self.caches.histories.get(&key) {
            return Ok((*h).clone());
        }
        let h = db::recent_items(&self.pool, project, user, self.settings.history_len as i64)
            .await?
            .map(|items| items.into_iter().map(Arc::new).collect::<Vec<_>>());
        self.caches.histories.insert(key, Arc::new(h.clone()));
        Ok(h)
    }

    /// Resolves a prompt by version or label (an A/B split picks by a stable hash of the user).
    pub async fn resolve_prompt(
        &self,
        project: &str,
        name: PromptName,
        sel: &PromptSelector,
        user: &str,
    ) -> Result<(i32, Arc<String>), RerankError> {
        let version = match sel {
            PromptSelector::Version(v) => *v,
            PromptSelector::Label(label) => {
                let key = (
                    project.to_string(),
                    name.as_str().to_string(),
                    label.clone(),
                );
                let row = match self.caches.labels.get(&key) {
                    Some(r) => r,
                    None => {
                        let r =
                            crate::store::prompts::label(&self.pool, project, name.as_str(), label)
                                .await?
                                .ok_or_else(|| {
                                    RerankError::Invalid(format!(
                                        "prompt label {label:?} does not exist for {name}"
                                    ))
                                })?;
                        let r = Arc::new(r);
                        self.caches.labels.insert(key, r.clone());
                        r
                    }
                };
                label_version(&row, user).ok_or_else(|| {
                    RerankError::Invalid(format!(
                        "prompt label {label:?} of {name} points at no version"
                    ))
                })?
            }
        };
        let tkey = (project.to_string(), name.as_str().to_string(), version);
        if let Some(t) = self.caches.templates.get(&tkey) {
            return Ok((version, t));
        }
        let row = crate::store::prompts::version(&self.pool, project, name.as_str(), version)
            .await?
            .ok_or_else(|| {
                RerankError::Invalid(format!(
                    "prompt version {version} does not exist for {name}"
                ))
            })?;
        let t = Arc::new(row.template);
        self.caches.templates.insert(tkey, t.clone());
        Ok((version, t))
    }

    async fn fallback_order(&self, project: &str, candidates: &[Arc<ItemLite>]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        if self.settings.fallback_ranker == FallbackRanker::Popularity {
            let ids: Vec<&str> = candidates.iter().map(|c| c.id.as_str()).collect();
            match db::popularity(&self.pool, project, &ids).await {
                Ok(pop) => order.sort_by_key(|&i| {
                    std::cmp::Reverse(pop.get(&candidates[i].id).copied().unwrap_or(0))
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "popularity lookup failed; using the incoming order")
                }
            }
        }
        order
    }
}

/// Runs `fut` as its own task, so that it finishes even if the caller stops waiting.
async fn detached<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, LlmError>> + Send + 'static,
) -> Result<T, LlmError> {
    tokio::spawn(fut)
        .await
        .unwrap_or_else(|e| Err(LlmError::Garbage(format!("background task failed: {e}"))))
}

/// The version a label gives this user: its version, or the A/B arm chosen by a stable hash
/// of the user id (same user, same arm, on every replica).
pub fn label_version(row: &LabelRow, user: &str) -> Option<i32> {
    if let Some(v) = row.version {
        return Some(v);
    }
    let arms = row.split.as_ref()?;
    choose_arm(&format!("{}/{}", row.name, row.label), user, arms)
}

/// Picks an arm by weight with a hash of (salt, user) as the random draw.
pub fn choose_arm(salt: &str, user: &str, arms: &[SplitArm]) -> Option<i32> {
    let total: f64 = arms.iter().map(|a| a.weight.max(0.0)).sum();
    if total <= 0.0 {
        return arms.first().map(|a| a.version);
    }
    let h = crate::hash::stable_hash(&format!("{salt}\u{0}{user}"));
    let x = (h as f64 / u64::MAX as f64) * total;
    let mut acc = 0.0;
    for a in arms {
        acc += a.weight.max(0.0);
        if x < acc {
            return Some(a.version);
        }
    }
    arms.last().map(|a| a.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ab_assignment_is_stable_and_follows_weights() {
        let arms = [
            SplitArm {
                version: 1,
                weight: 0.8,
            },
            SplitArm {
                version: 2,
                weight: 0.2,
            },
        ];
        let mut twos = 0;
        for u in 0..10_000 {
            let user = format!("user-{u}");
            let v = choose_arm("p_gen/production", &user, &arms).unwrap();
            assert_eq!(
                Some(v),
                choose_arm("p_gen/production", &user, &arms),
                "stable"
            );
            if v == 2 {
                twos += 1;
            }
        }
        assert!((1700..2300).contains(&twos), "about 20%: {twos}");
        let zero = [SplitArm {
            version: 5,
            weight: 0.0,
        }];
        assert_eq!(choose_arm("s", "u", &zero), Some(5));
    }
}
