//! Background jobs: the worker loop (inside `agp serve` and as `agp worker`, on any number
//! of machines sharing one Postgres), leases and heartbeat, cancellation, and one file per
//! job kind. The job bodies are the only users of the job context.
//!
//! - `context`: what a job body gets (database, LLM, caches, progress, resumable state)
//! - `submit`: the checks of each kind and the one way a job is queued
//! - `optimize`, `evaluate`, `summarize`: the three kinds of job (`fused`: the evaluation's
//!   blend-tuning method)

pub mod context;
pub mod evaluate;
mod fused;
pub mod optimize;
pub mod submit;
pub mod summarize;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tracing::Instrument;

pub use context::{BestSoFar, JobContext, JobError, Progress, ProgressSink, Published};

use crate::llm::LlmClient;
use crate::serving::Reranker;
use crate::store::jobs::{self as db, JobRow};
pub use crate::store::states::{JobKind, JobStatus};

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
        let handles: Vec<_> = (0..n)
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
/// Returns the final status (`Running` when another worker took the job over).
pub async fn execute(
    pool: PgPool,
    llm: LlmClient,
    reranker: Arc<Reranker>,
    job: JobRow,
    opts: &WorkerOptions,
    sink: Option<Arc<dyn ProgressSink>>,
) -> JobStatus {
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
    let kind = job.kind;
    let span = tracing::info_span!("job", %id, %kind, attempt = job.attempts);
    let ctx = JobContext::new(pool.clone(), llm.clone(), reranker, job, cancel, sink);
    let result = async {
        match kind {
            JobKind::Evaluation => evaluate::run(&ctx).await,
            JobKind::Optimization => optimize::run(&ctx).await,
            JobKind::SummarizeCatalog => summarize::run(&ctx).await,
        }
    }
    .instrument(span)
    .await;
    hb.abort();
    llm.flush_usage().await;
    if lost.load(Ordering::Relaxed) {
        // Another worker owns the job now; its outcome is theirs to write.
        return JobStatus::Running;
    }
    let (status, result, error) = match result {
        Ok(report) => match serde_json::to_value(&report) {
            Ok(v) => (JobStatus::Succeeded, Some(v), None),
            Err(e) => (
                JobStatus::Failed,
                None,
                Some(format!("cannot store the report: {e}")),
            ),
        },
        Err(JobError::Cancelled) => (
            JobStatus::Cancelled,
            None,
            Some("cancelled on request".into()),
        ),
        Err(JobError::Failed(e)) => {
            tracing::error!(job = %id, error = %format!("{e:#}"), "job failed");
            (JobStatus::Failed, None, Some(format!("{e:#}")))
        }
    };
    if let Err(e) = db::finish(&pool, id, status, result.as_ref(), error.as_deref()).await {
        // The lease runs out and another worker resumes the job from its saved state.
        metrics::counter!("agp_job_finish_errors_total").increment(1);
        tracing::error!(job = %id, status = status.as_str(), error = %e, "could not store the job's outcome");
    }
    tracing::info!(job = %id, status = status.as_str(), "job ended");
    status
}
