//! Items, users and interactions.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Transaction};
use utoipa::ToSchema;

use super::states::HistoryOrder;
use crate::catalog::{DEFAULT_KIND, NewInteraction, NewItem};

/// An item as stored.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Item {
    pub id: String,
    pub title: String,
    pub text: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One entry of a user's history, with the item's title for convenience.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntry {
    pub item_id: String,
    pub title: String,
    pub kind: String,
    pub value: Option<f64>,
    pub timestamp: DateTime<Utc>,
}

/// Hash of everything about an item an LLM sees; keys the item-summary cache.
pub fn content_hash(item: &NewItem) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(item.title.as_bytes());
    h.update([0]);
    h.update(item.text.as_deref().unwrap_or("").as_bytes());
    h.update([0]);
    if let Some(a) = &item.attributes {
        h.update(a.to_string().as_bytes());
    }
    h.finalize().to_vec()
}

/// Upserts a batch of items in one statement (so all or nothing). Items whose content did not
/// change are left untouched, which keeps re-imports idempotent and summaries cached.
pub async fn upsert_items(
    tx: &mut Transaction<'_, Postgres>,
    project: &str,
    items: &[NewItem],
) -> Result<u64, sqlx::Error> {
    let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
    let titles: Vec<&str> = items.iter().map(|i| i.title.as_str()).collect();
    let texts: Vec<Option<&str>> = items.iter().map(|i| i.text.as_deref()).collect();
    let attrs: Vec<Option<String>> = items
        .iter()
        .map(|i| i.attributes.as_ref().map(|a| a.to_string()))
        .collect();
    let hashes: Vec<Vec<u8>> = items.iter().map(content_hash).collect();
    let res = sqlx::query!(
        "INSERT INTO items (project, id, title, text, attributes, content_hash)
         SELECT $1, t.id, t.title, t.text, t.attrs::jsonb, t.hash
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[])
              AS t(id, title, text, attrs, hash)
         ON CONFLICT (project, id) DO UPDATE
           SET title = excluded.title, text = excluded.text, attributes = excluded.attributes,
               content_hash = excluded.content_hash, updated_at = now()
           WHERE items.content_hash <> excluded.content_hash",
        project,
        &ids as &[&str],
        &titles as &[&str],
        &texts as &[Option<&str>],
        &attrs as &[Option<String>],
        &hashes,
    )
    .execute(&mut **tx)
    .await?;
    super::notify_tx(tx, &super::Invalidation::Items(project.to_string())).await?;
    Ok(res.rows_affected())
}

/// Item ids of `ids` that are not in the catalog, in the order given.
pub async fn missing_items(
    tx: &mut Transaction<'_, Postgres>,
    project: &str,
    ids: &[&str],
) -> Result<Vec<String>, sqlx::Error> {
    let known: Vec<String> = sqlx::query_scalar!(
        "SELECT id FROM items WHERE project = $1 AND id = ANY($2::text[])",
        project,
        ids as &[&str],
    )
    .fetch_all(&mut **tx)
    .await?;
    let known: std::collections::HashSet<String> = known.into_iter().collect();
    Ok(ids
        .iter()
        .filter(|id| !known.contains(**id))
        .map(|s| s.to_string())
        .collect())
}

/// Result of writing interactions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InsertedInteractions {
    /// Rows that were new.
    pub inserted: u64,
    /// Rows that already existed (same user, item, kind and timestamp) and were skipped.
    pub duplicates: u64,
}

/// Inserts interactions (timestamps already resolved) and their users; existing events are
/// skipped. Users with new events get their `history_version` bumped, and with `notify`
/// every replica is told to drop its cached history of those users.
pub async fn insert_interactions(
    tx: &mut Transaction<'_, Postgres>,
    project: &str,
    rows: &[NewInteraction],
    default_ts: &[DateTime<Utc>],
    notify: bool,
) -> Result<InsertedInteractions, sqlx::Error> {
    let mut users: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    sqlx::query!(
        "INSERT INTO users (project, id) SELECT $1, u FROM UNNEST($2::text[]) AS u
         ON CONFLICT (project, id) DO NOTHING",
        project,
        &users as &[&str],
    )
    .execute(&mut **tx)
    .await?;

    let user_ids: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
    let item_ids: Vec<&str> = rows.iter().map(|r| r.item_id.as_str()).collect();
    let kinds: Vec<&str> = rows
        .iter()
        .map(|r| r.kind.as_deref().unwrap_or(DEFAULT_KIND))
        .collect();
    let values: Vec<Option<f64>> = rows.iter().map(|r| r.value).collect();
    let ts: Vec<DateTime<Utc>> = rows
        .iter()
        .zip(default_ts)
        .map(|(r, d)| r.timestamp.unwrap_or(*d))
        .collect();
    let inserted: i64 = sqlx::query_scalar!(
        r#"WITH ins AS (
           INSERT INTO interactions (project, user_id, item_id, kind, value, ts)
           SELECT $1, t.u, t.i, t.k, t.v, t.ts
           FROM UNNEST($2::text[], $3::text[], $4::text[], $5::float8[], $6::timestamptz[])
                WITH ORDINALITY AS t(u, i, k, v, ts, n)
           ORDER BY t.n
           ON CONFLICT DO NOTHING
           RETURNING user_id
         ), bump AS (
           UPDATE users SET history_version = history_version + 1
           WHERE project = $1 AND id IN (SELECT DISTINCT user_id FROM ins)
         )
         SELECT count(*) AS "inserted!" FROM ins"#,
        project,
        &user_ids as &[&str],
        &item_ids as &[&str],
        &kinds as &[&str],
        &values as &[Option<f64>],
        &ts,
    )
    .fetch_one(&mut **tx)
    .await?;
    let inserted = inserted.max(0) as u64;
    if notify && inserted > 0 {
        sqlx::query!(
            "SELECT pg_notify($1, 'user' || chr(31) || $2 || chr(31) || u) FROM UNNEST($3::text[]) AS u",
            super::INVALIDATION_CHANNEL,
            project,
            &users as &[&str],
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(InsertedInteractions {
        inserted,
        duplicates: rows.len() as u64 - inserted,
    })
}

/// One item by id.
pub async fn get_item(pool: &PgPool, project: &str, id: &str) -> Result<Option<Item>, sqlx::Error> {
    sqlx::query_as!(
        Item,
        "SELECT id, title, text, attributes, created_at, updated_at
         FROM items WHERE project = $1 AND id = $2",
        project,
        id,
    )
    .fetch_optional(pool)
    .await
}

/// The user's last `limit` interactions, oldest first; `None` when the user is unknown.
pub async fn history(
    pool: &PgPool,
    project: &str,
    user_id: &str,
    limit: i64,
) -> Result<Option<Vec<HistoryEntry>>, sqlx::Error> {
    let exists = sqlx::query_scalar!(
        "SELECT 1 FROM users WHERE project = $1 AND id = $2",
        project,
        user_id,
    )
    .fetch_optional(pool)
    .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let mut rows = sqlx::query_as!(
        HistoryEntry,
        "SELECT x.item_id, i.title, x.kind, x.value, x.ts AS timestamp
         FROM interactions x JOIN items i ON i.project = x.project AND i.id = x.item_id
         WHERE x.project = $1 AND x.user_id = $2
         ORDER BY x.ts DESC, x.seq DESC
         LIMIT $3",
        project,
        user_id,
        limit,
    )
    .fetch_all(pool)
    .await?;
    rows.reverse();
    Ok(Some(rows))
}

/// Row counts of the catalog tables of a project (for import summaries and status).
pub async fn counts(pool: &PgPool, project: &str) -> Result<(i64, i64, i64), sqlx::Error> {
    let r = sqlx::query!(
        r#"SELECT (SELECT count(*) FROM items WHERE project = $1) AS "items!",
                  (SELECT count(*) FROM users WHERE project = $1) AS "users!",
                  (SELECT count(*) FROM interactions WHERE project = $1) AS "interactions!""#,
        project
    )
    .fetch_one(pool)
    .await?;
    Ok((r.items, r.users, r.interactions))
}

/// Records where the project's data came from: whether its interaction order is
/// chronological or carries no time (evaluation then picks its
/// hold-out from it), and the dataset's name (report titles).
pub async fn set_source(
    pool: &PgPool,
    project: &str,
    order: HistoryOrder,
    dataset: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE projects SET history_order = $2, dataset = $3 WHERE id = $1",
        project,
        order as _,
        dataset,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// The dataset the project was imported from, if any.
pub async fn dataset(pool: &PgPool, project: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!("SELECT dataset FROM projects WHERE id = $1", project)
        .fetch_optional(pool)
        .await
        .map(Option::flatten)
}

/// The project's history order (chronological when it was never set).
pub async fn history_order(pool: &PgPool, project: &str) -> Result<HistoryOrder, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT history_order AS "order: HistoryOrder" FROM projects WHERE id = $1"#,
        project
    )
    .fetch_optional(pool)
    .await
    .map(Option::unwrap_or_default)
}

/// Every user's item sequence in history order (for evaluation and optimization).
pub async fn user_sequences(
    pool: &PgPool,
    project: &str,
) -> Result<Vec<(String, Vec<String>)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT user_id, array_agg(item_id ORDER BY ts, seq) AS "items!"
           FROM interactions WHERE project = $1 GROUP BY user_id"#,
        project
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.user_id, r.items)).collect())
}

/// Every item id of a project, sorted.
pub async fn item_ids(pool: &PgPool, project: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT id FROM items WHERE project = $1 ORDER BY id",
        project
    )
    .fetch_all(pool)
    .await
}
