//! Every SQL statement of the service lives under this folder, one file per table group.
//! `embedded` runs the private Postgres cluster used when no `DATABASE_URL` is given.

pub mod catalog;
pub mod embedded;
pub mod import;
pub mod keys;
pub mod llm;

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
    let opts: PgConnectOptions = url.parse()?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .connect_with(opts)
        .await
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Cheap liveness query for `/readyz`.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}
