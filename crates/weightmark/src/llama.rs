//! The Llama layout, in one place: Hugging Face tensor names and the role each
//! tensor plays in the residual stream, the `config.json` numbers, and the
//! function-preserving reorderings (MLP neurons, attention heads) and norm
//! folding that `align`, `attack`, `convert` and the GGUF writer all use.

use std::collections::HashMap;
use std::path::Path;

use ndarray::Array2;
use rand_core::RngCore;

use crate::dtype::decode_f64;
use crate::error::{Error, Result};
use crate::model::{Model, TensorRef};
use crate::rng::stream;

/// The numbers of a Llama-family `config.json` that weightmark uses.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Residual width.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Context length.
    pub context: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Vocabulary size.
    pub vocab: usize,
}

/// Largest `config.json` read (real ones are a few kilobytes).
pub(crate) const MAX_CONFIG_LEN: u64 = 1 << 20;

impl LlamaConfig {
    /// Reads the `config.json` beside (or inside, for a directory) the model,
    /// with a size cap, and checks every number against the tensors it
    /// describes: the file is the suspect's and as untrusted as its weights.
    pub fn for_model(model: &Model) -> Result<LlamaConfig> {
        let dir = if model.path.is_dir() {
            model.path.clone()
        } else {
            model.path.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        let path = dir.join("config.json");
        let bytes = crate::io::read_capped(&path, MAX_CONFIG_LEN)?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            Error::NotAModel { path: path.clone(), reason: format!("not JSON: {e}") }
        })?;
        let invalid = |reason: String| Error::NotAModel { path: path.clone(), reason };
        let get = |k: &str| -> Result<Option<usize>> {
            match v.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .map(Some)
                    .ok_or_else(|| invalid(format!("'{k}' is not a whole number: {x}"))),
            }
        };
        let float = |k: &str, default: f64| -> Result<f64> {
            match v.get(k) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(x) => x
                    .as_f64()
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .ok_or_else(|| invalid(format!("'{k}' is not a positive number: {x}"))),
            }
        };
        let required = |k: &str| get(k)?.ok_or_else(|| invalid(format!("no '{k}'")));
        let heads = required("num_attention_heads")?;
        let config = LlamaConfig {
            heads,
            kv_heads: get("num_key_value_heads")?.unwrap_or(heads),
            layers: required("num_hidden_layers")?,
            hidden: required("hidden_size")?,
            intermediate: required("intermediate_size")?,
            context: get("max_position_embeddings")?.unwrap_or(2048),
            rms_eps: float("rms_norm_eps", 1e-5)?,
            rope_theta: float("rope_theta", 10000.0)?,
            vocab: get("vocab_size")?.unwrap_or(0),
        };
        config.check(model).map_err(invalid)?;
        Ok(config)
    }

    /// Checks the numbers against each other and against the shapes of the
    /// model's Llama tensors, so that nothing sized or divided by them can
    /// go wrong later: the reason for the first disagreement.
    pub fn check(&self, model: &Model) -> std::result::Result<(), String> {
        let LlamaConfig { heads, kv_heads, layers, hidden, intermediate, context, vocab, .. } =
            *self;
        // Counts are written to GGUF as 32-bit numbers.
        let limit = u32::MAX as usize;
        for (key, n) in [
            ("num_attention_heads", heads),
            ("num_key_value_heads", kv_heads),
            ("num_hidden_layers", layers),
            ("hidden_size", hidden),
            ("intermediate_size", intermediate),
            ("max_position_embeddings", context),
        ] {
            if n == 0 || n > limit {
                return Err(format!("'{key}' is {n}; it must be from 1 to {limit}"));
            }
        }
        if vocab > limit {
            return Err(format!("'vocab_size' is {vocab}; it must be at most {limit}"));
        }
        if heads % kv_heads != 0 {
            return Err(format!(
                "{heads} attention heads cannot be grouped over {kv_heads} key/value heads"
            ));
        }
        let mut head_dim = None;
        for t in model.tensors() {
            let Some(part) = Part::of(t.name) else { continue };
            let layer = layer_of(t.name);
            if let Some(l) = layer.filter(|&l| l >= layers) {
                return Err(format!(
                    "tensor '{}' is in layer {l}, but 'num_hidden_layers' is {layers}",
                    t.name.escape_debug()
                ));
            }
            let shape = t.shape;
            let fits = match (part, shape) {
                (Part::Embed | Part::Head, [rows, cols]) => {
                    *cols == hidden && (vocab == 0 || *rows == vocab)
                }
                (Part::FinalNorm | Part::InputNorm(_) | Part::PostAttentionNorm(_), [n]) => {
                    *n == hidden
                }
                (Part::Q(_), [rows, cols]) | (Part::O(_), [cols, rows]) => {
                    let d = rows / heads;
                    let ok = *cols == hidden && rows % heads == 0 && d > 0;
                    let same = head_dim.is_none_or(|h| h == d);
                    head_dim = Some(d);
                    ok && same
                }
                (Part::K(_) | Part::V(_), [rows, cols]) => {
                    let d = rows / kv_heads;
                    let ok = *cols == hidden && rows % kv_heads == 0 && d > 0;
                    let same = head_dim.is_none_or(|h| h == d);
                    head_dim = Some(d);
                    ok && same
                }
                (Part::Gate(_) | Part::Up(_), [rows, cols]) => {
                    *rows == intermediate && *cols == hidden
                }
                (Part::Down(_), [rows, cols]) => *rows == hidden && *cols == intermediate,
                _ => false,
            };
            if !fits {
                return Err(format!(
                    "tensor '{}' of shape {shape:?} does not fit {heads} attention heads over \
                     {kv_heads} key/value heads, hidden size {hidden}, intermediate size \
                     {intermediate}{}",
                    t.name.escape_debug(),
                    if vocab > 0 { format!(" and vocabulary {vocab}") } else { String::new() }
                ));
            }
        }
        Ok(())
    }
}

/// The decoder layer of a tensor name, if any.
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?.split_once('.')?.0.parse().ok()
}

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

/// (layer, "q_proj" | "k_proj" | "v_proj" | "o_proj") of an attention weight.
pub fn attention_part(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let part = tail.strip_prefix("self_attn.")?.strip_suffix(".weight")?;
    matches!(part, "q_proj" | "k_proj" | "v_proj" | "o_proj").then_some((layer.parse().ok()?, part))
}

/// How a tensor takes part in the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Reads the stream (columns = hidden): `W Q`; the norm named is folded in first.
    Reads(Option<NormOf>),
    /// Writes the stream (rows = hidden): `Q^T W`.
    Writes,
    /// A norm weight: becomes 1.
    Norm,
}

/// Which norm is folded into a reading matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormOf {
    /// `input_layernorm` of the layer.
    Input(usize),
    /// `post_attention_layernorm` of the layer.
    PostAttention(usize),
    /// The final `model.norm`.
    Final,
}

impl NormOf {
    /// The norm tensor's name.
    pub fn name(self) -> String {
        match self {
            NormOf::Input(l) => format!("model.layers.{l}.input_layernorm.weight"),
            NormOf::PostAttention(l) => format!("model.layers.{l}.post_attention_layernorm.weight"),
            NormOf::Final => "model.norm.weight".to_string(),
        }
    }
}

/// The role of a Hugging Face Llama tensor, if it has one.
pub fn role(name: &str) -> Option<Role> {
    match name {
        "model.embed_tokens.weight" => return Some(Role::Reads(None)),
        "lm_head.weight" => return Some(Role::Reads(Some(NormOf::Final))),
        "model.norm.weight" => return Some(Role::Norm),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let l: usize = layer.parse().ok()?;
    Some(match tail {
        "input_layernorm.weight" | "post_attention_layernorm.weight" => Role::Norm,
        "self_attn.q_proj.weight" | "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => {
            Role::Reads(Some(NormOf::Input(l)))
        }
        "mlp.gate_proj.weight" | "mlp.up_proj.weight" => {
            Role::Reads(Some(NormOf::PostAttention(l)))
        }
        "self_attn.o_proj.weight" | "mlp.down_proj.weight" => Role::Writes,
        _ => return None,
    })
}

/// A tensor's values as a matrix (1-D tensors as one row).
pub fn as_matrix(t: &TensorRef<'_>) -> Option<Array2<f64>> {
    let mut v = Vec::new();
    decode_f64(t.dtype, &t.data(), &mut v);
    let (rows, cols) = match t.shape {
        [n] => (1, *n),
        [r, c] => (*r, *c),
        _ => return None,
    };
    Array2::from_shape_vec((rows, cols), v).ok()
}

/// The matrix of `t` with its norm folded in (columns scaled), or as is.
pub fn folded(t: &TensorRef<'_>, norms: &HashMap<String, Vec<f64>>) -> Option<Array2<f64>> {
    let mut m = as_matrix(t)?;
    if let Some(Role::Reads(Some(norm))) = role(t.name) {
        if let Some(g) = norms.get(&norm.name()) {
            for mut row in m.rows_mut() {
                row.iter_mut().zip(g).for_each(|(x, s)| *x *= s);
            }
        }
    }
    Some(m)
}

/// Norm weights of a model, by name.
pub fn norm_weights(model: &Model) -> HashMap<String, Vec<f64>> {
    model
        .tensors()
        .filter(|t| role(t.name) == Some(Role::Norm))
        .map(|t| {
            let mut v = Vec::new();
            decode_f64(t.dtype, &t.data(), &mut v);
            (t.name.to_string(), v)
        })
        .collect()
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
        // Elements of 1, 2, 4 or 8 bytes moved as arrays of that size (a
        // copy of a size known only at run time was a call per element).
        match elem {
            1 => reorder_columns::<1>(data, &mut out, cols, perm),
            2 => reorder_columns::<2>(data, &mut out, cols, perm),
            4 => reorder_columns::<4>(data, &mut out, cols, perm),
            8 => reorder_columns::<8>(data, &mut out, cols, perm),
            _ => {
                for r in 0..rows {
                    let row_in = &data[r * cols * elem..(r + 1) * cols * elem];
                    let row_out = &mut out[r * cols * elem..(r + 1) * cols * elem];
                    for (k, &src) in perm.iter().enumerate() {
                        row_out[k * elem..(k + 1) * elem]
                            .copy_from_slice(&row_in[src * elem..(src + 1) * elem]);
                    }
                }
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

/// [`reorder`]'s columns for `N`-byte elements, row by row.
fn reorder_columns<const N: usize>(data: &[u8], out: &mut [u8], cols: usize, perm: &[usize]) {
    if cols == 0 {
        return;
    }
    let row = cols * N;
    for (row_in, row_out) in data.chunks_exact(row).zip(out.chunks_exact_mut(row)) {
        for (o, &src) in row_out.chunks_exact_mut(N).zip(perm) {
            o.copy_from_slice(&row_in[src * N..src * N + N]);
        }
    }
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
                Some(reorder(&t.data(), *rows, *cols, e, &Self::expand(&self.q, head_dim), false))
            }
            "k_proj" | "v_proj" => {
                Some(reorder(&t.data(), *rows, *cols, e, &Self::expand(&self.kv, head_dim), false))
            }
            "o_proj" => {
                Some(reorder(&t.data(), *rows, *cols, e, &Self::expand(&self.q, head_dim), true))
            }
            _ => None,
        }
    }
}

/// Where a Hugging Face Llama tensor sits: the finer view behind [`role`], for
/// edits that treat the projections of a layer differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// `model.embed_tokens.weight`, [vocab, hidden].
    Embed,
    /// `lm_head.weight`, [vocab, hidden] (absent when tied to the embeddings).
    Head,
    /// `model.norm.weight`, [hidden].
    FinalNorm,
    /// `input_layernorm.weight` of a layer, [hidden].
    InputNorm(usize),
    /// `post_attention_layernorm.weight` of a layer, [hidden].
    PostAttentionNorm(usize),
    /// `self_attn.q_proj.weight`, [heads x head_dim, hidden].
    Q(usize),
    /// `self_attn.k_proj.weight`, [kv_heads x head_dim, hidden].
    K(usize),
    /// `self_attn.v_proj.weight`, [kv_heads x head_dim, hidden].
    V(usize),
    /// `self_attn.o_proj.weight`, [hidden, heads x head_dim].
    O(usize),
    /// `mlp.gate_proj.weight`, [intermediate, hidden].
    Gate(usize),
    /// `mlp.up_proj.weight`, [intermediate, hidden].
    Up(usize),
    /// `mlp.down_proj.weight`, [hidden, intermediate].
    Down(usize),
}

impl Part {
    /// The part of a tensor name, if it is one of the Llama weights.
    pub fn of(name: &str) -> Option<Part> {
        match name {
            "model.embed_tokens.weight" => return Some(Part::Embed),
            "lm_head.weight" => return Some(Part::Head),
            "model.norm.weight" => return Some(Part::FinalNorm),
            _ => {}
        }
        let (layer, tail) = name.strip_prefix("model.layers.")?.split_once('.')?;
        let l: usize = layer.parse().ok()?;
        Some(match tail {
            "input_layernorm.weight" => Part::InputNorm(l),
            "post_attention_layernorm.weight" => Part::PostAttentionNorm(l),
            "self_attn.q_proj.weight" => Part::Q(l),
            "self_attn.k_proj.weight" => Part::K(l),
            "self_attn.v_proj.weight" => Part::V(l),
            "self_attn.o_proj.weight" => Part::O(l),
            "mlp.gate_proj.weight" => Part::Gate(l),
            "mlp.up_proj.weight" => Part::Up(l),
            "mlp.down_proj.weight" => Part::Down(l),
            _ => return None,
        })
    }
}

/// The residual width of a Llama-layout model: the columns of its embeddings.
pub fn hidden_size(model: &Model) -> Result<usize> {
    model.tensor("model.embed_tokens.weight").and_then(|t| t.shape.get(1).copied()).ok_or_else(
        || {
            Error::invalid(format!(
                "{}: no 2-D model.embed_tokens.weight: this edit needs a Llama-layout model",
                model.path.display()
            ))
        },
    )
}

/// Grouped-query attention as every layer of a model has it: `heads` query
/// heads of `head_dim` rows each in `q_proj` (columns of `o_proj`), sharing
/// `kv_heads` key/value heads in groups of `heads / kv_heads` consecutive
/// query heads. RoPE (Hugging Face's `rotate_half` layout) turns dimension
/// `i` of a head together with dimension `i + head_dim / 2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionGeometry {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Rows of one head.
    pub head_dim: usize,
}

impl AttentionGeometry {
    /// The head counts from the model's `config.json`, the head width from
    /// its `q_proj` rows; every q/k/v/o projection is checked against them.
    pub fn for_model(model: &Model) -> Result<AttentionGeometry> {
        let config = LlamaConfig::for_model(model)?;
        let (heads, kv_heads) = (config.heads, config.kv_heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(Error::invalid(format!(
                "{}: {heads} attention heads cannot be grouped over {kv_heads} key/value heads",
                model.path.display()
            )));
        }
        let mut head_dim = None;
        for t in model.tensors() {
            if let (Some(Part::Q(_)), [rows, _]) = (Part::of(t.name), t.shape) {
                let d = rows / heads;
                if rows % heads != 0 || d % 2 != 0 || head_dim.is_some_and(|h| h != d) {
                    return Err(Error::invalid(format!(
                        "tensor '{}': {rows} rows do not split into {heads} heads of one even \
                         width (RoPE pairs the dimensions of a head)",
                        t.name
                    )));
                }
                head_dim = Some(d);
            }
        }
        let Some(head_dim) = head_dim else {
            return Err(Error::invalid(format!(
                "{}: no model.layers.N.self_attn.q_proj.weight: this edit needs a Llama-layout \
                 model",
                model.path.display()
            )));
        };
        let g = AttentionGeometry { heads, kv_heads, head_dim };
        for t in model.tensors() {
            let (expected, side) = match Part::of(t.name) {
                Some(Part::K(_) | Part::V(_)) => (kv_heads * head_dim, 0),
                Some(Part::O(_)) => (heads * head_dim, 1),
                _ => continue,
            };
            if t.shape.len() != 2 || t.shape[side] != expected {
                return Err(Error::invalid(format!(
                    "tensor '{}' of shape {:?} does not fit {kv_heads} key/value heads and \
                     {heads} query heads of width {head_dim}",
                    t.name, t.shape
                )));
            }
        }
        Ok(g)
    }

    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads.max(1)
    }

    /// The key/value head a query head reads.
    pub fn kv_of(&self, head: usize) -> usize {
        head / self.group().max(1)
    }

    /// Half a head: RoPE pairs dimension `i < half` with `i + half`.
    pub fn rope_half(&self) -> usize {
        self.head_dim / 2
    }
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

    #[test]
    fn columns_of_every_element_size_move_whole_elements() {
        let (rows, cols) = (3, 5);
        let perm = [3, 0, 4, 2, 1];
        for elem in [1, 2, 3, 4, 8] {
            let data: Vec<u8> = (0..rows * cols * elem).map(|i| (i * 37 % 251) as u8).collect();
            let mut want = Vec::new();
            for r in 0..rows {
                for &src in &perm {
                    let at = (r * cols + src) * elem;
                    want.extend_from_slice(&data[at..at + elem]);
                }
            }
            assert_eq!(reorder(&data, rows, cols, elem, &perm, true), want, "{elem}-byte elements");
        }
        assert!(reorder(&[], 0, 0, 2, &[], true).is_empty());
    }

    #[test]
    fn parts_agree_with_roles() {
        let parts = [
            ("model.embed_tokens.weight", Part::Embed),
            ("lm_head.weight", Part::Head),
            ("model.norm.weight", Part::FinalNorm),
            ("model.layers.3.input_layernorm.weight", Part::InputNorm(3)),
            ("model.layers.3.post_attention_layernorm.weight", Part::PostAttentionNorm(3)),
            ("model.layers.0.self_attn.q_proj.weight", Part::Q(0)),
            ("model.layers.1.self_attn.k_proj.weight", Part::K(1)),
            ("model.layers.2.self_attn.v_proj.weight", Part::V(2)),
            ("model.layers.3.self_attn.o_proj.weight", Part::O(3)),
            ("model.layers.4.mlp.gate_proj.weight", Part::Gate(4)),
            ("model.layers.5.mlp.up_proj.weight", Part::Up(5)),
            ("model.layers.16.mlp.down_proj.weight", Part::Down(16)),
        ];
        for (name, p) in parts {
            assert_eq!(Part::of(name), Some(p), "{name}");
            assert!(role(name).is_some(), "{name}");
        }
        assert_eq!(Part::of("model.layers.0.self_attn.rotary_emb.inv_freq"), None);
    }
}
