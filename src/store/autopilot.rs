//! The autopilot's state in Postgres: the per-project policy (off by default) and its runs,
//! each a row with a status and a reason.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

/// A project's autopilot policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub enabled: bool,
    pub settings: serde_json::Value,
    /// Feedback rows up to this id were counted by earlier runs.
    pub last_feedback_id: i64,
}

/// The project's policy (none: never set, which means off).
pub async fn policy(pool: &PgPool, project: &str) -> Result<Option<Policy>, sqlx::Error> {
    let row: Option<(bool, serde_json::Value, i64)> = sqlx::query_as(
        "SELECT enabled, settings, last_feedback_id FROM autopilot WHERE project = $1",
    )
    .bind(project)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(enabled, settings, last_feedback_id)| Policy {
        enabled,
        settings,
        last_feedback_id,
    }))
}

/// Sets the policy (the feedback counter starts at the newest feedback row when created).
pub async fn set_policy(
    pool: &PgPool,
    project: &str,
    enabled: bool,
    settings: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO autopilot (project, enabled, settings, last_feedback_id)
         VALUES ($1, $2, $3, (SELECT COALESCE(max(id), 0) FROM feedback WHERE project = $1))
         ON CONFLICT (project) DO UPDATE SET enabled = $2, settings = $3, updated_at = now()",
    )
    .bind(project)
    .bind(enabled)
    .bind(settings)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Projects whose autopilot is on.
pub async fn enabled_projects(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT project FROM autopilot WHERE enabled ORDER BY project")
        .fetch_all(pool)
        .await
}

/// Positive feedback events (of `kinds`) after `since`: (count, newest id).
pub async fn new_positives(
    pool: &PgPool,
    project: &str,
    since: i64,
    kinds: &[String],
) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), COALESCE(max(id), $2) FROM feedback
         WHERE project = $1 AND id > $2 AND kind = ANY($3)",
    )
    .bind(project)
    .bind(since)
    .bind(kinds)
    .fetch_one(pool)
    .await
}

/// One autopilot step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Run {
    pub id: Uuid,
    /// `optimizing`, `experimenting`, `done`, `skipped` or `failed`.
    pub status: String,
    pub job_id: Option<Uuid>,
    pub experiment_id: Option<Uuid>,
    pub reason: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

type RunTuple = (
    Uuid,
    String,
    Option<Uuid>,
    Option<Uuid>,
    String,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
);

fn run(t: RunTuple) -> Run {
    Run {
        id: t.0,
        status: t.1,
        job_id: t.2,
        experiment_id: t.3,
        reason: t.4,
        created_at: t.5,
        updated_at: t.6,
    }
}

/// The project's runs, newest first (at most 50).
pub async fn runs(pool: &PgPool, project: &str) -> Result<Vec<Run>, sqlx::Error> {
    let rows: Vec<RunTuple> = sqlx::query_as(
        "SELECT id, status, job_id, experiment_id, reason, created_at, updated_at FROM autopilot_runs
         WHERE project = $1 ORDER BY created_at DESC LIMIT 50",
    )
    .bind(project)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(run).collect())
}

/// The run in progress (optimizing or experimenting), if any.
pub async fn active(pool: &PgPool, project: &str) -> Result<Option<Run>, sqlx::Error> {
    let row: Option<RunTuple> = sqlx::query_as(
        "SELECT id, status, job_id, experiment_id, reason, created_at, updated_at FROM autopilot_runs
         WHERE project = $1 AND status IN ('optimizing', 'experimenting') ORDER BY created_at DESC LIMIT 1",
    )
    .bind(project)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(run))
}

/// Starts a run with its optimization job, counting feedback up to `feedback_id`, in one
/// transaction that holds the policy row (so two replicas never start two runs). Returns
/// false when another replica holds it or a run is already active.
pub async fn start_run(
    pool: &PgPool,
    project: &str,
    feedback_id: i64,
    params: &serde_json::Value,
    reason: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let held: Option<(String,)> = sqlx::query_as(
        "SELECT project FROM autopilot WHERE project = $1 AND enabled FOR UPDATE SKIP LOCKED",
    )
    .bind(project)
    .fetch_optional(&mut *tx)
    .await?;
    if held.is_none() {
        return Ok(None);
    }
    let busy: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM autopilot_runs WHERE project = $1 AND status IN ('optimizing', 'experimenting')",
    )
    .bind(project)
    .fetch_one(&mut *tx)
    .await?;
    if busy > 0 {
        return Ok(None);
    }
    let job = super::jobs::enqueue(&mut *tx, project, "optimization", params).await?;
    sqlx::query(
        "INSERT INTO autopilot_runs (id, project, status, job_id, reason) VALUES ($1, $2, 'optimizing', $3, $4)",
    )
    .bind(Uuid::new_v4())
    .bind(project)
    .bind(job.id)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE autopilot SET last_feedback_id = $2, updated_at = now() WHERE project = $1",
    )
    .bind(project)
    .bind(feedback_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(job.id))
}

/// Moves a run on (only from the status it was read in, so replicas never do it twice).
pub async fn advance(
    pool: &PgPool,
    id: Uuid,
    from: &str,
    to: &str,
    experiment_id: Option<Uuid>,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE autopilot_runs SET status = $3, experiment_id = COALESCE($4, experiment_id), reason = $5,
                updated_at = now()
         WHERE id = $1 AND status = $2",
    )
    .bind(id)
    .bind(from)
    .bind(to)
    .bind(experiment_id)
    .bind(reason)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}
