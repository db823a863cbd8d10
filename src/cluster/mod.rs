//! Work that runs in exactly one process of a deployment at a time: the leader. Every
//! `agp serve` and `agp worker` (unless `--leader false`) takes part in the election
//! (`store::leader`: a Postgres advisory lock on a connection of its own); the one holding
//! the lock, every [`LOOK_EVERY`]:
//! - folds new traffic into each running experiment's statistics and looks at it
//!   ([`looker`]), applying its decision;
//! - ticks the autopilots ([`autopilot`]);
//! - every hour, makes the request log's partitions ahead and drops those past retention
//!   (`store::partitions`).
//!
//! The others only serve or work jobs, and try to take over every [`TRY_EVERY`]. Nothing
//! here depends on leadership for correctness: folds are serialized per experiment and an
//! experiment ends only while still running, so two leaders for a moment (a leader that has
//! not yet noticed it lost its connection) do the same work twice, never a wrong one.

pub mod autopilot;
pub mod looker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgConnection;
use tokio::sync::watch;

use crate::store::{leader as db, partitions};

/// How often the leader looks at experiments and ticks autopilots.
pub const LOOK_EVERY: Duration = Duration::from_secs(5);

/// How often a process that does not lead tries to take over.
pub const TRY_EVERY: Duration = Duration::from_secs(2);

/// Requests folded after which the leader vacuums the experiment inbox (at most once a
/// minute).
const VACUUM_AFTER: usize = 20_000;

/// The leader's settings.
#[derive(Debug, Clone)]
pub struct LeaderOptions {
    /// Days of request log kept.
    pub retention_days: u32,
    pub look_every: Duration,
    pub try_every: Duration,
    /// How often log partitions are maintained.
    pub maintain_every: Duration,
    /// Shown as the leading session's `application_name`.
    pub name: String,
}

impl Default for LeaderOptions {
    fn default() -> Self {
        LeaderOptions {
            retention_days: 30,
            look_every: LOOK_EVERY,
            try_every: TRY_EVERY,
            maintain_every: Duration::from_secs(3600),
            name: format!("agp pid {}", std::process::id()),
        }
    }
}

/// This process's part in the election; stop it to give leadership up.
pub struct Election {
    stop: watch::Sender<bool>,
    leading: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Election {
    /// Starts taking part in the election.
    pub fn spawn(pool: PgPool, opts: LeaderOptions) -> Election {
        let (stop, rx) = watch::channel(false);
        let leading = Arc::new(AtomicBool::new(false));
        let handle = tokio::spawn(run(pool, opts, leading.clone(), rx));
        Election {
            stop,
            leading,
            handle,
        }
    }

    /// A handle to the flag (for `/readyz`).
    pub fn leading_flag(&self) -> Arc<AtomicBool> {
        self.leading.clone()
    }

    /// Stops (finishing the current pass) and releases the lock, so another process takes
    /// over at its next try instead of after this one's connection times out.
    /// A pass stuck on an unreachable database is abandoned after 3 s (its connection, and
    /// with it the lock, goes).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut handle = self.handle;
        if tokio::time::timeout(Duration::from_secs(3), &mut handle)
            .await
            .is_err()
        {
            handle.abort();
        }
    }
}

async fn run(
    pool: PgPool,
    opts: LeaderOptions,
    leading: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn: Option<PgConnection> = None;
    loop {
        if conn.is_none() {
            conn = db::connect(&pool, &opts.name)
                .await
                .map_err(|e| tracing::debug!(error = %e, "leader election: cannot connect"))
                .ok();
        }
        if let Some(c) = conn.as_mut() {
            match db::try_lead(c).await {
                Ok(true) => {
                    leading.store(true, Ordering::Relaxed);
                    metrics::gauge!("agp_leader").set(1.0);
                    tracing::info!(name = %opts.name, "leading: experiment looks, autopilot ticks and log partitions run here");
                    let kept = lead(&pool, c, &opts, &mut stop).await;
                    leading.store(false, Ordering::Relaxed);
                    metrics::gauge!("agp_leader").set(0.0);
                    if !kept {
                        conn = None;
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "leader election: try failed");
                    conn = None;
                }
            }
        }
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.try_every) => {}
            _ = stop.changed() => break,
        }
    }
    // Closing the session releases the lock if it is still held.
    if let Some(c) = conn {
        let _ = sqlx::Connection::close(c).await;
    }
}

/// Leads until stopped (true: the connection is still good, the lock released) or until the
/// lock is lost (false: drop the connection).
async fn lead(
    pool: &PgPool,
    conn: &mut PgConnection,
    opts: &LeaderOptions,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let mut next_maintenance = Instant::now();
    let mut folded_since_vacuum = 0;
    let mut last_vacuum = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), db::holds(conn)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::warn!("the leader lock is gone (the database restarted?); stepping down");
                return false;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lost the leader connection; stepping down");
                return false;
            }
            Err(_) => {
                tracing::warn!("the leader connection does not answer; stepping down");
                return false;
            }
        }
        let started = Instant::now();
        folded_since_vacuum += looker::look_all(pool).await;
        crate::cluster::autopilot::tick_all(pool).await;
        metrics::histogram!("agp_leader_pass_seconds").record(started.elapsed().as_secs_f64());
        if folded_since_vacuum >= VACUUM_AFTER && last_vacuum.elapsed() >= Duration::from_secs(60) {
            if let Err(e) = crate::store::experiment_stats::vacuum_inbox(pool).await {
                tracing::warn!(error = %e, "could not vacuum the experiment inbox");
            }
            folded_since_vacuum = 0;
            last_vacuum = Instant::now();
        }
        if Instant::now() >= next_maintenance {
            let again = if maintain(pool, opts.retention_days).await {
                opts.maintain_every
            } else {
                Duration::from_secs(60)
            };
            next_maintenance = Instant::now() + again;
        }
        if *stop.borrow() {
            let _ = db::release(conn).await;
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.look_every) => {}
            _ = stop.changed() => {
                let _ = db::release(conn).await;
                return true;
            }
        }
    }
}

/// One partition maintenance pass as of now (logged); false when it failed (a lock timeout
/// behind a long reader, the database away): it is tried again a minute later.
pub async fn maintain(pool: &PgPool, retention_days: u32) -> bool {
    // Rate limit buckets untouched for a day: a small table, pruned here.
    if let Err(e) = crate::store::keys::prune_buckets(pool).await {
        tracing::warn!(error = %e, "could not prune old rate limit buckets");
    }
    // LLM spend rows past the day window (two days kept): a small table, pruned here.
    if let Err(e) = crate::store::budget::prune(pool).await {
        tracing::warn!(error = %e, "could not prune old LLM spend rows");
    }
    let today = chrono::Utc::now().date_naive();
    match partitions::maintain(pool, today, retention_days).await {
        Ok(m) => {
            if !m.made.is_empty() || !m.dropped.is_empty() || m.deleted_default_rows > 0 {
                tracing::info!(made = ?m.made, dropped = ?m.dropped, deleted_default_rows = m.deleted_default_rows,
                    retention_days, "request log partitions maintained");
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "request log partition maintenance failed; tried again in a minute");
            false
        }
    }
}
