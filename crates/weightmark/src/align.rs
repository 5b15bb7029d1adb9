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
//! Attention heads are matched the same way (whole heads, key/value heads by
//! their `k_proj` and `v_proj` rows, query heads by their `q_proj` rows),
//! when the head counts are known from a `config.json` beside the original
//! (or the suspect). Not yet implemented: residual-stream rotations.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::dtype::decode_f64;
use crate::error::Result;
use crate::llama::{attention_part, mlp_tensor, reorder, HeadPermutation, LlamaConfig};
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
    /// The original to compare with, when re-alignment had to change it too
    /// (a rotation folds the original's norm weights into its matrices).
    pub original: Option<Model>,
    /// What was recovered, one line per transform.
    pub recovered: Vec<String>,
}

/// Which residual-stream transforms [`realign`] undoes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Undo {
    /// Every orthogonal transform, signed permutations included (`ss1`).
    All,
    /// Rotations only: signed permutations of the residual stream are left
    /// to the scheme (`ss2`'s canonical coordinates are invariant to them).
    RotationsOnly,
}

/// Finds and undoes a residual-stream rotation, then permutations of MLP
/// neurons and attention heads, of `suspect` relative to `original`; `None`
/// when there is nothing to undo.
pub fn realign(suspect: &Model, original: &Model, undo: Undo) -> Result<Option<Realigned>> {
    let rotation = crate::align_rotation::unrotate(suspect, original, undo)?;
    let (s, o) = match &rotation {
        Some(r) => (&r.suspect, &r.original),
        None => (suspect, original),
    };
    let permuted = realign_permutations(s, o)?;
    Ok(match (rotation, permuted) {
        (None, None) => None,
        (None, Some(p)) => Some(p),
        (Some(r), None) => Some(Realigned {
            model: r.suspect,
            original: Some(r.original),
            recovered: vec![r.recovered],
        }),
        (Some(r), Some(mut p)) => {
            p.recovered.insert(0, r.recovered);
            p.original = Some(r.original);
            Some(p)
        }
    })
}

/// Finds and undoes MLP neuron and attention head permutations.
fn realign_permutations(suspect: &Model, original: &Model) -> Result<Option<Realigned>> {
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
    let heads = head_counts(original).or_else(|| head_counts(suspect));
    let head_found: Vec<(usize, HeadUndo)> = match heads {
        Some((h, kv)) => attention_layers(suspect)
            .par_iter()
            .filter_map(|&layer| {
                head_permutation(suspect, original, layer, h, kv).map(|u| (layer, u))
            })
            .collect(),
        None => Vec::new(),
    };
    if found.is_empty() && head_found.is_empty() {
        return Ok(None);
    }
    let perms: HashMap<usize, &Vec<usize>> = found.iter().map(|(l, p, _)| (*l, p)).collect();
    let head_perms: HashMap<usize, &HeadUndo> = head_found.iter().map(|(l, u)| (*l, u)).collect();
    let mut owned = Vec::new();
    for t in suspect.tensors() {
        let mlp = mlp_tensor(t.name).and_then(|(l, down)| perms.get(&l).map(|p| (p, down)));
        let attention =
            attention_part(t.name).and_then(|(l, part)| head_perms.get(&l).map(|u| (*u, part)));
        let data = match (mlp, attention, t.shape) {
            (Some((perm, down)), _, [rows, cols]) => {
                reorder(&t.data(), *rows, *cols, t.dtype.size(), perm, down)
            }
            (_, Some((undo, part)), [rows, cols]) => {
                let (order, columns) = match part {
                    "q_proj" => (&undo.q_rows, false),
                    "o_proj" => (&undo.q_rows, true),
                    _ => (&undo.kv_rows, false),
                };
                reorder(&t.data(), *rows, *cols, t.dtype.size(), order, columns)
            }
            _ => t.data().into_owned(),
        };
        owned.push(OwnedTensor { info: t.info.clone(), data });
    }
    let mut recovered: Vec<String> = found
        .iter()
        .map(|(l, p, moved)| {
            format!("MLP neurons of layer {l} were permuted ({moved} of {} moved): undone", p.len())
        })
        .collect();
    recovered.extend(head_found.iter().map(|(l, u)| {
        format!(
            "attention heads of layer {l} were permuted ({} of {} query heads, {} of {} key/value heads moved): undone",
            u.q_moved, u.q_heads, u.kv_moved, u.kv_heads
        )
    }));
    Ok(Some(Realigned {
        model: Model::from_owned(&suspect.path, owned)?,
        original: None,
        recovered,
    }))
}

/// How to undo one layer's head permutation: row orders (`out[k] = in[order[k]]`).
struct HeadUndo {
    q_rows: Vec<usize>,
    kv_rows: Vec<usize>,
    q_moved: usize,
    q_heads: usize,
    kv_moved: usize,
    kv_heads: usize,
}

/// (heads, key/value heads) from the model's `config.json`, if any.
fn head_counts(model: &Model) -> Option<(usize, usize)> {
    LlamaConfig::for_model(model).ok().map(|c| (c.heads, c.kv_heads))
}

/// Layers with attention projections.
fn attention_layers(model: &Model) -> Vec<usize> {
    let mut layers: Vec<usize> =
        model.tensors().filter_map(|t| attention_part(t.name).map(|(l, _)| l)).collect();
    layers.sort_unstable();
    layers.dedup();
    layers
}

/// Blocks of `block` rows of the named tensors, concatenated per block.
fn head_features(m: &Model, names: &[String], blocks: usize) -> Option<Vec<Vec<f64>>> {
    // Every tensor must split into `blocks` non-empty blocks before anything
    // is sized by `blocks` (a number from the suspect's config.json).
    let tensors = names.iter().map(|n| m.tensor(n)).collect::<Option<Vec<_>>>()?;
    let splits = |t: &TensorRef<'_>| matches!(t.shape, [rows, _] if blocks > 0 && *rows >= blocks && rows % blocks == 0);
    if !tensors.iter().all(splits) {
        return None;
    }
    let mut features = vec![Vec::new(); blocks];
    for t in &tensors {
        let (rows, cols, v) = rows_of(t)?;
        let per = rows / blocks * cols;
        for (b, f) in features.iter_mut().enumerate() {
            f.extend_from_slice(&v[b * per..(b + 1) * per]);
        }
    }
    Some(features)
}

/// Matches suspect blocks to original blocks by cosine; `order[j]` is the
/// suspect block holding original block `j`. `None` if not confident.
fn match_blocks(suspect: &[Vec<f64>], original: &[Vec<f64>]) -> Option<Vec<usize>> {
    let n = suspect.len();
    let mut order = vec![usize::MAX; n];
    let mut taken = vec![false; n];
    for (i, s) in suspect.iter().enumerate() {
        let (j, c) = (0..n)
            .filter(|&j| !taken[j])
            .map(|j| (j, cosine(s, &original[j])))
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        if c < MIN_COSINE {
            return None;
        }
        taken[j] = true;
        order[j] = i;
    }
    Some(order)
}

/// The head permutation of one layer, if the heads moved.
fn head_permutation(
    suspect: &Model,
    original: &Model,
    layer: usize,
    heads: usize,
    kv_heads: usize,
) -> Option<HeadUndo> {
    let name = |p: &str| format!("model.layers.{layer}.self_attn.{p}.weight");
    let kv_names = [name("k_proj"), name("v_proj")];
    let q_names = [name("q_proj")];
    let kv_order = match_blocks(
        &head_features(suspect, &kv_names, kv_heads)?,
        &head_features(original, &kv_names, kv_heads)?,
    )?;
    let q_order = match_blocks(
        &head_features(suspect, &q_names, heads)?,
        &head_features(original, &q_names, heads)?,
    )?;
    let moved = |o: &[usize]| o.iter().enumerate().filter(|(j, &i)| *j != i).count();
    let (q_moved, kv_moved) = (moved(&q_order), moved(&kv_order));
    if q_moved == 0 && kv_moved == 0 {
        return None;
    }
    let q_dim = suspect.tensor(&name("q_proj"))?.shape.first()? / heads;
    let kv_dim = suspect.tensor(&name("k_proj"))?.shape.first()? / kv_heads;
    Some(HeadUndo {
        q_rows: HeadPermutation::expand(&q_order, q_dim),
        kv_rows: HeadPermutation::expand(&kv_order, kv_dim),
        q_moved,
        q_heads: heads,
        kv_moved,
        kv_heads,
    })
}

/// Rows of a 2-D tensor as f64.
fn rows_of(t: &TensorRef<'_>) -> Option<(usize, usize, Vec<f64>)> {
    let [rows, cols] = t.shape else { return None };
    let mut v = Vec::new();
    decode_f64(t.dtype, &t.data(), &mut v);
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
