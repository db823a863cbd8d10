//! The autopilot policy of the project: read it with its runs, switch it on, pause it.

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::AppError;
use super::extract::Json;
use super::state::AppState;
use crate::auth::Principal;
use crate::cluster::autopilot::AutopilotSettings;
use crate::store::autopilot::{self as db, Run};
use crate::store::states::AutopilotStatus;

/// Routes of this area.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/autopilot", get(read).put(set))
}

/// The autopilot of the project.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AutopilotView {
    /// Off by default; `false` also pauses a policy that was on (a running experiment still
    /// ends by its own rule).
    pub enabled: bool,
    pub settings: AutopilotSettings,
    /// Positive feedback events since the last run (what `min_new_positives` is compared to).
    pub new_positives: i64,
    /// Logged cases the optimization needs, and how many there are.
    pub logged_cases_needed: usize,
    pub logged_cases: i64,
    /// Newest first.
    pub runs: Vec<RunView>,
}

/// One autopilot run: an optimization, maybe an experiment, and why it ended as it did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    pub id: Uuid,
    pub status: AutopilotStatus,
    pub job_id: Option<Uuid>,
    pub experiment_id: Option<Uuid>,
    pub reason: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<Run> for RunView {
    fn from(r: Run) -> Self {
        RunView {
            id: r.id,
            status: r.status,
            job_id: r.job_id,
            experiment_id: r.experiment_id,
            reason: r.reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Body of `PUT /v1/autopilot`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"enabled": true, "settings": {"min_new_positives": 200, "treatment_share": 0.1}}))]
pub struct AutopilotBody {
    pub enabled: bool,
    /// Leave out to keep the current settings.
    #[serde(default)]
    pub settings: Option<AutopilotSettings>,
}

/// The autopilot policy, its counters and its runs.
#[utoipa::path(get, path = "/v1/autopilot", tag = "experiments",
    responses((status = 200, body = AutopilotView)))]
pub async fn read(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<AutopilotView>, AppError> {
    Ok(Json(view(&state, &who.project).await?))
}

/// Switch the autopilot on (with settings) or off (pause). It never moves a label itself:
/// it starts optimizations on logged data and experiments, whose decisions move the label.
#[utoipa::path(put, path = "/v1/autopilot", tag = "experiments", request_body = AutopilotBody,
    responses((status = 200, body = AutopilotView), (status = 422, body = super::error::ErrorBody)))]
pub async fn set(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(body): Json<AutopilotBody>,
) -> Result<Json<AutopilotView>, AppError> {
    let settings = match body.settings {
        Some(s) => s,
        None => current(&state, &who.project).await?.1,
    }
    .normalized()
    .map_err(AppError::Validation)?;
    let json = serde_json::to_value(&settings).map_err(|e| AppError::Internal(e.into()))?;
    db::set_policy(&state.pool, &who.project, body.enabled, &json).await?;
    Ok(Json(view(&state, &who.project).await?))
}

async fn current(
    state: &AppState,
    project: &str,
) -> Result<(bool, AutopilotSettings, i64), AppError> {
    Ok(match db::policy(&state.pool, project).await? {
        Some(p) => (
            p.enabled,
            serde_json::from_value(p.settings).unwrap_or_default(),
            p.last_feedback_id,
        ),
        None => (false, AutopilotSettings::default(), 0),
    })
}

async fn view(state: &AppState, project: &str) -> Result<AutopilotView, AppError> {
    let (enabled, settings, since) = current(state, project).await?;
    let kinds = &settings.optimization.data.positive_kinds;
    let (new_positives, _) = db::new_positives(&state.pool, project, since, kinds).await?;
    let logged_cases =
        crate::store::rerank::count_logged_cases(&state.pool, project, kinds).await?;
    Ok(AutopilotView {
        enabled,
        logged_cases_needed: crate::eval::cases::logged_needed(&settings.optimization.data),
        settings,
        new_positives,
        logged_cases,
        runs: db::runs(&state.pool, project)
            .await?
            .into_iter()
            .map(RunView::from)
            .collect(),
    })
}
