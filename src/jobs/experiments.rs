//! Looking at running experiments: read the arms from the request log, decide
//! (`experiment::look`), and store the look or end the experiment, moving its label. Every
//! `agp serve` and `agp worker` looks every few seconds; ending is conditional on the
//! experiment still running, so replicas never end one twice.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::experiment::{self, Outcome};
use crate::store::experiments::{self as db, ExperimentRow};

/// How often running experiments are looked at.
pub const LOOK_EVERY: Duration = Duration::from_secs(5);

/// Looks at one experiment (deciding and applying the decision if it is running) and
/// returns it as it now stands.
pub async fn look(
    pool: &PgPool,
    project: &str,
    id: Uuid,
) -> Result<Option<ExperimentRow>, sqlx::Error> {
    let Some(e) = db::get(pool, project, id).await? else {
        return Ok(None);
    };
    if e.status != "running" {
        return Ok(Some(e));
    }
    let observed = db::observed(pool, project, &e).await?;
    let (treatment, control): (Vec<_>, Vec<_>) = observed.iter().partition(|o| o.treatment);
    let c = experiment::arm_metrics(e.control, &control, e.settings.k);
    let t = experiment::arm_metrics(e.treatment, &treatment, e.settings.k);
    let look = experiment::look(&c, &t, &e.settings, e.treatment_share, e.p_value);
    let result = json!({"control": c, "treatment": t, "look": look});
    let ending = match look.outcome {
        Outcome::Continue => None,
        Outcome::Promote => Some(("promoted", e.treatment)),
        Outcome::KeepControl => Some(("kept_control", e.control)),
        Outcome::RollBack => Some(("rolled_back", e.control)),
        Outcome::Inconclusive => Some(("inconclusive", e.control)),
        Outcome::Void => Some(("void", e.control)),
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
                tracing::info!(experiment = %e.id, status, version, reason = %look.reason, "experiment ended");
            }
        }
    }
    db::get(pool, project, id).await
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
    if e.status == "running" {
        db::end(
            pool,
            project,
            &e,
            "stopped",
            e.control,
            "stopped by request; the control stays",
            None,
        )
        .await?;
    }
    db::get(pool, project, id).await
}

/// Looks at every running experiment once.
pub async fn look_all(pool: &PgPool) {
    match db::running(pool).await {
        Ok(running) => {
            for (project, id) in running {
                if let Err(e) = look(pool, &project, id).await {
                    tracing::warn!(experiment = %id, error = %e, "look failed");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list running experiments"),
    }
}
