//! `build_app()`: the one router that the binary and the tests run, and the database set-up
//! every command runs first. (`AppState` lives with the handlers, in `http::state`.)

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::{Router, middleware};
use sqlx::PgPool;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::http::{self, middleware as mw};

pub use crate::http::state::AppState;

/// Migrates the database and seeds the default project: what every command and test runs
/// before using a pool.
pub async fn prepare_database(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    crate::store::migrate(pool).await?;
    ensure_project(pool, crate::store::DEFAULT_PROJECT).await?;
    upgrade_seeds(pool).await?;
    // The request log's partitions around today (the leader keeps them hourly).
    let today = chrono::Utc::now().date_naive();
    crate::store::partitions::ensure(
        pool,
        today - chrono::Duration::days(1),
        today + chrono::Duration::days(crate::store::partitions::DAYS_AHEAD),
    )
    .await?;
    Ok(())
}

/// Moves projects on an untouched earlier default prompt to the current one (a new version
/// with the production label; anything someone changed stays as it is).
async fn upgrade_seeds(pool: &PgPool) -> Result<(), sqlx::Error> {
    use crate::agp::prompt::{LEGACY_P_RANK, PromptName, default_template};
    let moved = crate::store::prompts::upgrade_seed(
        pool,
        PromptName::PRank.as_str(),
        LEGACY_P_RANK,
        default_template(PromptName::PRank),
        "default for prefix caches: instructions and profile first, candidates last, \
         the rank mode's answer format ({{format}}) at the end",
    )
    .await?;
    if !moved.is_empty() {
        tracing::info!(projects = ?moved, "p_rank moved to the prefix-cache layout (version 2)");
    }
    Ok(())
}

/// Creates a project (if new) with the default prompts and blend. Idempotent.
pub async fn ensure_project(pool: &PgPool, project: &str) -> Result<(), sqlx::Error> {
    use crate::store::blends;
    let blend = blends::encode(&blends::BlendSpec {
        weights: crate::rankers::BlendWeights::DEFAULT,
        rank_mode: None,
    });
    let mut seeds = crate::agp::prompt::seeds();
    seeds.push((blends::BLEND, &blend));
    crate::store::prompts::ensure_project(pool, project, &seeds).await
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
        .merge(http::blends::router())
        .merge(http::jobs::router())
        .merge(http::experiments::router())
        .merge(http::autopilot::router())
        .merge(http::budget::router())
        .merge(http::console::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            mw::authenticate,
        ));

    Router::new()
        .merge(api)
        .merge(http::service::router())
        .merge(http::openapi::router())
        .merge(http::console::assets())
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
                    let span = tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id);
                    // A caller's W3C `traceparent`: this request continues its trace.
                    crate::telemetry::otel::continue_trace(&span, req.headers());
                    span
                }))
                .layer(middleware::from_fn(mw::return_traceparent))
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
