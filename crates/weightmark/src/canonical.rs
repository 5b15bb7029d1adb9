//! Canonical coordinates for scheme `ss2`, computed from the weights alone
//! (never from a key, so the detection bound stays exact).
//!
//! The residual stream of a Llama-layout model can be permuted (and its
//! channels' signs flipped) through every tensor at no cost to the model. Its
//! canonical order is fixed by the embedding: channel `j` goes to the rank of
//! the mean magnitude of column `j` of `model.embed_tokens.weight` (or of
//! `lm_head.weight` when there is no embedding), largest first, ties by
//! stored index. No free transform rescales embedding columns (RMSNorm would
//! notice), sign flips leave magnitudes alone, and the mark itself moves a
//! column's mean magnitude by about `strength / sqrt(vocab)` of itself, far
//! less than the gaps between neighbours. A tensor's residual axis (the
//! columns of matrices that read the stream, the rows of those that write
//! it, the columns of the embedding and head) is indexed in this order; every
//! other axis keeps its stored order.

use rayon::prelude::*;

use crate::dtype::decode_f64;
use crate::llama::{role, Role};
use crate::model::{Model, TensorRef};

/// Canonical indices of a model's axes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Canonical {
    /// `rank[j]`: the canonical index of stored residual channel `j`; empty
    /// when the model has no Llama-layout embedding.
    pub rank: Vec<u32>,
}

/// Which axes of one tensor are in canonical order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Axes<'c> {
    /// Canonical index of each stored row, when rows are residual channels.
    pub rows: Option<&'c [u32]>,
    /// Canonical index of each stored column, when columns are residual channels.
    pub cols: Option<&'c [u32]>,
    /// Canonical index of each stored index of the axis that is not
    /// residual, when a sketch matched them: MLP neurons (the rows of
    /// `gate_proj` and `up_proj`, the columns of `down_proj`) or attention
    /// head channels (the rows of `q/k/v_proj`, the columns of `o_proj`).
    /// `None` keeps the stored order (the original's, at embedding).
    pub neurons: Option<&'c [u32]>,
}

/// Names of the tensors that fix the residual order, in preference order.
const ORDER_SOURCES: [&str; 2] = ["model.embed_tokens.weight", "lm_head.weight"];

impl Canonical {
    /// The canonical residual order of `model` (one pass over its embedding).
    pub fn of(model: &Model) -> Canonical {
        let Some((t, _, cols)) = order_source(model) else { return Canonical::default() };
        let key = column_mean_magnitudes(&t, cols);
        let mut order: Vec<usize> = (0..cols).collect();
        order.sort_by(|&a, &b| key[b].total_cmp(&key[a]).then(a.cmp(&b)));
        let mut rank = vec![0u32; cols];
        for (r, &j) in order.iter().enumerate() {
            rank[j] = r as u32;
        }
        Canonical { rank }
    }

    /// The residual width, or 0 when the model has no canonical order.
    pub fn hidden(&self) -> usize {
        self.rank.len()
    }

    /// Which axes of `t` follow the canonical residual order.
    pub fn axes(&self, t: &TensorRef<'_>) -> Axes<'_> {
        let hidden = self.hidden();
        let [rows, cols] = *t.shape else { return Axes::default() };
        if hidden == 0 {
            return Axes::default();
        }
        let rank = Some(self.rank.as_slice());
        match role(t.name) {
            Some(Role::Reads(_)) if cols == hidden => {
                Axes { rows: None, cols: rank, neurons: None }
            }
            Some(Role::Writes) if rows == hidden => Axes { rows: rank, cols: None, neurons: None },
            _ => Axes::default(),
        }
    }
}

/// The tensor that fixes `model`'s residual order, with its rows and
/// columns; `None` (no canonical order) without one that is a readable,
/// non-empty matrix. [`Canonical::of`] is as wide as its columns.
fn order_source(model: &Model) -> Option<(TensorRef<'_>, usize, usize)> {
    let t = ORDER_SOURCES.iter().find_map(|n| model.tensor(n))?;
    let [rows, cols] = *t.shape else { return None };
    (t.dtype.is_readable() && rows > 0 && cols > 0).then_some((t, rows, cols))
}

/// Rows of the embedding sampled to match channels (every k-th row).
const MATCH_ROWS: usize = 4096;

/// How far, in canonical rank, a suspect channel's match is looked for.
const MATCH_WINDOW: usize = 64;

/// Informed detection: for each stored residual channel of `suspect`, the
/// stored channel of `original` holding the same content. Candidates are
/// the original's channels within [`MATCH_WINDOW`] canonical ranks; the one
/// whose embedding column (on a fixed sample of rows) correlates best in
/// absolute value wins (a sign flip gives -1). Weights only, never the key.
/// `None` without a Llama embedding in both, or when the widths differ.
pub fn match_residual(
    suspect: &Model,
    original: &Model,
    cs: &Canonical,
    co: &Canonical,
) -> Option<Vec<usize>> {
    let hidden = cs.hidden();
    if hidden == 0 || co.hidden() != hidden {
        return None;
    }
    let name = ORDER_SOURCES
        .iter()
        .find(|n| suspect.tensor(n).is_some() && original.tensor(n).is_some())?;
    let (sc, oc) = (match_columns(suspect, name, hidden)?, match_columns(original, name, hidden)?);
    let mut by_rank = vec![0usize; hidden];
    for (stored, &r) in co.rank.iter().enumerate() {
        *by_rank.get_mut(r as usize)? = stored;
    }
    let window = |j: usize| -> Option<(usize, std::ops::Range<usize>)> {
        let r = *cs.rank.get(j)? as usize;
        (r < hidden)
            .then(|| (r, r.saturating_sub(MATCH_WINDOW)..(r + MATCH_WINDOW + 1).min(hidden)))
    };
    // Suspect channels in canonical order, a block of neighbours at a time:
    // their windows overlap, so each candidate's column is read once for
    // the block rather than once per channel.
    let mut order: Vec<usize> = (0..hidden).collect();
    order.sort_by_key(|&j| (cs.rank.get(j).copied(), j));
    let blocks: Vec<Vec<(usize, usize)>> = order
        .par_chunks(MATCH_BLOCK)
        .map(|block| -> Option<Vec<(usize, usize)>> {
            let windows: Vec<(usize, std::ops::Range<usize>)> =
                block.iter().map(|&j| window(j)).collect::<Option<_>>()?;
            let lo = windows.iter().map(|(_, w)| w.start).min()?;
            let hi = windows.iter().map(|(_, w)| w.end).max()?;
            // The block's columns side by side (a short block repeats its
            // first; those dot products are not read).
            let len = block.iter().map(|&j| sc[j].len()).min().unwrap_or(0);
            let a: Vec<[f64; MATCH_BLOCK]> = (0..len)
                .map(|t| std::array::from_fn(|i| sc[*block.get(i).unwrap_or(&block[0])][t]))
                .collect();
            // Dot products with every candidate of the union of the windows,
            // four candidates at a time.
            let mut dots: Vec<[f64; MATCH_BLOCK]> = Vec::with_capacity(hi - lo + 3);
            for first in (lo..hi).step_by(4) {
                let b: [&[f64]; 4] =
                    std::array::from_fn(|k| oc[by_rank[(first + k).min(hi - 1)]].as_slice());
                dots.extend(dots_block(&a, b));
            }
            // The first largest |correlation| in each channel's own window,
            // candidates compared in canonical order.
            Some(
                block
                    .iter()
                    .zip(&windows)
                    .enumerate()
                    .map(|(i, (&j, (r, w)))| {
                        let mut best = (by_rank[*r], f64::MIN);
                        for p in w.clone() {
                            let c = dots[p - lo][i];
                            if c.abs() > best.1 {
                                best = (by_rank[p], c.abs());
                            }
                        }
                        (j, best.0)
                    })
                    .collect(),
            )
        })
        .collect::<Option<_>>()?;
    let mut matched = vec![0usize; hidden];
    for (j, k) in blocks.into_iter().flatten() {
        matched[j] = k;
    }
    Some(matched)
}

/// The columns [`match_residual`] compares: each embedding column on a
/// fixed sample of rows, centred and scaled to norm 1 (non-finite entries
/// read as 0). `None` unless `m`'s tensor `name` is a readable matrix of
/// `hidden` columns.
fn match_columns(m: &Model, name: &str, hidden: usize) -> Option<Vec<Vec<f64>>> {
    let t = m.tensor(name)?;
    let [rows, cols] = *t.shape else { return None };
    if cols != hidden || !t.dtype.is_readable() {
        return None;
    }
    let step = (rows / MATCH_ROWS).max(1);
    let size = t.dtype.size();
    // Each column's vector at its final size from the start (`vec!`
    // would clone an empty vector, without its capacity, and every
    // column would grow by copies).
    let taken = rows.div_ceil(step);
    let mut out: Vec<Vec<f64>> = (0..cols).map(|_| Vec::with_capacity(taken)).collect();
    let mut row = Vec::new();
    let data = t.data();
    for r in (0..rows).step_by(step) {
        decode_f64(t.dtype, data.get(r * cols * size..(r + 1) * cols * size)?, &mut row);
        for (c, v) in out.iter_mut().zip(&row) {
            c.push(if v.is_finite() { *v } else { 0.0 });
        }
    }
    for c in &mut out {
        let mean = c.iter().sum::<f64>() / c.len().max(1) as f64;
        c.iter_mut().for_each(|v| *v -= mean);
        let norm = c.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 0.0 {
            c.iter_mut().for_each(|v| *v /= norm);
        }
    }
    Some(out)
}

/// Suspect channels matched together by [`match_residual`].
const MATCH_BLOCK: usize = 8;

/// The dot products of each of [`MATCH_BLOCK`] vectors (`a[t][i]` is
/// element `t` of vector `i`) with each of four vectors `bs`: for each
/// vector of `bs`, one per `a` vector. Each adds its products in element
/// order, over the elements both have.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn dots_block(a: &[[f64; MATCH_BLOCK]], bs: [&[f64]; 4]) -> [[f64; MATCH_BLOCK]; 4] {
    let len = bs.iter().map(|b| b.len()).min().unwrap_or(0).min(a.len());
    let bs = bs.map(|b| &b[..len]);
    let mut sums = [[0.0f64; MATCH_BLOCK]; 4];
    for (t, at) in a[..len].iter().enumerate() {
        for (s, b) in sums.iter_mut().zip(&bs) {
            let bt = b[t];
            for (s, &x) in s.iter_mut().zip(at) {
                *s += x * bt;
            }
        }
    }
    sums
}

/// Embedding rows a residual sketch samples (a multiple of 64).
pub const SKETCH_ROWS: usize = 256;

/// Largest sketch a certificate may carry: rows sampled, channels.
const SKETCH_MAX_ROWS: usize = 4096;
const SKETCH_MAX_CHANNELS: usize = 1 << 18;

/// A public sketch of the original's residual channels, carried by an `ss2`
/// certificate: for each channel, in canonical order, one bit per sampled
/// embedding row, set where the entry lies above the channel's mean over the
/// sample. Detection finds each suspect channel's canonical index by content
/// (the channel whose bits agree best, in absolute value: a sign flip
/// inverts them), so edits that reorder the channels' magnitudes (heavy
/// drift, pruning, a merge with another model) no longer scramble the order.
/// Computed from the original's weights, never the key: the matching cannot
/// depend on the key, and the bound stays exact (docs/ss2.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResidualSketch {
    /// The tensor the bits come from (the embedding, or the head).
    pub tensor: String,
    /// The sampled rows, ascending.
    pub rows: Vec<usize>,
    /// `rows.len() / 64` words per channel, channels in canonical order.
    pub bits: Vec<u64>,
}

impl ResidualSketch {
    /// The sketch of `model` (the original, before marking) in the canonical
    /// order `canonical`; `None` without a Llama-layout embedding.
    pub(crate) fn of(model: &Model, canonical: &Canonical) -> Option<ResidualSketch> {
        let hidden = canonical.hidden();
        let (name, t) = ORDER_SOURCES.iter().find_map(|n| Some((*n, model.tensor(n)?)))?;
        let [vocab, cols] = *t.shape else { return None };
        if hidden == 0 || cols != hidden || vocab < SKETCH_ROWS {
            return None;
        }
        let rows: Vec<usize> =
            (0..SKETCH_ROWS).map(|i| (2 * i + 1) * vocab / (2 * SKETCH_ROWS)).collect();
        let stored = channel_bits(&t, &rows)?;
        let words = SKETCH_ROWS / 64;
        let mut bits = vec![0u64; hidden * words];
        for (j, &r) in canonical.rank.iter().enumerate() {
            let r = r as usize;
            bits.get_mut(r * words..(r + 1) * words)?
                .copy_from_slice(stored.get(j * words..(j + 1) * words)?);
        }
        Some(ResidualSketch { tensor: name.to_string(), rows, bits })
    }

    /// The sketch of `model` in its own canonical order (what `embed` puts
    /// in the certificate when it marks `model`).
    pub fn of_model(model: &Model) -> Option<ResidualSketch> {
        ResidualSketch::of(model, &Canonical::of(model))
    }

    /// Checks a sketch read from a certificate: rows ascending, a multiple of
    /// 64 of them, bits for a whole number of channels.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.rows.len();
        if n == 0 || n % 64 != 0 || n > SKETCH_MAX_ROWS {
            return Err(format!(
                "{n} sampled rows; want a positive multiple of 64, at most {SKETCH_MAX_ROWS}"
            ));
        }
        if self.rows.windows(2).any(|w| w[0] >= w[1]) {
            return Err("sampled rows are not strictly ascending".into());
        }
        let words = n / 64;
        if self.bits.is_empty()
            || self.bits.len() % words != 0
            || self.bits.len() / words > SKETCH_MAX_CHANNELS
        {
            return Err(format!(
                "{} words of bits do not make whole channels of {words} words",
                self.bits.len()
            ));
        }
        if !ORDER_SOURCES.contains(&self.tensor.as_str()) {
            return Err(format!(
                "sketch of {:?}, which does not fix the residual order",
                self.tensor
            ));
        }
        Ok(())
    }

    /// The residual width the sketch describes.
    pub fn hidden(&self) -> usize {
        self.bits.len() / (self.rows.len() / 64).max(1)
    }

    /// The canonical order of `suspect` found by content (and, for each
    /// stored channel, whether its sign was found flipped): each stored
    /// residual channel gets the canonical index of the sketch channel its
    /// bits agree with best, greedily from the strongest agreement down and
    /// each index at most once; channels left without a clear match
    /// (agreement within [`SKETCH_MIN_SCORE`] of chance) take the indices
    /// left over in their magnitude order ([`Canonical::of`]). Always a
    /// permutation, so distinct elements keep distinct canonical indices.
    /// `None` when the suspect's embedding cannot be compared (width, rows).
    pub(crate) fn order_of(&self, suspect: &Model) -> Option<(Canonical, Vec<bool>)> {
        let hidden = self.hidden();
        let t = suspect.tensor(&self.tensor)?;
        let [vocab, cols] = *t.shape else { return None };
        if cols != hidden || self.rows.last().is_none_or(|&r| r >= vocab) {
            return None;
        }
        let words = self.rows.len() / 64;
        let n = (words * 64) as i64;
        let stored = channel_bits(&t, &self.rows)?;
        let min_score = (SKETCH_MIN_SCORE * n as f64).ceil() as i64;
        // For each suspect channel its best few sketch channels, by |agreement|.
        const KEEP: usize = 4;
        let mut pairs: Vec<(i64, usize, usize, bool)> = (0..hidden)
            .into_par_iter()
            .flat_map_iter(|j| {
                let s = &stored[j * words..(j + 1) * words];
                let mut best: Vec<(i64, usize, bool)> = Vec::with_capacity(KEEP + 1);
                for r in 0..hidden {
                    let o = &self.bits[r * words..(r + 1) * words];
                    let differ: i64 =
                        s.iter().zip(o).map(|(a, b)| (a ^ b).count_ones() as i64).sum();
                    let signed = n - 2 * differ;
                    let score = signed.abs();
                    if score >= min_score
                        && (best.len() < KEEP || best.last().is_some_and(|b| score > b.0))
                    {
                        let at = best.partition_point(|b| b.0 >= score);
                        best.insert(at, (score, r, signed < 0));
                        best.truncate(KEEP);
                    }
                }
                best.into_iter().map(move |(score, r, flip)| (score, j, r, flip))
            })
            .collect();
        pairs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut rank = vec![u32::MAX; hidden];
        let mut flipped = vec![false; hidden];
        let mut taken = vec![false; hidden];
        for (_, j, r, flip) in pairs {
            if rank[j] == u32::MAX && !taken[r] {
                rank[j] = r as u32;
                flipped[j] = flip;
                taken[r] = true;
            }
        }
        // The magnitude order (a pass over the embedding) is only needed
        // for channels the sketch left over; its width is checked either way.
        if order_source(suspect).map(|(_, _, cols)| cols) != Some(hidden) {
            return None;
        }
        let mut left: Vec<usize> = (0..hidden).filter(|&j| rank[j] == u32::MAX).collect();
        if !left.is_empty() {
            let fallback = Canonical::of(suspect);
            left.sort_by_key(|&j| (fallback.rank.get(j).copied().unwrap_or(u32::MAX), j));
        }
        let free = (0..hidden).filter(|&r| !taken[r]);
        for (j, r) in left.into_iter().zip(free) {
            rank[j] = r as u32;
        }
        Some((Canonical { rank }, flipped))
    }
}

/// Residual channels a neuron sketch samples: one bit (one 64-bit word) per neuron.
const NEURON_COLUMNS: usize = 64;

/// Least agreement for a neuron match, in standard deviations of chance
/// (agreements minus disagreements over the known entries, divided by the
/// square root of their number): 5, so a layer of 1,536 neurons sees about
/// one chance pair above it.
const NEURON_MIN_SIGMAS: i64 = 5;

/// The gate of layer `l`, which fixes its neurons' identities: no free
/// transform flips or rescales a gate row (SiLU is neither odd nor linear).
fn gate_name(l: usize) -> String {
    format!("model.layers.{l}.mlp.gate_proj.weight")
}

/// A public sketch of the original's MLP neurons, carried by an `ss2`
/// certificate: for each layer and neuron, the signs of its gate row (with
/// the norm before it folded in) at [`NEURON_COLUMNS`] residual channels
/// fixed by canonical position. Blind detection matches each suspect
/// neuron to the original neuron whose signs agree best, so a permutation of
/// the neurons (free for the model) no longer hides the rows of
/// `gate`/`up` and the columns of `down` from their signs. The canonical
/// index of a neuron is its stored index in the original; embedding does not
/// change. Computed from the weights, never the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeuronSketch {
    /// The sampled residual channels, as canonical positions.
    pub columns: Vec<usize>,
    /// Neurons per layer.
    pub neurons: usize,
    /// One word per neuron, layer by layer.
    pub bits: Vec<u64>,
}

impl NeuronSketch {
    /// The sketch of `model` (the original) in its canonical residual order;
    /// `None` without a residual order or gates of one shape.
    pub(crate) fn of(model: &Model, canonical: &Canonical) -> Option<NeuronSketch> {
        let hidden = canonical.hidden();
        if hidden < NEURON_COLUMNS {
            return None;
        }
        let columns: Vec<usize> =
            (0..NEURON_COLUMNS).map(|k| (2 * k + 1) * hidden / (2 * NEURON_COLUMNS)).collect();
        let flips = vec![false; hidden];
        let (mut bits, mut neurons) = (Vec::new(), 0);
        for l in 0.. {
            let Some(layer) = gate_bits(model, l, canonical, &flips, &columns) else { break };
            let layer: Vec<u64> = layer.into_iter().map(|(word, _)| word).collect();
            if l > 0 && layer.len() != neurons {
                return None;
            }
            neurons = layer.len();
            bits.extend(layer);
        }
        (neurons > 0).then_some(NeuronSketch { columns, neurons, bits })
    }

    /// The sketch of `model` in its own canonical order (what `embed` puts
    /// in the certificate when it marks `model`).
    pub fn of_model(model: &Model) -> Option<NeuronSketch> {
        NeuronSketch::of(model, &Canonical::of(model))
    }

    /// The number of layers sketched.
    pub fn layers(&self) -> usize {
        self.bits.len() / self.neurons.max(1)
    }

    /// Checks a sketch read from a certificate.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.columns.len() != NEURON_COLUMNS {
            return Err(format!("{} sampled channels; want {NEURON_COLUMNS}", self.columns.len()));
        }
        if self.neurons == 0 || self.bits.is_empty() || self.bits.len() % self.neurons != 0 {
            return Err(format!(
                "{} words do not make whole layers of {} neurons",
                self.bits.len(),
                self.neurons
            ));
        }
        Ok(())
    }

    /// For each layer, the canonical index (the original's stored index) of
    /// each stored neuron of `suspect`, matched greedily from the strongest
    /// agreement down, each index at most once; neurons without a match
    /// keep their own index where it is free, then take the free ones in
    /// order. `canonical` and `flipped` are the suspect's residual order and
    /// channel signs ([`ResidualSketch::order_of`]). `None` for a layer whose
    /// gate is missing or of another shape.
    pub(crate) fn neuron_maps(
        &self,
        suspect: &Model,
        canonical: &Canonical,
        flipped: &[bool],
    ) -> Vec<Option<Vec<u32>>> {
        (0..self.layers())
            .map(|l| {
                let theirs = gate_bits(suspect, l, canonical, flipped, &self.columns)?;
                let ours = self.bits.get(l * self.neurons..(l + 1) * self.neurons)?;
                (theirs.len() == ours.len()).then(|| match_neurons(&theirs, ours))
            })
            .collect()
    }
}

/// One word per neuron of layer `l`'s gate: bit `k` set where the gate
/// entry at residual channel `columns[k]` (a canonical position), times the
/// sign of the norm weight before it and of the channel's flip, is positive;
/// with it, the mask of entries that have a sign (not zero: pruned).
fn gate_bits(
    model: &Model,
    l: usize,
    canonical: &Canonical,
    flipped: &[bool],
    columns: &[usize],
) -> Option<Vec<(u64, u64)>> {
    let hidden = canonical.hidden();
    let t = model.tensor(&gate_name(l))?;
    let [neurons, cols] = *t.shape else { return None };
    if cols != hidden || !t.dtype.is_readable() || columns.len() > 64 {
        return None;
    }
    let mut stored = vec![0usize; hidden];
    for (j, &r) in canonical.rank.iter().enumerate() {
        *stored.get_mut(r as usize)? = j;
    }
    let channels: Vec<usize> =
        columns.iter().map(|&c| stored.get(c).copied()).collect::<Option<_>>()?;
    let norm = model
        .tensor(&format!("model.layers.{l}.post_attention_layernorm.weight"))
        .filter(|n| n.shape == [hidden] && n.dtype.is_readable())
        .map(|n| (n.dtype, n.data()));
    let norm_sign = |j: usize| -> bool {
        norm.as_ref()
            .and_then(|(dtype, data)| {
                let size = dtype.size();
                let mut v = Vec::new();
                decode_f64(*dtype, data.get(j * size..(j + 1) * size)?, &mut v);
                v.first().map(|x| *x < 0.0)
            })
            .unwrap_or(false)
    };
    let negate: Vec<bool> =
        channels.iter().map(|&j| norm_sign(j) ^ flipped.get(j).copied().unwrap_or(false)).collect();
    let size = t.dtype.size();
    let data = t.data();
    Some(
        (0..neurons)
            .into_par_iter()
            .map(|n| {
                let (mut word, mut known) = (0u64, 0u64);
                let mut v = Vec::with_capacity(1);
                for (k, (&j, &neg)) in channels.iter().zip(&negate).enumerate() {
                    let at = (n * cols + j) * size;
                    decode_f64(t.dtype, data.get(at..at + size).unwrap_or_default(), &mut v);
                    let x = v.first().copied().unwrap_or(0.0);
                    if (x > 0.0 && !neg) || (x < 0.0 && neg) {
                        word |= 1u64 << k;
                    }
                    if x != 0.0 && x.is_finite() {
                        known |= 1u64 << k;
                    }
                }
                (word, known)
            })
            .collect(),
    )
}

/// The sketch words (index and count) that disagree with `s` on the bits
/// of `known` in at most `most` places, in index order. Compiled with the
/// `popcnt` instruction where the CPU has it (71M comparisons on SmolLM2).
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn close_words(s: u64, known: u64, ours: &[u64], most: i64, out: &mut Vec<(usize, i64)>) {
    out.clear();
    for (r, &o) in ours.iter().enumerate() {
        let disagree = i64::from(((s ^ o) & known).count_ones());
        if disagree <= most {
            out.push((r, disagree));
        }
    }
}

/// A permutation: for each suspect neuron (word and mask in `theirs`) the
/// index of the sketch neuron (in `ours`) it matches (see
/// [`NeuronSketch::neuron_maps`]); the identity when fewer than a quarter
/// of the confident matches moved. Agreement counts only the suspect's
/// entries that have a sign: a pruned (zero) entry says nothing, and
/// counting it as a sign made every pruned neuron look like the sketch
/// neurons with many negative entries. A pair is scored by its agreement in
/// standard deviations of chance, `(agree - disagree) / sqrt(known)`, and
/// kept from 5 up, with at least 16 known entries.
fn match_neurons(theirs: &[(u64, u64)], ours: &[u64]) -> Vec<u32> {
    const KEEP: usize = 4;
    let n = theirs.len();
    let mut pairs: Vec<(i64, usize, usize)> = theirs
        .par_iter()
        .enumerate()
        .flat_map_iter(|(j, &(s, known))| {
            let count = known.count_ones() as i64;
            let mut best: Vec<(i64, usize)> = Vec::with_capacity(KEEP + 1);
            if count >= 16 {
                let scale = 1000.0 / (count as f64).sqrt();
                // In thousandths of a standard deviation, for each possible
                // agreement `signed` in -count..=count (index signed + 64).
                let scores: Vec<i64> =
                    (-64..=64i64).map(|signed| (signed as f64 * scale).round() as i64).collect();
                // The score grows with `signed`: most pairs are rejected on
                // the count of disagreements alone.
                let score_of = |disagree: i64| scores[(count - 2 * disagree + 64) as usize];
                let most_disagree = (0..=count)
                    .take_while(|&d| score_of(d) >= NEURON_MIN_SIGMAS * 1000)
                    .last()
                    .unwrap_or(-1);
                let mut close = Vec::new();
                close_words(s, known, ours, most_disagree, &mut close);
                for (r, disagree) in close {
                    let score = score_of(disagree);
                    if best.len() < KEEP || best.last().is_some_and(|b| score > b.0) {
                        let at = best.partition_point(|b| b.0 >= score);
                        best.insert(at, (score, r));
                        best.truncate(KEEP);
                    }
                }
            }
            best.into_iter().map(move |(score, r)| (score, j, r))
        })
        .collect();
    pairs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut map = vec![u32::MAX; n];
    let mut taken = vec![false; n];
    for (_, j, r) in pairs {
        if map[j] == u32::MAX && !taken[r] {
            map[j] = r as u32;
            taken[r] = true;
        }
    }
    // A layer whose confident matches mostly stay in place was not
    // permuted: keep it as stored rather than trust the few that moved (on a
    // heavily pruned layer those are near ties between similar neurons).
    let matched = map.iter().filter(|&&m| m != u32::MAX).count();
    let moved = map.iter().enumerate().filter(|&(j, &m)| m != u32::MAX && m as usize != j).count();
    if moved * 4 < matched {
        return (0..n as u32).collect();
    }
    for j in 0..n {
        if map[j] == u32::MAX && !taken[j] {
            map[j] = j as u32;
            taken[j] = true;
        }
    }
    let mut free = (0..n).filter(|&r| !taken[r]);
    for m in map.iter_mut().filter(|m| **m == u32::MAX) {
        *m = free.next().unwrap_or(0) as u32;
    }
    map
}

/// Agreement with a sketch channel, as a fraction of the sampled rows beyond
/// chance, below which a match is not trusted (4 standard deviations of the
/// agreement of unrelated channels at 256 rows).
pub const SKETCH_MIN_SCORE: f64 = 0.25;

/// One bit per sampled row for each stored column of `t` (channel-major,
/// `rows.len() / 64` words each): set where the entry exceeds the column's
/// mean over the sampled rows (non-finite entries count as the mean: clear).
fn channel_bits(t: &TensorRef<'_>, rows: &[usize]) -> Option<Vec<u64>> {
    let [_, cols] = *t.shape else { return None };
    let size = t.dtype.size();
    let words = rows.len() / 64;
    let mut values = vec![0.0f64; rows.len() * cols];
    let mut row = Vec::new();
    let data = t.data();
    for (k, &r) in rows.iter().enumerate() {
        decode_f64(t.dtype, data.get(r * cols * size..(r + 1) * cols * size)?, &mut row);
        for (j, v) in row.iter().enumerate() {
            values[j * rows.len() + k] = if v.is_finite() { *v } else { f64::NAN };
        }
    }
    let mut bits = vec![0u64; cols * words];
    for j in 0..cols {
        let column = &values[j * rows.len()..(j + 1) * rows.len()];
        let (sum, count) =
            column.iter().filter(|v| v.is_finite()).fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
        let mean = if count > 0 { sum / count as f64 } else { 0.0 };
        for (k, v) in column.iter().enumerate() {
            if *v > mean {
                bits[j * words + k / 64] |= 1u64 << (k % 64);
            }
        }
    }
    Some(bits)
}

/// Mean |w| of each column (finite elements), rows summed in a fixed order:
/// each chunk of rows sums its columns row after row, and the chunks' sums
/// are added in chunk order. The chunks run in parallel a batch at a time,
/// so only a batch of their column sums is held, and the result does not
/// depend on the thread count.
fn column_mean_magnitudes(t: &TensorRef<'_>, cols: usize) -> Vec<f64> {
    let size = t.dtype.size();
    let block = (crate::scheme::CHUNK_ELEMENTS / cols.max(1)).max(1);
    let data = t.data();
    let chunk = (block * cols * size).max(1);
    let (mut sum, mut n) = (vec![0.0; cols], vec![0u64; cols]);
    crate::ss2::in_batches(
        data.len().div_ceil(chunk),
        MAGNITUDE_BATCH,
        |c| {
            let bytes = data.get(c * chunk..((c + 1) * chunk).min(data.len())).unwrap_or_default();
            let mut v = Vec::new();
            decode_f64(t.dtype, bytes, &mut v);
            let (mut sum, mut n) = (vec![0.0; cols], vec![0u64; cols]);
            for row in v.chunks(cols.max(1)) {
                add_finite_magnitudes(row, &mut sum, &mut n);
            }
            (sum, n)
        },
        |(s, c)| {
            sum.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
            n.iter_mut().zip(&c).for_each(|(a, b)| *a += b);
        },
    );
    sum.iter().zip(&n).map(|(s, &c)| if c > 0 { s / c as f64 } else { 0.0 }).collect()
}

/// Chunks of [`column_mean_magnitudes`] whose column sums are held at once.
const MAGNITUDE_BATCH: usize = 32;

/// Adds `|x_j|` of each finite `x_j` of `row` to `sum[j]` and counts it in
/// `n[j]`. A value that is not finite adds `+0.0`, which changes no sum of
/// magnitudes (never `-0.0`), so the loop needs no branch.
#[multiversion::multiversion(targets("x86_64+avx2+avx+sse4.1+popcnt"))]
fn add_finite_magnitudes(row: &[f64], sum: &mut [f64], n: &mut [u64]) {
    for ((s, c), &x) in sum.iter_mut().zip(n.iter_mut()).zip(row) {
        let finite = x.is_finite();
        *s += if finite { x.abs() } else { 0.0 };
        *c += u64::from(finite);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{gaussian_matrix, llama, to_model, LlamaShape};

    #[test]
    fn column_magnitudes_add_chunks_of_rows_in_order_bit_for_bit() {
        // 3000 rows of 1000 columns (65 rows to a chunk, more chunks than a
        // batch holds), with zeros, infinities and NaN.
        let (rows, cols) = (3000, 1000);
        let mut t = gaussian_matrix("w", rows, cols, crate::Dtype::BF16, 7);
        let specials = [0.0f32, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        for k in (0..rows * cols).step_by(89) {
            let x = half::bf16::from_f32(specials[k % specials.len()]);
            t.data[2 * k..2 * k + 2].copy_from_slice(&x.to_le_bytes());
        }
        let m = to_model(&[t]).unwrap_or_else(|e| panic!("{e}"));
        let t = m.tensor("w").unwrap_or_else(|| panic!("w"));
        let mut x = Vec::new();
        decode_f64(t.dtype, &t.data(), &mut x);
        let block = crate::scheme::CHUNK_ELEMENTS / cols;
        assert!(rows.div_ceil(block) > MAGNITUDE_BATCH);
        // Element by element: each chunk's columns row after row, the
        // chunks' sums added in order to zero.
        let (mut sum, mut n) = (vec![0.0f64; cols], vec![0u64; cols]);
        for chunk in x.chunks(block * cols) {
            let (mut s, mut c) = (vec![0.0f64; cols], vec![0u64; cols]);
            for row in chunk.chunks(cols) {
                for (j, v) in row.iter().enumerate() {
                    if v.is_finite() {
                        s[j] += v.abs();
                        c[j] += 1;
                    }
                }
            }
            sum.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
            n.iter_mut().zip(&c).for_each(|(a, b)| *a += b);
        }
        let want: Vec<u64> = sum.iter().zip(&n).map(|(s, &c)| (s / c as f64).to_bits()).collect();
        let got: Vec<u64> = column_mean_magnitudes(&t, cols).iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_order_follows_a_permutation_of_the_embedding_columns() {
        let shape = LlamaShape {
            vocab: 512,
            hidden: 64,
            intermediate: 96,
            layers: 1,
            heads: 4,
            kv_heads: 2,
        };
        let tensors = llama(&shape, crate::Dtype::F32, 3);
        let model = crate::synth::to_model(&tensors).unwrap_or_else(|e| panic!("{e}"));
        let c = Canonical::of(&model);
        assert_eq!(c.hidden(), 64);
        let mut seen = c.rank.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..64).collect::<Vec<u32>>());
        // Permute the embedding's columns: each channel keeps its rank.
        let perm: Vec<usize> = (0..64).map(|j| (j * 7 + 3) % 64).collect();
        let mut permuted = tensors.clone();
        for t in &mut permuted {
            if t.name == "model.embed_tokens.weight" {
                t.data = crate::llama::reorder(&t.data, 512, 64, 4, &perm, true);
            }
        }
        let p = Canonical::of(&crate::synth::to_model(&permuted).unwrap_or_else(|e| panic!("{e}")));
        for (k, &src) in perm.iter().enumerate() {
            assert_eq!(p.rank[k], c.rank[src]);
        }
    }

    fn embedding_values(model: &Model) -> (Vec<f64>, usize, usize) {
        let t = model.tensor("model.embed_tokens.weight").unwrap_or_else(|| panic!("no embedding"));
        let mut v = Vec::new();
        decode_f64(t.dtype, &t.data(), &mut v);
        (v, t.shape[0], t.shape[1])
    }

    fn with_embedding(
        tensors: &[crate::synth::SynthTensor],
        values: &[f64],
    ) -> crate::synth::SynthTensor {
        let t = tensors
            .iter()
            .find(|t| t.name == "model.embed_tokens.weight")
            .unwrap_or_else(|| panic!("no embedding"));
        let data = values.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect();
        crate::synth::SynthTensor { data, ..t.clone() }
    }

    fn only_embedding(t: crate::synth::SynthTensor) -> Model {
        crate::synth::to_model(&[t]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn correct(found: &Canonical, expected: &[u32]) -> usize {
        found.rank.iter().zip(expected).filter(|(a, b)| a == b).count()
    }

    const SHAPE: LlamaShape =
        LlamaShape { vocab: 1024, hidden: 96, intermediate: 96, layers: 1, heads: 4, kv_heads: 2 };

    #[test]
    fn the_sketch_finds_each_channel_by_content_where_magnitudes_fail() {
        let tensors = llama(&SHAPE, crate::Dtype::F32, 5);
        let model = crate::synth::to_model(&tensors).unwrap_or_else(|e| panic!("{e}"));
        let c = Canonical::of(&model);
        let sketch = ResidualSketch::of_model(&model).unwrap_or_else(|| panic!("no sketch"));
        assert_eq!(sketch.hidden(), 96);
        let (e, rows, cols) = embedding_values(&model);
        // Permute the channels, flip a third of them, rescale each by a
        // factor in [1/2, 2] and add 30% noise: content stays, magnitudes go.
        let perm: Vec<usize> = (0..cols).map(|j| (j * 37 + 11) % cols).collect();
        let mut noise = vec![0.0; rows * cols];
        crate::rng::fill_normal(&mut crate::rng::stream(9, "test noise"), 0, &mut noise);
        let edited: Vec<f64> = (0..rows * cols)
            .map(|k| {
                let (i, j) = (k / cols, k % cols);
                let src = perm[j];
                let x = e[i * cols + src];
                let sign = if src % 3 == 0 { -1.0 } else { 1.0 };
                let factor = 2f64.powf(((src * 53) % 97) as f64 / 48.0 - 1.0);
                sign * factor * (x + 0.3 * x.abs().max(1e-3) * noise[k])
            })
            .collect();
        let suspect = only_embedding(with_embedding(&tensors, &edited));
        let expected: Vec<u32> = perm.iter().map(|&src| c.rank[src]).collect();
        let (by_sketch, _) =
            sketch.order_of(&suspect).unwrap_or_else(|| panic!("the sketch must apply"));
        let by_magnitude = Canonical::of(&suspect);
        let (good, bad) = (correct(&by_sketch, &expected), correct(&by_magnitude, &expected));
        assert!(good >= 94, "the sketch placed {good} of 96 channels");
        assert!(bad <= 30, "magnitudes placed {bad} of 96 (the edit should defeat them)");
        // Exact under a pure permutation with sign flips.
        let exact: Vec<f64> = (0..rows * cols)
            .map(|k| {
                let src = perm[k % cols];
                e[(k / cols) * cols + src] * if src % 2 == 0 { -1.0 } else { 1.0 }
            })
            .collect();
        let exact = only_embedding(with_embedding(&tensors, &exact));
        let (found, flipped) =
            sketch.order_of(&exact).unwrap_or_else(|| panic!("the sketch must apply"));
        assert_eq!(found.rank, expected);
        // The flips are found too (the neuron sketch reads gates through them).
        let expected_flips: Vec<bool> = perm.iter().map(|&src| src % 2 == 0).collect();
        assert_eq!(flipped, expected_flips);
    }

    #[test]
    fn residual_matching_in_blocks_is_the_channel_by_channel_matching() {
        // 200 channels: windows cut at both ends and a short last block.
        let shape = LlamaShape { vocab: 700, hidden: 200, ..SHAPE };
        let tensors = llama(&shape, crate::Dtype::F32, 9);
        let embedding = tensors.iter().find(|t| t.name == "model.embed_tokens.weight");
        let original = only_embedding(embedding.unwrap_or_else(|| panic!("no embedding")).clone());
        let (e, rows, cols) = embedding_values(&original);
        // The suspect: channels permuted, some flipped, all a little noisy.
        let perm: Vec<usize> = (0..cols).map(|j| (j * 37 + 11) % cols).collect();
        let noisy: Vec<f64> = (0..rows * cols)
            .map(|k| {
                let src = perm[k % cols];
                let x = e[(k / cols) * cols + src] * if src % 3 == 0 { -1.0 } else { 1.0 };
                x + 0.05 * x.abs() * ((k as f64) * 0.7).sin()
            })
            .collect();
        let suspect = only_embedding(with_embedding(&tensors, &noisy));
        let (cs, co) = (Canonical::of(&suspect), Canonical::of(&original));
        let got = match_residual(&suspect, &original, &cs, &co)
            .unwrap_or_else(|| panic!("the matching must apply"));
        // Channel by channel, each dot product on its own.
        let name = "model.embed_tokens.weight";
        let sc = match_columns(&suspect, name, cols).unwrap_or_else(|| panic!("suspect"));
        let oc = match_columns(&original, name, cols).unwrap_or_else(|| panic!("original"));
        let mut by_rank = vec![0usize; cols];
        for (stored, &r) in co.rank.iter().enumerate() {
            by_rank[r as usize] = stored;
        }
        let want: Vec<usize> = (0..cols)
            .map(|j| {
                let r = cs.rank[j] as usize;
                let mut best = (by_rank[r], f64::MIN);
                let window = r.saturating_sub(MATCH_WINDOW)..(r + MATCH_WINDOW + 1).min(cols);
                for &k in &by_rank[window] {
                    let c = sc[j].iter().zip(&oc[k]).fold(0.0, |s, (a, b)| s + a * b);
                    if c.abs() > best.1 {
                        best = (k, c.abs());
                    }
                }
                best.0
            })
            .collect();
        assert_eq!(got, want);
        // And it finds the channels.
        let right = got.iter().zip(&perm).filter(|(a, b)| a == b).count();
        assert!(right >= 190, "{right} of {cols} channels matched");
    }

    #[test]
    fn the_sketch_order_is_a_permutation_even_for_an_unrelated_model() {
        let model = crate::synth::to_model(&llama(&SHAPE, crate::Dtype::F32, 5))
            .unwrap_or_else(|e| panic!("{e}"));
        let other = crate::synth::to_model(&llama(&SHAPE, crate::Dtype::F32, 6))
            .unwrap_or_else(|e| panic!("{e}"));
        let sketch = ResidualSketch::of_model(&model).unwrap_or_else(|| panic!("no sketch"));
        let (found, _) = sketch.order_of(&other).unwrap_or_else(|| panic!("the sketch must apply"));
        let mut ranks = found.rank.clone();
        ranks.sort_unstable();
        assert_eq!(ranks, (0..96).collect::<Vec<u32>>());
    }

    #[test]
    fn a_sketch_survives_its_certificate_record_and_bad_records_are_refused() {
        let model = crate::synth::to_model(&llama(&SHAPE, crate::Dtype::F32, 5))
            .unwrap_or_else(|e| panic!("{e}"));
        let sketch = ResidualSketch::of_model(&model).unwrap_or_else(|| panic!("no sketch"));
        let record = crate::provenance::SketchRecord::of(&sketch);
        assert_eq!(record.to_sketch().ok(), Some(sketch.clone()));
        let mut short = record.clone();
        short.rows.pop();
        assert!(short.to_sketch().is_err_and(|e| e.to_string().contains("multiple of 64")));
        let mut unsorted = record.clone();
        unsorted.rows.swap(0, 1);
        assert!(unsorted.to_sketch().is_err_and(|e| e.to_string().contains("ascending")));
        let mut odd = record.clone();
        odd.bits = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0u8; 40]);
        assert!(odd.to_sketch().is_err_and(|e| e.to_string().contains("whole channels")));
        let mut other = record;
        other.tensor = "model.norm.weight".into();
        assert!(other.to_sketch().is_err());
        // A suspect too narrow or too short for the sketch: not applicable.
        let small = LlamaShape { vocab: 200, ..SHAPE };
        let small = crate::synth::to_model(&llama(&small, crate::Dtype::F32, 5))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(sketch.order_of(&small).is_none());
        assert!(ResidualSketch::of_model(&small).is_none());
    }

    #[test]
    fn neuron_matching_is_a_permutation_that_keeps_unmatched_neurons_in_place() {
        // Neuron words: 0..4 match 3,0,1,2 exactly; 4 and 5 match nothing.
        let ours = [
            0x0f0f_0f0f_0f0f_0f0f_u64,
            0x00ff_00ff_00ff_00ff,
            0x3333_3333_3333_3333,
            0x5555_5555_5555_5555,
            0x0123_4567_89ab_cdef,
            0x6996_9669_9669_6996,
        ];
        let theirs = [ours[3], ours[0], ours[1], ours[2], !ours[4], !ours[5]];
        let all = |w: &[u64]| w.iter().map(|&x| (x, u64::MAX)).collect::<Vec<_>>();
        assert_eq!(match_neurons(&all(&theirs), &ours), vec![3, 0, 1, 2, 4, 5]);
        // Pruned neurons (half their entries zero, all clear) still match on
        // the entries they kept: counted as signs, the zeros kept them below
        // the threshold and the swap went unseen.
        let kept = 0x0000_0000_ffff_ffff_u64;
        let pruned = [(ours[3] & kept, kept), (ours[2] & kept, kept)];
        assert_eq!(match_neurons(&pruned, &ours[2..4]), vec![1, 0]);
        // A neuron whose own index was taken gets a free one.
        let theirs = [ours[1], ours[1] ^ 0b111, !ours[2], ours[3], ours[4], ours[5]];
        let map = match_neurons(&all(&theirs), &ours);
        let mut sorted = map.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(&map[3..], &[3, 4, 5]);
    }
}
