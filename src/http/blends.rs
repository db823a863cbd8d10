//! Blends: the weights that fuse the LLM ranking with the incoming order and the built-in
//! rankers. Versions are immutable and numbered; labels are movable pointers or weighted A/B
//! splits (the prompts' registry and rules); `production` answers by default. Evaluation jobs
//! with the `fused` method store the blend they tuned as a new version (and can move a label).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{AppError, ErrorBody};
use super::extract::{Json, Path};
use super::prompts::{CreatedVersion, LabelBody, move_label};
use super::state::AppState;
use crate::agp::rank::RankMode;
use crate::auth::Principal;
use crate::rankers::BlendWeights;
use crate::store::blends::{self as db, BLEND, BlendVersion};
use crate::store::prompts::{LabelRow, NewVersion};
use crate::store::states::VersionSource;

/// Routes of this area.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/blends", get(list))
        .route("/v1/blends/versions", post(create_version))
        .route("/v1/blends/versions/{version}", get(version))
        .route("/v1/blends/labels/{label}", put(set_label))
}

/// Every blend version and label of the project.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BlendList {
    /// Oldest first.
    pub versions: Vec<BlendVersion>,
    pub labels: Vec<LabelRow>,
}

/// The project's blend versions (oldest first) and labels.
#[utoipa::path(get, path = "/v1/blends", tag = "blends", responses((status = 200, body = BlendList)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<BlendList>, AppError> {
    let versions = db::versions(&state.pool, &who.project).await?;
    let labels = crate::store::prompts::list(&state.pool, &who.project)
        .await?
        .into_iter()
        .find(|(n, _, _)| n == BLEND)
        .map(|(_, _, l)| l)
        .unwrap_or_default();
    Ok(Json(BlendList { versions, labels }))
}

/// One blend version.
#[utoipa::path(get, path = "/v1/blends/versions/{version}", tag = "blends",
    params(("version" = i32, Path)),
    responses((status = 200, body = BlendVersion), (status = 404, body = ErrorBody)))]
pub async fn version(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(v): Path<i32>,
) -> Result<Json<BlendVersion>, AppError> {
    db::version(&state.pool, &who.project, v)
        .await?
        .map(Json)
        .ok_or_else(|| AppError::NotFound(format!("blend has no version {v}")))
}

/// Body of `POST /v1/blends/versions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"weights": {"llm": 1, "incoming": 2}, "message": "lean on the caller's order"}))]
pub struct NewBlendBody {
    /// Component weights (0 to 1000, at least one positive; only the ratios matter).
    pub weights: BlendWeights,
    /// How the LLM component ranks (`generate` or `logprobs`; absent: the server's
    /// `--rank-mode`). A request's `rank_mode` overrides it.
    #[serde(default)]
    pub rank_mode: Option<RankMode>,
    /// What changed and why.
    #[serde(default)]
    #[schema(max_length = 2000, pattern = "NO_NUL")]
    pub message: Option<String>,
}

/// Store a new immutable blend version (numbered after the latest). Labels do not move.
#[utoipa::path(post, path = "/v1/blends/versions", tag = "blends", request_body = NewBlendBody,
    responses(
        (status = 201, body = CreatedVersion),
        (status = 422, description = "A weight out of range, or none positive", body = ErrorBody),
    ))]
pub async fn create_version(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(body): Json<NewBlendBody>,
) -> Result<(StatusCode, Json<CreatedVersion>), AppError> {
    body.weights
        .validate("weights")
        .map_err(AppError::Validation)?;
    let message = body.message.unwrap_or_default();
    if message.chars().count() > 2000 {
        return Err(AppError::Validation(
            "message is longer than 2000 characters".into(),
        ));
    }
    let meta = NewVersion {
        message: &message,
        source: VersionSource::Api,
        ..Default::default()
    };
    let spec = db::BlendSpec {
        weights: body.weights,
        rank_mode: body.rank_mode,
    };
    let v = db::create(&state.pool, &who.project, &spec, &meta).await?;
    Ok((StatusCode::CREATED, Json(CreatedVersion { version: v })))
}

/// Move a blend label to a version (promote, roll back) or split its traffic across versions
/// by weight; users are assigned to an arm by a stable hash of their id.
#[utoipa::path(put, path = "/v1/blends/labels/{label}", tag = "blends", request_body = super::prompts::LabelBodyDoc,
    params(("label" = String, Path, example = "production")),
    responses((status = 200, body = LabelRow), (status = 422, body = ErrorBody)))]
pub async fn set_label(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(label): Path<String>,
    Json(body): Json<LabelBody>,
) -> Result<Json<LabelRow>, AppError> {
    Ok(Json(
        move_label(&state, &who.project, BLEND, &label, body).await?,
    ))
}
