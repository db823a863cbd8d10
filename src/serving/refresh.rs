//! Profiles refreshed ahead of time. When new interactions arrive for a user (`POST
//! /v1/interactions`, or `agp import --refresh-profiles`), a background task writes the profile
//! that user's next rerank will ask for: the same prompts (labels and experiment arms resolve as
//! for a rerank), the same history, so the same profile key. The rerank then finds it stored and
//! makes one LLM call (the ranking); if the refresh is still writing it, the rerank joins that call
//! (the profile single-flight), never a second one.
//!
//! Refreshes are background work: background priority for LLM slots, charged to the
//! background budget, at most `per_second` started a second and `concurrent` at once; a
//! user queued twice before the refresh ran is refreshed once; when the queue is full, new
//! users are dropped (counted: their next rerank writes the profile inline, as before).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::{BlendSelector, ProfileSource, PromptSelector, RerankError, RerankRequest, Reranker};
use crate::llm::{CallContext, LlmError};
use crate::store::prompts::PRODUCTION;
use crate::store::states::ProfileWriter;

/// How refreshes are paced.
#[derive(Debug, Clone, Copy)]
pub struct RefreshOptions {
    /// Refreshes started per second at most.
    pub per_second: f64,
    /// Refreshes running at once at most.
    pub concurrent: usize,
    /// Users waiting at most.
    pub queue: usize,
}

impl Default for RefreshOptions {
    fn default() -> Self {
        RefreshOptions {
            per_second: 5.0,
            concurrent: 2,
            queue: 10_000,
        }
    }
}

/// Why a refresh wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Rerank(#[from] RerankError),
    #[error(transparent)]
    Llm(#[from] LlmError),
}

type UserKey = (String, String);

/// Starts at most `per_second` refreshes a second: each waits for the next free start time.
#[derive(Debug)]
struct Pacer {
    gap: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(per_second: f64) -> Self {
        Pacer {
            gap: Duration::from_secs_f64(1.0 / per_second.max(0.01)),
            next: Mutex::new(Instant::now()),
        }
    }

    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let at = (*next).max(Instant::now());
            *next = at + self.gap;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// The queue of users whose profiles to refresh, and its workers.
#[derive(Debug)]
pub struct Refresher {
    tx: mpsc::Sender<UserKey>,
    pending: Arc<Mutex<HashSet<UserKey>>>,
}

impl Refresher {
    /// Starts the refresher over `reranker` (its task ends when the refresher is dropped).
    pub fn spawn(reranker: Arc<Reranker>, opts: RefreshOptions) -> Arc<Refresher> {
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let pending = Arc::new(Mutex::new(HashSet::new()));
        tokio::spawn(run(rx, reranker, pending.clone(), opts));
        Arc::new(Refresher { tx, pending })
    }

    /// Queues the users' refreshes; returns how many were queued (users already waiting
    /// are not queued again; beyond the queue's size they are dropped).
    pub fn enqueue(&self, project: &str, users: impl IntoIterator<Item = String>) -> usize {
        let mut queued = 0;
        for user in users {
            let key = (project.to_string(), user);
            if !self.lock().insert(key.clone()) {
                continue;
            }
            match self.tx.try_send(key) {
                Ok(()) => queued += 1,
                Err(e) => {
                    let key = match e {
                        mpsc::error::TrySendError::Full(k)
                        | mpsc::error::TrySendError::Closed(k) => k,
                    };
                    self.lock().remove(&key);
                    metrics::counter!("agp_profile_refresh_dropped_total").increment(1);
                }
            }
        }
        queued
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<UserKey>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn run(
    mut rx: mpsc::Receiver<UserKey>,
    reranker: Arc<Reranker>,
    pending: Arc<Mutex<HashSet<UserKey>>>,
    opts: RefreshOptions,
) {
    let pacer = Pacer::new(opts.per_second);
    let slots = Arc::new(Semaphore::new(opts.concurrent.max(1)));
    while let Some(key) = rx.recv().await {
        pacer.wait().await;
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Taken off the pending set when it starts: interactions arriving from now on need
        // another refresh (the history this one reads may not have them).
        pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        let reranker = reranker.clone();
        tokio::spawn(async move {
            let (project, user) = key;
            match reranker.refresh_profile(&project, &user).await {
                Ok(sources) => {
                    metrics::counter!("agp_profile_refreshes_total", "outcome" => "written")
                        .increment(sources.len() as u64);
                    tracing::debug!(project, user, ?sources, "profile refreshed ahead");
                }
                Err(e) => {
                    metrics::counter!("agp_profile_refreshes_total", "outcome" => "error")
                        .increment(1);
                    tracing::info!(project, user, error = %e, "profile refresh ahead failed; the next rerank writes it");
                }
            }
            drop(slot);
        });
    }
}

/// What a batch refresh did, user by user.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Users whose profile(s) were written.
    pub written: usize,
    /// Users whose profile(s) were already stored.
    pub already: usize,
    /// Users without history (nothing to write).
    pub empty: usize,
    /// Users whose refresh failed (their next rerank writes the profile inline).
    pub failed: usize,
}

/// Refreshes the profiles of `users` of `project` (an import's backfill), paced as the queue
/// is (`per_second`, `concurrent`); `progress(done)` after each user.
pub async fn refresh_all(
    reranker: &Reranker,
    project: &str,
    users: Vec<String>,
    opts: RefreshOptions,
    mut progress: impl FnMut(usize),
) -> BatchOutcome {
    let pacer = Pacer::new(opts.per_second);
    let mut runs = futures_util::stream::iter(users)
        .map(|user| {
            let pacer = &pacer;
            async move {
                pacer.wait().await;
                let r = reranker.refresh_profile(project, &user).await;
                if let Err(e) = &r {
                    tracing::info!(project, user, error = %e, "profile refresh failed; the next rerank writes it");
                }
                r
            }
        })
        .buffer_unordered(opts.concurrent.max(1));
    let (mut out, mut done) = (BatchOutcome::default(), 0);
    while let Some(r) = runs.next().await {
        match r {
            Ok(s) if s.is_empty() => out.empty += 1,
            Ok(s) if s.iter().all(|s| *s == ProfileSource::Fresh) => out.already += 1,
            Ok(_) => out.written += 1,
            Err(_) => out.failed += 1,
        }
        done += 1;
        progress(done);
    }
    out
}

impl Reranker {
    /// Writes the profile(s) the user's next rerank under the production label will use
    /// (both arms' when the user sees an interleaved experiment), as background work.
    /// Returns where each profile came from (`Fresh`: it was already there).
    pub async fn refresh_profile(
        &self,
        project: &str,
        user: &str,
    ) -> Result<Vec<ProfileSource>, RefreshError> {
        let production = PromptSelector::Label(PRODUCTION.into());
        let req = RerankRequest {
            project: project.to_string(),
            request_id: format!("refresh_{}", uuid::Uuid::new_v4().simple()),
            user_id: user.to_string(),
            candidates: Vec::new(),
            top_n: 0,
            prompt: production.clone(),
            history: None,
            strict: false,
            blend: BlendSelector::Stored(production),
            rank_mode: None,
        };
        let (prompts, control) = self.prompts_for(&req).await?;
        let history = self.recent_history(&req).await?;
        if history.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = CallContext::background(project);
        let mut sources = Vec::new();
        for p in std::iter::once(&prompts).chain(control.as_ref()) {
            let texts = self
                .history_texts(project, &history, p.summary.as_ref(), &ctx)
                .await?;
            let (version, template) = &p.profile;
            let used = self
                .profile(
                    project,
                    user,
                    &texts,
                    *version,
                    template,
                    &ctx,
                    ProfileWriter::Ahead,
                )
                .await?;
            sources.push(used.source);
        }
        Ok(sources)
    }
}
