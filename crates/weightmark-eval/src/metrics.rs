//! What a change costs a model: perplexity, the KL divergence between two
//! models' next-token distributions, how often their top choices agree, and,
//! for sentence-embedding models, the cosine between their embeddings.
//!
//! Perplexity is `exp` of the mean negative log-likelihood over every
//! predicted token of every window (the first token of a window is context
//! only). KL is `KL(P_a || P_b)` in nats, averaged over the same positions.

use candle_core::{DType, Device, Tensor, D};
use serde::Serialize;

use crate::bert::SentenceEncoder;
use crate::error::{EvalError, Result};
use crate::llama::Llama;

/// Windows evaluated per forward pass.
pub const EVAL_BATCH: usize = 4;

/// Inputs `(batch, len)` and targets `(batch * len)` for windows of `len + 1` tokens.
pub fn batch_tensors(windows: &[&Vec<u32>]) -> Result<(Tensor, Tensor)> {
    let len = windows.first().map_or(0, |w| w.len().saturating_sub(1));
    if len == 0 || windows.iter().any(|w| w.len() != len + 1) {
        return Err(EvalError::invalid(
            "windows must all hold the same number (at least 2) of tokens",
        ));
    }
    let inputs: Vec<u32> = windows.iter().flat_map(|w| w[..len].iter().copied()).collect();
    let targets: Vec<u32> = windows.iter().flat_map(|w| w[1..].iter().copied()).collect();
    Ok((
        Tensor::from_vec(inputs, (windows.len(), len), &Device::Cpu)?,
        Tensor::from_vec(targets, windows.len() * len, &Device::Cpu)?,
    ))
}

/// Log-probabilities `(positions, vocab)` of the model's next-token predictions.
pub(crate) fn log_probs(model: &Llama, inputs: &Tensor) -> Result<Tensor> {
    let logits = model.forward(inputs)?;
    let vocab = logits.dim(D::Minus1)?;
    Ok(candle_nn::ops::log_softmax(&logits.reshape(((), vocab))?, D::Minus1)?)
}

/// Negative log-likelihood of each target under `log_probs`.
pub(crate) fn token_nll(log_probs: &Tensor, targets: &Tensor) -> Result<Vec<f32>> {
    Ok(log_probs.gather(&targets.unsqueeze(1)?, 1)?.neg()?.flatten_all()?.to_vec1::<f32>()?)
}

/// Perplexity of `model` on `windows`.
pub fn perplexity(model: &Llama, windows: &[Vec<u32>]) -> Result<f64> {
    if windows.is_empty() {
        return Err(EvalError::invalid(
            "no text windows to evaluate; the text is shorter than one window",
        ));
    }
    let (mut sum, mut count) = (0.0f64, 0usize);
    let refs: Vec<&Vec<u32>> = windows.iter().collect();
    for chunk in refs.chunks(EVAL_BATCH) {
        let (inputs, targets) = batch_tensors(chunk)?;
        let nll = token_nll(&log_probs(model, &inputs)?, &targets)?;
        sum += nll.iter().map(|&v| f64::from(v)).sum::<f64>();
        count += nll.len();
    }
    Ok((sum / count as f64).exp())
}

/// Two decoders compared on the same windows.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// Perplexity of the first model.
    pub perplexity_a: f64,
    /// Perplexity of the second model.
    pub perplexity_b: f64,
    /// `perplexity_b / perplexity_a - 1`.
    pub perplexity_change: f64,
    /// Mean `KL(P_a || P_b)` over positions, in nats.
    pub mean_kl: f64,
    /// Fraction of positions where both models' most likely token is the same.
    pub top1_agreement: f64,
    /// Positions compared.
    pub positions: usize,
}

/// Compares two decoders of the same vocabulary on `windows`.
pub fn compare(a: &Llama, b: &Llama, windows: &[Vec<u32>]) -> Result<Comparison> {
    if windows.is_empty() {
        return Err(EvalError::invalid(
            "no text windows to evaluate; the text is shorter than one window",
        ));
    }
    if a.config.vocab_size != b.config.vocab_size {
        return Err(EvalError::invalid(format!(
            "the models have different vocabularies ({} and {} tokens)",
            a.config.vocab_size, b.config.vocab_size
        )));
    }
    let (mut nll_a, mut nll_b, mut kl, mut agree, mut count) =
        (0.0f64, 0.0f64, 0.0f64, 0usize, 0usize);
    let refs: Vec<&Vec<u32>> = windows.iter().collect();
    for chunk in refs.chunks(EVAL_BATCH) {
        let (inputs, targets) = batch_tensors(chunk)?;
        let la = log_probs(a, &inputs)?;
        let lb = log_probs(b, &inputs)?;
        nll_a += token_nll(&la, &targets)?.iter().map(|&v| f64::from(v)).sum::<f64>();
        nll_b += token_nll(&lb, &targets)?.iter().map(|&v| f64::from(v)).sum::<f64>();
        let kl_rows = (la.exp()? * (&la - &lb)?)?.sum(D::Minus1)?.to_vec1::<f32>()?;
        kl += kl_rows.iter().map(|&v| f64::from(v)).sum::<f64>();
        let top_a = la.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let top_b = lb.argmax(D::Minus1)?.to_vec1::<u32>()?;
        agree += top_a.iter().zip(&top_b).filter(|(x, y)| x == y).count();
        count += top_a.len();
    }
    let n = count as f64;
    let (pa, pb) = ((nll_a / n).exp(), (nll_b / n).exp());
    Ok(Comparison {
        perplexity_a: pa,
        perplexity_b: pb,
        perplexity_change: pb / pa - 1.0,
        mean_kl: kl / n,
        top1_agreement: agree as f64 / n,
        positions: count,
    })
}

/// Two sentence encoders compared on the same texts.
#[derive(Clone, Debug, Serialize)]
pub struct EmbeddingComparison {
    /// Mean cosine similarity between the two models' embeddings of each text.
    pub mean_cosine: f64,
    /// The smallest of those cosines.
    pub min_cosine: f64,
    /// Texts compared.
    pub texts: usize,
}

/// Compares two sentence encoders on `texts`.
pub fn compare_embeddings(
    a: &SentenceEncoder,
    b: &SentenceEncoder,
    texts: &[String],
) -> Result<EmbeddingComparison> {
    if texts.is_empty() {
        return Err(EvalError::invalid("no paragraphs of text to embed"));
    }
    let (mut sum, mut min) = (0.0f64, f64::INFINITY);
    for chunk in texts.chunks(16) {
        let ea = a.embed(chunk)?;
        let eb = b.embed(chunk)?;
        // Embeddings are unit vectors, so the dot product is the cosine.
        let cos = (ea * eb)?.sum(D::Minus1)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        for c in cos {
            sum += c;
            min = min.min(c);
        }
    }
    Ok(EmbeddingComparison {
        mean_cosine: sum / texts.len() as f64,
        min_cosine: min,
        texts: texts.len(),
    })
}
