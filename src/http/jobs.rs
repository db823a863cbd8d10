//! Optimizations and evaluations as background jobs: enqueue (202), status with progress
//! and cost so far, the steps of an optimization, cancel.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{AppError, ErrorBody, Json, Path};
use super::state::AppState;
use crate::agp::prompt::PromptName;
use crate::auth::Principal;
use crate::eval::params::EvalParams;
use crate::jobs::optimize::OptParams;
use crate::jobs::{JobKind, JobStatus};
use crate::llm::usage::TallySnapshot;
use crate::store::jobs::{self as db, JobRow, StepRowDb};

/// Routes of this area.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/optimizations", post(create_optimization))
        .route("/v1/optimizations/{id}", get(get_optimization))
        .route("/v1/optimizations/{id}/steps", get(optimization_steps))
        .route("/v1/optimizations/{id}/cancel", post(cancel_optimization))
        .route("/v1/evaluations", post(create_evaluation))
        .route("/v1/evaluations/{id}", get(get_evaluation))
        .route("/v1/evaluations/{id}/cancel", post(cancel_evaluation))
        .route("/v1/summaries", post(create_summaries))
        .route("/v1/summaries/{id}", get(get_summaries))
}

/// Answer of job creation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Created {
    pub id: Uuid,
    pub status: JobStatus,
}

/// A job's status, progress, cost so far and (when finished) its report.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: Uuid,
    pub kind: JobKind,
    pub status: JobStatus,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// Phase, done/total, message and the resumable state, saved after every batch.
    #[schema(value_type = Object)]
    pub progress: serde_json::Value,
    /// Best `p_gen` version so far (optimizations).
    pub best_version: Option<i32>,
    /// Its validation NDCG@10 (validation acceptance).
    pub best_score: Option<f64>,
    /// The starting prompt's validation NDCG@10 (validation acceptance).
    pub baseline_score: Option<f64>,
    /// LLM usage so far, over all attempts.
    pub cost: TallySnapshot,
    pub attempts: i32,
    pub cancel_requested: bool,
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The full report (methods, metrics per seed, steps, cost per stage) once finished.
    #[schema(value_type = Option<Object>)]
    pub report: Option<serde_json::Value>,
}

async fn view(state: &AppState, job: JobRow) -> Result<JobView, AppError> {
    let by_role = crate::store::llm::job_usage_by_role(&state.pool, job.id).await?;
    let mut cost = TallySnapshot::default();
    for (_, t) in by_role {
        cost.llm_calls += t.calls;
        cost.cache_hits += t.cache_hits;
        cost.prompt_tokens += t.prompt_tokens;
        cost.completion_tokens += t.completion_tokens;
        cost.errors += t.errors;
        cost.llm_micros += t.latency_ms * 1000;
    }
    let st = job.progress.get("state");
    let beam_head = st.and_then(|s| s.get("beam")).and_then(|b| b.get(0));
    let best_version = beam_head
        .and_then(|b| b.get(0))
        .and_then(|v| v.as_i64())
        .or_else(|| st.and_then(|s| s.get("current")).and_then(|v| v.as_i64()))
        .map(|v| v as i32);
    let best_score = beam_head.and_then(|b| b.get(1)).and_then(|v| v.as_f64());
    let kind = stored_kind(&job.kind)?;
    let baseline_score = if kind == JobKind::Optimization {
        db::baseline_score(&state.pool, job.id).await?
    } else {
        None
    };
    Ok(JobView {
        id: job.id,
        kind,
        status: stored_status(&job.status)?,
        params: job.params,
        progress: job.progress,
        best_version,
        best_score,
        baseline_score,
        cost,
        attempts: job.attempts,
        cancel_requested: job.cancel_requested,
        error: job.error,
        created_at: job.created_at,
        started_at: job.started_at,
        finished_at: job.finished_at,
        report: job.result,
    })
}

/// A stored kind (the database's check constraint allows only known ones).
fn stored_kind(s: &str) -> Result<JobKind, AppError> {
    JobKind::parse(s)
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("unknown stored job kind {s:?}")))
}

/// A stored status (the database's check constraint allows only known ones).
fn stored_status(s: &str) -> Result<JobStatus, AppError> {
    JobStatus::parse(s)
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("unknown stored job status {s:?}")))
}

async fn load(
    state: &AppState,
    who: &Principal,
    id: Uuid,
    kind: JobKind,
) -> Result<JobRow, AppError> {
    db::get(&state.pool, &who.project, id, Some(kind.as_str()))
        .await?
        .ok_or_else(|| AppError::NotFound(format!("{} {id} not found", kind.as_str())))
}

async fn cancel(
    state: &AppState,
    who: &Principal,
    id: Uuid,
    kind: JobKind,
) -> Result<Json<JobView>, AppError> {
    let job = load(state, who, id, kind).await?;
    let status = stored_status(&job.status)?;
    if !matches!(status, JobStatus::Queued | JobStatus::Running) {
        return Err(AppError::Conflict(format!(
            "{} {id} already {}",
            kind.as_str(),
            status.as_str()
        )));
    }
    let job = db::request_cancel(&state.pool, &who.project, id, kind.as_str())
        .await?
        .ok_or_else(|| AppError::NotFound(format!("{} {id} not found", kind.as_str())))?;
    Ok(Json(view(state, job).await?))
}

/// Start an AGP optimization of `p_gen` as a background job.
#[utoipa::path(post, path = "/v1/optimizations", tag = "jobs", request_body = OptParams,
    responses((status = 202, body = Created), (status = 422, body = ErrorBody)))]
pub async fn create_optimization(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(body): Json<OptParams>,
) -> Result<(StatusCode, Json<Created>), AppError> {
    body.validate().map_err(AppError::Validation)?;
    check_logged(&state, &who.project, &body.data).await?;
    if let Some(v) = body.base_version
        && crate::store::prompts::version(&state.pool, &who.project, PromptName::PGen.as_str(), v)
            .await?
            .is_none()
    {
        return Err(AppError::Validation(format!(
            "base_version {v} does not exist for p_gen"
        )));
    }
    let params = serde_json::to_value(&body).map_err(|e| AppError::Internal(e.into()))?;
    let job = db::enqueue(
        &state.pool,
        &who.project,
        JobKind::Optimization.as_str(),
        &params,
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Created {
            id: job.id,
            status: stored_status(&job.status)?,
        }),
    ))
}

/// An optimization's status, progress, best version and score, baseline score, cost so far.
#[utoipa::path(get, path = "/v1/optimizations/{id}", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
pub async fn get_optimization(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> Result<Json<JobView>, AppError> {
    let job = load(&state, &who, id, JobKind::Optimization).await?;
    Ok(Json(view(&state, job).await?))
}

/// Every step of an optimization: each candidate prompt, its scores, accepted or not, and why.
#[utoipa::path(get, path = "/v1/optimizations/{id}/steps", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 200, body = [StepRowDb]), (status = 404, body = ErrorBody)))]
pub async fn optimization_steps(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<StepRowDb>>, AppError> {
    load(&state, &who, id, JobKind::Optimization).await?;
    Ok(Json(db::steps(&state.pool, id).await?))
}

/// Cancel an optimization (queued: at once; running: at its next batch boundary).
#[utoipa::path(post, path = "/v1/optimizations/{id}/cancel", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_optimization(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> Result<Json<JobView>, AppError> {
    cancel(&state, &who, id, JobKind::Optimization).await
}

/// Under the `logged` protocol: enough logged cases for the splits asked, or a 422 saying
/// how many there are and how many are needed.
async fn check_logged(
    state: &AppState,
    project: &str,
    data: &crate::eval::params::DataParams,
) -> Result<(), AppError> {
    if data.protocol != crate::eval::Protocol::Logged {
        return Ok(());
    }
    let have = crate::store::rerank::count_logged_cases(&state.pool, project, &data.positive_kinds)
        .await?;
    let have = usize::try_from(have).unwrap_or(0);
    if have < crate::eval::cases::logged_needed(data) {
        return Err(AppError::Validation(crate::eval::cases::too_few_logged(
            data, have,
        )));
    }
    Ok(())
}

/// Start an offline evaluation as a background job.
#[utoipa::path(post, path = "/v1/evaluations", tag = "jobs", request_body = EvalParams,
    responses((status = 202, body = Created), (status = 422, body = ErrorBody)))]
pub async fn create_evaluation(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(body): Json<EvalParams>,
) -> Result<(StatusCode, Json<Created>), AppError> {
    body.validate().map_err(AppError::Validation)?;
    check_logged(&state, &who.project, &body.data).await?;
    let existing = crate::store::prompts::existing_versions(
        &state.pool,
        &who.project,
        PromptName::PGen.as_str(),
        &body.versions,
    )
    .await?;
    if let Some(v) = body.versions.iter().find(|v| !existing.contains(v)) {
        return Err(AppError::Validation(format!(
            "versions: p_gen has no version {v}"
        )));
    }
    let params = serde_json::to_value(&body).map_err(|e| AppError::Internal(e.into()))?;
    let job = db::enqueue(
        &state.pool,
        &who.project,
        JobKind::Evaluation.as_str(),
        &params,
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Created {
            id: job.id,
            status: stored_status(&job.status)?,
        }),
    ))
}

/// An evaluation's status and progress; metrics per method and per seed once finished.
#[utoipa::path(get, path = "/v1/evaluations/{id}", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
pub async fn get_evaluation(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> Result<Json<JobView>, AppError> {
    let job = load(&state, &who, id, JobKind::Evaluation).await?;
    Ok(Json(view(&state, job).await?))
}

/// Cancel an evaluation.
#[utoipa::path(post, path = "/v1/evaluations/{id}/cancel", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_evaluation(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> Result<Json<JobView>, AppError> {
    cancel(&state, &who, id, JobKind::Evaluation).await
}

/// Summarize every catalog item that has no summary yet (production `p_sum`, summarize
/// model) in the background, so first reranks of new users need fewer LLM calls.
#[utoipa::path(post, path = "/v1/summaries", tag = "jobs",
    responses((status = 202, body = Created)))]
pub async fn create_summaries(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<(StatusCode, Json<Created>), AppError> {
    let job = db::enqueue(
        &state.pool,
        &who.project,
        JobKind::SummarizeCatalog.as_str(),
        &serde_json::json!({}),
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Created {
            id: job.id,
            status: stored_status(&job.status)?,
        }),
    ))
}

/// A catalog summarization job.
#[utoipa::path(get, path = "/v1/summaries/{id}", tag = "jobs", params(("id" = Uuid, Path)),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody)))]
pub async fn get_summaries(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> Result<Json<JobView>, AppError> {
    let job = load(&state, &who, id, JobKind::SummarizeCatalog).await?;
    Ok(Json(view(&state, job).await?))
}
