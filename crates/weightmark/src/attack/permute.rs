//! Function-preserving permutation of MLP neurons in a Llama-layout model:
//! for each layer a seeded permutation of the intermediate neurons reorders
//! the rows of `gate_proj` and `up_proj` and the columns of `down_proj`
//! together, so the model computes exactly the same function while every
//! marked element of those tensors moves.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use super::{add_damage, AttackReport, PermuteWhat};
use crate::error::{Error, Result};
pub use crate::llama::HeadPermutation;
use crate::llama::{attention_part, mlp_tensor, permutation, reorder, LlamaConfig};
use crate::model::{Model, TensorRef};
use crate::progress::Progress;
use crate::scheme::Fidelity;

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
        let data = reorder(&t.data(), *rows, *cols, t.dtype.size(), perm, down);
        add_damage(&damage, super::damage_of_bytes(t.dtype, &t.data(), &data))?;
        Ok(Some(data))
    };
    // The function is unchanged, but element by element the weights moved a lot.
    super::write_attacked(model, out, &transform, progress, &damage)
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
        let Some((layer, part)) = attention_part(t.name) else { return Ok(None) };
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
            add_damage(&damage, super::damage_of_bytes(t.dtype, &t.data(), d))?;
        }
        Ok(data)
    };
    super::write_attacked(model, out, &transform, progress, &damage)
}

/// Permutes what `what` says: MLP neurons, attention heads (counts from the
/// model's `config.json`), or both (neurons first, through a staging copy
/// beside `out`; the two touch different tensors, so their damage adds).
pub fn permute(
    model: &Model,
    out: &Path,
    what: PermuteWhat,
    seed: u64,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    let heads = || LlamaConfig::for_model(model).map(|c| (c.heads, c.kv_heads));
    match what {
        PermuteWhat::Mlp => permute_mlp(model, out, seed, progress),
        PermuteWhat::Heads => {
            let (h, kv) = heads()?;
            permute_heads(model, out, h, kv, seed, progress)
        }
        PermuteWhat::Both => {
            let (h, kv) = heads()?;
            let staging = crate::io::StagingDir::create(out)?;
            let name = out.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "model".into());
            let step = staging.path().join(name);
            let mlp = permute_mlp(model, &step, seed, progress)?;
            let mid = Model::open(&step)?;
            let mut both = permute_heads(&mid, out, h, kv, seed, progress)?;
            both.damage = both.damage.merge(mlp.damage);
            Ok(both)
        }
    }
}
