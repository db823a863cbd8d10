//! The autopilot's state in Postgres: the per-project policy (off by default) and its runs,
//! each a row with a status and a reason.

use sqlx::{PgConnection, PgPool};

use super::states::AutopilotStatus;
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
    sqlx::query_as!(
        Policy,
        "SELECT enabled, settings, last_feedback_id FROM autopilot WHERE project = $1",
        project
    )
    .fetch_optional(pool)
    .await
}

/// Sets the policy (the feedback counter starts at the newest feedback row when created).
pub async fn set_policy(
    pool: &PgPool,
    project: &str,
    enabled: bool,
    settings: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO autopilot (project, enabled, settings, last_feedback_id)
         VALUES ($1, $2, $3, (SELECT COALESCE(max(id), 0) FROM feedback WHERE project = $1))
         ON CONFLICT (project) DO UPDATE SET enabled = $2, settings = $3, updated_at = now()",
        project,
        enabled,
        settings,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Projects whose autopilot is on.
pub async fn enabled_projects(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!("SELECT project FROM autopilot WHERE enabled ORDER BY project")
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
    let row = sqlx::query!(
        r#"SELECT count(*) AS "n!", COALESCE(max(id), $2) AS "newest!" FROM feedback
           WHERE project = $1 AND id > $2 AND kind = ANY($3)"#,
        project,
        since,
        kinds,
    )
    .fetch_one(pool)
    .await?;
    Ok((row.n, row.newest))
}

/// One autopilot step.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: Uuid,
    pub status: AutopilotStatus,
    pub job_id: Option<Uuid>,
    pub experiment_id: Option<Uuid>,
    pub reason: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// The project's runs, newest first (at most 50).
pub async fn runs(pool: &PgPool, project: &str) -> Result<Vec<Run>, sqlx::Error> {
    sqlx::query_as!(
        Run,
        r#"SELECT id, status AS "status: AutopilotStatus", job_id, experiment_id, reason, created_at,
                  updated_at
           FROM autopilot_runs WHERE project = $1 ORDER BY created_at DESC LIMIT 50"#,
        project
    )
    .fetch_all(pool)
    .await
}

/// The run in progress (optimizing or experimenting), if any.
pub async fn active(pool: &PgPool, project: &str) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as!(
        Run,
        r#"SELECT id, status AS "status: AutopilotStatus", job_id, experiment_id, reason, created_at,
                  updated_at
           FROM autopilot_runs WHERE project = $1 AND status = ANY($2)
           ORDER BY created_at DESC LIMIT 1"#,
        project,
        &AutopilotStatus::ACTIVE as _,
    )
    .fetch_optional(pool)
    .await
}

/// Takes the project's policy row for starting a run, in the caller's transaction: false
/// when another replica holds it, the autopilot is off, or a run is already active (so two
/// replicas never start two runs).
pub async fn lock_for_start(tx: &mut PgConnection, project: &str) -> Result<bool, sqlx::Error> {
    let held = sqlx::query_scalar!(
        "SELECT project FROM autopilot WHERE project = $1 AND enabled FOR UPDATE SKIP LOCKED",
        project
    )
    .fetch_optional(&mut *tx)
    .await?;
    if held.is_none() {
        return Ok(false);
    }
    let busy = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM autopilot_runs WHERE project = $1 AND status = ANY($2)"#,
        project,
        &AutopilotStatus::ACTIVE as _,
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(busy == 0)
}

/// Records a started run (optimizing with `job`), counting feedback up to `feedback_id`, in
/// the transaction that took [`lock_for_start`] and queued the job.
pub async fn record_start(
    tx: &mut PgConnection,
    project: &str,
    job: Uuid,
    feedback_id: i64,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO autopilot_runs (id, project, status, job_id, reason) VALUES ($1, $2, $3, $4, $5)",
        Uuid::new_v4(),
        project,
        AutopilotStatus::Optimizing as _,
        job,
        reason,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE autopilot SET last_feedback_id = $2, updated_at = now() WHERE project = $1",
        project,
        feedback_id,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Moves a run on (only from the status it was read in, so replicas never do it twice).
pub async fn advance(
    pool: &PgPool,
    id: Uuid,
    from: AutopilotStatus,
    to: AutopilotStatus,
    experiment_id: Option<Uuid>,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE autopilot_runs SET status = $3, experiment_id = COALESCE($4, experiment_id), reason = $5,
                updated_at = now()
         WHERE id = $1 AND status = $2",
        id,
        from as _,
        to as _,
        experiment_id,
        reason,
    )
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}
