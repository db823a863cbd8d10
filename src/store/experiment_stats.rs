//! An experiment's sufficient statistics in Postgres (`experiment_arms`, `experiment_users`,
//! `experiment_latency`), folded in from its inbox (`experiment_inbox`: filled by the
//! request log's and the feedback's inserts, `store::rerank`). A look reads two arm rows and
//! a latency histogram, never the log; a fold reads only what arrived since the last one.
//!
//! Exactly once: a fold runs in one REPEATABLE READ transaction that first locks the
//! experiment's row (`FOR NO KEY UPDATE NOWAIT`: inserts that only read the row never wait)
//! and always updates it, so two folds never overlap
//! and a fold whose snapshot predates another's commit fails with a serialization error and
//! is retried. Within one snapshot, the feedback rows visible are exactly those already
//! folded plus those whose inbox entries it takes, so the "before" of a late positive is
//! known without storing per-request state.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::experiments::ExperimentRow;
use super::rerank::{IN_RUNNING_EXPERIMENT, arm_version};
use super::states::ExperimentStatus;
use crate::experiment::arm::Arm;
use crate::experiment::fold::{
    ArmSums, LoggedRequest, Pending, Positive, UserCounts, fold, fold_users,
};
use crate::experiment::interleave::decode_teams;
use crate::experiment::{ArmMetrics, Design};

/// Requests folded per transaction.
pub const BATCH: i64 = 5_000;

/// Why a fold did not finish.
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    /// Another process is folding this experiment right now.
    #[error("another fold of this experiment is running")]
    Busy,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// lock_not_available (NOWAIT: someone else folds), serialization_failure and
/// deadlock_detected (a fresh snapshot will do).
fn is_retryable(e: &sqlx::Error) -> bool {
    let code = e.as_database_error().and_then(|d| d.code());
    matches!(code.as_deref(), Some("55P03" | "40001" | "40P01"))
}

/// Folds everything pending of a running experiment, in batches. Waits up to `wait` while
/// another process folds it (then returns `Busy`). Returns the requests folded.
pub async fn fold_pending(
    pool: &PgPool,
    project: &str,
    e: &ExperimentRow,
    wait: Duration,
) -> Result<usize, FoldError> {
    let started = Instant::now();
    let mut folded = 0;
    loop {
        match fold_batch(pool, project, e, BATCH).await {
            Ok(0) => return Ok(folded),
            Ok(n) => folded += n,
            Err(err) if !is_retryable(&err) => return Err(err.into()),
            Err(_) if started.elapsed() >= wait => return Err(FoldError::Busy),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// One batch in one transaction; returns the requests folded (0: nothing was pending).
async fn fold_batch(
    pool: &PgPool,
    project: &str,
    e: &ExperimentRow,
    batch: i64,
) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    let guard = sqlx::query!(
        r#"SELECT status AS "status: ExperimentStatus", stats_backfilled
           FROM experiments WHERE id = $1 FOR NO KEY UPDATE NOWAIT"#,
        e.id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(guard) = guard else {
        return Ok(0);
    };
    if guard.status != ExperimentStatus::Running {
        return Ok(0);
    }
    if !guard.stats_backfilled {
        backfill(&mut tx, e.id).await?;
    }
    let taken: Vec<(String, DateTime<Utc>, i64)> = sqlx::query!(
        "DELETE FROM experiment_inbox WHERE experiment_id = $1 AND request_id IN (
           SELECT DISTINCT request_id FROM experiment_inbox WHERE experiment_id = $1 LIMIT $2)
         RETURNING request_id, request_at, feedback_id",
        e.id,
        batch,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.request_id, r.request_at, r.feedback_id))
    .collect();
    let pending = read_pending(&mut tx, project, e, &taken).await?;
    if !pending.is_empty() {
        write_delta(&mut tx, e.id, &pending, e.settings.k).await?;
    }
    // Always touch the row: a fold whose snapshot is older than this commit fails instead
    // of folding the same entries again.
    sqlx::query!(
        "UPDATE experiments SET stats_backfilled = true WHERE id = $1",
        e.id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let requests: HashSet<&str> = taken.iter().map(|t| t.0.as_str()).collect();
    Ok(requests.len())
}

/// The first fold puts what was logged since the start into the inbox (rows drained while
/// the start committed, or an experiment older than the inbox).
async fn backfill(tx: &mut Transaction<'_, Postgres>, id: Uuid) -> Result<(), sqlx::Error> {
    // Dynamic: the condition is the shared SQL fragment `IN_RUNNING_EXPERIMENT`.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO experiment_inbox (experiment_id, request_id, request_at)
         SELECT e.id, r.id, r.created_at FROM experiments e
         JOIN rerank_requests r ON r.project = e.project AND r.created_at >= e.started_at
         WHERE e.id = $1 AND {}
         ON CONFLICT DO NOTHING",
        *IN_RUNNING_EXPERIMENT
    )))
    .bind(id)
    .execute(&mut **tx)
    .await?;
    sqlx::query!(
        "INSERT INTO experiment_arms (experiment_id, arm) VALUES ($1, 'control'), ($1, 'treatment')
         ON CONFLICT DO NOTHING",
        id,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// (id, created_at, user, version, order shown, fell back, latency, usage, teams).
type RequestTuple = (
    String,
    DateTime<Utc>,
    String,
    Option<i32>,
    serde_json::Value,
    bool,
    i32,
    serde_json::Value,
    Option<String>,
);

/// Reads the requests of the taken entries with every positive event on them.
async fn read_pending(
    tx: &mut Transaction<'_, Postgres>,
    project: &str,
    e: &ExperimentRow,
    taken: &[(String, DateTime<Utc>, i64)],
) -> Result<Vec<Pending>, sqlx::Error> {
    let mut keys: HashMap<(String, DateTime<Utc>), (bool, HashSet<i64>)> = HashMap::new();
    for (id, at, feedback) in taken {
        let k = keys.entry((id.clone(), *at)).or_default();
        if *feedback == 0 {
            k.0 = true;
        } else {
            k.1.insert(*feedback);
        }
    }
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    // `id = ANY` within a time range: an index scan of the partitions of those days (a join
    // on UNNEST lets the planner hash whole partitions; a nested loop of probes pays the
    // partition routing per entry). Entries are read in windows of close times, so a few late
    // positives on old requests do not widen the range over hours of other traffic.
    let mut by_time: Vec<(&str, DateTime<Utc>)> =
        keys.keys().map(|k| (k.0.as_str(), k.1)).collect();
    by_time.sort_by_key(|k| k.1);
    let mut rows: Vec<RequestTuple> = Vec::new();
    let mut feedback: Vec<(String, DateTime<Utc>, i64, String)> = Vec::new();
    for window in time_windows(&by_time, chrono::Duration::seconds(60)) {
        let ids: Vec<&str> = window.iter().map(|k| k.0).collect();
        let (from, to) = (window[0].1, window[window.len() - 1].1);
        // Dynamic: the version's expression depends on the experiment (`arm_version`).
        rows.extend(
            sqlx::query_as::<_, RequestTuple>(sqlx::AssertSqlSafe(format!(
                "SELECT r.id, r.created_at, r.user_id, {}, r.result_order, r.fallback IS NOT NULL,
                        r.latency_ms, r.usage, r.teams
                 FROM rerank_requests r
                 WHERE r.id = ANY($1) AND r.created_at BETWEEN $2 AND $3 AND r.project = $4",
                arm_version(&e.name)
            )))
            .bind(&ids)
            .bind(from)
            .bind(to)
            .bind(project)
            .fetch_all(&mut **tx)
            .await?,
        );
        feedback.extend(
            sqlx::query!(
                "SELECT f.request_id, f.request_at, f.id, f.item_id FROM feedback f
                 WHERE f.request_id = ANY($1) AND f.request_at BETWEEN $2 AND $3 AND f.kind = ANY($4)
                 ORDER BY f.id",
                &ids as &[&str],
                from,
                to,
                &e.settings.positive_kinds,
            )
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .map(|r| (r.request_id, r.request_at, r.id, r.item_id)),
        );
    }
    let mut positives: HashMap<(String, DateTime<Utc>), Vec<Positive>> = HashMap::new();
    for (id, at, feedback_id, item) in feedback {
        positives
            .entry((id, at))
            .or_default()
            .push(Positive { feedback_id, item });
    }
    let mut pending = Vec::with_capacity(rows.len());
    for (id, at, user, version, order, fallback, latency_ms, usage, teams) in rows {
        let key = (id, at);
        let Some((new_request, new_feedback)) = keys.remove(&key) else {
            continue;
        };
        let u = |k: &str| usage.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0);
        pending.push(Pending {
            request: LoggedRequest {
                user,
                arm: if version == Some(e.treatment) {
                    Arm::Treatment
                } else {
                    Arm::Control
                },
                order: serde_json::from_value(order).unwrap_or_default(),
                fallback,
                latency_ms,
                llm_calls: u("llm_calls"),
                tokens: u("prompt_tokens") + u("completion_tokens"),
                teams: teams.as_deref().map(decode_teams),
            },
            positives: positives.remove(&key).unwrap_or_default(),
            new_request,
            new_feedback,
        });
    }
    Ok(pending)
}

/// Splits entries sorted by time wherever two neighbours are more than `gap` apart.
fn time_windows<T>(
    sorted: &[(T, DateTime<Utc>)],
    gap: chrono::Duration,
) -> Vec<&[(T, DateTime<Utc>)]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=sorted.len() {
        if i == sorted.len() || sorted[i].1 - sorted[i - 1].1 > gap {
            if i > start {
                out.push(&sorted[start..i]);
            }
            start = i;
        }
    }
    out
}

/// Adds a batch's change to the stored sums, users and histogram.
async fn write_delta(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    pending: &[Pending],
    k: usize,
) -> Result<(), sqlx::Error> {
    let delta = fold(pending, k);
    let arms: Vec<&str> = delta.users.keys().map(|(a, _)| a.as_str()).collect();
    let users: Vec<&str> = delta.users.keys().map(|(_, u)| u.as_str()).collect();
    let before = sqlx::query!(
        "SELECT u.arm, u.user_id, u.requests, u.positive_requests, u.wins, u.losses
         FROM experiment_users u JOIN UNNEST($2::text[], $3::text[]) AS k(arm, user_id)
              ON u.arm = k.arm AND u.user_id = k.user_id
         WHERE u.experiment_id = $1",
        id,
        &arms as &[&str],
        &users as &[&str],
    )
    .fetch_all(&mut **tx)
    .await?;
    let before: HashMap<(Arm, String), UserCounts> = before
        .into_iter()
        .filter_map(|r| {
            Some((
                (Arm::parse(&r.arm)?, r.user_id),
                UserCounts {
                    requests: i64::from(r.requests),
                    positive_requests: i64::from(r.positive_requests),
                    wins: i64::from(r.wins),
                    losses: i64::from(r.losses),
                },
            ))
        })
        .collect();
    let (user_sums, after) = fold_users(&delta.users, &before);
    sqlx::query!(
        "INSERT INTO experiment_users (experiment_id, arm, user_id, requests, positive_requests, wins, losses)
         SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::int4[], $5::int4[], $6::int4[], $7::int4[])
         ON CONFLICT (experiment_id, arm, user_id)
           DO UPDATE SET requests = EXCLUDED.requests, positive_requests = EXCLUDED.positive_requests,
                         wins = EXCLUDED.wins, losses = EXCLUDED.losses",
        id,
        &after.iter().map(|((a, _), _)| a.as_str()).collect::<Vec<_>>() as &[&str],
        &after.iter().map(|((_, u), _)| u.as_str()).collect::<Vec<_>>() as &[&str],
        &after.iter().map(|(_, c)| c.requests as i32).collect::<Vec<_>>(),
        &after
            .iter()
            .map(|(_, c)| c.positive_requests as i32)
            .collect::<Vec<_>>(),
        &after.iter().map(|(_, c)| c.wins as i32).collect::<Vec<_>>(),
        &after.iter().map(|(_, c)| c.losses as i32).collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    for (i, arm) in Arm::BOTH.iter().enumerate() {
        let mut d = delta.arms[i];
        d.add(&user_sums[i]);
        if d == ArmSums::default() {
            continue;
        }
        sqlx::query!(
            "UPDATE experiment_arms SET requests = requests + $3, positives = positives + $4,
                positive_at_k = positive_at_k + $5, reciprocal_rank_sum = reciprocal_rank_sum + $6,
                fallbacks = fallbacks + $7, llm_calls = llm_calls + $8, tokens = tokens + $9,
                users = users + $10, users_with_positive = users_with_positive + $11,
                user_ctr_sum = user_ctr_sum + $12, user_ctr_sq_sum = user_ctr_sq_sum + $13,
                wins = wins + $14, losses = losses + $15, ties = ties + $16,
                control_team_clicks = control_team_clicks + $17,
                treatment_team_clicks = treatment_team_clicks + $18,
                pref_users = pref_users + $19, pref_sum = pref_sum + $20,
                pref_sq_sum = pref_sq_sum + $21
             WHERE experiment_id = $1 AND arm = $2",
            id,
            arm.as_str(),
            d.requests,
            d.positives,
            d.positive_at_k,
            d.reciprocal_rank_sum,
            d.fallbacks,
            d.llm_calls,
            d.tokens,
            d.users,
            d.users_with_positive,
            d.user_ctr_sum,
            d.user_ctr_sq_sum,
            d.wins,
            d.losses,
            d.ties,
            d.control_team_clicks,
            d.treatment_team_clicks,
            d.pref_users,
            d.pref_sum,
            d.pref_sq_sum,
        )
        .execute(&mut **tx)
        .await?;
    }
    if !delta.latency.is_empty() {
        let keys: Vec<&(Arm, i32)> = delta.latency.keys().collect();
        sqlx::query!(
            "INSERT INTO experiment_latency (experiment_id, arm, latency_ms, n)
             SELECT $1, * FROM UNNEST($2::text[], $3::int4[], $4::int8[])
             ON CONFLICT (experiment_id, arm, latency_ms)
               DO UPDATE SET n = experiment_latency.n + EXCLUDED.n",
            id,
            &keys.iter().map(|(a, _)| a.as_str()).collect::<Vec<_>>() as &[&str],
            &keys.iter().map(|(_, ms)| *ms).collect::<Vec<_>>(),
            &keys.iter().map(|k| delta.latency[*k]).collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// An `experiment_arms` row as stored.
struct StoredArm {
    arm: String,
    requests: i64,
    positives: i64,
    positive_at_k: i64,
    reciprocal_rank_sum: f64,
    fallbacks: i64,
    llm_calls: f64,
    tokens: f64,
    users: i64,
    users_with_positive: i64,
    user_ctr_sum: f64,
    user_ctr_sq_sum: f64,
    wins: i64,
    losses: i64,
    ties: i64,
    control_team_clicks: i64,
    treatment_team_clicks: i64,
    pref_users: i64,
    pref_sum: f64,
    pref_sq_sum: f64,
}

/// The stored sums and latency histogram of both arms (control, treatment).
pub async fn arm_sums(
    pool: &PgPool,
    id: Uuid,
) -> Result<[(ArmSums, BTreeMap<i32, i64>); 2], sqlx::Error> {
    let rows = sqlx::query_as!(
        StoredArm,
        "SELECT arm, requests, positives, positive_at_k, reciprocal_rank_sum, fallbacks, llm_calls,
                tokens, users, users_with_positive, user_ctr_sum, user_ctr_sq_sum, wins, losses, ties,
                control_team_clicks, treatment_team_clicks, pref_users, pref_sum, pref_sq_sum
         FROM experiment_arms WHERE experiment_id = $1",
        id,
    )
    .fetch_all(pool)
    .await?;
    let latency = sqlx::query!(
        "SELECT arm, latency_ms, n FROM experiment_latency WHERE experiment_id = $1",
        id,
    )
    .fetch_all(pool)
    .await?;
    let mut out: [(ArmSums, BTreeMap<i32, i64>); 2] = Default::default();
    for r in rows {
        let i = usize::from(Arm::parse(&r.arm) == Some(Arm::Treatment));
        out[i].0 = ArmSums {
            requests: r.requests,
            positives: r.positives,
            positive_at_k: r.positive_at_k,
            reciprocal_rank_sum: r.reciprocal_rank_sum,
            fallbacks: r.fallbacks,
            llm_calls: r.llm_calls,
            tokens: r.tokens,
            users: r.users,
            users_with_positive: r.users_with_positive,
            user_ctr_sum: r.user_ctr_sum,
            user_ctr_sq_sum: r.user_ctr_sq_sum,
            wins: r.wins,
            losses: r.losses,
            ties: r.ties,
            control_team_clicks: r.control_team_clicks,
            treatment_team_clicks: r.treatment_team_clicks,
            pref_users: r.pref_users,
            pref_sum: r.pref_sum,
            pref_sq_sum: r.pref_sq_sum,
        };
    }
    for r in latency {
        let i = usize::from(Arm::parse(&r.arm) == Some(Arm::Treatment));
        out[i].1.insert(r.latency_ms, r.n);
    }
    Ok(out)
}

/// The figures of both arms (control, treatment) from the stored statistics.
pub async fn metrics(
    pool: &PgPool,
    e: &ExperimentRow,
) -> Result<(ArmMetrics, ArmMetrics), sqlx::Error> {
    let [(c, cl), (t, tl)] = arm_sums(pool, e.id).await?;
    let mut treatment = t.metrics(e.treatment, &tl);
    if e.design == Design::Interleave {
        treatment.interleaving = Some(t.team_metrics());
    }
    Ok((c.metrics(e.control, &cl), treatment))
}

/// Entries waiting in an experiment's inbox (monitoring, tests).
pub async fn pending(pool: &PgPool, id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM experiment_inbox WHERE experiment_id = $1"#,
        id
    )
    .fetch_one(pool)
    .await
}

/// Reclaims the inbox's dead entries now (the leader calls it after large folds, so a fold's
/// index scan never walks a backlog of them while autovacuum waits for its next round).
pub async fn vacuum_inbox(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query!("VACUUM experiment_inbox")
        .execute(pool)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_read_in_windows_of_close_times() {
        let t = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).unwrap();
        let sorted = [
            ("a", t(0)),
            ("b", t(30)),
            ("c", t(100)),
            ("d", t(5000)),
            ("e", t(5001)),
        ];
        let w = time_windows(&sorted, chrono::Duration::seconds(60));
        let names: Vec<Vec<&str>> = w.iter().map(|w| w.iter().map(|x| x.0).collect()).collect();
        assert_eq!(names, vec![vec!["a", "b"], vec!["c"], vec!["d", "e"]]);
        assert!(time_windows::<&str>(&[], chrono::Duration::seconds(60)).is_empty());
    }
}
