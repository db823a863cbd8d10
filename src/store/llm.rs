//! LLM response cache and usage rows.

use sqlx::PgPool;

use super::states::UsageOutcome;

/// One LLM call, as stored in `llm_usage` (cache hits included).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UsageRecord {
    /// Identifies the row, so a journal replay never stores it twice.
    pub uid: uuid::Uuid,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub project: String,
    pub role: String,
    pub provider: String,
    pub model: String,
    /// Wall time of the call including queueing and retries, in microseconds.
    pub latency_us: u64,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens the server read from its prompt cache (not stored in Postgres).
    #[serde(default)]
    pub cached_tokens: u32,
    pub cache_hit: bool,
    pub outcome: UsageOutcome,
    pub request_id: Option<String>,
    pub job_id: Option<uuid::Uuid>,
}

/// Usage totals of a group of rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    /// Upstream calls (cache hits not included).
    pub calls: u64,
    pub cache_hits: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub errors: u64,
    /// Sum of the calls' latencies, milliseconds.
    pub latency_ms: u64,
}

/// A cached response by key.
pub async fn cache_get(
    pool: &PgPool,
    key: &[u8],
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    sqlx::query_scalar!("SELECT response FROM llm_cache WHERE key = $1", key)
        .fetch_optional(pool)
        .await
}

/// Stores a response (first writer wins: the same deterministic call gives the same answer).
pub async fn cache_put(
    pool: &PgPool,
    key: &[u8],
    model: &str,
    response: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO llm_cache (key, model, response) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING",
        key,
        model,
        response,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Inserts usage rows in one statement (a row already there, by `uid`, is left as it is).
pub async fn insert_usage<'e>(
    db: impl sqlx::PgExecutor<'e>,
    rows: &[UsageRecord],
) -> Result<(), sqlx::Error> {
    let col = |f: fn(&UsageRecord) -> String| rows.iter().map(f).collect::<Vec<String>>();
    let projects = col(|r| r.project.clone());
    let roles = col(|r| r.role.clone());
    let providers = col(|r| r.provider.clone());
    let models = col(|r| r.model.clone());
    let outcomes: Vec<UsageOutcome> = rows.iter().map(|r| r.outcome).collect();
    let latency: Vec<i32> = rows
        .iter()
        .map(|r| (r.latency_us / 1000).min(i32::MAX as u64) as i32)
        .collect();
    let pt: Vec<i32> = rows.iter().map(|r| r.prompt_tokens as i32).collect();
    let ct: Vec<i32> = rows.iter().map(|r| r.completion_tokens as i32).collect();
    let hits: Vec<bool> = rows.iter().map(|r| r.cache_hit).collect();
    let req: Vec<Option<String>> = rows.iter().map(|r| r.request_id.clone()).collect();
    let jobs: Vec<Option<uuid::Uuid>> = rows.iter().map(|r| r.job_id).collect();
    sqlx::query!(
        "INSERT INTO llm_usage (project, role, provider, model, latency_ms, prompt_tokens, completion_tokens,
                                cache_hit, outcome, request_id, job_id, uid, created_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int4[], $7::int4[],
                              $8::bool[], $9::text[], $10::text[], $11::uuid[], $12::uuid[], $13::timestamptz[])
         ON CONFLICT (uid) DO NOTHING",
        &projects,
        &roles,
        &providers,
        &models,
        &latency,
        &pt,
        &ct,
        &hits,
        &outcomes as _,
        &req as &[Option<String>],
        &jobs as &[Option<uuid::Uuid>],
        &rows.iter().map(|r| r.uid).collect::<Vec<_>>(),
        &rows.iter().map(|r| r.created_at).collect::<Vec<_>>(),
    )
    .execute(db)
    .await
    .map(|_| ())
}

/// Usage totals of one job, per role (for a run's cost report).
pub async fn job_usage_by_role(
    pool: &PgPool,
    job_id: uuid::Uuid,
) -> Result<Vec<(String, UsageTotals)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT role,
                count(*) FILTER (WHERE NOT cache_hit AND outcome <> $3) AS "calls!",
                count(*) FILTER (WHERE cache_hit) AS "hits!",
                coalesce(sum(prompt_tokens) FILTER (WHERE NOT cache_hit), 0) AS "pt!",
                coalesce(sum(completion_tokens) FILTER (WHERE NOT cache_hit), 0) AS "ct!",
                count(*) FILTER (WHERE outcome <> $2) AS "errors!",
                coalesce(sum(latency_ms), 0)::int8 AS "ms!"
         FROM llm_usage WHERE job_id = $1 GROUP BY role ORDER BY role"#,
        job_id,
        UsageOutcome::Ok as _,
        // Refused by the budget: never went upstream, not a call.
        UsageOutcome::OverBudget as _,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.role,
                UsageTotals {
                    calls: r.calls as u64,
                    cache_hits: r.hits as u64,
                    prompt_tokens: r.pt as u64,
                    completion_tokens: r.ct as u64,
                    errors: r.errors as u64,
                    latency_ms: r.ms.max(0) as u64,
                },
            )
        })
        .collect())
}
