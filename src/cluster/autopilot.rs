//! The autopilot: production feedback -> an optimization on logged data -> an experiment ->
//! the experiment's decision. Per project, off by default, pausable. Each step is a job, an
//! experiment or a row with its reason (`autopilot_runs`). It never moves a label itself:
//! only an experiment's decision (or a person) does.
//!
//! One tick per project (every few seconds, next to the experiment looker):
//! - no run in progress: when `min_new_positives` positive feedback events arrived since the
//!   last run and the logged protocol has enough cases, start an optimization of the
//!   production `p_gen` on logged data (validation acceptance, no promotion);
//! - optimizing: when the job succeeded and its best accepted candidate beats the production
//!   prompt on the logged validation cases, start an experiment (the candidate as treatment,
//!   `treatment_share` of users); otherwise the run ends with the figures as its reason;
//! - experimenting: when the experiment ended, the run ends with its decision.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::eval::Protocol;
use crate::experiment::{Design, ExperimentSettings};
use crate::jobs::JobStatus;
use crate::jobs::optimize::OptParams;
use crate::jobs::submit::{JobRequest, SubmitError, submit};
use crate::store::autopilot::{self as db, Run};
use crate::store::experiments::{self as experiments_db, NewExperiment, StartError};
use crate::store::jobs as jobs_db;
use crate::store::prompts::{self as prompts_db, PRODUCTION};
use crate::store::states::{AutopilotStatus as Status, ExperimentSource, ExperimentStatus};

/// The autopilot's settings (all optional; defaults shown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AutopilotSettings {
    /// Positive feedback events since the last run that start the next one.
    #[schema(minimum = 1, maximum = 100000000)]
    pub min_new_positives: usize,
    /// The optimization (its protocol is always `logged`, its acceptance `validation`, and it
    /// never promotes; `positive_kinds` also says which feedback counts as new positives).
    pub optimization: OptParams,
    /// Share of users given the candidate in the experiment.
    #[schema(minimum = 0.01, maximum = 0.5)]
    pub treatment_share: f64,
    /// How the experiment shows the candidate: `ab` (a share of users sees it) or
    /// `interleave` (a share of users sees it merged with production's ranking).
    pub design: Design,
    pub experiment: ExperimentSettings,
}

impl Default for AutopilotSettings {
    fn default() -> Self {
        let mut optimization = OptParams::default();
        optimization.data.protocol = Protocol::Logged;
        optimization.data.train_users = 60;
        optimization.data.validation_users = 40;
        optimization.data.test_users = 20;
        AutopilotSettings {
            min_new_positives: 200,
            optimization,
            treatment_share: 0.1,
            design: Design::Ab,
            experiment: ExperimentSettings::default(),
        }
    }
}

impl AutopilotSettings {
    /// Checks the settings and pins what the autopilot decides itself.
    pub fn normalized(mut self) -> Result<Self, String> {
        self.optimization
            .validate()
            .map_err(|e| format!("settings.optimization: {e}"))?;
        self.optimization.data.protocol = Protocol::Logged;
        self.optimization.acceptance = crate::agp::accept::Acceptance::Validation;
        self.optimization.promote_to = None;
        self.optimization.base_version = None;
        self.experiment.validate()?;
        if !(1..=100_000_000).contains(&self.min_new_positives) {
            return Err("settings.min_new_positives must be between 1 and 100000000".into());
        }
        if !(0.01..=0.5).contains(&self.treatment_share) {
            return Err(format!(
                "settings.treatment_share must be between 0.01 and 0.5, got {}",
                self.treatment_share
            ));
        }
        if self.optimization.data.validation_users == 0 {
            return Err("settings.optimization.validation_users must be at least 1: the candidate must beat \
                        production on logged validation cases"
                .into());
        }
        Ok(self)
    }
}

/// Runs one tick for every project whose autopilot is on.
pub async fn tick_all(pool: &PgPool) {
    let projects = match db::enabled_projects(pool).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "could not list autopilot projects");
            return;
        }
    };
    for project in projects {
        if let Err(e) = tick(pool, &project).await {
            tracing::warn!(project, error = %e, "autopilot tick failed");
        }
    }
}

/// One tick of a project's autopilot (nothing when it is off or paused).
pub async fn tick(pool: &PgPool, project: &str) -> Result<(), sqlx::Error> {
    let Some(policy) = db::policy(pool, project).await? else {
        return Ok(());
    };
    if !policy.enabled {
        return Ok(());
    }
    let settings: AutopilotSettings = serde_json::from_value(policy.settings).unwrap_or_default();
    match db::active(pool, project).await? {
        Some(run) if run.status == Status::Optimizing => {
            after_optimization(pool, project, &run, &settings).await
        }
        Some(run) => after_experiment(pool, project, &run).await,
        None => maybe_start(pool, project, policy.last_feedback_id, &settings).await,
    }
}

async fn maybe_start(
    pool: &PgPool,
    project: &str,
    since: i64,
    s: &AutopilotSettings,
) -> Result<(), sqlx::Error> {
    let kinds = &s.optimization.data.positive_kinds;
    let (new, newest) = db::new_positives(pool, project, since, kinds).await?;
    if (new as usize) < s.min_new_positives {
        return Ok(());
    }
    let have = crate::store::rerank::count_logged_cases(pool, project, kinds).await?;
    if (have as usize) < crate::eval::cases::logged_needed(&s.optimization.data) {
        return Ok(());
    }
    let Some(production) = prompts_db::label(pool, project, "p_gen", PRODUCTION)
        .await?
        .and_then(|l| l.version)
    else {
        // The label is split (an experiment runs, or a person split it): wait.
        return Ok(());
    };
    let mut params = s.optimization.clone();
    params.base_version = Some(production);
    let reason = format!(
        "{new} new positive feedback events (threshold {}), {have} logged cases: optimizing p_gen v{production} \
         on logged data",
        s.min_new_positives
    );
    // One transaction: the policy row held, the job queued through the one submit path (every
    // check an optimization gets from the API), the run recorded.
    let mut tx = pool.begin().await?;
    if !db::lock_for_start(&mut tx, project).await? {
        return Ok(());
    }
    let request = JobRequest::Optimization(params);
    let job = match submit(pool, &mut *tx, project, &request).await {
        Ok(job) => job,
        Err(SubmitError::Invalid(why)) => {
            tracing::warn!(project, reason = %why, "autopilot: the optimization was refused");
            return Ok(());
        }
        Err(SubmitError::Db(e)) => return Err(e),
    };
    db::record_start(&mut tx, project, job.id, newest, &reason).await?;
    tx.commit().await?;
    tracing::info!(project, job = %job.id, "autopilot started an optimization");
    Ok(())
}

/// A `p_gen` version and its validation NDCG@10.
type Scored = (i32, f64);

/// The best accepted candidate and the baseline's validation NDCG@10, from an optimization
/// report: (baseline version, baseline score, the best candidate).
fn best_candidate(result: &serde_json::Value) -> Option<(i32, f64, Option<Scored>)> {
    let steps = result.get("steps")?.as_array()?;
    let num = |s: &serde_json::Value, k: &str| s.get(k).and_then(serde_json::Value::as_f64);
    let base = steps.iter().find(|s| s["kind"] == "baseline")?;
    let base_v = base.get("version")?.as_i64()? as i32;
    let base_score = num(base, "validation_ndcg_10")?;
    let best = steps
        .iter()
        .filter(|s| s["kind"] == "candidate" && s["accepted"] == true)
        .filter_map(|s| {
            Some((
                s.get("version")?.as_i64()? as i32,
                num(s, "validation_ndcg_10")?,
            ))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1));
    Some((base_v, base_score, best))
}

/// Ends a run (from the status it was read in: replicas never end it twice) with its reason.
async fn end_run(pool: &PgPool, run: &Run, to: Status, why: &str) -> Result<(), sqlx::Error> {
    db::advance(pool, run.id, run.status, to, None, why)
        .await
        .map(|_| ())
}

async fn after_optimization(
    pool: &PgPool,
    project: &str,
    run: &Run,
    s: &AutopilotSettings,
) -> Result<(), sqlx::Error> {
    let Some(job_id) = run.job_id else {
        end_run(pool, run, Status::Failed, "no job").await?;
        return Ok(());
    };
    let Some(job) = jobs_db::get(pool, project, job_id, None).await? else {
        end_run(pool, run, Status::Failed, "the job is gone").await?;
        return Ok(());
    };
    match job.status {
        JobStatus::Queued | JobStatus::Running => Ok(()),
        JobStatus::Succeeded => {
            let found = job.result.as_ref().and_then(best_candidate);
            match found {
                Some((base_v, base, Some((best_v, best)))) if best > base && best_v != base_v => {
                    let new = NewExperiment {
                        project,
                        name: "p_gen",
                        label: PRODUCTION,
                        design: s.design,
                        control: base_v,
                        treatment: best_v,
                        treatment_share: s.treatment_share,
                        settings: &s.experiment,
                        source: ExperimentSource::Autopilot,
                    };
                    let why = format!(
                        "p_gen v{best_v} beat production v{base_v} on logged validation (NDCG@10 {best:.4} vs {base:.4}): \
                         experiment with {:.0}% of users",
                        100.0 * s.treatment_share
                    );
                    match experiments_db::start(pool, &new).await {
                        Ok(e) => {
                            db::advance(
                                pool,
                                run.id,
                                Status::Optimizing,
                                Status::Experimenting,
                                Some(e.id),
                                &why,
                            )
                            .await?;
                        }
                        Err(StartError::Running { id, .. } | StartError::Interleaving(id)) => {
                            let why = format!("{why}; not started: experiment {id} is running");
                            end_run(pool, run, Status::Skipped, &why).await?;
                        }
                        Err(StartError::Db(e)) => return Err(e),
                    }
                    Ok(())
                }
                Some((base_v, base, best)) => {
                    let why = match best {
                        Some((v, score)) => format!(
                            "no candidate beat production v{base_v} on logged validation (best v{v} {score:.4} vs {base:.4})"
                        ),
                        None => format!(
                            "no candidate was accepted against production v{base_v} (validation NDCG@10 {base:.4})"
                        ),
                    };
                    end_run(pool, run, Status::Done, &why).await
                }
                None => {
                    end_run(
                        pool,
                        run,
                        Status::Failed,
                        "the optimization report has no validation scores",
                    )
                    .await
                }
            }
        }
        other @ (JobStatus::Failed | JobStatus::Cancelled) => {
            let why = format!("optimization {other}: {}", job.error.unwrap_or_default());
            end_run(pool, run, Status::Failed, &why).await
        }
    }
}

async fn after_experiment(pool: &PgPool, project: &str, run: &Run) -> Result<(), sqlx::Error> {
    let Some(id) = run.experiment_id else {
        end_run(pool, run, Status::Failed, "no experiment").await?;
        return Ok(());
    };
    let Some(e) = experiments_db::get(pool, project, id).await? else {
        end_run(pool, run, Status::Failed, "the experiment is gone").await?;
        return Ok(());
    };
    if e.status == ExperimentStatus::Running {
        return Ok(());
    }
    let why = format!(
        "experiment {}: {} ({})",
        e.id,
        e.status,
        e.reason.unwrap_or_default()
    );
    end_run(pool, run, Status::Done, &why).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_best_accepted_candidate_is_read_from_the_report() {
        let r = json!({"steps": [
            {"kind": "baseline", "version": 3, "validation_ndcg_10": 0.40},
            {"kind": "candidate", "version": 4, "accepted": false, "validation_ndcg_10": 0.55},
            {"kind": "candidate", "version": 5, "accepted": true, "validation_ndcg_10": 0.45},
            {"kind": "candidate", "version": 6, "accepted": true, "validation_ndcg_10": 0.47},
        ]});
        assert_eq!(best_candidate(&r), Some((3, 0.40, Some((6, 0.47)))));
        let none =
            json!({"steps": [{"kind": "baseline", "version": 3, "validation_ndcg_10": 0.4}]});
        assert_eq!(best_candidate(&none), Some((3, 0.4, None)));
        assert_eq!(best_candidate(&json!({})), None);
    }

    #[test]
    fn settings_pin_what_the_autopilot_decides() {
        let mut s = AutopilotSettings::default();
        s.optimization.promote_to = Some("production".into());
        s.optimization.data.protocol = Protocol::Llmrank;
        let s = s.normalized().unwrap();
        assert_eq!(s.optimization.promote_to, None);
        assert_eq!(s.optimization.data.protocol, Protocol::Logged);
        let bad = AutopilotSettings {
            treatment_share: 0.9,
            ..AutopilotSettings::default()
        };
        assert!(bad.normalized().unwrap_err().contains("treatment_share"));
    }
}
