//! Optimizations and evaluations as background jobs: enqueue (202), status with progress
//! and cost so far, the steps of an optimization, cancel.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{AppError, ErrorBody};
use super::extract::{Json, Path};
use super::state::AppState;
use crate::auth::Principal;
use crate::eval::params::EvalParams;
use crate::jobs::optimize::OptParams;
use crate::jobs::submit::{JobRequest, SubmitError, submit};
use crate::jobs::{JobKind, JobStatus, Published};
use crate::llm::usage::TallySnapshot;
use crate::store::jobs::{self as db, JobRow, RunStepRow};

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

/// What a job says about its progress.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProgressView {
    /// What the job is doing (`preparing`, `baseline`, `optimizing`, `scoring`, ...).
    pub phase: String,
    pub done: u64,
    pub total: u64,
    pub message: String,
}

/// A job's status, progress, cost so far and (when finished) its report.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: Uuid,
    pub kind: JobKind,
    pub status: JobStatus,
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// Phase, done/total and message, saved after every batch.
    pub progress: ProgressView,
    /// Best `p_gen` version so far (optimizations).
    pub best_version: Option<i32>,
    /// Its validation NDCG@10 (validation acceptance).
    pub best_score: Option<f64>,
    /// The starting prompt's validation NDCG@10 (validation acceptance).
    pub baseline_score: Option<f64>,
    /// LLM usage so far, over all attempts.
    pub cost: TallySnapshot,
    /// Set while the job waits for its background LLM budget (it resumes by itself when the
    /// window rolls or the budget is raised).
    pub paused: Option<PauseView>,
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

/// Why a running job waits, and until when.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PauseView {
    pub until: chrono::DateTime<chrono::Utc>,
    pub reason: String,
}

/// A job in a list: what it is and where it is (its report and parameters through its own
/// path).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobSummary {
    pub id: Uuid,
    pub kind: JobKind,
    pub status: JobStatus,
    pub progress: ProgressView,
    pub attempts: i32,
    pub cancel_requested: bool,
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<JobRow> for JobSummary {
    fn from(job: JobRow) -> Self {
        JobSummary {
            id: job.id,
            kind: job.kind,
            status: job.status,
            progress: ProgressView::of(&job.progress),
            attempts: job.attempts,
            cancel_requested: job.cancel_requested,
            error: job.error,
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
        }
    }
}

impl ProgressView {
    /// What a stored job publishes (never its resume state).
    fn of(stored: &serde_json::Value) -> ProgressView {
        let p = Published::of(stored);
        ProgressView {
            phase: p.phase,
            done: p.done,
            total: p.total,
            message: p.message,
        }
    }
}

/// One step of an optimization: a candidate prompt (or the baseline, a feedback round...),
/// its scores, accepted or not, and why.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    pub step: i32,
    pub epoch: i32,
    pub batch: i32,
    pub kind: String,
    pub prompt_version: Option<i32>,
    #[schema(value_type = Object)]
    pub scores: serde_json::Value,
    pub accepted: Option<bool>,
    pub reason: Option<String>,
    #[schema(value_type = Object)]
    pub usage: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<RunStepRow> for StepView {
    fn from(r: RunStepRow) -> Self {
        StepView {
            step: r.step,
            epoch: r.epoch,
            batch: r.batch,
            kind: r.kind,
            prompt_version: r.prompt_version,
            scores: r.scores,
            accepted: r.accepted,
            reason: r.reason,
            usage: r.usage,
            created_at: r.created_at,
        }
    }
}

impl From<SubmitError> for AppError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Invalid(why) => AppError::Validation(why),
            SubmitError::Db(e) => e.into(),
        }
    }
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
    let best = Published::of(&job.progress).best;
    let paused = match job.status {
        JobStatus::Running => {
            crate::store::budget::job_pause(&state.pool, job.id)
                .await?
                .0
        }
        _ => None,
    }
    .map(|(until, reason)| PauseView { until, reason });
    let baseline_score = if job.kind == JobKind::Optimization {
        db::baseline_score(&state.pool, job.id).await?
    } else {
        None
    };
    Ok(JobView {
        id: job.id,
        kind: job.kind,
        status: job.status,
        params: job.params,
        progress: ProgressView::of(&job.progress),
        best_version: best.map(|b| b.version),
        best_score: best.and_then(|b| b.score),
        baseline_score,
        cost,
        paused,
        attempts: job.attempts,
        cancel_requested: job.cancel_requested,
        error: job.error,
        created_at: job.created_at,
        started_at: job.started_at,
        finished_at: job.finished_at,
        report: job.result,
    })
}

async fn load(
    state: &AppState,
    who: &Principal,
    id: Uuid,
    kind: JobKind,
) -> Result<JobRow, AppError> {
    db::get(&state.pool, &who.project, id, Some(kind))
        .await?
        .ok_or_else(|| AppError::NotFound(format!("{kind} {id} not found")))
}

async fn cancel(
    state: &AppState,
    who: &Principal,
    id: Uuid,
    kind: JobKind,
) -> Result<Json<JobView>, AppError> {
    let job = load(state, who, id, kind).await?;
    if job.status.is_final() {
        return Err(AppError::Conflict(format!(
            "{kind} {id} already {}",
            job.status
        )));
    }
    let job = db::request_cancel(&state.pool, &who.project, id, kind)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("{kind} {id} not found")))?;
    Ok(Json(view(state, job).await?))
}

/// Queues a job through the one submit path (every check of its kind).
async fn create(
    state: &AppState,
    who: &Principal,
    request: JobRequest,
) -> Result<(StatusCode, Json<Created>), AppError> {
    let job = submit(&state.pool, &state.pool, &who.project, &request).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Created {
            id: job.id,
            status: job.status,
        }),
    ))
}

/// Start an AGP optimization of `p_gen` as a background job.
#[utoipa::path(post, path = "/v1/optimizations", tag = "jobs", request_body = OptParams,
    responses((status = 202, body = Created), (status = 422, body = ErrorBody)))]
pub async fn create_optimization(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(body): Json<OptParams>,
) -> Result<(StatusCode, Json<Created>), AppError> {
    create(&state, &who, JobRequest::Optimization(body)).await
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
    responses((status = 200, body = [StepView]), (status = 404, body = ErrorBody)))]
pub async fn optimization_steps(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<StepView>>, AppError> {
    load(&state, &who, id, JobKind::Optimization).await?;
    let steps = db::steps(&state.pool, id).await?;
    Ok(Json(steps.into_iter().map(StepView::from).collect()))
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

/// Start an offline evaluation as a background job.
#[utoipa::path(post, path = "/v1/evaluations", tag = "jobs", request_body = EvalParams,
    responses((status = 202, body = Created), (status = 422, body = ErrorBody)))]
pub async fn create_evaluation(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(body): Json<EvalParams>,
) -> Result<(StatusCode, Json<Created>), AppError> {
    create(&state, &who, JobRequest::Evaluation(body)).await
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
    create(&state, &who, JobRequest::SummarizeCatalog).await
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
