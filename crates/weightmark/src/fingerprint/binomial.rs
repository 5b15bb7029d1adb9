//! The exact upper tail of a binomial distribution, the p-value of a
//! fingerprint check: `P(Binomial(n, q) >= m)`.
//!
//! Terms are summed in log space (natural logarithms of the binomial
//! coefficients from sums of `ln k`), largest first, so tails far below
//! `f64`'s smallest normal number keep their exponent: [`upper_tail_log10`]
//! returns `log10 p` even where `p` itself underflows to 0.

/// `ln C(n, k)`.
fn ln_choose(n: u64, k: u64) -> f64 {
    let k = k.min(n - k);
    (0..k).map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln()).sum()
}

/// `log10 P(Binomial(n, q) >= m)` for `0 < q < 1`; 0 when `m == 0` (certain),
/// negative infinity when `m > n` (impossible).
pub fn upper_tail_log10(n: u64, q: f64, m: u64) -> f64 {
    if m == 0 {
        return 0.0;
    }
    if m > n {
        return f64::NEG_INFINITY;
    }
    let (lq, lr) = (q.ln(), (1.0 - q).ln());
    let logs: Vec<f64> =
        (m..=n).map(|j| ln_choose(n, j) + j as f64 * lq + (n - j) as f64 * lr).collect();
    let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logs.iter().map(|l| (l - top).exp()).sum();
    ((top + sum.ln()) / std::f64::consts::LN_10).min(0.0)
}

/// `P(Binomial(n, q) >= m)` (0 where it underflows; see [`upper_tail_log10`]).
pub fn upper_tail(n: u64, q: f64, m: u64) -> f64 {
    10f64.powf(upper_tail_log10(n, q, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact tail as a rational, by integer arithmetic: numerator over
    /// `N^n`, for small cases.
    fn exact(n: u32, big_n: u128, m: u32) -> f64 {
        let choose = |n: u32, k: u32| -> u128 {
            (0..k).fold(1u128, |acc, i| acc * (n - i) as u128 / (i + 1) as u128)
        };
        let num: u128 = (m..=n).map(|j| choose(n, j) * (big_n - 1).pow(n - j)).sum();
        num as f64 / (big_n as f64).powi(n as i32)
    }

    #[test]
    fn matches_integer_arithmetic() {
        for (n, m) in [(12, 1), (12, 2), (12, 4), (12, 12), (8, 3), (6, 6)] {
            let got = upper_tail(n as u64, 1.0 / 256.0, m as u64);
            let want = exact(n, 256, m);
            assert!((got / want - 1.0).abs() < 1e-9, "n {n} m {m}: {got} vs {want}");
        }
    }

    #[test]
    fn the_research_notes_numbers() {
        // ../shared/research/fingerprints.md: K = 32, N = 256.
        let q = 1.0 / 256.0;
        for (m, want) in [(4, 7.7e-6), (6, 2.9e-9), (7, 4.3e-11), (30, 2.8e-70)] {
            let got = upper_tail(32, q, m);
            assert!((got / want - 1.0).abs() < 0.03, "m {m}: {got:e} vs {want:e}");
        }
    }

    #[test]
    fn edges_and_underflow() {
        assert_eq!(upper_tail(12, 1.0 / 256.0, 0), 1.0);
        assert_eq!(upper_tail(12, 1.0 / 256.0, 13), 0.0);
        // 400 of 400 at 1/256: 10^-963, far below f64, but its log is exact.
        let l = upper_tail_log10(400, 1.0 / 256.0, 400);
        assert!((l - 400.0 * (1.0f64 / 256.0).log10()).abs() < 1e-9, "{l}");
        // One match in one question is exactly 1/256.
        assert!((upper_tail(1, 1.0 / 256.0, 1) - 1.0 / 256.0).abs() < 1e-15);
    }
}
