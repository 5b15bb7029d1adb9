//! The adaptive scrubber ([`Attack::Scrub`](super::Attack::Scrub), issue
//! #11): an adversary who knows scheme `ss2`, but not the key, spends the
//! mark's own budget on noise shaped like the mark.
//!
//! Element `(i, j)` of every default-selected tensor becomes
//! `x_ij · (1 + budget · strength · a_ij · n_ij)`: relative, multiplicative
//! noise like the mark, where `a_ij` is the adversary's best guess of the
//! allocation (the data-free `ss2-alloc1` multipliers recomputed from the
//! suspect, which is what detection does too; 1 for uniform) and `n_ij` the
//! noise. At budget 1 the amplitude profile is the mark's, so the change
//! costs about the mark's own KL; budget `b` costs about `b²` times that.
//!
//! Two noise forms ([`ScrubNoise`]), both from the attacker's seed:
//! - [`ScrubNoise::Signs`] (the default): `±1` with the mark's own layout,
//!   one sign per group of [`crate::ss2::GROUP`] canonical residual channels
//!   (canonical order computed from the suspect), i.e. a second `ss2` mark
//!   under the attacker's key. Detection sums each sign group before it
//!   squares (`V = Σ Y²`), so noise that is constant over a group adds
//!   `GROUP` times more to `V` than independent noise of the same energy:
//!   of the cheap forms, this one lowers blind z most per unit of KL.
//! - [`ScrubNoise::Gaussian`]: i.i.d. standard normal per element, the same
//!   energy.
//!
//! Rounding back to the tensor's dtype is stochastic with the attacker's
//! dither, so the expected change is exactly the stated profile even below
//! the dtype's spacing. Every random number is addressed by element index:
//! the output does not depend on the thread count.

use std::path::Path;
use std::sync::Mutex;

use rayon::prelude::*;

use crate::allocation::{Allocation, ModelWeights, TensorWeights};
use crate::canonical::Canonical;
use crate::dtype::{decode_f64, encode_stochastic};
use crate::error::{Error, Result};
use crate::model::{Model, TensorRef};
use crate::pattern::TensorStreams;
use crate::progress::Progress;
use crate::rng::{fill_normal, stream};
use crate::scheme::{Fidelity, CHUNK_ELEMENTS, DEFAULT_STRENGTH};
use crate::select::is_default_selected;
use crate::ss2::Strengths;

use super::{add_damage, attacker_key, write_attacked, AttackReport};

/// Largest `budget × strength` accepted: with the allocation's cap of 3 a
/// sign can then never flip (`3 × 0.3 < 1`).
pub const MAX_AMPLITUDE: f64 = 0.3;

/// The form of the scrubber's noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ScrubNoise {
    /// `±1` in the mark's own sign groups (a second `ss2` mark under the
    /// attacker's key): the strongest cheap form.
    #[default]
    Signs,
    /// I.i.d. standard normal per element (the same energy).
    Gaussian,
}

impl ScrubNoise {
    /// Short name (command line, files).
    pub fn name(self) -> &'static str {
        match self {
            ScrubNoise::Signs => "signs",
            ScrubNoise::Gaussian => "gaussian",
        }
    }
}

/// The parameters of the adaptive scrubber.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scrub {
    /// The mark's strength as the adversary believes it (a certificate
    /// states it; the default strength otherwise).
    pub strength: f64,
    /// The adversary's guess of the mark's allocation, recomputed from the
    /// suspect.
    pub allocation: Allocation,
    /// Amplitude relative to the mark's (1: the mark's own profile).
    pub budget: f64,
    /// The noise form.
    pub noise: ScrubNoise,
}

impl Scrub {
    /// Budget `budget` against a uniform mark of the default strength, with
    /// the default noise.
    pub fn new(budget: f64) -> Scrub {
        Scrub {
            strength: DEFAULT_STRENGTH,
            allocation: Allocation::Uniform,
            budget,
            noise: ScrubNoise::Signs,
        }
    }

    /// Aimed at a mark of `strength` spread by `allocation`.
    pub fn against(self, strength: f64, allocation: Allocation) -> Scrub {
        Scrub { strength, allocation, ..self }
    }

    /// The relative amplitude of an element whose allocation multiplier is 1.
    pub fn amplitude(&self) -> f64 {
        self.budget * self.strength
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        let max = crate::embed::MAX_STRENGTH;
        if !(self.strength > 0.0 && self.strength <= max) {
            return Err(Error::invalid(format!(
                "scrub: mark strength {} is out of range; use a value in (0, {max}]",
                self.strength
            )));
        }
        if !(self.budget > 0.0 && self.budget.is_finite()) {
            return Err(Error::invalid(format!(
                "scrub: budget {} must be a finite number > 0",
                self.budget
            )));
        }
        if self.amplitude() > MAX_AMPLITUDE {
            return Err(Error::invalid(format!(
                "scrub: budget x strength = {} is above {MAX_AMPLITUDE}, where noise would flip \
                 signs; lower the budget",
                self.amplitude()
            )));
        }
        Ok(())
    }
}

/// Applies the scrubber with `seed` to the default-selected tensors of
/// `model`, writing the result to `out` (the input's layout).
pub fn scrub(
    model: &Model,
    out: &Path,
    scrub: &Scrub,
    seed: u64,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    scrub.validate()?;
    let names: Vec<String> =
        model.tensors().filter(is_default_selected).map(|t| t.name.to_string()).collect();
    let weights = ModelWeights::of(model, &names, scrub.allocation);
    let canonical = match scrub.noise {
        ScrubNoise::Signs => Canonical::of(model),
        ScrubNoise::Gaussian => Canonical::default(),
    };
    let key = attacker_key(seed).mark_key("adaptive scrubber", None);
    let strengths = Strengths { release: scrub.amplitude(), recipient: 0.0 };
    let damage = Mutex::new(Fidelity::default());
    let transform = |t: &TensorRef<'_>| -> Result<Option<Vec<u8>>> {
        if !is_default_selected(t) {
            return Ok(None);
        }
        let streams = TensorStreams::new(&key, t.name);
        let w = weights.get(t.name);
        let (data, f) = match scrub.noise {
            ScrubNoise::Signs => {
                crate::ss2::embed_tensor(t, &canonical.axes(t), &streams, None, strengths, w)
            }
            ScrubNoise::Gaussian => gaussian_tensor(t, &streams, scrub.amplitude(), w, seed),
        };
        add_damage(&damage, f)?;
        Ok(Some(data))
    };
    write_attacked(model, out, &transform, progress, &damage)
}

/// `x · (1 + amplitude · a_ij · g_ij)` with `g` i.i.d. standard normal from
/// the attacker's seed, rounded with the attacker's dither.
fn gaussian_tensor(
    t: &TensorRef<'_>,
    streams: &TensorStreams,
    amplitude: f64,
    weights: Option<&TensorWeights>,
    seed: u64,
) -> (Vec<u8>, Fidelity) {
    let size = t.dtype.size();
    let cols = t.info.row_len().max(1);
    let block = (CHUNK_ELEMENTS / cols).max(1);
    let name = format!("scrub\0{}", t.name);
    let source = t.data();
    let mut data = source.to_vec();
    let parts: Vec<Fidelity> = data
        .par_chunks_mut(block * cols * size)
        .enumerate()
        .map(|(ci, out)| {
            let first_row = ci * block;
            let n = out.len() / size;
            let start = first_row * cols;
            let input = source.get(start * size..(start + n) * size).unwrap_or_default();
            let mut w = Vec::with_capacity(n);
            decode_f64(t.dtype, input, &mut w);
            let mut g = vec![0.0; n];
            fill_normal(&mut stream(seed, &name), start as u64, &mut g);
            let mut u = vec![0u32; n];
            streams.dither(start as u64, &mut u);
            let target: Vec<f64> = w
                .iter()
                .zip(&g)
                .enumerate()
                .map(|(k, (&x, &e))| {
                    let a = weights.map_or(1.0, |a| a.at(first_row + k / cols, k % cols));
                    x * (1.0 + amplitude * a * e)
                })
                .collect();
            encode_stochastic(t.dtype, &target, &u, out);
            let mut after = Vec::with_capacity(n);
            decode_f64(t.dtype, out, &mut after);
            Fidelity::between(&w, &after)
        })
        .collect();
    (data, parts.into_iter().fold(Fidelity::default(), Fidelity::merge))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_each_parameter_out_of_range() {
        let cases = [
            (Scrub { strength: 0.0, ..Scrub::new(1.0) }, "strength 0"),
            (Scrub::new(0.0), "budget 0"),
            (Scrub::new(f64::NAN), "budget NaN"),
            (Scrub::new(200.0), "flip signs"),
        ];
        for (s, needle) in cases {
            let err = s.validate().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(needle), "{s:?}: {err}");
        }
        assert!(Scrub::new(4.0).validate().is_ok());
        let aimed = Scrub::new(2.0).against(0.0014, Allocation::ALLOC1);
        assert_eq!(aimed.amplitude(), 2.0 * 0.0014);
        assert_eq!(aimed.allocation, Allocation::ALLOC1);
    }
}
