//! A canonical order of attention heads for scheme `ss2`, found by content.
//!
//! Query heads can be permuted within their key/value group, and key/value
//! heads (with their query heads) among themselves, by moving rows of
//! `q_proj`, `k_proj`, `v_proj` and columns of `o_proj`: the model computes
//! the same function bit for bit. That moved every marked attention weight
//! away from its sign (SmolLM2 blind z 32 → 27 after `attack permute`). The
//! canonical index of a head is its stored index in the original, so
//! embedding is unchanged; detection finds each suspect head's original by
//! content, through a public sketch in the certificate.
//!
//! A head's identity is its OV circuit `OV_h = O_h V_g` (`O_h` the head's
//! columns of `o_proj`, `V_g` its key/value head's rows of `v_proj`): a
//! `hidden × hidden` matrix that mixing the head's value channels (`V → M V`,
//! `O → O M⁻¹`, free) leaves exactly as it is, as it does the v/o sign flips
//! and rescalings. Residual sign flips and norm folding change the signs of
//! its rows and columns, which are undone as the neuron sketch does. The
//! sketch holds the signs of `OV_h` at a 16 × 16 grid of residual channels
//! fixed by canonical position. Computed from the weights, never the key:
//! the Hoeffding bound of docs/ss2.md §5 stays exact.

use crate::canonical::Canonical;
use crate::dtype::decode_f64;
use crate::dtype::Dtype;
use crate::llama::LlamaConfig;
use crate::model::Model;

/// Residual channels sampled on each side of the OV circuit.
pub const HEAD_CHANNELS: usize = 16;

/// Words of the sketch per head (`HEAD_CHANNELS²` bits).
const HEAD_WORDS: usize = HEAD_CHANNELS * HEAD_CHANNELS / 64;

/// Least agreement for a head match, in standard deviations of chance
/// (agreements minus disagreements over the known bits, over the square
/// root of their number). A layer of `H` heads has `H²` candidate pairs;
/// at 4 a chance pair above the threshold turns up about once in 30,000.
const HEAD_MIN_SIGMAS: f64 = 4.0;

/// Largest head count a certificate may describe.
const MAX_HEADS: usize = 1 << 12;

/// A public sketch of the original's attention heads, carried by an `ss2`
/// certificate: for each layer and query head, the signs of its OV circuit
/// at the residual channels `outputs × inputs` (canonical positions), with
/// the signs of the norm before `v_proj` folded in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadSketch {
    /// Output channels sampled (rows of `o_proj`), as canonical positions.
    pub outputs: Vec<usize>,
    /// Input channels sampled (columns of `v_proj`), as canonical positions.
    pub inputs: Vec<usize>,
    /// Query heads per layer.
    pub heads: usize,
    /// Key/value heads per layer.
    pub kv_heads: usize,
    /// `HEAD_CHANNELS² / 64` words per head, layer by layer; bit
    /// `a · HEAD_CHANNELS + b` is output `a`, input `b`.
    pub bits: Vec<u64>,
}

/// For one layer, the canonical index (the original's stored index) of each
/// stored row of the suspect's query and key/value projections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadMap {
    /// Each query head's original head.
    pub q: Vec<u32>,
    /// Each key/value head's original key/value head.
    pub kv: Vec<u32>,
    /// `q` expanded to rows of `q_proj` (and columns of `o_proj`).
    pub q_rows: Vec<u32>,
    /// `kv` expanded to rows of `k_proj` and `v_proj`.
    pub kv_rows: Vec<u32>,
}

impl HeadMap {
    /// The map of one axis of attention tensor `part` (`q_proj`, `k_proj`,
    /// `v_proj` rows; `o_proj` columns).
    pub fn of_part(&self, part: &str) -> Option<&[u32]> {
        match part {
            "q_proj" | "o_proj" => Some(&self.q_rows),
            "k_proj" | "v_proj" => Some(&self.kv_rows),
            _ => None,
        }
    }
}

impl HeadSketch {
    /// The sketch of `model` (the original) in its canonical residual order;
    /// `None` without a `config.json` giving the head counts, a residual
    /// order, or attention weights of the shapes they imply.
    pub(crate) fn of(model: &Model, canonical: &Canonical) -> Option<HeadSketch> {
        let config = LlamaConfig::for_model(model).ok()?;
        let hidden = canonical.hidden();
        if hidden < HEAD_CHANNELS || config.heads == 0 || config.kv_heads == 0 {
            return None;
        }
        let outputs: Vec<usize> =
            (0..HEAD_CHANNELS).map(|k| (2 * k + 1) * hidden / (2 * HEAD_CHANNELS)).collect();
        let inputs: Vec<usize> =
            (0..HEAD_CHANNELS).map(|k| (4 * k + 3) * hidden / (4 * HEAD_CHANNELS)).collect();
        let mut sketch = HeadSketch {
            outputs,
            inputs,
            heads: config.heads,
            kv_heads: config.kv_heads,
            bits: vec![],
        };
        sketch.validate().ok()?;
        let flips = vec![false; hidden];
        for l in 0.. {
            let Some(layer) = sketch.ov_bits(model, l, canonical, &flips) else { break };
            sketch.bits.extend(layer.into_iter().flat_map(|(word, _)| word));
        }
        (!sketch.bits.is_empty()).then_some(sketch)
    }

    /// The sketch of `model` in its own canonical order (what `embed` puts
    /// in the certificate when it marks `model`).
    pub fn of_model(model: &Model) -> Option<HeadSketch> {
        HeadSketch::of(model, &Canonical::of(model))
    }

    /// The number of layers sketched.
    pub fn layers(&self) -> usize {
        self.bits.len() / (self.heads * HEAD_WORDS).max(1)
    }

    /// Checks a sketch read from a certificate.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.outputs.len() != HEAD_CHANNELS || self.inputs.len() != HEAD_CHANNELS {
            return Err(format!(
                "{} output and {} input channels sampled; want {HEAD_CHANNELS} of each",
                self.outputs.len(),
                self.inputs.len()
            ));
        }
        if self.heads == 0
            || self.kv_heads == 0
            || self.heads > MAX_HEADS
            || self.heads % self.kv_heads != 0
        {
            return Err(format!(
                "{} heads cannot be grouped over {} key/value heads",
                self.heads, self.kv_heads
            ));
        }
        if self.bits.len() % (self.heads * HEAD_WORDS) != 0 {
            return Err(format!(
                "{} words do not make whole layers of {} heads",
                self.bits.len(),
                self.heads
            ));
        }
        Ok(())
    }

    /// For each layer, the original head of each stored head of `suspect`
    /// (see [`match_heads`]); `canonical` and `flipped` are the suspect's
    /// residual order and channel signs. `None` for a layer whose attention
    /// weights are missing or of other shapes.
    pub(crate) fn head_maps(
        &self,
        suspect: &Model,
        canonical: &Canonical,
        flipped: &[bool],
    ) -> Vec<Option<HeadMap>> {
        let per_layer = self.heads * HEAD_WORDS;
        (0..self.layers())
            .map(|l| {
                let theirs = self.ov_bits(suspect, l, canonical, flipped)?;
                let ours = self.bits.get(l * per_layer..(l + 1) * per_layer)?;
                let head_dim = suspect.tensor(&attention(l, "q_proj"))?.shape.first()? / self.heads;
                Some(match_heads(&theirs, ours, self.heads, self.kv_heads, head_dim))
            })
            .collect()
    }

    /// The sign bits (and the mask of bits that have a sign) of each query
    /// head's OV circuit in layer `l` of `model`, or `None` when its
    /// attention weights do not fit the head counts and residual width.
    fn ov_bits(
        &self,
        model: &Model,
        l: usize,
        canonical: &Canonical,
        flipped: &[bool],
    ) -> Option<Vec<([u64; HEAD_WORDS], [u64; HEAD_WORDS])>> {
        let hidden = canonical.hidden();
        let (o, v) =
            (model.tensor(&attention(l, "o_proj"))?, model.tensor(&attention(l, "v_proj"))?);
        let ([o_rows, o_cols], [v_rows, v_cols]) = (o.shape, v.shape) else { return None };
        let (o_rows, o_cols, v_rows, v_cols) = (*o_rows, *o_cols, *v_rows, *v_cols);
        let (heads, kv_heads) = (self.heads, self.kv_heads);
        let head_dim = o_cols / heads;
        let fits = o_rows == hidden
            && v_cols == hidden
            && head_dim > 0
            && o_cols == heads * head_dim
            && v_rows == kv_heads * head_dim
            && o.dtype.is_readable()
            && v.dtype.is_readable();
        if !fits {
            return None;
        }
        let mut stored = vec![0usize; hidden];
        for (j, &r) in canonical.rank.iter().enumerate() {
            *stored.get_mut(r as usize)? = j;
        }
        let at = |c: &usize| stored.get(*c).copied();
        let outs: Vec<usize> = self.outputs.iter().map(at).collect::<Option<_>>()?;
        let ins: Vec<usize> = self.inputs.iter().map(at).collect::<Option<_>>()?;
        let flip = |j: usize| flipped.get(j).copied().unwrap_or(false);
        let norm = model
            .tensor(&format!("model.layers.{l}.input_layernorm.weight"))
            .filter(|n| n.shape == [hidden] && n.dtype.is_readable());
        // Each tensor read once (decoded, for a GGUF tensor).
        let norm = norm.map(|n| (n.dtype, n.data()));
        let negative = |j: usize| {
            norm.as_ref()
                .and_then(|(dtype, data)| element(*dtype, data, j))
                .is_some_and(|x| x < 0.0)
        };
        // The sampled rows of `o_proj` and columns of `v_proj`, decoded once.
        let o_data = o.data();
        let o_at: Vec<Vec<f64>> = outs
            .iter()
            .map(|&a| {
                let size = o.dtype.size();
                let mut row = Vec::new();
                decode_f64(
                    o.dtype,
                    o_data.get(a * o_cols * size..(a + 1) * o_cols * size)?,
                    &mut row,
                );
                Some(row)
            })
            .collect::<Option<_>>()?;
        drop(o_data);
        let v_data = v.data();
        let v_at: Vec<Vec<f64>> = ins
            .iter()
            .map(|&b| {
                (0..v_rows)
                    .map(|r| element(v.dtype, &v_data, r * v_cols + b))
                    .collect::<Option<_>>()
            })
            .collect::<Option<_>>()?;
        drop(v_data);
        let group = heads / kv_heads;
        Some(
            (0..heads)
                .map(|h| {
                    let (mut word, mut known) = ([0u64; HEAD_WORDS], [0u64; HEAD_WORDS]);
                    let g = h / group;
                    for (ka, (o_row, &a)) in o_at.iter().zip(&outs).enumerate() {
                        let o_head = &o_row[h * head_dim..(h + 1) * head_dim];
                        for (kb, (v_col, &b)) in v_at.iter().zip(&ins).enumerate() {
                            let v_head = &v_col[g * head_dim..(g + 1) * head_dim];
                            let ov: f64 = o_head.iter().zip(v_head).map(|(x, y)| x * y).sum();
                            let neg = flip(a) ^ flip(b) ^ negative(b);
                            let bit = ka * HEAD_CHANNELS + kb;
                            if (ov > 0.0 && !neg) || (ov < 0.0 && neg) {
                                word[bit / 64] |= 1u64 << (bit % 64);
                            }
                            if ov != 0.0 && ov.is_finite() {
                                known[bit / 64] |= 1u64 << (bit % 64);
                            }
                        }
                    }
                    (word, known)
                })
                .collect(),
        )
    }
}

/// The name of attention weight `part` of layer `l`.
fn attention(l: usize, part: &str) -> String {
    format!("model.layers.{l}.self_attn.{part}.weight")
}

/// Element `i` (flat index) of a tensor of `dtype` whose bytes are `data`, decoded.
fn element(dtype: Dtype, data: &[u8], i: usize) -> Option<f64> {
    let size = dtype.size();
    let mut v = Vec::with_capacity(1);
    decode_f64(dtype, data.get(i * size..(i + 1) * size)?, &mut v);
    v.first().copied()
}

/// The head map of one layer: each suspect query head (bits and mask in
/// `theirs`) is matched to the sketch head (in `ours`, [`HEAD_WORDS`] words
/// each) whose signs agree best, greedily from the strongest agreement down
/// (ties by suspect head, then sketch head), each sketch head at most once,
/// pairs below [`HEAD_MIN_SIGMAS`] or with fewer than 64 known bits never.
/// Heads left over keep their own index where it is free, then take the
/// free ones in order. Each key/value head then goes to the original
/// key/value head that most of its matched query heads came from (greedily
/// by that count, then the same fallback). Both maps are permutations.
fn match_heads(
    theirs: &[([u64; HEAD_WORDS], [u64; HEAD_WORDS])],
    ours: &[u64],
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> HeadMap {
    let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
    for (j, (bits, known)) in theirs.iter().enumerate() {
        let count: u32 = known.iter().map(|k| k.count_ones()).sum();
        if count < 64 {
            continue;
        }
        for (r, o) in ours.chunks_exact(HEAD_WORDS).enumerate() {
            let disagree: u32 =
                bits.iter().zip(o).zip(known).map(|((s, o), k)| ((s ^ o) & k).count_ones()).sum();
            let score = (f64::from(count) - 2.0 * f64::from(disagree)) / f64::from(count).sqrt();
            if score >= HEAD_MIN_SIGMAS {
                pairs.push((score, j, r));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let q = assign(heads, pairs.iter().map(|&(_, j, r)| (j, r)));
    let group = heads / kv_heads.max(1);
    // How many matched query heads of each suspect group came from each original group.
    let mut votes = vec![0usize; kv_heads * kv_heads];
    let mut matched = vec![false; heads];
    for &(_, j, r) in &pairs {
        if q.get(j).is_some_and(|&m| m as usize == r) && !matched[j] {
            matched[j] = true;
            if let Some(v) = votes.get_mut((j / group) * kv_heads + r / group) {
                *v += 1;
            }
        }
    }
    let mut by_votes: Vec<(usize, usize, usize)> = (0..kv_heads * kv_heads)
        .filter(|&k| votes[k] > 0)
        .map(|k| (votes[k], k / kv_heads, k % kv_heads))
        .collect();
    by_votes.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let kv = assign(kv_heads, by_votes.into_iter().map(|(_, g, r)| (g, r)));
    let expand = |map: &[u32]| -> Vec<u32> {
        map.iter()
            .flat_map(|&h| (0..head_dim).map(move |d| (h as usize * head_dim + d) as u32))
            .collect()
    };
    HeadMap { q_rows: expand(&q), kv_rows: expand(&kv), q, kv }
}

/// A permutation of `n` from candidate pairs `(suspect, original)` in order
/// of preference: each takes its first free candidate; the rest keep their
/// own index where it is free, then take the free ones in order.
fn assign(n: usize, candidates: impl Iterator<Item = (usize, usize)>) -> Vec<u32> {
    let mut map = vec![u32::MAX; n];
    let mut taken = vec![false; n];
    for (j, r) in candidates {
        if j < n && r < n && map[j] == u32::MAX && !taken[r] {
            map[j] = r as u32;
            taken[r] = true;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn word(bits: &[usize]) -> ([u64; HEAD_WORDS], [u64; HEAD_WORDS]) {
        let mut w = [0u64; HEAD_WORDS];
        for &b in bits {
            w[b / 64] |= 1 << (b % 64);
        }
        (w, [u64::MAX; HEAD_WORDS])
    }

    /// `n` unrelated heads' words: splitmix64 bits, all known.
    fn heads(n: usize) -> Vec<([u64; HEAD_WORDS], [u64; HEAD_WORDS])> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (0..n).map(|_| ([next(), next(), next(), next()], [u64::MAX; HEAD_WORDS])).collect()
    }

    #[test]
    fn heads_permuted_within_and_across_groups_are_found_and_the_maps_are_permutations() {
        let ours: Vec<u64> = heads(6).iter().flat_map(|(w, _)| *w).collect();
        // 6 query heads over 3 key/value heads (pairs); the suspect swapped
        // groups 0 and 2 and, within the new group 0, its two heads.
        let order = [5usize, 4, 2, 3, 0, 1];
        let theirs: Vec<_> = order.iter().map(|&h| heads(6)[h]).collect();
        let map = match_heads(&theirs, &ours, 6, 3, 2);
        assert_eq!(map.q, vec![5, 4, 2, 3, 0, 1]);
        assert_eq!(map.kv, vec![2, 1, 0]);
        assert_eq!(map.q_rows, vec![10, 11, 8, 9, 4, 5, 6, 7, 0, 1, 2, 3]);
        assert_eq!(map.kv_rows, vec![4, 5, 2, 3, 0, 1]);
        // A suspect whose heads match nothing keeps its stored order.
        let unrelated: Vec<_> = (0..6).map(|h| word(&[h])).collect();
        assert_eq!(match_heads(&unrelated, &ours, 6, 3, 1).q, (0..6).collect::<Vec<u32>>());
    }

    #[test]
    fn assignment_is_always_a_permutation() {
        // Two suspects want original 1; one of them gets it, the other a free index.
        let map = assign(4, [(0, 1), (2, 1), (3, 0)].into_iter());
        let mut sorted = map.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 3]);
        assert_eq!(map[0], 1);
        assert_eq!(map[3], 0);
    }
}
