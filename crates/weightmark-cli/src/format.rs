//! Number formatting for people.

/// `22.7M`, `85.1k`, `512`.
pub fn count(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n}")
    }
}

/// `1.2 MB`, `340 B`.
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

/// A p-value bound as a phrase: `p <= 3.2e-44`, `p <= 1`, or `p < 1e-300`
/// when `exp(-z^2/2)` underflows.
pub fn p_bound(p: f64) -> String {
    if p >= 1.0 {
        "p <= 1".into()
    } else if p == 0.0 {
        "p < 1e-300".into()
    } else {
        format!("p <= {p:.1e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(count(22_700_000), "22.7M");
        assert_eq!(bytes(340), "340 B");
        assert_eq!(p_bound(0.0), "p < 1e-300");
        assert_eq!(p_bound(3.2e-44), "p <= 3.2e-44");
    }
}
