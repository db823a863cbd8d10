//! Looking at running experiments: fold the traffic that arrived since the last look into
//! the experiment's statistics (`store::experiment_stats`), decide (`experiment::look`) from
//! them, and store the look or end the experiment, moving its label. The leader looks at
//! every running experiment every few seconds; a read (`GET /v1/experiments/{id}`) looks at
//! one first so its answer is current. Ending is conditional on the experiment still running,
//! so it never ends twice.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::experiment::{self, LookPoint, Outcome};
use crate::store::experiment_stats::{self as stats, FoldError};
use crate::store::experiments::{self as db, ExperimentRow};
use crate::store::states::ExperimentStatus;

/// How long a read waits for another process's fold of the same experiment before it
/// answers from the statistics as they stand.
pub const READ_WAITS_FOR_FOLD: Duration = Duration::from_secs(5);

/// Looks at one experiment (folding its new traffic, deciding and applying the decision if
/// it is running) and returns it as it now stands. `wait`: how long to wait for a fold
/// another process is running (zero: skip the fold, look at what is folded).
pub async fn look(
    pool: &PgPool,
    project: &str,
    id: Uuid,
    wait: Duration,
) -> Result<Option<ExperimentRow>, sqlx::Error> {
    look_folding(pool, project, id, wait).await.map(|(e, _)| e)
}

/// [`look`], also returning the requests folded.
async fn look_folding(
    pool: &PgPool,
    project: &str,
    id: Uuid,
    wait: Duration,
) -> Result<(Option<ExperimentRow>, usize), sqlx::Error> {
    let Some(e) = db::get(pool, project, id).await? else {
        return Ok((None, 0));
    };
    if e.status != ExperimentStatus::Running {
        return Ok((Some(e), 0));
    }
    let folded = match stats::fold_pending(pool, project, &e, wait).await {
        Ok(n) => n,
        Err(FoldError::Busy) => {
            tracing::debug!(experiment = %e.id, "another process is folding; looking at what is folded");
            0
        }
        Err(FoldError::Db(err)) => return Err(err),
    };
    let (c, t) = stats::metrics(pool, &e).await?;
    let plan = e.plan();
    let look = experiment::look(&c, &t, &plan);
    let mut history: Vec<LookPoint> = e
        .result
        .as_ref()
        .and_then(|r| serde_json::from_value(r["history"].clone()).ok())
        .unwrap_or_default();
    let point = LookPoint::of(&look, c.users + t.users, chrono::Utc::now());
    experiment::record_point(&mut history, point, experiment::HISTORY_POINTS);
    // What an interleaved request may cost over the control by design (the token guardrail's
    // allowance), next to the arms' calls and tokens per rerank.
    let result = json!({"control": c, "treatment": t, "look": look, "history": history,
                        "cost_factor": plan.cost_factor});
    let ending = match look.outcome {
        Outcome::Continue => None,
        Outcome::Promote => Some((ExperimentStatus::Promoted, e.treatment)),
        Outcome::KeepControl => Some((ExperimentStatus::KeptControl, e.control)),
        Outcome::RollBack => Some((ExperimentStatus::RolledBack, e.control)),
        Outcome::Inconclusive => Some((ExperimentStatus::Inconclusive, e.control)),
        Outcome::Void => Some((ExperimentStatus::Void, e.control)),
    };
    match ending {
        None => db::record_look(pool, e.id, &look, &result).await?,
        Some((status, version)) => {
            if db::end(
                pool,
                project,
                &e,
                status,
                version,
                &look.reason,
                Some((&look, &result)),
            )
            .await?
            {
                tracing::info!(experiment = %e.id, %status, version, reason = %look.reason, "experiment ended");
            }
        }
    }
    Ok((db::get(pool, project, id).await?, folded))
}

/// Ends a running experiment by hand: the label goes back to the control.
pub async fn stop(
    pool: &PgPool,
    project: &str,
    id: Uuid,
) -> Result<Option<ExperimentRow>, sqlx::Error> {
    let Some(e) = db::get(pool, project, id).await? else {
        return Ok(None);
    };
    if e.status == ExperimentStatus::Running {
        db::end(
            pool,
            project,
            &e,
            ExperimentStatus::Stopped,
            e.control,
            "stopped by request; the control stays",
            None,
        )
        .await?;
    }
    db::get(pool, project, id).await
}

/// Looks at every running experiment once (the leader's pass); returns the requests folded.
/// A fold another process is running is not waited for: this pass looks at what is folded.
pub async fn look_all(pool: &PgPool) -> usize {
    let running = match db::running(pool).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "could not list running experiments");
            return 0;
        }
    };
    let mut folded = 0;
    for (project, id) in running {
        match look_folding(pool, &project, id, Duration::ZERO).await {
            Ok((_, n)) => folded += n,
            Err(e) => tracing::warn!(experiment = %id, error = %e, "look failed"),
        }
    }
    folded
}
