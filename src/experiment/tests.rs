use rand::{Rng, SeedableRng};

use super::*;

fn obs(user: &str, treatment: bool, first: Option<usize>) -> Observed {
    Observed {
        user: user.into(),
        treatment,
        first_positive: first,
        positives: usize::from(first.is_some()),
        fallback: false,
        latency_ms: 10.0,
        llm_calls: 1.0,
        tokens: 100.0,
        credit: None,
    }
}

/// A look at an A/B experiment.
fn ab(c: &ArmMetrics, t: &ArmMetrics, s: &ExperimentSettings, share: f64, previous_p: f64) -> Look {
    look(
        c,
        t,
        &Plan {
            settings: s,
            design: Design::Ab,
            share,
            cost_factor: 1.0,
            previous_p,
            previous_srm_p: 1.0,
        },
    )
}

#[test]
fn arm_figures_from_hand_counted_requests() {
    // u1: 2 requests, one with a positive at position 0; u2: 1 request, positive at 11 (outside
    // the top 10); u3: 1 request, none, a fallback at 40 ms.
    let mut rows = [
        obs("u1", false, Some(0)),
        obs("u1", false, None),
        obs("u2", false, Some(11)),
        obs("u3", false, None),
    ];
    rows[3].fallback = true;
    rows[3].latency_ms = 40.0;
    rows[3].tokens = 0.0;
    let refs: Vec<&Observed> = rows.iter().collect();
    let m = arm_metrics(1, &refs, 10);
    assert_eq!((m.requests, m.users, m.users_with_positive), (4, 3, 2));
    assert_eq!(m.click_through, 0.5);
    assert_eq!(m.click_through_at_k, 0.25);
    // (1 + 1/12) / 4
    assert!((m.mrr - (1.0 + 1.0 / 12.0) / 4.0).abs() < 1e-12);
    assert_eq!(m.fallback_rate, 0.25);
    assert_eq!(m.latency_p50_ms, 10.0);
    assert_eq!(m.latency_p99_ms, 40.0);
    assert_eq!(m.tokens_per_rerank, 75.0);
    // per-user click-through 0.5, 1, 0: mean 0.5, variance 0.25
    assert_eq!(m.user_click_through, 0.5);
    assert!((m.user_click_through_var - 0.25).abs() < 1e-12);
}

fn arm(users: usize, mean: f64, var: f64) -> ArmMetrics {
    ArmMetrics {
        version: 1,
        requests: users * 2,
        users,
        user_click_through: mean,
        user_click_through_var: var,
        latency_p99_ms: 100.0,
        tokens_per_rerank: 500.0,
        ..Default::default()
    }
}

#[test]
fn decisions_on_hand_computed_counts() {
    let s = ExperimentSettings::default();
    // 500 users per arm, per-user CTR 0.40 vs 0.50 with variance 0.2 each:
    // v = 0.2/500 + 0.2/500 = 0.0008, tau2 = 0.0025, d = 0.1:
    // L = sqrt(0.0008/0.0033) exp(0.0025 * 0.01 / (2 * 0.0008 * 0.0033)) = 0.49237 * e^4.73485
    let (c, t) = (arm(500, 0.40, 0.2), arm(500, 0.50, 0.2));
    let l: f64 = (0.0008f64 / 0.0033).sqrt() * (0.0025f64 * 0.01 / (2.0 * 0.0008 * 0.0033)).exp();
    let got = ab(&c, &t, &s, 0.5, 1.0);
    assert!((got.p_value - 1.0 / l).abs() < 1e-9, "{got:?}");
    assert!(got.p_value < 0.05);
    assert_eq!(got.outcome, Outcome::Promote, "{}", got.reason);
    assert!(got.interval.0 > 0.0 && got.interval.1 > 0.1);
    // The other way round: keep the control.
    assert_eq!(ab(&t, &c, &s, 0.5, 1.0).outcome, Outcome::KeepControl);
    // The same difference with 60 users per arm: below min_users, continue.
    let early = ab(&arm(60, 0.4, 0.2), &arm(60, 0.5, 0.2), &s, 0.5, 1.0);
    assert_eq!(early.outcome, Outcome::Continue);
    assert!(
        early.reason.contains("60 and 60 users of the 100"),
        "{}",
        early.reason
    );
    // No difference: the p-value stays, continue; at max_users: inconclusive.
    let same = ab(&c, &arm(500, 0.40, 0.2), &s, 0.5, 1.0);
    assert_eq!((same.outcome, same.p_value), (Outcome::Continue, 1.0));
    let capped = ExperimentSettings {
        max_users: 500,
        ..ExperimentSettings::default()
    };
    assert_eq!(
        ab(&c, &arm(500, 0.40, 0.2), &capped, 0.5, 1.0).outcome,
        Outcome::Inconclusive
    );
    // A low p-value from an earlier look stands (always valid: the minimum over looks).
    assert_eq!(
        ab(&c, &arm(500, 0.41, 0.2), &s, 0.5, 0.01).outcome,
        Outcome::Promote
    );
}

#[test]
fn guardrails_roll_back_at_once() {
    let s = ExperimentSettings::default();
    let c = arm(60, 0.4, 0.2);
    let mut t = arm(60, 0.6, 0.2);
    t.fallback_rate = 0.08;
    let got = ab(&c, &t, &s, 0.5, 1.0);
    assert_eq!(got.outcome, Outcome::RollBack);
    assert!(got.reason.contains("fallback rate"), "{}", got.reason);
    let mut t = arm(60, 0.6, 0.2);
    t.latency_p99_ms = 250.0;
    assert!(ab(&c, &t, &s, 0.5, 1.0).reason.contains("p99 latency"));
    let mut t = arm(60, 0.6, 0.2);
    t.tokens_per_rerank = 800.0;
    assert!(
        ab(&c, &t, &s, 0.5, 1.0)
            .reason
            .contains("tokens per rerank")
    );
    // Below min_requests no guardrail is checked.
    let mut small = arm(10, 0.6, 0.2);
    small.fallback_rate = 1.0;
    assert_eq!(
        ab(&arm(10, 0.4, 0.2), &small, &s, 0.5, 1.0).outcome,
        Outcome::Continue
    );
}

#[test]
fn a_sample_ratio_mismatch_voids_the_result() {
    let s = ExperimentSettings::default();
    // 10% asked for the treatment, 50% arrived.
    let got = ab(&arm(500, 0.4, 0.2), &arm(500, 0.6, 0.2), &s, 0.1, 1.0);
    assert_eq!(got.outcome, Outcome::Void);
    assert!(got.reason.contains("sample ratio mismatch"));
}

/// Simulated users with two requests each, clicking with probability `p` per request (the
/// decision only sees per-user click-through), looked at every 20 users per arm up to `max`
/// users per arm.
fn run(seed: u64, p_control: f64, p_treatment: f64, max: usize) -> Outcome {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let s = ExperimentSettings {
        min_users: 100,
        max_users: max,
        ..ExperimentSettings::default()
    };
    let (mut c, mut t): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let mut p_prev = 1.0;
    let arm_of = |ctr: &[f64]| {
        let (mean, var) = stats::mean_var(ctr);
        arm(ctr.len(), mean, var)
    };
    loop {
        for (values, p) in [(&mut c, p_control), (&mut t, p_treatment)] {
            for _ in 0..20 {
                let clicks = (0..2).filter(|_| rng.random::<f64>() < p).count();
                values.push(clicks as f64 / 2.0);
            }
        }
        let got = ab(&arm_of(&c), &arm_of(&t), &s, 0.5, p_prev);
        p_prev = got.p_value;
        if got.outcome != Outcome::Continue {
            return got.outcome;
        }
    }
}

#[test]
fn aa_runs_rarely_promote_and_a_real_lift_is_found() {
    let aa: Vec<Outcome> = (0..200).map(|seed| run(seed, 0.4, 0.4, 2000)).collect();
    let promoted = aa.iter().filter(|o| **o == Outcome::Promote).count();
    let decided = aa
        .iter()
        .filter(|o| matches!(o, Outcome::Promote | Outcome::KeepControl))
        .count();
    assert!(
        decided <= 10,
        "{decided} of 200 A/A runs decided (alpha 0.05)"
    );
    assert!(promoted <= 5, "{promoted} of 200 A/A runs promoted");
    // +20% relative (0.40 -> 0.48): most runs promote within 2,000 users per arm.
    let lift: Vec<Outcome> = (0..50)
        .map(|seed| run(1000 + seed, 0.4, 0.48, 2000))
        .collect();
    let promoted = lift.iter().filter(|o| **o == Outcome::Promote).count();
    assert!(
        promoted >= 35,
        "{promoted} of 50 runs with a 20% lift promoted"
    );
    assert!(!lift.contains(&Outcome::KeepControl));
}

fn interleaved_arm(users: usize, pref_users: usize, pref: f64, var: f64) -> ArmMetrics {
    ArmMetrics {
        interleaving: Some(TeamMetrics {
            preference_users: pref_users,
            preference: pref,
            preference_var: var,
            ..TeamMetrics::default()
        }),
        ..arm(users, 0.3, 0.2)
    }
}

fn interleave_look(c: &ArmMetrics, t: &ArmMetrics, s: &ExperimentSettings, prev: f64) -> Look {
    look(
        c,
        t,
        &Plan {
            settings: s,
            design: Design::Interleave,
            share: 0.5,
            cost_factor: 2.0,
            previous_p: prev,
            previous_srm_p: 1.0,
        },
    )
}

#[test]
fn interleaved_decisions_on_hand_computed_preferences() {
    let s = ExperimentSettings::default();
    // preference_tau 0.2 (tau2 = 0.04). 200 users with a preference, mean 0.1, variance 0.5;
    // with the pseudo-deviation the variance is (199 * 0.5 + 1) / 200 = 0.5025, v = 0.0025125;
    // L = sqrt(0.0025125 / 0.0425125) exp(0.04 * 0.01 / (2 * 0.0025125 * 0.0425125))
    //   = 0.243105 * e^1.872437 = 1.581189; p = 0.632435.
    let c = arm(300, 0.3, 0.2);
    let got = interleave_look(&c, &interleaved_arm(300, 200, 0.1, 0.5), &s, 1.0);
    assert!((got.p_value - 0.632_435).abs() < 1e-6, "{got:?}");
    assert_eq!(got.outcome, Outcome::Continue, "{}", got.reason);
    assert_eq!(got.difference, 0.1);
    // Mean 0.2 with variance 0.25 over 400 users: (399 * 0.25 + 1) / 400 = 0.251875,
    // v = 0.000629688; L = sqrt(v / (v + 0.04)) e^(0.04 * 0.04 / (2 v (v + 0.04)))
    //   = 0.124492 e^31.269536.
    let got = interleave_look(&c, &interleaved_arm(300, 400, 0.2, 0.25), &s, 1.0);
    let l = 0.124_491_814f64 * 31.269_535_706f64.exp();
    assert!((got.p_value * l - 1.0).abs() < 1e-6, "{got:?}");
    assert_eq!(got.outcome, Outcome::Promote, "{}", got.reason);
    assert!(
        got.reason
            .contains("per-user preference +0.2000 over 400 users"),
        "{}",
        got.reason
    );
    assert!(got.interval.0 > 0.0);
    let got = interleave_look(&c, &interleaved_arm(300, 400, -0.2, 0.25), &s, 1.0);
    assert_eq!(got.outcome, Outcome::KeepControl, "{}", got.reason);
    // A run of one sign has no sample variance: the pseudo-deviation still gives a test.
    let got = interleave_look(&c, &interleaved_arm(300, 40, 1.0, 0.0), &s, 1.0);
    assert_eq!(got.outcome, Outcome::Promote, "{}", got.reason);
    // Too few users with a preference, or too few interleaved users: wait, whatever the p.
    let got = interleave_look(&c, &interleaved_arm(300, 20, 0.9, 0.1), &s, 1.0);
    assert_eq!(got.outcome, Outcome::Continue);
    assert!(
        got.reason
            .contains("300 interleaved users of the 100 and 20 with a preference of the 30"),
        "{}",
        got.reason
    );
    let few = arm(60, 0.3, 0.2);
    let got = interleave_look(&few, &interleaved_arm(60, 40, 0.9, 0.1), &s, 1.0);
    assert_eq!(got.outcome, Outcome::Continue, "{}", got.reason);
    // max_users counts interleaved users.
    let capped = ExperimentSettings {
        max_users: 300,
        ..ExperimentSettings::default()
    };
    assert_eq!(
        interleave_look(&c, &interleaved_arm(300, 250, 0.0, 0.5), &capped, 1.0).outcome,
        Outcome::Inconclusive
    );
}

#[test]
fn the_token_guardrail_allows_what_interleaving_costs_by_design() {
    let s = ExperimentSettings::default();
    let c = arm(300, 0.3, 0.2);
    // 500 tokens for the control alone; two rankings cost twice: allowed up to 2 x 1.5.
    let mut t = interleaved_arm(300, 10, 0.0, 0.5);
    t.tokens_per_rerank = 1400.0;
    assert_eq!(interleave_look(&c, &t, &s, 1.0).outcome, Outcome::Continue);
    t.tokens_per_rerank = 1600.0;
    let got = interleave_look(&c, &t, &s, 1.0);
    assert_eq!(got.outcome, Outcome::RollBack);
    assert!(
        got.reason.contains("the 2x an interleaved request costs"),
        "{}",
        got.reason
    );
    assert_eq!(Design::Interleave.cost_factor("p_gen"), 2.0);
    assert_eq!(Design::Interleave.cost_factor("blend"), 1.0);
    assert_eq!(Design::Ab.cost_factor("p_gen"), 1.0);
}

/// Simulated interleaved users: each request's clicks favour the treatment with probability
/// `win`, the control with `loss`, else none; `n` users with a request each per round, looked
/// at every round.
fn run_interleaved(seed: u64, win: f64, loss: f64, max: usize) -> Outcome {
    use interleave::{Credit, user_preference};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let s = ExperimentSettings {
        min_users: 100,
        max_users: max,
        ..ExperimentSettings::default()
    };
    let mut users: Vec<(i64, i64)> = Vec::new();
    let mut p_prev = 1.0;
    let c = arm(100, 0.3, 0.2);
    loop {
        for _ in 0..20 {
            let mut u = (0, 0);
            for _ in 0..2 {
                let x: f64 = rng.random();
                if x < win {
                    u.0 += 1;
                } else if x < win + loss {
                    u.1 += 1;
                }
            }
            users.push(u);
        }
        let prefs: Vec<f64> = users
            .iter()
            .filter_map(|(w, l)| user_preference(*w, *l))
            .collect();
        let (mean, var) = stats::mean_var(&prefs);
        let t = interleaved_arm(users.len(), prefs.len(), mean, var);
        let _ = Credit::default();
        let got = look(
            &ArmMetrics {
                users: users.len(),
                ..c.clone()
            },
            &t,
            &Plan {
                settings: &s,
                design: Design::Interleave,
                share: 0.5,
                cost_factor: 1.0,
                previous_p: p_prev,
                previous_srm_p: 1.0,
            },
        );
        p_prev = got.p_value;
        if got.outcome != Outcome::Continue {
            return got.outcome;
        }
    }
}

#[test]
fn interleaved_aa_runs_rarely_decide_and_a_preference_is_found() {
    let aa: Vec<Outcome> = (0..200)
        .map(|seed| run_interleaved(seed, 0.2, 0.2, 2000))
        .collect();
    let decided = aa
        .iter()
        .filter(|o| matches!(o, Outcome::Promote | Outcome::KeepControl))
        .count();
    assert!(
        decided <= 10,
        "{decided} of 200 interleaved A/A runs decided"
    );
    let lift: Vec<Outcome> = (0..50)
        .map(|seed| run_interleaved(500 + seed, 0.24, 0.2, 2000))
        .collect();
    let promoted = lift.iter().filter(|o| **o == Outcome::Promote).count();
    assert!(
        promoted >= 35,
        "{promoted} of 50 runs with wins 0.24 vs losses 0.2 promoted"
    );
    assert!(!lift.contains(&Outcome::KeepControl));
}

#[test]
fn the_history_keeps_a_bounded_trace_of_the_looks() {
    let t0 = chrono::DateTime::<chrono::Utc>::from_timestamp(1_700_000_000, 0).unwrap();
    let point = |secs: i64, users: usize| LookPoint {
        at: t0 + chrono::Duration::seconds(secs),
        users,
        difference: 0.0,
        lower: None,
        upper: None,
        p_value: 1.0,
        sample_ratio_p: 1.0,
    };
    let mut h = Vec::new();
    record_point(&mut h, point(0, 0), 8);
    // 2 s later, 5 more users: replaces the last point.
    record_point(&mut h, point(2, 5), 8);
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].users, 5);
    // 10 s later: a new point; 1 s later but 20 more users: a new point too.
    record_point(&mut h, point(12, 6), 8);
    record_point(&mut h, point(13, 26), 8);
    assert_eq!(
        h.iter().map(|p| p.users).collect::<Vec<_>>(),
        vec![5, 6, 26]
    );
    for i in 0..100 {
        record_point(&mut h, point(100 + 10 * i, 30 + i as usize), 8);
        assert!(h.len() <= 8);
        assert!(h.windows(2).all(|w| w[0].at < w[1].at));
    }
    // The first and the newest look are kept.
    assert_eq!(h[0].users, 5);
    assert_eq!(h.last().unwrap().users, 129);
}
