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
    let counts = sqlx::query!(
        r#"SELECT (SELECT count(*) FROM items WHERE project = $1) AS "items!",
                  (SELECT count(*) FROM users WHERE project = $1) AS "users!",
                  (SELECT count(*) FROM interactions WHERE project = $1) AS "interactions!""#,
        project
    )
    .fetch_one(pool)
    .await?;
    let reranks = sqlx::query_as!(
        RerankMinute,
        r#"SELECT date_trunc('minute', created_at) AS "minute!",
                  COALESCE(fallback, 'none') AS "fallback!", count(*) AS "reranks!"
           FROM rerank_requests WHERE project = $1 AND created_at > now() - interval '60 minutes'
           GROUP BY 1, 2 ORDER BY 1, 2"#,
        project
    )
    .fetch_all(pool)
    .await?;
    let llm = sqlx::query_as!(
        LlmMinute,
        r#"SELECT date_trunc('minute', created_at) AS "minute!", role,
                  count(*) FILTER (WHERE NOT cache_hit AND outcome <> $2) AS "calls!",
                  count(*) FILTER (WHERE cache_hit) AS "cache_hits!",
                  COALESCE(sum(prompt_tokens + completion_tokens) FILTER (WHERE NOT cache_hit), 0)::int8
                    AS "tokens!",
                  COALESCE(avg(latency_ms) FILTER (WHERE NOT cache_hit), 0)::float8 AS "latency_ms!"
           FROM llm_usage WHERE project = $1 AND created_at > now() - interval '60 minutes'
           GROUP BY 1, 2 ORDER BY 1, 2"#,
        project,
        // Refused by the budget: never went upstream, not a call.
        crate::store::states::UsageOutcome::OverBudget as _,
    )
    .fetch_all(pool)
    .await?;
    Ok(Activity {
        items: counts.items,
        users: counts.users,
        interactions: counts.interactions,
        reranks,
        llm,
    })
}
