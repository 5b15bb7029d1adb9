//! Function-preserving sign flips inside the layers of a Llama-layout model:
//!
//! - MLP neurons: `down(silu(gate x) * up x)` is unchanged when a row of
//!   `up_proj` and the matching column of `down_proj` are both negated (the
//!   gate, which goes through the nonlinearity, is left alone);
//! - values: attention mixes value vectors linearly, so negating a row of
//!   `v_proj` and the matching column of `o_proj` for every query head that
//!   reads that key/value head leaves the output unchanged.
//!
//! Only sign bits flip: bit-exact in every float dtype.

use std::collections::HashMap;
use std::path::Path;

use super::symmetry::{negate_columns, negate_rows, random_signs, write_edited};
use super::AttackReport;
use crate::error::{Error, Result};
use crate::llama::{AttentionGeometry, Part};
use crate::model::{Model, TensorRef};
use crate::progress::Progress;

/// The seeded MLP neuron flips of a layer.
fn mlp_signs(n: usize, seed: u64, layer: usize) -> Vec<bool> {
    random_signs(n, seed, &format!("sign-flips\0mlp\0{layer}"))
}

/// The seeded value-row flips of a layer (`kv_heads * head_dim` rows).
fn value_signs(n: usize, seed: u64, layer: usize) -> Vec<bool> {
    random_signs(n, seed, &format!("sign-flips\0vo\0{layer}"))
}

/// Negates seeded MLP neurons and value dimensions of every layer (head counts
/// from the model's `config.json`).
pub fn sign_flips(
    model: &Model,
    out: &Path,
    seed: u64,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    let g = AttentionGeometry::for_model(model)?;
    // The neurons of each layer, from up_proj's rows.
    let mut neurons: HashMap<usize, usize> = HashMap::new();
    for t in model.tensors() {
        if let (Some(Part::Up(l)), Some(&rows)) = (Part::of(t.name), t.shape.first()) {
            neurons.insert(l, rows);
        }
    }
    let kv_rows = g.kv_heads * g.head_dim;
    let transform = |t: &TensorRef<'_>| -> Result<Option<Vec<u8>>> {
        let mut data = t.data().into_owned();
        match Part::of(t.name) {
            Some(Part::Up(l)) => {
                let n = t.shape.first().copied().unwrap_or(0);
                negate_rows(t, &mut data, &mlp_signs(n, seed, l))?;
            }
            Some(Part::Down(l)) => {
                let n = neurons.get(&l).copied();
                if n != t.shape.get(1).copied() || t.shape.len() != 2 {
                    return Err(Error::invalid(format!(
                        "tensor '{}' of shape {:?} does not match up_proj of layer {l}",
                        t.name, t.shape
                    )));
                }
                negate_columns(t, &mut data, &mlp_signs(n.unwrap_or(0), seed, l))?;
            }
            Some(Part::V(l)) => negate_rows(t, &mut data, &value_signs(kv_rows, seed, l))?,
            Some(Part::O(l)) => {
                let c = value_signs(kv_rows, seed, l);
                // Column h * head_dim + i reads dimension i of kv head kv_of(h).
                let cols: Vec<bool> = (0..g.heads * g.head_dim)
                    .map(|col| c[g.kv_of(col / g.head_dim) * g.head_dim + col % g.head_dim])
                    .collect();
                negate_columns(t, &mut data, &cols)?;
            }
            _ => return Ok(None),
        }
        Ok(Some(data))
    };
    write_edited(model, out, &transform, progress)
}
