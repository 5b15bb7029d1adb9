//! Function-preserving diagonal rescalings of a Llama-layout model, with
//! seeded log-normal factors `exp(log_sd * N(0, 1))` ([`rescale`]) or factors
//! given per group ([`super::smooth`] computes them from activation
//! statistics):
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
//! Given factors may leave groups out: a group left out keeps factors of 1,
//! and a tensor no group touches is copied as it is.
//!
//! Values are rounded to nearest in each tensor's dtype, so the function is
//! the same up to that rounding; a value the dtype cannot hold is refused.
//! The final norm cannot be folded into a head tied to the embeddings (the
//! embedding lookup does not go through it): when the final norm is rescaled,
//! such a head is untied, as [`super::rotate`] does.

use std::collections::HashMap;
use std::path::Path;

use super::symmetry::{log_normal, scaled, values, write_edited, write_untied};
use super::AttackReport;
use crate::error::{Error, Result};
use crate::llama::{hidden_size, AttentionGeometry, Part};
use crate::model::{Model, TensorRef};
use crate::progress::Progress;

/// Which group of factors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Factors {
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

/// Where the factors of a rescaling come from.
pub(crate) enum FactorSource {
    /// Seeded log-normal factors, for every group.
    LogNormal {
        /// Standard deviation of their logarithms.
        log_sd: f64,
        /// Seed of the draws.
        seed: u64,
    },
    /// The factors of some groups (`b`, `a`, `c` or `d` above); the others
    /// are 1.
    Given(HashMap<Factors, Vec<f64>>),
}

/// The factors of one rescaling.
struct Rescaling {
    source: FactorSource,
    hidden: usize,
    geometry: AttentionGeometry,
}

/// The rows and columns of `t` scaled (see [`scaled`]), or `None` when
/// neither is.
fn scale(
    t: &TensorRef<'_>,
    rows: Option<Vec<f64>>,
    cols: Option<Vec<f64>>,
) -> Result<Option<Vec<u8>>> {
    if rows.is_none() && cols.is_none() {
        return Ok(None);
    }
    scaled(t, rows.as_deref(), cols.as_deref()).map(Some)
}

impl Rescaling {
    /// The `n` factors of a group, or `None` when it keeps factors of 1.
    fn factors(&self, which: Factors, n: usize) -> Option<Vec<f64>> {
        match &self.source {
            FactorSource::LogNormal { log_sd, seed } => {
                let name = match which {
                    Factors::Input(l) => format!("rescale\0input\0{l}"),
                    Factors::PostAttention(l) => format!("rescale\0post\0{l}"),
                    Factors::Final => "rescale\0final".to_string(),
                    Factors::Mlp(l) => format!("rescale\0mlp\0{l}"),
                    Factors::Values(l) => format!("rescale\0v\0{l}"),
                    Factors::QueryKey(l) => format!("rescale\0qk\0{l}"),
                };
                Some(log_normal(n, *log_sd, *seed, &name))
            }
            FactorSource::Given(map) => map.get(&which).cloned(),
        }
    }

    /// `1 / factors`.
    fn inverse(&self, which: Factors, n: usize) -> Option<Vec<f64>> {
        self.factors(which, n).map(|f| f.iter().map(|f| 1.0 / f).collect())
    }

    /// Row factors of `q_proj` (or, inverted, `k_proj`) of a layer.
    fn query_key_rows(&self, layer: usize, heads: usize, query: bool) -> Option<Vec<f64>> {
        let g = &self.geometry;
        let half = g.rope_half();
        let d = self.factors(Factors::QueryKey(layer), g.kv_heads * half)?;
        let pair = |row: usize| {
            let (head, i) = (row / g.head_dim, row % g.head_dim);
            let kv = if query { g.kv_of(head) } else { head };
            d.get(kv * half + i % half).copied().unwrap_or(f64::NAN)
        };
        Some(
            (0..heads * g.head_dim)
                .map(|row| if query { pair(row) } else { 1.0 / pair(row) })
                .collect(),
        )
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
        match part {
            Part::Embed => Ok(None),
            Part::InputNorm(l) => scale(t, None, self.factors(Factors::Input(l), h)),
            Part::PostAttentionNorm(l) => {
                scale(t, None, self.factors(Factors::PostAttention(l), h))
            }
            Part::FinalNorm => scale(t, None, self.factors(Factors::Final, h)),
            Part::Head => scale(t, None, self.inverse(Factors::Final, h)),
            Part::Q(l) => {
                scale(t, self.query_key_rows(l, g.heads, true), self.inverse(Factors::Input(l), h))
            }
            Part::K(l) => scale(
                t,
                self.query_key_rows(l, g.kv_heads, false),
                self.inverse(Factors::Input(l), h),
            ),
            Part::V(l) => scale(
                t,
                self.factors(Factors::Values(l), kv_rows),
                self.inverse(Factors::Input(l), h),
            ),
            Part::O(l) => {
                let cols = self.inverse(Factors::Values(l), kv_rows).map(|c| {
                    (0..g.heads * g.head_dim)
                        .map(|col| {
                            let row = g.kv_of(col / g.head_dim) * g.head_dim + col % g.head_dim;
                            c.get(row).copied().unwrap_or(f64::NAN)
                        })
                        .collect()
                });
                scale(t, None, cols)
            }
            Part::Gate(l) => scale(t, None, self.inverse(Factors::PostAttention(l), h)),
            Part::Up(l) => scale(
                t,
                self.factors(Factors::Mlp(l), mlp(l)?),
                self.inverse(Factors::PostAttention(l), h),
            ),
            Part::Down(l) => scale(t, None, self.inverse(Factors::Mlp(l), mlp(l)?)),
        }
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
    rescale_with(model, out, FactorSource::LogNormal { log_sd, seed }, progress)
}

/// Rescales a Llama-layout model with the factors of `source` (head counts
/// from its `config.json`). Given factors must be finite, positive and of
/// the group's length (a tensor they do not fit is refused, by name).
pub(crate) fn rescale_with(
    model: &Model,
    out: &Path,
    source: FactorSource,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    let (hidden, geometry) = (hidden_size(model)?, AttentionGeometry::for_model(model)?);
    let mut neurons: HashMap<usize, usize> = HashMap::new();
    for t in model.tensors() {
        if let (Some(Part::Up(l)), Some(&rows)) = (Part::of(t.name), t.shape.first()) {
            neurons.insert(l, rows);
        }
    }
    if let FactorSource::Given(map) = &source {
        for (which, f) in map {
            let n = match which {
                Factors::Input(_) | Factors::PostAttention(_) | Factors::Final => Some(hidden),
                Factors::Mlp(l) => neurons.get(l).copied(),
                Factors::Values(_) => Some(geometry.kv_heads * geometry.head_dim),
                Factors::QueryKey(_) => Some(geometry.kv_heads * geometry.rope_half()),
            };
            if n != Some(f.len()) || f.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                return Err(Error::invalid(format!(
                    "{}: {} rescaling factors of {which:?} do not fit the model (or are not \
                     positive)",
                    model.path.display(),
                    f.len()
                )));
            }
        }
    }
    let r = Rescaling { source, hidden, geometry };
    let transform = |t: &TensorRef<'_>| r.apply(t, &neurons);
    let final_inverse = r.inverse(Factors::Final, r.hidden);
    let Some(inverse) = final_inverse.filter(|_| model.tensor("lm_head.weight").is_none()) else {
        return write_edited(model, out, &transform, progress);
    };
    // Tied: the new head is the embeddings with the final norm's factors divided out.
    let embed = model
        .tensor("model.embed_tokens.weight")
        .ok_or_else(|| Error::invalid("no model.embed_tokens.weight"))?;
    let mut head = values(&embed)?;
    for row in head.chunks_exact_mut(r.hidden) {
        row.iter_mut().zip(&inverse).for_each(|(x, f)| *x *= f);
    }
    write_untied(model, out, &transform, &head)
}
