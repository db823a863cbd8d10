//! Sufficient statistics of an experiment, folded in incrementally: what a look needs of an
//! arm is a handful of sums ([`ArmSums`]), each user's two counts ([`UserCounts`]) and an
//! exact latency histogram (whole milliseconds), so a look costs the same at 1,000 and at
//! 1,000,000 logged requests. Plain code over plain data; `store::experiment_stats` reads the
//! pending rows and writes the sums.
//!
//! A request counts once, with the positives known when it is folded; a positive that arrives
//! later (late feedback) replaces the request's contribution (its first positive rank, its
//! positives) by the new one and moves its user's click-through accordingly. Folding the same
//! traffic in any batches gives the figures of [`super::arm_metrics`] over the whole log.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::interleave::{Credit, Preference, user_preference};
use super::{ArmMetrics, TeamMetrics};

// The arm is part of what this file's types hold (`LoggedRequest::arm`), so it is named here too.
use super::arm::Arm;

/// The sums of one arm; every figure of [`ArmMetrics`] but the latency percentiles is a
/// ratio of these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmSums {
    pub requests: i64,
    /// Distinct positive items over requests.
    pub positives: i64,
    /// Requests whose first positive is in the first k shown.
    pub positive_at_k: i64,
    /// Sum of 1 / (rank of the first positive), 0 for a request without one.
    pub reciprocal_rank_sum: f64,
    pub fallbacks: i64,
    pub llm_calls: f64,
    pub tokens: f64,
    pub users: i64,
    pub users_with_positive: i64,
    /// Sum over users of their click-through (requests with a positive / requests).
    pub user_ctr_sum: f64,
    /// Sum over users of its square.
    pub user_ctr_sq_sum: f64,
    /// Interleaved requests the treatment's team won (more of its items clicked).
    pub wins: i64,
    /// Interleaved requests the control's team won.
    pub losses: i64,
    /// Interleaved requests with clicks on both teams alike.
    pub ties: i64,
    /// Distinct positive items supplied by the control's team.
    pub control_team_clicks: i64,
    /// Distinct positive items supplied by the treatment's team.
    pub treatment_team_clicks: i64,
    /// Users with a non-tie interleaved request.
    pub pref_users: i64,
    /// Sum over those users of their preference, (wins - losses) / (wins + losses).
    pub pref_sum: f64,
    /// Sum over those users of its square.
    pub pref_sq_sum: f64,
}

impl ArmSums {
    /// Adds `d` (a delta from [`fold`]).
    pub fn add(&mut self, d: &ArmSums) {
        self.requests += d.requests;
        self.positives += d.positives;
        self.positive_at_k += d.positive_at_k;
        self.reciprocal_rank_sum += d.reciprocal_rank_sum;
        self.fallbacks += d.fallbacks;
        self.llm_calls += d.llm_calls;
        self.tokens += d.tokens;
        self.users += d.users;
        self.users_with_positive += d.users_with_positive;
        self.user_ctr_sum += d.user_ctr_sum;
        self.user_ctr_sq_sum += d.user_ctr_sq_sum;
        self.wins += d.wins;
        self.losses += d.losses;
        self.ties += d.ties;
        self.control_team_clicks += d.control_team_clicks;
        self.treatment_team_clicks += d.treatment_team_clicks;
        self.pref_users += d.pref_users;
        self.pref_sum += d.pref_sum;
        self.pref_sq_sum += d.pref_sq_sum;
    }

    /// The interleaving figures of an interleaved arm.
    pub fn team_metrics(&self) -> TeamMetrics {
        let (mean, var) = mean_var_of_sums(self.pref_users, self.pref_sum, self.pref_sq_sum);
        TeamMetrics {
            wins: self.wins.max(0) as usize,
            losses: self.losses.max(0) as usize,
            ties: self.ties.max(0) as usize,
            control_clicks: self.control_team_clicks.max(0) as usize,
            treatment_clicks: self.treatment_team_clicks.max(0) as usize,
            preference_users: self.pref_users.max(0) as usize,
            preference: mean,
            preference_var: var,
        }
    }

    /// The arm's figures, with its latency histogram (whole milliseconds -> count).
    pub fn metrics(&self, version: i32, latency: &BTreeMap<i32, i64>) -> ArmMetrics {
        let n = self.requests;
        let per = |x: f64| if n <= 0 { 0.0 } else { x / n as f64 };
        let (user_mean, user_var) =
            mean_var_of_sums(self.users, self.user_ctr_sum, self.user_ctr_sq_sum);
        ArmMetrics {
            version,
            requests: n.max(0) as usize,
            users: self.users.max(0) as usize,
            users_with_positive: self.users_with_positive.max(0) as usize,
            click_through: per(self.positives as f64),
            click_through_at_k: per(self.positive_at_k as f64),
            mrr: per(self.reciprocal_rank_sum),
            fallback_rate: per(self.fallbacks as f64),
            latency_p50_ms: histogram_percentile(latency, 0.5),
            latency_p99_ms: histogram_percentile(latency, 0.99),
            llm_calls_per_rerank: per(self.llm_calls),
            tokens_per_rerank: per(self.tokens),
            user_click_through: user_mean,
            user_click_through_var: user_var,
            interleaving: None,
        }
    }
}

/// Mean and sample variance of `n` values from their sum and sum of squares.
fn mean_var_of_sums(n: i64, sum: f64, sq_sum: f64) -> (f64, f64) {
    let nf = n.max(0) as f64;
    let mean = if n > 0 { sum / nf } else { 0.0 };
    let var = if n >= 2 {
        ((sq_sum - sum * sum / nf) / (nf - 1.0)).max(0.0)
    } else {
        0.0
    };
    (mean, var)
}

/// The value at rank `round((n - 1) p)` of the sorted values a histogram counts (the same
/// rule as [`super::arm_metrics`] over the raw values).
pub fn histogram_percentile(h: &BTreeMap<i32, i64>, p: f64) -> f64 {
    let n: i64 = h.values().sum();
    if n <= 0 {
        return 0.0;
    }
    let target = ((n - 1) as f64 * p).round() as i64;
    let mut seen = 0;
    for (value, count) in h {
        seen += count;
        if seen > target {
            return f64::from(*value);
        }
    }
    h.keys().next_back().map_or(0.0, |v| f64::from(*v))
}

/// A user's counts in one arm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserCounts {
    pub requests: i64,
    pub positive_requests: i64,
    /// Interleaved requests the treatment's team won / lost.
    pub wins: i64,
    pub losses: i64,
}

impl UserCounts {
    fn ctr(self) -> f64 {
        if self.requests > 0 {
            self.positive_requests as f64 / self.requests as f64
        } else {
            0.0
        }
    }
}

/// A logged request of an arm, as the fold reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRequest {
    pub user: String,
    pub arm: Arm,
    /// The order shown.
    pub order: Vec<String>,
    pub fallback: bool,
    pub latency_ms: i32,
    pub llm_calls: f64,
    pub tokens: f64,
    /// Per position of `order`, the team that supplied it (interleaved requests only).
    pub teams: Option<Vec<Option<Arm>>>,
}

/// A positive feedback event on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positive {
    pub feedback_id: i64,
    pub item: String,
}

/// One request with something new to fold: the request itself (first time), or positive
/// events that arrived after it was folded.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub request: LoggedRequest,
    /// Every positive event on it known now.
    pub positives: Vec<Positive>,
    /// True when the request itself was never folded.
    pub new_request: bool,
    /// The positive events not yet folded (a subset of `positives`).
    pub new_feedback: HashSet<i64>,
}

/// What one request contributes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Contribution {
    /// 0-based position, in the order shown, of the first positive item.
    pub first_positive: Option<usize>,
    /// Distinct positive items.
    pub positives: usize,
    /// The teams' credit (interleaved requests only).
    pub credit: Option<Credit>,
}

impl Contribution {
    /// The contribution of a request shown in `order` (with its teams, if interleaved) with
    /// these positive items.
    pub fn of<'a>(
        order: &[String],
        teams: Option<&[Option<Arm>]>,
        items: impl IntoIterator<Item = &'a str>,
    ) -> Contribution {
        let items: HashSet<&str> = items.into_iter().collect();
        Contribution {
            first_positive: order.iter().position(|id| items.contains(id.as_str())),
            positives: items.len(),
            credit: teams.map(|t| Credit::of(order, t, items.iter().copied())),
        }
    }

    /// The preference it states (none for a request that was not interleaved).
    pub fn preference(self) -> Option<Preference> {
        self.credit.map(Credit::preference)
    }

    fn sums(self, k: usize) -> ArmSums {
        let pref = self.preference();
        ArmSums {
            positives: self.positives as i64,
            positive_at_k: i64::from(self.first_positive.is_some_and(|p| p < k)),
            reciprocal_rank_sum: self.first_positive.map_or(0.0, |p| 1.0 / (p + 1) as f64),
            wins: i64::from(pref == Some(Preference::Win)),
            losses: i64::from(pref == Some(Preference::Loss)),
            ties: i64::from(pref == Some(Preference::Tie)),
            control_team_clicks: self.credit.map_or(0, |c| c.control as i64),
            treatment_team_clicks: self.credit.map_or(0, |c| c.treatment as i64),
            ..ArmSums::default()
        }
    }
}

/// A user in one arm.
pub type ArmUser = (Arm, String);

/// The change a batch makes: request-level sums per arm, per-user count changes, latency
/// counts per arm.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// Per arm (control, treatment): the request-level sums to add.
    pub arms: [ArmSums; 2],
    /// (arm, user) -> (requests, requests with a positive) to add.
    pub users: HashMap<ArmUser, UserCounts>,
    /// (arm, latency ms) -> count to add.
    pub latency: HashMap<(Arm, i32), i64>,
}

fn sub(a: ArmSums, b: ArmSums) -> ArmSums {
    ArmSums {
        requests: a.requests - b.requests,
        positives: a.positives - b.positives,
        positive_at_k: a.positive_at_k - b.positive_at_k,
        reciprocal_rank_sum: a.reciprocal_rank_sum - b.reciprocal_rank_sum,
        fallbacks: a.fallbacks - b.fallbacks,
        llm_calls: a.llm_calls - b.llm_calls,
        tokens: a.tokens - b.tokens,
        users: a.users - b.users,
        users_with_positive: a.users_with_positive - b.users_with_positive,
        user_ctr_sum: a.user_ctr_sum - b.user_ctr_sum,
        user_ctr_sq_sum: a.user_ctr_sq_sum - b.user_ctr_sq_sum,
        wins: a.wins - b.wins,
        losses: a.losses - b.losses,
        ties: a.ties - b.ties,
        control_team_clicks: a.control_team_clicks - b.control_team_clicks,
        treatment_team_clicks: a.treatment_team_clicks - b.treatment_team_clicks,
        pref_users: a.pref_users - b.pref_users,
        pref_sum: a.pref_sum - b.pref_sum,
        pref_sq_sum: a.pref_sq_sum - b.pref_sq_sum,
    }
}

/// The request-level change of a batch of pending requests (`k`: the experiment's top k).
pub fn fold(pending: &[Pending], k: usize) -> Delta {
    let mut d = Delta::default();
    for p in pending {
        let r = &p.request;
        let teams = r.teams.as_deref();
        let now = Contribution::of(&r.order, teams, p.positives.iter().map(|x| x.item.as_str()));
        let mut change = now.sums(k);
        let mut before = Contribution::default();
        if p.new_request {
            change.requests = 1;
            change.fallbacks = i64::from(r.fallback);
            change.llm_calls = r.llm_calls;
            change.tokens = r.tokens;
            *d.latency.entry((r.arm, r.latency_ms)).or_default() += 1;
        } else {
            before = Contribution::of(
                &r.order,
                teams,
                p.positives
                    .iter()
                    .filter(|x| !p.new_feedback.contains(&x.feedback_id))
                    .map(|x| x.item.as_str()),
            );
            change = sub(change, before.sums(k));
        }
        let a = &mut d.arms[r.arm.index()];
        a.add(&change);
        let u = d.users.entry((r.arm, r.user.clone())).or_default();
        u.requests += i64::from(p.new_request);
        u.positive_requests +=
            i64::from(now.first_positive.is_some()) - i64::from(before.first_positive.is_some());
        let is = |c: Contribution, want: Preference| i64::from(c.preference() == Some(want));
        u.wins += is(now, Preference::Win) - is(before, Preference::Win);
        u.losses += is(now, Preference::Loss) - is(before, Preference::Loss);
    }
    d
}

/// The user-level part of the change: given each touched user's counts before the batch,
/// returns the sums to add per arm (users, users with a positive, click-through sums) and
/// the users' new counts.
pub fn fold_users(
    changes: &HashMap<ArmUser, UserCounts>,
    before: &HashMap<ArmUser, UserCounts>,
) -> ([ArmSums; 2], Vec<(ArmUser, UserCounts)>) {
    let mut arms = [ArmSums::default(); 2];
    let mut after = Vec::with_capacity(changes.len());
    for (key, change) in changes {
        let old = before.get(key).copied();
        let o = old.unwrap_or_default();
        let n = UserCounts {
            requests: o.requests + change.requests,
            positive_requests: o.positive_requests + change.positive_requests,
            wins: o.wins + change.wins,
            losses: o.losses + change.losses,
        };
        let a = &mut arms[key.0.index()];
        a.users += i64::from(old.is_none() && n.requests > 0);
        a.users_with_positive +=
            i64::from(n.positive_requests > 0) - i64::from(o.positive_requests > 0);
        let (oc, nc) = (o.ctr(), n.ctr());
        a.user_ctr_sum += nc - oc;
        a.user_ctr_sq_sum += nc * nc - oc * oc;
        let (op, np) = (
            user_preference(o.wins, o.losses),
            user_preference(n.wins, n.losses),
        );
        a.pref_users += i64::from(np.is_some()) - i64::from(op.is_some());
        let (op, np) = (op.unwrap_or(0.0), np.unwrap_or(0.0));
        a.pref_sum += np - op;
        a.pref_sq_sum += np * np - op * op;
        after.push((key.clone(), n));
    }
    (arms, after)
}

#[cfg(test)]
mod tests {
    use super::super::{Observed, arm_metrics};
    use super::*;

    /// A deterministic generator (xorshift), so the test needs no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// In-memory stand-in for the stored state: arm sums, users, latency histograms.
    #[derive(Default)]
    struct Store {
        arms: [ArmSums; 2],
        users: HashMap<(Arm, String), UserCounts>,
        latency: [BTreeMap<i32, i64>; 2],
    }

    impl Store {
        fn apply(&mut self, pending: &[Pending], k: usize) {
            let d = fold(pending, k);
            let (user_sums, after) = fold_users(&d.users, &self.users);
            for arm in Arm::BOTH {
                self.arms[arm.index()].add(&d.arms[arm.index()]);
                self.arms[arm.index()].add(&user_sums[arm.index()]);
            }
            for (key, counts) in after {
                self.users.insert(key, counts);
            }
            for ((arm, ms), n) in d.latency {
                *self.latency[arm.index()].entry(ms).or_default() += n;
            }
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    fn assert_same(a: &ArmMetrics, b: &ArmMetrics) {
        assert_eq!(
            (a.version, a.requests, a.users, a.users_with_positive),
            (b.version, b.requests, b.users, b.users_with_positive)
        );
        for (name, x, y) in [
            ("click_through", a.click_through, b.click_through),
            ("ctr@k", a.click_through_at_k, b.click_through_at_k),
            ("mrr", a.mrr, b.mrr),
            ("fallback", a.fallback_rate, b.fallback_rate),
            ("p50", a.latency_p50_ms, b.latency_p50_ms),
            ("p99", a.latency_p99_ms, b.latency_p99_ms),
            ("calls", a.llm_calls_per_rerank, b.llm_calls_per_rerank),
            ("tokens", a.tokens_per_rerank, b.tokens_per_rerank),
            ("user ctr", a.user_click_through, b.user_click_through),
            (
                "user var",
                a.user_click_through_var,
                b.user_click_through_var,
            ),
        ] {
            assert!(close(x, y), "{name}: {x} vs {y}");
        }
        assert_eq!(a.interleaving.is_some(), b.interleaving.is_some());
        if let (Some(x), Some(y)) = (&a.interleaving, &b.interleaving) {
            assert_eq!(
                (
                    x.wins,
                    x.losses,
                    x.ties,
                    x.control_clicks,
                    x.treatment_clicks
                ),
                (
                    y.wins,
                    y.losses,
                    y.ties,
                    y.control_clicks,
                    y.treatment_clicks
                )
            );
            assert_eq!(x.preference_users, y.preference_users);
            assert!(close(x.preference, y.preference), "{x:?} vs {y:?}");
            assert!(close(x.preference_var, y.preference_var), "{x:?} vs {y:?}");
        }
    }

    #[test]
    fn folding_in_any_batches_with_late_feedback_equals_the_whole_log() {
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let k = 3;
            // Requests with their eventual positives (feedback ids ascending).
            let mut requests = Vec::new();
            let mut next_feedback = 1i64;
            for _ in 0..(50 + rng.below(200)) {
                let order: Vec<String> = (0..6)
                    .map(|i| format!("i{}", rng.below(10) * 10 + i))
                    .collect();
                let mut positives = Vec::new();
                for _ in 0..rng.below(4) {
                    positives.push(Positive {
                        feedback_id: next_feedback,
                        item: order[rng.below(6) as usize].clone(),
                    });
                    next_feedback += 1;
                }
                let arm = if rng.below(2) == 0 {
                    Arm::Control
                } else {
                    Arm::Treatment
                };
                // The treatment arm's requests are interleaved: a team per position.
                let teams = (arm == Arm::Treatment).then(|| {
                    (0..6)
                        .map(|_| Some(Arm::BOTH[rng.below(2) as usize]))
                        .collect::<Vec<_>>()
                });
                requests.push((
                    LoggedRequest {
                        user: format!("u{}", rng.below(30)),
                        arm,
                        order,
                        fallback: rng.below(10) == 0,
                        latency_ms: 1 + rng.below(40) as i32,
                        llm_calls: rng.below(3) as f64,
                        tokens: rng.below(500) as f64,
                        teams,
                    },
                    positives,
                ));
            }
            // Each event (a request, or one of its positives after it) becomes visible at a
            // random step; a batch folds what became visible since the last one.
            let steps = 1 + rng.below(8);
            let mut request_step = Vec::new();
            let mut feedback_step: HashMap<i64, u64> = HashMap::new();
            for (_, positives) in &requests {
                let s = rng.below(steps);
                request_step.push(s);
                for p in positives {
                    feedback_step.insert(p.feedback_id, s + rng.below(steps - s + 1));
                }
            }
            let mut store = Store::default();
            for step in 0..=steps {
                let mut pending = Vec::new();
                for (i, (req, positives)) in requests.iter().enumerate() {
                    if request_step[i] > step {
                        continue;
                    }
                    let known: Vec<Positive> = positives
                        .iter()
                        .filter(|p| feedback_step[&p.feedback_id] <= step)
                        .cloned()
                        .collect();
                    let new_request = request_step[i] == step;
                    let new_feedback: HashSet<i64> = known
                        .iter()
                        .filter(|p| feedback_step[&p.feedback_id] == step)
                        .map(|p| p.feedback_id)
                        .collect();
                    if new_request || !new_feedback.is_empty() {
                        pending.push(Pending {
                            request: req.clone(),
                            positives: known,
                            new_request,
                            new_feedback,
                        });
                    }
                }
                store.apply(&pending, k);
            }
            // The whole log, as `arm_metrics` sees it.
            let observed: Vec<Observed> = requests
                .iter()
                .map(|(r, positives)| {
                    let c = Contribution::of(
                        &r.order,
                        r.teams.as_deref(),
                        positives.iter().map(|p| p.item.as_str()),
                    );
                    Observed {
                        user: r.user.clone(),
                        treatment: r.arm == Arm::Treatment,
                        first_positive: c.first_positive,
                        positives: c.positives,
                        fallback: r.fallback,
                        latency_ms: f64::from(r.latency_ms),
                        llm_calls: r.llm_calls,
                        tokens: r.tokens,
                        credit: c.credit,
                    }
                })
                .collect();
            for arm in Arm::BOTH {
                let of_arm: Vec<&Observed> = observed
                    .iter()
                    .filter(|o| o.treatment == (arm == Arm::Treatment))
                    .collect();
                let whole = arm_metrics(7, &of_arm, k);
                let sums = &store.arms[arm.index()];
                let mut folded = sums.metrics(7, &store.latency[arm.index()]);
                if arm == Arm::Treatment {
                    folded.interleaving = Some(sums.team_metrics());
                }
                assert_same(&folded, &whole);
            }
        }
    }

    #[test]
    fn a_late_positive_moves_the_first_rank_and_the_users_click_through() {
        let order: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let req = LoggedRequest {
            user: "u".into(),
            arm: Arm::Treatment,
            order,
            fallback: false,
            latency_ms: 5,
            llm_calls: 1.0,
            tokens: 10.0,
            teams: None,
        };
        let mut store = Store::default();
        let p = |id: i64, item: &str| Positive {
            feedback_id: id,
            item: item.into(),
        };
        store.apply(
            &[Pending {
                request: req.clone(),
                positives: vec![p(1, "c")],
                new_request: true,
                new_feedback: HashSet::from([1]),
            }],
            2,
        );
        let t = store.arms[1];
        assert_eq!((t.requests, t.positives, t.positive_at_k), (1, 1, 0));
        assert!((t.reciprocal_rank_sum - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!((t.users, t.users_with_positive), (1, 1));
        // "a" clicked later: the first positive is now at rank 1, two positives.
        store.apply(
            &[Pending {
                request: req,
                positives: vec![p(1, "c"), p(2, "a")],
                new_request: false,
                new_feedback: HashSet::from([2]),
            }],
            2,
        );
        let t = store.arms[1];
        assert_eq!((t.requests, t.positives, t.positive_at_k), (1, 2, 1));
        assert!((t.reciprocal_rank_sum - 1.0).abs() < 1e-12);
        assert_eq!((t.users, t.users_with_positive), (1, 1));
        assert!((t.user_ctr_sum - 1.0).abs() < 1e-12);
        assert_eq!(store.arms[0], ArmSums::default());
    }

    #[test]
    fn percentiles_of_a_histogram_match_the_sorted_values() {
        let values = [5, 1, 9, 9, 3, 7, 7, 7, 2, 100];
        let mut h = BTreeMap::new();
        for v in values {
            *h.entry(v).or_insert(0i64) += 1;
        }
        let mut sorted: Vec<i32> = values.to_vec();
        sorted.sort();
        for p in [0.0, 0.1, 0.5, 0.9, 0.99, 1.0] {
            let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
            assert_eq!(histogram_percentile(&h, p), f64::from(sorted[idx]), "p {p}");
        }
        assert_eq!(histogram_percentile(&BTreeMap::new(), 0.5), 0.0);
    }
}
