//! `AppState`: what every handler shares (pool, config, LLM client, rerank service, health).

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use super::rate_limit::RateLimiter;
use crate::config::AppConfig;
use crate::llm::LlmClient;
use crate::serving::Reranker;
use crate::serving::refresh::Refresher;

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
    /// Writes profiles ahead of time when interactions arrive (`--refresh-ahead`).
    pub refresher: Option<Arc<Refresher>>,
    /// This replica's share of the keys' rate limits.
    pub rate_limiter: Arc<RateLimiter>,
    /// Health of the managed local llama-server, when `--llm local` runs one.
    pub local_llm_healthy: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Health of the embedded Postgres, when this process supervises one.
    pub pg_health: Option<Arc<crate::store::embedded::PgHealth>>,
    /// Whether this process leads (`cluster`), when it takes part in the election.
    pub leading: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl AppState {
    /// State over a migrated pool, with no LLM configured.
    pub fn new(pool: PgPool, config: AppConfig) -> Self {
        AppState::with_llm(pool, config, LlmClient::disabled())
    }

    /// State over a migrated pool and this LLM client.
    pub fn with_llm(pool: PgPool, config: AppConfig, llm: LlmClient) -> Self {
        let reranker = Reranker::new(pool.clone(), llm.clone(), config.rerank.clone());
        let refresher = config
            .refresh
            .map(|opts| Refresher::spawn(reranker.clone(), opts));
        AppState {
            refresher,
            rate_limiter: Arc::new(RateLimiter::new(pool.clone())),
            pool,
            config: Arc::new(config),
            metrics: crate::telemetry::prometheus(),
            llm,
            reranker,
            local_llm_healthy: None,
            pg_health: None,
            leading: None,
        }
    }
}
