//! The one error type of the HTTP edge and its JSON body:
//! `{"error": {"type": "...", "message": "..."}}` for every 4xx and 5xx.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
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
            AppError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
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
                Some("23505") => AppError::Conflict(format!(
                    "already exists ({})",
                    db.constraint().unwrap_or("unique constraint")
                )),
                Some("23514") | Some("23503") => AppError::Validation(format!(
                    "violates {}",
                    db.constraint().unwrap_or("a constraint")
                )),
                _ => AppError::Internal(e.into()),
            },
            sqlx::Error::PoolTimedOut => AppError::Unavailable(
                "the database is not answering (connection pool timed out)".into(),
            ),
            _ => AppError::Internal(e.into()),
        }
    }
}

impl From<JsonRejection> for AppError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => {
                AppError::Validation(format!("invalid request body: {}", e.body_text()))
            }
            JsonRejection::JsonSyntaxError(e) => {
                AppError::BadRequest(format!("malformed JSON: {}", e.body_text()))
            }
            JsonRejection::MissingJsonContentType(_) => AppError::BadRequest(
                "expected a JSON body with `Content-Type: application/json`".into(),
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge(
                format!("request body is too large: {}", other.body_text()),
            ),
            other => AppError::BadRequest(other.body_text()),
        }
    }
}

impl From<QueryRejection> for AppError {
    fn from(r: QueryRejection) -> Self {
        AppError::BadRequest(format!("invalid query string: {}", r.body_text()))
    }
}

impl From<PathRejection> for AppError {
    fn from(r: PathRejection) -> Self {
        AppError::BadRequest(format!("invalid path: {}", r.body_text()))
    }
}

/// `Json` that answers malformed bodies with the contract's error body.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(AppError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `Query` with the contract's error body.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub struct Query<T>(pub T);

/// `Path` with the contract's error body.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub struct Path<T>(pub T);

/// Fallback for unknown routes: a JSON 404 rather than an empty body.
pub async fn not_found(uri: axum::http::Uri) -> AppError {
    AppError::NotFound(format!("no route for {}", uri.path()))
}
