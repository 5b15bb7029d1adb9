//! Function-preserving permutation and sign flips of the residual stream of a
//! Llama-layout model. Channel `k` of the new stream is `s[k]` times channel
//! `perm[k]` of the old one (`s[k]` = +-1), so every tensor that touches the
//! stream is rewritten consistently:
//!
//! - matrices that read it (embeddings, `lm_head`, q/k/v/gate/up): columns
//!   permuted and negated;
//! - matrices that write it (o/down): rows permuted and negated;
//! - RMSNorm weights: permuted only, since `RMSNorm(h * s) = RMSNorm(h) * s`
//!   for signs `s` (the RMS is unchanged).
//!
//! The bytes move and sign bits flip; nothing is rounded, so the edit is
//! bit-exact in every float dtype. A head tied to the embeddings stays tied
//! (both read the stream the same way).

use std::path::Path;

use super::symmetry::{negate_columns, negate_rows, random_signs, write_edited};
use super::AttackReport;
use crate::error::{Error, Result};
use crate::llama::{permutation, reorder, role, Role};
use crate::model::{Model, TensorRef};
use crate::progress::Progress;

pub use crate::llama::hidden_size;

/// A permutation and sign flips of the residual channels: new channel `k` is
/// `-1^negate[k]` times old channel `perm[k]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResidualMap {
    /// `perm[new] = old`.
    pub perm: Vec<usize>,
    /// Whether new channel `k` is negated.
    pub negate: Vec<bool>,
}

impl ResidualMap {
    /// The map that changes nothing, for `hidden` channels.
    pub fn identity(hidden: usize) -> ResidualMap {
        ResidualMap { perm: (0..hidden).collect(), negate: vec![false; hidden] }
    }

    /// This map with the channels in a seeded random order.
    pub fn permuted(self, seed: u64) -> ResidualMap {
        let order = permutation(self.perm.len(), seed, "residual\0permutation");
        ResidualMap {
            perm: order.iter().map(|&k| self.perm[k]).collect(),
            negate: order.iter().map(|&k| self.negate[k]).collect(),
        }
    }

    /// This map with seeded random sign flips of the (new) channels.
    pub fn sign_flipped(self, seed: u64) -> ResidualMap {
        let flips = random_signs(self.perm.len(), seed, "residual\0signs");
        let negate = self.negate.iter().zip(&flips).map(|(a, b)| a ^ b).collect();
        ResidualMap { negate, ..self }
    }

    /// The new bytes of a tensor that takes part in the residual stream, or
    /// `None` for any other tensor.
    fn apply(&self, t: &TensorRef<'_>) -> Result<Option<Vec<u8>>> {
        let Some(r) = role(t.name) else { return Ok(None) };
        let hidden = self.perm.len();
        let e = t.dtype.size();
        let bad = || {
            Error::invalid(format!(
                "tensor '{}' of shape {:?} does not fit a residual width of {hidden}",
                t.name, t.shape
            ))
        };
        match (r, t.shape) {
            (Role::Norm, [n]) if *n == hidden => {
                Ok(Some(reorder(&t.data(), 1, hidden, e, &self.perm, true)))
            }
            (Role::Reads(_), [rows, cols]) if *cols == hidden => {
                let mut data = reorder(&t.data(), *rows, hidden, e, &self.perm, true);
                negate_columns(t, &mut data, &self.negate)?;
                Ok(Some(data))
            }
            (Role::Writes, [rows, cols]) if *rows == hidden => {
                let mut data = reorder(&t.data(), hidden, *cols, e, &self.perm, false);
                negate_rows(t, &mut data, &self.negate)?;
                Ok(Some(data))
            }
            _ => Err(bad()),
        }
    }
}

/// Rewrites every residual-stream tensor of a Llama-layout model by `map`
/// (its length must be the model's residual width).
pub fn residual(
    model: &Model,
    out: &Path,
    map: &ResidualMap,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    let hidden = hidden_size(model)?;
    if map.perm.len() != hidden || map.negate.len() != hidden {
        return Err(Error::invalid(format!(
            "{}: a residual map of {} channels cannot edit a residual width of {hidden}",
            model.path.display(),
            map.perm.len()
        )));
    }
    write_edited(model, out, &|t| map.apply(t), progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_compose_a_permutation_with_sign_flips() {
        let m = ResidualMap::identity(64).permuted(3).sign_flipped(3);
        let mut sorted = m.perm.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..64).collect::<Vec<_>>());
        assert_ne!(m.perm, (0..64).collect::<Vec<_>>());
        assert!(m.negate.iter().any(|&n| n) && m.negate.iter().any(|&n| !n));
        assert_eq!(ResidualMap::identity(64).sign_flipped(3).perm, (0..64).collect::<Vec<_>>());
    }
}
