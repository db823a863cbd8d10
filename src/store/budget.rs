//! LLM budgets in Postgres: the per-project limits (`llm_budgets`) and the tokens and cost spent
//! per project, class and UTC hour (`llm_spend`), which every replica reads before an upstream call
//! of a project with a budget and adds to after it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::states::BudgetClass;

/// A project's limits (`None`: unlimited). Costs are in the currency of the configured
/// per-model prices.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub interactive_tokens_per_hour: Option<i64>,
    pub interactive_tokens_per_day: Option<i64>,
    pub background_tokens_per_hour: Option<i64>,
    pub background_tokens_per_day: Option<i64>,
    pub interactive_cost_per_hour: Option<f64>,
    pub interactive_cost_per_day: Option<f64>,
    pub background_cost_per_hour: Option<f64>,
    pub background_cost_per_day: Option<f64>,
}

/// The limits of one class of work.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClassLimits {
    pub tokens_per_hour: Option<i64>,
    pub tokens_per_day: Option<i64>,
    pub cost_per_hour: Option<f64>,
    pub cost_per_day: Option<f64>,
}

impl Limits {
    /// The limits of one class.
    pub fn of(&self, class: BudgetClass) -> ClassLimits {
        match class {
            BudgetClass::Interactive => ClassLimits {
                tokens_per_hour: self.interactive_tokens_per_hour,
                tokens_per_day: self.interactive_tokens_per_day,
                cost_per_hour: self.interactive_cost_per_hour,
                cost_per_day: self.interactive_cost_per_day,
            },
            BudgetClass::Background => ClassLimits {
                tokens_per_hour: self.background_tokens_per_hour,
                tokens_per_day: self.background_tokens_per_day,
                cost_per_hour: self.background_cost_per_hour,
                cost_per_day: self.background_cost_per_day,
            },
        }
    }

    /// True when nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        *self == Limits::default()
    }
}

impl ClassLimits {
    /// True when nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        *self == ClassLimits::default()
    }
}

/// Tokens and cost spent by one class in the current UTC hour and day, and when those
/// windows end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spent {
    pub hour: i64,
    pub day: i64,
    pub cost_hour: f64,
    pub cost_day: f64,
    pub hour_ends: DateTime<Utc>,
    pub day_ends: DateTime<Utc>,
}

/// Millionths of the price currency per unit.
pub const MICROS: f64 = 1_000_000.0;

/// The project's limits (all unlimited when never set).
pub async fn limits(pool: &PgPool, project: &str) -> Result<Limits, sqlx::Error> {
    let row = sqlx::query_as!(
        Limits,
        "SELECT interactive_tokens_per_hour, interactive_tokens_per_day,
                background_tokens_per_hour, background_tokens_per_day,
                interactive_cost_per_hour, interactive_cost_per_day,
                background_cost_per_hour, background_cost_per_day
         FROM llm_budgets WHERE project = $1",
        project
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.unwrap_or_default())
}

/// Sets the project's limits (all of them: an absent one is unlimited).
pub async fn set_limits(pool: &PgPool, project: &str, l: &Limits) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO llm_budgets (project, interactive_tokens_per_hour, interactive_tokens_per_day,
                                  background_tokens_per_hour, background_tokens_per_day,
                                  interactive_cost_per_hour, interactive_cost_per_day,
                                  background_cost_per_hour, background_cost_per_day)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (project) DO UPDATE SET
           interactive_tokens_per_hour = $2, interactive_tokens_per_day = $3,
           background_tokens_per_hour = $4, background_tokens_per_day = $5,
           interactive_cost_per_hour = $6, interactive_cost_per_day = $7,
           background_cost_per_hour = $8, background_cost_per_day = $9, updated_at = now()",
        project,
        l.interactive_tokens_per_hour,
        l.interactive_tokens_per_day,
        l.background_tokens_per_hour,
        l.background_tokens_per_day,
        l.interactive_cost_per_hour,
        l.interactive_cost_per_day,
        l.background_cost_per_hour,
        l.background_cost_per_day,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// What `class` of the project spent this UTC hour and this UTC day (the database's clock).
pub async fn spent(pool: &PgPool, project: &str, class: BudgetClass) -> Result<Spent, sqlx::Error> {
    let r = sqlx::query!(
        r#"SELECT coalesce(sum(tokens) FILTER (WHERE hour = date_trunc('hour', now())), 0)::int8 AS "hour!",
                  coalesce(sum(tokens), 0)::int8 AS "day!",
                  coalesce(sum(cost_micros) FILTER (WHERE hour = date_trunc('hour', now())), 0)::int8
                    AS "cost_hour!",
                  coalesce(sum(cost_micros), 0)::int8 AS "cost_day!",
                  date_trunc('hour', now()) + interval '1 hour' AS "hour_ends!",
                  date_trunc('day', now()) + interval '1 day' AS "day_ends!"
           FROM llm_spend
           WHERE project = $1 AND class = $2 AND hour >= date_trunc('day', now())"#,
        project,
        class as _,
    )
    .fetch_one(pool)
    .await?;
    Ok(Spent {
        hour: r.hour,
        day: r.day,
        cost_hour: r.cost_hour as f64 / MICROS,
        cost_day: r.cost_day as f64 / MICROS,
        hour_ends: r.hour_ends,
        day_ends: r.day_ends,
    })
}

/// Adds one upstream call's tokens and cost (millionths of the price currency) to the
/// current hour of `class`.
pub async fn charge(
    pool: &PgPool,
    project: &str,
    class: BudgetClass,
    tokens: i64,
    cost_micros: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO llm_spend (project, class, hour, tokens, cost_micros, calls)
         VALUES ($1, $2, date_trunc('hour', now()), $3, $4, 1)
         ON CONFLICT (project, class, hour)
         DO UPDATE SET tokens = llm_spend.tokens + $3, cost_micros = llm_spend.cost_micros + $4,
                       calls = llm_spend.calls + 1",
        project,
        class as _,
        tokens,
        cost_micros,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Drops spend rows older than two days (nothing reads them: windows are an hour and a day).
pub async fn prune(pool: &PgPool) -> Result<u64, sqlx::Error> {
    sqlx::query!("DELETE FROM llm_spend WHERE hour < date_trunc('day', now()) - interval '1 day'")
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
}

/// Marks a job as waiting for its background budget (`None`: running again).
pub async fn set_job_paused(
    pool: &PgPool,
    job: Uuid,
    until: Option<DateTime<Utc>>,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE jobs SET paused_until = $2, pause_reason = $3, updated_at = now() WHERE id = $1",
        job,
        until,
        reason,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Whether a job waits for its budget: (until, why), and whether cancelling it was asked.
pub async fn job_pause(
    pool: &PgPool,
    job: Uuid,
) -> Result<(Option<(DateTime<Utc>, String)>, bool), sqlx::Error> {
    let r = sqlx::query!(
        "SELECT paused_until, pause_reason, cancel_requested FROM jobs WHERE id = $1",
        job
    )
    .fetch_optional(pool)
    .await?;
    Ok(match r {
        Some(r) => (
            r.paused_until
                .map(|u| (u, r.pause_reason.unwrap_or_default())),
            r.cancel_requested,
        ),
        None => (None, false),
    })
}
