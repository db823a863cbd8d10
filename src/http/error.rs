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

/// `Json` that answers malformed bodies with the contract's error body, and refuses strings
/// holding NUL characters (Postgres cannot store them) with a 422 naming the field.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, AppError> {
        if !json_content_type(req.headers()) {
            return Err(AppError::BadRequest(
                "expected a JSON body with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    AppError::PayloadTooLarge(format!(
                        "request body is too large: {}",
                        r.body_text()
                    ))
                } else {
                    AppError::BadRequest(r.body_text())
                }
            })?;
        if let Some(field) = nul_field(&bytes) {
            return Err(AppError::Validation(format!(
                "{field} must not contain NUL characters (\\u0000)"
            )));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(Json(v)),
            // JSON Schema counts 5.0 as an integer; serde does not. Try once more with whole
            // floats written as integers (only on failure, so valid bodies are read as sent).
            Err(first) => match whole_floats_as_integers(&bytes) {
                Some(fixed) => match axum::Json::<T>::from_bytes(&fixed) {
                    Ok(axum::Json(v)) => Ok(Json(v)),
                    Err(_) => Err(first.into()),
                },
                None => Err(first.into()),
            },
        }
    }
}

/// The body with every whole-number float (`5590.0`, `1e3`) rewritten as an integer, or
/// `None` when there is none.
fn whole_floats_as_integers(body: &[u8]) -> Option<Vec<u8>> {
    fn fix(v: &mut serde_json::Value) -> bool {
        match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                let whole = f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15;
                if whole {
                    *v = serde_json::Value::from(f as i64);
                }
                whole
            }
            serde_json::Value::Array(a) => a.iter_mut().fold(false, |acc, x| fix(x) | acc),
            serde_json::Value::Object(o) => o.values_mut().fold(false, |acc, x| fix(x) | acc),
            _ => false,
        }
    }
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if !fix(&mut v) {
        return None;
    }
    serde_json::to_vec(&v).ok()
}

fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// The path (`prompt.label`, `items[2].title`) of the first string or key in a JSON body that
/// holds a NUL character; cheap when there is none (one scan for the escape).
pub fn nul_field(body: &[u8]) -> Option<String> {
    if !body.windows(6).any(|w| w == b"\\u0000") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    fn walk(v: &serde_json::Value, path: &str) -> Option<String> {
        match v {
            serde_json::Value::String(s) if s.contains('\0') => Some(path.to_string()),
            serde_json::Value::Array(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, x)| walk(x, &format!("{path}[{i}]"))),
            serde_json::Value::Object(o) => o.iter().find_map(|(k, x)| {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if k.contains('\0') {
                    Some(format!(
                        "a key in {}",
                        if path.is_empty() { "the body" } else { path }
                    ))
                } else {
                    walk(x, &here)
                }
            }),
            _ => None,
        }
    }
    walk(&v, "").map(|p| if p.is_empty() { "the body".into() } else { p })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_found_with_their_path() {
        assert_eq!(nul_field(br#"{"a": "fine"}"#), None);
        assert_eq!(
            nul_field(br#"{"prompt": {"label": "x\u0000"}}"#).as_deref(),
            Some("prompt.label")
        );
        assert_eq!(
            nul_field(br#"{"items": [{"id": "a"}, {"id": "b", "title": "\u0000"}]}"#).as_deref(),
            Some("items[1].title")
        );
        assert_eq!(
            nul_field(br#"{"k\u0000": 1}"#).as_deref(),
            Some("a key in the body")
        );
        // An escaped backslash followed by "u0000" is text, not a NUL.
        assert_eq!(nul_field(br#"{"a": "\\u0000"}"#), None);
    }

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

    #[test]
    fn whole_floats_become_integers_and_others_stay() {
        let fixed = whole_floats_as_integers(br#"{"a": 5590.0, "b": [1e3, 2.5], "c": "7.0"}"#)
            .expect("changed");
        let v: serde_json::Value = serde_json::from_slice(&fixed).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": 5590, "b": [1000, 2.5], "c": "7.0"})
        );
        assert_eq!(whole_floats_as_integers(br#"{"a": 1, "b": 2.5}"#), None);
    }
}
