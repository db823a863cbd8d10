//! Online experiments: start one on a label (its traffic is split between a control and a
//! treatment version), read its arms, interval and decision, stop it. Decisions are applied
//! by the leader's experiment looker (`cluster::looker`) and by every read.

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
use crate::cluster::looker;
use crate::experiment::{Design, ExperimentSettings};
use crate::store::experiments::{self as db, ExperimentRow, NewExperiment, StartError};
use crate::store::prompts::{self as prompts_db, PRODUCTION};
use crate::store::states::{ExperimentSource, ExperimentStatus};

/// How long a read waits for this replica's journal to drain before it looks.
const READ_DRAINS_JOURNAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Routes of this area.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/experiments", post(create).get(list))
        .route("/v1/experiments/{id}", get(read))
        .route("/v1/experiments/{id}/stop", post(stop))
}

/// What an experiment compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compared {
    /// Versions of the profile prompt.
    #[default]
    PGen,
    /// Blend versions.
    Blend,
}

impl Compared {
    fn as_str(self) -> &'static str {
        match self {
            Compared::PGen => "p_gen",
            Compared::Blend => crate::store::blends::BLEND,
        }
    }
}

/// Body of `POST /v1/experiments`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"treatment": 2, "treatment_share": 0.1}))]
pub struct NewExperimentBody {
    /// `p_gen` (default) or `blend`.
    #[serde(default)]
    pub name: Compared,
    /// `ab` (default): users are split between control and treatment. `interleave`: users
    /// in the treatment's share see one list merged from both rankings (team-draft), and
    /// clicks say which ranking's items they preferred; the others see the control. An
    /// interleaved `p_gen` request costs two profiles and two rankings; a blend's, one.
    #[serde(default)]
    pub design: Design,
    /// The label whose traffic is split (default `production`).
    #[serde(default)]
    #[schema(pattern = "LABEL")]
    pub label: Option<String>,
    /// The control version (default: the version the label points at).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2147483647)]
    pub control: Option<i32>,
    #[schema(minimum = 1, maximum = 2147483647)]
    pub treatment: i32,
    /// Share of users sent to the treatment (default 0.1).
    #[serde(default)]
    #[schema(minimum = 0.01, maximum = 0.99)]
    pub treatment_share: Option<f64>,
    #[serde(default)]
    pub settings: Option<ExperimentSettings>,
}

/// An experiment: what it compares, how, where it is and the last look's figures.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExperimentView {
    pub id: Uuid,
    /// `p_gen` or `blend`.
    pub name: String,
    pub label: String,
    /// `ab`: users split between the arms; `interleave`: users in the treatment's share see
    /// both arms' rankings merged (team-draft), the rest the control.
    pub design: Design,
    pub control: i32,
    pub treatment: i32,
    /// Share of users in the treatment (`ab`) or seeing the interleaved list (`interleave`).
    pub treatment_share: f64,
    pub settings: ExperimentSettings,
    pub status: ExperimentStatus,
    /// Always-valid p-value (the minimum over looks).
    pub p_value: f64,
    /// Always-valid p-value of the sequential sample ratio check (the minimum over looks).
    pub srm_p: f64,
    pub looks: i32,
    /// The last look's figures and decision.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub reason: Option<String>,
    pub source: ExperimentSource,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub ended_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<ExperimentRow> for ExperimentView {
    fn from(e: ExperimentRow) -> Self {
        ExperimentView {
            id: e.id,
            name: e.name,
            label: e.label,
            design: e.design,
            control: e.control,
            treatment: e.treatment,
            treatment_share: e.treatment_share,
            settings: e.settings,
            status: e.status,
            p_value: e.p_value,
            srm_p: e.srm_p,
            looks: e.looks,
            result: e.result,
            reason: e.reason,
            source: e.source,
            started_at: e.started_at,
            ended_at: e.ended_at,
        }
    }
}

/// Start an experiment: the label's traffic is split between the control (the label's
/// version by default) and the treatment, by a stable hash of the user id, until the decision
/// rule promotes the treatment, keeps the control, or a guardrail rolls it back.
#[utoipa::path(post, path = "/v1/experiments", tag = "experiments", request_body = NewExperimentBody,
    responses((status = 201, body = ExperimentView), (status = 409, description = "An experiment is already running on the label", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(body): Json<NewExperimentBody>,
) -> Result<(StatusCode, Json<ExperimentView>), AppError> {
    let name = body.name.as_str();
    let label = body.label.unwrap_or_else(|| PRODUCTION.to_string());
    crate::agp::prompt::check_label("label", &label).map_err(AppError::Validation)?;
    let share = body.treatment_share.unwrap_or(0.1);
    if !(0.01..=0.99).contains(&share) {
        return Err(AppError::Validation(format!(
            "treatment_share must be between 0.01 and 0.99, got {share}"
        )));
    }
    let settings = body.settings.unwrap_or_default();
    settings.validate().map_err(AppError::Validation)?;
    let control = match body.control {
        Some(v) => v,
        None => prompts_db::label(&state.pool, &who.project, name, &label)
            .await?
            .and_then(|l| l.version)
            .ok_or_else(|| {
                AppError::Validation(format!(
                    "{name} label {label:?} does not point at one version: give control"
                ))
            })?,
    };
    if control == body.treatment {
        return Err(AppError::Validation(
            "control and treatment must be different versions".into(),
        ));
    }
    let wanted = [control, body.treatment];
    let existing = prompts_db::existing_versions(&state.pool, &who.project, name, &wanted).await?;
    if let Some(v) = wanted.iter().find(|v| !existing.contains(v)) {
        return Err(AppError::Validation(format!("{name} has no version {v}")));
    }
    let new = NewExperiment {
        project: &who.project,
        name,
        label: &label,
        design: body.design,
        control,
        treatment: body.treatment,
        treatment_share: share,
        settings: &settings,
        source: ExperimentSource::Api,
    };
    match db::start(&state.pool, &new).await {
        Ok(row) => Ok((StatusCode::CREATED, Json(row.into()))),
        Err(e @ (StartError::Running { .. } | StartError::Interleaving(_))) => {
            Err(AppError::Conflict(e.to_string()))
        }
        Err(StartError::Db(e)) => Err(e.into()),
    }
}

/// The project's experiments, newest first (at most 100).
#[utoipa::path(get, path = "/v1/experiments", tag = "experiments",
    responses((status = 200, body = Vec<ExperimentView>)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<ExperimentView>>, AppError> {
    let rows = db::list(&state.pool, &who.project).await?;
    Ok(Json(rows.into_iter().map(ExperimentView::from).collect()))
}

/// One experiment: per arm requests, users, click-through (overall, in the top k, per user),
/// reciprocal rank of the first positive, fallback rate, latency p50/p99, LLM calls and tokens
/// per rerank; the difference with its always-valid interval and p-value; and the decision.
/// A running experiment is looked at first, so the answer is current.
#[utoipa::path(get, path = "/v1/experiments/{id}", tag = "experiments",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ExperimentView), (status = 404, body = ErrorBody)))]
pub async fn read(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> Result<Json<ExperimentView>, AppError> {
    // What this replica answered is counted: its journal drains into the log first (bounded:
    // a read never waits on a sick database for long). Other replicas drain on their own.
    state.reranker.flush_within(READ_DRAINS_JOURNAL).await;
    looker::look(&state.pool, &who.project, id, looker::READ_WAITS_FOR_FOLD)
        .await?
        .map(|e| Json(e.into()))
        .ok_or_else(|| AppError::NotFound(format!("no experiment {id}")))
}

/// Stop a running experiment by hand: the label goes back to the control.
#[utoipa::path(post, path = "/v1/experiments/{id}/stop", tag = "experiments",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ExperimentView), (status = 404, body = ErrorBody)))]
pub async fn stop(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<Uuid>,
) -> Result<Json<ExperimentView>, AppError> {
    looker::stop(&state.pool, &who.project, id)
        .await?
        .map(|e| Json(e.into()))
        .ok_or_else(|| AppError::NotFound(format!("no experiment {id}")))
}
