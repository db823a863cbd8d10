//! Accounting of LLM calls: one record per call (cache hits included), running tallies for
//! callers, Prometheus metrics, and a writer that stores records in batches off the hot path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

/// One call, as stored in `llm_usage`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRecord {
    pub project: String,
    pub role: String,
    pub provider: String,
    pub model: String,
    pub latency_ms: u64,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cache_hit: bool,
    /// `ok`, or the error kind (`timeout`, `rate_limited`, ...).
    pub outcome: String,
    pub request_id: Option<String>,
    pub job_id: Option<uuid::Uuid>,
}

/// Running totals a caller collects across its calls (a rerank's `meta.usage`, a job step).
#[derive(Debug, Default)]
pub struct Tally {
    calls: AtomicU64,
    cache_hits: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    errors: AtomicU64,
}

/// A snapshot of a tally.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct TallySnapshot {
    /// Upstream calls made (cache hits not included).
    pub llm_calls: u64,
    pub cache_hits: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub errors: u64,
}

impl Tally {
    /// Adds one call.
    pub fn add(&self, r: &UsageRecord) {
        if r.cache_hit {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.prompt_tokens
                .fetch_add(r.prompt_tokens as u64, Ordering::Relaxed);
            self.completion_tokens
                .fetch_add(r.completion_tokens as u64, Ordering::Relaxed);
        }
        if r.outcome != "ok" {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Current totals.
    pub fn snapshot(&self) -> TallySnapshot {
        TallySnapshot {
            llm_calls: self.calls.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// Exports one call as Prometheus metrics.
pub fn record_metrics(r: &UsageRecord) {
    let cache = if r.cache_hit { "hit" } else { "miss" };
    let labels = [
        ("role", r.role.clone()),
        ("model", r.model.clone()),
        ("outcome", r.outcome.clone()),
        ("cache", cache.to_string()),
    ];
    metrics::counter!("agp_llm_calls_total", &labels).increment(1);
    if !r.cache_hit {
        let l2 = [("role", r.role.clone()), ("model", r.model.clone())];
        metrics::histogram!("agp_llm_call_duration_seconds", &l2)
            .record(r.latency_ms as f64 / 1000.0);
        metrics::counter!("agp_llm_prompt_tokens_total", &l2).increment(r.prompt_tokens as u64);
        metrics::counter!("agp_llm_completion_tokens_total", &l2)
            .increment(r.completion_tokens as u64);
    }
}

enum Msg {
    Record(UsageRecord),
    Flush(oneshot::Sender<()>),
}

/// Sends usage records to a background task that inserts them in batches. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UsageSink {
    tx: Option<mpsc::UnboundedSender<Msg>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("usage message")
    }
}

/// Records per insert statement.
const BATCH: usize = 500;

impl UsageSink {
    /// A sink that stores nothing (no database: CLI dry runs, unit tests).
    pub fn discard() -> Self {
        UsageSink { tx: None }
    }

    /// Starts the writer task on `pool`. Records are inserted every 200 ms or per 500.
    pub fn start(pool: PgPool) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        tokio::spawn(async move {
            let mut buf: Vec<UsageRecord> = Vec::new();
            let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
            loop {
                let msg = if buf.is_empty() {
                    rx.recv().await
                } else {
                    match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                        Ok(m) => m,
                        Err(_) => {
                            flush(&pool, &mut buf).await;
                            continue;
                        }
                    }
                };
                match msg {
                    Some(Msg::Record(r)) => {
                        buf.push(r);
                        if buf.len() >= BATCH {
                            flush(&pool, &mut buf).await;
                        }
                    }
                    Some(Msg::Flush(ack)) => {
                        acks.push(ack);
                        // Take whatever else is queued, then write and answer.
                        while let Ok(m) = rx.try_recv() {
                            match m {
                                Msg::Record(r) => buf.push(r),
                                Msg::Flush(a) => acks.push(a),
                            }
                        }
                        flush(&pool, &mut buf).await;
                        for a in acks.drain(..) {
                            let _ = a.send(());
                        }
                    }
                    None => {
                        flush(&pool, &mut buf).await;
                        return;
                    }
                }
            }
        });
        UsageSink { tx: Some(tx) }
    }

    /// Queues a record (never blocks the caller).
    pub fn send(&self, r: UsageRecord) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Record(r));
        }
    }

    /// Waits until every record sent so far is stored (tests, shutdown, end of a job step).
    pub async fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (ack, done) = oneshot::channel();
            if tx.send(Msg::Flush(ack)).is_ok() {
                let _ = done.await;
            }
        }
    }
}

async fn flush(pool: &PgPool, buf: &mut Vec<UsageRecord>) {
    if buf.is_empty() {
        return;
    }
    let rows = std::mem::take(buf);
    if let Err(e) = crate::store::llm::insert_usage(pool, &rows).await {
        tracing::warn!(error = %e, lost = rows.len(), "could not store LLM usage rows");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(hit: bool, outcome: &str) -> UsageRecord {
        UsageRecord {
            project: "p".into(),
            role: "rank".into(),
            provider: "x".into(),
            model: "m".into(),
            latency_ms: 5,
            prompt_tokens: 10,
            completion_tokens: 3,
            cache_hit: hit,
            outcome: outcome.into(),
            request_id: None,
            job_id: None,
        }
    }

    #[test]
    fn tally_counts_calls_hits_and_tokens() {
        let t = Tally::default();
        t.add(&rec(false, "ok"));
        t.add(&rec(true, "ok"));
        t.add(&rec(false, "timeout"));
        let s = t.snapshot();
        assert_eq!(
            (
                s.llm_calls,
                s.cache_hits,
                s.prompt_tokens,
                s.completion_tokens,
                s.errors
            ),
            (2, 1, 20, 6, 1)
        );
    }
}
