//! Continuous function-preserving edits inside attention heads of a
//! Llama-layout model, for informed detection to undo:
//!
//! - [`mix_vo`]: attention mixes value vectors linearly, so for each
//!   key/value head an invertible `M` (`head_dim x head_dim`: a random
//!   orthogonal matrix times a mild log-normal diagonal, log-sd
//!   [`MIX_LOG_SD`], so it is well conditioned) can multiply that head's
//!   `v_proj` rows (`M V`) while `M^-1` multiplies the matching `o_proj`
//!   columns of every query head of the group (`O M^-1`).
//! - [`rope_rotate`]: RoPE turns each pair of dimensions `(i, i + head_dim/2)`
//!   of a head by an angle that depends on the position; 2-D rotations
//!   commute, so one more fixed rotation of each pair, applied to the rows of
//!   `q_proj` (every query head of a group) and `k_proj` (its key head)
//!   alike, cancels in every `q . k` score.
//!
//! Values are rounded to nearest in each tensor's dtype: the function is the
//! same up to that rounding.

use std::path::Path;

use ndarray::{s, Array2};

use super::rotate::seeded_orthogonal;
use super::symmetry::{angles, encode_checked, log_normal, values, write_edited};
use super::AttackReport;
use crate::error::{Error, Result};
use crate::llama::{AttentionGeometry, Part};
use crate::model::{Model, TensorRef};
use crate::progress::Progress;

/// Log-standard-deviation of the diagonal in [`mix_vo`]'s mixing matrices.
pub const MIX_LOG_SD: f64 = 0.25;

/// A tensor's values as a 2-D matrix.
fn matrix(t: &TensorRef<'_>) -> Result<Array2<f64>> {
    let [rows, cols] = t.shape else {
        return Err(Error::invalid(format!("tensor '{}' is not a matrix", t.name)));
    };
    Array2::from_shape_vec((*rows, *cols), values(t)?)
        .map_err(|e| Error::internal(format!("tensor '{}': {e}", t.name)))
}

fn encode(t: &TensorRef<'_>, m: &Array2<f64>) -> Result<Vec<u8>> {
    encode_checked(t.name, t.dtype, &m.iter().copied().collect::<Vec<f64>>())
}

/// The mixing matrix `M` of key/value head `kv` of `layer`, and its inverse.
pub fn mixing(head_dim: usize, seed: u64, layer: usize, kv: usize) -> (Array2<f64>, Array2<f64>) {
    let q = seeded_orthogonal(head_dim, seed, &format!("mix-vo\0{layer}\0{kv}"));
    let e = log_normal(head_dim, MIX_LOG_SD, seed, &format!("mix-vo\0scale\0{layer}\0{kv}"));
    // M = Q diag(e); M^-1 = diag(1/e) Q^T.
    let m = Array2::from_shape_fn((head_dim, head_dim), |(r, c)| q[[r, c]] * e[c]);
    let inv = Array2::from_shape_fn((head_dim, head_dim), |(r, c)| q[[c, r]] / e[r]);
    (m, inv)
}

/// Mixes the value dimensions of every key/value head (head counts from the
/// model's `config.json`).
pub fn mix_vo(
    model: &Model,
    out: &Path,
    seed: u64,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    let g = AttentionGeometry::for_model(model)?;
    let d = g.head_dim;
    let transform = |t: &TensorRef<'_>| -> Result<Option<Vec<u8>>> {
        let (layer, value) = match Part::of(t.name) {
            Some(Part::V(l)) => (l, true),
            Some(Part::O(l)) => (l, false),
            _ => return Ok(None),
        };
        let mut w = matrix(t)?;
        for kv in 0..g.kv_heads {
            let (m, inv) = mixing(d, seed, layer, kv);
            if value {
                let block = w.slice(s![kv * d..(kv + 1) * d, ..]).to_owned();
                w.slice_mut(s![kv * d..(kv + 1) * d, ..]).assign(&m.dot(&block));
            } else {
                for h in kv * g.group()..(kv + 1) * g.group() {
                    let block = w.slice(s![.., h * d..(h + 1) * d]).to_owned();
                    w.slice_mut(s![.., h * d..(h + 1) * d]).assign(&block.dot(&inv));
                }
            }
        }
        Ok(Some(encode(t, &w)?))
    };
    write_edited(model, out, &transform, progress)
}

/// Turns each RoPE pair of every key/value group by a seeded angle, in
/// `q_proj` and `k_proj` alike (head counts from the model's `config.json`).
pub fn rope_rotate(
    model: &Model,
    out: &Path,
    seed: u64,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    let g = AttentionGeometry::for_model(model)?;
    let (d, half) = (g.head_dim, g.rope_half());
    let transform = |t: &TensorRef<'_>| -> Result<Option<Vec<u8>>> {
        // (layer, heads in the tensor, the key/value group of each head)
        let (layer, heads, group): (usize, usize, &dyn Fn(usize) -> usize) = match Part::of(t.name)
        {
            Some(Part::Q(l)) => (l, g.heads, &|h| g.kv_of(h)),
            Some(Part::K(l)) => (l, g.kv_heads, &|h| h),
            _ => return Ok(None),
        };
        let phi = angles(g.kv_heads * half, seed, &format!("rope-rotate\0{layer}"));
        let mut w = matrix(t)?;
        for h in 0..heads {
            let kv = group(h);
            for i in 0..half {
                let (c, s) = (phi[kv * half + i].cos(), phi[kv * half + i].sin());
                let (ra, rb) = (h * d + i, h * d + i + half);
                let a = w.row(ra).to_owned();
                let b = w.row(rb).to_owned();
                w.row_mut(ra).assign(&(&a * c - &b * s));
                w.row_mut(rb).assign(&(&a * s + &b * c));
            }
        }
        Ok(Some(encode(t, &w)?))
    };
    write_edited(model, out, &transform, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixing_matrices_are_inverted_and_well_conditioned() {
        let (m, inv) = mixing(16, 4, 0, 1);
        let id = m.dot(&inv);
        for ((r, c), v) in id.indexed_iter() {
            assert!((v - if r == c { 1.0 } else { 0.0 }).abs() < 1e-12, "{r} {c} {v}");
        }
        // Columns of M have the norms e: within a few log-sds of 1.
        for col in m.columns() {
            let norm = col.dot(&col).sqrt();
            assert!((norm.ln()).abs() < 5.0 * MIX_LOG_SD, "{norm}");
        }
    }
}
