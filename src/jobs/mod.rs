//! Background jobs: the worker loop (inside `agp serve` and as `agp worker`, on any number
//! of machines sharing one Postgres), the lease heartbeat, cancellation, and the context a
//! job body gets (LLM handle, shared pipeline, progress and resumable state).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::llm::{CallContext, LlmClient, Tally};
use crate::rerank::Reranker;
use crate::store::jobs::{self as db, JobRow};

/// Job kinds.
pub const EVALUATION: &str = "evaluation";
pub const OPTIMIZATION: &str = "optimization";
pub const SUMMARIZE_CATALOG: &str = "summarize_catalog";

/// What a job shows of its progress (stored as data in `jobs.progress`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub phase: String,
    pub done: u64,
    pub total: u64,
    pub message: String,
}

/// Receives progress as it happens (the CLI draws bars with it).
pub trait ProgressSink: Send + Sync {
    fn update(&self, p: &Progress, usage: &crate::llm::usage::TallySnapshot);
}

/// How a job body ends without a result.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cancelled")]
    Cancelled,
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::Failed(e.into())
    }
}

/// Everything a job body needs.
pub struct JobContext {
    pub pool: PgPool,
    pub llm: LlmClient,
    pub reranker: Arc<Reranker>,
    pub job: JobRow,
    /// Usage of this attempt (the whole job's usage is in `llm_usage` by job id).
    pub tally: Arc<Tally>,
    cancel: Arc<AtomicBool>,
    sink: Option<Arc<dyn ProgressSink>>,
    progress: Mutex<Progress>,
}

impl JobContext {
    /// The job's id.
    pub fn id(&self) -> Uuid {
        self.job.id
    }

    /// The job's project.
    pub fn project(&self) -> &str {
        &self.job.project
    }

    /// A background LLM call context attributed to this job.
    pub fn call_ctx(&self) -> CallContext {
        let mut c =
            CallContext::background(self.job.project.clone()).with_tally(self.tally.clone());
        c.job_id = Some(self.job.id);
        c
    }

    /// Whether cancellation was requested (checked at batch boundaries).
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// `Err(Cancelled)` when cancellation was requested.
    pub fn check_cancel(&self) -> Result<(), JobError> {
        if self.cancelled() {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// The state saved by an earlier attempt, if any (resume from there).
    pub fn saved_state(&self) -> Option<Value> {
        self.job
            .progress
            .get("state")
            .filter(|s| !s.is_null())
            .cloned()
    }

    /// Updates the displayed progress (no database write).
    pub fn tick(&self, f: impl FnOnce(&mut Progress)) {
        let p = {
            let mut g = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut g);
            g.clone()
        };
        if let Some(s) = &self.sink {
            s.update(&p, &self.tally.snapshot());
        }
    }

    /// Saves progress and the resumable state: called after every finished batch.
    pub async fn save(&self, state: Value) -> Result<(), sqlx::Error> {
        let p = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let value = serde_json::json!({
            "phase": p.phase, "done": p.done, "total": p.total, "message": p.message,
            "usage": self.tally.snapshot(), "state": state,
        });
        db::save_progress(&self.pool, self.job.id, &value).await?;
        self.llm.flush_usage().await;
        Ok(())
    }
}

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Unique name of this worker (host and pid by default).
    pub id: String,
    /// Lease length; the heartbeat renews it every third of it.
    pub lease: Duration,
    /// Pause between claims when the queue is empty.
    pub poll: Duration,
}

impl WorkerOptions {
    /// Defaults: 30 s lease, 500 ms poll, id from the host name and pid.
    pub fn new(suffix: usize) -> Self {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        WorkerOptions {
            id: format!("{host}-{}-{suffix}", std::process::id()),
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(500),
        }
    }
}

/// Claims and runs jobs until `shutdown` turns true. A job still running at shutdown is put
/// back in the queue (its saved state lets the next worker resume it).
pub async fn run_worker(
    pool: PgPool,
    llm: LlmClient,
    reranker: Arc<Reranker>,
    opts: WorkerOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    tracing::info!(worker = %opts.id, "job worker started");
    loop {
        if *shutdown.borrow() {
            return;
        }
        let job = match db::claim(&pool, &opts.id, opts.lease.as_secs() as i64, None).await {
            Ok(j) => j,
            Err(e) => {
                if pool.is_closed() {
                    return;
                }
                tracing::warn!(error = %e, "claiming a job failed");
                None
            }
        };
        let Some(job) = job else {
            tokio::select! {
                _ = tokio::time::sleep(opts.poll) => continue,
                _ = shutdown.changed() => return,
            }
        };
        let id = job.id;
        let run = execute(
            pool.clone(),
            llm.clone(),
            reranker.clone(),
            job,
            &opts,
            None,
        );
        tokio::select! {
            _ = run => {}
            _ = shutdown.changed() => {
                tracing::info!(job = %id, "shutting down: putting the running job back in the queue");
                if let Err(e) = db::release(&pool, id, &opts.id).await {
                    tracing::warn!(error = %e, "could not release the job; it will be resumed when its lease expires");
                }
                return;
            }
        }
    }
}

/// Worker loops running in this process.
pub struct Workers {
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` worker loops.
    pub fn spawn(n: usize, pool: &PgPool, llm: &LlmClient, reranker: &Arc<Reranker>) -> Self {
        let (stop, rx) = watch::channel(false);
        let handles = (0..n)
            .map(|i| {
                tokio::spawn(run_worker(
                    pool.clone(),
                    llm.clone(),
                    reranker.clone(),
                    WorkerOptions::new(i),
                    rx.clone(),
                ))
            })
            .collect();
        Workers { stop, handles }
    }

    /// Stops claiming; running jobs go back to the queue.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = h.await;
        }
    }
}

/// Runs one claimed job to its end (with heartbeat and cancellation) and stores the outcome.
/// Returns the final status.
pub async fn execute(
    pool: PgPool,
    llm: LlmClient,
    reranker: Arc<Reranker>,
    job: JobRow,
    opts: &WorkerOptions,
    sink: Option<Arc<dyn ProgressSink>>,
) -> String {
    let cancel = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicBool::new(false));
    let id = job.id;
    let hb = {
        let (pool, worker, cancel, lost) =
            (pool.clone(), opts.id.clone(), cancel.clone(), lost.clone());
        let lease = opts.lease;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                match db::heartbeat(&pool, id, &worker, lease.as_secs() as i64).await {
                    Ok(Some(c)) => {
                        if c {
                            cancel.store(true, Ordering::Relaxed);
                        }
                    }
                    Ok(None) => {
                        tracing::warn!(job = %id, "lost the job's lease (another worker took it over); stopping");
                        lost.store(true, Ordering::Relaxed);
                        cancel.store(true, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                }
            }
        })
    };
    tracing::info!(job = %id, kind = %job.kind, attempt = job.attempts, "running job");
    let ctx = JobContext {
        pool: pool.clone(),
        llm: llm.clone(),
        reranker,
        tally: Arc::new(Tally::default()),
        cancel: cancel.clone(),
        sink,
        progress: Mutex::new(Progress {
            phase: "starting".into(),
            ..Default::default()
        }),
        job,
    };
    let result = match ctx.job.kind.as_str() {
        EVALUATION => crate::eval::run::run(&ctx).await,
        OPTIMIZATION => crate::agp::optimizer::run(&ctx).await,
        SUMMARIZE_CATALOG => crate::agp::summarize::run_catalog_job(&ctx).await,
        other => Err(JobError::Failed(anyhow::anyhow!(
            "unknown job kind {other}"
        ))),
    };
    hb.abort();
    llm.flush_usage().await;
    if lost.load(Ordering::Relaxed) {
        // Another worker owns the job now; its outcome is theirs to write.
        return "running".to_string();
    }
    let status = match result {
        Ok(report) => {
            let v = serde_json::to_value(&report).unwrap_or(Value::Null);
            let _ = db::finish(&pool, id, "succeeded", Some(&v), None).await;
            "succeeded"
        }
        Err(JobError::Cancelled) => {
            let _ = db::finish(&pool, id, "cancelled", None, Some("cancelled on request")).await;
            "cancelled"
        }
        Err(JobError::Failed(e)) => {
            tracing::error!(job = %id, error = %format!("{e:#}"), "job failed");
            let _ = db::finish(&pool, id, "failed", None, Some(&format!("{e:#}"))).await;
            "failed"
        }
    };
    tracing::info!(job = %id, status, "job ended");
    status.to_string()
}
