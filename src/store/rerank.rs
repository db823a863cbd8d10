//! SQL of the rerank path: item and history lookups, the profile and summary caches, the
//! request log, feedback, and popularity for the cheap fallback ranker.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::states::ProfileWriter;

/// What the rerank path needs of an item.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemLite {
    pub id: String,
    pub title: String,
    pub text: Option<String>,
    pub attributes: Option<serde_json::Value>,
    pub content_hash: Vec<u8>,
}

/// Items by id (unknown ids are simply absent).
pub async fn items_by_ids(
    pool: &PgPool,
    project: &str,
    ids: &[&str],
) -> Result<Vec<ItemLite>, sqlx::Error> {
    sqlx::query_as!(
        ItemLite,
        "SELECT id, title, text, attributes, content_hash FROM items WHERE project = $1 AND id = ANY($2::text[])",
        project,
        ids as &[&str],
    )
    .fetch_all(pool)
    .await
}

/// The user's last `limit` distinct-by-event items, oldest first; `None` for an unknown user.
pub async fn recent_items(
    pool: &PgPool,
    project: &str,
    user: &str,
    limit: i64,
) -> Result<Option<Vec<ItemLite>>, sqlx::Error> {
    // A history row; all NULL for a known user without interactions.
    let rows = sqlx::query!(
        r#"SELECT h.id AS "id?", h.title AS "title?", h.text AS "text?", h.attributes AS "attributes?",
                  h.content_hash AS "content_hash?"
             FROM users u
             LEFT JOIN LATERAL (
               SELECT i.id, i.title, i.text, i.attributes, i.content_hash, x.ts, x.seq
               FROM interactions x JOIN items i ON i.project = x.project AND i.id = x.item_id
               WHERE x.project = u.project AND x.user_id = u.id
               ORDER BY x.ts DESC, x.seq DESC LIMIT $3
             ) h ON true
             WHERE u.project = $1 AND u.id = $2
             ORDER BY h.ts ASC NULLS FIRST, h.seq ASC"#,
        project,
        user,
        limit,
    )
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        rows.into_iter()
            .filter_map(|r| {
                Some(ItemLite {
                    id: r.id?,
                    title: r.title?,
                    text: r.text,
                    attributes: r.attributes,
                    content_hash: r.content_hash?,
                })
            })
            .collect(),
    ))
}

/// Where a profile is stored: one per user, history, `p_gen` version and model.
#[derive(Debug, Clone, Copy)]
pub struct ProfileSlot<'a> {
    pub project: &'a str,
    pub user: &'a str,
    pub history_hash: &'a [u8],
    pub version: i32,
    pub model: &'a str,
}

/// A cached profile.
pub async fn get_profile(
    pool: &PgPool,
    slot: ProfileSlot<'_>,
) -> Result<Option<StoredProfile>, sqlx::Error> {
    sqlx::query_as!(
        StoredProfile,
        r#"SELECT id, profile, written_by AS "written_by: ProfileWriter" FROM user_profiles
           WHERE project = $1 AND user_id = $2 AND history_hash = $3 AND prompt_version = $4 AND model = $5"#,
        slot.project,
        slot.user,
        slot.history_hash,
        slot.version,
        slot.model,
    )
    .fetch_optional(pool)
    .await
}

/// A profile as the rerank path reads it: its id, text and who wrote it.
#[derive(Debug, Clone)]
pub struct StoredProfile {
    pub id: Uuid,
    pub profile: String,
    pub written_by: ProfileWriter,
}

/// Stores a profile; when another writer got there first, theirs is kept and returned.
pub async fn put_profile(
    pool: &PgPool,
    slot: ProfileSlot<'_>,
    profile: &str,
    writer: ProfileWriter,
) -> Result<StoredProfile, sqlx::Error> {
    sqlx::query_as!(
        StoredProfile,
        r#"INSERT INTO user_profiles (id, project, user_id, history_hash, prompt_version, model, profile, written_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (project, user_id, history_hash, prompt_version, model)
             DO UPDATE SET profile = user_profiles.profile
           RETURNING id, profile, written_by AS "written_by: ProfileWriter""#,
        Uuid::new_v4(),
        slot.project,
        slot.user,
        slot.history_hash,
        slot.version,
        slot.model,
        profile,
        writer as _,
    )
    .fetch_one(pool)
    .await
}

/// A stored profile with its provenance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProfileRow {
    pub id: Uuid,
    pub user_id: String,
    pub profile: String,
    pub prompt_version: i32,
    pub model: String,
    pub created_at: DateTime<Utc>,
}

/// The newest profile of a user, optionally for one `p_gen` version.
pub async fn latest_profile(
    pool: &PgPool,
    project: &str,
    user: &str,
    version: Option<i32>,
) -> Result<Option<ProfileRow>, sqlx::Error> {
    sqlx::query_as!(
        ProfileRow,
        "SELECT id, user_id, profile, prompt_version, model, created_at FROM user_profiles
         WHERE project = $1 AND user_id = $2 AND ($3::int4 IS NULL OR prompt_version = $3)
         ORDER BY created_at DESC LIMIT 1",
        project,
        user,
        version,
    )
    .fetch_optional(pool)
    .await
}

/// Cached summaries for (item, content hash) pairs under one `p_sum` version and model.
pub async fn get_summaries(
    pool: &PgPool,
    project: &str,
    items: &[(&str, &[u8])],
    version: i32,
    model: &str,
) -> Result<HashMap<String, String>, sqlx::Error> {
    let ids: Vec<&str> = items.iter().map(|(i, _)| *i).collect();
    let hashes: Vec<&[u8]> = items.iter().map(|(_, h)| *h).collect();
    let rows = sqlx::query!(
        "SELECT s.item_id, s.summary FROM item_summaries s
         JOIN UNNEST($2::text[], $3::bytea[]) AS k(id, hash) ON s.item_id = k.id AND s.content_hash = k.hash
         WHERE s.project = $1 AND s.prompt_version = $4 AND s.model = $5",
        project,
        &ids as &[&str],
        &hashes as &[&[u8]],
        version,
        model,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.item_id, r.summary)).collect())
}

/// Stores a summary (first writer wins).
pub async fn put_summary(
    pool: &PgPool,
    project: &str,
    item: &str,
    hash: &[u8],
    version: i32,
    model: &str,
    summary: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO item_summaries (project, item_id, content_hash, prompt_version, model, summary)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        project,
        item,
        hash,
        version,
        model,
        summary,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// One answered rerank, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankLogRow {
    pub id: String,
    /// When it was answered.
    pub created_at: DateTime<Utc>,
    pub project: String,
    pub user_id: String,
    pub candidates: serde_json::Value,
    pub result_order: serde_json::Value,
    pub prompt_version: Option<i32>,
    pub prompt_versions: serde_json::Value,
    pub profile_id: Option<Uuid>,
    pub model: Option<String>,
    pub fallback: Option<String>,
    pub repaired: bool,
    pub latency_ms: i32,
    pub usage: serde_json::Value,
    /// The blend that answered (its version, weights and the rankers it skipped); absent in rows
    /// journaled before blends existed.
    #[serde(default)]
    pub blend: serde_json::Value,
    /// The history the profile was written from (item ids, oldest first); absent in rows
    /// journaled before it was logged.
    #[serde(default)]
    pub history: serde_json::Value,
    /// An interleaved request's teams, per position of `result_order` (`c`: control, `t`:
    /// treatment); none for any other request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<String>,
}

/// The version the logged request `r` was answered with, for an experiment on `name`
/// (`p_gen` or `blend`), as SQL.
pub(crate) fn arm_version(name: &str) -> &'static str {
    if name == "blend" {
        "(r.blend->>'version')::int"
    } else {
        "(r.prompt_versions->>'p_gen')::int"
    }
}

/// Which running experiments `e` a logged request `r` belongs to (SQL): its project,
/// answered since the experiment started, with one of its two versions.
pub(crate) static IN_RUNNING_EXPERIMENT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| {
        format!(
            "e.status = '{}' AND e.project = r.project AND r.created_at >= e.started_at
             AND (CASE WHEN e.name = 'blend' THEN {} ELSE {} END) IN (e.control, e.treatment)",
            super::states::ExperimentStatus::Running.as_str(),
            arm_version("blend"),
            arm_version("p_gen")
        )
    });

/// The request log insert with its inbox entries (built once: it runs on every drain).
static INSERT_LOGS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH r AS (
           INSERT INTO rerank_requests (id, project, user_id, candidates, result_order, prompt_version, prompt_versions,
                                        profile_id, model, fallback, repaired, latency_ms, usage, created_at, blend,
                                        history, teams)
           SELECT id, project, user_id, c::jsonb, o::jsonb, v, pv::jsonb, pid, m, f, r, l, u::jsonb, at,
                  nullif(b, 'null')::jsonb, nullif(h, 'null')::jsonb, tm
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::text[],
                       $8::uuid[], $9::text[], $10::text[], $11::bool[], $12::int4[], $13::text[], $14::timestamptz[],
                       $15::text[], $16::text[], $17::text[])
                AS t(id, project, user_id, c, o, v, pv, pid, m, f, r, l, u, at, b, h, tm)
           ON CONFLICT (id, created_at) DO NOTHING
           RETURNING id, project, created_at, prompt_versions, blend)
         INSERT INTO experiment_inbox (experiment_id, request_id, request_at)
         SELECT e.id, r.id, r.created_at FROM r JOIN experiments e ON {}
         ON CONFLICT DO NOTHING",
        *IN_RUNNING_EXPERIMENT
    )
});

/// The feedback insert with its inbox entry (built once: it runs on every feedback).
static INSERT_FEEDBACK: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH f AS (
           INSERT INTO feedback (project, request_id, request_at, user_id, item_id, kind)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (request_id, item_id, kind, request_at) DO NOTHING
           RETURNING id, request_id, request_at, kind),
         inbox AS (
           INSERT INTO experiment_inbox (experiment_id, request_id, request_at, feedback_id)
           SELECT e.id, f.request_id, f.request_at, f.id
           FROM f JOIN rerank_requests r ON r.id = $2 AND r.created_at = $3
                  JOIN experiments e ON {} AND e.settings->'positive_kinds' ? f.kind
           ON CONFLICT DO NOTHING)
         SELECT count(*) FROM f",
        *IN_RUNNING_EXPERIMENT
    )
});

/// Inserts request log rows in one statement (a row already there is left as it is), and
/// puts the new rows that belong to a running experiment into its inbox
/// (`store::experiment_stats`), in the same statement: a row and its entry commit together.
pub async fn insert_rerank_logs<'e>(
    db: impl sqlx::PgExecutor<'e>,
    rows: &[RerankLogRow],
) -> Result<(), sqlx::Error> {
    let j = |f: fn(&RerankLogRow) -> &serde_json::Value| {
        rows.iter().map(|r| f(r).to_string()).collect::<Vec<_>>()
    };
    // Dynamic: the statement embeds the shared SQL fragment `IN_RUNNING_EXPERIMENT`.
    sqlx::query(sqlx::AssertSqlSafe(INSERT_LOGS.as_str()))
        .bind(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.project.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.user_id.as_str()).collect::<Vec<_>>())
        .bind(j(|r| &r.candidates))
        .bind(j(|r| &r.result_order))
        .bind(rows.iter().map(|r| r.prompt_version).collect::<Vec<_>>())
        .bind(j(|r| &r.prompt_versions))
        .bind(rows.iter().map(|r| r.profile_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.model.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.fallback.clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.repaired).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.latency_ms).collect::<Vec<_>>())
        .bind(j(|r| &r.usage))
        .bind(rows.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(j(|r| &r.blend))
        .bind(j(|r| &r.history))
        .bind(rows.iter().map(|r| r.teams.clone()).collect::<Vec<_>>())
        .execute(db)
        .await
        .map(|_| ())
}

/// A logged rerank with a positive outcome, as the `logged` protocol reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedCase {
    pub request_id: String,
    pub at: chrono::DateTime<chrono::Utc>,
    pub user_id: String,
    /// The list as the caller sent it.
    pub candidates: Vec<String>,
    /// The history the service used for the request, oldest first.
    pub history: Vec<String>,
    /// The item of the earliest positive feedback event.
    pub target: String,
}

/// Logged reranks with at least one positive feedback event of `kinds` and a logged history,
/// oldest first; the target is the earliest positive event's item.
pub async fn logged_cases(
    pool: &PgPool,
    project: &str,
    kinds: &[String],
) -> Result<Vec<LoggedCase>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT r.id, r.created_at, r.user_id, r.candidates, r.history AS "history!",
                (array_agg(f.item_id ORDER BY f.created_at, f.id))[1] AS "target!"
         FROM rerank_requests r
         JOIN feedback f ON f.request_id = r.id AND f.request_at = r.created_at AND f.kind = ANY($2)
         WHERE r.project = $1 AND jsonb_array_length(COALESCE(r.history, '[]')) > 0
         GROUP BY r.id, r.created_at ORDER BY r.created_at, r.id"#,
        project,
        kinds,
    )
    .fetch_all(pool)
    .await?;
    let ids = |v: serde_json::Value| serde_json::from_value::<Vec<String>>(v).unwrap_or_default();
    Ok(rows
        .into_iter()
        .map(|r| LoggedCase {
            request_id: r.id,
            at: r.created_at,
            user_id: r.user_id,
            candidates: ids(r.candidates),
            history: ids(r.history),
            target: r.target,
        })
        .collect())
}

/// How many logged reranks have a positive feedback event of `kinds` and a logged history.
pub async fn count_logged_cases(
    pool: &PgPool,
    project: &str,
    kinds: &[String],
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(DISTINCT (r.id, r.created_at)) AS "n!" FROM rerank_requests r
         JOIN feedback f ON f.request_id = r.id AND f.request_at = r.created_at AND f.kind = ANY($2)
         WHERE r.project = $1 AND jsonb_array_length(COALESCE(r.history, '[]')) > 0"#,
        project,
        kinds,
    )
    .fetch_one(pool)
    .await
}

/// A logged request, as feedback is checked against it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRequest {
    pub user_id: String,
    pub candidates: serde_json::Value,
    /// When it was answered: the partition key of the request and of its feedback.
    pub created_at: DateTime<Utc>,
}

/// The logged request when it exists in this project (within retention).
pub async fn logged_request(
    pool: &PgPool,
    project: &str,
    id: &str,
) -> Result<Option<LoggedRequest>, sqlx::Error> {
    sqlx::query_as!(
        LoggedRequest,
        "SELECT user_id, candidates, created_at FROM rerank_requests WHERE project = $1 AND id = $2
         ORDER BY created_at DESC LIMIT 1",
        project,
        id,
    )
    .fetch_optional(pool)
    .await
}

/// Records feedback on the request answered at `request_at`; false when the same
/// (request, item, kind) was already recorded. A positive event on a request of a running
/// experiment goes into that experiment's inbox in the same statement.
pub async fn insert_feedback(
    pool: &PgPool,
    project: &str,
    request_id: &str,
    request_at: DateTime<Utc>,
    user: &str,
    item: &str,
    kind: &str,
) -> Result<bool, sqlx::Error> {
    // Dynamic: the statement embeds the shared SQL fragment `IN_RUNNING_EXPERIMENT`.
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(INSERT_FEEDBACK.as_str()))
        .bind(project)
        .bind(request_id)
        .bind(request_at)
        .bind(user)
        .bind(item)
        .bind(kind)
        .fetch_one(pool)
        .await?;
    Ok(n > 0)
}

/// Interaction counts of these items (the popularity fallback ranker).
pub async fn popularity(
    pool: &PgPool,
    project: &str,
    ids: &[&str],
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT item_id, count(*) AS "n!" FROM interactions
           WHERE project = $1 AND item_id = ANY($2::text[]) GROUP BY item_id"#,
        project,
        ids as &[&str],
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.item_id, r.n)).collect())
}
