//! A circuit breaker per upstream server. After `threshold` consecutive failed attempts
//! (timeouts, connection errors, 5xx) the circuit opens: interactive calls fail at once
//! instead of spending their deadline on a server known to be down, and the rerank answers
//! its fallback order in microseconds. After a cooldown (doubling per re-open, capped) one
//! call is let through as a probe; its success closes the circuit. Background calls (jobs)
//! are never refused: they have their own retry budgets and act as probes too.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tunables of the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failed attempts that open the circuit.
    pub threshold: u32,
    /// First open period; doubles at every re-open without a success in between.
    pub cooldown: Duration,
    /// Longest open period.
    pub max_cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            threshold: 5,
            cooldown: Duration::from_secs(2),
            max_cooldown: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    /// Set while open: calls are refused until then.
    open_until: Option<Instant>,
    /// How many times it opened since the last success (sets the cooldown).
    opens: u32,
    /// A probe is in flight (half-open): other interactive calls are still refused.
    probing: bool,
    last_error: Option<String>,
    down_since: Option<Instant>,
}

/// What the breaker says about a call about to be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Allow,
    /// Go ahead as the half-open probe: report its outcome.
    Probe,
    /// Refused: the server is known to be down (with a reason for people).
    Refuse(String),
}

/// The breaker of one upstream server.
#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    state: Mutex<State>,
}

/// How the upstream looks from here, for `/readyz` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Failing attempts in a row, circuit still closed.
    Degraded {
        failures: u32,
        last_error: String,
    },
    /// Circuit open: interactive calls are refused.
    Down {
        failures: u32,
        last_error: String,
        for_secs: u64,
        retry_in_ms: u64,
    },
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Self {
        Breaker {
            policy,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an interactive call may go out now (background calls always may).
    pub fn admit(&self, now: Instant) -> Admission {
        let mut st = self.lock();
        match st.open_until {
            None => Admission::Allow,
            Some(until) if now < until || st.probing => Admission::Refuse(format!(
                "the LLM server is known to be down ({} failed attempts in a row, last: {}); \
                 not calling it for {} ms",
                st.failures,
                st.last_error.as_deref().unwrap_or("unknown"),
                until.saturating_duration_since(now).as_millis()
            )),
            Some(_) => {
                st.probing = true;
                Admission::Probe
            }
        }
    }

    /// Like `admit`, without claiming the probe: whether an interactive call would be refused.
    pub fn admit_peek(&self, now: Instant) -> Admission {
        let st = self.lock();
        match st.open_until {
            Some(until) if now < until || st.probing => Admission::Refuse(String::new()),
            Some(_) => Admission::Probe,
            None => Admission::Allow,
        }
    }

    /// Records a successful attempt: the circuit closes.
    pub fn success(&self) {
        let mut st = self.lock();
        if st.open_until.is_some() {
            tracing::info!("LLM server answers again; circuit closed");
        }
        *st = State::default();
        metrics::gauge!("agp_llm_circuit_open").set(0.0);
    }

    /// Records a failed attempt that says the server is unhealthy.
    pub fn failure(&self, now: Instant, error: &str) {
        let mut st = self.lock();
        st.failures = st.failures.saturating_add(1);
        st.last_error = Some(error.to_string());
        st.down_since.get_or_insert(now);
        let reopen =
            st.probing || (st.open_until.is_none() && st.failures >= self.policy.threshold);
        if reopen {
            let cooldown = self
                .policy
                .cooldown
                .saturating_mul(1u32 << st.opens.min(16))
                .min(self.policy.max_cooldown);
            st.opens = st.opens.saturating_add(1);
            st.open_until = Some(now + cooldown);
            st.probing = false;
            metrics::gauge!("agp_llm_circuit_open").set(1.0);
            metrics::counter!("agp_llm_circuit_opened_total").increment(1);
            tracing::warn!(failures = st.failures, ?cooldown, error, "LLM circuit open");
        }
    }

    /// A probe ended without telling anything (cancelled, or a client-side error).
    pub fn probe_abandoned(&self) {
        self.lock().probing = false;
    }

    /// The upstream's health as seen from here.
    pub fn health(&self, now: Instant) -> Health {
        let st = self.lock();
        let last_error = st.last_error.clone().unwrap_or_default();
        match st.open_until {
            Some(until) => Health::Down {
                failures: st.failures,
                last_error,
                for_secs: st
                    .down_since
                    .map(|d| now.saturating_duration_since(d).as_secs())
                    .unwrap_or(0),
                retry_in_ms: until.saturating_duration_since(now).as_millis() as u64,
            },
            None if st.failures > 0 => Health::Degraded {
                failures: st.failures,
                last_error,
            },
            None => Health::Up,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::states::UsageOutcome;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            threshold: 3,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(4),
        }
    }

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let b = Breaker::new(policy());
        let t0 = Instant::now();
        for _ in 0..2 {
            b.failure(t0, UsageOutcome::Timeout.as_str());
            assert_eq!(b.admit(t0), Admission::Allow);
        }
        b.failure(t0, UsageOutcome::Timeout.as_str());
        assert!(matches!(b.admit(t0), Admission::Refuse(m) if m.contains("3 failed")));
        assert!(matches!(b.health(t0), Health::Down { failures: 3, .. }));
        let later = t0 + Duration::from_millis(1001);
        assert_eq!(
            b.admit(later),
            Admission::Probe,
            "one probe after the cooldown"
        );
        assert!(matches!(b.admit(later), Admission::Refuse(_)), "only one");
        b.failure(later, UsageOutcome::Timeout.as_str());
        // Re-opened with a doubled cooldown.
        assert!(matches!(
            b.admit(later + Duration::from_millis(1500)),
            Admission::Refuse(_)
        ));
        let probe_at = later + Duration::from_millis(2001);
        assert_eq!(b.admit(probe_at), Admission::Probe);
        b.success();
        assert_eq!(b.admit(probe_at), Admission::Allow);
        assert_eq!(b.health(probe_at), Health::Up);
    }

    #[test]
    fn a_success_resets_the_count_and_cooldowns_are_capped() {
        let b = Breaker::new(policy());
        let t = Instant::now();
        b.failure(t, "x");
        b.failure(t, "x");
        b.success();
        b.failure(t, "x");
        assert_eq!(b.admit(t), Admission::Allow);
        let mut now = t;
        for _ in 0..10 {
            b.failure(now, "x");
            b.failure(now, "x");
            b.failure(now, "x");
            now += Duration::from_secs(5);
            let _ = b.admit(now);
        }
        match b.health(now) {
            Health::Down { retry_in_ms, .. } => assert!(retry_in_ms <= 4000),
            h => panic!("{h:?}"),
        }
        b.probe_abandoned();
    }
}
