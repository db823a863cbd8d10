//! API keys: created by the CLI, checked by the auth middleware. Only hashes are stored.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// A stored key, without its secret.
#[derive(Debug, Clone, Serialize)]
pub struct KeyRow {
    pub id: Uuid,
    pub project: String,
    pub name: String,
    pub scope: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Stores a new key (the project must exist: `app::ensure_project`), with its rate limit
/// (`None`: unlimited).
#[allow(clippy::too_many_arguments)]
pub async fn insert(
    pool: &PgPool,
    project: &str,
    name: &str,
    scope: &str,
    prefix: &str,
    hash: &[u8],
    rate_per_second: Option<f64>,
    burst: Option<i32>,
) -> Result<Uuid, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let id = Uuid::new_v4();
    sqlx::query!(
        "INSERT INTO api_keys (id, project, name, scope, prefix, key_hash, rate_per_second, burst)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        id,
        project,
        name,
        scope,
        prefix,
        hash,
        rate_per_second,
        burst,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// A live key as the auth middleware reads it.
#[derive(Debug, Clone)]
pub struct LiveKey {
    pub id: Uuid,
    pub project: String,
    pub scope: String,
    /// Requests per second allowed (`None`: unlimited), with this burst.
    pub rate_per_second: Option<f64>,
    pub burst: Option<i32>,
    /// The limit of the key's project, all its keys together (`None`: unlimited).
    pub project_rate_per_second: Option<f64>,
    pub project_burst: Option<i32>,
}

/// The live (not revoked) key with this hash, with its project's limit.
pub async fn find_live(pool: &PgPool, hash: &[u8]) -> Result<Option<LiveKey>, sqlx::Error> {
    sqlx::query_as!(
        LiveKey,
        r#"SELECT k.id, k.project, k.scope, k.rate_per_second, k.burst,
                  p.rate_per_second AS "project_rate_per_second?", p.burst AS "project_burst?"
           FROM api_keys k JOIN projects p ON p.id = k.project
           WHERE k.key_hash = $1 AND k.revoked_at IS NULL"#,
        hash
    )
    .fetch_optional(pool)
    .await
}

/// Sets a key's rate limit (`None`: unlimited); returns whether the key exists.
pub async fn set_rate(
    pool: &PgPool,
    id_or_prefix: &str,
    rate_per_second: Option<f64>,
    burst: Option<i32>,
) -> Result<u64, sqlx::Error> {
    let id = Uuid::parse_str(id_or_prefix).ok();
    let res = sqlx::query!(
        "UPDATE api_keys SET rate_per_second = $3, burst = $4
         WHERE (id = $1 OR prefix = $2) AND revoked_at IS NULL",
        id,
        id_or_prefix,
        rate_per_second,
        burst,
    )
    .execute(pool)
    .await?;
    Ok(res.rows_affected())
}

/// Sets a project's rate limit, all its keys together (`None`: unlimited); returns whether
/// the project exists.
pub async fn set_project_rate(
    pool: &PgPool,
    project: &str,
    rate_per_second: Option<f64>,
    burst: Option<i32>,
) -> Result<u64, sqlx::Error> {
    let res = sqlx::query!(
        "UPDATE projects SET rate_per_second = $2, burst = $3 WHERE id = $1",
        project,
        rate_per_second,
        burst,
    )
    .execute(pool)
    .await?;
    Ok(res.rows_affected())
}

/// Forgets buckets untouched for a day (of deleted keys or lifted limits); a bucket that comes
/// back starts full, as it would have refilled by then anyway.
pub async fn prune_buckets(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let res = sqlx::query!(
        "DELETE FROM rate_buckets WHERE updated_at < clock_timestamp() - interval '1 day'"
    )
    .execute(pool)
    .await?;
    Ok(res.rows_affected())
}

/// Takes `want` tokens from a shared bucket (`key:<id>` or `project:<id>`; refilled at `rate`
/// per second up to `burst`; a new bucket starts full), or none when it holds fewer. Returns the tokens
/// granted and, when none were, the seconds until `want` will have accrued.
pub async fn take_tokens(
    pool: &PgPool,
    bucket: &str,
    rate: f64,
    burst: f64,
    want: f64,
) -> Result<(f64, f64), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO rate_buckets (bucket, tokens, updated_at) VALUES ($1, $2, clock_timestamp())
         ON CONFLICT (bucket) DO NOTHING",
        bucket,
        burst,
    )
    .execute(pool)
    .await?;
    let r = sqlx::query!(
        r#"WITH cur AS (
             SELECT least($3::float8, tokens + $2::float8 * extract(epoch FROM clock_timestamp() - updated_at)::float8)
                    AS avail
             FROM rate_buckets WHERE bucket = $1 FOR UPDATE)
           UPDATE rate_buckets b
              SET tokens = cur.avail - CASE WHEN cur.avail >= $4::float8 THEN $4::float8 ELSE 0 END,
                  updated_at = clock_timestamp()
             FROM cur WHERE b.bucket = $1
           RETURNING CASE WHEN cur.avail >= $4::float8 THEN $4::float8 ELSE 0 END AS "granted!",
                     cur.avail AS "avail!""#,
        bucket,
        rate,
        burst,
        want,
    )
    .fetch_one(pool)
    .await?;
    let wait = if r.granted > 0.0 {
        0.0
    } else {
        (want - r.avail).max(0.0) / rate
    };
    Ok((r.granted, wait))
}

/// Revokes a key by id or by its printed prefix; returns how many keys were revoked.
pub async fn revoke(pool: &PgPool, id_or_prefix: &str) -> Result<u64, sqlx::Error> {
    let id = Uuid::parse_str(id_or_prefix).ok();
    let res = sqlx::query!(
        "UPDATE api_keys SET revoked_at = now()
         WHERE revoked_at IS NULL AND (id = $1 OR prefix = $2)",
        id,
        id_or_prefix,
    )
    .execute(pool)
    .await?;
    Ok(res.rows_affected())
}

/// All keys, newest first.
pub async fn list(pool: &PgPool) -> Result<Vec<KeyRow>, sqlx::Error> {
    sqlx::query_as!(
        KeyRow,
        "SELECT id, project, name, scope, prefix, created_at, revoked_at FROM api_keys ORDER BY created_at DESC",
    )
    .fetch_all(pool)
    .await
}
