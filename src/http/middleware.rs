//! Cross-cutting layers: authentication, Prometheus request metrics, and the request timeout.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::AppError;
use crate::app::AppState;
use crate::auth::{self, Principal};
use crate::store;

/// Resolves the caller of a `/v1` request and checks the scope the route needs.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let principal = match &state.config.master_key {
        None => Principal::development(),
        Some(master) => {
            let token = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(str::trim);
            let Some(token) = token.filter(|t| !t.is_empty()) else {
                return AppError::Unauthorized(
                    "missing `Authorization: Bearer <key>` header".into(),
                )
                .into_response();
            };
            if auth::constant_time_eq(token.as_bytes(), master.expose().as_bytes()) {
                Principal {
                    project: store::DEFAULT_PROJECT.into(),
                    scope: auth::Scope::Admin,
                }
            } else {
                match store::keys::find_live(&state.pool, &auth::hash_key(token)).await {
                    Ok(Some((project, scope))) => match auth::Scope::parse(&scope) {
                        Some(scope) => Principal { project, scope },
                        None => {
                            return AppError::Internal(anyhow::anyhow!("bad stored scope {scope}"))
                                .into_response();
                        }
                    },
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
