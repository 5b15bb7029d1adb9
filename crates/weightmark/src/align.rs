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
    let mut scratch = Vec::new();
    for t in &tensors {
        let [rows, cols] = t.shape else { return None };
        if !t.dtype.is_readable() {
            return None;
        }
        // Each block decoded straight into its features (not the whole
        // matrix first): the same values, half the memory.
        let data = t.data();
        let per = rows / blocks * cols * t.dtype.size();
        for (b, f) in features.iter_mut().enumerate() {
            decode_f64(t.dtype, data.get(b * per..(b + 1) * per)?, &mut scratch);
            f.extend_from_slice(&scratch);
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

/// One model's `gate_proj` and `up_proj` of a layer, read a neuron at a
/// time: a neuron's features are its `gate_proj` row followed by its
/// `up_proj` row, decoded to f64 when asked for. Only the tensors' bytes are
/// held (borrowed from the map; a GGUF tensor decoded once), never the
/// features of every neuron.
struct NeuronRows<'a> {
    gate: std::borrow::Cow<'a, [u8]>,
    up: std::borrow::Cow<'a, [u8]>,
    gate_dtype: crate::dtype::Dtype,
    up_dtype: crate::dtype::Dtype,
    gate_cols: usize,
    up_cols: usize,
    neurons: usize,
}

impl<'a> NeuronRows<'a> {
    fn of(m: &'a Model, layer: usize) -> Option<NeuronRows<'a>> {
        let name = |part: &str| format!("model.layers.{layer}.mlp.{part}.weight");
        let (gate, up) = (m.tensor(&name("gate_proj"))?, m.tensor(&name("up_proj"))?);
        let ([n, c1], [n2, c2]) = (gate.shape, up.shape) else { return None };
        if n != n2 || !gate.dtype.is_readable() || !up.dtype.is_readable() {
            return None;
        }
        let rows = NeuronRows {
            gate_dtype: gate.dtype,
            up_dtype: up.dtype,
            gate_cols: *c1,
            up_cols: *c2,
            neurons: *n,
            gate: gate.data(),
            up: up.data(),
        };
        let whole = |bytes: &[u8], dtype: crate::dtype::Dtype, cols: usize| {
            bytes.len() >= rows.neurons * cols * dtype.size()
        };
        (whole(&rows.gate, rows.gate_dtype, rows.gate_cols)
            && whole(&rows.up, rows.up_dtype, rows.up_cols))
        .then_some(rows)
    }

    fn width(&self) -> usize {
        self.gate_cols + self.up_cols
    }

    /// Neuron `i`'s features (what the concatenated f64 rows held), into `out`.
    fn features(&self, i: usize, out: &mut Vec<f64>, scratch: &mut Vec<f64>) {
        fn part(bytes: &[u8], i: usize, cols: usize, size: usize) -> &[u8] {
            bytes.get(i * cols * size..(i + 1) * cols * size).unwrap_or_default()
        }
        let gate = part(&self.gate, i, self.gate_cols, self.gate_dtype.size());
        let up = part(&self.up, i, self.up_cols, self.up_dtype.size());
        decode_f64(self.gate_dtype, gate, out);
        decode_f64(self.up_dtype, up, scratch);
        out.extend_from_slice(scratch);
    }
}

/// For one layer: `perm` with `perm[j]` = the suspect neuron that is original
/// neuron `j` (so reordering the suspect by `perm` restores the original
/// order), and how many neurons moved; `None` if nothing moved or no
/// confident matching exists.
///
/// Neurons are decoded one at a time from the tensors' bytes (the in-place
/// check, the sketches, each confirmation), so memory holds the four tensors'
/// bytes and a few rows, not both models' features as f64; every number is
/// computed from the same values in the same order as from whole matrices.
fn layer_permutation(
    suspect: &Model,
    original: &Model,
    layer: usize,
) -> Option<(Vec<usize>, usize)> {
    let fs = NeuronRows::of(suspect, layer)?;
    let fo = NeuronRows::of(original, layer)?;
    let (n, width) = (fs.neurons, fs.width());
    if n != fo.neurons || width != fo.width() {
        return None;
    }
    let pair_cosine = |i: usize, j: usize| {
        let (mut a, mut b, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
        fs.features(i, &mut a, &mut scratch);
        fo.features(j, &mut b, &mut scratch);
        cosine(&a, &b)
    };
    // In place already? (Checked in parallel; the answer is the same as one
    // neuron after another stopping at the first miss.)
    if (0..n).into_par_iter().all(|i| pair_cosine(i, i) >= MIN_COSINE) {
        return None;
    }
    // Sketches: a fixed Gaussian projection (not keyed: any fixed one works).
    let mut proj = vec![0.0; width * SKETCH];
    fill_normal(&mut stream(0, "weightmark align sketch"), 0, &mut proj);
    let sketch = |f: &NeuronRows<'_>| -> Vec<f64> {
        (0..n)
            .into_par_iter()
            .map_init(
                || (Vec::new(), Vec::new()),
                |(r, scratch), i| {
                    f.features(i, r, scratch);
                    (0..SKETCH)
                        .map(|k| {
                            r.iter().enumerate().map(|(c, x)| x * proj[c * SKETCH + k]).sum::<f64>()
                        })
                        .collect::<Vec<_>>()
                },
            )
            .flatten_iter()
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
        if pair_cosine(i, best.0) < MIN_COSINE {
            return None;
        }
        taken[best.0] = true;
        perm[best.0] = i;
    }
    let moved = perm.iter().enumerate().filter(|(j, &i)| *j != i).count();
    (moved > 0).then_some((perm, moved))
}
