//! The one error type of the HTTP edge and its JSON body:
//! `{"error": {"type": "...", "message": "..."}}` for every 4xx and 5xx.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::catalog::Invalid;

/// Errors a handler can return; each maps to one status and one stable `type`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Well-formed request that breaks a rule (422).
    #[error("{0}")]
    Validation(String),
    /// Malformed request: bad JSON, wrong types, bad query string (400).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("{0}")]
    Upstream(String),
    #[error("{0}")]
    UpstreamTimeout(String),
    #[error("{0}")]
    Unavailable(String),
    /// Anything unexpected: logged with its cause chain, hidden from the client.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The error body of the contract.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// `type` is machine-readable and stable; `message` names the field and the limit broken.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    #[serde(rename = "type")]
    #[schema(example = "validation_error")]
    pub kind: &'static str,
    #[schema(example = "items[0].title is 1200 characters long; the limit is 1000")]
    pub message: String,
}

impl AppError {
    /// Status code and contract `type`.
    pub fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"),
            AppError::BadRequest(_) => (StatusCode::BAD_REQUEST, "validation_error"),
            AppError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AppError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AppError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            AppError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"), // not a state
            AppError::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream_error"),
            AppError::UpstreamTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            AppError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AppError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_and_type();
        let message = match &self {
            AppError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "internal error; see the server log".to_string()
            }
            other => other.to_string(),
        };
        (
            status,
            axum::Json(ErrorBody {
                error: ErrorDetail { kind, message },
            }),
        )
            .into_response()
    }
}

impl From<Invalid> for AppError {
    fn from(e: Invalid) -> Self {
        AppError::Validation(e.0)
    }
}

impl From<sqlx::Error> for AppError {
    /// Database errors at the edge: unique violation -> 409, check/foreign-key violation -> 422,
    /// no row -> 404, anything else -> 500.
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => AppError::NotFound("not found".into()),
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some(code @ ("23505" | "23514" | "23503")) => {
                    tracing::info!(constraint = ?db.constraint(), code, "write refused by a constraint");
                    on_constraint(code, db.constraint())
                }
                // Connection exceptions, shutdown, "cannot connect now" (restarting).
                Some(c) if c.starts_with("08") || c.starts_with("57P") => {
                    tracing::warn!(error = %e, "database unavailable");
                    AppError::Unavailable("the database is restarting; retry shortly".into())
                }
                _ => AppError::Internal(e.into()),
            },
            sqlx::Error::PoolTimedOut => AppError::Unavailable(
                "the database is not answering (connection pool timed out)".into(),
            ),
            sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                tracing::warn!(error = %e, "database unavailable");
                AppError::Unavailable("the database is not reachable; retry shortly".into())
            }
            _ => AppError::Internal(e.into()),
        }
    }
}

/// What a client is told when a write breaks a constraint: the field and the rule, never
/// the constraint's name (which is logged).
pub fn on_constraint(code: &str, constraint: Option<&str>) -> AppError {
    let conflict = |m: &str| AppError::Conflict(m.to_string());
    let invalid = |m: &str| AppError::Validation(m.to_string());
    match constraint.unwrap_or("") {
        "items_pkey" => conflict("items[].id: an item with this id already exists"),
        "prompt_versions_pkey" | "prompt_versions_version_check" => conflict(
            "version: another version of this prompt was stored at the same moment; send it again",
        ),
        "prompt_labels_project_name_version_fkey" => {
            invalid("version: this prompt has no such version")
        }
        "prompt_labels_check" => invalid("a label points at one version or a split, not both"),
        "interactions_project_item_id_fkey" => {
            invalid("interactions[].item_id: the item is not in the catalog")
        }
        "interactions_project_user_id_fkey" => invalid("interactions[].user_id: unknown user"),
        "feedback_once" => conflict("this outcome (request_id, item_id, kind) is already recorded"),
        "api_keys_scope_check" => invalid("scope: must be read, rerank or admin"),
        "prompts_name_check" => {
            invalid("name: not a prompt (p_sum, p_gen, p_rank, p_fb, p_agg, p_opt)")
        }
        c if c.ends_with("_project_fkey") => invalid("project: no such project"),
        _ if code == "23505" => conflict("the request conflicts with data already stored"),
        _ => invalid("the request breaks a rule of the stored data"),
    }
}

/// Fallback for unknown routes: a JSON 404 rather than an empty body.
pub async fn not_found(uri: axum::http::Uri) -> AppError {
    AppError::NotFound(format!("no route for {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraint_violations_name_the_field_never_the_constraint() {
        let msg = |code, c| {
            let e = on_constraint(code, Some(c));
            let (status, kind) = e.status_and_type();
            (status.as_u16(), kind, e.to_string())
        };
        let (s, k, m) = msg("23505", "prompt_versions_pkey");
        assert_eq!((s, k), (409, "conflict"));
        assert!(m.starts_with("version:") && !m.contains("pkey"), "{m}");
        let (s, _, m) = msg("23503", "interactions_project_item_id_fkey");
        assert!(s == 422 && m.starts_with("interactions[].item_id"), "{m}");
        let (s, _, m) = msg("23503", "api_keys_project_fkey");
        assert!(s == 422 && m.starts_with("project:"), "{m}");
        for (code, status) in [("23505", 409), ("23514", 422), ("23503", 422)] {
            let (s, _, m) = msg(code, "some_secret_internal_name_check");
            assert_eq!(s, status);
            assert!(!m.contains("secret"), "{m}");
        }
    }
}
