//! Sentence embeddings from a BERT-layout encoder (MiniLM and the other
//! sentence-transformers models): `candle_transformers`' BERT, then the mean
//! of the token states under the attention mask, normalized to unit length,
//! as sentence-transformers' mean pooling does.
//!
//! Inference only: nothing here is trained, so the library's fused kernels
//! are fine.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::Tokenizer;

use crate::error::{EvalError, Result};

/// A BERT encoder with its tokenizer.
pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
}

impl SentenceEncoder {
    /// Builds the encoder from named f32 tensors.
    pub fn new(
        config: &Config,
        tensors: HashMap<String, Tensor>,
        tokenizer: Tokenizer,
    ) -> Result<Self> {
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let model = BertModel::load(vb, config)
            .map_err(|e| EvalError::invalid(format!("not a BERT-layout model: {e}")))?;
        Ok(SentenceEncoder { model, tokenizer })
    }

    /// Unit-length embeddings `(texts, hidden)` of `texts`.
    pub fn embed(&self, texts: &[String]) -> Result<Tensor> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EvalError::invalid(format!("tokenizer failed: {e}")))?;
        let len = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for e in &encodings {
            let pad = len - e.get_ids().len();
            ids.extend(e.get_ids().iter().copied().chain(std::iter::repeat_n(0, pad)));
            mask.extend(e.get_attention_mask().iter().copied().chain(std::iter::repeat_n(0, pad)));
        }
        let shape = (texts.len(), len);
        let ids = Tensor::from_vec(ids, shape, &Device::Cpu)?;
        let mask = Tensor::from_vec(mask, shape, &Device::Cpu)?;
        let types = ids.zeros_like()?;
        let states = self.model.forward(&ids, &types, Some(&mask))?;
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = states.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
        Ok(mean.broadcast_div(&norm)?)
    }
}
