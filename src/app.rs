//! `AppState` and `build_app()`: the one router that the binary and the tests run.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::{Router, middleware};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::config::AppConfig;
use crate::http::{self, middleware as mw};
use crate::llm::LlmClient;
use crate::serving::Reranker;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub config: Arc<AppConfig>,
    pub metrics: PrometheusHandle,
    /// The LLM handle (may be unconfigured: reranks then fall back).
    pub llm: LlmClient,
    /// The rerank service (caches, request log).
    pub reranker: Arc<Reranker>,
    /// Health of the managed local llama-server, when `--llm local` runs one.
    pub local_llm_healthy: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Health of the embedded Postgres, when this process supervises one.
    pub pg_health: Option<Arc<crate::store::embedded::PgHealth>>,
}

impl AppState {
    /// State over a migrated pool, with no LLM configured.
    pub fn new(pool: PgPool, config: AppConfig) -> Self {
        AppState::with_llm(pool, config, LlmClient::disabled())
    }

    /// State over a migrated pool and this LLM client.
    pub fn with_llm(pool: PgPool, config: AppConfig, llm: LlmClient) -> Self {
        let reranker = Reranker::new(pool.clone(), llm.clone(), config.rerank.clone());
        AppState {
            pool,
            config: Arc::new(config),
            metrics: crate::telemetry::prometheus(),
            llm,
            reranker,
            local_llm_healthy: None,
            pg_health: None,
        }
    }
}

/// Migrates the database and seeds the default project: what every command and test runs
/// before using a pool.
pub async fn prepare_database(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    crate::store::migrate(pool).await?;
    ensure_project(pool, crate::store::DEFAULT_PROJECT).await?;
    Ok(())
}

/// Creates a project (if new) with the default prompts. Idempotent.
pub async fn ensure_project(pool: &PgPool, project: &str) -> Result<(), sqlx::Error> {
    crate::store::prompts::ensure_project(pool, project, &crate::agp::prompt::seeds()).await
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the whole application: `/v1` API behind auth, service endpoints, and the layers
/// (request id, tracing, control characters in paths, metrics, timeout, body limit) around
/// everything.
pub fn build_app(state: AppState) -> Router {
    let api = Router::new()
        .merge(http::items::router())
        .merge(http::users::router())
        .merge(http::rerank::router())
        .merge(http::prompts::router())
        .merge(http::jobs::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            mw::authenticate,
        ));

    Router::new()
        .merge(api)
        .merge(http::service::router())
        .fallback(http::error::not_found)
        .route_layer(middleware::from_fn(mw::track_metrics))
        .layer(middleware::from_fn_with_state(state.clone(), mw::timeout))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn(mw::reject_control_chars))
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn(mw::sanitize_request_id))
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                    let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id)
                }))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
        )
        .with_state(state)
}

/// Serves `app` on `listener` with the default connection limits until `shutdown`
/// resolves, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    http::server::serve(listener, app, Default::default(), shutdown).await
}
