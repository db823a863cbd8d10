//! The web console: a small script over the JSON API, built into the binary (no CDN, works
//! offline), served at `/console`; and the few reads it needs that the API did not have (the
//! overview, recent jobs, a job's report files) plus loading the bundled sample on a new
//! project. The console calls the API with the key it was given, so scopes apply as usual.

use std::borrow::Cow;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{AppError, ErrorBody};
use super::extract::{Json, Path};
use super::jobs::JobSummary;
use super::state::AppState;
use crate::auth::Principal;
use crate::import::{self, MemoryFile};
use crate::llm::Role;
use crate::store::console::{self as db, Activity};
use crate::store::jobs as jobs_db;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");
const SAMPLE_ITEMS: &str = include_str!("../../data/amazon-games-sample/Games-6k-sample.item");
const SAMPLE_INTER: &str =
    include_str!("../../data/amazon-games-sample/Games-6k-sample.test.inter");

/// The console's own files (public: they hold no data).
pub fn assets() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { Html(INDEX) }))
        .route(
            "/console/app.js",
            get(|| async { asset("text/javascript", SCRIPT) }),
        )
        .route(
            "/console/app.css",
            get(|| async { asset("text/css", STYLE) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The API reads of the console (behind the keys like every `/v1` route).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/console/overview", get(overview))
        .route("/v1/console/jobs", get(jobs))
        .route("/v1/console/jobs/{id}/chart.svg", get(chart))
        .route("/v1/console/jobs/{id}/report.md", get(report_md))
        .route("/v1/console/sample", post(load_sample))
}

/// Which LLM answers rankings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LlmInfo {
    pub configured: bool,
    /// The ranking model's name.
    pub model: Option<String>,
}

/// The overview page: catalog size, the last hour of reranks and LLM calls.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Overview {
    pub project: String,
    pub activity: Activity,
    pub llm: LlmInfo,
}

/// Catalog size, reranks per minute by fallback reason, LLM calls, tokens, latency and cache
/// hits per minute by role, over the last hour.
#[utoipa::path(get, path = "/v1/console/overview", tag = "console",
    responses((status = 200, body = Overview)))]
pub async fn overview(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Overview>, AppError> {
    let model = state.llm.model(Role::Rank).map(str::to_string);
    Ok(Json(Overview {
        activity: db::activity(&state.pool, &who.project).await?,
        project: who.project,
        llm: LlmInfo {
            configured: model.is_some(),
            model,
        },
    }))
}

/// The project's 50 most recent jobs (evaluations, optimizations, summaries), newest first.
#[utoipa::path(get, path = "/v1/console/jobs", tag = "console",
    responses((status = 200, body = Vec<JobSummary>)))]
pub async fn jobs(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<JobSummary>>, AppError> {
    let jobs = jobs_db::recent(&state.pool, &who.project, 50).await?;
    Ok(Json(jobs.into_iter().map(JobSummary::from).collect()))
}

/// A finished job's report as stored.
async fn report_of(
    state: &AppState,
    project: &str,
    id: Uuid,
) -> Result<crate::report::Report, AppError> {
    let job = jobs_db::get(&state.pool, project, id, None)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no job {id}")))?;
    let result = job.result.ok_or_else(|| {
        AppError::NotFound(format!("job {id} has no report yet ({})", job.status))
    })?;
    serde_json::from_value(result)
        .map_err(|e| AppError::NotFound(format!("job {id} has no readable report: {e}")))
}

/// The chart of a job's report (NDCG by method, or the optimization curve).
#[utoipa::path(get, path = "/v1/console/jobs/{id}/chart.svg", tag = "console",
    params(("id" = Uuid, Path)),
    responses((status = 200, content_type = "image/svg+xml", body = String), (status = 404, body = ErrorBody)))]
pub async fn chart(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> Result<Response, AppError> {
    let r = report_of(&state, &who.project, id).await?;
    Ok((
        [(header::CONTENT_TYPE, "image/svg+xml")],
        crate::report::render_svg(&r),
    )
        .into_response())
}

/// A job's report as Markdown (the `report.md` of its report folder).
#[utoipa::path(get, path = "/v1/console/jobs/{id}/report.md", tag = "console",
    params(("id" = Uuid, Path)),
    responses((status = 200, content_type = "text/markdown", body = String), (status = 404, body = ErrorBody)))]
pub async fn report_md(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> Result<Response, AppError> {
    let r = report_of(&state, &who.project, id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/markdown; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"report.md\"",
            ),
        ],
        crate::report::render_markdown(&r),
    )
        .into_response())
}

/// What loading the sample did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SampleLoaded {
    pub items: usize,
    pub interactions: usize,
}

/// Load the bundled Amazon Games sample (LLMRank's Games-6k: 300 users) into the project.
/// Idempotent: what is already there is left as it is.
#[utoipa::path(post, path = "/v1/console/sample", tag = "console",
    responses((status = 200, body = SampleLoaded)))]
pub async fn load_sample(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<SampleLoaded>, AppError> {
    let file = |name: &str, text: &'static str| MemoryFile {
        name: name.into(),
        bytes: Cow::Borrowed(text.as_bytes()),
    };
    let load = import::Load {
        project: who.project,
        format: import::Format::Recbole,
        input: import::Input::Memory(vec![
            file("Games-6k-sample.item", SAMPLE_ITEMS),
            file("Games-6k-sample.test.inter", SAMPLE_INTER),
        ]),
        limits: state.config.limits,
        hold_out_last: false,
        record_source: false,
    };
    let pool = state.pool.clone();
    let loaded = import::load_into(load, async || Ok(pool), |_| {})
        .await
        .map_err(|e| match e {
            import::LoadError::Write(e) => AppError::from(e),
            // The bundled sample does not read, or breaks this server's limits.
            other => AppError::Internal(other.into()),
        })?;
    Ok(Json(SampleLoaded {
        items: loaded.items,
        interactions: loaded.interactions,
    }))
}
