//! Accounting of LLM calls: one record per call (cache hits included), running tallies for
//! callers, and Prometheus metrics. Records are stored through the journal
//! (`store::journal`), in the order they were made.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

pub use crate::store::llm::UsageRecord;
use crate::store::states::UsageOutcome;

/// Running totals a caller collects across its calls (a rerank's `meta.usage`, a job step).
#[derive(Debug, Default)]
pub struct Tally {
    calls: AtomicU64,
    cache_hits: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    errors: AtomicU64,
    llm_micros: AtomicU64,
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
    /// Prompt tokens the server read from its prompt (prefix) cache, when it reports them.
    #[serde(default)]
    pub cached_tokens: u64,
    pub errors: u64,
    /// Time spent in LLM calls (sum over calls, microseconds).
    #[serde(default)]
    pub llm_micros: u64,
}

impl Tally {
    /// Adds one call.
    pub fn add(&self, r: &UsageRecord) {
        if r.cache_hit {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
        // A call the budget refused never went upstream: an error, not a call.
        } else if r.outcome != UsageOutcome::OverBudget {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.prompt_tokens
                .fetch_add(r.prompt_tokens as u64, Ordering::Relaxed);
            self.completion_tokens
                .fetch_add(r.completion_tokens as u64, Ordering::Relaxed);
            self.cached_tokens
                .fetch_add(r.cached_tokens as u64, Ordering::Relaxed);
        }
        if r.outcome != UsageOutcome::Ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.llm_micros.fetch_add(r.latency_us, Ordering::Relaxed);
    }

    /// Current totals.
    pub fn snapshot(&self) -> TallySnapshot {
        TallySnapshot {
            llm_calls: self.calls.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            cached_tokens: self.cached_tokens.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            llm_micros: self.llm_micros.load(Ordering::Relaxed),
        }
    }
}

/// LLM usage and wall time.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, Default, PartialEq, Eq)]
pub struct Cost {
    pub llm_calls: u64,
    pub cache_hits: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub wall_ms: u64,
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        self.llm_calls += o.llm_calls;
        self.cache_hits += o.cache_hits;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.wall_ms += o.wall_ms;
    }
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(mut self, o: Cost) -> Cost {
        self += o;
        self
    }
}

impl std::iter::Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(iter: I) -> Cost {
        iter.fold(Cost::default(), |a, b| a + b)
    }
}

/// Usage of a phase: the difference of two snapshots, with the phase's wall time.
pub fn cost_between(before: &TallySnapshot, after: &TallySnapshot, wall_ms: u64) -> Cost {
    Cost {
        llm_calls: after.llm_calls.saturating_sub(before.llm_calls),
        cache_hits: after.cache_hits.saturating_sub(before.cache_hits),
        prompt_tokens: after.prompt_tokens.saturating_sub(before.prompt_tokens),
        completion_tokens: after
            .completion_tokens
            .saturating_sub(before.completion_tokens),
        wall_ms,
    }
}

/// Exports one call as Prometheus metrics.
pub fn record_metrics(r: &UsageRecord) {
    let cache = if r.cache_hit { "hit" } else { "miss" };
    let labels = [
        ("role", r.role.clone()),
        ("model", r.model.clone()),
        ("outcome", r.outcome.as_str().to_string()),
        ("cache", cache.to_string()),
    ];
    metrics::counter!("agp_llm_calls_total", &labels).increment(1);
    if !r.cache_hit {
        let l2 = [("role", r.role.clone()), ("model", r.model.clone())];
        metrics::histogram!("agp_llm_call_duration_seconds", &l2).record(r.latency_us as f64 / 1e6);
        metrics::counter!("agp_llm_prompt_tokens_total", &l2).increment(r.prompt_tokens as u64);
        metrics::counter!("agp_llm_completion_tokens_total", &l2)
            .increment(r.completion_tokens as u64);
        metrics::counter!("agp_llm_cached_prompt_tokens_total", &l2)
            .increment(r.cached_tokens as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(hit: bool, outcome: UsageOutcome) -> UsageRecord {
        UsageRecord {
            uid: uuid::Uuid::new_v4(),
            created_at: chrono::Utc::now(),
            project: "p".into(),
            role: "rank".into(),
            provider: "x".into(),
            model: "m".into(),
            latency_us: 5000,
            prompt_tokens: 10,
            completion_tokens: 3,
            cached_tokens: 0,
            cache_hit: hit,
            outcome,
            request_id: None,
            job_id: None,
        }
    }

    #[test]
    fn tally_counts_calls_hits_and_tokens() {
        let t = Tally::default();
        t.add(&rec(false, UsageOutcome::Ok));
        t.add(&rec(true, UsageOutcome::Ok));
        t.add(&rec(false, UsageOutcome::Timeout));
        t.add(&rec(false, UsageOutcome::OverBudget));
        let s = t.snapshot();
        assert_eq!(
            (
                s.llm_calls,
                s.cache_hits,
                s.prompt_tokens,
                s.completion_tokens,
                s.errors
            ),
            (2, 1, 20, 6, 2)
        );
    }
}
