//! The request extractors of the HTTP edge: `Json`, `Query` and `Path` as axum's, but every
//! rejection answered with the contract's error body ([`AppError`]). `Json` also refuses NUL
//! characters in strings and reads whole floats (`5.0`) where an integer is expected.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::AppError;

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

// The rejections of axum's extractors, as the contract's errors.

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
    fn numbers_are_read_to_the_nearest_double() {
        // The limits of the contract hold to the last digit sent (Cargo.toml: float_roundtrip).
        let axum::Json(w) = axum::Json::<f64>::from_bytes(b"1000.0000000000001").expect("number");
        assert!(w > 1000.0, "{w}");
        assert_eq!(w, 1_000.000_000_000_000_1);
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
