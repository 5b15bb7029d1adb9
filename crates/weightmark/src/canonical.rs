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
}

/// Names of the tensors that fix the residual order, in preference order.
const ORDER_SOURCES: [&str; 2] = ["model.embed_tokens.weight", "lm_head.weight"];

impl Canonical {
    /// The canonical residual order of `model` (one pass over its embedding).
    pub fn of(model: &Model) -> Canonical {
        let Some(t) = ORDER_SOURCES.iter().find_map(|n| model.tensor(n)) else {
            return Canonical::default();
        };
        let [rows, cols] = *t.shape else { return Canonical::default() };
        if !t.dtype.is_readable() || rows == 0 || cols == 0 {
            return Canonical::default();
        }
        let key = column_mean_magnitudes(&t, rows, cols);
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
            Some(Role::Reads(_)) if cols == hidden => Axes { rows: None, cols: rank },
            Some(Role::Writes) if rows == hidden => Axes { rows: rank, cols: None },
            _ => Axes::default(),
        }
    }
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
    let columns = |m: &Model| -> Option<Vec<Vec<f64>>> {
        let t = m.tensor(name)?;
        let [rows, cols] = *t.shape else { return None };
        if cols != hidden || !t.dtype.is_readable() {
            return None;
        }
        let step = (rows / MATCH_ROWS).max(1);
        let size = t.dtype.size();
        let mut out = vec![Vec::with_capacity(rows / step + 1); cols];
        let mut row = Vec::new();
        for r in (0..rows).step_by(step) {
            decode_f64(t.dtype, t.data.get(r * cols * size..(r + 1) * cols * size)?, &mut row);
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
    };
    let (sc, oc) = (columns(suspect)?, columns(original)?);
    let mut by_rank = vec![0usize; hidden];
    for (stored, &r) in co.rank.iter().enumerate() {
        *by_rank.get_mut(r as usize)? = stored;
    }
    Some(
        (0..hidden)
            .into_par_iter()
            .map(|j| {
                let r = cs.rank[j] as usize;
                let (lo, hi) = (r.saturating_sub(MATCH_WINDOW), (r + MATCH_WINDOW + 1).min(hidden));
                let mut best = (by_rank[r], f64::MIN);
                for &k in &by_rank[lo..hi] {
                    let c: f64 = sc[j].iter().zip(&oc[k]).map(|(a, b)| a * b).sum::<f64>().abs();
                    if c > best.1 {
                        best = (k, c);
                    }
                }
                best.0
            })
            .collect(),
    )
}

/// Mean |w| of each column (finite elements), rows summed in a fixed order.
fn column_mean_magnitudes(t: &TensorRef<'_>, rows: usize, cols: usize) -> Vec<f64> {
    let size = t.dtype.size();
    let block = (crate::scheme::CHUNK_ELEMENTS / cols).max(1);
    let parts: Vec<(Vec<f64>, Vec<u64>)> = t
        .data
        .par_chunks(block * cols * size)
        .map(|bytes| {
            let mut v = Vec::new();
            decode_f64(t.dtype, bytes, &mut v);
            let (mut sum, mut n) = (vec![0.0; cols], vec![0u64; cols]);
            for row in v.chunks(cols) {
                for (j, x) in row.iter().enumerate() {
                    if x.is_finite() {
                        sum[j] += x.abs();
                        n[j] += 1;
                    }
                }
            }
            (sum, n)
        })
        .collect();
    let (mut sum, mut n) = (vec![0.0; cols], vec![0u64; cols]);
    for (s, c) in parts {
        sum.iter_mut().zip(&s).for_each(|(a, b)| *a += b);
        n.iter_mut().zip(&c).for_each(|(a, b)| *a += b);
    }
    let _ = rows;
    sum.iter().zip(&n).map(|(s, &c)| if c > 0 { s / c as f64 } else { 0.0 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{llama, LlamaShape};

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
}
