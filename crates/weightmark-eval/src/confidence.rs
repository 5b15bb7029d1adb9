//! Matching a changed decoder's confidence on ordinary text to the
//! original's with one number: a scale on the final norm's weight, which
//! multiplies every logit by it (a temperature of its inverse) and so leaves
//! each position's most likely token, and greedy decoding, as they were.
//!
//! Planting a fingerprint leaves the model slightly more sure of itself on
//! ordinary text than the original (on SmolLM2 its cross-entropy on the
//! plant's own distillation text rose by 0.66%, and 2% less confidence took
//! it below the original's; docs/fingerprint.md, "Matching the original's
//! confidence"). [`match_confidence`] finds the scale `s` nearest 1 at which
//! the changed model's mean cross-entropy on the given windows is no more
//! than the original's: the changed model then predicts that text as well as
//! the original did, with the same greedy answers (up to the rounding of
//! the scaled weight to the model's dtype, which moves each value by at
//! most half a unit in its last place).
//!
//! The cross-entropy at scale `s`, `H(s) = mean over positions of
//! (logsumexp(s * l) - s * l_target)` for the unscaled logits `l`, is convex
//! in `s` (a log-sum-exp of linear functions, minus a linear one), with slope
//! `H'(s) = mean(E_softmax(s l)[l] - l_target)`. So from `s = 1` in the
//! direction that lowers it, `H` falls to its minimum and rises after it:
//! halving an interval on the sign of the slope finds the minimum, and
//! halving the interval before it on `H` against the original's value finds
//! the first scale that reaches it. Both are a fixed number of halvings of
//! fixed intervals: the scale is a fixed function of the two models and the
//! windows.

use candle_core::{Tensor, D};

use crate::error::{EvalError, Result};
use crate::llama::Llama;
use crate::metrics::{batch_tensors, log_probs, token_nll, EVAL_BATCH};

/// Windows of ordinary text [`match_confidence`] measures on at most (evenly
/// spaced over those it is given): with `fingerprint plant`'s 128-token
/// windows, 4,096 predicted positions.
pub const CONFIDENCE_WINDOWS: usize = 32;

/// How far from 1 the scale may go, either way.
pub const MAX_SCALE_CHANGE: f64 = 0.5;

/// Halvings of each search interval: the scale is found to within
/// `MAX_SCALE_CHANGE / 2^16`, about 8e-6, finer than an f16 or bf16 norm
/// weight can hold it.
const HALVINGS: usize = 16;

/// What [`match_confidence`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct Confidence {
    /// The scale for the final norm's weight (1: left as it is).
    pub scale: f64,
    /// The original's mean cross-entropy on the windows (nats).
    pub original: f64,
    /// The changed model's, before the scale.
    pub before: f64,
    /// The changed model's at the scale.
    pub after: f64,
    /// Predicted positions measured.
    pub positions: usize,
}

/// The unscaled final hidden states and targets of the changed model, a
/// batch of windows at a time.
struct Measured<'a> {
    model: &'a Llama,
    parts: Vec<(Tensor, Tensor)>,
    positions: usize,
}

impl Measured<'_> {
    /// The mean cross-entropy at `scale`, and its slope in `scale`.
    fn at(&self, scale: f64) -> Result<(f64, f64)> {
        let head = self.model.head().detach().t()?;
        let (mut ce, mut slope) = (0.0f64, 0.0f64);
        for (hidden, targets) in &self.parts {
            let logits = hidden.broadcast_matmul(&head)?;
            let vocab = logits.dim(D::Minus1)?;
            let logits = logits.reshape(((), vocab))?;
            let log_p = candle_nn::ops::log_softmax(&(&logits * scale)?, D::Minus1)?;
            let target_log_p = log_p.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
            let target_logit = logits.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
            let expected = (log_p.exp()? * &logits)?.sum(D::Minus1)?;
            let sum = |t: &Tensor| -> Result<f64> {
                Ok(t.to_vec1::<f32>()?.iter().map(|&v| f64::from(v)).sum::<f64>())
            };
            ce -= sum(&target_log_p)?;
            slope += sum(&(expected - target_logit)?)?;
        }
        let n = self.positions as f64;
        let (ce, slope) = (ce / n, slope / n);
        if !(ce.is_finite() && slope.is_finite()) {
            return Err(EvalError::invalid(format!(
                "the changed model's cross-entropy at scale {scale} is not finite"
            )));
        }
        Ok((ce, slope))
    }
}

/// The scale of `changed`'s final norm weight that brings its mean
/// cross-entropy on `windows` (up to [`CONFIDENCE_WINDOWS`] of them, evenly
/// spaced; every window the same length) down to `original`'s, nearest 1;
/// where no scale within [`MAX_SCALE_CHANGE`] of 1 reaches it, the one that
/// comes closest. A changed model that already predicts the text at least as
/// well as the original keeps scale 1: the step only ever lowers the
/// cross-entropy. The two models must share a vocabulary.
pub fn match_confidence(
    original: &Llama,
    changed: &Llama,
    windows: &[Vec<u32>],
) -> Result<Confidence> {
    if windows.is_empty() {
        return Err(EvalError::invalid("no ordinary-text windows to match the confidence on"));
    }
    if original.config.vocab_size != changed.config.vocab_size {
        return Err(EvalError::invalid(format!(
            "the models have different vocabularies ({} and {} tokens)",
            original.config.vocab_size, changed.config.vocab_size
        )));
    }
    let count = windows.len().min(CONFIDENCE_WINDOWS);
    let chosen: Vec<&Vec<u32>> = (0..count).map(|i| &windows[i * windows.len() / count]).collect();
    let (mut original_nll, mut positions) = (0.0f64, 0usize);
    let mut parts = Vec::new();
    for chunk in chosen.chunks(EVAL_BATCH) {
        let (inputs, targets) = batch_tensors(chunk)?;
        let nll = token_nll(&log_probs(original, &inputs)?.detach(), &targets)?;
        original_nll += nll.iter().map(|&v| f64::from(v)).sum::<f64>();
        positions += targets.elem_count();
        let hidden = changed.final_hidden(&inputs)?.detach();
        let width = hidden.dim(D::Minus1)?;
        parts.push((hidden.reshape(((), width))?, targets));
    }
    let original_ce = original_nll / positions as f64;
    if !original_ce.is_finite() {
        return Err(EvalError::invalid("the original model's cross-entropy is not finite"));
    }
    let measured = Measured { model: changed, parts, positions };
    let (before, slope) = measured.at(1.0)?;
    let unchanged =
        Confidence { scale: 1.0, original: original_ce, before, after: before, positions };
    if before <= original_ce || slope == 0.0 {
        return Ok(unchanged);
    }
    // Along `1 + direction * t`, t in [0, MAX_SCALE_CHANGE], the
    // cross-entropy falls at t = 0.
    let direction = -slope.signum();
    let scale_at = |t: f64| 1.0 + direction * t;
    // The minimum: the first t where the slope along the direction stops
    // being negative, or the end of the interval.
    let mut bottom = MAX_SCALE_CHANGE;
    let (end, end_slope) = measured.at(scale_at(bottom))?;
    let mut lowest = end;
    if direction * end_slope > 0.0 {
        let (mut low, mut high) = (0.0, MAX_SCALE_CHANGE);
        for _ in 0..HALVINGS {
            let mid = (low + high) / 2.0;
            let (_, s) = measured.at(scale_at(mid))?;
            if direction * s < 0.0 {
                low = mid;
            } else {
                high = mid;
            }
        }
        bottom = high;
        lowest = measured.at(scale_at(bottom))?.0;
    }
    if lowest > original_ce {
        return Ok(Confidence { scale: scale_at(bottom), after: lowest, ..unchanged });
    }
    // Between 0 and the minimum the cross-entropy falls: the first t that
    // reaches the original's.
    let (mut low, mut high, mut after) = (0.0, bottom, lowest);
    for _ in 0..HALVINGS {
        let mid = (low + high) / 2.0;
        let (ce, _) = measured.at(scale_at(mid))?;
        if ce <= original_ce {
            high = mid;
            after = ce;
        } else {
            low = mid;
        }
    }
    Ok(Confidence { scale: scale_at(high), after, ..unchanged })
}

/// `tensors` (a model's named f32 values, as planting writes them) with the
/// final norm's weight (`model.norm.weight`) multiplied by `scale`. An error
/// if there is no such tensor.
pub fn scale_final_norm(
    tensors: &mut std::collections::HashMap<String, Vec<f32>>,
    scale: f64,
) -> Result<()> {
    let norm = tensors
        .get_mut("model.norm.weight")
        .ok_or_else(|| EvalError::invalid("no final norm weight (model.norm.weight) to scale"))?;
    for w in norm.iter_mut() {
        *w = (f64::from(*w) * scale) as f32;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::Device;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    use super::*;
    use crate::llama::LlamaConfig;

    /// A tiny Llama with seeded random weights (tied head).
    fn values(seed: u64) -> Result<(LlamaConfig, HashMap<String, Vec<f32>>)> {
        let config: LlamaConfig = serde_json::from_str(
            r#"{"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 40,
                "tie_word_embeddings": true}"#,
        )
        .map_err(|e| EvalError::invalid(e.to_string()))?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for (name, shape) in config.expected_tensors() {
            let n: usize = shape.iter().product();
            let norm = name.ends_with("norm.weight");
            let v = (0..n)
                .map(|_| {
                    let u = (rng.next_u32() as f32 / u32::MAX as f32) - 0.5;
                    if norm {
                        1.0 + 0.2 * u
                    } else {
                        0.6 * u
                    }
                })
                .collect();
            tensors.insert(name, v);
        }
        Ok((config, tensors))
    }

    fn model(config: &LlamaConfig, values: &HashMap<String, Vec<f32>>) -> Result<Llama> {
        let mut tensors = HashMap::new();
        for (name, shape) in config.expected_tensors() {
            let v = values[&name].clone();
            tensors.insert(name, Tensor::from_vec(v, shape, &Device::Cpu)?);
        }
        Llama::from_tensors(config.clone(), &tensors, std::path::Path::new("tiny"))
    }

    fn windows(seed: u64, count: usize) -> Vec<Vec<u32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..count).map(|_| (0..12).map(|_| rng.next_u32() % 40).collect()).collect()
    }

    #[test]
    fn a_scaled_final_norm_scales_every_logit() -> Result<()> {
        let (config, mut values) = values(7)?;
        let tokens = Tensor::new(&[[1u32, 5, 9, 2]], &Device::Cpu)?;
        let logits = model(&config, &values)?.forward(&tokens)?;
        scale_final_norm(&mut values, 0.75)?;
        let expected = (logits * 0.75)?.flatten_all()?.to_vec1::<f32>()?;
        let got = model(&config, &values)?.forward(&tokens)?.flatten_all()?.to_vec1::<f32>()?;
        for (a, b) in expected.iter().zip(&got) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} against {b}");
        }
        Ok(())
    }

    #[test]
    fn an_overconfident_copy_is_brought_back_to_the_originals_cross_entropy() -> Result<()> {
        let (config, original_values) = values(3)?;
        let original = model(&config, &original_values)?;
        let text = windows(11, 40);
        // The original made more confident: every logit times 1.3.
        let mut sharp_values = original_values.clone();
        scale_final_norm(&mut sharp_values, 1.3)?;
        let sharp = model(&config, &sharp_values)?;
        let c = match_confidence(&original, &sharp, &text)?;
        assert!(c.before > c.original, "{c:?}");
        // Random weights: the original is not at its own best temperature,
        // so the match is reached before 1 / 1.3, nearer 1.
        assert!(c.scale < 1.0 && c.scale >= 1.0 / 1.3 - 1e-4, "{c:?}");
        assert!(c.after <= c.original && c.original - c.after < 1e-3, "{c:?}");
        assert_eq!(c.positions, CONFIDENCE_WINDOWS * 11);
        // Applied, the scaled copy's cross-entropy is what was found, and
        // its most likely token at every position is the copy's.
        let mut fixed_values = sharp_values.clone();
        scale_final_norm(&mut fixed_values, c.scale)?;
        let fixed = model(&config, &fixed_values)?;
        let again = match_confidence(&original, &fixed, &text)?;
        assert!((again.before - c.after).abs() < 1e-4, "{again:?} against {c:?}");
        // Already matched (to the search's tolerance): left as it is, or
        // nearly.
        assert!((again.scale - 1.0).abs() < 1e-4, "{again:?}");
        let tokens = Tensor::new(text[0].as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let top = |m: &Llama| -> Result<Vec<u32>> {
            Ok(m.forward(&tokens)?.squeeze(0)?.argmax(D::Minus1)?.to_vec1::<u32>()?)
        };
        assert_eq!(top(&fixed)?, top(&sharp)?);
        // The same inputs give the same scale, to the bit.
        assert_eq!(match_confidence(&original, &sharp, &text)?, c);
        Ok(())
    }

    #[test]
    fn a_copy_no_worse_than_the_original_is_left_alone() -> Result<()> {
        let (config, values) = values(5)?;
        let original = model(&config, &values)?;
        let c = match_confidence(&original, &original, &windows(2, 8))?;
        assert_eq!(c.scale, 1.0);
        assert_eq!(c.before, c.after);
        assert!(match_confidence(&original, &original, &[]).is_err());
        Ok(())
    }
}
