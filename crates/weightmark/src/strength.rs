//! The default strength of `ss2`: a size rule held to a fidelity budget.
//!
//! Blind z grows like `strength · sqrt(n)` over the `n` marked elements
//! (every z here is the decision's: with a recipient, `detect` with the
//! copy's certificate adds both components, so the split does not lower
//! it; only a coded (`tardos1`) recipient leaves the decision to the
//! release component, which gets `strength / sqrt(2)` at the default
//! recipient share, `strength · sqrt(1 − share)` at another),
//! while what a mark costs a model grows with the square of the relative
//! change of its weights, whatever the model's size. So a fixed strength
//! either wastes blind z on large models or loses blind detection on small
//! ones. [`choose`] picks, for a given model, the strength that
//!
//! 1. aims at a blind z of [`TARGET_Z`] (enough to stay above the threshold
//!    after the heaviest edits `ss2` survives blind: a 50/50 merge keeps
//!    about a third of z);
//! 2. but spends no more than the **fidelity budget**: the relative
//!    mean-square change of the weights that, on SmolLM2-135M in f16, costs
//!    as much KL as re-rounding the model to bf16 (measured per allocation,
//!    docs/fidelity.md);
//! 3. unless that would leave the predicted blind z below [`FLOOR_Z`]: then
//!    it spends what `FLOOR_Z` needs, above the budget, and says so;
//! 4. but never more than [`CEILING`], the fixed default of earlier versions
//!    (about 8× the budget): models under about 11M elements get it, and
//!    blind z below 12 (`embed` then says what blind detection would need);
//! 5. and, for a model stored wider than bf16 (f32, f16), never more above
//!    the budget than [`REFERENCE_SHARE`] of the relative mean-square change
//!    that storing the model in bf16 would make: for such a model that is
//!    the cost its owner already accepts by shipping or serving it in bf16,
//!    and a mark must not cost more. Small f32 models (MiniLM) then get
//!    less than the floor's z, and `embed` says so. A bf16 model has no such
//!    reference (re-rounding it costs nothing), so the floor holds there.
//!
//! The change a strength makes depends on the storage type: in f32 it is the
//! strength itself; in f16 and bf16 the mark is carried by unbiased keyed
//! rounding, which moves an element a whole step with the right probability,
//! so a strength below the step costs about `strength · step` in mean
//! square, not `strength²`. For bf16 weights that makes the budget's
//! strength about four times smaller than for f16 ([`relative_mse`]).
//!
//! Everything here is a prediction from element counts and storage types.
//! `embed` measures the real change and blind z of what it wrote, and prints
//! both beside the prediction.

use crate::allocation::Allocation;
use crate::dtype::Dtype;

/// Blind z the size rule aims at: a 50/50 merge with an unrelated model,
/// the heaviest edit blind `ss2` detection survives on SmolLM2, keeps 0.34
/// of z, so 40 leaves it about twice the threshold (6.44).
pub const TARGET_Z: f64 = 40.0;

/// Least predicted blind z the default accepts, even above the fidelity
/// budget: int4 quantization, Q4_K and 50% pruning keep 0.53–0.58 of z, so
/// 12 keeps them about at the threshold.
pub const FLOOR_Z: f64 = 12.0;

/// The most the default ever spends: the fixed default strength of earlier
/// versions and of `ss1` ([`crate::DEFAULT_STRENGTH`]).
pub const CEILING: f64 = crate::scheme::DEFAULT_STRENGTH;

/// For a model stored wider than bf16, the share of re-rounding it to bf16
/// (as a relative mean-square change) that the default never spends more
/// than when the floor asks for more than the budget. Not 1: on MiniLM a
/// mark of the same relative mean square as bf16 re-rounding cost 1.01×
/// its `1 − cos` (docs/fidelity.md), so equal change is not quite equal cost.
pub const REFERENCE_SHARE: f64 = 0.9;

/// Blind z per `strength · sqrt(n)`, measured on SmolLM2 f16 (`ss2` at
/// strength 3e-3 over 134.5M elements: 42.6 uniform, 45.9 with `ss2-alloc2`)
/// and checked on synthetic Llama shapes (docs/fidelity.md).
pub const Z_PER_STRENGTH_ROOT_N: f64 = 1.2;

/// The strength whose mark costs SmolLM2 f16 the KL of re-rounding it to
/// bf16, by allocation: the fidelity budget is this mark's relative mean
/// square change in f16 ([`budget_mse`]).
fn budget_strength(allocation: Allocation) -> f64 {
    // Measured KL against bf16's 1.05e-4, scaled with the square of the
    // strength from the nearest measurement below 2e-3. Scaling down from 3e-3
    // alone underestimates KL at small strengths (the f16 rounding's share
    // grows): for `ss2-alloc2` it predicted 1.05e-4 at 1.51e-3, where 1.20e-4
    // was measured.
    match allocation {
        // KL 7.82e-4 at 3e-3 (the only measurement), with the 1.14 that
        // `ss2-alloc2` showed between 3e-3 and 1.5e-3.
        Allocation::Uniform => 1.03e-3,
        // KL 1.10e-4 at 1.4e-3.
        Allocation::Alloc1(_) => 1.37e-3,
        // KL 1.20e-4 at 1.51e-3 (4.13e-4 at 3e-3).
        Allocation::Alloc2(_) => 1.41e-3,
    }
}

/// Why [`choose`] settled where it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// The strength was given; nothing was chosen.
    Given,
    /// `ss1`'s fixed default ([`crate::DEFAULT_STRENGTH`]); the size rule is `ss2`'s.
    Fixed,
    /// The size rule's target z, within the budget.
    Target,
    /// The fidelity budget: the target z would cost more.
    Budget,
    /// The floor z, above the budget.
    Floor,
    /// The ceiling: the floor z would need more than [`CEILING`].
    Ceiling,
    /// A model stored wider than bf16: the floor z would change it more
    /// than storing it in bf16 does ([`REFERENCE_SHARE`] of that).
    Reference,
}

/// The strength a marking uses, and what it predicts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StrengthChoice {
    /// The relative strength used.
    pub strength: f64,
    /// What decided it.
    pub binding: Binding,
    /// Elements marked.
    pub elements: u64,
    /// Predicted blind z of the decision on the unattacked release:
    /// `Z_PER_STRENGTH_ROOT_N · strength · sqrt(elements)`, times the
    /// release component's share of the amplitude with a coded recipient
    /// (`1/sqrt(2)` at the default share: the decision is then the release
    /// component's).
    pub predicted_z: f64,
    /// Predicted relative RMS change of the marked weights (rounding included).
    pub predicted_change: f64,
    /// The fidelity budget, as a relative RMS change.
    pub budget_change: f64,
}

impl StrengthChoice {
    /// Predicted cost as a multiple of the budget (mean-square change over
    /// the budget's, so roughly a multiple of bf16 re-rounding's KL).
    pub fn budget_spent(&self) -> f64 {
        (self.predicted_change / self.budget_change).powi(2)
    }
}

/// Mantissa bits of a floating storage type the rounding model knows
/// (`None`: treated as exact, e.g. f64).
fn mantissa_bits(dtype: Dtype) -> Option<i32> {
    match dtype {
        Dtype::F32 => Some(23),
        Dtype::F16 => Some(10),
        Dtype::BF16 => Some(7),
        Dtype::F8E4M3 => Some(3),
        Dtype::F8E5M2 => Some(2),
        _ => None,
    }
}

/// Expected relative mean-square change of one element marked at relative
/// strength `s` and rounded without bias to a type with `bits` mantissa
/// bits: `s² + u²·f·(1 − f)`, with `u` the element's relative step and `f`
/// the fractional part of `s / u`, averaged over mantissas spread evenly in
/// log scale (what trained weights look like within an octave).
pub fn relative_mse(s: f64, dtype: Dtype) -> f64 {
    let Some(bits) = mantissa_bits(dtype) else { return s * s };
    const STEPS: usize = 256;
    let ulp = (2f64).powi(-bits);
    let mut sum = 0.0;
    for k in 0..STEPS {
        // Mantissa 1 + m at log-spaced points of [1, 2).
        let m = (2f64).powf((k as f64 + 0.5) / STEPS as f64);
        let u = ulp / m;
        let t = s / u;
        let f = t - t.floor();
        sum += s * s + u * u * f * (1.0 - f);
    }
    sum / STEPS as f64
}

/// Expected relative mean-square change of an element of `dtype` re-rounded
/// to nearest bf16, for a storage type wider than bf16 (f32, f64, f16);
/// `None` for bf16 itself and narrower or integer types. With steps `u`
/// over mantissas spread evenly in log scale, as [`relative_mse`]: `u²/12`
/// averaged (f16's own grid makes the error discrete, within 3% of that).
pub fn bf16_rounding_mse(dtype: Dtype) -> Option<f64> {
    if !matches!(dtype, Dtype::F64 | Dtype::F32 | Dtype::F16) {
        return None;
    }
    const STEPS: usize = 256;
    let ulp = (2f64).powi(-7);
    let sum: f64 = (0..STEPS)
        .map(|k| {
            let u = ulp / (2f64).powf((k as f64 + 0.5) / STEPS as f64);
            u * u / 12.0
        })
        .sum();
    Some(sum / STEPS as f64)
}

/// The largest strength whose predicted change of `tensors` stays within
/// `mse`: `model_mse` grows with `s`, so bisect on a log scale.
fn strength_within(mse: f64, tensors: &[(Dtype, u64)]) -> f64 {
    let (mut lo, mut hi) = (1e-7f64, crate::embed::MAX_STRENGTH);
    for _ in 0..100 {
        let mid = (lo * hi).sqrt();
        if model_mse(mid, tensors) <= mse {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The fidelity budget of `allocation` as a relative mean-square change.
pub fn budget_mse(allocation: Allocation) -> f64 {
    relative_mse(budget_strength(allocation), Dtype::F16)
}

/// Predicted relative mean-square change of `tensors` (storage type and
/// element count of each marked tensor) at strength `s`.
fn model_mse(s: f64, tensors: &[(Dtype, u64)]) -> f64 {
    let n: f64 = tensors.iter().map(|&(_, n)| n as f64).sum();
    if n <= 0.0 {
        return s * s;
    }
    // Each storage type's change once (a model has one or two types and
    // hundreds of tensors), then the same sum in tensor order.
    let mut by_dtype: Vec<(Dtype, f64)> = Vec::new();
    let mut of = |d: Dtype| match by_dtype.iter().find(|(t, _)| *t == d) {
        Some(&(_, r)) => r,
        None => {
            let r = relative_mse(s, d);
            by_dtype.push((d, r));
            r
        }
    };
    tensors.iter().map(|&(d, k)| k as f64 * of(d)).sum::<f64>() / n
}

/// The strength predicted to give the decision blind z `z` over `elements`
/// elements, when the decision sees `decision_share` of the strength's
/// amplitude: 1 without a recipient or with an independent one (the
/// decision adds both components, weighted by their strengths), the release
/// component's share with a coded one (`1/sqrt(2)` at the default share).
pub fn strength_for_z(z: f64, elements: u64, decision_share: f64) -> f64 {
    z / (Z_PER_STRENGTH_ROOT_N * decision_share * (elements.max(1) as f64).sqrt())
}

/// What `strength` predicts for `tensors` under `allocation`, when the
/// decision sees `decision_share` of it ([`strength_for_z`]).
pub fn predict(
    strength: f64,
    binding: Binding,
    allocation: Allocation,
    tensors: &[(Dtype, u64)],
    decision_share: f64,
) -> StrengthChoice {
    let elements: u64 = tensors.iter().map(|&(_, n)| n).sum();
    StrengthChoice {
        strength,
        binding,
        elements,
        predicted_z: Z_PER_STRENGTH_ROOT_N * decision_share * strength * (elements as f64).sqrt(),
        predicted_change: model_mse(strength, tensors).sqrt(),
        budget_change: budget_mse(allocation).sqrt(),
    }
}

/// The default strength for marking `tensors` (storage type and element
/// count of each) under `allocation`, when the decision sees
/// `decision_share` of the strength ([`strength_for_z`]): the size rule of
/// this module, rounded to three significant digits so that certificates
/// carry a short number.
pub fn choose(
    allocation: Allocation,
    tensors: &[(Dtype, u64)],
    decision_share: f64,
) -> StrengthChoice {
    let elements: u64 = tensors.iter().map(|&(_, n)| n).sum();
    let budget = budget_mse(allocation);
    let target = strength_for_z(TARGET_Z, elements, decision_share);
    let floor = strength_for_z(FLOOR_Z, elements, decision_share);
    let lo = strength_within(budget, tensors);
    // Storing the model in bf16, when every marked tensor is wider.
    let reference = tensors
        .iter()
        .map(|&(d, n)| bf16_rounding_mse(d).map(|m| m * n as f64))
        .sum::<Option<f64>>()
        .filter(|_| elements > 0)
        .map(|sum| strength_within(REFERENCE_SHARE * sum / elements as f64, tensors));
    let (s, binding) = if target <= lo {
        (target, Binding::Target)
    } else if floor <= lo {
        (lo, Binding::Budget)
    } else {
        let wanted =
            if floor <= CEILING { (floor, Binding::Floor) } else { (CEILING, Binding::Ceiling) };
        match reference {
            Some(r) if r < wanted.0 && r > lo => (r, Binding::Reference),
            Some(r) if r < wanted.0 => (lo, Binding::Budget),
            _ => wanted,
        }
    };
    let s = round3(s);
    predict(s, binding, allocation, tensors, decision_share)
}

/// The most of a copy's mark energy the default gives its recipient
/// component ([`default_recipient_share`]): measured on SmolLM2 f16 at its
/// default strength, it names both colluders of a pair blind by every
/// collusion method while the release component keeps about 0.45 of the
/// copy's z (docs/provenance.md, "The recipient share").
pub const MAX_DEFAULT_RECIPIENT_SHARE: f64 = 0.8;

/// The least predicted blind z the default share leaves the release
/// component (the part every copy shares, which is what is found when many
/// copies are mixed): what a release at the size rule's floor ([`FLOOR_Z`])
/// has at the even split, `FLOOR_Z / sqrt(2)`, about 8.49.
pub const RELEASE_FLOOR_Z: f64 = FLOOR_Z * std::f64::consts::FRAC_1_SQRT_2;

/// The recipient share `embed` and `issue` use for a copy with an
/// independent recipient component when none is given, from the copy's
/// predicted blind z (`choice`, the decision on both components): the
/// largest share that leaves the release component a predicted z of at
/// least [`RELEASE_FLOOR_Z`], `1 − (RELEASE_FLOOR_Z / z)²`, rounded down to
/// two decimals, and never below the even split
/// ([`crate::ss2::EVEN_RECIPIENT_SHARE`]) nor above
/// [`MAX_DEFAULT_RECIPIENT_SHARE`].
///
/// So a model whose copies have z to spare gives it to tracing (a pair's
/// blind z per colluder is about half its recipient component's), and no
/// release component is left weaker than the floor already accepts for
/// the smallest models. Models at or under the floor (z 12) keep the even
/// split, exactly as before this rule. The total strength, and so the
/// fidelity cost and the decision's z for a whole copy, is the same at any
/// share.
pub fn default_recipient_share(choice: &StrengthChoice) -> f64 {
    let even = crate::ss2::EVEN_RECIPIENT_SHARE;
    let z = choice.predicted_z;
    if !(z.is_finite() && z > FLOOR_Z) {
        return even;
    }
    let share = 1.0 - (RELEASE_FLOOR_Z / z).powi(2);
    // Two decimals, as a person would type it: `(100 x).floor() / 100` is
    // the same double as the literal (e.g. 0.63), so `--recipient-share`
    // with the printed value reproduces the copy.
    let share = (share * 100.0).floor() / 100.0;
    if share <= even {
        even
    } else {
        share.min(MAX_DEFAULT_RECIPIENT_SHARE)
    }
}

/// `x` rounded to three significant digits.
fn round3(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return x;
    }
    let scale = 10f64.powi(2 - x.log10().floor() as i32);
    (x * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: u64 = 134_515_008;

    #[test]
    fn the_budget_binds_on_a_small_f16_model_and_the_target_on_a_large_one() {
        let a = Allocation::ALLOC2;
        let small = choose(a, &[(Dtype::F16, SMOLLM2)], 1.0);
        assert_eq!(small.binding, Binding::Budget);
        assert!((small.strength - 1.41e-3).abs() < 2e-5, "{small:?}");
        assert!((small.budget_spent() - 1.0).abs() < 0.02, "{small:?}");
        let large = choose(a, &[(Dtype::F16, 6_500_000_000)], 1.0);
        assert_eq!(large.binding, Binding::Target);
        assert!((large.predicted_z - TARGET_Z).abs() < 0.1, "{large:?}");
        assert!(large.budget_spent() < 0.2, "{large:?}");
        // A coded recipient takes half the energy and the decision is the
        // release component's: it keeps its target z at sqrt(2) times the
        // strength.
        let shared = choose(a, &[(Dtype::F16, 6_500_000_000)], std::f64::consts::FRAC_1_SQRT_2);
        assert!((shared.predicted_z - TARGET_Z).abs() < 0.1, "{shared:?}");
        assert!((shared.strength / large.strength - 2f64.sqrt()).abs() < 0.01);
        // Where the budget binds, a coded recipient changes nothing but the z.
        let split = choose(a, &[(Dtype::F16, SMOLLM2)], std::f64::consts::FRAC_1_SQRT_2);
        assert_eq!(split.strength, small.strength);
        assert!((split.predicted_z * 2f64.sqrt() - small.predicted_z).abs() < 1e-9);
    }

    #[test]
    fn the_default_share_gives_tracing_what_the_release_component_can_spare() {
        let a = Allocation::ALLOC2;
        let even = crate::ss2::EVEN_RECIPIENT_SHARE;
        // SmolLM2 f16 at its default: predicted z 19.6, so the release
        // component could spare down to 0.19 of the energy; the cap binds.
        let smol = choose(a, &[(Dtype::F16, SMOLLM2)], 1.0);
        assert!((smol.predicted_z - 19.6).abs() < 0.1, "{smol:?}");
        assert_eq!(default_recipient_share(&smol), MAX_DEFAULT_RECIPIENT_SHARE);
        // The 1.1B bf16 shape: budget-bound, z 14.7, so 0.66 (the release
        // component keeps 14.7 * sqrt(0.34) = 8.6).
        let big = choose(a, &[(Dtype::BF16, 1_100_048_384)], 1.0);
        let share = default_recipient_share(&big);
        assert_eq!(share, 0.66, "{big:?}");
        assert_eq!(share.to_bits(), "0.66".parse::<f64>().map(f64::to_bits).unwrap_or(0));
        let release_z = big.predicted_z * (1.0 - share).sqrt();
        assert!((RELEASE_FLOOR_Z..RELEASE_FLOOR_Z + 0.15).contains(&release_z), "{release_z}");
        // At or under the floor, and where the prediction is not a number:
        // the even split, the very constant earlier versions used.
        let floor = choose(a, &[(Dtype::BF16, SMOLLM2)], 1.0);
        assert_eq!(floor.binding, Binding::Floor);
        assert_eq!(default_recipient_share(&floor).to_bits(), even.to_bits());
        let tiny = choose(a, &[(Dtype::BF16, 1_000_000)], 1.0);
        assert_eq!(default_recipient_share(&tiny).to_bits(), even.to_bits());
        let nan = StrengthChoice { predicted_z: f64::NAN, ..smol };
        assert_eq!(default_recipient_share(&nan).to_bits(), even.to_bits());
        // The rule meets the even split at the floor, and rises from it.
        let at = StrengthChoice { predicted_z: FLOOR_Z, ..smol };
        assert_eq!(default_recipient_share(&at).to_bits(), even.to_bits());
        let near = StrengthChoice { predicted_z: 12.2, ..smol };
        assert_eq!(default_recipient_share(&near), 0.51);
        // Monotone in z, and never past the cap.
        let mut last = 0.0;
        for z in (120..2000).map(|t| f64::from(t) / 10.0) {
            let s = default_recipient_share(&StrengthChoice { predicted_z: z, ..smol });
            assert!(s >= last && (even..=MAX_DEFAULT_RECIPIENT_SHARE).contains(&s), "{z} {s}");
            assert!(s == even || z * (1.0 - s).sqrt() >= RELEASE_FLOOR_Z - 1e-9, "{z} {s}");
            last = s;
        }
    }

    #[test]
    fn bf16_costs_more_per_strength_so_its_budget_strength_is_smaller() {
        let a = Allocation::ALLOC2;
        let (f16, bf16) = (relative_mse(1e-3, Dtype::F16), relative_mse(1e-3, Dtype::BF16));
        // Below the bf16 step the rounding dominates: about s · E[u].
        assert!(bf16 > 4.0 * f16, "{f16} {bf16}");
        let big = choose(a, &[(Dtype::BF16, 1_000_000_000)], 1.0);
        assert_eq!(big.binding, Binding::Budget);
        assert!(big.strength < 5e-4 && big.predicted_z > FLOOR_Z, "{big:?}");
        // SmolLM2 in bf16 cannot reach the floor within the budget.
        let small = choose(a, &[(Dtype::BF16, SMOLLM2)], 1.0);
        assert_eq!(small.binding, Binding::Floor);
        assert!((small.predicted_z - FLOOR_Z).abs() < 0.05 && small.budget_spent() > 1.5);
    }

    #[test]
    fn small_models_wider_than_bf16_are_held_to_bf16s_change_and_bf16_ones_get_the_floor() {
        assert!((relative_mse(2e-3, Dtype::F32) / 4e-6 - 1.0).abs() < 1e-6);
        // bf16's relative RMS step error: about 0.166% (MiniLM measured
        // 1 − cos at a mark of 0.164% equal to bf16 re-rounding's within 1%).
        let bf16 = bf16_rounding_mse(Dtype::F32).map(f64::sqrt);
        assert!(bf16.is_some_and(|r| (r - 1.66e-3).abs() < 1e-5), "{bf16:?}");
        assert_eq!(bf16_rounding_mse(Dtype::BF16), None);
        // MiniLM's size in f32: the floor would change it more than bf16
        // does, so it gets REFERENCE_SHARE of bf16's change, under the floor.
        let minilm = choose(Allocation::Uniform, &[(Dtype::F32, 22_700_000)], 1.0);
        assert_eq!(minilm.binding, Binding::Reference);
        let floor = strength_for_z(FLOOR_Z, 22_700_000, 1.0);
        assert!(minilm.strength < floor, "{minilm:?}");
        let expected = (REFERENCE_SHARE * 1.66e-3 * 1.66e-3).sqrt();
        assert!((minilm.strength - expected).abs() < 2e-5, "{minilm:?}");
        // A tiny f32 model too; the same in bf16 gets the ceiling.
        let tiny = choose(Allocation::Uniform, &[(Dtype::F32, 1_000_000)], 1.0);
        assert_eq!(tiny.binding, Binding::Reference);
        let tiny = choose(Allocation::Uniform, &[(Dtype::BF16, 1_000_000)], 1.0);
        assert_eq!(tiny.binding, Binding::Ceiling);
        assert_eq!(tiny.strength, CEILING);
        // One bf16 tensor among f32 ones: no reference, the floor.
        let mixed =
            choose(Allocation::Uniform, &[(Dtype::F32, 22_000_000), (Dtype::BF16, 700_000)], 1.0);
        assert_eq!(mixed.binding, Binding::Floor);
    }
}
