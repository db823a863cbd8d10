//! Submitting a job: every check a job kind needs before it is queued, in one place for the
//! API, the CLI and the autopilot (none of them writes a job row any other way).

use sqlx::{PgExecutor, PgPool};

use super::JobKind;
use super::optimize::OptParams;
use crate::agp::prompt::PromptName;
use crate::eval::params::{DataParams, EvalParams};
use crate::store::jobs::{self as db, JobRow};

/// A job to queue, with its parameters.
#[derive(Debug, Clone)]
pub enum JobRequest {
    /// An AGP optimization of `p_gen`.
    Optimization(OptParams),
    /// An offline evaluation of methods and prompt versions.
    Evaluation(EvalParams),
    /// Summaries of every catalog item that has none.
    SummarizeCatalog,
}

impl JobRequest {
    /// The kind of job it queues.
    pub fn kind(&self) -> JobKind {
        match self {
            JobRequest::Optimization(_) => JobKind::Optimization,
            JobRequest::Evaluation(_) => JobKind::Evaluation,
            JobRequest::SummarizeCatalog => JobKind::SummarizeCatalog,
        }
    }
}

/// Why a job was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The parameters do not fit the project (the message says what to change).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Checks `request` against the project (reads through `pool`) and queues it through `into`
/// (the pool, or a transaction the caller commits with its own rows).
pub async fn submit<'e>(
    pool: &PgPool,
    into: impl PgExecutor<'e>,
    project: &str,
    request: &JobRequest,
) -> Result<JobRow, SubmitError> {
    let params = match request {
        JobRequest::Optimization(p) => {
            check_optimization(pool, project, p).await?;
            to_json(p)?
        }
        JobRequest::Evaluation(p) => {
            check_evaluation(pool, project, p).await?;
            to_json(p)?
        }
        JobRequest::SummarizeCatalog => serde_json::json!({}),
    };
    Ok(db::enqueue(into, project, request.kind(), &params).await?)
}

fn to_json(p: &impl serde::Serialize) -> Result<serde_json::Value, SubmitError> {
    serde_json::to_value(p)
        .map_err(|e| SubmitError::Invalid(format!("unserializable parameters: {e}")))
}

async fn check_optimization(
    pool: &PgPool,
    project: &str,
    p: &OptParams,
) -> Result<(), SubmitError> {
    p.validate().map_err(SubmitError::Invalid)?;
    check_logged(pool, project, &p.data).await?;
    if let Some(v) = p.base_version
        && crate::store::prompts::version(pool, project, PromptName::PGen.as_str(), v)
            .await?
            .is_none()
    {
        return Err(SubmitError::Invalid(format!(
            "base_version {v} does not exist for p_gen"
        )));
    }
    Ok(())
}

async fn check_evaluation(pool: &PgPool, project: &str, p: &EvalParams) -> Result<(), SubmitError> {
    p.validate().map_err(SubmitError::Invalid)?;
    check_logged(pool, project, &p.data).await?;
    let existing = crate::store::prompts::existing_versions(
        pool,
        project,
        PromptName::PGen.as_str(),
        &p.versions,
    )
    .await?;
    if let Some(v) = p.versions.iter().find(|v| !existing.contains(v)) {
        return Err(SubmitError::Invalid(format!(
            "versions: p_gen has no version {v}"
        )));
    }
    Ok(())
}

/// Under the `logged` protocol: enough logged cases for the splits asked, or an error saying
/// how many there are and how many are needed.
async fn check_logged(pool: &PgPool, project: &str, data: &DataParams) -> Result<(), SubmitError> {
    if data.protocol != crate::eval::Protocol::Logged {
        return Ok(());
    }
    let have =
        crate::store::rerank::count_logged_cases(pool, project, &data.positive_kinds).await?;
    let have = usize::try_from(have).unwrap_or(0);
    if have < crate::eval::cases::logged_needed(data) {
        return Err(SubmitError::Invalid(crate::eval::cases::too_few_logged(
            data, have,
        )));
    }
    Ok(())
}
