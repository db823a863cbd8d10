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

/// Complementary error function (Abramowitz and Stegun 7.1.26; absolute error below 1.5e-7).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let r = poly * (-z * z).exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// p-value of a chi-square statistic with one degree of freedom.
pub fn chi2_1_p(stat: f64) -> f64 {
    if stat <= 0.0 {
        1.0
    } else {
        erfc((stat / 2.0).sqrt())
    }
}

/// Sample ratio check: p-value that `control` and `treatment` users came from a split giving
/// `share` to the treatment (chi-square, one degree of freedom).
pub fn sample_ratio_p(control: usize, treatment: usize, share: f64) -> f64 {
    let n = (control + treatment) as f64;
    if n == 0.0 || share <= 0.0 || share >= 1.0 {
        return 1.0;
    }
    let (et, ec) = (n * share, n * (1.0 - share));
    let stat = (treatment as f64 - et).powi(2) / et + (control as f64 - ec).powi(2) / ec;
    chi2_1_p(stat)
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
    fn erfc_and_the_sample_ratio_check() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((erfc(1.0) - 0.157_299_2).abs() < 1e-6);
        assert!((erfc(-1.0) - 1.842_700_8).abs() < 1e-6);
        // chi2 = 3.841 -> p = 0.05
        assert!((chi2_1_p(3.841_459) - 0.05).abs() < 1e-4);
        assert!(sample_ratio_p(500, 500, 0.5) > 0.99);
        // 900 vs 100 where 50/50 was asked: chi2 = 640
        assert!(sample_ratio_p(900, 100, 0.5) < 1e-10);
        // 900 vs 100 with a 10% treatment share is exactly as asked
        assert!(sample_ratio_p(900, 100, 0.1) > 0.99);
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
