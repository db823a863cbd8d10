//! Leader election: a session-level Postgres advisory lock held by one dedicated connection.
//! The lock lives exactly as long as that connection: when the leading process dies (even
//! `kill -9`) the server ends its session and another process's next try takes it.
//! Advisory locks are per database, so deployments on different databases never interfere.

use sqlx::postgres::PgConnection;
use sqlx::{Connection, PgPool};

/// The lock's two keys: "AGP!" and the cluster-wide duty it guards.
const LOCK: (i32, i32) = (0x4147_5021, 1);

/// A connection of its own for the lock (never returned to a pool), named so operators see
/// who leads (`application_name`), with TCP keepalives so the server also notices a leader
/// whose host vanished from the network.
pub async fn connect(pool: &PgPool, name: &str) -> Result<PgConnection, sqlx::Error> {
    let opts = pool.connect_options().as_ref().clone();
    let mut conn = PgConnection::connect_with(&opts).await?;
    sqlx::query_scalar!("SELECT set_config('application_name', $1, false)", name)
        .fetch_one(&mut conn)
        .await?;
    sqlx::query!(
        "SELECT set_config('tcp_keepalives_idle', '10', false) AS idle,
                set_config('tcp_keepalives_interval', '5', false) AS interval,
                set_config('tcp_keepalives_count', '3', false) AS count"
    )
    .fetch_one(&mut conn)
    .await?;
    Ok(conn)
}

/// Tries to take the lock on `conn` (never waits). True: this connection leads until it
/// closes or [`release`] is called.
pub async fn try_lead(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_lock($1, $2) AS "locked!""#,
        LOCK.0,
        LOCK.1
    )
    .fetch_one(conn)
    .await
}

/// True while `conn` holds the lock (false when its session lost it, e.g. the server
/// restarted and this is a new session; an error when the connection is gone).
pub async fn holds(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                            AND pid = pg_backend_pid() AND classid = $1::int4::oid
                            AND objid = $2::int4::oid AND objsubid = 2) AS "held!""#,
        LOCK.0,
        LOCK.1
    )
    .fetch_one(conn)
    .await
}

/// Gives the lock up (a clean stop; closing the connection does the same).
pub async fn release(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query_scalar!("SELECT pg_advisory_unlock($1, $2)", LOCK.0, LOCK.1)
        .fetch_one(conn)
        .await
        .map(|_| ())
}

/// The `application_name` of the session that leads in this database, if any.
pub async fn current(pool: &PgPool) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT a.application_name::text AS "name!" FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
                   SELECT oid FROM pg_database WHERE datname = current_database())
             AND l.classid = $1::int4::oid AND l.objid = $2::int4::oid AND l.objsubid = 2"#,
        LOCK.0,
        LOCK.1
    )
    .fetch_optional(pool)
    .await
}
