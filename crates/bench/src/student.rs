//! Student's t for cells with few runs: the distribution (its CDF through the regularized
//! incomplete beta function, and its quantiles), the 95% interval of a cell from the logs
//! of its values, and Welch's test of two cells on the logs of their values. Run times are
//! roughly log-normal (a ratio of noise, not a difference), so the logs are what is
//! averaged. Hand-written because the crate that has the distribution (statrs) pulls in a
//! linear-algebra stack for three functions.

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms: about 15 significant digits).
fn ln_gamma(x: f64) -> f64 {
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
        // Reflection: Γ(x) Γ(1 - x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + G + 0.5;
    let sum = C[1..]
        .iter()
        .enumerate()
        .fold(C[0], |acc, (i, c)| acc + c / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        d = if d.abs() < TINY { TINY } else { d };
        c = 1.0 + aa / c;
        c = if c.abs() < TINY { TINY } else { c };
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function I_x(a, b), 0 <= x <= 1.
fn beta_inc(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

/// P(|T| >= |t|) for T with `df` degrees of freedom (df > 0, may be fractional as in
/// Welch's test): the two-sided p-value of `t`.
pub fn two_sided_p(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return if t.is_nan() { 1.0 } else { 0.0 };
    }
    beta_inc(df / 2.0, 0.5, df / (df + t * t)).clamp(0.0, 1.0)
}

/// The t with P(|T| <= t) = `coverage` for `df` degrees of freedom (0.95 gives the
/// multiplier of a 95% interval): bisection on [`two_sided_p`] to 1e-9.
pub fn critical(coverage: f64, df: f64) -> f64 {
    let alpha = 1.0 - coverage;
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    while two_sided_p(hi, df) > alpha && hi < 1e12 {
        hi *= 2.0;
    }
    while hi - lo > 1e-9 * hi.max(1.0) {
        let mid = 0.5 * (lo + hi);
        if two_sided_p(mid, df) > alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Mean and sample variance of the logs of `v`; None when a value is not positive or
/// there are fewer than 2.
fn log_moments(v: &[f64]) -> Option<(f64, f64)> {
    if v.len() < 2 || v.iter().any(|&x| x <= 0.0 || !x.is_finite()) {
        return None;
    }
    let n = v.len() as f64;
    let mean = v.iter().map(|x| x.ln()).sum::<f64>() / n;
    let var = v.iter().map(|x| (x.ln() - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Some((mean, var))
}

/// The 95% interval of the (geometric) centre of `v` from Student's t on its logs: exp(mean
/// ± t(n-1) · s / sqrt n). None with fewer than 2 values or a value that is not positive.
pub fn log_interval(v: &[f64]) -> Option<(f64, f64)> {
    let (mean, var) = log_moments(v)?;
    let n = v.len() as f64;
    let half = critical(0.95, n - 1.0) * (var / n).sqrt();
    Some(((mean - half).exp(), (mean + half).exp()))
}

/// Welch's two-sample t test on the logs of `a` and `b`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Welch {
    /// exp(mean log a - mean log b): the ratio of geometric means.
    pub ratio: f64,
    /// Its 95% interval.
    pub ratio_ci: (f64, f64),
    /// Two-sided p-value.
    pub p: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
}

/// Welch's test of `a` against `b` on their logs; None when either has fewer than 2 values
/// or a value that is not positive. Two cells without any spread are as different as their
/// values say (p 0 when they differ, 1 when they are equal).
pub fn welch_log(a: &[f64], b: &[f64]) -> Option<Welch> {
    let (ma, va) = log_moments(a)?;
    let (mb, vb) = log_moments(b)?;
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (sa, sb) = (va / na, vb / nb);
    let se2 = sa + sb;
    let diff = ma - mb;
    if se2 <= 0.0 {
        let p = if diff == 0.0 { 1.0 } else { 0.0 };
        let ratio = diff.exp();
        return Some(Welch {
            ratio,
            ratio_ci: (ratio, ratio),
            p,
            df: na + nb - 2.0,
        });
    }
    let df = se2 * se2 / (sa * sa / (na - 1.0) + sb * sb / (nb - 1.0));
    let se = se2.sqrt();
    let half = critical(0.95, df) * se;
    Some(Welch {
        ratio: diff.exp(),
        ratio_ci: ((diff - half).exp(), (diff + half).exp()),
        p: two_sided_p(diff / se, df),
        df,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_values_match_the_tables() {
        // Two-sided 95% points of Student's t (any statistics table).
        for (df, t) in [
            (1.0, 12.706),
            (2.0, 4.303),
            (3.0, 3.182),
            (4.0, 2.776),
            (10.0, 2.228),
            (30.0, 2.042),
        ] {
            let got = critical(0.95, df);
            assert!((got - t).abs() < 0.001, "df {df}: {got} vs {t}");
        }
        // Large df approaches the normal's 1.960.
        assert!((critical(0.95, 1e6) - 1.960).abs() < 0.001);
    }

    #[test]
    fn p_values_match_known_points() {
        // t = 2.0 with 5 df: two-sided p = 0.1019 (scipy.stats.t.sf(2, 5) * 2).
        assert!((two_sided_p(2.0, 5.0) - 0.101_939).abs() < 1e-5);
        // Cauchy (df 1): p = 1 - 2 atan(t) / pi.
        let t = 3.0_f64;
        let cauchy = 1.0 - 2.0 * t.atan() / std::f64::consts::PI;
        assert!((two_sided_p(t, 1.0) - cauchy).abs() < 1e-9);
        assert_eq!(two_sided_p(0.0, 3.0), 1.0);
        assert_eq!(two_sided_p(f64::INFINITY, 3.0), 0.0);
        assert_eq!(two_sided_p(f64::NAN, 3.0), 1.0);
    }

    #[test]
    fn log_intervals_widen_with_few_runs() {
        // logs 0 and ln 1.01: mean 0.004975, s = 0.007036; t(1) = 12.706:
        // half-width 12.706 * 0.007036 / sqrt 2 = 0.0632.
        let (lo, hi) = log_interval(&[1.0, 1.01]).expect("ci");
        let centre = 1.01_f64.sqrt();
        assert!(((hi / centre).ln() - 0.0632).abs() < 1e-3, "{lo} {hi}");
        assert!(((centre / lo).ln() - 0.0632).abs() < 1e-3, "{lo} {hi}");
        // The same spread over 6 runs: t(5) = 2.571, far narrower.
        let six = [1.0, 1.01, 1.0, 1.01, 1.0, 1.01];
        let (lo6, hi6) = log_interval(&six).expect("ci");
        assert!(hi6 / lo6 < (hi / lo).powf(0.2), "{lo6} {hi6}");
        assert_eq!(log_interval(&[2.0, 2.0]), Some((2.0, 2.0)));
        assert!(log_interval(&[1.0]).is_none());
        assert!(log_interval(&[1.0, 0.0]).is_none());
    }

    #[test]
    fn welch_separates_clear_differences_only() {
        // Two tight cells 10% apart: significant with 3 runs each.
        let w = welch_log(&[1.10, 1.101, 1.099], &[1.0, 1.001, 0.999]).expect("welch");
        assert!(w.p < 0.001 && w.ratio_ci.0 > 1.09 && w.ratio_ci.1 < 1.11, "{w:?}");
        assert!(
            (w.df - 4.0).abs() < 0.05,
            "near-equal variances: df near na + nb - 2, {w:?}"
        );
        // Overlapping noisy cells: nothing.
        let w = welch_log(&[1.0, 1.3, 0.9], &[1.1, 0.95, 1.2]).expect("welch");
        assert!(w.p > 0.5 && w.ratio_ci.0 < 1.0 && w.ratio_ci.1 > 1.0, "{w:?}");
        // scipy.stats.ttest_ind(log a, log b, equal_var=False): a = [2,4,8], b = [1,1.1,1.2].
        let w = welch_log(&[2.0, 4.0, 8.0], &[1.0, 1.1, 1.2]).expect("welch");
        let (la, lb) = ([2f64.ln(), 4f64.ln(), 8f64.ln()], [1f64.ln(), 1.1f64.ln(), 1.2f64.ln()]);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / 3.0;
        let var = |v: &[f64]| v.iter().map(|x| (x - mean(v)).powi(2)).sum::<f64>() / 2.0;
        let t = (mean(&la) - mean(&lb)) / (var(&la) / 3.0 + var(&lb) / 3.0).sqrt();
        assert!((w.p - two_sided_p(t, w.df)).abs() < 1e-12);
        assert!(w.df > 2.0 && w.df < 2.1, "one side dominates: df near 2, {w:?}");
        let same = welch_log(&[3.0, 3.0], &[3.0, 3.0]).expect("welch");
        assert_eq!((same.p, same.ratio), (1.0, 1.0));
        assert_eq!(welch_log(&[3.0, 3.0], &[2.0, 2.0]).expect("welch").p, 0.0);
        assert!(welch_log(&[1.0], &[1.0, 2.0]).is_none());
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        for (x, fact) in [(1.0, 1.0), (2.0, 1.0), (5.0, 24.0), (10.0, 362_880.0_f64)] {
            assert!((ln_gamma(x) - fact.ln()).abs() < 1e-10, "{x}");
        }
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-10);
    }
}
