//! Prompt registry: names, immutable numbered versions, movable labels (with A/B splits).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;

use super::states::VersionSource;

/// The label every prompt starts with and the rerank path uses by default.
pub const PRODUCTION: &str = "production";

/// One stored version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VersionRow {
    pub name: String,
    pub version: i32,
    pub template: String,
    pub message: String,
    /// `seed`, `api`, or `optimization`.
    pub source: String,
    pub run_id: Option<uuid::Uuid>,
    pub parent_version: Option<i32>,
    #[schema(value_type = Object)]
    pub scores: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// One arm of an A/B split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitArm {
    #[schema(minimum = 1, maximum = 2147483647)]
    pub version: i32,
    /// Relative share of users (positive).
    #[schema(exclusive_minimum = 0.0, maximum = 1e300)]
    pub weight: f64,
}

/// Where a label points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LabelRow {
    pub name: String,
    pub label: String,
    /// The version, when the label points at one.
    pub version: Option<i32>,
    /// The split, when the label divides traffic.
    pub split: Option<Vec<SplitArm>>,
    /// The split interleaves (an interleaved experiment): a user drawn into its last arm
    /// sees the first arm's and the last arm's rankings merged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interleave: bool,
    pub updated_at: DateTime<Utc>,
}

/// Where a label is set to point.
#[derive(Debug, Clone, Copy)]
pub enum LabelTarget<'a> {
    Version(i32),
    Split {
        arms: &'a [SplitArm],
        /// Users drawn into the last arm see the first and the last interleaved.
        interleave: bool,
    },
}

/// A `prompt_labels` row as read (the split still JSON).
struct LabelRecord {
    name: String,
    label: String,
    version: Option<i32>,
    split: Option<serde_json::Value>,
    interleave: bool,
    updated_at: DateTime<Utc>,
}

fn label_row(r: LabelRecord) -> LabelRow {
    let split = r.split.and_then(|s| serde_json::from_value(s).ok());
    LabelRow {
        name: r.name,
        label: r.label,
        version: r.version,
        split,
        interleave: r.interleave,
        updated_at: r.updated_at,
    }
}

/// Creates the project (if new) and seeds each prompt `(name, default template)` as version 1
/// labelled `production`. Idempotent.
pub async fn ensure_project(
    pool: &PgPool,
    project: &str,
    seeds: &[(&str, &str)],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "INSERT INTO projects (id) VALUES ($1) ON CONFLICT DO NOTHING",
        project
    )
    .execute(&mut *tx)
    .await?;
    for &(name, template) in seeds {
        let created = sqlx::query!(
            "INSERT INTO prompts (project, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            project,
            name,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if created == 0 {
            continue;
        }
        sqlx::query!(
            "INSERT INTO prompt_versions (project, name, version, template, message, source)
             VALUES ($1, $2, 1, $3, 'default written for AGP Rerank', $4)",
            project,
            name,
            template,
            VersionSource::Seed as _,
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "INSERT INTO prompt_labels (project, name, label, version) VALUES ($1, $2, $3, 1)",
            project,
            name,
            PRODUCTION,
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Moves projects still on an untouched seed of `name` (only version 1, from the seed, equal
/// to `legacy`, labelled `production`) to `current` as version 2, with the label. Returns the
/// projects moved. Idempotent; a project whose prompt anyone changed is left alone.
pub async fn upgrade_seed(
    pool: &PgPool,
    name: &str,
    legacy: &str,
    current: &str,
    message: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let projects: Vec<String> = sqlx::query_scalar!(
        "INSERT INTO prompt_versions (project, name, version, template, message, source, parent_version)
         SELECT v.project, v.name, 2, $3, $4, $5, 1
         FROM prompt_versions v
         JOIN prompt_labels l ON l.project = v.project AND l.name = v.name
              AND l.label = 'production' AND l.version = 1
         WHERE v.name = $1 AND v.version = 1 AND v.source = $5 AND v.template = $2
           AND NOT EXISTS (SELECT 1 FROM prompt_versions w
                           WHERE w.project = v.project AND w.name = v.name AND w.version > 1)
         RETURNING project",
        name,
        legacy,
        current,
        message,
        VersionSource::Seed as _,
    )
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE prompt_labels SET version = 2, updated_at = now()
         WHERE name = $1 AND label = 'production' AND project = ANY($2)",
        name,
        &projects,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO prompt_label_history (project, name, label, version)
         SELECT p, $1, 'production', 2 FROM unnest($2::text[]) AS p",
        name,
        &projects,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(projects)
}

/// Summary of each prompt: latest version and labels.
pub async fn list(
    pool: &PgPool,
    project: &str,
) -> Result<Vec<(String, i32, Vec<LabelRow>)>, sqlx::Error> {
    let latest = sqlx::query!(
        r#"SELECT name, max(version) AS "latest!" FROM prompt_versions WHERE project = $1
           GROUP BY name ORDER BY name"#,
        project
    )
    .fetch_all(pool)
    .await?;
    let labels: Vec<LabelRow> = sqlx::query_as!(
        LabelRecord,
        "SELECT name, label, version, split, interleave, updated_at
         FROM prompt_labels WHERE project = $1 ORDER BY name, label",
        project
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(label_row)
    .collect();
    Ok(latest
        .into_iter()
        .map(|r| {
            let l = labels
                .iter()
                .filter(|l| l.name == r.name)
                .cloned()
                .collect();
            (r.name, r.latest, l)
        })
        .collect())
}

/// All versions of a prompt, oldest first.
pub async fn versions(
    pool: &PgPool,
    project: &str,
    name: &str,
) -> Result<Vec<VersionRow>, sqlx::Error> {
    sqlx::query_as!(
        VersionRow,
        "SELECT name, version, template, message, source, run_id, parent_version, scores, created_at
         FROM prompt_versions WHERE project = $1 AND name = $2 ORDER BY version",
        project,
        name,
    )
    .fetch_all(pool)
    .await
}

/// One version.
pub async fn version(
    pool: &PgPool,
    project: &str,
    name: &str,
    version: i32,
) -> Result<Option<VersionRow>, sqlx::Error> {
    sqlx::query_as!(
        VersionRow,
        "SELECT name, version, template, message, source, run_id, parent_version, scores, created_at
         FROM prompt_versions WHERE project = $1 AND name = $2 AND version = $3",
        project,
        name,
        version,
    )
    .fetch_optional(pool)
    .await
}

/// What a new version carries besides its template.
#[derive(Debug, Clone, Default)]
pub struct NewVersion<'a> {
    pub message: &'a str,
    pub source: VersionSource,
    pub run_id: Option<uuid::Uuid>,
    pub parent_version: Option<i32>,
    pub scores: Option<serde_json::Value>,
}

/// Stores a new version with the next number (numbers never repeat, even under concurrency).
pub async fn create_version(
    pool: &PgPool,
    project: &str,
    name: &str,
    template: &str,
    meta: &NewVersion<'_>,
) -> Result<i32, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query_scalar!(
        "SELECT 1 FROM prompts WHERE project = $1 AND name = $2 FOR UPDATE",
        project,
        name,
    )
    .fetch_one(&mut *tx)
    .await?;
    let next = sqlx::query_scalar!(
        r#"SELECT coalesce(max(version), 0) + 1 AS "next!"
           FROM prompt_versions WHERE project = $1 AND name = $2"#,
        project,
        name,
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO prompt_versions (project, name, version, template, message, source, run_id, parent_version, scores)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, coalesce($9, '{}'::jsonb))",
        project,
        name,
        next,
        template,
        meta.message,
        meta.source as _,
        meta.run_id,
        meta.parent_version,
        meta.scores.as_ref(),
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(next)
}

/// The label, if it exists.
pub async fn label(
    pool: &PgPool,
    project: &str,
    name: &str,
    label: &str,
) -> Result<Option<LabelRow>, sqlx::Error> {
    let row = sqlx::query_as!(
        LabelRecord,
        "SELECT name, label, version, split, interleave, updated_at
         FROM prompt_labels WHERE project = $1 AND name = $2 AND label = $3",
        project,
        name,
        label,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(label_row))
}

/// Points a label at a version or a split (versions must exist; the caller validated the
/// weights); records the move in the history and tells every replica.
pub async fn set_label(
    pool: &PgPool,
    project: &str,
    name: &str,
    label: &str,
    version: Option<i32>,
    split: Option<&[SplitArm]>,
) -> Result<LabelRow, sqlx::Error> {
    let target = match (version, split) {
        (Some(v), _) => LabelTarget::Version(v),
        (None, split) => LabelTarget::Split {
            arms: split.unwrap_or_default(),
            interleave: false,
        },
    };
    let mut tx = pool.begin().await?;
    let row = set_label_tx(&mut tx, project, name, label, target).await?;
    tx.commit().await?;
    Ok(row)
}

/// [`set_label`] inside the caller's transaction (the replicas hear of it at commit).
pub async fn set_label_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    project: &str,
    name: &str,
    label: &str,
    target: LabelTarget<'_>,
) -> Result<LabelRow, sqlx::Error> {
    let (version, split_json, interleave) = match target {
        LabelTarget::Version(v) => (Some(v), None, false),
        LabelTarget::Split { arms, interleave } => (
            None,
            Some(serde_json::to_value(arms).unwrap_or_default()),
            interleave,
        ),
    };
    let row = sqlx::query_as!(
        LabelRecord,
        "INSERT INTO prompt_labels (project, name, label, version, split, interleave, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, now())
         ON CONFLICT (project, name, label) DO UPDATE
           SET version = excluded.version, split = excluded.split, interleave = excluded.interleave,
               updated_at = now()
         RETURNING name, label, version, split, interleave, updated_at",
        project,
        name,
        label,
        version,
        split_json.as_ref(),
        interleave,
    )
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query!(
        "INSERT INTO prompt_label_history (project, name, label, version, split, interleave)
         VALUES ($1, $2, $3, $4, $5, $6)",
        project,
        name,
        label,
        version,
        split_json.as_ref(),
        interleave,
    )
    .execute(&mut **tx)
    .await?;
    super::notify_tx(tx, &super::Invalidation::Labels(project.to_string())).await?;
    Ok(label_row(row))
}

/// Which of `versions` exist for the prompt.
pub async fn existing_versions(
    pool: &PgPool,
    project: &str,
    name: &str,
    versions: &[i32],
) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT version FROM prompt_versions WHERE project = $1 AND name = $2 AND version = ANY($3)",
        project,
        name,
        versions,
    )
    .fetch_all(pool)
    .await
}

/// Records scores on a version (its template stays immutable).
pub async fn set_scores(
    pool: &PgPool,
    project: &str,
    name: &str,
    version: i32,
    scores: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE prompt_versions SET scores = scores || $4 WHERE project = $1 AND name = $2 AND version = $3",
        project,
        name,
        version,
        scores,
    )
    .execute(pool)
    .await
    .map(|_| ())
}
