//! A Llama-family decoder (Llama 2/3, SmolLM2, Mistral without sliding
//! windows) written with candle's differentiable primitives.
//!
//! The forward pass is our own rather than `candle_transformers`' because
//! fine-tuning needs two things that one does not offer: gradients through
//! every operation (its fused RoPE, softmax and RMSNorm kernels have no
//! backward pass on the CPU) and LoRA adapters beside the frozen matrices. It
//! follows Hugging Face's `LlamaForCausalLM`: pre-norm blocks, rotary position
//! embeddings in the "rotate half" layout, grouped-query attention and a SwiGLU
//! MLP. `tests/eval.rs` checks its logits against `candle_transformers`' Llama
//! on a random model, and that SmolLM2 completes "The capital of France is"
//! with " Paris".

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var, D};
use serde::Deserialize;

use crate::error::{EvalError, Result};

/// The fields of a Hugging Face `config.json` that the forward pass needs.
#[derive(Clone, Debug, Deserialize)]
pub struct LlamaConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Whether the output head is the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_theta() -> f64 {
    10_000.0
}

impl LlamaConfig {
    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one head.
    pub fn head_width(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The name and shape of every tensor the model reads.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (q, kv) =
            (self.num_attention_heads * self.head_width(), self.kv_heads() * self.head_width());
        let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), vec![h]));
            out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
            out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
            out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        }
        out.push(("model.norm.weight".to_string(), vec![h]));
        if !self.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), vec![v, h]));
        }
        out
    }
}

/// A low-rank adapter `scale * B A` beside a frozen matrix.
#[derive(Clone, Debug)]
pub struct Lora {
    /// `A`, rank x in.
    pub a: Var,
    /// `B`, out x rank, zero at the start.
    pub b: Var,
    /// `alpha / rank`.
    pub scale: f64,
}

/// A bias-free linear layer, optionally with a LoRA adapter.
#[derive(Clone, Debug)]
pub struct Linear {
    /// The weight, out x in.
    pub weight: Tensor,
    /// The adapter, while LoRA training.
    pub lora: Option<Lora>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.broadcast_matmul(&self.weight.t()?)?;
        match &self.lora {
            None => Ok(y),
            Some(l) => {
                let low = x.broadcast_matmul(&l.a.as_tensor().t()?)?;
                let up = low.broadcast_matmul(&l.b.as_tensor().t()?)?;
                Ok((y + (up * l.scale)?)?)
            }
        }
    }

    /// The weight with the adapter merged in: `W + scale * B A`.
    pub fn merged(&self) -> Result<Tensor> {
        match &self.lora {
            None => Ok(self.weight.clone()),
            Some(l) => {
                let delta = l.b.as_tensor().matmul(l.a.as_tensor())?;
                Ok((&self.weight + (delta * l.scale)?)?)
            }
        }
    }
}

/// One pre-norm transformer block.
#[derive(Clone, Debug)]
struct Block {
    input_norm: Tensor,
    post_norm: Tensor,
    linears: [Linear; 7],
}

/// Replaces `t` by a trainable variable holding the same values, kept in `vars`.
fn trainable(t: &mut Tensor, vars: &mut Vec<Var>) -> Result<()> {
    let v = Var::from_tensor(t)?;
    *t = v.as_tensor().clone();
    vars.push(v);
    Ok(())
}

impl Block {
    /// [`trainable`] for the block's norms and matrices, in that order.
    fn make_trainable(&mut self, vars: &mut Vec<Var>) -> Result<()> {
        trainable(&mut self.input_norm, vars)?;
        trainable(&mut self.post_norm, vars)?;
        for lin in &mut self.linears {
            trainable(&mut lin.weight, vars)?;
        }
        Ok(())
    }
}

/// The seven matrices of a block, in the order of [`Block::linears`].
pub const BLOCK_MATRICES: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// Where [`Llama::forward_observed`] shows a block's activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// The `input_layernorm` output, read by q/k/v.
    AttentionInput,
    /// The attention heads' outputs, read by `o_proj`.
    OInput,
    /// The `post_attention_layernorm` output, read by gate/up.
    MlpInput,
    /// `silu(gate x) * up x`, read by `down_proj`.
    DownInput,
}

/// A Llama model held as f32 tensors on the CPU.
#[derive(Clone, Debug)]
pub struct Llama {
    /// Its configuration.
    pub config: LlamaConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Option<Tensor>,
}

impl Llama {
    /// Builds the model from named f32 tensors, checking every name and shape
    /// (errors name `path` and the tensor).
    pub fn from_tensors(
        config: LlamaConfig,
        tensors: &HashMap<String, Tensor>,
        path: &Path,
    ) -> Result<Llama> {
        for (name, shape) in config.expected_tensors() {
            let t = tensors.get(&name).ok_or_else(|| EvalError::Tensor {
                path: path.to_path_buf(),
                name: name.clone(),
                reason: "missing; is this a Llama-layout model?".into(),
            })?;
            if t.dims() != shape.as_slice() {
                return Err(EvalError::Tensor {
                    path: path.to_path_buf(),
                    name,
                    reason: format!("shape {:?} where config.json implies {shape:?}", t.dims()),
                });
            }
        }
        let get = |name: &str| -> Result<Tensor> {
            tensors
                .get(name)
                .cloned()
                .ok_or_else(|| EvalError::invalid(format!("no tensor {name}")))
        };
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let lin = |m: &str| -> Result<Linear> {
                Ok(Linear { weight: get(&format!("{p}.{m}.weight"))?, lora: None })
            };
            blocks.push(Block {
                input_norm: get(&format!("{p}.input_layernorm.weight"))?,
                post_norm: get(&format!("{p}.post_attention_layernorm.weight"))?,
                linears: [
                    lin(BLOCK_MATRICES[0])?,
                    lin(BLOCK_MATRICES[1])?,
                    lin(BLOCK_MATRICES[2])?,
                    lin(BLOCK_MATRICES[3])?,
                    lin(BLOCK_MATRICES[4])?,
                    lin(BLOCK_MATRICES[5])?,
                    lin(BLOCK_MATRICES[6])?,
                ],
            });
        }
        let lm_head = if config.tie_word_embeddings { None } else { Some(get("lm_head.weight")?) };
        Ok(Llama {
            embed: get("model.embed_tokens.weight")?,
            norm: get("model.norm.weight")?,
            blocks,
            lm_head,
            config,
        })
    }

    /// Every tensor of the model under its Hugging Face name, with adapters
    /// merged into their matrices.
    pub fn merged_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        for (l, b) in self.blocks.iter().enumerate() {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), b.input_norm.clone()));
            out.push((format!("{p}.post_attention_layernorm.weight"), b.post_norm.clone()));
            for (m, lin) in BLOCK_MATRICES.iter().zip(&b.linears) {
                out.push((format!("{p}.{m}.weight"), lin.merged()?));
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.clone()));
        }
        Ok(out)
    }

    /// Mutable access to every linear layer of every block (to attach adapters).
    pub fn linears_mut(&mut self) -> impl Iterator<Item = (usize, &'static str, &mut Linear)> {
        self.blocks.iter_mut().enumerate().flat_map(|(l, b)| {
            BLOCK_MATRICES
                .iter()
                .copied()
                .zip(b.linears.iter_mut())
                .map(move |(m, lin)| (l, m, lin))
        })
    }

    /// Replaces every tensor by a trainable variable holding it; returns the
    /// variables (for full fine-tuning).
    pub fn make_trainable(&mut self) -> Result<Vec<Var>> {
        let mut vars = Vec::new();
        trainable(&mut self.embed, &mut vars)?;
        trainable(&mut self.norm, &mut vars)?;
        if let Some(h) = &mut self.lm_head {
            trainable(h, &mut vars)?;
        }
        for b in &mut self.blocks {
            b.make_trainable(&mut vars)?;
        }
        Ok(vars)
    }

    /// [`Llama::make_trainable`] for the blocks whose bit is set in `mask`
    /// (bit `i`: block `i`) only: their norms and matrices. A bit past the
    /// last block is an error.
    pub fn make_blocks_trainable(&mut self, mask: u128) -> Result<Vec<Var>> {
        let blocks = self.blocks.len();
        if blocks < 128 && mask >> blocks != 0 {
            return Err(EvalError::invalid(format!(
                "a block to train is past the model's {blocks} blocks"
            )));
        }
        let mut vars = Vec::new();
        let chosen = self.blocks.iter_mut().enumerate().filter(|(i, _)| mask >> i & 1 == 1);
        for (_, b) in chosen {
            b.make_trainable(&mut vars)?;
        }
        Ok(vars)
    }

    /// How much each block differs from the same block of `other` (same
    /// configuration): `||W - W'|| / ||W'||` over its seven matrices
    /// together (Frobenius norms), block by block.
    pub fn block_changes(&self, other: &Llama) -> Result<Vec<f64>> {
        if self.blocks.len() != other.blocks.len() {
            return Err(EvalError::invalid(format!(
                "{} blocks against {}: not the same model",
                self.blocks.len(),
                other.blocks.len()
            )));
        }
        self.blocks
            .iter()
            .zip(&other.blocks)
            .map(|(a, b)| {
                let (mut change, mut norm) = (0f64, 0f64);
                for (x, y) in a.linears.iter().zip(&b.linears) {
                    let d = (&x.weight - &y.weight)?;
                    change += f64::from(d.sqr()?.sum_all()?.to_scalar::<f32>()?);
                    norm += f64::from(y.weight.sqr()?.sum_all()?.to_scalar::<f32>()?);
                }
                Ok((change / norm.max(f64::MIN_POSITIVE)).sqrt())
            })
            .collect()
    }

    /// The model with `fraction` of each matrix's elements zeroed, the
    /// smallest magnitudes first: what `weightmark attack prune` does to the
    /// tensors it selects by default (the embedding, the untied head and the
    /// seven matrices of every block, each of at least
    /// [`weightmark::MIN_DEFAULT_ELEMENTS`] elements; the norms are
    /// kept). Elements tied with the largest magnitude zeroed are zeroed
    /// too. Each matrix is `W * mask`, the mask
    /// a constant: when `W` is trainable, gradients through the pruned
    /// model reach the elements that survive the pruning.
    pub fn magnitude_pruned(&self, fraction: f64) -> Result<Llama> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(EvalError::invalid(format!(
                "pruning fraction {fraction} must be at least 0 and below 1"
            )));
        }
        let prune = |t: &Tensor| -> Result<Tensor> {
            let count = (t.elem_count() as f64 * fraction).round() as usize;
            if count == 0 || t.elem_count() < weightmark::MIN_DEFAULT_ELEMENTS {
                return Ok(t.clone());
            }
            let magnitudes = t.abs()?.detach();
            let mut values = magnitudes.flatten_all()?.to_vec1::<f32>()?;
            let (_, threshold, _) = values.select_nth_unstable_by(count - 1, f32::total_cmp);
            let mask = magnitudes.gt(f64::from(*threshold))?.to_dtype(t.dtype())?;
            Ok(t.mul(&mask)?)
        };
        let mut pruned = self.clone();
        pruned.embed = prune(&self.embed)?;
        if let Some(h) = &self.lm_head {
            pruned.lm_head = Some(prune(h)?);
        }
        for b in &mut pruned.blocks {
            for lin in &mut b.linears {
                lin.weight = prune(&lin.weight)?;
            }
        }
        Ok(pruned)
    }

    /// Next-token logits for a batch of token ids `(batch, time)`:
    /// `(batch, time, vocab)`, f32.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        self.forward_observed(tokens, &mut |_, _, _| Ok(()))
    }

    /// [`Llama::forward`], showing `observe` the input of each block's
    /// matrices as it goes: `(layer, site, activations (batch, time, width))`.
    pub fn forward_observed(
        &self,
        tokens: &Tensor,
        observe: &mut dyn FnMut(usize, Site, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let x = self.hidden_observed(tokens, observe)?;
        Ok(x.broadcast_matmul(&self.head().t()?)?)
    }

    /// The output matrix `(vocab, hidden)`: the untied head, or the
    /// embedding when the model ties them. Logits are the final norm's
    /// output times its transpose.
    pub fn head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// The final norm's output `(batch, time, hidden)` for `tokens` `(batch,
    /// time)`: [`Llama::forward`] is this times [`Llama::head`]'s transpose.
    /// Scaling the final norm's weight by `s` scales it, and so every
    /// logit, by `s` (a temperature of `1 / s`).
    pub fn final_hidden(&self, tokens: &Tensor) -> Result<Tensor> {
        self.hidden_observed(tokens, &mut |_, _, _| Ok(()))
    }

    /// [`Llama::final_hidden`], showing `observe` what
    /// [`Llama::forward_observed`] shows it.
    fn hidden_observed(
        &self,
        tokens: &Tensor,
        observe: &mut dyn FnMut(usize, Site, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let (batch, time) = tokens.dims2()?;
        let c = &self.config;
        let device = tokens.device();
        let mut x = self.embed.index_select(&tokens.flatten_all()?, 0)?.reshape((
            batch,
            time,
            c.hidden_size,
        ))?;
        let (cos, sin) = rope_tables(c, 0, time, device)?;
        let mask = causal_mask(time, 0, device)?;
        for (l, b) in self.blocks.iter().enumerate() {
            let [.., o, gate, up, down] = &b.linears;
            let h = rms_norm(&x, &b.input_norm, c.rms_norm_eps)?;
            observe(l, Site::AttentionInput, &h)?;
            let heads = self.attention(b, &h, &cos, &sin, Some(&mask), None)?;
            observe(l, Site::OInput, &heads)?;
            x = (x + o.forward(&heads)?)?;
            let h = rms_norm(&x, &b.post_norm, c.rms_norm_eps)?;
            observe(l, Site::MlpInput, &h)?;
            let act = (gate.forward(&h)?.silu()? * up.forward(&h)?)?;
            observe(l, Site::DownInput, &act)?;
            x = (x + down.forward(&act)?)?;
        }
        rms_norm(&x, &self.norm, c.rms_norm_eps)
    }

    /// Logits of the last position of each row, `(batch, vocab)`, for
    /// `tokens` `(batch, time)` that continue the rows `cache` holds (all
    /// rows of one length, no padding); their keys and values are appended
    /// to `cache`. Feeding a prompt and then one token at a time gives, up
    /// to floating-point rounding, the logits [`Llama::forward`] gives for
    /// the whole sequence, at a cost linear rather than quadratic in the
    /// answer's length. Inference only (no adapters are trained through it).
    pub fn forward_cached(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (batch, time) = tokens.dims2()?;
        if time == 0 {
            return Err(EvalError::invalid("no tokens to decode"));
        }
        if cache.layers.len() != self.blocks.len() {
            return Err(EvalError::invalid(format!(
                "the cache holds {} blocks, the model {}",
                cache.layers.len(),
                self.blocks.len()
            )));
        }
        let c = &self.config;
        let device = tokens.device();
        let past = cache.positions;
        let mut x = self.embed.index_select(&tokens.flatten_all()?, 0)?.reshape((
            batch,
            time,
            c.hidden_size,
        ))?;
        let (cos, sin) = rope_tables(c, past, time, device)?;
        // One new position sees every cached one: no mask to add.
        let mask = if time > 1 { Some(causal_mask(time, past, device)?) } else { None };
        for (b, slot) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let [.., o, gate, up, down] = &b.linears;
            let h = rms_norm(&x, &b.input_norm, c.rms_norm_eps)?;
            let heads = self.attention(b, &h, &cos, &sin, mask.as_ref(), Some(slot))?;
            x = (x + o.forward(&heads)?)?;
            let h = rms_norm(&x, &b.post_norm, c.rms_norm_eps)?;
            let act = (gate.forward(&h)?.silu()? * up.forward(&h)?)?;
            x = (x + down.forward(&act)?)?;
        }
        cache.positions += time;
        let last = rms_norm(&x.narrow(1, time - 1, 1)?, &self.norm, c.rms_norm_eps)?;
        let head = self.head();
        Ok(last.broadcast_matmul(&head.t()?)?.squeeze(1)?)
    }

    /// The attention heads' outputs `(batch, time, heads * width)`, the
    /// input of `o_proj`. With a cache slot, the keys and values of earlier
    /// positions come from it and this call's are appended to it.
    fn attention(
        &self,
        b: &Block,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (batch, time, _) = h.dims3()?;
        let (heads, kv_heads, width) = (c.num_attention_heads, c.kv_heads(), c.head_width());
        let [q, k, v, ..] = &b.linears;
        let split = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((batch, time, n, width))?.transpose(1, 2)?.contiguous()?)
        };
        let q = rope(&split(q.forward(h)?, heads)?, cos, sin)?;
        let mut k = rope(&split(k.forward(h)?, kv_heads)?, cos, sin)?;
        let mut v = split(v.forward(h)?, kv_heads)?;
        if let Some(slot) = cache {
            if let Some((past_k, past_v)) = slot.as_ref() {
                k = Tensor::cat(&[past_k, &k], 2)?;
                v = Tensor::cat(&[past_v, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let k = repeat_kv(k, heads / kv_heads)?;
        let v = repeat_kv(v, heads / kv_heads)?;
        let mut scores = (q.matmul(&k.t()?)? / (width as f64).sqrt())?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        Ok(weights.matmul(&v)?.transpose(1, 2)?.reshape((batch, time, heads * width))?)
    }
}

/// What greedy decoding does with the token it just chose for a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextToken {
    /// Append it to the answer and go on.
    Append,
    /// Append it and end the answer.
    AppendAndEnd,
    /// End the answer without it (an end-of-turn token).
    End,
}

/// Tokens one batch of [`Llama::greedy`] holds at most (prompt length x
/// rows), which bounds its memory.
pub const GREEDY_BATCH_TOKENS: usize = 8192;

impl Llama {
    /// The greedy continuation of every prompt, at most `max_new` tokens
    /// each; `judge(answer so far, next token)` says what happens to each
    /// chosen token. Prompts of equal length are decoded side by side with a
    /// [`KvCache`] (no padding: each row computes what it would alone), so
    /// the answers are the ones [`Llama::greedy_uncached`] gives one prompt
    /// at a time (a test checks it, token for token). The answers come back
    /// in the order of `prompts`.
    pub fn greedy(
        &self,
        prompts: &[Vec<u32>],
        max_new: usize,
        judge: &mut dyn FnMut(&[u32], u32) -> Result<NextToken>,
    ) -> Result<Vec<Vec<u32>>> {
        let mut answers = vec![Vec::new(); prompts.len()];
        let mut by_length: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, p) in prompts.iter().enumerate() {
            if p.is_empty() {
                return Err(EvalError::invalid("an empty prompt has nothing to continue"));
            }
            by_length.entry(p.len()).or_default().push(i);
        }
        for (length, rows) in by_length {
            for chunk in rows.chunks((GREEDY_BATCH_TOKENS / length).max(1)) {
                self.greedy_batch(prompts, chunk, max_new, judge, &mut answers)?;
            }
        }
        Ok(answers)
    }

    /// [`Llama::greedy`] for the rows `rows` of `prompts`, all of one length.
    fn greedy_batch(
        &self,
        prompts: &[Vec<u32>],
        rows: &[usize],
        max_new: usize,
        judge: &mut dyn FnMut(&[u32], u32) -> Result<NextToken>,
        answers: &mut [Vec<u32>],
    ) -> Result<()> {
        let device = self.embed.device();
        let length = rows.first().and_then(|&r| prompts.get(r)).map_or(0, Vec::len);
        let flat: Vec<u32> = rows.iter().flat_map(|&r| prompts[r].iter().copied()).collect();
        let mut input = Tensor::from_vec(flat, (rows.len(), length), device)?;
        let mut cache = KvCache::new(&self.config);
        let mut live: Vec<usize> = rows.to_vec();
        for _ in 0..max_new {
            let next: Vec<u32> =
                self.forward_cached(&input, &mut cache)?.argmax(D::Minus1)?.to_vec1()?;
            let (mut kept, mut fed) = (Vec::new(), Vec::new());
            for (b, (&r, &token)) in live.iter().zip(&next).enumerate() {
                match judge(&answers[r], token)? {
                    NextToken::End => {}
                    NextToken::AppendAndEnd => answers[r].push(token),
                    NextToken::Append => {
                        answers[r].push(token);
                        kept.push(b);
                        fed.push(token);
                    }
                }
            }
            if kept.is_empty() {
                break;
            }
            if kept.len() < live.len() {
                cache.keep_rows(&kept)?;
                live = kept.iter().map(|&b| live[b]).collect();
            }
            input = Tensor::from_vec(fed, (live.len(), 1), device)?;
        }
        Ok(())
    }

    /// The greedy continuation of one prompt as [`Llama::greedy`] defines
    /// it, computed the plain way: the whole sequence through
    /// [`Llama::forward`] for every new token, no cache, no batch. The
    /// reference the cached decoding is tested against.
    pub fn greedy_uncached(
        &self,
        prompt: &[u32],
        max_new: usize,
        judge: &mut dyn FnMut(&[u32], u32) -> Result<NextToken>,
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(EvalError::invalid("an empty prompt has nothing to continue"));
        }
        let mut ids = prompt.to_vec();
        let mut answer = Vec::new();
        for _ in 0..max_new {
            let n = ids.len();
            let input = Tensor::from_vec(ids.clone(), (1, n), self.embed.device())?;
            let logits = self.forward(&input)?.narrow(1, n - 1, 1)?.flatten_all()?;
            let next = logits.argmax(D::Minus1)?.to_scalar::<u32>()?;
            match judge(&answer, next)? {
                NextToken::End => break,
                NextToken::AppendAndEnd => {
                    answer.push(next);
                    break;
                }
                NextToken::Append => {
                    answer.push(next);
                    ids.push(next);
                }
            }
        }
        Ok(answer)
    }
}

/// Keys and values of the positions a batch of sequences has seen, per
/// block, for [`Llama::forward_cached`]: decoding feeds each new token once
/// instead of the whole sequence. Every row has the same length.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// Per block: keys (after RoPE) and values, `(batch, kv_heads,
    /// positions, width)`, before the grouped-query repetition.
    layers: Vec<Option<(Tensor, Tensor)>>,
    positions: usize,
}

impl KvCache {
    /// An empty cache for `config`'s model.
    pub fn new(config: &LlamaConfig) -> KvCache {
        KvCache { layers: vec![None; config.num_hidden_layers], positions: 0 }
    }

    /// Positions held per row.
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// Keeps the rows `rows` (indices into the current batch, in the order
    /// given) and drops the others, e.g. rows whose answer has ended.
    pub fn keep_rows(&mut self, rows: &[usize]) -> Result<()> {
        let Some(device) = self.layers.iter().flatten().map(|(k, _)| k.device().clone()).next()
        else {
            return Ok(());
        };
        let ids: Vec<u32> = rows
            .iter()
            .map(|&r| u32::try_from(r).map_err(|_| EvalError::invalid("batch row out of range")))
            .collect::<Result<_>>()?;
        let index = Tensor::from_vec(ids, rows.len(), &device)?;
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(&index, 0)?;
            *v = v.index_select(&index, 0)?;
        }
        Ok(())
    }
}

/// `x / rms(x) * weight` over the last dimension.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(mean_sq + eps)?.sqrt()?)?.broadcast_mul(weight)?)
}

/// Cosine and sine tables `(time, width)` for rotary embeddings of the
/// positions `start..start + time`, each half repeated as Hugging Face's
/// "rotate half" layout expects.
fn rope_tables(
    c: &LlamaConfig,
    start: usize,
    time: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let width = c.head_width();
    let half = width / 2;
    let mut cos = Vec::with_capacity(time * width);
    let mut sin = Vec::with_capacity(time * width);
    for pos in start..start + time {
        for j in 0..width {
            let freq = c.rope_theta.powf(-((2 * (j % half)) as f64) / width as f64);
            let angle = pos as f64 * freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    Ok((
        Tensor::from_vec(cos, (time, width), device)?,
        Tensor::from_vec(sin, (time, width), device)?,
    ))
}

/// `x * cos + rotate_half(x) * sin` for `x` of shape `(batch, heads, time, width)`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// Repeats each key/value head `n` times, `(b, kv, t, w)` to `(b, kv * n, t, w)`.
fn repeat_kv(x: Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x);
    }
    let (b, kv, t, w) = x.dims4()?;
    Ok(x.unsqueeze(2)?.broadcast_as((b, kv, n, t, w))?.reshape((b, kv * n, t, w))?)
}

/// `(time, past + time)` for `time` new positions after `past` cached
/// ones: 0 where a new position may attend (every earlier or equal
/// position), minus infinity after it.
fn causal_mask(time: usize, past: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..time)
        .flat_map(|i| {
            (0..past + time).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (time, past + time), device)?.to_dtype(DType::F32)?)
}
