//! AWQ/SmoothQuant-style smoothing of a Llama-layout model: activation
//! outliers moved into the weights before quantization, by function-preserving
//! diagonal rescalings whose factors come from the activations of a
//! calibration text ([`ActivationStats`], measured with a forward pass by the
//! eval crate).
//!
//! For each input channel `j` of a group of matrices reading the same
//! activations, SmoothQuant's factor is
//! `s_j = act_j^alpha / max_i |W_ij|^(1 - alpha)`, the weight maximum taken
//! over every matrix of the group, normalised to geometric mean 1. The
//! channel's columns are multiplied by `s_j` and whatever produces the
//! channel is divided by it ([`super::rescale`] does the writing):
//!
//! - q/k/v columns against `input_layernorm`, gate/up columns against
//!   `post_attention_layernorm`;
//! - down columns against up rows;
//! - o columns against v rows. Under grouped-query attention one v row feeds
//!   the o columns of every query head of its group, so the group shares one
//!   factor (its statistics combined by maximum).
//!
//! The q/k rows, the final norm and the head are left alone, as AWQ leaves
//! them. Means of zero (a dead channel) and all-zero columns are floored at
//! `1e-5`, as SmoothQuant clamps them.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::rescale::{rescale_with, FactorSource, Factors};
use super::symmetry::values;
use super::{AttackDetail, AttackReport};
use crate::error::{Error, Result};
use crate::llama::{AttentionGeometry, LlamaConfig, Part};
use crate::model::Model;
use crate::progress::Progress;

/// Floor of a mean activation or a column maximum (SmoothQuant's clamp).
const FLOOR: f64 = 1e-5;

/// Mean `|x|` per input channel of the matrices of one decoder layer, over
/// the tokens of a calibration text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerActivations {
    /// Of q/k/v's input, the `input_layernorm` output (hidden).
    pub attention_input: Vec<f64>,
    /// Of gate/up's input, the `post_attention_layernorm` output (hidden).
    pub mlp_input: Vec<f64>,
    /// Of `o_proj`'s input, the attention heads' outputs (heads x head_dim).
    pub o_input: Vec<f64>,
    /// Of `down_proj`'s input, `silu(gate x) * up x` (intermediate).
    pub down_input: Vec<f64>,
}

/// Activation statistics of a Llama-layout model, one entry per decoder
/// layer, from a calibration text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationStats {
    /// Tokens the means are taken over.
    pub tokens: usize,
    /// Each decoder layer's statistics, in order.
    pub layers: Vec<LayerActivations>,
}

impl ActivationStats {
    /// Checks that there is at least one layer and every mean is finite and
    /// non-negative (the sizes are checked against a model by [`smooth`]).
    pub fn validate(&self) -> Result<()> {
        if self.layers.is_empty() || self.tokens == 0 {
            return Err(Error::invalid("smooth: the activation statistics are empty"));
        }
        for (l, a) in self.layers.iter().enumerate() {
            for (what, v) in a.parts() {
                if v.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
                    return Err(Error::invalid(format!(
                        "smooth: a mean activation of layer {l} ({what}) is negative or not finite"
                    )));
                }
            }
        }
        Ok(())
    }
}

impl LayerActivations {
    /// Each statistic with what it describes.
    fn parts(&self) -> [(&'static str, &[f64]); 4] {
        [
            ("q/k/v input", &self.attention_input),
            ("gate/up input", &self.mlp_input),
            ("o_proj input", &self.o_input),
            ("down_proj input", &self.down_input),
        ]
    }
}

/// `max_i |W_ij|` for each column `j` of a matrix of `width` columns.
fn column_max(v: &[f64], width: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; width];
    for row in v.chunks_exact(width.max(1)) {
        out.iter_mut().zip(row).for_each(|(m, x)| *m = m.max(x.abs()));
    }
    out
}

/// Element-wise maximum of `b` into `a` (`a` empty: a copy of `b`).
fn max_into(a: &mut Vec<f64>, b: &[f64]) {
    if a.is_empty() {
        a.extend_from_slice(b);
    } else {
        a.iter_mut().zip(b).for_each(|(x, y)| *x = x.max(*y));
    }
}

/// SmoothQuant's factors `act^alpha / w^(1 - alpha)`, normalised to
/// geometric mean 1.
fn smoothing_factors(act: &[f64], w: &[f64], alpha: f64) -> Vec<f64> {
    let logs: Vec<f64> = act
        .iter()
        .zip(w)
        .map(|(a, w)| alpha * a.max(FLOOR).ln() - (1.0 - alpha) * w.max(FLOOR).ln())
        .collect();
    let mean = logs.iter().sum::<f64>() / logs.len().max(1) as f64;
    logs.iter().map(|l| (l - mean).exp()).collect()
}

/// Column maxima of the matrices of one layer, by the group they belong to.
#[derive(Default)]
struct LayerWeights {
    /// Of q, k and v (hidden).
    attention: Vec<f64>,
    /// Of gate and up (hidden).
    mlp: Vec<f64>,
    /// Of o (heads x head_dim).
    o: Vec<f64>,
    /// Of down (intermediate).
    down: Vec<f64>,
}

/// The statistic `got` of layer `l` must have `want` values.
fn check_len(l: usize, what: &str, got: usize, want: usize, tensor: &str) -> Result<()> {
    if got == want {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "smooth: the activation statistics of layer {l} hold {got} values for the {what}, but \
         model.layers.{l}.{tensor}.weight reads {want}"
    )))
}

/// Smooths a Llama-layout model (head counts from its `config.json`) with
/// strength `alpha` in [0, 1] (0: factors from the weights alone, 1: from the
/// activations alone) and the calibration statistics `activations`, which
/// must have one entry per decoder layer of the model's sizes. The report's
/// detail holds each factor group's ratio `max(s) / min(s)`.
pub fn smooth(
    model: &Model,
    out: &Path,
    activations: &ActivationStats,
    alpha: f64,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::invalid(format!("smooth: alpha {alpha} must be between 0 and 1")));
    }
    activations.validate()?;
    let config = LlamaConfig::for_model(model)?;
    let g = AttentionGeometry::for_model(model)?;
    if activations.layers.len() != config.layers {
        return Err(Error::invalid(format!(
            "smooth: the activation statistics describe {} decoder layers; {} has {}",
            activations.layers.len(),
            model.path.display(),
            config.layers
        )));
    }
    let mut weights: Vec<LayerWeights> =
        (0..config.layers).map(|_| LayerWeights::default()).collect();
    for t in model.tensors() {
        let Some(part) = Part::of(t.name) else { continue };
        let (Some(l), [_, width]) = (crate::llama::layer_of(t.name), t.shape) else { continue };
        let Some(w) = weights.get_mut(l) else { continue };
        let group = match part {
            Part::Q(_) | Part::K(_) | Part::V(_) => &mut w.attention,
            Part::Gate(_) | Part::Up(_) => &mut w.mlp,
            Part::O(_) => &mut w.o,
            Part::Down(_) => &mut w.down,
            _ => continue,
        };
        max_into(group, &column_max(&values(&t)?, *width));
    }
    let (hidden, o_width, kv_rows) = (config.hidden, g.heads * g.head_dim, g.kv_heads * g.head_dim);
    let mut factors = HashMap::new();
    let mut ratios = Vec::new();
    for (l, (a, w)) in activations.layers.iter().zip(&weights).enumerate() {
        check_len(l, "q/k/v input", a.attention_input.len(), hidden, "self_attn.q_proj")?;
        check_len(l, "gate/up input", a.mlp_input.len(), hidden, "mlp.gate_proj")?;
        check_len(l, "o_proj input", a.o_input.len(), o_width, "self_attn.o_proj")?;
        check_len(l, "down_proj input", a.down_input.len(), w.down.len(), "mlp.down_proj")?;
        for (name, got, want) in [
            ("self_attn.q_proj", w.attention.len(), hidden),
            ("mlp.gate_proj", w.mlp.len(), hidden),
            ("self_attn.o_proj", w.o.len(), o_width),
        ] {
            if got != want {
                return Err(Error::invalid(format!(
                    "{}: model.layers.{l}.{name}.weight is missing or does not read {want} \
                     channels",
                    model.path.display()
                )));
            }
        }
        // One v row feeds the o columns of every query head of its group.
        let (mut v_act, mut v_w) = (vec![0.0f64; kv_rows], vec![0.0f64; kv_rows]);
        for col in 0..o_width {
            let row = g.kv_of(col / g.head_dim) * g.head_dim + col % g.head_dim;
            v_act[row] = v_act[row].max(a.o_input[col]);
            v_w[row] = v_w[row].max(w.o[col]);
        }
        for (which, act, wmax) in [
            (Factors::Input(l), &a.attention_input[..], &w.attention[..]),
            (Factors::PostAttention(l), &a.mlp_input[..], &w.mlp[..]),
            (Factors::Values(l), &v_act[..], &v_w[..]),
            (Factors::Mlp(l), &a.down_input[..], &w.down[..]),
        ] {
            let s = smoothing_factors(act, wmax, alpha);
            let (lo, hi) =
                s.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            ratios.push(hi / lo);
            // The readers' columns times s, the producer divided by s.
            factors.insert(which, s.iter().map(|x| 1.0 / x).collect::<Vec<f64>>());
        }
    }
    let mut report = rescale_with(model, out, FactorSource::Given(factors), progress)?;
    report.detail = AttackDetail::Smoothed { ratios };
    Ok(report)
}

/// Median and maximum of the channel ratios of [`AttackDetail::Smoothed`].
pub fn ratio_summary(ratios: &[f64]) -> (f64, f64) {
    let mut sorted = ratios.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]),
    };
    (median, sorted.last().copied().unwrap_or(f64::NAN))
}
