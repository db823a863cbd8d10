//! The prompt registry: versions are immutable and numbered per name; labels are movable
//! pointers (promote and roll back by moving them) or weighted A/B splits.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{AppError, ErrorBody};
use super::extract::{Json, Path};
use super::state::AppState;
use crate::agp::prompt::{self, PromptName};
use crate::auth::Principal;
use crate::store::Invalidation;
use crate::store::prompts::{self as db, LabelRow, NewVersion, SplitArm, VersionRow};
use crate::store::states::VersionSource;

/// Routes of this area.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/prompts", get(list))
        .route(
            "/v1/prompts/{name}/versions",
            get(versions).post(create_version),
        )
        .route("/v1/prompts/{name}/versions/{version}", get(version))
        .route("/v1/prompts/{name}/labels/{label}", put(set_label))
}

fn name(s: &str) -> Result<PromptName, AppError> {
    PromptName::parse(s).ok_or_else(|| {
        AppError::NotFound(format!(
            "no prompt named {s:?} (names: p_sum, p_gen, p_rank, p_fb, p_agg, p_opt)"
        ))
    })
}

/// One prompt in the list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PromptSummary {
    pub name: String,
    pub latest_version: i32,
    pub labels: Vec<LabelRow>,
    /// Placeholders a template of this prompt must contain.
    pub required_placeholders: Vec<String>,
    /// Placeholders it may contain besides.
    pub optional_placeholders: Vec<String>,
}

/// The six prompts with their latest version and labels.
#[utoipa::path(get, path = "/v1/prompts", tag = "prompts", responses((status = 200, body = [PromptSummary])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<PromptSummary>>, AppError> {
    let rows = db::list(&state.pool, &who.project).await?;
    Ok(Json(
        rows.into_iter()
            // the registry also holds the blend (`/v1/blends`)
            .filter(|(n, _, _)| PromptName::parse(n).is_some())
            .map(|(n, latest, labels)| {
                let p = PromptName::parse(&n);
                PromptSummary {
                    required_placeholders: p
                        .map(|p| p.required().iter().map(|s| s.to_string()).collect())
                        .unwrap_or_default(),
                    optional_placeholders: p
                        .map(|p| p.optional().iter().map(|s| s.to_string()).collect())
                        .unwrap_or_default(),
                    name: n,
                    latest_version: latest,
                    labels,
                }
            })
            .collect(),
    ))
}

/// Every version of a prompt, oldest first.
#[utoipa::path(get, path = "/v1/prompts/{name}/versions", tag = "prompts",
    params(("name" = String, Path, description = "p_sum, p_gen, p_rank, p_fb, p_agg or p_opt")),
    responses((status = 200, body = [VersionRow]), (status = 404, body = ErrorBody)))]
pub async fn versions(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(n): Path<String>,
) -> Result<Json<Vec<VersionRow>>, AppError> {
    let n = name(&n)?;
    Ok(Json(
        db::versions(&state.pool, &who.project, n.as_str()).await?,
    ))
}

/// One version.
#[utoipa::path(get, path = "/v1/prompts/{name}/versions/{version}", tag = "prompts",
    params(("name" = String, Path), ("version" = i32, Path)),
    responses((status = 200, body = VersionRow), (status = 404, body = ErrorBody)))]
pub async fn version(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((n, v)): Path<(String, i32)>,
) -> Result<Json<VersionRow>, AppError> {
    let n = name(&n)?;
    db::version(&state.pool, &who.project, n.as_str(), v)
        .await?
        .map(Json)
        .ok_or_else(|| AppError::NotFound(format!("{n} has no version {v}")))
}

/// Body of `POST /v1/prompts/{name}/versions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"template": "Recent items, oldest first:\n{{history}}\nDescribe this user's tastes in 60 words.", "message": "shorter profile"}))]
pub struct NewVersionBody {
    /// The template, with `{{placeholder}}`s (a `p_gen` must contain `{{history}}`; each
    /// prompt's required and optional placeholders are listed by `GET /v1/prompts`).
    #[schema(min_length = 1, max_length = 20000, pattern = "TEXT")]
    pub template: String,
    /// What changed and why.
    #[serde(default)]
    #[schema(max_length = 2000, pattern = "NO_NUL")]
    pub message: Option<String>,
}

/// Answer of version creation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedVersion {
    pub version: i32,
}

/// Store a new immutable version (numbered after the latest). Labels do not move.
#[utoipa::path(post, path = "/v1/prompts/{name}/versions", tag = "prompts", request_body = NewVersionBody,
    params(("name" = String, Path)),
    responses(
        (status = 201, body = CreatedVersion),
        (status = 404, body = ErrorBody),
        (status = 422, description = "Missing required or unknown placeholder, empty or too long", body = ErrorBody),
    ))]
pub async fn create_version(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(n): Path<String>,
    Json(body): Json<NewVersionBody>,
) -> Result<(StatusCode, Json<CreatedVersion>), AppError> {
    let n = name(&n)?;
    prompt::validate(n, &body.template)
        .map_err(|m| AppError::Validation(format!("template: {m}")))?;
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
    let v =
        db::create_version(&state.pool, &who.project, n.as_str(), &body.template, &meta).await?;
    Ok((StatusCode::CREATED, Json(CreatedVersion { version: v })))
}

/// Body of `PUT /v1/prompts/{name}/labels/{label}`: a version, or a split.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelBody {
    #[serde(default)]
    pub version: Option<i32>,
    #[serde(default)]
    pub split: Option<Vec<SplitArm>>,
}

/// How `LabelBody` is documented: exactly one of a version or a split.
#[derive(ToSchema)]
#[schema(as = LabelBody, example = json!({"split": [{"version": 1, "weight": 0.9}, {"version": 2, "weight": 0.1}]}))]
#[allow(dead_code)]
pub(super) enum LabelBodyDoc {
    /// Point the label at one version (promote, roll back).
    #[schema(title = "version")]
    Version {
        #[schema(minimum = 1, maximum = 2147483647)]
        version: i32,
    },
    /// Split the label's traffic across versions by weight (distinct versions).
    #[schema(title = "split")]
    Split {
        #[schema(min_items = 1, max_items = 10)]
        split: Vec<SplitArm>,
    },
}

/// Move a label to a version (promote, roll back) or split its traffic across versions by
/// weight; users are assigned to an arm by a stable hash of their id.
#[utoipa::path(put, path = "/v1/prompts/{name}/labels/{label}", tag = "prompts", request_body = LabelBodyDoc,
    params(("name" = String, Path), ("label" = String, Path)),
    responses((status = 200, body = LabelRow), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn set_label(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((n, label)): Path<(String, String)>,
    Json(body): Json<LabelBody>,
) -> Result<Json<LabelRow>, AppError> {
    let n = name(&n)?;
    Ok(Json(
        move_label(&state, &who.project, n.as_str(), &label, body).await?,
    ))
}

/// Points a registry label (a prompt's or the blend's) at a version or a split, after
/// checking the label, the arms and that every version exists.
pub(super) async fn move_label(
    state: &AppState,
    project: &str,
    name: &str,
    label: &str,
    body: LabelBody,
) -> Result<LabelRow, AppError> {
    prompt::check_label("label", label).map_err(AppError::Validation)?;
    let wanted: Vec<i32> = match (&body.version, &body.split) {
        (Some(v), None) => vec![*v],
        (None, Some(arms)) => {
            if arms.is_empty() || arms.len() > 10 {
                return Err(AppError::Validation("split must have 1 to 10 arms".into()));
            }
            for (i, a) in arms.iter().enumerate() {
                if !(a.weight.is_finite() && a.weight > 0.0) {
                    return Err(AppError::Validation(format!(
                        "split[{i}].weight must be a positive number"
                    )));
                }
                if arms[..i].iter().any(|b| b.version == a.version) {
                    return Err(AppError::Validation(format!(
                        "split[{i}].version {} appears twice",
                        a.version
                    )));
                }
            }
            arms.iter().map(|a| a.version).collect()
        }
        _ => {
            return Err(AppError::Validation(
                "give exactly one of version or split".into(),
            ));
        }
    };
    let existing = db::existing_versions(&state.pool, project, name, &wanted).await?;
    if let Some(missing) = wanted.iter().find(|v| !existing.contains(v)) {
        return Err(AppError::Validation(format!(
            "{name} has no version {missing}"
        )));
    }
    let row = db::set_label(
        &state.pool,
        project,
        name,
        label,
        body.version,
        body.split.as_deref(),
    )
    .await?;
    state
        .reranker
        .caches
        .invalidate(&Invalidation::Labels(project.to_string()));
    Ok(row)
}
