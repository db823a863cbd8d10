//! Cross-cutting layers: authentication, Prometheus request metrics, and the request timeout.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::AppError;
use super::rate_limit::{Bucket, Limit, retry_after_secs};
use super::state::AppState;
use crate::auth::{self, Principal};
use crate::store;

/// Resolves the caller of a `/v1` request and checks the scope the route needs.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let principal = match &state.config.master_key {
        None => Principal::development(),
        Some(master) => {
            let token = match auth::bearer_token(req.headers()) {
                Ok(t) => t,
                Err(auth::AuthHeaderError::Repeated) => {
                    return AppError::BadRequest(
                        "more than one `Authorization` header: send exactly one".into(),
                    )
                    .into_response();
                }
                Err(auth::AuthHeaderError::Missing) => {
                    return AppError::Unauthorized(
                        "missing `Authorization: Bearer <key>` header".into(),
                    )
                    .into_response();
                }
            };
            if auth::constant_time_eq(token.as_bytes(), master.expose().as_bytes()) {
                Principal {
                    project: store::DEFAULT_PROJECT.into(),
                    scope: auth::Scope::Admin,
                }
            } else {
                match store::keys::find_live(&state.pool, &auth::hash_key(token)).await {
                    Ok(Some(key)) => {
                        if let Err(refused) = rate_limited(&state, &key).await {
                            return refused;
                        }
                        match auth::Scope::parse(&key.scope) {
                            Some(scope) => Principal {
                                project: key.project,
                                scope,
                            },
                            None => {
                                return AppError::Internal(anyhow::anyhow!(
                                    "bad stored scope {}",
                                    key.scope
                                ))
                                .into_response();
                            }
                        }
                    }
                    Ok(None) => {
                        return AppError::Unauthorized("unknown or revoked API key".into())
                            .into_response();
                    }
                    Err(e) => return AppError::from(e).into_response(),
                }
            }
        }
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let needed = auth::required_scope(req.method(), &route);
    if principal.scope < needed {
        return AppError::Forbidden(format!(
            "this key has scope `{}`; {} {} needs `{}`",
            principal.scope.as_str(),
            req.method(),
            route,
            needed.as_str()
        ))
        .into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// Applies the key's rate limit, then its project's: `Err` is the 429 (with `Retry-After` and
/// the error body). An unlimited key or project costs nothing here.
async fn rate_limited(state: &AppState, key: &store::keys::LiveKey) -> Result<(), Response> {
    if let Some(rate) = key.rate_per_second {
        admit(state, Bucket::Key(key.id), rate, key.burst).await?;
    }
    if let Some(rate) = key.project_rate_per_second {
        admit(
            state,
            Bucket::Project(key.project.clone()),
            rate,
            key.project_burst,
        )
        .await?;
    }
    Ok(())
}

/// One request against one limited bucket.
async fn admit(
    state: &AppState,
    bucket: Bucket,
    per_second: f64,
    burst: Option<i32>,
) -> Result<(), Response> {
    let limit = Limit {
        per_second,
        burst: f64::from(burst.unwrap_or(1)).max(1.0),
    };
    match state.rate_limiter.admit(&bucket, limit).await {
        Ok(()) => Ok(()),
        Err(wait) => Err(too_many(&bucket, limit, wait)),
    }
}

/// The 429 of a limit: the contract's error body and `Retry-After`.
fn too_many(bucket: &Bucket, limit: Limit, wait: std::time::Duration) -> Response {
    let (kind, whose) = match bucket {
        Bucket::Key(_) => ("key", "this key is"),
        Bucket::Project(_) => ("project", "this key's project (all its keys together) is"),
    };
    metrics::counter!("agp_rate_limited_total", "limit" => kind).increment(1);
    let secs = retry_after_secs(wait);
    let mut resp = AppError::RateLimited(format!(
        "{whose} limited to {} requests per second (burst {}); retry after {secs} s",
        limit.per_second, limit.burst
    ))
    .into_response();
    resp.headers_mut()
        .insert(axum::http::header::RETRY_AFTER, secs.into());
    resp
}

/// Returns the request span's W3C `traceparent` (when traces are exported), so a caller can
/// find this request's trace.
pub async fn return_traceparent(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    if let Some(tp) = crate::telemetry::otel::traceparent(&tracing::Span::current())
        && let Ok(v) = axum::http::HeaderValue::from_str(&tp)
    {
        response.headers_mut().insert("traceparent", v);
    }
    response
}

/// Counts requests and records their latency by method, route template and status.
pub async fn track_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("agp_http_requests_total", &labels).increment(1);
    metrics::histogram!("agp_http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}

/// Bounds the whole request; answers 503 with the contract's error body when exceeded.
pub async fn timeout(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.config.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => AppError::Unavailable(format!(
            "the request took longer than the server's limit of {} ms (AGP_REQUEST_TIMEOUT_MS)",
            limit.as_millis()
        ))
        .into_response(),
    }
}

/// Refuses request paths and query strings holding control characters once percent-decoded
/// (`%00` and friends) with a 400: path segments are ids that reach SQL, and Postgres
/// cannot store NUL.
pub async fn reject_control_chars(req: Request, next: Next) -> Response {
    let uri = req.uri();
    let found = control_char_in(uri.path())
        .map(|c| ("path", c))
        .or_else(|| {
            uri.query()
                .and_then(control_char_in)
                .map(|c| ("query string", c))
        });
    if let Some((what, c)) = found {
        return AppError::BadRequest(format!(
            "the request {what} must not contain control characters (found U+{:04X})",
            c as u32
        ))
        .into_response();
    }
    next.run(req).await
}

/// The first control character of a percent-encoded string, decoded.
fn control_char_in(s: &str) -> Option<char> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out)
        .chars()
        .find(|c| c.is_control())
}

/// Longest client-supplied `x-request-id` kept; longer or odd ones are replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Drops a client's `x-request-id` that is too long or holds anything but visible ASCII
/// (a fresh one is generated instead): it is echoed and written to every log line.
pub async fn sanitize_request_id(mut req: Request, next: Next) -> Response {
    let bad = req.headers().get("x-request-id").is_some_and(|v| {
        let b = v.as_bytes();
        b.is_empty() || b.len() > MAX_REQUEST_ID_LEN || !b.iter().all(|c| c.is_ascii_graphic())
    });
    if bad {
        req.headers_mut().remove("x-request-id");
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_control_characters_are_found() {
        assert_eq!(control_char_in("/v1/items/a%00b"), Some('\0'));
        assert_eq!(control_char_in("/v1/items/a%0Ab"), Some('\n'));
        assert_eq!(control_char_in("/v1/items/caf%C3%A9"), None);
        assert_eq!(control_char_in("/v1/items/100%"), None);
        assert_eq!(control_char_in("/v1/items/%zz"), None);
    }
}
