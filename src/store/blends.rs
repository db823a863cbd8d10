//! Blends in the registry: the weights with which the production answer fuses the LLM
//! ranking with non-LLM rankings. They are registry entries named [`BLEND`] (immutable
//! numbered versions, movable labels, A/B splits, label history: the prompts' machinery in
//! `prompts`), a version's template being its weights as JSON.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;

use super::prompts::{self, NewVersion, VersionRow};
use crate::rankers::BlendWeights;
use crate::rankers::RankMode;

/// The registry name of blends.
pub const BLEND: &str = "blend";

/// One stored blend version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BlendVersion {
    pub version: i32,
    pub weights: BlendWeights,
    /// How its LLM component ranks (null: the server's `--rank-mode`).
    pub rank_mode: Option<RankMode>,
    pub message: String,
    /// `seed`, `api` or `evaluation`.
    pub source: String,
    /// The evaluation job that tuned it.
    pub run_id: Option<uuid::Uuid>,
    /// What it scored when it was tuned (validation and test NDCG@10, ...).
    #[schema(value_type = Object)]
    pub scores: serde_json::Value,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// What a blend version holds: the weights and, optionally, the rank mode of the LLM.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlendSpec {
    pub weights: BlendWeights,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_mode: Option<RankMode>,
}

/// The stored form: the bare weights (as before rank modes) when no mode is set.
pub fn encode(spec: &BlendSpec) -> String {
    match spec.rank_mode {
        None => serde_json::to_string(&spec.weights),
        Some(_) => serde_json::to_string(spec),
    }
    .unwrap_or_default()
}

/// A blend from its stored form (`None`: not a blend).
pub fn decode(template: &str) -> Option<BlendSpec> {
    serde_json::from_str(template).ok().or_else(|| {
        serde_json::from_str(template)
            .ok()
            .map(|weights| BlendSpec {
                weights,
                rank_mode: None,
            })
    })
}

fn from_row(r: VersionRow) -> Option<BlendVersion> {
    let spec = decode(&r.template)?;
    Some(BlendVersion {
        version: r.version,
        weights: spec.weights,
        rank_mode: spec.rank_mode,
        message: r.message,
        source: r.source,
        run_id: r.run_id,
        scores: r.scores,
        created_at: r.created_at,
    })
}

/// Every blend version of a project, oldest first.
pub async fn versions(pool: &PgPool, project: &str) -> Result<Vec<BlendVersion>, sqlx::Error> {
    Ok(prompts::versions(pool, project, BLEND)
        .await?
        .into_iter()
        .filter_map(from_row)
        .collect())
}

/// One blend version.
pub async fn version(
    pool: &PgPool,
    project: &str,
    version: i32,
) -> Result<Option<BlendVersion>, sqlx::Error> {
    Ok(prompts::version(pool, project, BLEND, version)
        .await?
        .and_then(from_row))
}

/// Stores a new blend version (the caller validated the weights); returns its number.
pub async fn create(
    pool: &PgPool,
    project: &str,
    spec: &BlendSpec,
    meta: &NewVersion<'_>,
) -> Result<i32, sqlx::Error> {
    prompts::create_version(pool, project, BLEND, &encode(spec), meta).await
}
