//! The statistics of a look: the mixture sequential probability ratio test (mSPRT; Johari,
//! Pekelis, Walsh 2017, "Always valid inference"), its confidence sequence, and the sample
//! ratio check. Pure functions over counts.

/// The mSPRT likelihood ratio for a difference of means `d` with variance `v`, mixing the
/// alternative over a normal with variance `tau2`:
/// `L = sqrt(v / (v + tau2)) * exp(tau2 d^2 / (2 v (v + tau2)))`.
pub fn msprt_ratio(d: f64, v: f64, tau2: f64) -> f64 {
    if v <= 0.0 || tau2 <= 0.0 || !d.is_finite() {
        return 1.0;
    }
    let exponent = tau2 * d * d / (2.0 * v * (v + tau2));
    (v / (v + tau2)).sqrt() * exponent.min(700.0).exp()
}

/// The always-valid p-value after a look: never above the previous one (`min(p, 1 / L)`).
pub fn always_valid_p(previous: f64, d: f64, v: f64, tau2: f64) -> f64 {
    previous.min(1.0 / msprt_ratio(d, v, tau2)).clamp(0.0, 1.0)
}

/// Half-width of the always-valid (1 - alpha) confidence interval for the difference: the
/// set of differences the mSPRT would not reject,
/// `sqrt(v (v + tau2) / tau2 * (ln((v + tau2) / v) + 2 ln(1 / alpha)))`.
pub fn confidence_half_width(v: f64, tau2: f64, alpha: f64) -> f64 {
    if v <= 0.0 || tau2 <= 0.0 {
        return f64::INFINITY;
    }
    (v * (v + tau2) / tau2 * (((v + tau2) / v).ln() + 2.0 * (1.0 / alpha).ln())).sqrt()
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine terms; relative error below 1e-14).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(π x).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Strength of the Dirichlet prior of the sample-ratio check: its mean is the planned split,
/// its concentration that of 100 observations (most sensitive to shares off by a few points).
pub const SRM_PRIOR: f64 = 100.0;

/// ln of the Bayes factor of the counts under a Dirichlet-multinomial (prior mean `planned`,
/// concentration `prior`) against the multinomial with the planned shares (Lindon and Malek
/// 2022, "Anytime-valid inference for multinomial count data"):
/// `ln Γ(A) - ln Γ(A + n) + Σ [ln Γ(α_i + n_i) - ln Γ(α_i)] - Σ n_i ln p_i`, α = prior × planned.
pub fn srm_log_bayes_factor(counts: &[u64], planned: &[f64], prior: f64) -> f64 {
    let total: f64 = planned.iter().sum();
    if counts.len() != planned.len() || total <= 0.0 || planned.iter().any(|p| *p <= 0.0) {
        return 0.0;
    }
    let n: f64 = counts.iter().map(|c| *c as f64).sum();
    let mut lbf = ln_gamma(prior) - ln_gamma(prior + n);
    for (c, p) in counts.iter().zip(planned) {
        let (c, p) = (*c as f64, p / total);
        let a = prior * p;
        lbf += ln_gamma(a + c) - ln_gamma(a) - c * p.ln();
    }
    lbf
}

/// The sequential sample-ratio check after a look: the always-valid p-value
/// `min(previous, 1 / BF)` from the cumulative counts (users per arm) and the planned shares.
/// O(arms) per look; any number of looks keeps the false alarm rate at the level used.
pub fn sequential_srm_p(previous: f64, counts: &[u64], planned: &[f64]) -> f64 {
    let lbf = srm_log_bayes_factor(counts, planned, SRM_PRIOR);
    previous.min((-lbf).exp()).clamp(0.0, 1.0)
}

/// Mean and sample variance (0 for fewer than two values).
pub fn mean_var(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, var)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_likelihood_ratio_matches_the_formula_by_hand() {
        // d = 0.1, v = 0.001, tau2 = 0.0025: sqrt(0.001 / 0.0035) = 0.534522;
        // exponent 0.0025 * 0.01 / (2 * 0.001 * 0.0035) = 3.571429; e^3.571429 = 35.5674.
        let l = msprt_ratio(0.1, 0.001, 0.0025);
        assert!((l - 0.534_522 * 35.567_4).abs() < 1e-3, "{l}");
        assert!((always_valid_p(1.0, 0.1, 0.001, 0.0025) - 1.0 / l).abs() < 1e-12);
        // No difference: L < 1, the p-value stays at 1; it never rises again once low.
        assert_eq!(always_valid_p(1.0, 0.0, 0.001, 0.0025), 1.0);
        assert_eq!(always_valid_p(0.01, 0.0, 0.001, 0.0025), 0.01);
        assert_eq!(msprt_ratio(0.1, 0.0, 0.0025), 1.0);
    }

    #[test]
    fn the_interval_excludes_zero_exactly_when_the_p_value_is_below_alpha() {
        for (d, v) in [(0.1, 0.001), (0.05, 0.001), (0.2, 0.01), (0.01, 0.0001)] {
            let tau2 = 0.0025;
            let p = always_valid_p(1.0, d, v, tau2);
            let hw = confidence_half_width(v, tau2, 0.05);
            assert_eq!(
                p < 0.05,
                d.abs() > hw,
                "d {d} v {v}: p {p}, half width {hw}"
            );
        }
    }

    #[test]
    fn ln_gamma_matches_known_values() {
        assert!((ln_gamma(1.0)).abs() < 1e-13);
        assert!((ln_gamma(0.5) - 0.572_364_942_924_700_1).abs() < 1e-12);
        assert!((ln_gamma(10.0) - 362_880f64.ln()).abs() < 1e-11);
        assert!((ln_gamma(0.1) - 2.252_712_651_734_206).abs() < 1e-11);
        assert!((ln_gamma(1000.5) - 5_908.674_175_848_678).abs() < 1e-8);
    }

    #[test]
    fn the_sequential_sample_ratio_check_by_hand() {
        // One user: the prior predictive is the planned split itself, BF = 1.
        assert!(srm_log_bayes_factor(&[1, 0], &[0.5, 0.5], 100.0).abs() < 1e-12);
        // Two users in one arm: Γ(100)/Γ(102) · Γ(52)/Γ(50) / 0.5² = 2550 / 10100 / 0.25.
        let bf = srm_log_bayes_factor(&[2, 0], &[0.5, 0.5], 100.0).exp();
        assert!((bf - 2550.0 / 10100.0 / 0.25).abs() < 1e-9, "{bf}");
        // As planned: the evidence is against a mismatch, the p-value stays at 1.
        assert_eq!(sequential_srm_p(1.0, &[500, 500], &[0.5, 0.5]), 1.0);
        assert_eq!(sequential_srm_p(1.0, &[900, 100], &[0.9, 0.1]), 1.0);
        // 900 vs 100 where 50/50 was planned: overwhelming.
        assert!(sequential_srm_p(1.0, &[900, 100], &[0.5, 0.5]) < 1e-50);
        // 600 vs 400 of 1,000 against 50/50: ln BF = 17.099 (by lgamma), p = e^-17.1.
        let lbf = srm_log_bayes_factor(&[600, 400], &[0.5, 0.5], 100.0);
        assert!((lbf - 17.098_940_416).abs() < 1e-6, "{lbf}");
        // Never rises again once low.
        assert_eq!(sequential_srm_p(0.01, &[500, 500], &[0.5, 0.5]), 0.01);
        // Unequal planned weights need not sum to one.
        assert_eq!(
            srm_log_bayes_factor(&[30, 10], &[3.0, 1.0], 100.0),
            srm_log_bayes_factor(&[30, 10], &[0.75, 0.25], 100.0)
        );
    }

    #[test]
    fn the_sequential_sample_ratio_check_rarely_fires_on_a_fair_split() {
        // 200 seeded fair 50/50 streams of 5,000 users, looked at after every user: the
        // always-valid check must fire in at most alpha of them (alpha 0.01 here: <= ~2).
        let mut fired = 0;
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..200 {
            let (mut c, mut p) = ([0u64; 2], 1.0f64);
            for _ in 0..5_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c[(x >> 63) as usize] += 1;
                p = sequential_srm_p(p, &c, &[0.5, 0.5]);
            }
            fired += usize::from(p < 0.01);
        }
        assert!(fired <= 4, "{fired} of 200 fair streams flagged at 0.01");
    }

    #[test]
    fn mean_and_variance() {
        assert_eq!(mean_var(&[]), (0.0, 0.0));
        assert_eq!(mean_var(&[1.0]), (1.0, 0.0));
        let (m, v) = mean_var(&[0.0, 1.0, 1.0, 0.0]);
        assert_eq!(m, 0.5);
        assert!((v - 1.0 / 3.0).abs() < 1e-12);
    }
}
