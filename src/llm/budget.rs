//! LLM budgets: before an upstream call of a project with a budget, the client reads what
//! the call's class (interactive: reranks; background: jobs and refreshes) spent in the
//! current UTC hour and day from Postgres (`store::budget`), refuses an interactive call or
//! pauses a background one when a limit is reached, and adds the call's tokens after it.
//!
//! Both happen while the call holds its concurrency slot, so the cap holds across replicas
//! up to the calls already in flight when it was reached: at most one call per slot per
//! replica (each slot admits its next call only after its last call's tokens are stored).
//! Projects without a budget cost nothing here (limits are cached for [`LIMITS_TTL`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::store::budget::{self as db, ClassLimits, Limits};
use crate::store::states::BudgetClass;

/// How long a replica trusts the limits it read (a change elsewhere shows within it).
pub const LIMITS_TTL: Duration = Duration::from_secs(2);

/// How often a paused background call looks again (a raised budget resumes it).
pub const PAUSE_RECHECK: Duration = Duration::from_secs(2);

/// Why a call may not spend now.
#[derive(Debug, Clone, PartialEq)]
pub struct Spent {
    /// When the window that is spent rolls over.
    pub until: DateTime<Utc>,
    pub why: String,
}

/// The budget checks of one process.
#[derive(Debug)]
pub struct Budgets {
    pool: PgPool,
    limits: Mutex<HashMap<String, (Limits, Instant)>>,
}

impl Budgets {
    pub fn new(pool: PgPool) -> Self {
        Budgets {
            pool,
            limits: Mutex::new(HashMap::new()),
        }
    }

    /// The project's limits (cached; unlimited when the database cannot say).
    async fn limits(&self, project: &str) -> Limits {
        {
            let cache = self.limits.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((l, at)) = cache.get(project)
                && at.elapsed() < LIMITS_TTL
            {
                return *l;
            }
        }
        match db::limits(&self.pool, project).await {
            Ok(l) => {
                let mut cache = self.limits.lock().unwrap_or_else(|e| e.into_inner());
                cache.insert(project.to_string(), (l, Instant::now()));
                l
            }
            Err(e) => {
                tracing::warn!(project, error = %e, "could not read the LLM budget; not limiting");
                Limits::default()
            }
        }
    }

    /// Drops this process's copy of the project's limits (after it changed them).
    pub fn forget(&self, project: &str) {
        let mut cache = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        cache.remove(project);
    }

    /// Whether `class` of the project may make a call now; `Err` when a window is spent.
    /// Also true (with a warning) when the database cannot say: a budget never stops
    /// serving because Postgres is away.
    pub async fn check(&self, project: &str, class: BudgetClass) -> Result<(), Spent> {
        let limits = self.limits(project).await.of(class);
        if limits.is_unlimited() {
            return Ok(());
        }
        let s = match db::spent(&self.pool, project, class).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(project, error = %e, "could not read LLM spend; not limiting");
                return Ok(());
            }
        };
        metrics::gauge!("agp_llm_budget_spent_tokens", "project" => project.to_string(),
            "class" => class.as_str(), "window" => "hour")
        .set(s.hour as f64);
        metrics::gauge!("agp_llm_budget_spent_tokens", "project" => project.to_string(),
            "class" => class.as_str(), "window" => "day")
        .set(s.day as f64);
        metrics::gauge!("agp_llm_budget_spent_cost", "project" => project.to_string(),
            "class" => class.as_str(), "window" => "hour")
        .set(s.cost_hour);
        metrics::gauge!("agp_llm_budget_spent_cost", "project" => project.to_string(),
            "class" => class.as_str(), "window" => "day")
        .set(s.cost_day);
        verdict(class, &limits, &s)
    }

    /// Adds a call's tokens and cost (millionths of the price currency) to the project's
    /// spend, if the project has a budget.
    pub async fn charge(&self, project: &str, class: BudgetClass, tokens: u64, cost_micros: i64) {
        if self.limits(project).await.is_unlimited() {
            return;
        }
        let tokens = i64::try_from(tokens).unwrap_or(i64::MAX);
        if let Err(e) = db::charge(&self.pool, project, class, tokens, cost_micros).await {
            tracing::warn!(project, error = %e, "could not add to the LLM spend");
        }
    }

    /// Waits while the background budget is spent, saying so on the job; returns when a
    /// call may go, or `Err` when the job was cancelled while it waited.
    pub async fn wait(
        &self,
        project: &str,
        job: Option<uuid::Uuid>,
        first: Spent,
    ) -> Result<(), Spent> {
        let mut spent = first;
        loop {
            metrics::counter!("agp_llm_budget_pauses_total", "class" => BudgetClass::Background.as_str())
                .increment(1);
            if let Some(job) = job {
                if let Err(e) =
                    db::set_job_paused(&self.pool, job, Some(spent.until), Some(&spent.why)).await
                {
                    tracing::warn!(%job, error = %e, "could not mark the job paused");
                }
                if let Ok((_, true)) = db::job_pause(&self.pool, job).await {
                    let _ = db::set_job_paused(&self.pool, job, None, None).await;
                    return Err(spent);
                }
            }
            tracing::info!(project, ?job, until = %spent.until, why = %spent.why, "background LLM work paused by the budget");
            let left = (spent.until - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(left.clamp(Duration::from_millis(50), PAUSE_RECHECK)).await;
            match self.check(project, BudgetClass::Background).await {
                Ok(()) => break,
                Err(s) => spent = s,
            }
        }
        if let Some(job) = job
            && let Err(e) = db::set_job_paused(&self.pool, job, None, None).await
        {
            tracing::warn!(%job, error = %e, "could not clear the job's pause");
        }
        Ok(())
    }
}

/// The decision from limits and spend: the hour's limits first (they roll sooner), tokens
/// before cost.
fn verdict(class: BudgetClass, l: &ClassLimits, s: &db::Spent) -> Result<(), Spent> {
    let windows = [
        (
            l.tokens_per_hour,
            l.cost_per_hour,
            s.hour,
            s.cost_hour,
            s.hour_ends,
            "hour",
            "this hour",
        ),
        (
            l.tokens_per_day,
            l.cost_per_day,
            s.day,
            s.cost_day,
            s.day_ends,
            "day",
            "today, UTC",
        ),
    ];
    for (tokens, cost, used, cost_used, ends, per, when) in windows {
        let spent = |why: String| Spent { until: ends, why };
        if let Some(limit) = tokens
            && used >= limit
        {
            return Err(spent(format!(
                "the {class} LLM budget of {limit} tokens per {per} is spent ({used} used {when})"
            )));
        }
        if let Some(limit) = cost
            && cost_used >= limit
        {
            return Err(spent(format!(
                "the {class} LLM budget of {limit} (cost) per {per} is spent ({cost_used:.4} used {when})"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spent(hour: i64, day: i64) -> db::Spent {
        let t = Utc::now();
        db::Spent {
            hour,
            day,
            cost_hour: 0.0,
            cost_day: 0.0,
            hour_ends: t + chrono::Duration::minutes(10),
            day_ends: t + chrono::Duration::hours(5),
        }
    }

    fn tokens(per_hour: Option<i64>, per_day: Option<i64>) -> ClassLimits {
        ClassLimits {
            tokens_per_hour: per_hour,
            tokens_per_day: per_day,
            ..Default::default()
        }
    }

    #[test]
    fn a_limit_is_spent_when_reached_and_the_hour_is_said_first() {
        let c = BudgetClass::Interactive;
        assert!(verdict(c, &tokens(Some(100), None), &spent(99, 99)).is_ok());
        let s = spent(100, 100);
        assert_eq!(
            verdict(c, &tokens(Some(100), Some(100)), &s)
                .unwrap_err()
                .until,
            s.hour_ends
        );
        assert_eq!(
            verdict(c, &tokens(Some(1000), Some(100)), &s)
                .unwrap_err()
                .until,
            s.day_ends
        );
        assert!(verdict(c, &tokens(None, None), &s).is_ok());
        let why = verdict(c, &tokens(None, Some(50)), &s).unwrap_err().why;
        assert!(
            why.contains("50 tokens per day") && why.contains(c.as_str()),
            "{why}"
        );
    }

    #[test]
    fn a_cost_limit_is_spent_when_the_priced_spend_reaches_it() {
        let c = BudgetClass::Background;
        let mut s = spent(10, 10);
        (s.cost_hour, s.cost_day) = (0.4, 2.5);
        let cost = |per_hour, per_day| ClassLimits {
            cost_per_hour: per_hour,
            cost_per_day: per_day,
            ..Default::default()
        };
        assert!(verdict(c, &cost(Some(0.5), Some(3.0)), &s).is_ok());
        let e = verdict(c, &cost(Some(0.4), None), &s).unwrap_err();
        assert_eq!(e.until, s.hour_ends);
        assert!(
            e.why.contains("(cost) per hour") && e.why.contains("0.4000 used"),
            "{}",
            e.why
        );
        assert_eq!(
            verdict(c, &cost(None, Some(2.5)), &s).unwrap_err().until,
            s.day_ends
        );
        // Tokens are said before cost in the same window.
        let both = ClassLimits {
            tokens_per_hour: Some(10),
            ..cost(Some(0.1), None)
        };
        assert!(
            verdict(c, &both, &s)
                .unwrap_err()
                .why
                .contains("10 tokens per hour")
        );
    }
}
