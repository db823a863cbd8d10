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

/// Stores a new key (the project must exist: `app::ensure_project`).
pub async fn insert(
    pool: &PgPool,
    project: &str,
    name: &str,
    scope: &str,
    prefix: &str,
    hash: &[u8],
) -> Result<Uuid, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let id = Uuid::new_v4();
    sqlx::query!(
        "INSERT INTO api_keys (id, project, name, scope, prefix, key_hash) VALUES ($1, $2, $3, $4, $5, $6)",
        id,
        project,
        name,
        scope,
        prefix,
        hash,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// The live (not revoked) key with this hash: (project, scope).
pub async fn find_live(
    pool: &PgPool,
    hash: &[u8],
) -> Result<Option<(String, String)>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT project, scope FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        hash
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.project, r.scope)))
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
