//! Service endpoints: health, readiness and metrics. (The OpenAPI document and its docs page
//! are served by `openapi.rs`.)

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::Json;
use super::state::AppState;

/// Routes of this area (no auth: probes and docs must work without a key).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Answer of the probes.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` with the reason in `checks`.
    pub status: String,
    /// Per-dependency status.
    #[schema(value_type = Object)]
    pub checks: serde_json::Map<String, serde_json::Value>,
}

/// How long the embedded Postgres may stay down, despite its supervisor's restarts, before
/// `/healthz` says the process cannot heal itself (503: restart it).
pub const HEAL_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The process is up and can heal itself (an embedded Postgres that died is restarted by the
/// process; only when that keeps failing for 30 s does this answer 503).
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let mut checks = serde_json::Map::new();
    let mut healthy = true;
    if let Some(h) = &state.pg_health {
        let text = match h.down_for() {
            None => "ok".to_string(),
            Some(d) => {
                healthy = d < HEAL_LIMIT;
                format!(
                    "down for {} s; the supervisor is restarting it (restarts so far: {}; last error: {})",
                    d.as_secs(),
                    h.restarts(),
                    h.last_error().unwrap_or_else(|| "none".into())
                )
            }
        };
        checks.insert("embedded_postgres".into(), text.into());
    }
    let status = if healthy {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if healthy { "ok" } else { "unavailable" }.into(),
        checks,
    };
    (status, Json(body))
}

/// Ready to serve: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "service",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let mut checks = serde_json::Map::new();
    let db_ok = match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        crate::store::ping(&state.pool),
    )
    .await
    {
        Ok(Ok(())) => {
            checks.insert("database".into(), "ok".into());
            true
        }
        Ok(Err(e)) => {
            checks.insert("database".into(), format!("error: {e}").into());
            false
        }
        Err(_) => {
            checks.insert("database".into(), "timeout after 2 s".into());
            false
        }
    };
    checks.insert("llm".into(), llm_status(&state).into());
    if db_ok {
        checks.insert("leader".into(), leader_status(&state).await.into());
    }
    let status = if db_ok {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if db_ok { "ok" } else { "unavailable" }.into(),
        checks,
    };
    (status, Json(body))
}

/// What `/readyz` says about cluster-wide work: which process leads (informational; a
/// process that does not lead is just as ready).
async fn leader_status(state: &AppState) -> String {
    let me = match &state.leading {
        Some(flag) if flag.load(std::sync::atomic::Ordering::Relaxed) => {
            return "this process".into();
        }
        Some(_) => "",
        None => "this process never leads (--leader false); ",
    };
    match crate::store::leader::current(&state.pool).await {
        Ok(Some(name)) => format!("{me}another process: {name}"),
        Ok(None) => format!("{me}none at the moment: a process takes over within seconds"),
        Err(e) => format!("{me}unknown: {e}"),
    }
}

/// What `/readyz` says about the LLM. The LLM does not decide readiness: without it,
/// reranks answer with their fallback order.
fn llm_status(state: &AppState) -> String {
    use crate::llm::Role;
    use crate::llm::breaker::Health;
    if let Some(flag) = &state.local_llm_healthy
        && !flag.load(std::sync::atomic::Ordering::Relaxed)
    {
        return "down: the local llama-server is restarting; reranks fall back meanwhile".into();
    }
    let Some(model) = state.llm.model(Role::Rank) else {
        return "not configured: reranks return their fallback order (set AGP_LLM_BASE_URL or use --llm local)".into();
    };
    match state.llm.health(Role::Rank) {
        Some(Health::Down {
            failures,
            last_error,
            for_secs,
            retry_in_ms,
        }) => format!(
            "down: {failures} failed attempts in a row (last: {last_error}) over {for_secs} s; \
             reranks answer their fallback order at once; next probe in {retry_in_ms} ms \
             (rank model {model})"
        ),
        Some(Health::Degraded {
            failures,
            last_error,
        }) => format!(
            "degraded: {failures} failed attempts in a row (last: {last_error}) (rank model {model})"
        ),
        _ => format!("ok (rank model {model})"),
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
