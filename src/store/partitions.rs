//! The request log (`rerank_requests`) and its feedback are partitioned by UTC day of the
//! request (migration `20261204000001_bounded_log.sql`). This file makes the days ahead and
//! drops the days past the retention period, both tables together; the leader runs it every
//! hour (`cluster`), every process once at start.
//!
//! DDL takes short exclusive locks on the parent tables; a `lock_timeout` keeps a long reader
//! (an evaluation reading the log) from queueing every rerank insert behind the DDL: the step
//! gives up and is tried again at the next pass.

use chrono::{Duration, NaiveDate};
use sqlx::{PgPool, Postgres, Transaction};

/// Days of partitions made ahead of today.
pub const DAYS_AHEAD: i64 = 7;

/// How long a DDL statement waits for its lock before giving up until the next pass.
const LOCK_TIMEOUT: &str = "2s";

/// The partitioned tables, each named `<table>_pYYYYMMDD` per day plus `<table>_default`.
const TABLES: [(&str, &str); 2] = [
    ("rerank_requests", "created_at"),
    ("feedback", "request_at"),
];

/// What a maintenance pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Days whose partitions were made.
    pub made: Vec<NaiveDate>,
    /// Days whose partitions were dropped.
    pub dropped: Vec<NaiveDate>,
    /// Rows past retention deleted from the default partitions.
    pub deleted_default_rows: u64,
}

/// The first day kept when `today` keeps `retention_days` days (today included).
pub fn horizon(today: NaiveDate, retention_days: u32) -> NaiveDate {
    today - Duration::days(i64::from(retention_days.max(1)) - 1)
}

/// The day of a partition's table name (`rerank_requests_p20261204` -> 2026-12-04).
pub fn day_of(table: &str, parent: &str) -> Option<NaiveDate> {
    let suffix = table.strip_prefix(parent)?.strip_prefix("_p")?;
    NaiveDate::parse_from_str(suffix, "%Y%m%d").ok()
}

/// Makes the partitions of `from..=to` (both tables) that are missing.
pub async fn ensure(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<NaiveDate>, sqlx::Error> {
    let mut made = Vec::new();
    let mut day = from;
    while day <= to {
        let mut tx = pool.begin().await?;
        set_lock_timeout(&mut tx).await?;
        let created =
            sqlx::query_scalar!(r#"SELECT agp_ensure_log_partition($1) AS "created!""#, day)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        if created {
            made.push(day);
        }
        day += Duration::days(1);
    }
    Ok(made)
}

/// `SET LOCAL lock_timeout` to [`LOCK_TIMEOUT`], for the rest of the transaction.
async fn set_lock_timeout(tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
    sqlx::query_scalar!("SELECT set_config('lock_timeout', $1, true)", LOCK_TIMEOUT)
        .fetch_one(&mut **tx)
        .await
        .map(|_| ())
}

/// The days that have a partition, oldest first (from the request log's partitions).
pub async fn days(pool: &PgPool) -> Result<Vec<NaiveDate>, sqlx::Error> {
    let names = partitions_of(pool, TABLES[0].0).await?;
    let mut days: Vec<NaiveDate> = names
        .iter()
        .filter_map(|n| day_of(n, TABLES[0].0))
        .collect();
    days.sort();
    Ok(days)
}

async fn partitions_of(pool: &PgPool, parent: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT c.relname::text AS "name!" FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = to_regclass($1)"#,
        parent
    )
    .fetch_all(pool)
    .await
}

/// Drops the partitions of days before `horizon` (both tables) and deletes rows before it
/// that sit in the default partitions.
pub async fn drop_before(
    pool: &PgPool,
    horizon: NaiveDate,
) -> Result<(Vec<NaiveDate>, u64), sqlx::Error> {
    let mut dropped = std::collections::BTreeSet::new();
    for (parent, _) in TABLES {
        for name in partitions_of(pool, parent).await? {
            let Some(day) = day_of(&name, parent) else {
                continue;
            };
            if day >= horizon {
                continue;
            }
            let mut tx = pool.begin().await?;
            set_lock_timeout(&mut tx).await?;
            // Dynamic: the table is a partition found in the catalog at run time. The name
            // comes from the catalog and matched `<parent>_pYYYYMMDD`.
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE \"{name}\"")))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            dropped.insert(day);
        }
    }
    let cut = horizon.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    // The default partitions of `TABLES`, one statement each.
    let mut deleted = sqlx::query!(
        "DELETE FROM rerank_requests_default WHERE created_at < $1",
        cut
    )
    .execute(pool)
    .await?
    .rows_affected();
    deleted += sqlx::query!("DELETE FROM feedback_default WHERE request_at < $1", cut)
        .execute(pool)
        .await?
        .rows_affected();
    Ok((dropped.into_iter().collect(), deleted))
}

/// One pass as of `today`: the partitions from yesterday to [`DAYS_AHEAD`] days ahead exist,
/// and nothing older than `retention_days` days is kept.
pub async fn maintain(
    pool: &PgPool,
    today: NaiveDate,
    retention_days: u32,
) -> Result<Maintenance, sqlx::Error> {
    let horizon = horizon(today, retention_days);
    let from = (today - Duration::days(1)).max(horizon);
    let made = ensure(pool, from, today + Duration::days(DAYS_AHEAD)).await?;
    let (dropped, deleted_default_rows) = drop_before(pool, horizon).await?;
    Ok(Maintenance {
        made,
        dropped,
        deleted_default_rows,
    })
}

/// Bytes on disk of a partitioned table (heap, indexes, TOAST) over all its partitions.
pub async fn table_bytes(pool: &PgPool, parent: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::int8 AS "bytes!"
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = to_regclass($1)"#,
        parent
    )
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_horizon_keeps_retention_days_including_today() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 4).unwrap();
        assert_eq!(
            horizon(today, 30),
            NaiveDate::from_ymd_opt(2026, 11, 5).unwrap()
        );
        assert_eq!(horizon(today, 1), today);
        assert_eq!(horizon(today, 0), today, "at least today is kept");
    }

    #[test]
    fn partition_names_give_their_day() {
        assert_eq!(
            day_of("rerank_requests_p20261204", "rerank_requests"),
            NaiveDate::from_ymd_opt(2026, 12, 4)
        );
        assert_eq!(day_of("rerank_requests_default", "rerank_requests"), None);
        assert_eq!(day_of("feedback_p20261204", "rerank_requests"), None);
        assert_eq!(day_of("rerank_requests_p2026120", "rerank_requests"), None);
    }
}
