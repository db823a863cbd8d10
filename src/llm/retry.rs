//! Retry policy: exponential backoff with full jitter, bounded by attempts and total time;
//! a server's `Retry-After` is honoured as given.

use std::time::Duration;

/// How hard to retry one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
    /// First backoff ceiling; doubles per attempt.
    pub base_delay: Duration,
    /// Largest backoff between attempts.
    pub max_delay: Duration,
    /// Total time for all attempts and waits.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            budget: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (attempt counts from 1), given the server's
    /// `Retry-After`, a uniform random number in [0, 1), and the time already spent.
    /// `None` means: stop, no attempts or time left.
    pub fn next_delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        unit_random: f64,
        elapsed: Duration,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let delay = match retry_after {
            Some(d) => d,
            None => {
                let exp = self
                    .base_delay
                    .saturating_mul(1u32 << (attempt - 1).min(20));
                exp.min(self.max_delay).mul_f64(unit_random.clamp(0.0, 1.0))
            }
        };
        // Not worth waiting if the wait alone eats the rest of the budget.
        if elapsed + delay >= self.budget {
            return None;
        }
        Some(delay)
    }
}

/// Parses `Retry-After` in its delta-seconds form (the HTTP-date form is rare for APIs and
/// is treated as absent).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    v.parse::<u64>().ok().map(Duration::from_secs).or_else(|| {
        v.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_stops() {
        let p = RetryPolicy {
            max_attempts: 5,
            ..Default::default()
        };
        let d = |a| {
            p.next_delay(a, None, 0.999_999, Duration::ZERO)
                .unwrap()
                .as_millis()
        };
        assert_eq!(d(1), 199);
        assert_eq!(d(2), 399);
        assert_eq!(d(3), 799);
        assert_eq!(
            p.next_delay(5, None, 0.5, Duration::ZERO),
            None,
            "no attempts left"
        );
        let big = RetryPolicy {
            max_attempts: 30,
            ..Default::default()
        };
        assert_eq!(
            big.next_delay(25, None, 1.0, Duration::ZERO),
            Some(Duration::from_secs(5)),
            "capped"
        );
        assert_eq!(
            p.next_delay(1, None, 0.0, Duration::ZERO),
            Some(Duration::ZERO),
            "full jitter"
        );
    }

    #[test]
    fn retry_after_is_honoured_within_budget() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(2)), 0.1, Duration::ZERO),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            p.next_delay(
                1,
                Some(Duration::from_secs(30)),
                0.1,
                Duration::from_secs(40)
            ),
            None
        );
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
