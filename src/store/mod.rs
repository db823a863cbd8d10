//! Every SQL statement of the service lives under this folder, one file per table group.
//! `embedded` runs the private Postgres cluster used when no `DATABASE_URL` is given;
//! `journal` keeps answered requests and usage rows on disk until they are in Postgres.

pub mod autopilot;
pub mod blends;
pub mod budget;
pub mod catalog;
pub mod console;
pub mod embedded;
pub mod experiment_stats;
pub mod experiments;
pub mod import;
pub mod jobs;
pub mod journal;
pub mod keys;
pub mod leader;
pub mod llm;
pub mod partitions;
pub mod prompts;
pub mod rerank;
pub mod states;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The migrations compiled into the binary; run at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The default tenant: rows written without an explicit project belong to it.
pub const DEFAULT_PROJECT: &str = "default";

/// Opens a pool on `url`. The per-checkout ping is off: it nearly halves throughput and a
/// broken connection surfaces as an error on the query anyway.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    connect_supervised(url, max_connections, None).await
}

/// `connect`, for a cluster that a supervisor restarts: connections made before its last
/// restart are dropped at checkout instead of failing a query each.
pub async fn connect_supervised(
    url: &str,
    max_connections: u32,
    health: Option<std::sync::Arc<embedded::PgHealth>>,
) -> Result<PgPool, sqlx::Error> {
    let opts: PgConnectOptions = url.parse()?;
    let mut pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false);
    if let Some(health) = health {
        pool = pool.before_acquire(move |_conn, meta| {
            let fresh = !health.is_stale(meta.age);
            Box::pin(async move { Ok(fresh) })
        });
    }
    pool.connect_with(opts).await
}

/// Applies pending migrations (`app::prepare_database` also seeds the default project).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Cheap liveness query for `/readyz`.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query_scalar!("SELECT 1")
        .fetch_one(pool)
        .await
        .map(|_| ())
}

/// Channel on which writers tell every replica which in-process cache entries went stale.
pub const INVALIDATION_CHANNEL: &str = "agp_invalidate";

/// A cache invalidation message (sent with `pg_notify`, delivered at commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// Items of a project changed.
    Items(String),
    /// A user's history changed: (project, user).
    User(String, String),
    /// Prompt labels of a project moved.
    Labels(String),
    /// Anything may have changed (bulk import).
    All,
}

const SEP: char = '\u{1f}';

impl Invalidation {
    /// The NOTIFY payload.
    pub fn payload(&self) -> String {
        match self {
            Invalidation::Items(p) => format!("items{SEP}{p}"),
            Invalidation::User(p, u) => format!("user{SEP}{p}{SEP}{u}"),
            Invalidation::Labels(p) => format!("labels{SEP}{p}"),
            Invalidation::All => "all".into(),
        }
    }

    /// Parses a payload; unknown payloads mean `All` (safe: everything is reloaded).
    pub fn parse(s: &str) -> Invalidation {
        let parts: Vec<&str> = s.split(SEP).collect();
        match parts.as_slice() {
            ["items", p] => Invalidation::Items(p.to_string()),
            ["user", p, u] => Invalidation::User(p.to_string(), u.to_string()),
            ["labels", p] => Invalidation::Labels(p.to_string()),
            _ => Invalidation::All,
        }
    }
}

/// Queues an invalidation inside a transaction (sent only if it commits).
pub async fn notify_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    inv: &Invalidation,
) -> Result<(), sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT pg_notify($1, $2)",
        INVALIDATION_CHANNEL,
        inv.payload()
    )
    .fetch_one(&mut **tx)
    .await
    .map(|_| ())
}
