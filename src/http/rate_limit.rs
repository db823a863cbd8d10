//! Rate limits per API key and per project, cluster-wide. Each limited key and each limited project
//! (all its keys together) has one token bucket in Postgres (`rate_buckets`: refilled at the rate
//! up to the burst), shared by every replica. A replica takes a chunk of tokens at a time (a tenth
//! of a second's worth, at least one; all or none) and admits requests from that local allowance
//! without touching the database; when it is used up, one round trip takes the next chunk. A bucket
//! holding less than a chunk blocks the key on this replica until a chunk will have accrued (429
//! with `Retry-After`, no database round trip meanwhile).
//!
//! Why this scheme: the bucket in Postgres makes the limit exact across replicas (tokens are
//! taken atomically, whoever asks), and chunks keep the database off the hot path: at 50
//! requests a second a key costs about 10 round trips a second cluster-wide, whatever the
//! number of replicas. Over-admission is bounded by the chunks replicas hold (unused tokens
//! expire after a second, so an idle replica does not hoard), and a database that cannot
//! answer lets requests through (a limit never takes the service down).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

/// How long tokens taken from the bucket may be used.
pub const ALLOWANCE_TTL: Duration = Duration::from_secs(1);

/// What a limit applies to: one key, or every key of a project together.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Bucket {
    Key(Uuid),
    Project(String),
}

impl Bucket {
    /// The bucket's row in `rate_buckets`.
    pub fn name(&self) -> String {
        match self {
            Bucket::Key(id) => format!("key:{id}"),
            Bucket::Project(p) => format!("project:{p}"),
        }
    }
}

/// A key's or a project's limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub per_second: f64,
    pub burst: f64,
}

impl Limit {
    /// Tokens taken per round trip: a tenth of a second's worth, at least one, at most the burst.
    pub fn chunk(&self) -> f64 {
        (self.per_second / 10.0)
            .ceil()
            .clamp(1.0, self.burst.max(1.0))
    }
}

#[derive(Debug, Default)]
struct Local {
    allowance: f64,
    granted_at: Option<Instant>,
    blocked_until: Option<Instant>,
}

/// This replica's view of the limited keys and projects.
#[derive(Debug)]
pub struct RateLimiter {
    pool: PgPool,
    buckets: Mutex<HashMap<Bucket, Arc<tokio::sync::Mutex<Local>>>>,
}

impl RateLimiter {
    pub fn new(pool: PgPool) -> Self {
        RateLimiter {
            pool,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Admits one request against `bucket`, or says how long to wait.
    pub async fn admit(&self, bucket: &Bucket, limit: Limit) -> Result<(), Duration> {
        let cell = {
            let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
            match buckets.get(bucket) {
                Some(cell) => cell.clone(),
                None => buckets.entry(bucket.clone()).or_default().clone(),
            }
        };
        let mut local = cell.lock().await;
        let now = Instant::now();
        if local.allowance >= 1.0
            && local
                .granted_at
                .is_some_and(|at| now.duration_since(at) < ALLOWANCE_TTL)
        {
            local.allowance -= 1.0;
            return Ok(());
        }
        if let Some(until) = local.blocked_until
            && now < until
        {
            return Err(until - now);
        }
        let chunk = limit.chunk();
        let name = bucket.name();
        let taken = crate::store::keys::take_tokens(
            &self.pool,
            &name,
            limit.per_second,
            limit.burst,
            chunk,
        )
        .await;
        metrics::counter!("agp_rate_limit_bucket_takes_total").increment(1);
        match taken {
            Ok((granted, _)) if granted >= 1.0 => {
                local.allowance = granted - 1.0;
                local.granted_at = Some(now);
                local.blocked_until = None;
                Ok(())
            }
            Ok((_, wait)) => {
                // Blocked until a whole chunk will have accrued (another replica may take it
                // first: then this one waits again).
                let wait = Duration::from_secs_f64(wait.clamp(0.001, 3600.0));
                local.allowance = 0.0;
                local.blocked_until = Some(now + wait);
                Err(wait)
            }
            Err(e) => {
                tracing::warn!(bucket = %name, error = %e, "could not read a rate limit bucket; letting the request through");
                Ok(())
            }
        }
    }
}

/// `Retry-After` in whole seconds (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_a_tenth_of_a_second_within_one_and_the_burst() {
        let l = |per_second, burst| Limit { per_second, burst };
        assert_eq!(l(50.0, 100.0).chunk(), 5.0);
        assert_eq!(l(3.0, 10.0).chunk(), 1.0);
        assert_eq!(l(1000.0, 20.0).chunk(), 20.0);
        assert_eq!(retry_after_secs(Duration::from_millis(20)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2100)), 3);
    }
}
