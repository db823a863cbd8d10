//! What the console's overview reads: catalog counts, reranks per minute by fallback reason,
//! LLM calls, tokens and latency per minute by role, and cache hits, over the last hour.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;

/// One minute of reranks with one fallback reason (`none`: the LLM answered).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RerankMinute {
    pub minute: chrono::DateTime<chrono::Utc>,
    pub fallback: String,
    pub reranks: i64,
}

/// One minute of LLM calls of one role.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LlmMinute {
    pub minute: chrono::DateTime<chrono::Utc>,
    pub role: String,
    /// Upstream calls (cache hits not included).
    pub calls: i64,
    pub cache_hits: i64,
    pub tokens: i64,
    /// Mean latency of the upstream calls, milliseconds.
    pub latency_ms: f64,
}

/// Catalog size and the last hour of activity.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Activity {
    pub items: i64,
    pub users: i64,
    pub interactions: i64,
    pub reranks: Vec<RerankMinute>,
    pub llm: Vec<LlmMinute>,
}

/// The project's counts and its last hour.
pub async fn activity(pool: &PgPool, project: &str) -> Result<Activity, sqlx::Error> {
    let (items, users, interactions): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM items WHERE project = $1),
                (SELECT count(*) FROM users WHERE project = $1),
                (SELECT count(*) FROM interactions WHERE project = $1)",
    )
    .bind(project)
    .fetch_one(pool)
    .await?;
    let reranks: Vec<(chrono::DateTime<chrono::Utc>, String, i64)> = sqlx::query_as(
        "SELECT date_trunc('minute', created_at), COALESCE(fallback, 'none'), count(*)
         FROM rerank_requests WHERE project = $1 AND created_at > now() - interval '60 minutes'
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(project)
    .fetch_all(pool)
    .await?;
    let llm: Vec<(chrono::DateTime<chrono::Utc>, String, i64, i64, i64, f64)> = sqlx::query_as(
        "SELECT date_trunc('minute', created_at), role,
                count(*) FILTER (WHERE NOT cache_hit), count(*) FILTER (WHERE cache_hit),
                COALESCE(sum(prompt_tokens + completion_tokens) FILTER (WHERE NOT cache_hit), 0)::int8,
                COALESCE(avg(latency_ms) FILTER (WHERE NOT cache_hit), 0)::float8
         FROM llm_usage WHERE project = $1 AND created_at > now() - interval '60 minutes'
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(project)
    .fetch_all(pool)
    .await?;
    Ok(Activity {
        items,
        users,
        interactions,
        reranks: reranks
            .into_iter()
            .map(|(minute, fallback, reranks)| RerankMinute {
                minute,
                fallback,
                reranks,
            })
            .collect(),
        llm: llm
            .into_iter()
            .map(
                |(minute, role, calls, cache_hits, tokens, latency_ms)| LlmMinute {
                    minute,
                    role,
                    calls,
                    cache_hits,
                    tokens,
                    latency_ms,
                },
            )
            .collect(),
    })
}
