//! Dropping the last decoder layers of a Llama-layout model (a crude way to
//! make a smaller derivative). Tensors of layers `>= keep` are removed; the
//! rest are kept byte for byte. Detection then reports the removed tensors as
//! missing and tests the others.

use std::path::Path;

use super::{AttackDetail, AttackReport};
use crate::error::{Error, Result};
use crate::llama::layer_of;
use crate::model::Model;
use crate::scheme::Fidelity;
use crate::synth::SynthTensor;

/// Keeps the first `keep` decoder layers. A single-file input gives the file
/// `out`; a directory gives the directory `out` with `model.safetensors` and,
/// if the input had one, a `config.json` with `num_hidden_layers` updated.
pub fn truncate(model: &Model, out: &Path, keep: usize) -> Result<AttackReport> {
    let layers = model.tensors().filter_map(|t| layer_of(t.name)).max().map_or(0, |l| l + 1);
    if layers == 0 {
        return Err(Error::invalid(format!(
            "{}: no model.layers.N tensors to drop",
            model.path.display()
        )));
    }
    if keep == 0 || keep >= layers {
        return Err(Error::invalid(format!(
            "cannot keep {keep} layers: the model has {layers}; keep between 1 and {}",
            layers - 1
        )));
    }
    crate::model::refuse_same_path(&model.path, out)?;
    let kept: Vec<SynthTensor> = model
        .tensors()
        .filter(|t| layer_of(t.name).is_none_or(|l| l < keep))
        .map(|t| SynthTensor {
            name: t.name.to_string(),
            dtype: t.dtype,
            shape: t.shape.to_vec(),
            data: t.data().into_owned(),
        })
        .collect();
    let removed = model.tensor_count() - kept.len();
    let (mut total, mut gone, mut elements) = (0.0, 0.0, 0u64);
    let mut v = Vec::new();
    for t in model.tensors().filter(|t| t.dtype.is_readable()) {
        crate::dtype::decode_f64(t.dtype, &t.data(), &mut v);
        let energy: f64 = v.iter().filter(|x| x.is_finite()).map(|x| x * x).sum();
        total += energy;
        elements += v.len() as u64;
        if layer_of(t.name).is_some_and(|l| l >= keep) {
            gone += energy;
        }
    }
    let path = super::write_new_tensors(model, out, &kept, |v| {
        v["num_hidden_layers"] = serde_json::json!(keep)
    })?;
    let damage =
        Fidelity { sum_sq_original: total, sum_sq_change: gone, max_abs_change: 0.0, elements };
    Ok(AttackReport {
        path,
        damage,
        detail: AttackDetail::Truncated { layers, kept: keep, removed },
    })
}
