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
//! their `k_proj` and `v_proj` rows, query heads by their `q_proj` rows,
//! first in place, a head at a time), when the head counts are known from a
//! `config.json` beside the original (or the suspect). A permutation found
//! is undone by reading the suspect through a view ([`Model::view`]) that
//! reorders the permuted matrices when they are read, so nothing is copied.
//! A rotation of the residual stream is undone first
//! ([`crate::align_rotation`]); its rotated matrices are written to a
//! temporary file and read from there.

use std::collections::HashMap;
use std::sync::Arc;

use rayon::prelude::*;

use crate::dtype::decode_f64;
use crate::error::Result;
use crate::llama::{attention_part, mlp_tensor, HeadPermutation, LlamaConfig};
use crate::model::{Model, Reorder, TensorRef};
use crate::rng::{fill_normal, stream};

/// Sketch length per neuron.
const SKETCH: usize = 32;
/// Smallest cosine accepted between a suspect neuron and its match.
const MIN_COSINE: f64 = 0.5;

/// A recovered transform, in words, and the re-aligned suspect.
pub struct Realigned {
    /// The suspect with the transforms undone: a view of the suspect that
    /// reorders permuted matrices when they are read (rotated matrices are
    /// read from a temporary file).
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
    let permuted = permutations(s, o);
    Ok(match (rotation, permuted) {
        (None, None) => None,
        (None, Some(p)) => Some(Realigned {
            model: suspect.view(p.reorders)?,
            original: None,
            recovered: p.recovered,
        }),
        (Some(r), None) => Some(Realigned {
            model: r.suspect,
            original: Some(r.original),
            recovered: vec![r.recovered],
        }),
        (Some(r), Some(mut p)) => {
            // The rotated suspect is no longer needed as it is: its
            // tensors move into the view.
            p.recovered.insert(0, r.recovered);
            Some(Realigned {
                model: r.suspect.into_view(p.reorders)?,
                original: Some(r.original),
                recovered: p.recovered,
            })
        }
    })
}

/// The row orders that undo a layer's permutation of query heads and of
/// key/value heads.
type QueryAndKeyValueOrders = (Arc<[usize]>, Arc<[usize]>);

/// Permutations found by [`permutations`]: how to read the suspect to undo
/// them, and what was recovered, in words.
struct Permutations {
    reorders: HashMap<String, Vec<Reorder>>,
    recovered: Vec<String>,
}

/// Finds MLP neuron and attention head permutations of `suspect` relative
/// to `original`; `None` when there are none. They are undone by reading
/// the suspect through a view ([`Model::view`]) that reorders the permuted
/// matrices when they are read: nothing is copied (a re-ordered copy of a
/// permuted 7B suspect held 13.5 GB).
fn permutations(suspect: &Model, original: &Model) -> Option<Permutations> {
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
        return None;
    }
    // Matrices a permutation does not fit (a crafted suspect's) are read
    // as they are, and so are those it leaves in place (the key/value
    // heads of a layer whose query heads moved within their groups).
    let mut reorders: HashMap<String, Vec<Reorder>> = HashMap::new();
    let mut undo = |t: &TensorRef<'_>, order: Arc<[usize]>, columns: bool| {
        if order.iter().enumerate().all(|(i, &o)| i == o) {
            return;
        }
        let r = if columns { Reorder::columns(order) } else { Reorder::rows(order) };
        if let Some(r) = r.filter(|r| r.fits(t.shape)) {
            reorders.entry(t.name.to_string()).or_default().push(r);
        }
    };
    let neuron_orders: HashMap<usize, Arc<[usize]>> =
        found.iter().map(|(l, p, _)| (*l, Arc::from(p.as_slice()))).collect();
    let head_orders: HashMap<usize, QueryAndKeyValueOrders> = head_found
        .iter()
        .map(|(l, u)| (*l, (Arc::from(u.q_rows.as_slice()), Arc::from(u.kv_rows.as_slice()))))
        .collect();
    for t in suspect.tensors() {
        if let Some((order, down)) =
            mlp_tensor(t.name).and_then(|(l, down)| neuron_orders.get(&l).map(|p| (p, down)))
        {
            undo(&t, Arc::clone(order), down);
        } else if let Some(((q, kv), part)) =
            attention_part(t.name).and_then(|(l, part)| head_orders.get(&l).map(|u| (u, part)))
        {
            match part {
                "q_proj" => undo(&t, Arc::clone(q), false),
                "o_proj" => undo(&t, Arc::clone(q), true),
                _ => undo(&t, Arc::clone(kv), false),
            }
        }
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
    Some(Permutations { reorders, recovered })
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

/// A neuron's sketch: for each projection `k`, `Σ_c r[c] · proj[c · SKETCH
/// + k]`, each `k`'s terms added in `c` order from `-0.0` (as
/// `Iterator::sum` adds them: the sums of one projection after another,
/// bit for bit), the `SKETCH` sums side by side in one pass over the neuron
/// and the projection in memory order.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn sketch_of(r: &[f64], proj: &[f64]) -> [f64; SKETCH] {
    let mut acc = [-0.0f64; SKETCH];
    for (&x, p) in r.iter().zip(proj.chunks_exact(SKETCH)) {
        for (a, &w) in acc.iter_mut().zip(p) {
            *a += x * w;
        }
    }
    acc
}

/// The named tensors, or `None` unless every one is a readable matrix that
/// splits into `blocks` non-empty blocks of rows.
fn head_tensors<'m>(m: &'m Model, names: &[String], blocks: usize) -> Option<Vec<TensorRef<'m>>> {
    // Every tensor must split into `blocks` non-empty blocks before anything
    // is sized by `blocks` (a number from the suspect's config.json).
    let tensors = names.iter().map(|n| m.tensor(n)).collect::<Option<Vec<_>>>()?;
    let splits = |t: &TensorRef<'_>| matches!(t.shape, [rows, _] if blocks > 0 && *rows >= blocks && rows % blocks == 0);
    (tensors.iter().all(|t| splits(t) && t.dtype.is_readable())).then_some(tensors)
}

/// Each block's features: its rows of every named tensor, decoded to f64 and
/// concatenated in tensor order (see [`head_tensors`]).
fn head_features(m: &Model, names: &[String], blocks: usize) -> Option<Vec<Vec<f64>>> {
    let tensors = head_tensors(m, names, blocks)?;
    let mut features = vec![Vec::new(); blocks];
    let mut scratch = Vec::new();
    for t in &tensors {
        let [rows, cols] = t.shape else { return None };
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

/// Blocks whose dot products with one suspect block [`dots_with_panel`]
/// takes side by side.
const PANEL: usize = 8;

/// The original's blocks (features as [`head_features`] gives them), laid
/// out [`PANEL`] side by side: element `j` of block `PANEL · g + q` is
/// `data[(g · len + j) · PANEL + q]`, and the blocks past the last are zero.
/// One pass over a suspect block then gives its dot products with eight
/// original blocks, each still added in element order.
struct Panels {
    blocks: usize,
    len: usize,
    data: Vec<f64>,
}

impl Panels {
    /// The panels of `m`'s blocks of the named tensors (see [`head_tensors`]).
    fn of(m: &Model, names: &[String], blocks: usize) -> Option<Panels> {
        let tensors = head_tensors(m, names, blocks)?;
        let lens = tensors
            .iter()
            .map(|t| match t.shape {
                [rows, cols] => Some(rows / blocks * cols),
                _ => None,
            })
            .collect::<Option<Vec<usize>>>()?;
        let len: usize = lens.iter().sum();
        let panels = blocks.div_ceil(PANEL);
        let mut data = vec![0.0; panels.checked_mul(len)?.checked_mul(PANEL)?];
        let (mut scratch, mut offset) = (Vec::new(), 0);
        for (t, &per_block) in tensors.iter().zip(&lens) {
            let bytes = t.data();
            let per = per_block * t.dtype.size();
            for b in 0..blocks {
                decode_f64(t.dtype, bytes.get(b * per..(b + 1) * per)?, &mut scratch);
                let (g, q) = (b / PANEL, b % PANEL);
                let at = (g * len + offset) * PANEL;
                let lane = data.get_mut(at..at + per_block * PANEL)?;
                for (slot, &x) in lane.chunks_exact_mut(PANEL).zip(&scratch) {
                    slot[q] = x;
                }
            }
            offset += per_block;
        }
        Some(Panels { blocks, len, data })
    }

    /// Panel `g`'s first `m` elements of each of its blocks, interleaved.
    fn panel(&self, g: usize, m: usize) -> &[f64] {
        let at = g * self.len * PANEL;
        self.data.get(at..at + m.min(self.len) * PANEL).unwrap_or_default()
    }

    /// Each block's sum of squares over its first `m` elements, in element
    /// order from `0.0`.
    fn norms(&self, m: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.blocks.div_ceil(PANEL) * PANEL);
        for g in 0..self.blocks.div_ceil(PANEL) {
            out.extend(squares_of_panel(self.panel(g, m)));
        }
        out.truncate(self.blocks);
        out
    }
}

/// `acc` plus the `PANEL` dot products `Σ_j a[j] · panel[j · PANEL + q]`,
/// each lane's additions in `j` order (from `0.0`, over consecutive pieces
/// of the blocks, what one chain of additions per pair gives, bit for bit),
/// side by side.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn dots_with_panel(mut acc: [f64; PANEL], a: &[f64], panel: &[f64]) -> [f64; PANEL] {
    for (&x, p) in a.iter().zip(panel.chunks_exact(PANEL)) {
        for (s, &y) in acc.iter_mut().zip(p) {
            *s += x * y;
        }
    }
    acc
}

/// Each lane's sum of squares `Σ_j panel[j · PANEL + q]²`, from `0.0` in
/// `j` order, side by side.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn squares_of_panel(panel: &[f64]) -> [f64; PANEL] {
    let mut acc = [0.0f64; PANEL];
    for p in panel.chunks_exact(PANEL) {
        for (s, &y) in acc.iter_mut().zip(p) {
            *s += y * y;
        }
    }
    acc
}

/// The cosine of every suspect block with every original block:
/// `out[i][j]` is [`cosine`] of suspect block `i` and original block `j`,
/// bit for bit (the same sums in the same order; the norms are taken once
/// per block instead of once per pair).
fn block_cosines(suspect: &[Vec<f64>], original: &Panels) -> Vec<Vec<f64>> {
    let first = suspect.first().map_or(0, |s| s.len().min(original.len));
    let norms = original.norms(first);
    let panels = original.blocks.div_ceil(PANEL);
    // Suspect blocks a few at a time, the blocks read a tile of elements at
    // a time: a tile of each panel is reused by every block of a share
    // while it is in cache. Each pair still adds its products in element
    // order.
    suspect
        .par_chunks(SHARE)
        .flat_map_iter(|share| {
            let mut acc = vec![[0.0f64; PANEL]; share.len() * panels];
            let longest = share.iter().map(|s| s.len().min(original.len)).max().unwrap_or(0);
            for at in (0..longest).step_by(TILE) {
                for g in 0..panels {
                    let panel = original.panel(g, original.len);
                    for (s, sums) in share.iter().zip(acc.chunks_exact_mut(panels)) {
                        // `cosine` zips the two blocks: each is read to the shorter.
                        let m = s.len().min(original.len);
                        let (a, b) = (at.min(m), (at + TILE).min(m));
                        let tile = panel.get(a * PANEL..b * PANEL).unwrap_or_default();
                        sums[g] = dots_with_panel(sums[g], &s[a..b], tile);
                    }
                }
            }
            let norms = &norms;
            share
                .iter()
                .zip(acc.chunks_exact(panels).map(<[[f64; PANEL]]>::to_vec).collect::<Vec<_>>())
                .map(move |(s, sums)| {
                    let m = s.len().min(original.len);
                    let other;
                    let bb = if m == first {
                        norms
                    } else {
                        other = original.norms(m);
                        &other
                    };
                    let aa = s[..m].iter().fold(0.0, |acc, &x| acc + x * x);
                    let mut row: Vec<f64> = sums.into_iter().flatten().collect();
                    row.truncate(original.blocks);
                    for (c, &bb) in row.iter_mut().zip(bb) {
                        *c = if aa > 0.0 && bb > 0.0 { *c / (aa.sqrt() * bb.sqrt()) } else { 0.0 };
                    }
                    row
                })
        })
        .collect()
}

/// Suspect blocks [`block_cosines`] takes together (a share of the work).
const SHARE: usize = 8;

/// Elements of each block [`block_cosines`] reads at a time: a tile of a
/// panel (`TILE · PANEL` values, 128 KB) and of a share's blocks stay in
/// the second-level cache.
const TILE: usize = 2048;

/// Matches suspect blocks to original blocks by cosine; `order[j]` is the
/// suspect block holding original block `j`. `None` if not confident.
/// Suspect block after suspect block, each takes the original block of
/// highest cosine not yet taken (the last of equals).
fn match_blocks(suspect: &[Vec<f64>], original: &Panels) -> Option<Vec<usize>> {
    let n = suspect.len();
    if original.blocks < n {
        return None;
    }
    let cosines = block_cosines(suspect, original);
    let mut order = vec![usize::MAX; n];
    let mut taken = vec![false; n];
    for (i, row) in cosines.iter().enumerate() {
        let (j, c) = (0..n)
            .filter(|&j| !taken[j])
            .map(|j| (j, row[j]))
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        if c < MIN_COSINE {
            return None;
        }
        taken[j] = true;
        order[j] = i;
    }
    Some(order)
}

/// Whether every block of the named tensors (see [`head_tensors`]) of the
/// suspect has a cosine of at least [`MIN_COSINE`] with the same block of
/// the original's; `None` unless both split alike. Each block is decoded
/// when its cosine is taken (the blocks in parallel), each sum in element
/// order over the block's rows of every tensor in turn, as [`cosine`] adds
/// the concatenated features.
fn blocks_in_place(
    suspect: &Model,
    original: &Model,
    names: &[String],
    blocks: usize,
) -> Option<bool> {
    let (s, o) = (head_tensors(suspect, names, blocks)?, head_tensors(original, names, blocks)?);
    if s.iter().zip(&o).any(|(a, b)| a.shape != b.shape) {
        return None;
    }
    let (s_data, o_data): (Vec<_>, Vec<_>) =
        (s.iter().map(|t| t.data()).collect(), o.iter().map(|t| t.data()).collect());
    let near = (0..blocks).into_par_iter().all(|b| {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let mut sums = (0.0, 0.0, 0.0);
        for ((ts, ds), (to, dz)) in s.iter().zip(&s_data).zip(o.iter().zip(&o_data)) {
            let [rows, cols] = ts.shape else { return false };
            let (ps, po) =
                (rows / blocks * cols * ts.dtype.size(), rows / blocks * cols * to.dtype.size());
            let (Some(bs), Some(bo)) = (ds.get(b * ps..(b + 1) * ps), dz.get(b * po..(b + 1) * po))
            else {
                return false;
            };
            decode_f64(ts.dtype, bs, &mut x);
            decode_f64(to.dtype, bo, &mut y);
            sums = cosine_sums(sums, &x, &y);
        }
        cosine_of(sums) >= MIN_COSINE
    });
    Some(near)
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
    // In place already? (As for neurons: every head near its original
    // counterpart; read a head at a time, nothing held but the maps.)
    let in_place = |names: &[String], blocks: usize| {
        blocks_in_place(suspect, original, names, blocks).unwrap_or(false)
    };
    if in_place(&kv_names, kv_heads) && in_place(&q_names, heads) {
        return None;
    }
    let kv_order = match_blocks(
        &head_features(suspect, &kv_names, kv_heads)?,
        &Panels::of(original, &kv_names, kv_heads)?,
    )?;
    let q_order = match_blocks(
        &head_features(suspect, &q_names, heads)?,
        &Panels::of(original, &q_names, heads)?,
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
    cosine_of(cosine_sums((0.0, 0.0, 0.0), a, b))
}

/// `(ab, aa, bb)` with the terms of `a` and `b` added in element order:
/// the sums of [`cosine`], carried over several pieces of two vectors.
fn cosine_sums((mut ab, mut aa, mut bb): (f64, f64, f64), a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    for (x, y) in a.iter().zip(b) {
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    (ab, aa, bb)
}

/// The cosine from [`cosine_sums`]' sums (0 for a zero vector).
fn cosine_of((ab, aa, bb): (f64, f64, f64)) -> f64 {
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
                    sketch_of(r, &proj)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Dtype;
    use std::borrow::Cow;

    #[test]
    fn a_realigned_suspect_is_the_unpermuted_model_read_from_the_suspects_own_map() {
        // A directory model (config.json gives the head counts) whose MLP
        // neurons and attention heads are permuted, as a file on disk.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (original_dir, out) = (dir.path().join("original"), dir.path().join("out"));
        for d in [&original_dir, &out] {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("{e}"));
        }
        let shape = crate::synth::LlamaShape {
            vocab: 256,
            hidden: 128,
            intermediate: 344,
            layers: 2,
            heads: 8,
            kv_heads: 2,
        };
        crate::synth::write_llama_file(
            &original_dir.join("model.safetensors"),
            &shape,
            Dtype::BF16,
            7,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let config = serde_json::to_vec(&shape.config_json(Dtype::BF16)).unwrap_or_default();
        std::fs::write(original_dir.join("config.json"), config).unwrap_or_else(|e| panic!("{e}"));
        let original = Model::open(&original_dir).unwrap_or_else(|e| panic!("{e}"));
        let permuted_dir = out.join("permuted");
        crate::attack::permute::permute(
            &original,
            &permuted_dir,
            crate::attack::PermuteWhat::Both,
            9,
            &crate::NoProgress,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let suspect = Model::open(&permuted_dir).unwrap_or_else(|e| panic!("{e}"));
        let realigned = realign(&suspect, &original, Undo::All)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("nothing recovered"));
        assert!(realigned.original.is_none());
        assert_eq!(realigned.recovered.len(), 2 * shape.layers, "{:?}", realigned.recovered);
        let view = &realigned.model;
        assert_eq!(view.tensor_count(), suspect.tensor_count());
        let mut moved = 0;
        for (o, v) in original.tensors().zip(view.tensors()) {
            assert_eq!((o.name, o.shape), (v.name, v.shape));
            // Byte for byte the original's: the permutation undone exactly.
            assert!(o.data()[..] == v.data()[..], "{} differs", o.name);
            let stored = suspect.tensor(o.name).unwrap_or_else(|| panic!("{}", o.name));
            if stored.data()[..] == o.data()[..] {
                // Not moved: read in place from the suspect's map, not copied.
                let (read, mapped) = (v.data(), stored.data());
                assert!(matches!(read, Cow::Borrowed(_)), "{} was copied", o.name);
                assert_eq!(read.as_ptr(), mapped.as_ptr(), "{}", o.name);
            } else {
                assert!(v.is_decoded_on_read(), "{}", o.name);
                moved += 1;
            }
        }
        // gate, up, down, q and o of every layer, and k and v where the
        // key/value heads moved.
        assert!(moved >= 5 * shape.layers, "{moved} moved");
    }

    /// A suspect's value of element `k` of tensor `t`.
    type Values<'a> = Box<dyn Fn(usize, usize) -> f64 + 'a>;

    /// `match_blocks` as it was written first: one cosine per pair, taken
    /// when needed. The reference the panels must equal.
    fn match_blocks_pair_by_pair(
        suspect: &[Vec<f64>],
        original: &[Vec<f64>],
    ) -> Option<Vec<usize>> {
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

    /// A layer's `q_proj`, `k_proj` and `v_proj` (`heads` query heads and
    /// `kv` key/value heads of `dim` rows, `cols` columns) as `dtype`, from
    /// `values` (its values for element `k` of tensor `t`).
    fn attention(
        dtype: Dtype,
        heads: usize,
        kv: usize,
        dim: usize,
        cols: usize,
        values: impl Fn(usize, usize) -> f64,
    ) -> Model {
        let parts = [("q_proj", heads), ("k_proj", kv), ("v_proj", kv)];
        let tensors = parts
            .iter()
            .enumerate()
            .map(|(t, &(part, h))| {
                let x: Vec<f64> = (0..h * dim * cols).map(|k| values(t, k)).collect();
                // NaN included, which the encoders refuse.
                let bytes: Vec<u8> = x
                    .iter()
                    .flat_map(|&v| match dtype {
                        Dtype::F16 => half::f16::from_f64(v).to_le_bytes().to_vec(),
                        Dtype::BF16 => half::bf16::from_f64(v).to_le_bytes().to_vec(),
                        _ => (v as f32).to_le_bytes().to_vec(),
                    })
                    .collect();
                (
                    format!("model.layers.0.self_attn.{part}.weight"),
                    dtype,
                    vec![h * dim, cols],
                    bytes,
                )
            })
            .collect();
        match Model::from_tensors("attention", tensors) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn sketches_side_by_side_are_the_one_projection_at_a_time_sums_bit_for_bit() {
        let width = 301;
        let mut proj = vec![0.0; width * SKETCH];
        fill_normal(&mut stream(0, "weightmark align sketch"), 0, &mut proj);
        let mut r = vec![0.0; width];
        fill_normal(&mut stream(1, "a neuron"), 0, &mut r);
        // No features at all: the empty sums (`-0.0`).
        let mut cases = vec![r.clone(), vec![0.0; width], vec![-0.0; width], Vec::new()];
        let mut special = r.clone();
        special[3] = f64::NAN;
        special[7] = f64::INFINITY;
        special[8] = 0.0;
        cases.push(special);
        let mut huge = r;
        huge.iter_mut().step_by(5).for_each(|x| *x *= 1e300);
        cases.push(huge);
        for (n, r) in cases.iter().enumerate() {
            let got = sketch_of(r, &proj);
            for (k, g) in got.iter().enumerate() {
                let want: f64 = r.iter().enumerate().map(|(c, x)| x * proj[c * SKETCH + k]).sum();
                let same = g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan());
                assert!(same, "case {n}, projection {k}: {g} against {want}");
            }
        }
    }

    #[test]
    fn panels_give_every_cosine_and_match_of_the_pair_by_pair_version_bit_for_bit() {
        let noise = |seed: u64, k: usize| {
            // A fixed pseudo-random value in [-1, 1).
            let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (k as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z ^= z >> 31;
            z = z.wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 29;
            (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        };
        // (query heads, key/value heads, rows per head, columns): a panel
        // exactly full, a last panel short of blocks, one block alone.
        for (dtype, heads, kv, dim, cols) in
            [(Dtype::BF16, 16, 8, 4, 24), (Dtype::F16, 9, 3, 2, 40), (Dtype::F32, 12, 1, 3, 17)]
        {
            let original = attention(dtype, heads, kv, dim, cols, |t, k| noise(t as u64, k));
            let q_names = ["model.layers.0.self_attn.q_proj.weight".to_string()];
            let kv_names = [
                "model.layers.0.self_attn.k_proj.weight".to_string(),
                "model.layers.0.self_attn.v_proj.weight".to_string(),
            ];
            // Suspects: the original; its heads reversed with a little
            // noise; unrelated weights; heads zeroed, with NaN, with ties.
            let len = |_t: usize| dim * cols;
            let suspects: Vec<(&str, Values<'_>)> = vec![
                ("same", Box::new(|t, k| noise(t as u64, k))),
                (
                    "reversed",
                    Box::new(move |t, k| {
                        let h = if t == 0 { heads } else { kv };
                        let (b, r) = (k / len(t), k % len(t));
                        noise(t as u64, (h - 1 - b) * len(t) + r) + 0.1 * noise(7, k)
                    }),
                ),
                ("unrelated", Box::new(|t, k| noise(100 + t as u64, k))),
                (
                    "zero head",
                    Box::new(move |t, k| if k < len(t) { 0.0 } else { noise(t as u64, k) }),
                ),
                (
                    "nan",
                    Box::new(
                        move |t, k| if k == len(t) + 1 { f64::NAN } else { noise(t as u64, k) },
                    ),
                ),
                (
                    "ties",
                    Box::new(|t, k| if k % 2 == 0 { 1.0 } else { noise(t as u64 + 3, k % 5) }),
                ),
            ];
            for (what, values) in &suspects {
                let suspect = attention(dtype, heads, kv, dim, cols, values);
                for (names, blocks) in [(&q_names[..], heads), (&kv_names[..], kv)] {
                    let (Some(s), Some(o), Some(panels)) = (
                        head_features(&suspect, names, blocks),
                        head_features(&original, names, blocks),
                        Panels::of(&original, names, blocks),
                    ) else {
                        panic!("{what}: the blocks of {names:?} could not be read");
                    };
                    let got = block_cosines(&s, &panels);
                    for (i, row) in got.iter().enumerate() {
                        for (j, &c) in row.iter().enumerate() {
                            let want = cosine(&s[i], &o[j]);
                            assert_eq!(c.to_bits(), want.to_bits(), "{what} {dtype:?} ({i}, {j})");
                        }
                    }
                    assert_eq!(
                        match_blocks(&s, &panels),
                        match_blocks_pair_by_pair(&s, &o),
                        "{what} {dtype:?} {names:?}"
                    );
                    // The in-place check, a block at a time, is the
                    // cosine of each block with its counterpart.
                    let in_place = s.iter().zip(&o).all(|(a, b)| cosine(a, b) >= MIN_COSINE);
                    assert_eq!(
                        blocks_in_place(&suspect, &original, names, blocks),
                        Some(in_place),
                        "{what} {dtype:?} {names:?}"
                    );
                    // (One block reversed is in place.)
                    let expected = match *what {
                        "same" => Some(true),
                        "reversed" => Some(blocks == 1),
                        "unrelated" => Some(false),
                        _ => None,
                    };
                    if let Some(e) = expected {
                        assert_eq!(in_place, e, "{what} {names:?}");
                    }
                }
            }
            // The reversed suspect's heads are found.
            let reversed = attention(dtype, heads, kv, dim, cols, &suspects[1].1);
            let undo = head_permutation(&reversed, &original, 0, heads, kv);
            let Some(undo) = undo else { panic!("{dtype:?}: the reversed heads were not matched") };
            assert_eq!(undo.q_moved, if heads % 2 == 1 { heads - 1 } else { heads });
        }
    }
}
