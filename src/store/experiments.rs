//! Experiments in Postgres: the row, the label split that starts one and the label move that
//! ends one (in one transaction each), and, as a reference for tests and benchmarks, the
//! logged requests of its arms with their positive feedback read from the whole log.

use sqlx::PgPool;
use uuid::Uuid;

use super::prompts::{LabelTarget, SplitArm, set_label_tx};
use super::states::{ExperimentSource, ExperimentStatus};
use crate::experiment::interleave::{Credit, decode_teams};
use crate::experiment::{Design, ExperimentSettings, Look, Observed, Plan};

/// A stored experiment.
#[derive(Debug, Clone)]
pub struct ExperimentRow {
    pub id: Uuid,
    /// `p_gen` or `blend`.
    pub name: String,
    pub label: String,
    pub design: Design,
    pub control: i32,
    pub treatment: i32,
    /// Share of users in the treatment (`ab`) or seeing the interleaved list (`interleave`).
    pub treatment_share: f64,
    pub settings: ExperimentSettings,
    pub status: ExperimentStatus,
    /// Always-valid p-value (the minimum over looks).
    pub p_value: f64,
    /// Always-valid p-value of the sequential sample ratio check (the minimum over looks).
    pub srm_p: f64,
    pub looks: i32,
    /// The last look's figures and decision.
    pub result: Option<serde_json::Value>,
    pub reason: Option<String>,
    pub source: ExperimentSource,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub ended_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl ExperimentRow {
    /// What a look at it needs besides the arms' figures: its settings, design and split, the
    /// cost its design allows, and the p-values of the last look.
    pub fn plan(&self) -> Plan<'_> {
        Plan {
            settings: &self.settings,
            design: self.design,
            share: self.treatment_share,
            cost_factor: self.design.cost_factor(&self.name),
            previous_p: self.p_value,
            previous_srm_p: self.srm_p,
        }
    }
}

/// An `experiments` row as stored (its settings as JSON).
struct Stored {
    id: Uuid,
    name: String,
    label: String,
    design: Design,
    control: i32,
    treatment: i32,
    treatment_share: f64,
    settings: serde_json::Value,
    status: ExperimentStatus,
    p_value: f64,
    srm_p: f64,
    looks: i32,
    result: Option<serde_json::Value>,
    reason: Option<String>,
    source: ExperimentSource,
    started_at: chrono::DateTime<chrono::Utc>,
    ended_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn row(t: Stored) -> ExperimentRow {
    ExperimentRow {
        id: t.id,
        name: t.name,
        label: t.label,
        design: t.design,
        control: t.control,
        treatment: t.treatment,
        treatment_share: t.treatment_share,
        settings: serde_json::from_value(t.settings).unwrap_or_default(),
        status: t.status,
        p_value: t.p_value,
        srm_p: t.srm_p,
        looks: t.looks,
        result: t.result,
        reason: t.reason,
        source: t.source,
        started_at: t.started_at,
        ended_at: t.ended_at,
    }
}

/// What starts an experiment.
#[derive(Debug, Clone)]
pub struct NewExperiment<'a> {
    pub project: &'a str,
    pub name: &'a str,
    pub label: &'a str,
    pub design: Design,
    pub control: i32,
    pub treatment: i32,
    pub treatment_share: f64,
    pub settings: &'a ExperimentSettings,
    pub source: ExperimentSource,
}

/// Why an experiment could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("an experiment is already running on {name} label {label}: {id}")]
    Running {
        name: String,
        label: String,
        id: Uuid,
    },
    #[error("an interleaved experiment is already running in this project: {0}")]
    Interleaving(Uuid),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Stores the experiment and splits the label between control and treatment, at once.
pub async fn start(pool: &PgPool, e: &NewExperiment<'_>) -> Result<ExperimentRow, StartError> {
    let mut tx = pool.begin().await?;
    let running = sqlx::query_scalar!(
        "SELECT id FROM experiments WHERE project = $1 AND name = $2 AND label = $3 AND status = $4 FOR UPDATE",
        e.project,
        e.name,
        e.label,
        ExperimentStatus::Running as _,
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = running {
        return Err(StartError::Running {
            name: e.name.into(),
            label: e.label.into(),
            id,
        });
    }
    // One interleaved experiment per project at a time: a request merges one pair of rankings.
    if e.design == Design::Interleave {
        let other = sqlx::query_scalar!(
            "SELECT id FROM experiments WHERE project = $1 AND design = $2 AND status = $3 FOR UPDATE",
            e.project,
            Design::Interleave as _,
            ExperimentStatus::Running as _,
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(id) = other {
            return Err(StartError::Interleaving(id));
        }
    }
    let t = sqlx::query_as!(
        Stored,
        r#"INSERT INTO experiments (id, project, name, label, design, control, treatment, treatment_share,
                                   settings, source)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
           RETURNING id, name, label, design AS "design: Design", control, treatment, treatment_share, settings,
                  status AS "status: ExperimentStatus", p_value, srm_p, looks, result, reason,
                  source AS "source: ExperimentSource", started_at, ended_at"#,
        Uuid::new_v4(),
        e.project,
        e.name,
        e.label,
        e.design as _,
        e.control,
        e.treatment,
        e.treatment_share,
        serde_json::to_value(e.settings).unwrap_or_default(),
        e.source as _,
    )
    .fetch_one(&mut *tx)
    .await?;
    let split = [
        SplitArm {
            version: e.control,
            weight: 1.0 - e.treatment_share,
        },
        SplitArm {
            version: e.treatment,
            weight: e.treatment_share,
        },
    ];
    let target = LabelTarget::Split {
        arms: &split,
        interleave: e.design == Design::Interleave,
    };
    set_label_tx(&mut tx, e.project, e.name, e.label, target).await?;
    sqlx::query!(
        "INSERT INTO experiment_arms (experiment_id, arm) VALUES ($1, 'control'), ($1, 'treatment')",
        t.id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row(t))
}

/// One experiment of a project.
pub async fn get(
    pool: &PgPool,
    project: &str,
    id: Uuid,
) -> Result<Option<ExperimentRow>, sqlx::Error> {
    let t = sqlx::query_as!(
        Stored,
        r#"SELECT id, name, label, design AS "design: Design", control, treatment, treatment_share, settings,
                  status AS "status: ExperimentStatus", p_value, srm_p, looks, result, reason,
                  source AS "source: ExperimentSource", started_at, ended_at
           FROM experiments WHERE project = $1 AND id = $2"#,
        project,
        id,
    )
    .fetch_optional(pool)
    .await?;
    Ok(t.map(row))
}

/// A project's experiments, newest first.
pub async fn list(pool: &PgPool, project: &str) -> Result<Vec<ExperimentRow>, sqlx::Error> {
    let t = sqlx::query_as!(
        Stored,
        r#"SELECT id, name, label, design AS "design: Design", control, treatment, treatment_share, settings,
                  status AS "status: ExperimentStatus", p_value, srm_p, looks, result, reason,
                  source AS "source: ExperimentSource", started_at, ended_at
           FROM experiments WHERE project = $1 ORDER BY started_at DESC LIMIT 100"#,
        project,
    )
    .fetch_all(pool)
    .await?;
    Ok(t.into_iter().map(row).collect())
}

/// Every running experiment: (project, id).
pub async fn running(pool: &PgPool) -> Result<Vec<(String, Uuid)>, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT project, id FROM experiments WHERE status = $1 ORDER BY started_at",
        ExperimentStatus::Running as _,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.project, r.id)).collect())
}

/// (user, version, order shown, fell back, latency, usage, positive items, teams).
type LoggedTuple = (
    String,
    i32,
    serde_json::Value,
    bool,
    i32,
    serde_json::Value,
    Vec<String>,
    Option<String>,
);

/// The logged requests of the experiment's arms since it started, with their positives,
/// read from the whole log: the reference the folded statistics (`store::experiment_stats`)
/// are checked against in tests and benchmarks; looks never read it.
pub async fn observed_full(
    pool: &PgPool,
    project: &str,
    e: &ExperimentRow,
) -> Result<Vec<Observed>, sqlx::Error> {
    let version = super::rerank::arm_version(&e.name);
    // Dynamic: the version's expression depends on the experiment (`arm_version`).
    let rows: Vec<LoggedTuple> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT r.user_id, {version}, r.result_order, r.fallback IS NOT NULL, r.latency_ms, r.usage,
                    COALESCE(array_agg(f.item_id ORDER BY f.id) FILTER (WHERE f.kind = ANY($5)), '{{}}'),
                    r.teams
             FROM rerank_requests r
             LEFT JOIN feedback f ON f.request_id = r.id AND f.request_at = r.created_at
             WHERE r.project = $1 AND r.created_at >= $2 AND {version} IN ($3, $4)
             GROUP BY r.id, r.created_at"
        )))
        .bind(project)
        .bind(e.started_at)
        .bind(e.control)
        .bind(e.treatment)
        .bind(&e.settings.positive_kinds)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(user, v, order, fallback, latency, usage, positives, teams)| {
                let order: Vec<String> = serde_json::from_value(order).unwrap_or_default();
                let mut distinct = positives.clone();
                distinct.sort();
                distinct.dedup();
                let u = |k: &str| usage.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0);
                Observed {
                    user,
                    treatment: v == e.treatment,
                    first_positive: order.iter().position(|id| positives.contains(id)),
                    credit: teams.map(|t| {
                        Credit::of(
                            &order,
                            &decode_teams(&t),
                            positives.iter().map(String::as_str),
                        )
                    }),
                    positives: distinct.len(),
                    fallback,
                    latency_ms: latency as f64,
                    llm_calls: u("llm_calls"),
                    tokens: u("prompt_tokens") + u("completion_tokens"),
                }
            },
        )
        .collect())
}

/// Stores a look that did not end the experiment.
pub async fn record_look(
    pool: &PgPool,
    id: Uuid,
    look: &Look,
    result: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE experiments SET p_value = LEAST(p_value, $2), looks = looks + 1, result = $3, reason = $4,
                srm_p = LEAST(srm_p, $5)
         WHERE id = $1 AND status = $6",
        id,
        look.p_value,
        result,
        &look.reason,
        look.sample_ratio_p,
        ExperimentStatus::Running as _,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Ends a running experiment with `status` and points its label at `version`, at once.
/// Returns false when it was no longer running (another replica ended it).
pub async fn end(
    pool: &PgPool,
    project: &str,
    e: &ExperimentRow,
    status: ExperimentStatus,
    version: i32,
    reason: &str,
    look: Option<(&Look, &serde_json::Value)>,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ended = sqlx::query!(
        "UPDATE experiments SET status = $2, reason = $3, ended_at = now(), looks = looks + 1,
                result = COALESCE($4, result), p_value = LEAST(p_value, COALESCE($5::float8, 1)),
                srm_p = LEAST(srm_p, COALESCE($6::float8, 1))
         WHERE id = $1 AND status = $7",
        e.id,
        status as _,
        reason,
        look.map(|l| l.1),
        look.map(|l| l.0.p_value),
        look.map(|l| l.0.sample_ratio_p),
        ExperimentStatus::Running as _,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if ended == 0 {
        return Ok(false);
    }
    set_label_tx(
        &mut tx,
        project,
        &e.name,
        &e.label,
        LabelTarget::Version(version),
    )
    .await?;
    // The result keeps the figures; what only folding needed goes.
    sqlx::query!(
        "DELETE FROM experiment_inbox WHERE experiment_id = $1",
        e.id
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM experiment_users WHERE experiment_id = $1",
        e.id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}
