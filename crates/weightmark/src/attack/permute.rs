//! Function-preserving permutation of MLP neurons in a Llama-layout model:
//! for each layer a seeded permutation of the intermediate neurons reorders
//! the rows of `gate_proj` and `up_proj` and the columns of `down_proj`
//! together, so the model computes exactly the same function while every
//! marked element of those tensors moves.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use rand_core::RngCore;

use super::{add_damage, take, AttackReport};
use crate::error::{Error, Result};
use crate::model::{write_model, Model, TensorRef, WriteOptions};
use crate::progress::Progress;
use crate::rng::stream;
use crate::scheme::Fidelity;

/// Which MLP tensor of a layer, if any: (layer, is `down_proj`).
pub fn mlp_tensor(name: &str) -> Option<(usize, bool)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    match tail {
        "mlp.gate_proj.weight" | "mlp.up_proj.weight" => Some((layer, false)),
        "mlp.down_proj.weight" => Some((layer, true)),
        _ => None,
    }
}

/// A seeded permutation of `n` items (Fisher-Yates on a ChaCha20 stream).
pub fn permutation(n: usize, seed: u64, name: &str) -> Vec<usize> {
    let mut rng = stream(seed, name);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// Reorders rows (`columns == false`) or columns of a row-major matrix:
/// output row/column `k` is input row/column `perm[k]`.
pub fn reorder(
    data: &[u8],
    rows: usize,
    cols: usize,
    elem: usize,
    perm: &[usize],
    columns: bool,
) -> Vec<u8> {
    let mut out = vec![0u8; data.len()];
    if columns {
        for r in 0..rows {
            let row_in = &data[r * cols * elem..(r + 1) * cols * elem];
            let row_out = &mut out[r * cols * elem..(r + 1) * cols * elem];
            for (k, &src) in perm.iter().enumerate() {
                row_out[k * elem..(k + 1) * elem]
                    .copy_from_slice(&row_in[src * elem..(src + 1) * elem]);
            }
        }
    } else {
        let stride = cols * elem;
        for (k, &src) in perm.iter().enumerate() {
            out[k * stride..(k + 1) * stride]
                .copy_from_slice(&data[src * stride..(src + 1) * stride]);
        }
    }
    out
}

/// Permutes the MLP neurons of every layer of a Llama-layout model.
pub fn permute_mlp(
    model: &Model,
    out: &Path,
    seed: u64,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    // Intermediate size per layer, from gate_proj's rows.
    let mut sizes: HashMap<usize, usize> = HashMap::new();
    for t in model.tensors() {
        if let (Some((layer, false)), Some(&rows)) = (mlp_tensor(t.name), t.shape.first()) {
            sizes.insert(layer, rows);
        }
    }
    if sizes.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no model.layers.N.mlp.*_proj.weight tensors: permute needs a Llama-layout model",
            model.path.display()
        )));
    }
    let perms: HashMap<usize, Vec<usize>> =
        sizes.iter().map(|(&l, &n)| (l, permutation(n, seed, &format!("mlp\0{l}")))).collect();
    let damage = Mutex::new(Fidelity::default());
    let transform = |t: &TensorRef<'_>| -> Result<Option<Vec<u8>>> {
        let Some((layer, down)) = mlp_tensor(t.name) else { return Ok(None) };
        let (Some(perm), [rows, cols]) = (perms.get(&layer), t.shape) else {
            return Err(Error::invalid(format!("tensor '{}' is not a 2-D MLP matrix", t.name)));
        };
        let expected = if down { *cols } else { *rows };
        if perm.len() != expected {
            return Err(Error::invalid(format!(
                "tensor '{}': {expected} neurons, but gate_proj of layer {layer} has {}",
                t.name,
                perm.len()
            )));
        }
        let data = reorder(t.data, *rows, *cols, t.dtype.size(), perm, down);
        add_damage(&damage, super::damage_of_bytes(t.dtype, t.data, &data))?;
        Ok(Some(data))
    };
    let written = write_model(model, out, &transform, &WriteOptions { progress })?;
    // The function is unchanged, but element by element the weights moved a lot.
    Ok(AttackReport { written, damage: take(damage)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_seeded_and_complete() {
        let p = permutation(100, 3, "x");
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(p, permutation(100, 3, "x"));
        assert_ne!(p, permutation(100, 4, "x"));
    }

    #[test]
    fn reorder_rows_and_columns() {
        let data: Vec<u8> = (0..6).collect(); // 2 x 3, one byte per element
        assert_eq!(reorder(&data, 2, 3, 1, &[2, 0, 1], true), [2, 0, 1, 5, 3, 4]);
        assert_eq!(reorder(&data, 2, 3, 1, &[1, 0], false), [3, 4, 5, 0, 1, 2]);
    }
}

/// Which attention tensor of a layer, if any: (layer, part).
fn attention_tensor(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let part = tail.strip_prefix("self_attn.")?.strip_suffix(".weight")?;
    Some((layer.parse().ok()?, part))
}

/// A permutation of attention heads that keeps grouped-query attention
/// intact: key/value heads are permuted by `kv`, and the query heads of each
/// group move with their key/value head, shuffled within the group by `q`.
/// `q[k]` is the original query head now at position `k`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadPermutation {
    /// Query heads, as `q[new] = old`.
    pub q: Vec<usize>,
    /// Key/value heads, as `kv[new] = old`.
    pub kv: Vec<usize>,
}

impl HeadPermutation {
    /// A seeded head permutation for `heads` query heads and `kv_heads` key/value heads.
    pub fn seeded(heads: usize, kv_heads: usize, seed: u64, layer: usize) -> HeadPermutation {
        let group = heads / kv_heads.max(1);
        let kv = permutation(kv_heads, seed, &format!("kv\0{layer}"));
        let mut q = Vec::with_capacity(heads);
        for (new_g, &old_g) in kv.iter().enumerate() {
            let within = permutation(group, seed, &format!("q\0{layer}\0{new_g}"));
            q.extend(within.iter().map(|&m| old_g * group + m));
        }
        HeadPermutation { q, kv }
    }

    /// Expands head indices to row (or column) indices of `head_dim` each.
    pub fn expand(heads: &[usize], head_dim: usize) -> Vec<usize> {
        heads.iter().flat_map(|&h| h * head_dim..(h + 1) * head_dim).collect()
    }

    /// The new bytes of an attention tensor (`q_proj`, `k_proj`, `v_proj`
    /// rows or `o_proj` columns), or `None` for other tensors.
    pub fn apply(&self, part: &str, t: &TensorRef<'_>, head_dim: usize) -> Option<Vec<u8>> {
        let [rows, cols] = t.shape else { return None };
        let e = t.dtype.size();
        match part {
            "q_proj" => {
                Some(reorder(t.data, *rows, *cols, e, &Self::expand(&self.q, head_dim), false))
            }
            "k_proj" | "v_proj" => {
                Some(reorder(t.data, *rows, *cols, e, &Self::expand(&self.kv, head_dim), false))
            }
            "o_proj" => {
                Some(reorder(t.data, *rows, *cols, e, &Self::expand(&self.q, head_dim), true))
            }
            _ => None,
        }
    }
}

/// Permutes the attention heads of every layer (grouped-query aware), a
/// function-preserving edit: query heads move with their key/value head.
pub fn permute_heads(
    model: &Model,
    out: &Path,
    heads: usize,
    kv_heads: usize,
    seed: u64,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(Error::invalid(format!(
            "{heads} heads cannot be grouped over {kv_heads} key/value heads"
        )));
    }
    let damage = Mutex::new(Fidelity::default());
    let transform = |t: &TensorRef<'_>| -> Result<Option<Vec<u8>>> {
        let Some((layer, part)) = attention_tensor(t.name) else { return Ok(None) };
        let width = if part == "o_proj" { t.shape.get(1) } else { t.shape.first() };
        let count = if matches!(part, "k_proj" | "v_proj") { kv_heads } else { heads };
        let Some(head_dim) = width.filter(|w| *w % count == 0).map(|w| w / count) else {
            return Err(Error::invalid(format!(
                "tensor '{}' does not split into {count} heads",
                t.name
            )));
        };
        let data = HeadPermutation::seeded(heads, kv_heads, seed, layer).apply(part, t, head_dim);
        if let Some(d) = &data {
            add_damage(&damage, super::damage_of_bytes(t.dtype, t.data, d))?;
        }
        Ok(data)
    };
    let written = write_model(model, out, &transform, &WriteOptions { progress })?;
    Ok(AttackReport { written, damage: take(damage)? })
}
