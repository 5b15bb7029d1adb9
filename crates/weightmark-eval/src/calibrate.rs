//! Activation statistics for AWQ/SmoothQuant-style smoothing: the mean `|x|`
//! of each input channel of every block matrix, over a calibration text run
//! through the decoder ([`Llama::forward_observed`]).
//!
//! The text is cut into windows of `seq` tokens that do not cross documents,
//! taken from the documents in turn until they cover `tokens` tokens, so the
//! statistics are a deterministic function of the model, the text and the
//! two numbers.

use tokenizers::Tokenizer;
use weightmark::attack::{ActivationStats, LayerActivations};

use crate::error::{EvalError, Result};
use crate::llama::{Llama, Site};
use crate::load::encode;
use crate::metrics::EVAL_BATCH;
use crate::text::Corpus;

/// Default number of calibration tokens.
pub const DEFAULT_TOKENS: usize = 2048;

/// Default tokens per calibration window.
pub const DEFAULT_SEQ: usize = 128;

/// Windows of `seq` tokens of `corpus` covering `tokens` tokens, taken in
/// turn from each document (its first window, then each document's second,
/// ...), so that every file is sampled; fewer when the text is shorter, an
/// error when it holds no window.
pub fn calibration_windows(
    corpus: &Corpus,
    tokenizer: &Tokenizer,
    tokens: usize,
    seq: usize,
) -> Result<Vec<Vec<u32>>> {
    if seq < 2 || tokens == 0 {
        return Err(EvalError::invalid(format!(
            "calibration needs windows of at least 2 tokens and at least 1 token (got {seq} and \
             {tokens})"
        )));
    }
    let mut per_document = Vec::with_capacity(corpus.documents.len());
    for (_, text) in &corpus.documents {
        let ids = encode(tokenizer, text)?;
        per_document.push(ids.chunks_exact(seq).map(<[u32]>::to_vec).collect::<Vec<_>>());
    }
    let wanted = tokens.div_ceil(seq);
    let most = per_document.iter().map(Vec::len).max().unwrap_or(0);
    let mut windows = Vec::with_capacity(wanted);
    'fill: for i in 0..most {
        for doc in &per_document {
            if windows.len() == wanted {
                break 'fill;
            }
            if let Some(w) = doc.get(i) {
                windows.push(w.clone());
            }
        }
    }
    if windows.is_empty() {
        return Err(EvalError::invalid(format!(
            "the calibration text is shorter than one window of {seq} tokens"
        )));
    }
    Ok(windows)
}

/// Running sums of `|x|` per channel of one layer.
#[derive(Default)]
struct Sums {
    attention: Vec<f64>,
    o: Vec<f64>,
    mlp: Vec<f64>,
    down: Vec<f64>,
}

/// Adds the per-channel sum of `|x|` over batch and time to `sum`.
fn accumulate(sum: &mut Vec<f64>, x: &candle_core::Tensor) -> Result<()> {
    let channels = x.abs()?.sum((0, 1))?.to_vec1::<f32>()?;
    if sum.is_empty() {
        sum.resize(channels.len(), 0.0);
    }
    sum.iter_mut().zip(channels).for_each(|(s, c)| *s += f64::from(c));
    Ok(())
}

/// Mean `|x|` per input channel of each block matrix of `model` over
/// `windows` (all of one length).
pub fn activation_stats(model: &Llama, windows: &[Vec<u32>]) -> Result<ActivationStats> {
    if windows.is_empty() {
        return Err(EvalError::invalid("no calibration windows"));
    }
    let layers = model.config.num_hidden_layers;
    let mut sums: Vec<Sums> = (0..layers).map(|_| Sums::default()).collect();
    let mut tokens = 0usize;
    let refs: Vec<&Vec<u32>> = windows.iter().collect();
    for chunk in refs.chunks(EVAL_BATCH) {
        let len = chunk[0].len();
        if chunk.iter().any(|w| w.len() != len) || len == 0 {
            return Err(EvalError::invalid("calibration windows must all hold the same tokens"));
        }
        let ids: Vec<u32> = chunk.iter().flat_map(|w| w.iter().copied()).collect();
        let input =
            candle_core::Tensor::from_vec(ids, (chunk.len(), len), &candle_core::Device::Cpu)?;
        let mut observe = |l: usize, site: Site, x: &candle_core::Tensor| -> Result<()> {
            let Some(s) = sums.get_mut(l) else { return Ok(()) };
            let sum = match site {
                Site::AttentionInput => &mut s.attention,
                Site::OInput => &mut s.o,
                Site::MlpInput => &mut s.mlp,
                Site::DownInput => &mut s.down,
            };
            accumulate(sum, x)
        };
        model.forward_observed(&input, &mut observe)?;
        tokens += chunk.len() * len;
    }
    let mean = |v: Vec<f64>| -> Vec<f64> { v.into_iter().map(|s| s / tokens as f64).collect() };
    let layers = sums
        .into_iter()
        .map(|s| LayerActivations {
            attention_input: mean(s.attention),
            mlp_input: mean(s.mlp),
            o_input: mean(s.o),
            down_input: mean(s.down),
        })
        .collect();
    Ok(ActivationStats { tokens, layers })
}
