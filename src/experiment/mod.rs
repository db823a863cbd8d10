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
//! - A sample ratio mismatch (users per arm against the configured share; a sequential
//!   Dirichlet-multinomial test, always valid, p below `srm_alpha`) voids the experiment.
//! - Interleaved experiments (`Design::Interleave`) decide on the users' preference instead:
//!   per user, wins minus losses over their non-tie interleaved requests, tested by the same
//!   mSPRT; `min_users`/`max_users` count interleaved users (and at least
//!   `min_preference_users` with a preference).

pub mod arm;
pub mod fold;
pub mod interleave;
pub mod stats;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::text_enum::text_enum;

text_enum! {
    /// How an experiment shows its arms to users.
    #[derive(Default)]
    pub enum Design {
        /// Users are split: each sees one arm's ranking; arms are compared by per-user
        /// click-through.
        #[default]
        Ab = "ab",
        /// Users in the treatment's share see one list merged from both arms' rankings
        /// (team-draft interleaving); clicks say which arm's items were preferred. The other
        /// users see the control (its figures are the cost and guardrail baseline).
        Interleave = "interleave",
    }
}

impl Design {
    /// How many times the control's LLM cost an interleaved request of an experiment on
    /// `name` is expected to cost: two profiles and two rankings for `p_gen`, one ranking
    /// fused two ways for a blend. The token guardrail allows this factor.
    pub fn cost_factor(self, name: &str) -> f64 {
        match (self, name) {
            (Design::Interleave, "p_gen") => 2.0,
            _ => 1.0,
        }
    }
}

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
    /// The same for interleaved experiments, on the per-user preference (in [-1, 1]: a
    /// coarser scale than click-through, so a wider mixing distribution).
    #[schema(minimum = 0.001, maximum = 1.0)]
    pub preference_tau: f64,
    /// Users per arm before any decision.
    #[schema(minimum = 2, maximum = 10000000)]
    pub min_users: usize,
    /// Interleaved experiments: users with a preference (a non-tie request) before any
    /// decision, besides `min_users` interleaved users (the test's normal approximation needs
    /// a few dozen).
    #[schema(minimum = 10, maximum = 10000000)]
    pub min_preference_users: usize,
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
            preference_tau: 0.2,
            min_users: 100,
            min_preference_users: 30,
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
        f("preference_tau", self.preference_tau, 0.001, 1.0)?;
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
        u(
            "min_preference_users",
            self.min_preference_users,
            10,
            10_000_000,
        )?;
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
    /// The teams' credit, for an interleaved request.
    pub credit: Option<interleave::Credit>,
}

/// What an interleaved arm's clicks say about the two rankings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TeamMetrics {
    /// Requests whose clicks favoured the treatment's items.
    pub wins: usize,
    /// Requests whose clicks favoured the control's items.
    pub losses: usize,
    /// Requests with clicks on both teams alike.
    pub ties: usize,
    /// Distinct positive items the control's team supplied.
    pub control_clicks: usize,
    /// Distinct positive items the treatment's team supplied.
    pub treatment_clicks: usize,
    /// Users with at least one non-tie request.
    pub preference_users: usize,
    /// Mean over those users of (wins - losses) / (wins + losses): the decision metric
    /// (above 0: the treatment is preferred).
    pub preference: f64,
    /// Its variance over users.
    pub preference_var: f64,
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
    /// An interleaved arm's team figures (interleaved experiments only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interleaving: Option<TeamMetrics>,
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
    let interleaving = requests
        .iter()
        .any(|r| r.credit.is_some())
        .then(|| team_metrics(requests));
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
        interleaving,
    }
}

/// The team figures of interleaved requests.
fn team_metrics(requests: &[&Observed]) -> TeamMetrics {
    use interleave::Preference;
    let mut m = TeamMetrics::default();
    let mut by_user: std::collections::BTreeMap<&str, (i64, i64)> = Default::default();
    for r in requests {
        let Some(c) = r.credit else { continue };
        m.control_clicks += c.control;
        m.treatment_clicks += c.treatment;
        let e = by_user.entry(r.user.as_str()).or_default();
        match c.preference() {
            Preference::Win => (m.wins, e.0) = (m.wins + 1, e.0 + 1),
            Preference::Loss => (m.losses, e.1) = (m.losses + 1, e.1 + 1),
            Preference::Tie => m.ties += 1,
            Preference::NoClick => {}
        }
    }
    let prefs: Vec<f64> = by_user
        .values()
        .filter_map(|(w, l)| interleave::user_preference(*w, *l))
        .collect();
    (m.preference, m.preference_var) = stats::mean_var(&prefs);
    m.preference_users = prefs.len();
    m
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
    /// `ab`: treatment minus control per-user click-through. `interleave`: the mean per-user
    /// preference for the treatment (wins - losses over non-tie requests; 0: no preference).
    pub difference: f64,
    /// Always-valid (1 - alpha) interval of the difference.
    pub interval: (f64, f64),
    /// Always-valid p-value (the minimum over looks).
    pub p_value: f64,
    /// Always-valid p-value of the sequential sample ratio check (the minimum over looks).
    pub sample_ratio_p: f64,
    pub outcome: Outcome,
    pub reason: String,
}

/// What a look knows of the experiment besides its arms' figures.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    pub settings: &'a ExperimentSettings,
    pub design: Design,
    /// Share of users in the treatment (ab) or seeing the interleaved list (interleave).
    pub share: f64,
    /// How many times the control's LLM tokens per rerank the treatment arm may cost by
    /// design (before the guardrail's own ratio): [`Design::cost_factor`].
    pub cost_factor: f64,
    /// The decision's p-value at the previous look.
    pub previous_p: f64,
    /// The sample ratio check's p-value at the previous look.
    pub previous_srm_p: f64,
}

/// The tested statistic of a look: difference, its variance, and the users it rests on.
struct Statistic {
    d: f64,
    v: f64,
    /// Whether both sides have the two units a variance needs.
    have_variance: bool,
}

fn statistic(c: &ArmMetrics, t: &ArmMetrics, design: Design) -> Statistic {
    match design {
        Design::Ab => {
            let have_variance = c.users >= 2 && t.users >= 2;
            Statistic {
                d: t.user_click_through - c.user_click_through,
                v: if have_variance {
                    t.user_click_through_var / t.users as f64
                        + c.user_click_through_var / c.users as f64
                } else {
                    0.0
                },
                have_variance,
            }
        }
        Design::Interleave => {
            let m = t.interleaving.clone().unwrap_or_default();
            let n = m.preference_users as f64;
            let have_variance = m.preference_users >= 2;
            // Preferences are mostly +-1 from one request each; a run of the same sign has no
            // sample variance, so one pseudo-deviation of 1 is added (conservative).
            let var = ((n - 1.0) * m.preference_var + 1.0) / n;
            Statistic {
                d: m.preference,
                v: if have_variance { var / n } else { 0.0 },
                have_variance,
            }
        }
    }
}

/// Decides at a look from the two arms (for `interleave`: the control-only users and the
/// interleaved users) and the plan.
pub fn look(control: &ArmMetrics, treatment: &ArmMetrics, plan: &Plan<'_>) -> Look {
    let s = plan.settings;
    let Statistic {
        d,
        v,
        have_variance,
    } = statistic(control, treatment, plan.design);
    let tau = match plan.design {
        Design::Ab => s.tau,
        Design::Interleave => s.preference_tau,
    };
    let tau2 = tau * tau;
    let p_value = if have_variance {
        stats::always_valid_p(plan.previous_p, d, v, tau2)
    } else {
        plan.previous_p
    };
    let hw = stats::confidence_half_width(v, tau2, s.alpha);
    let srm = stats::sequential_srm_p(
        plan.previous_srm_p,
        &[control.users as u64, treatment.users as u64],
        &[1.0 - plan.share, plan.share],
    );
    let (outcome, reason) = decide(control, treatment, plan, d, p_value, srm);
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
    plan: &Plan<'_>,
    d: f64,
    p: f64,
    srm: f64,
) -> (Outcome, String) {
    let s = plan.settings;
    if srm < s.srm_alpha {
        return (
            Outcome::Void,
            format!(
                "sample ratio mismatch: {} control and {} {} users where {:.0}% were planned \
                 (sequential p = {srm:.2e})",
                c.users,
                t.users,
                match plan.design {
                    Design::Ab => "treatment",
                    Design::Interleave => "interleaved",
                },
                100.0 * plan.share
            ),
        );
    }
    if let Some(why) = guardrail(c, t, &s.guardrails, plan.cost_factor) {
        return (Outcome::RollBack, why);
    }
    let team = t.interleaving.clone().unwrap_or_default();
    let (enough, done) = match plan.design {
        Design::Ab => (
            c.users >= s.min_users && t.users >= s.min_users,
            c.users >= s.max_users && t.users >= s.max_users,
        ),
        Design::Interleave => (
            t.users >= s.min_users && team.preference_users >= s.min_preference_users,
            t.users >= s.max_users,
        ),
    };
    if enough && p < s.alpha {
        let what = match plan.design {
            Design::Ab => format!(
                "per-user click-through {:.4} (treatment) vs {:.4} (control), p = {p:.4} < {}",
                t.user_click_through, c.user_click_through, s.alpha
            ),
            Design::Interleave => format!(
                "per-user preference {d:+.4} over {} users ({} wins, {} losses, {} ties), p = {p:.4} < {}",
                team.preference_users, team.wins, team.losses, team.ties, s.alpha
            ),
        };
        return if d > 0.0 {
            (Outcome::Promote, format!("treatment better: {what}"))
        } else {
            (Outcome::KeepControl, format!("treatment worse: {what}"))
        };
    }
    if done {
        return (
            Outcome::Inconclusive,
            format!(
                "{} users {} without a decision (p = {p:.4})",
                s.max_users,
                match plan.design {
                    Design::Ab => "per arm",
                    Design::Interleave => "interleaved",
                }
            ),
        );
    }
    let wait = match (enough, plan.design) {
        (true, _) => format!("p = {p:.4}, not below {}", s.alpha),
        (false, Design::Ab) => format!(
            "{} and {} users of the {} per arm needed before a decision",
            c.users, t.users, s.min_users
        ),
        (false, Design::Interleave) => format!(
            "{} interleaved users of the {} and {} with a preference of the {} needed before \
             a decision",
            t.users, s.min_users, team.preference_users, s.min_preference_users
        ),
    };
    (Outcome::Continue, wait)
}

/// One look in an experiment's history (the console's chart of the p-value and the
/// interval over time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LookPoint {
    pub at: chrono::DateTime<chrono::Utc>,
    /// Users in both arms.
    pub users: usize,
    pub difference: f64,
    /// The always-valid interval (null while unbounded).
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    pub p_value: f64,
    pub sample_ratio_p: f64,
}

impl LookPoint {
    /// The point of a look.
    pub fn of(look: &Look, users: usize, at: chrono::DateTime<chrono::Utc>) -> LookPoint {
        let finite = |x: f64| x.is_finite().then_some(x);
        LookPoint {
            at,
            users,
            difference: look.difference,
            lower: finite(look.interval.0),
            upper: finite(look.interval.1),
            p_value: look.p_value,
            sample_ratio_p: look.sample_ratio_p,
        }
    }
}

/// Most points an experiment's history keeps.
pub const HISTORY_POINTS: usize = 120;

/// Adds a look to a history: a new point once 10 s passed or the users grew by a tenth since
/// the last one (else the newest look replaces the last point); a full history keeps every
/// other point, so it spans the whole experiment in at most `cap` points.
pub fn record_point(history: &mut Vec<LookPoint>, p: LookPoint, cap: usize) {
    let apart = history.last().is_none_or(|last| {
        (p.at - last.at) >= chrono::Duration::seconds(10)
            || p.users >= last.users + (last.users / 10).max(10)
    });
    if !apart {
        history.pop();
    }
    history.push(p);
    if history.len() > cap.max(2) {
        let last = history.len() - 1;
        let mut i = 0;
        history.retain(|_| {
            let keep = i % 2 == 0 || i == last;
            i += 1;
            keep
        });
    }
}

fn guardrail(c: &ArmMetrics, t: &ArmMetrics, g: &Guardrails, cost_factor: f64) -> Option<String> {
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
    let allowed = g.max_tokens_ratio * cost_factor;
    if c.tokens_per_rerank > 0.0 && t.tokens_per_rerank > c.tokens_per_rerank * allowed {
        return Some(format!(
            "guardrail: {:.0} LLM tokens per rerank (treatment) vs {:.0} (control), over {} times{}",
            t.tokens_per_rerank,
            c.tokens_per_rerank,
            g.max_tokens_ratio,
            if cost_factor > 1.0 {
                format!(" the {cost_factor}x an interleaved request costs by design")
            } else {
                String::new()
            }
        ));
    }
    None
}

#[cfg(test)]
mod tests;
