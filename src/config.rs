//! Typed settings, read from flags or `AGP_*` environment variables (see `agp serve --help`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

use crate::catalog::Limits;

/// A secret string (API key, database URL with password): never printed by `Debug`/`Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// Where the data lives: an external server (`DATABASE_URL`) or the embedded cluster.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Postgres URL. When unset, a private cluster is started from the system's Postgres
    /// binaries in `--data-dir`.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<Secret>,

    /// Directory for the embedded Postgres cluster and other local state.
    #[arg(long, env = "AGP_DATA_DIR", default_value = "./.agp", global = true)]
    pub data_dir: PathBuf,

    /// Maximum connections in the database pool.
    #[arg(
        long,
        env = "AGP_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub db_max_connections: u32,
}

/// Request size limits (shared by the API and `agp import`).
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Maximum items in one `PUT /v1/items` batch.
    #[arg(long, env = "AGP_MAX_BATCH_ITEMS", default_value_t = 1000)]
    pub max_batch_items: usize,
    /// Maximum interactions in one `POST /v1/interactions` batch.
    #[arg(long, env = "AGP_MAX_BATCH_INTERACTIONS", default_value_t = 10_000)]
    pub max_batch_interactions: usize,
    /// Maximum length of any id (characters).
    #[arg(long, env = "AGP_MAX_ID_LEN", default_value_t = 256)]
    pub max_id_len: usize,
    /// Maximum item title length (characters).
    #[arg(long, env = "AGP_MAX_TITLE_LEN", default_value_t = 1000)]
    pub max_title_len: usize,
    /// Maximum item text length (characters).
    #[arg(long, env = "AGP_MAX_TEXT_LEN", default_value_t = 20_000)]
    pub max_text_len: usize,
    /// Maximum size of an item's attributes object as JSON (bytes).
    #[arg(long, env = "AGP_MAX_ATTRIBUTES_BYTES", default_value_t = 16_384)]
    pub max_attributes_bytes: usize,
}

impl LimitArgs {
    /// The limits as the validation code wants them.
    pub fn limits(&self) -> Limits {
        Limits {
            max_items_per_batch: self.max_batch_items,
            max_interactions_per_batch: self.max_batch_interactions,
            max_id_len: self.max_id_len,
            max_title_len: self.max_title_len,
            max_text_len: self.max_text_len,
            max_attributes_bytes: self.max_attributes_bytes,
            ..Limits::default()
        }
    }
}

/// Settings of the HTTP server.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on. Without a master key only loopback addresses are allowed.
    #[arg(long, env = "AGP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Master API key. When set, every /v1 call needs `Authorization: Bearer <key>`
    /// (this key, or one made with `agp keys create`). When unset: development mode.
    #[arg(long, env = "AGP_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<Secret>,

    /// Whole-request timeout in milliseconds (answers 503 when exceeded).
    #[arg(long, env = "AGP_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,

    /// Maximum request body size in bytes (answers 413 when exceeded).
    #[arg(long, env = "AGP_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,

    #[command(flatten)]
    pub limits: LimitArgs,

    /// Job workers inside the server (0: jobs run only in `agp worker` processes).
    #[arg(long, env = "AGP_WORKERS", default_value_t = 1)]
    pub workers: usize,

    #[command(flatten)]
    pub rerank: RerankArgs,

    #[command(flatten)]
    pub llm: crate::llm::config::LlmArgs,
}

/// Settings of the rerank path.
#[derive(Debug, Clone, Args)]
pub struct RerankArgs {
    /// Most candidates one rerank accepts (longer lists are ranked in sliding windows).
    #[arg(long, env = "AGP_RERANK_MAX_CANDIDATES", default_value_t = 200)]
    pub rerank_max_candidates: usize,
    /// Recent items a profile is written from (L).
    #[arg(long, env = "AGP_HISTORY_LEN", default_value_t = 5)]
    pub history_len: usize,
    /// Candidates per ranking call; longer lists are ranked in windows, bottom up.
    #[arg(long, env = "AGP_RANK_WINDOW", default_value_t = 20)]
    pub rank_window: usize,
    /// Step between windows.
    #[arg(long, env = "AGP_RANK_STEP", default_value_t = 10)]
    pub rank_step: usize,
    /// Rankings in shuffled orders whose points are summed, against position bias (1 = off).
    #[arg(long, env = "AGP_RANK_REPEATS", default_value_t = 1)]
    pub rank_repeats: usize,
    /// Bound on the LLM part of one rerank, in milliseconds (then: fallback `llm_timeout`).
    #[arg(long, env = "AGP_RERANK_DEADLINE_MS", default_value_t = 30_000)]
    pub rerank_deadline_ms: u64,
    /// Write profiles from item summaries (`p_sum`) instead of raw metadata.
    #[arg(long, env = "AGP_SUMMARIES", default_value_t = true, action = clap::ArgAction::Set)]
    pub summaries: bool,
    /// Order returned when the LLM cannot be used.
    #[arg(long, env = "AGP_FALLBACK_RANKER", value_enum, default_value_t = crate::rerank::FallbackRanker::Incoming)]
    pub fallback_ranker: crate::rerank::FallbackRanker,
    /// Entries per in-process cache (items, histories, profiles, summaries).
    #[arg(long, env = "AGP_CACHE_ENTRIES", default_value_t = 100_000)]
    pub cache_entries: usize,
}

impl RerankArgs {
    /// The settings the rerank service takes.
    pub fn settings(&self) -> crate::rerank::RerankSettings {
        crate::rerank::RerankSettings {
            max_candidates: self.rerank_max_candidates.max(1),
            history_len: self.history_len.max(1),
            rank: crate::agp::rank::RankOptions {
                window: self.rank_window.max(2),
                step: self.rank_step.max(1),
                repeats: self.rank_repeats.max(1),
                ..Default::default()
            },
            deadline: Duration::from_millis(self.rerank_deadline_ms.max(1)),
            summaries: self.summaries,
            fallback_ranker: self.fallback_ranker,
            cache_entries: self.cache_entries.max(16),
        }
    }
}

/// The resolved configuration the app runs with (what `AppState` carries).
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub master_key: Option<Secret>,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub limits: Limits,
    pub rerank: crate::rerank::RerankSettings,
}

impl AppConfig {
    /// Configuration from the serve flags.
    pub fn from_args(args: &ServeArgs) -> Self {
        AppConfig {
            master_key: args.master_key.clone().filter(|k| !k.expose().is_empty()),
            request_timeout: Duration::from_millis(args.request_timeout_ms),
            max_body_bytes: args.max_body_bytes,
            limits: args.limits.limits(),
            rerank: args.rerank.settings(),
        }
    }
}

impl Default for AppConfig {
    /// Development defaults (no master key), the same values as the flags' defaults.
    fn default() -> Self {
        AppConfig {
            master_key: None,
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 8 * 1024 * 1024,
            limits: Limits::default(),
            rerank: crate::rerank::RerankSettings::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "Secret([redacted]) [redacted]");
        assert_eq!(s.expose(), "hunter2");
    }
}
