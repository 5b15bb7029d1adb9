//! Function-preserving diagonal rescalings of a Llama-layout model, with
//! seeded log-normal factors `exp(log_sd * N(0, 1))`:
//!
//! - each RMSNorm weight times `b`, the columns of the matrices that read its
//!   output divided by `b` (`input_layernorm` -> q/k/v, `post_attention_layernorm`
//!   -> gate/up, `model.norm` -> `lm_head`);
//! - rows of `up_proj` times `a`, the matching columns of `down_proj` divided
//!   by `a` (`silu(gate x) * (a up x)` is linear in `a`);
//! - rows of `v_proj` times `c`, the matching columns of `o_proj` (every query
//!   head of the key/value group) divided by `c`;
//! - rows of `q_proj` times `d`, rows of `k_proj` divided by `d`, one factor
//!   per RoPE pair (dimensions `i` and `i + head_dim / 2` share it, so the
//!   rotation commutes with the scaling) and per key/value group (every query
//!   head of the group shares its key head's factors): `q . k` is unchanged.
//!
//! Values are rounded to nearest in each tensor's dtype, so the function is
//! the same up to that rounding; a value the dtype cannot hold is refused.
//! The final norm cannot be folded into a head tied to the embeddings (the
//! embedding lookup does not go through it): such a head is untied, as
//! [`super::rotate`] does.

use std::collections::HashMap;
use std::path::Path;

use super::symmetry::{log_normal, scaled, values, write_edited, write_untied};
use super::AttackReport;
use crate::error::{Error, Result};
use crate::llama::{hidden_size, AttentionGeometry, Part};
use crate::model::{Model, TensorRef};
use crate::progress::Progress;

/// Which group of factors.
#[derive(Clone, Copy)]
enum Factors {
    /// `input_layernorm` of a layer (hidden).
    Input(usize),
    /// `post_attention_layernorm` of a layer (hidden).
    PostAttention(usize),
    /// `model.norm` (hidden).
    Final,
    /// MLP neurons of a layer (intermediate).
    Mlp(usize),
    /// Value rows of a layer (kv_heads x head_dim).
    Values(usize),
    /// Query/key RoPE pairs of a layer (kv_heads x head_dim / 2).
    QueryKey(usize),
}

/// The seeded factors of one rescaling.
struct Rescaling {
    log_sd: f64,
    seed: u64,
    hidden: usize,
    geometry: AttentionGeometry,
}

impl Rescaling {
    fn factors(&self, which: Factors, n: usize) -> Vec<f64> {
        let name = match which {
            Factors::Input(l) => format!("rescale\0input\0{l}"),
            Factors::PostAttention(l) => format!("rescale\0post\0{l}"),
            Factors::Final => "rescale\0final".to_string(),
            Factors::Mlp(l) => format!("rescale\0mlp\0{l}"),
            Factors::Values(l) => format!("rescale\0v\0{l}"),
            Factors::QueryKey(l) => format!("rescale\0qk\0{l}"),
        };
        log_normal(n, self.log_sd, self.seed, &name)
    }

    /// `1 / factors`.
    fn inverse(&self, which: Factors, n: usize) -> Vec<f64> {
        self.factors(which, n).iter().map(|f| 1.0 / f).collect()
    }

    /// Row factors of `q_proj` (or, inverted, `k_proj`) of a layer.
    fn query_key_rows(&self, layer: usize, heads: usize, query: bool) -> Vec<f64> {
        let g = &self.geometry;
        let half = g.rope_half();
        let d = self.factors(Factors::QueryKey(layer), g.kv_heads * half);
        (0..heads * g.head_dim)
            .map(|row| {
                let (head, i) = (row / g.head_dim, row % g.head_dim);
                let kv = if query { g.kv_of(head) } else { head };
                let f = d[kv * half + i % half];
                if query {
                    f
                } else {
                    1.0 / f
                }
            })
            .collect()
    }

    /// The new bytes of one tensor, or `None` if it is left alone.
    fn apply(&self, t: &TensorRef<'_>, neurons: &HashMap<usize, usize>) -> Result<Option<Vec<u8>>> {
        let g = &self.geometry;
        let h = self.hidden;
        let kv_rows = g.kv_heads * g.head_dim;
        let mlp = |l: usize| -> Result<usize> {
            neurons.get(&l).copied().ok_or_else(|| {
                Error::invalid(format!("tensor '{}': layer {l} has no mlp.up_proj.weight", t.name))
            })
        };
        let Some(part) = Part::of(t.name) else { return Ok(None) };
        if t.shape.len() > 2 {
            return Err(Error::invalid(format!("tensor '{}' has more than 2 dimensions", t.name)));
        }
        let data = match part {
            Part::Embed => return Ok(None),
            Part::InputNorm(l) => scaled(t, None, Some(&self.factors(Factors::Input(l), h)))?,
            Part::PostAttentionNorm(l) => {
                scaled(t, None, Some(&self.factors(Factors::PostAttention(l), h)))?
            }
            Part::FinalNorm => scaled(t, None, Some(&self.factors(Factors::Final, h)))?,
            Part::Head => scaled(t, None, Some(&self.inverse(Factors::Final, h)))?,
            Part::Q(l) => scaled(
                t,
                Some(&self.query_key_rows(l, g.heads, true)),
                Some(&self.inverse(Factors::Input(l), h)),
            )?,
            Part::K(l) => scaled(
                t,
                Some(&self.query_key_rows(l, g.kv_heads, false)),
                Some(&self.inverse(Factors::Input(l), h)),
            )?,
            Part::V(l) => scaled(
                t,
                Some(&self.factors(Factors::Values(l), kv_rows)),
                Some(&self.inverse(Factors::Input(l), h)),
            )?,
            Part::O(l) => {
                let c = self.inverse(Factors::Values(l), kv_rows);
                let cols: Vec<f64> = (0..g.heads * g.head_dim)
                    .map(|col| c[g.kv_of(col / g.head_dim) * g.head_dim + col % g.head_dim])
                    .collect();
                scaled(t, None, Some(&cols))?
            }
            Part::Gate(l) => scaled(t, None, Some(&self.inverse(Factors::PostAttention(l), h)))?,
            Part::Up(l) => scaled(
                t,
                Some(&self.factors(Factors::Mlp(l), mlp(l)?)),
                Some(&self.inverse(Factors::PostAttention(l), h)),
            )?,
            Part::Down(l) => scaled(t, None, Some(&self.inverse(Factors::Mlp(l), mlp(l)?)))?,
        };
        Ok(Some(data))
    }
}

/// Rescales a Llama-layout model with seeded log-normal factors of
/// log-standard-deviation `log_sd` (head counts from its `config.json`).
pub fn rescale(
    model: &Model,
    out: &Path,
    log_sd: f64,
    seed: u64,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    if !(log_sd.is_finite() && log_sd >= 0.0) {
        return Err(Error::invalid(format!(
            "rescale: log_sd {log_sd} must be a finite number >= 0"
        )));
    }
    let r = Rescaling {
        log_sd,
        seed,
        hidden: hidden_size(model)?,
        geometry: AttentionGeometry::for_model(model)?,
    };
    let mut neurons: HashMap<usize, usize> = HashMap::new();
    for t in model.tensors() {
        if let (Some(Part::Up(l)), Some(&rows)) = (Part::of(t.name), t.shape.first()) {
            neurons.insert(l, rows);
        }
    }
    let transform = |t: &TensorRef<'_>| r.apply(t, &neurons);
    if model.tensor("lm_head.weight").is_some() {
        return write_edited(model, out, &transform, progress);
    }
    // Tied: the new head is the embeddings with the final norm's factors divided out.
    let embed = model
        .tensor("model.embed_tokens.weight")
        .ok_or_else(|| Error::invalid("no model.embed_tokens.weight"))?;
    let inverse = r.inverse(Factors::Final, r.hidden);
    let mut head = values(&embed)?;
    for row in head.chunks_exact_mut(r.hidden) {
        row.iter_mut().zip(&inverse).for_each(|(x, f)| *x *= f);
    }
    write_untied(model, out, &transform, &head)
}
