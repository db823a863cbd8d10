//! Bulk writes for `agp import`: one transaction for the whole dataset (all or nothing),
//! large UNNEST batches, idempotent on re-run.

use chrono::{DateTime, Duration, TimeZone, Utc};
use sqlx::PgPool;

use super::catalog::{InsertedInteractions, insert_interactions, upsert_items};
use crate::catalog::{NewInteraction, NewItem};

/// Rows per statement: big enough to amortise round trips, small enough for steady progress.
pub const CHUNK: usize = 20_000;

/// What an import wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportSummary {
    pub items_changed: u64,
    pub interactions: InsertedInteractions,
}

/// Base of the synthetic timestamps given to events that have none (datasets without time):
/// a user's k-th event gets base + k seconds, so history order is kept and a re-run of the
/// same file produces the same keys (idempotent).
pub fn synthetic_base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

/// Writes items then interactions inside one transaction (the project must exist:
/// `app::ensure_project`); `progress(rows_done)` is called after every chunk.
pub async fn write(
    pool: &PgPool,
    project: &str,
    items: &[NewItem],
    interactions: &[NewInteraction],
    mut progress: impl FnMut(u64),
) -> Result<ImportSummary, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // The import is one big transaction; don't wait for a disk flush per statement.
    sqlx::query!("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    let mut summary = ImportSummary::default();
    let mut done = 0u64;
    for chunk in items.chunks(CHUNK) {
        summary.items_changed += upsert_items(&mut tx, project, chunk).await?;
        done += chunk.len() as u64;
        progress(done);
    }
    // Synthetic timestamps: position of each event within its user's history.
    let base = synthetic_base();
    let mut position: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    let default_ts: Vec<DateTime<Utc>> = interactions
        .iter()
        .map(|r| {
            let k = position.entry(r.user_id.as_str()).or_insert(0);
            *k += 1;
            base + Duration::seconds(*k)
        })
        .collect();
    for (chunk, ts) in interactions.chunks(CHUNK).zip(default_ts.chunks(CHUNK)) {
        let r = insert_interactions(&mut tx, project, chunk, ts, false).await?;
        summary.interactions.inserted += r.inserted;
        summary.interactions.duplicates += r.duplicates;
        done += chunk.len() as u64;
        progress(done);
    }
    super::notify_tx(&mut tx, &super::Invalidation::All).await?;
    tx.commit().await?;
    Ok(summary)
}
