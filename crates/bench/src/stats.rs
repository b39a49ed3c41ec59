//! The statistics behind "results a reader can trust": a seeded RNG, the median and its
//! bootstrap 95% interval, the interval of a ratio of medians, the Mann-Whitney U test
//! (two-sided; exact without ties, normal approximation with tie correction otherwise)
//! and the rule for how many digits an interval supports. Cells with fewer than
//! [`FEW_RUNS`] runs get Student's t on the logs instead (`student.rs`).

use crate::student;

/// Bootstrap resamples per interval.
pub const RESAMPLES: usize = 2000;

/// A small, reproducible RNG (SplitMix64): the bench's round order and bootstrap
/// resamples follow from `--seed`, so one seed and one set of samples give one report.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator for one named stream (a cell), independent of the order streams are used in.
    pub fn for_stream(seed: u64, name: &str) -> Self {
        // FNV-1a of the name, mixed with the seed.
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Self(seed ^ h)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform index below `n` (> 0).
    pub fn below(&mut self, n: usize) -> usize {
        // Lemire's multiply-shift; the bias for n << 2^64 is negligible here.
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Shuffles `v` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// The median of `v` (None when empty).
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// The `q` quantile (0..=1) of sorted `s` by linear interpolation.
fn quantile(s: &[f64], q: f64) -> f64 {
    let pos = q * (s.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    match s.get(i + 1) {
        Some(&next) => s[i] + (next - s[i]) * frac,
        None => s[i],
    }
}

fn resample_median(v: &[f64], rng: &mut Rng, scratch: &mut Vec<f64>) -> f64 {
    scratch.clear();
    scratch.extend((0..v.len()).map(|_| v[rng.below(v.len())]));
    scratch.sort_by(f64::total_cmp);
    let n = scratch.len();
    if n % 2 == 1 {
        scratch[n / 2]
    } else {
        (scratch[n / 2 - 1] + scratch[n / 2]) / 2.0
    }
}

/// Below this many runs in a cell, its interval and any test with it use Student's t on the
/// logs of the values (`student::log_interval`, `student::welch_log`), which assume
/// roughly log-normal run-to-run noise; from this many, the distribution-free bootstrap of
/// the median and Mann-Whitney. A percentile bootstrap cannot reach 95% with fewer: the
/// range of 5 values holds the median with 94% (1 - 2/2^5), of 3 values with 75%, and 3
/// against 3 the smallest Mann-Whitney p is 0.1.
pub const FEW_RUNS: usize = 6;

/// How a cell's interval (or a comparison's test) was computed.
pub fn method(runs: usize) -> &'static str {
    if runs < FEW_RUNS {
        "t-log"
    } else {
        "bootstrap"
    }
}

/// A cell's 95% interval: Student's t on the logs below [`FEW_RUNS`] values, else the
/// bootstrap of the median. None with fewer than 2 values (or, below [`FEW_RUNS`], a value
/// that is not positive).
pub fn interval(v: &[f64], rng: &mut Rng) -> Option<(f64, f64)> {
    if v.len() < FEW_RUNS {
        student::log_interval(v)
    } else {
        median_ci(v, rng)
    }
}

/// The 95% percentile-bootstrap interval of the median of `v`; None with fewer than 2 values.
pub fn median_ci(v: &[f64], rng: &mut Rng) -> Option<(f64, f64)> {
    if v.len() < 2 {
        return None;
    }
    let mut scratch = Vec::with_capacity(v.len());
    let mut meds: Vec<f64> = (0..RESAMPLES).map(|_| resample_median(v, rng, &mut scratch)).collect();
    meds.sort_by(f64::total_cmp);
    Some((quantile(&meds, 0.025), quantile(&meds, 0.975)))
}

/// The 95% bootstrap interval of median(`a`) / median(`b`), each resampled on its own;
/// None when either has fewer than 2 values or a resampled median of `b` is not positive.
pub fn ratio_ci(a: &[f64], b: &[f64], rng: &mut Rng) -> Option<(f64, f64)> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let mut scratch = Vec::with_capacity(a.len().max(b.len()));
    let mut ratios = Vec::with_capacity(RESAMPLES);
    for _ in 0..RESAMPLES {
        let num = resample_median(a, rng, &mut scratch);
        let den = resample_median(b, rng, &mut scratch);
        if den <= 0.0 {
            return None;
        }
        ratios.push(num / den);
    }
    ratios.sort_by(f64::total_cmp);
    Some((quantile(&ratios, 0.025), quantile(&ratios, 0.975)))
}

/// The interval's larger distance from `center`, relative to it (0.03: +-3%).
pub fn relative_half_width(center: f64, ci: (f64, f64)) -> f64 {
    if center <= 0.0 {
        return f64::INFINITY;
    }
    (center - ci.0).max(ci.1 - center) / center
}

/// The outcome of a two-sided Mann-Whitney U test of `x` against `y`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MannWhitney {
    /// U of `x`: the number of (x, y) pairs with x > y, ties counting half.
    pub u: f64,
    /// Two-sided p-value.
    pub p: f64,
    /// Whether `p` is exact (no ties, small samples) or the normal approximation.
    pub exact: bool,
}

/// Samples at most this large (together) get the exact distribution of U.
const EXACT_MAX: usize = 60;

/// The two-sided Mann-Whitney U test of `x` against `y` (as scipy's `mannwhitneyu`,
/// `method="auto"`: exact without ties and with small samples, else the normal
/// approximation with tie and continuity corrections). None when either is empty.
pub fn mann_whitney(x: &[f64], y: &[f64]) -> Option<MannWhitney> {
    let (m, n) = (x.len(), y.len());
    if m == 0 || n == 0 {
        return None;
    }
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|&v| (v, true))
        .chain(y.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Mid-ranks, and the tie term sum(t^3 - t).
    let (mut rank_x, mut ties, mut i) = (0.0, 0.0, 0);
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        rank_x += rank * all[i..=j].iter().filter(|e| e.1).count() as f64;
        i = j + 1;
    }
    let (mf, nf) = (m as f64, n as f64);
    let u = rank_x - mf * (mf + 1.0) / 2.0;
    if ties == 0.0 && m + n <= EXACT_MAX {
        let counts = u_distribution(m, n);
        let total: f64 = counts.iter().sum();
        let k = u.round() as usize;
        let le: f64 = counts[..=k].iter().sum::<f64>() / total;
        let ge: f64 = counts[k..].iter().sum::<f64>() / total;
        return Some(MannWhitney {
            u,
            p: (2.0 * le.min(ge)).min(1.0),
            exact: true,
        });
    }
    let big_n = mf + nf;
    let var = mf * nf / 12.0 * ((big_n + 1.0) - ties / (big_n * (big_n - 1.0)));
    let p = if var <= 0.0 {
        1.0
    } else {
        let d = (u - mf * nf / 2.0).abs() - 0.5;
        let z = d.max(0.0) / var.sqrt();
        erfc(z / std::f64::consts::SQRT_2).min(1.0)
    };
    Some(MannWhitney { u, p, exact: false })
}

/// Counts of each U (0..=m*n) over all arrangements of `m` x's and `n` y's.
fn u_distribution(m: usize, n: usize) -> Vec<f64> {
    // c[j][u] for the current i: arrangements of i x's and j y's with U = u, where adding
    // an x after j y's adds j to U: c(i, j, u) = c(i-1, j, u-j) + c(i, j-1, u).
    let width = m * n + 1;
    let mut prev: Vec<Vec<f64>> = (0..=n)
        .map(|_| {
            let mut v = vec![0.0; width];
            v[0] = 1.0;
            v
        })
        .collect();
    for _ in 1..=m {
        let mut cur: Vec<Vec<f64>> = vec![vec![0.0; width]; n + 1];
        for j in 0..=n {
            for u in 0..width {
                let with_x = if u >= j { prev[j][u - j] } else { 0.0 };
                let with_y = if j > 0 { cur[j - 1][u] } else { 0.0 };
                cur[j][u] = with_x + with_y;
            }
        }
        prev = cur;
    }
    prev.swap_remove(n)
}

/// The complementary error function (W. J. Cody's rational approximations via
/// Numerical Recipes' erfcc: relative error below 1.2e-7).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Decimal places for `value` known within `ci`: the place of the interval's width (the
/// digit the interval leaves in doubt is the last one shown), at least one significant
/// digit of `value`, at most 4. Without an interval: 2.
pub fn decimals(value: f64, ci: Option<(f64, f64)>) -> usize {
    let Some((lo, hi)) = ci else { return 2 };
    let width = hi - lo;
    let by_width = if width > 0.0 && width.is_finite() {
        -width.log10().floor()
    } else {
        4.0
    };
    let first_digit = if value > 0.0 { -value.log10().floor() } else { 0.0 };
    by_width.max(first_digit).clamp(0.0, 4.0) as usize
}

/// A ratio with the digits its interval supports: `1.2x`, `1.23x`.
pub fn format_ratio(value: f64, ci: Option<(f64, f64)>) -> String {
    format!("{value:.*}x", decimals(value, ci))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mann_whitney_matches_known_values() {
        // scipy.stats.mannwhitneyu([1,2,3,4,5], [6,7,8,9,10]) -> U=0, p=0.007936507936507936
        let r = mann_whitney(&[1.0, 2.0, 3.0, 4.0, 5.0], &[6.0, 7.0, 8.0, 9.0, 10.0]).expect("test");
        assert_eq!(r.u, 0.0);
        assert!((r.p - 2.0 / 252.0).abs() < 1e-12, "{r:?}");
        assert!(r.exact);
        // Swapped: U = 25, same p.
        let r = mann_whitney(&[6.0, 7.0, 8.0, 9.0, 10.0], &[1.0, 2.0, 3.0, 4.0, 5.0]).expect("test");
        assert_eq!(r.u, 25.0);
        assert!((r.p - 2.0 / 252.0).abs() < 1e-12);
        // scipy: mannwhitneyu([1,3,5], [2,4,6]) -> U=3, p=0.7
        let r = mann_whitney(&[1.0, 3.0, 5.0], &[2.0, 4.0, 6.0]).expect("test");
        assert_eq!(r.u, 3.0);
        assert!((r.p - 0.7).abs() < 1e-12, "{r:?}");
        // 3 against 3 fully apart: the smallest exact p is 2/20 = 0.1 (never significant).
        let r = mann_whitney(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]).expect("test");
        assert!((r.p - 0.1).abs() < 1e-12);
        // One value each: p = 1.
        assert_eq!(mann_whitney(&[1.0], &[2.0]).expect("test").p, 1.0);
        assert!(mann_whitney(&[], &[2.0]).is_none());
    }

    #[test]
    fn mann_whitney_with_ties_uses_the_corrected_normal_approximation() {
        // x = [1,2,2,3], y = [2,3,4,5]: mid-ranks 1, 3, 3, 5.5 -> R_x = 12.5, U = 2.5;
        // tie term (3^3-3) + (2^3-2) = 30; var = 16/12 * (9 - 30/56) = 11.2857;
        // z = (|2.5 - 8| - 0.5) / 3.3594 = 1.4884; p = erfc(z / sqrt 2) = 0.13666.
        let r = mann_whitney(&[1.0, 2.0, 2.0, 3.0], &[2.0, 3.0, 4.0, 5.0]).expect("test");
        assert_eq!(r.u, 2.5);
        assert!(!r.exact);
        assert!((r.p - 0.13666).abs() < 2e-4, "{r:?}");
        // All equal: no evidence at all.
        assert_eq!(mann_whitney(&[1.0; 5], &[1.0; 5]).expect("test").p, 1.0);
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((erfc(1.959_964 / std::f64::consts::SQRT_2) - 0.05).abs() < 1e-6);
        assert!((erfc(-1.0) - 1.842_700_79).abs() < 1e-6);
    }

    #[test]
    fn exact_distribution_sums_to_the_binomial() {
        let c = u_distribution(5, 5);
        assert_eq!(c.iter().sum::<f64>(), 252.0);
        assert_eq!(c.len(), 26);
        assert_eq!(u_distribution(3, 3), [1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 2.0, 1.0, 1.0]);
    }

    #[test]
    fn bootstrap_interval_covers_the_median_and_is_reproducible() {
        let v = [10.0, 10.2, 9.9, 10.1, 10.05, 9.95, 10.3, 9.8];
        let m = median(&v).expect("median");
        let a = median_ci(&v, &mut Rng::new(7)).expect("ci");
        let b = median_ci(&v, &mut Rng::new(7)).expect("ci");
        assert_eq!(a, b, "same seed, same interval");
        assert!(a.0 <= m && m <= a.1, "{a:?} {m}");
        assert!(a.0 >= 9.8 && a.1 <= 10.3, "{a:?}");
        // Constant samples: a zero-width interval.
        assert_eq!(median_ci(&[5.0; 4], &mut Rng::new(1)), Some((5.0, 5.0)));
        assert!(median_ci(&[5.0], &mut Rng::new(1)).is_none());
        // Coverage: of 200 samples of 15 draws from a known distribution (uniform 0..1,
        // median 0.5), the 95% interval holds the true median in roughly 95%.
        let mut gen = Rng::new(42);
        let covered = (0..200)
            .filter(|_| {
                let s: Vec<f64> = (0..15)
                    .map(|_| (gen.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
                    .collect();
                let (lo, hi) = median_ci(&s, &mut gen).expect("ci");
                lo <= 0.5 && 0.5 <= hi
            })
            .count();
        assert!((180..=200).contains(&covered), "covered {covered}/200");
        let r = ratio_ci(&[2.0, 2.1, 1.9, 2.0], &[1.0, 1.0, 1.0], &mut Rng::new(3)).expect("ratio");
        assert!(r.0 >= 1.9 && r.1 <= 2.1 && r.0 <= 2.0 && 2.0 <= r.1, "{r:?}");
        assert!((relative_half_width(2.0, (1.9, 2.2)) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn few_runs_get_t_intervals_and_many_the_bootstrap() {
        let few = [1.0, 1.02, 0.99];
        assert_eq!(interval(&few, &mut Rng::new(1)), student::log_interval(&few));
        let many = [1.0, 1.02, 0.99, 1.01, 1.0, 0.98];
        assert_eq!(interval(&many, &mut Rng::new(1)), median_ci(&many, &mut Rng::new(1)));
        assert_eq!((method(5), method(6)), ("t-log", "bootstrap"));
        assert!(interval(&[1.0], &mut Rng::new(1)).is_none());
    }

    #[test]
    fn ratios_get_the_digits_their_interval_supports() {
        // +-8% of 1.23 is +-0.1: one decimal.
        assert_eq!(format_ratio(1.234, Some((1.234 * 0.92, 1.234 * 1.08))), "1.2x");
        // +-0.5%: two decimals.
        assert_eq!(format_ratio(1.234, Some((1.234 * 0.995, 1.234 * 1.005))), "1.23x");
        // +-0.05%: three.
        assert_eq!(format_ratio(1.234, Some((1.234 * 0.9995, 1.234 * 1.0005))), "1.234x");
        // A wide interval still shows one significant digit.
        assert_eq!(format_ratio(7.3, Some((4.0, 12.0))), "7x");
        assert_eq!(format_ratio(0.052, Some((0.01, 0.3))), "0.05x");
        assert_eq!(format_ratio(1.234, None), "1.23x");
        assert_eq!(decimals(1.0, Some((1.0, 1.0))), 4);
    }

    #[test]
    fn shuffles_are_seeded_permutations() {
        let mut a: Vec<u32> = (0..20).collect();
        let mut b = a.clone();
        Rng::new(9).shuffle(&mut a);
        Rng::new(9).shuffle(&mut b);
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        assert_ne!(a, sorted, "a shuffle of 20 left them in order");
        assert_ne!(
            Rng::for_stream(1, "primes:100000/host").next_u64(),
            Rng::for_stream(1, "primes:100000/kvmkit").next_u64()
        );
    }
}
