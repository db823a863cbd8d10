//! The durable job queue: rows claimed with `FOR UPDATE SKIP LOCKED` under a lease that the
//! worker extends (heartbeat); an expired lease makes the job claimable again, so a killed
//! worker's job is picked up by another and resumes from its saved state. Run steps are
//! rows keyed by (job, step): a resumed job rewrites a step, never duplicates it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::states::{JobKind, JobStatus};

/// A job as stored.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: Uuid,
    pub project: String,
    pub kind: JobKind,
    pub status: JobStatus,
    pub params: serde_json::Value,
    /// What the job publishes (`jobs::Published`) and its private resume state.
    pub progress: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub cancel_requested: bool,
    pub locked_by: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// Queues a job.
pub async fn enqueue<'e>(
    db: impl sqlx::PgExecutor<'e>,
    project: &str,
    kind: JobKind,
    params: &serde_json::Value,
) -> Result<JobRow, sqlx::Error> {
    sqlx::query_as!(
        JobRow,
        r#"INSERT INTO jobs (id, project, kind, params) VALUES ($1, $2, $3, $4)
           RETURNING id, project, kind AS "kind: JobKind", status AS "status: JobStatus", params,
                     progress, result, error, attempts, max_attempts, cancel_requested, locked_by,
                     lease_until, created_at, started_at, finished_at, updated_at"#,
        Uuid::new_v4(),
        project,
        kind as _,
        params,
    )
    .fetch_one(db)
    .await
}

/// The project's most recent jobs (newest first).
pub async fn recent(pool: &PgPool, project: &str, limit: i64) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as!(
        JobRow,
        r#"SELECT id, project, kind AS "kind: JobKind", status AS "status: JobStatus", params,
                  progress, result, error, attempts, max_attempts, cancel_requested, locked_by,
                  lease_until, created_at, started_at, finished_at, updated_at
           FROM jobs WHERE project = $1 ORDER BY created_at DESC LIMIT $2"#,
        project,
        limit,
    )
    .fetch_all(pool)
    .await
}

/// One job of a project (and kind, when given).
pub async fn get(
    pool: &PgPool,
    project: &str,
    id: Uuid,
    kind: Option<JobKind>,
) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as!(
        JobRow,
        r#"SELECT id, project, kind AS "kind: JobKind", status AS "status: JobStatus", params,
                  progress, result, error, attempts, max_attempts, cancel_requested, locked_by,
                  lease_until, created_at, started_at, finished_at, updated_at
           FROM jobs WHERE id = $1 AND project = $2 AND ($3::text IS NULL OR kind = $3)"#,
        id,
        project,
        kind as _,
    )
    .fetch_optional(pool)
    .await
}

/// Claims the oldest runnable job: queued, or running with an expired lease (its worker
/// died). Jobs out of attempts are failed instead of claimed.
pub async fn claim(
    pool: &PgPool,
    worker: &str,
    lease_secs: i64,
    only: Option<Uuid>,
) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query!(
        "UPDATE jobs SET status = $1, finished_at = now(), updated_at = now(),
                error = coalesce(error, 'gave up after ' || attempts || ' attempts (the worker stopped answering)')
         WHERE status = $2 AND lease_until < now() AND attempts >= max_attempts",
        JobStatus::Failed as _,
        JobStatus::Running as _,
    )
    .execute(pool)
    .await?;
    sqlx::query_as!(
        JobRow,
        r#"UPDATE jobs SET status = $4, attempts = attempts + 1, locked_by = $1,
                lease_until = now() + make_interval(secs => $2), started_at = coalesce(started_at, now()),
                updated_at = now()
           WHERE id = (
             SELECT id FROM jobs
             WHERE (status = $5 OR (status = $4 AND lease_until < now()))
               AND NOT cancel_requested AND attempts < max_attempts
               AND ($3::uuid IS NULL OR id = $3)
             ORDER BY created_at
             FOR UPDATE SKIP LOCKED
             LIMIT 1)
           RETURNING id, project, kind AS "kind: JobKind", status AS "status: JobStatus", params,
                     progress, result, error, attempts, max_attempts, cancel_requested, locked_by,
                     lease_until, created_at, started_at, finished_at, updated_at"#,
        worker,
        lease_secs as f64,
        only,
        JobStatus::Running as _,
        JobStatus::Queued as _,
    )
    .fetch_optional(pool)
    .await
}

/// Extends the lease; returns whether cancellation was requested, or `None` when the job is
/// no longer ours (another worker took it over after our lease expired).
pub async fn heartbeat(
    pool: &PgPool,
    id: Uuid,
    worker: &str,
    lease_secs: i64,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar!(
        "UPDATE jobs SET lease_until = now() + make_interval(secs => $3), updated_at = now()
         WHERE id = $1 AND locked_by = $2 AND status = $4
         RETURNING cancel_requested",
        id,
        worker,
        lease_secs as f64,
        JobStatus::Running as _,
    )
    .fetch_optional(pool)
    .await
}

/// Saves progress (data: counts, current step, resumable state).
pub async fn save_progress(
    pool: &PgPool,
    id: Uuid,
    progress: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE jobs SET progress = $2, updated_at = now() WHERE id = $1",
        id,
        progress
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Ends a job with a final status and its result or error.
pub async fn finish(
    pool: &PgPool,
    id: Uuid,
    status: JobStatus,
    result: Option<&serde_json::Value>,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE jobs SET status = $2, result = coalesce($3, result), error = $4, finished_at = now(),
                lease_until = NULL, updated_at = now() WHERE id = $1",
        id,
        status as _,
        result,
        error,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Requests cancellation: a queued job is cancelled at once, a running one at its next
/// batch boundary. Returns the job after the change (None: no such job).
pub async fn request_cancel(
    pool: &PgPool,
    project: &str,
    id: Uuid,
    kind: JobKind,
) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as!(
        JobRow,
        r#"UPDATE jobs SET cancel_requested = (status = $4 OR status = $5),
                status = CASE WHEN status = $4 THEN $6 ELSE status END,
                finished_at = CASE WHEN status = $4 THEN now() ELSE finished_at END,
                updated_at = now()
           WHERE id = $1 AND project = $2 AND kind = $3
           RETURNING id, project, kind AS "kind: JobKind", status AS "status: JobStatus", params,
                     progress, result, error, attempts, max_attempts, cancel_requested, locked_by,
                     lease_until, created_at, started_at, finished_at, updated_at"#,
        id,
        project,
        kind as _,
        JobStatus::Queued as _,
        JobStatus::Running as _,
        JobStatus::Cancelled as _,
    )
    .fetch_optional(pool)
    .await
}

/// A stored run step.
#[derive(Debug, Clone)]
pub struct RunStepRow {
    pub step: i32,
    pub epoch: i32,
    pub batch: i32,
    pub kind: String,
    pub prompt_version: Option<i32>,
    pub scores: serde_json::Value,
    pub accepted: Option<bool>,
    pub reason: Option<String>,
    pub usage: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// Writes a step (replacing the same step number from an interrupted attempt).
#[allow(clippy::too_many_arguments)]
pub async fn put_step(
    pool: &PgPool,
    job: Uuid,
    step: i32,
    epoch: i32,
    batch: i32,
    kind: &str,
    version: Option<i32>,
    scores: &serde_json::Value,
    accepted: Option<bool>,
    reason: &str,
    usage: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO run_steps (job_id, step, epoch, batch, kind, prompt_version, scores, accepted, reason, usage)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (job_id, step) DO UPDATE SET epoch = excluded.epoch, batch = excluded.batch, kind = excluded.kind,
           prompt_version = excluded.prompt_version, scores = excluded.scores, accepted = excluded.accepted,
           reason = excluded.reason, usage = excluded.usage",
        job,
        step,
        epoch,
        batch,
        kind,
        version,
        scores,
        accepted,
        reason,
        usage,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Every step of a job, in order.
pub async fn steps(pool: &PgPool, job: Uuid) -> Result<Vec<RunStepRow>, sqlx::Error> {
    sqlx::query_as!(
        RunStepRow,
        "SELECT step, epoch, batch, kind, prompt_version, scores, accepted, reason, usage, created_at
         FROM run_steps WHERE job_id = $1 ORDER BY step",
        job
    )
    .fetch_all(pool)
    .await
}

/// The version this run already stored with exactly this template (idempotent re-creation
/// when a resumed job proposes the same candidate again).
pub async fn run_version_with_template(
    pool: &PgPool,
    project: &str,
    run: Uuid,
    template: &str,
) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT version FROM prompt_versions WHERE project = $1 AND name = 'p_gen' AND run_id = $2 AND template = $3
         ORDER BY version LIMIT 1",
        project,
        run,
        template,
    )
    .fetch_optional(pool)
    .await
}

/// Puts a running job of `worker` back in the queue (graceful shutdown), not counting the
/// interrupted attempt.
pub async fn release(pool: &PgPool, id: Uuid, worker: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE jobs SET status = $3, locked_by = NULL, lease_until = NULL, attempts = greatest(attempts - 1, 0),
                updated_at = now() WHERE id = $1 AND locked_by = $2 AND status = $4",
        id,
        worker,
        JobStatus::Queued as _,
        JobStatus::Running as _,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Ends a job's lease now, so it can be claimed at once (its worker is known to be gone).
pub async fn expire_lease(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE jobs SET lease_until = now() - interval '1 second' WHERE id = $1",
        id
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Steps of a job of one kind (`candidate`, `feedback`, ...).
pub async fn count_steps(pool: &PgPool, job: Uuid, kind: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM run_steps WHERE job_id = $1 AND kind = $2"#,
        job,
        kind
    )
    .fetch_one(pool)
    .await
}

/// The starting prompt's validation NDCG@10 of an optimization, once scored.
pub async fn baseline_score(pool: &PgPool, job: Uuid) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT (scores->>'validation_ndcg_10')::float8 FROM run_steps WHERE job_id = $1 AND kind = 'baseline'",
        job
    )
    .fetch_optional(pool)
    .await
    .map(Option::flatten)
}
