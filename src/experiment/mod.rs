//! Online experiments as plain code: what one logged request contributes ([`Observed`]), the
//! per-arm figures ([`ArmMetrics`]), and the decision at a look ([`look`]). No SQL here:
//! `store::experiment_stats` folds the request log and joined feedback into per-arm sums
//! ([`fold`]), `cluster::looker` looks at running experiments and applies decisions.
//!
//! The rule (documented in the README, "Experiments"):
//! - The unit is the user (the label's split hashes the user id). The primary metric is each
//!   user's click-through: the share of their requests with at least one positive feedback
//!   event; arms are compared by the mean over users, with its variance over users.
//! - Always valid: the mSPRT p-value (`stats`) is updated at every look and never rises, so
//!   the experiment may be looked at any number of times at level `alpha`.
//! - No decision before `min_users` users per arm; at `max_users` per arm without one, the
//!   result is inconclusive and the control stays.
//! - Guardrails at every look once both arms have `guardrails.min_requests` requests: a
//!   treatment fallback rate more than `max_fallback_increase` above the control's, a p99
//!   latency more than `max_latency_ratio` times the control's (and 50 ms more), or LLM
//!   tokens per rerank more than `max_tokens_ratio` times the control's roll it back at once.
//! - A sample ratio mismatch (users per arm against the configured share, chi-square p below
//!   `srm_alpha`, checked from 100 users) voids the experiment: the control stays.

pub mod fold;
pub mod stats;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Settings of an experiment (all optional in the request; defaults shown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ExperimentSettings {
    /// Level of the always-valid test.
    #[schema(minimum = 0.0001, maximum = 0.5)]
    pub alpha: f64,
    /// Standard deviation of the mixing distribution of the mSPRT (the size of difference
    /// in per-user click-through it is most sensitive to).
    #[schema(minimum = 0.001, maximum = 1.0)]
    pub tau: f64,
    /// Users per arm before any decision.
    #[schema(minimum = 2, maximum = 10000000)]
    pub min_users: usize,
    /// Users per arm after which the result is inconclusive.
    #[schema(minimum = 2, maximum = 10000000)]
    pub max_users: usize,
    /// Feedback kinds that count as positive.
    #[schema(min_items = 1, max_items = 20)]
    pub positive_kinds: Vec<String>,
    /// k of click-through in the top k.
    #[schema(minimum = 1, maximum = 1000)]
    pub k: usize,
    pub guardrails: Guardrails,
    /// Sample ratio mismatch threshold.
    #[schema(minimum = 0.0, maximum = 0.5)]
    pub srm_alpha: f64,
}

impl Default for ExperimentSettings {
    fn default() -> Self {
        ExperimentSettings {
            alpha: 0.05,
            tau: 0.05,
            min_users: 100,
            max_users: 100_000,
            positive_kinds: vec!["click".into(), "purchase".into()],
            k: 10,
            guardrails: Guardrails::default(),
            srm_alpha: 0.001,
        }
    }
}

/// Limits that stop a treatment early.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Guardrails {
    /// Requests per arm before guardrails are checked.
    #[schema(minimum = 1, maximum = 10000000)]
    pub min_requests: usize,
    /// Largest tolerated increase of the fallback rate (absolute).
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub max_fallback_increase: f64,
    /// Largest tolerated ratio of p99 latencies (treatment / control).
    #[schema(minimum = 1.0, maximum = 1000.0)]
    pub max_latency_ratio: f64,
    /// Largest tolerated ratio of LLM tokens per rerank (treatment / control).
    #[schema(minimum = 1.0, maximum = 1000.0)]
    pub max_tokens_ratio: f64,
}

impl Default for Guardrails {
    fn default() -> Self {
        Guardrails {
            min_requests: 50,
            max_fallback_increase: 0.05,
            max_latency_ratio: 2.0,
            max_tokens_ratio: 1.5,
        }
    }
}

impl ExperimentSettings {
    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let f = |name: &str, v: f64, lo: f64, hi: f64| {
            if v.is_finite() && v >= lo && v <= hi {
                Ok(())
            } else {
                Err(format!(
                    "settings.{name} must be between {lo} and {hi}, got {v}"
                ))
            }
        };
        f("alpha", self.alpha, 0.0001, 0.5)?;
        f("tau", self.tau, 0.001, 1.0)?;
        f("srm_alpha", self.srm_alpha, 0.0, 0.5)?;
        let g = &self.guardrails;
        f(
            "guardrails.max_fallback_increase",
            g.max_fallback_increase,
            0.0,
            1.0,
        )?;
        f(
            "guardrails.max_latency_ratio",
            g.max_latency_ratio,
            1.0,
            1000.0,
        )?;
        f(
            "guardrails.max_tokens_ratio",
            g.max_tokens_ratio,
            1.0,
            1000.0,
        )?;
        let u = |name: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "settings.{name} must be between {lo} and {hi}, got {v}"
                ))
            }
        };
        u("min_users", self.min_users, 2, 10_000_000)?;
        u("max_users", self.max_users, 2, 10_000_000)?;
        u("k", self.k, 1, 1000)?;
        u("guardrails.min_requests", g.min_requests, 1, 10_000_000)?;
        if self.max_users < self.min_users {
            return Err("settings.max_users must be at least settings.min_users".into());
        }
        if self.positive_kinds.is_empty() || self.positive_kinds.len() > 20 {
            return Err("settings.positive_kinds must list 1 to 20 feedback kinds".into());
        }
        for k in &self.positive_kinds {
            crate::catalog::check_id("settings.positive_kinds", k, 64).map_err(|e| e.0)?;
        }
        Ok(())
    }
}

/// One logged request of an experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub user: String,
    pub treatment: bool,
    /// 0-based position, in the order shown, of the first positive item (none: no positive).
    pub first_positive: Option<usize>,
    /// Distinct positive items.
    pub positives: usize,
    pub fallback: bool,
    pub latency_ms: f64,
    pub llm_calls: f64,
    pub tokens: f64,
}

/// The figures of one arm.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ArmMetrics {
    pub version: i32,
    pub requests: usize,
    pub users: usize,
    pub users_with_positive: usize,
    /// Positive items per request.
    pub click_through: f64,
    /// Share of requests with a positive item in the first k shown.
    pub click_through_at_k: f64,
    /// Mean reciprocal rank of the first positive (0 for a request without one).
    pub mrr: f64,
    pub fallback_rate: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub llm_calls_per_rerank: f64,
    pub tokens_per_rerank: f64,
    /// Mean over users of each user's share of requests with a positive (the decision metric).
    pub user_click_through: f64,
    /// Its variance over users.
    pub user_click_through_var: f64,
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[((values.len() - 1) as f64 * p).round() as usize]
}

/// The figures of the requests of one arm.
pub fn arm_metrics(version: i32, requests: &[&Observed], k: usize) -> ArmMetrics {
    let n = requests.len();
    let per = |x: f64| if n == 0 { 0.0 } else { x / n as f64 };
    let mut by_user: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for r in requests {
        let e = by_user.entry(r.user.as_str()).or_default();
        e.0 += 1;
        e.1 += usize::from(r.first_positive.is_some());
    }
    let user_ctr: Vec<f64> = by_user
        .values()
        .map(|(req, pos)| *pos as f64 / *req as f64)
        .collect();
    let (user_mean, user_var) = stats::mean_var(&user_ctr);
    let mut latencies: Vec<f64> = requests.iter().map(|r| r.latency_ms).collect();
    ArmMetrics {
        version,
        requests: n,
        users: by_user.len(),
        users_with_positive: by_user.values().filter(|(_, p)| *p > 0).count(),
        click_through: per(requests.iter().map(|r| r.positives as f64).sum()),
        click_through_at_k: per(requests
            .iter()
            .filter(|r| r.first_positive.is_some_and(|p| p < k))
            .count() as f64),
        mrr: per(requests
            .iter()
            .filter_map(|r| r.first_positive)
            .map(|p| 1.0 / (p + 1) as f64)
            .sum()),
        fallback_rate: per(requests.iter().filter(|r| r.fallback).count() as f64),
        latency_p50_ms: percentile(&mut latencies, 0.5),
        latency_p99_ms: percentile(&mut latencies, 0.99),
        llm_calls_per_rerank: per(requests.iter().map(|r| r.llm_calls).sum()),
        tokens_per_rerank: per(requests.iter().map(|r| r.tokens).sum()),
        user_click_through: user_mean,
        user_click_through_var: user_var,
    }
}

/// What a look concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Not yet: keep collecting.
    Continue,
    /// The treatment is better: the label moves to it.
    Promote,
    /// The treatment is worse: the label goes back to the control.
    KeepControl,
    /// A guardrail broke: the label goes back to the control at once.
    RollBack,
    /// The most users allowed came without a decision: the control stays.
    Inconclusive,
    /// The users per arm do not match the split: the result is void, the control stays.
    Void,
}

/// A look at an experiment: the difference, its always-valid interval and p-value, and the
/// outcome with its reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Look {
    /// Treatment minus control, per-user click-through.
    pub difference: f64,
    /// Always-valid (1 - alpha) interval of the difference.
    pub interval: (f64, f64),
    /// Always-valid p-value (the minimum over looks).
    pub p_value: f64,
    /// p-value of the sample ratio check.
    pub sample_ratio_p: f64,
    pub outcome: Outcome,
    pub reason: String,
}

/// Decides at a look from the two arms, the settings, the treatment's share of users and the
/// p-value of the previous look.
pub fn look(
    control: &ArmMetrics,
    treatment: &ArmMetrics,
    s: &ExperimentSettings,
    share: f64,
    previous_p: f64,
) -> Look {
    let d = treatment.user_click_through - control.user_click_through;
    let have_variance = control.users >= 2 && treatment.users >= 2;
    let v = if have_variance {
        treatment.user_click_through_var / treatment.users as f64
            + control.user_click_through_var / control.users as f64
    } else {
        0.0
    };
    let tau2 = s.tau * s.tau;
    let p_value = if have_variance {
        stats::always_valid_p(previous_p, d, v, tau2)
    } else {
        previous_p
    };
    let hw = stats::confidence_half_width(v, tau2, s.alpha);
    let srm = stats::sample_ratio_p(control.users, treatment.users, share);
    let (outcome, reason) = decide(control, treatment, s, d, p_value, srm);
    Look {
        difference: d,
        interval: (d - hw, d + hw),
        p_value,
        sample_ratio_p: srm,
        outcome,
        reason,
    }
}

fn decide(
    c: &ArmMetrics,
    t: &ArmMetrics,
    s: &ExperimentSettings,
    d: f64,
    p: f64,
    srm: f64,
) -> (Outcome, String) {
    if c.users + t.users >= 100 && srm < s.srm_alpha {
        return (
            Outcome::Void,
            format!(
                "sample ratio mismatch: {} control and {} treatment users (p = {srm:.2e})",
                c.users, t.users
            ),
        );
    }
    if let Some(why) = guardrail(c, t, &s.guardrails) {
        return (Outcome::RollBack, why);
    }
    let enough = c.users >= s.min_users && t.users >= s.min_users;
    if enough && p < s.alpha {
        let what = format!(
            "per-user click-through {:.4} (treatment) vs {:.4} (control), p = {p:.4} < {}",
            t.user_click_through, c.user_click_through, s.alpha
        );
        return if d > 0.0 {
            (Outcome::Promote, format!("treatment better: {what}"))
        } else {
            (Outcome::KeepControl, format!("treatment worse: {what}"))
        };
    }
    if c.users >= s.max_users && t.users >= s.max_users {
        return (
            Outcome::Inconclusive,
            format!(
                "{} users per arm without a decision (p = {p:.4})",
                s.max_users
            ),
        );
    }
    let wait = if enough {
        format!("p = {p:.4}, not below {}", s.alpha)
    } else {
        format!(
            "{} and {} users of the {} per arm needed before a decision",
            c.users, t.users, s.min_users
        )
    };
    (Outcome::Continue, wait)
}

fn guardrail(c: &ArmMetrics, t: &ArmMetrics, g: &Guardrails) -> Option<String> {
    if c.requests < g.min_requests || t.requests < g.min_requests {
        return None;
    }
    if t.fallback_rate - c.fallback_rate > g.max_fallback_increase {
        return Some(format!(
            "guardrail: fallback rate {:.3} (treatment) vs {:.3} (control), more than {} above",
            t.fallback_rate, c.fallback_rate, g.max_fallback_increase
        ));
    }
    if t.latency_p99_ms > c.latency_p99_ms * g.max_latency_ratio
        && t.latency_p99_ms - c.latency_p99_ms > 50.0
    {
        return Some(format!(
            "guardrail: p99 latency {:.0} ms (treatment) vs {:.0} ms (control), over {} times",
            t.latency_p99_ms, c.latency_p99_ms, g.max_latency_ratio
        ));
    }
    if c.tokens_per_rerank > 0.0 && t.tokens_per_rerank > c.tokens_per_rerank * g.max_tokens_ratio {
        return Some(format!(
            "guardrail: {:.0} LLM tokens per rerank (treatment) vs {:.0} (control), over {} times",
            t.tokens_per_rerank, c.tokens_per_rerank, g.max_tokens_ratio
        ));
    }
    None
}

#[cfg(test)]
mod tests;
