//! Informed re-alignment: undoing function-preserving edits with the original
//! at hand before testing.
//!
//! Implemented: permutations of MLP neurons in Llama-layout models (rows of
//! `gate_proj`/`up_proj` and columns of `down_proj` reordered together). For
//! each layer the suspect's neurons are first compared with the original's in
//! place (cosine of the `gate_proj` rows); only when that fails are they
//! matched: each neuron is summarised by a random projection (a 32-number
//! sketch of its `gate_proj` and `up_proj` rows), candidates are found by
//! nearest sketch, then confirmed by the full cosine. The permutation found
//! is undone and the report says what was recovered. Nothing here depends on
//! the key, so the p-value bound of the detection that follows stays exact.
//! Not yet implemented: attention-head permutations, residual-stream
//! rotations.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::attack::permute::{mlp_tensor, reorder};
use crate::dtype::decode_f64;
use crate::error::Result;
use crate::model::{Model, OwnedTensor, TensorRef};
use crate::rng::{fill_normal, stream};

/// Sketch length per neuron.
const SKETCH: usize = 32;
/// Smallest cosine accepted between a suspect neuron and its match.
const MIN_COSINE: f64 = 0.5;

/// A recovered transform, in words, and the re-aligned suspect.
pub struct Realigned {
    /// The suspect with the transforms undone (all tensors held in memory).
    pub model: Model,
    /// What was recovered, one line per transform.
    pub recovered: Vec<String>,
}

/// Finds and undoes MLP neuron permutations of `suspect` relative to
/// `original`; `None` when there is nothing to undo.
pub fn realign(suspect: &Model, original: &Model) -> Result<Option<Realigned>> {
    let mut layers: Vec<usize> = suspect
        .tensors()
        .filter_map(|t| mlp_tensor(t.name).filter(|(_, down)| !down).map(|(l, _)| l))
        .collect();
    layers.sort_unstable();
    layers.dedup();
    let found: Vec<(usize, Vec<usize>, usize)> = layers
        .par_iter()
        .filter_map(|&layer| {
            layer_permutation(suspect, original, layer).map(|(p, moved)| (layer, p, moved))
        })
        .collect();
    if found.is_empty() {
        return Ok(None);
    }
    let perms: HashMap<usize, &Vec<usize>> = found.iter().map(|(l, p, _)| (*l, p)).collect();
    let mut owned = Vec::new();
    for t in suspect.tensors() {
        let data = match mlp_tensor(t.name).and_then(|(l, down)| perms.get(&l).map(|p| (p, down))) {
            Some((perm, down)) => match t.shape {
                [rows, cols] => reorder(t.data, *rows, *cols, t.dtype.size(), perm, down),
                _ => t.data.to_vec(),
            },
            None => t.data.to_vec(),
        };
        owned.push(OwnedTensor { info: t.info.clone(), data });
    }
    let recovered = found
        .iter()
        .map(|(l, p, moved)| {
            format!("MLP neurons of layer {l} were permuted ({moved} of {} moved): undone", p.len())
        })
        .collect();
    Ok(Some(Realigned { model: Model::from_owned(&suspect.path, owned)?, recovered }))
}

/// Rows of a 2-D tensor as f64.
fn rows_of(t: &TensorRef<'_>) -> Option<(usize, usize, Vec<f64>)> {
    let [rows, cols] = t.shape else { return None };
    let mut v = Vec::new();
    decode_f64(t.dtype, t.data, &mut v);
    Some((*rows, *cols, v))
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa > 0.0 && bb > 0.0 {
        ab / (aa.sqrt() * bb.sqrt())
    } else {
        0.0
    }
}

/// For one layer: `perm` with `perm[j]` = the suspect neuron that is original
/// neuron `j` (so reordering the suspect by `perm` restores the original
/// order), and how many neurons moved; `None` if nothing moved or no
/// confident matching exists.
fn layer_permutation(
    suspect: &Model,
    original: &Model,
    layer: usize,
) -> Option<(Vec<usize>, usize)> {
    let name = |part: &str| format!("model.layers.{layer}.mlp.{part}.weight");
    let features = |m: &Model| -> Option<(usize, usize, Vec<f64>)> {
        let (n, c1, gate) = rows_of(&m.tensor(&name("gate_proj"))?)?;
        let (n2, c2, up) = rows_of(&m.tensor(&name("up_proj"))?)?;
        if n != n2 {
            return None;
        }
        let width = c1 + c2;
        let mut f = Vec::with_capacity(n * width);
        for r in 0..n {
            f.extend_from_slice(&gate[r * c1..(r + 1) * c1]);
            f.extend_from_slice(&up[r * c2..(r + 1) * c2]);
        }
        Some((n, width, f))
    };
    let (n, width, fs) = features(suspect)?;
    let (n_o, width_o, fo) = features(original)?;
    if n != n_o || width != width_o {
        return None;
    }
    let row = |f: &[f64], i: usize| f[i * width..(i + 1) * width].to_vec();
    // In place already?
    if (0..n).all(|i| cosine(&row(&fs, i), &row(&fo, i)) >= MIN_COSINE) {
        return None;
    }
    // Sketches: a fixed Gaussian projection (not keyed: any fixed one works).
    let mut proj = vec![0.0; width * SKETCH];
    fill_normal(&mut stream(0, "weightmark align sketch"), 0, &mut proj);
    let sketch = |f: &[f64]| -> Vec<f64> {
        (0..n)
            .flat_map(|i| {
                let r = &f[i * width..(i + 1) * width];
                (0..SKETCH)
                    .map(|k| {
                        r.iter().enumerate().map(|(c, x)| x * proj[c * SKETCH + k]).sum::<f64>()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (ss, so) = (sketch(&fs), sketch(&fo));
    let mut perm = vec![usize::MAX; n];
    let mut taken = vec![false; n];
    for i in 0..n {
        let si = &ss[i * SKETCH..(i + 1) * SKETCH];
        let best = (0..n)
            .filter(|&j| !taken[j])
            .map(|j| (j, cosine(si, &so[j * SKETCH..(j + 1) * SKETCH])))
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        if cosine(&row(&fs, i), &row(&fo, best.0)) < MIN_COSINE {
            return None;
        }
        taken[best.0] = true;
        perm[best.0] = i;
    }
    let moved = perm.iter().enumerate().filter(|(j, &i)| *j != i).count();
    (moved > 0).then_some((perm, moved))
}
