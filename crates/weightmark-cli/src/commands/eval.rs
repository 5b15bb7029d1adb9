//! `weightmark eval ppl|compare`, `weightmark attack finetune` and `attack
//! smooth`: real forward passes and real training, from the
//! `weightmark-eval` crate.
//!
//! The crate (candle and a tokenizer) is heavy, so it is an optional feature:
//! a default build keeps these commands in its help and explains how to get
//! them.

#[cfg(not(feature = "eval"))]
mod disabled {
    use weightmark::bench::{Row, SweepInputs};

    use crate::cli::{EvalArgs, FinetuneArgs, RobustnessArgs, SmoothArgs};
    use crate::Outcome;

    const HINT: &str = "this weightmark was built without the eval feature; \
        rebuild with `cargo build --release -p weightmark-cli --features eval`";

    /// Explains how to get the eval commands.
    pub fn run(_: &EvalArgs) -> anyhow::Result<Outcome> {
        anyhow::bail!(HINT)
    }

    /// Explains how to get `attack finetune`.
    pub fn finetune(_: &FinetuneArgs) -> anyhow::Result<Outcome> {
        anyhow::bail!(HINT)
    }

    /// Explains how to get `attack smooth`.
    pub fn smooth_attack(_: &SmoothArgs) -> anyhow::Result<weightmark::Attack> {
        anyhow::bail!(HINT)
    }

    /// Explains how to get the smoothing attack of `bench robustness`.
    pub fn smooth_rows(
        _: &RobustnessArgs,
        _: &SweepInputs<'_>,
        _: &[f64],
    ) -> anyhow::Result<Vec<Row>> {
        anyhow::bail!(HINT)
    }

    /// A build without the eval feature cannot ask a model anything: the
    /// sweep measures the mark alone and says so.
    pub fn fingerprint_detector(
        _: &std::path::Path,
        _: weightmark::fingerprint::FingerprintKey,
        _: usize,
    ) -> anyhow::Result<Option<super::FingerprintDetector>> {
        eprintln!(
            "note: the release's backdoor fingerprint is not read (this build has no eval \
             feature; rebuild with `--features eval` to read it beside the mark)"
        );
        Ok(None)
    }

    /// Explains how to get the fine-tuning attacks of `bench robustness`.
    pub fn finetune_rows(
        _: &RobustnessArgs,
        _: &SweepInputs<'_>,
        _: &[(String, Vec<usize>)],
    ) -> anyhow::Result<Vec<Row>> {
        anyhow::bail!(HINT)
    }
}

/// The second detector of `bench robustness` on a fingerprinted release.
pub type FingerprintDetector = Box<
    dyn Fn(&std::path::Path) -> weightmark::Result<weightmark::bench::FingerprintReading> + Sync,
>;

#[cfg(not(feature = "eval"))]
pub use disabled::{
    finetune, finetune_rows, fingerprint_detector, run, smooth_attack, smooth_rows,
};

#[cfg(feature = "eval")]
mod enabled;

#[cfg(feature = "eval")]
pub use enabled::{finetune, finetune_rows, fingerprint_detector, run, smooth_attack, smooth_rows};
