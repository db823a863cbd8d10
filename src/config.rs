//! Typed settings, read from flags or `AGP_*` environment variables (see `agp serve --help`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::catalog::Limits;

pub use crate::secret::Secret;

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

    /// Most bytes the local journal keeps while Postgres is away (answered requests and LLM
    /// usage rows waiting to be written); beyond it new rows are dropped and counted.
    #[arg(
        long,
        env = "AGP_JOURNAL_MAX_BYTES",
        default_value_t = 1 << 30,
        global = true
    )]
    pub journal_max_bytes: u64,

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
    /// Address to listen on, `HOST:PORT` (a name such as `localhost` is resolved). Without a
    /// master key only loopback addresses are allowed.
    #[arg(long, env = "AGP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Master API key. When set, every /v1 call needs `Authorization: Bearer <key>`
    /// (this key, or one made with `agp keys create`). When unset: development mode.
    #[arg(long, env = "AGP_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<Secret>,

    /// Whole-request timeout in milliseconds (answers 503 when exceeded). Default: 30 000, or
    /// the rerank deadline + 5 000 when that is longer. Must exceed the rerank deadline by at
    /// least 1 000, so that a slow LLM is answered with the fallback order, never a 503.
    #[arg(long, env = "AGP_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,

    /// Time a client has to send a request's headers, from connecting or from the first byte
    /// of a later request on the same connection, in milliseconds; then it is closed.
    #[arg(long, env = "AGP_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// How long an idle keep-alive connection is kept between requests, in milliseconds.
    #[arg(long, env = "AGP_KEEP_ALIVE_TIMEOUT_MS", default_value_t = 75_000)]
    pub keep_alive_timeout_ms: u64,

    /// Most client connections open at once (also capped by the process's file limit). At the
    /// limit the longest-idle connection is closed to make room; one with a request in
    /// progress never is.
    #[arg(long, env = "AGP_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Largest request head (request line and headers) in bytes; larger ones get 431.
    #[arg(long, env = "AGP_MAX_HEADER_BYTES", default_value_t = 65_536)]
    pub max_header_bytes: usize,

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

    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Cluster-wide work (`cluster`): one process of a deployment at a time leads.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Take part in leader election. The leader looks at running experiments, ticks the
    /// autopilots and keeps the request log's partitions; when it dies another process takes
    /// over within seconds. `false`: this process only serves (or works jobs).
    #[arg(long, env = "AGP_LEADER", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader: bool,

    /// Days of request log and feedback kept (today included); the leader drops older days'
    /// partitions. Experiments keep their figures past it.
    #[arg(long, env = "AGP_LOG_RETENTION_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub log_retention_days: u32,
}

impl ClusterArgs {
    /// The leader's settings.
    pub fn options(&self) -> crate::cluster::LeaderOptions {
        crate::cluster::LeaderOptions {
            retention_days: self.log_retention_days,
            ..Default::default()
        }
    }
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
    /// How the LLM ranks unless the request or the blend says: `generate` (the model writes
    /// the whole order) or `logprobs` (one output token per window of at most 20, ordered by
    /// the log-probabilities of the candidates' letters).
    #[arg(long, env = "AGP_RANK_MODE", value_enum, default_value_t = crate::agp::rank::RankMode::Generate)]
    pub rank_mode: crate::agp::rank::RankMode,
    /// Token budget of one candidate's text in a ranking prompt (the title comes first; the
    /// rest is cut at a word boundary; tokens estimated as one per four characters).
    #[arg(long, env = "AGP_RANK_ITEM_TOKENS", default_value_t = crate::agp::rank::DEFAULT_ITEM_TOKENS)]
    pub rank_item_tokens: usize,
    /// Bound on the LLM part of one rerank, in milliseconds (then: fallback `llm_timeout`).
    /// Default 5 000; 60 000 with `--llm local` (a CPU model writes a few tokens a second).
    /// Profiles and summaries still being written at the deadline are finished in the
    /// background, so the user's next rerank has them.
    #[arg(long, env = "AGP_RERANK_DEADLINE_MS")]
    pub rerank_deadline_ms: Option<u64>,
    /// Write profiles from item summaries (`p_sum`) instead of raw metadata.
    #[arg(long, env = "AGP_SUMMARIES", default_value_t = true, action = clap::ArgAction::Set)]
    pub summaries: bool,
    /// Order returned when the LLM cannot be used.
    #[arg(long, env = "AGP_FALLBACK_RANKER", value_enum, default_value_t = crate::serving::FallbackRanker::Incoming)]
    pub fallback_ranker: crate::serving::FallbackRanker,
    /// Entries per in-process cache (items, histories, profiles, summaries).
    #[arg(long, env = "AGP_CACHE_ENTRIES", default_value_t = 100_000)]
    pub cache_entries: usize,
    /// Write a user's new profile in the background when their interactions arrive
    /// (`POST /v1/interactions`), so their next rerank makes one LLM call. Background LLM
    /// work: charged to the background budget. Off by default (it spends on users who may
    /// not come back).
    #[arg(long, env = "AGP_REFRESH_AHEAD", default_value_t = false, action = clap::ArgAction::Set)]
    pub refresh_ahead: bool,
    /// Profile refreshes started per second at most (with `--refresh-ahead`).
    #[arg(long, env = "AGP_REFRESH_PER_SECOND", default_value_t = 5.0)]
    pub refresh_per_second: f64,
}

impl RerankArgs {
    /// The refresh-ahead pacing, when it is on.
    pub fn refresh_options(
        &self,
    ) -> Result<Option<crate::serving::refresh::RefreshOptions>, String> {
        match self.refresh_ahead {
            true => self.refresh_pacing().map(Some),
            false => Ok(None),
        }
    }

    /// The refresh pacing (`--refresh-per-second`), checked.
    pub fn refresh_pacing(&self) -> Result<crate::serving::refresh::RefreshOptions, String> {
        if !(self.refresh_per_second > 0.0 && self.refresh_per_second <= 1000.0) {
            return Err(format!(
                "AGP_REFRESH_PER_SECOND must be above 0 and at most 1000, got {}",
                self.refresh_per_second
            ));
        }
        Ok(crate::serving::refresh::RefreshOptions {
            per_second: self.refresh_per_second,
            ..Default::default()
        })
    }
}

/// The rerank deadline when none is configured.
pub fn default_deadline_ms(local_llm: bool) -> u64 {
    if local_llm {
        60_000
    } else {
        crate::serving::DEFAULT_DEADLINE.as_millis() as u64
    }
}

/// Least time the request timeout must leave after the rerank deadline (fallback order,
/// the log write and the response).
pub const DEADLINE_MARGIN_MS: u64 = 1_000;

/// The request timeout and the rerank deadline, from what was configured: the deadline must
/// fire first, so a hung LLM is answered with the fallback order (or 504 when strict),
/// never with the request timeout's 503.
pub fn resolve_timeouts(
    request_timeout_ms: Option<u64>,
    deadline_ms: Option<u64>,
    local_llm: bool,
) -> Result<(Duration, Duration), String> {
    let deadline = deadline_ms
        .unwrap_or_else(|| default_deadline_ms(local_llm))
        .max(1);
    let request = request_timeout_ms.unwrap_or_else(|| 30_000u64.max(deadline + 5_000));
    if request < deadline.saturating_add(DEADLINE_MARGIN_MS) {
        return Err(format!(
            "AGP_REQUEST_TIMEOUT_MS ({request}) must exceed AGP_RERANK_DEADLINE_MS ({deadline}) by at \
             least {DEADLINE_MARGIN_MS} ms, or a slow LLM would be answered with 503 instead of the \
             fallback order; raise the request timeout or lower the deadline"
        ));
    }
    Ok((
        Duration::from_millis(request),
        Duration::from_millis(deadline),
    ))
}

impl RerankArgs {
    /// The settings the rerank service takes, with this deadline.
    pub fn settings_with(&self, deadline: Duration) -> crate::serving::RerankSettings {
        crate::serving::RerankSettings {
            deadline,
            ..self.settings(false)
        }
    }

    /// The settings the rerank service takes (default deadline for a local or remote LLM).
    pub fn settings(&self, local_llm: bool) -> crate::serving::RerankSettings {
        crate::serving::RerankSettings {
            max_candidates: self.rerank_max_candidates.max(1),
            history_len: self.history_len.max(1),
            rank: crate::agp::rank::RankOptions {
                window: self.rank_window.max(2),
                step: self.rank_step.max(1),
                repeats: self.rank_repeats.max(1),
                mode: self.rank_mode,
                max_item_tokens: self.rank_item_tokens.max(1),
                ..Default::default()
            },
            deadline: Duration::from_millis(
                self.rerank_deadline_ms
                    .unwrap_or_else(|| default_deadline_ms(local_llm))
                    .max(1),
            ),
            summaries: self.summaries,
            fallback_ranker: self.fallback_ranker,
            cache_entries: self.cache_entries.max(16),
        }
    }
}

/// Connection limits of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            max_connections: 4096,
            max_header_bytes: 64 * 1024,
        }
    }
}

/// The resolved configuration the app runs with (what `AppState` carries).
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub master_key: Option<Secret>,
    pub request_timeout: Duration,
    /// Connection limits of the HTTP server.
    pub server: ServerLimits,
    pub max_body_bytes: usize,
    pub limits: Limits,
    pub rerank: crate::serving::RerankSettings,
    /// Refresh profiles ahead of time when interactions arrive (off: `None`).
    pub refresh: Option<crate::serving::refresh::RefreshOptions>,
}

/// Shortest master key accepted: it is the admin password of the whole service.
pub const MIN_MASTER_KEY_LEN: usize = 16;

impl AppConfig {
    /// Configuration from the serve flags; refuses settings that cannot work together.
    pub fn from_args(args: &ServeArgs, local_llm: bool) -> Result<Self, String> {
        let master_key = args.master_key.clone().filter(|k| !k.expose().is_empty());
        if let Some(k) = &master_key
            && k.expose().chars().count() < MIN_MASTER_KEY_LEN
        {
            return Err(format!(
                "AGP_MASTER_KEY is {} characters long; use at least {MIN_MASTER_KEY_LEN} \
                 (for example `openssl rand -hex 24`)",
                k.expose().chars().count()
            ));
        }
        let (request_timeout, deadline) = resolve_timeouts(
            args.request_timeout_ms,
            args.rerank.rerank_deadline_ms,
            local_llm,
        )?;
        if args.max_connections == 0 {
            return Err("AGP_MAX_CONNECTIONS must be at least 1".into());
        }
        Ok(AppConfig {
            master_key,
            request_timeout,
            server: ServerLimits {
                header_read_timeout: Duration::from_millis(args.header_read_timeout_ms.max(1)),
                keep_alive_timeout: Duration::from_millis(args.keep_alive_timeout_ms.max(1)),
                max_connections: args.max_connections,
                max_header_bytes: args.max_header_bytes.max(8192),
            },
            max_body_bytes: args.max_body_bytes,
            limits: args.limits.limits(),
            rerank: args.rerank.settings_with(deadline),
            refresh: args.rerank.refresh_options()?,
        })
    }
}

impl Default for AppConfig {
    /// Development defaults (no master key), the same values as the flags' defaults.
    fn default() -> Self {
        AppConfig {
            master_key: None,
            request_timeout: Duration::from_secs(30),
            server: Default::default(),
            max_body_bytes: 8 * 1024 * 1024,
            limits: Limits::default(),
            rerank: crate::serving::RerankSettings::default(),
            refresh: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rerank_deadline_always_fires_before_the_request_timeout() {
        let ms = |d: Duration| d.as_millis() as u64;
        let (req, dl) = resolve_timeouts(None, None, false).unwrap();
        assert_eq!((ms(req), ms(dl)), (30_000, 5_000));
        let (req, dl) = resolve_timeouts(None, None, true).unwrap();
        assert_eq!(
            (ms(req), ms(dl)),
            (65_000, 60_000),
            "local model: longer, derived"
        );
        let (req, _) = resolve_timeouts(None, Some(40_000), false).unwrap();
        assert_eq!(
            ms(req),
            45_000,
            "the request timeout follows a long deadline"
        );
        let (req, dl) = resolve_timeouts(Some(3_000), Some(2_000), false).unwrap();
        assert_eq!((ms(req), ms(dl)), (3_000, 2_000));
        let err = resolve_timeouts(Some(30_000), Some(30_000), false).unwrap_err();
        assert!(err.contains("AGP_REQUEST_TIMEOUT_MS (30000)"), "{err}");
        assert!(
            resolve_timeouts(Some(2_000), None, false).is_err(),
            "below the default deadline"
        );
        for req in [None, Some(1_000), Some(20_000), Some(100_000)] {
            for dl in [None, Some(1), Some(500), Some(19_000), Some(90_000)] {
                if let Ok((r, d)) = resolve_timeouts(req, dl, false) {
                    assert!(ms(r) >= ms(d) + DEADLINE_MARGIN_MS, "{req:?} {dl:?}");
                }
            }
        }
    }
}
