//! `GET /v1/users/{id}/history`.

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{AppError, ErrorBody};
use super::extract::{Json, Path, Query};
use super::state::AppState;
use crate::auth::Principal;
use crate::store::catalog::{self as db, HistoryEntry};

/// Routes of this area.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/users/{id}/history", get(history))
}

/// Largest `limit` accepted by the history endpoint.
pub const MAX_HISTORY_LIMIT: i64 = 1000;

/// Query of the history endpoint.
#[derive(Debug, Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// How many of the most recent interactions to return (1..=1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// A user's history, newest last.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct History {
    pub user_id: String,
    pub history: Vec<HistoryEntry>,
}

/// The user's most recent interactions, oldest first (newest last).
#[utoipa::path(get, path = "/v1/users/{id}/history", tag = "catalog",
    params(("id" = String, Path, description = "User id"), HistoryQuery),
    responses(
        (status = 200, description = "History, newest last", body = History),
        (status = 400, description = "Bad limit", body = ErrorBody),
        (status = 404, description = "Unknown user", body = ErrorBody),
    ))]
pub async fn history(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<History>, AppError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
        return Err(AppError::BadRequest(format!(
            "limit must be between 1 and {MAX_HISTORY_LIMIT}, got {limit}"
        )));
    }
    let history = db::history(&state.pool, &who.project, &id, limit)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("user {id:?} not found")))?;
    Ok(Json(History {
        user_id: id,
        history,
    }))
}
