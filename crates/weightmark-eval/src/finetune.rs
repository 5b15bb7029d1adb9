//! Real fine-tuning on the CPU: next-token cross-entropy, AdamW, and either
//! every weight trained (full fine-tuning), every weight of a few blocks
//! only (the attack on edits that sit in a few layers), or LoRA adapters on
//! the seven matrices of every block, merged into the weights when the model
//! is saved.
//!
//! Choices, all as a typical Hugging Face recipe makes them: a constant
//! learning rate, no gradient clipping (AdamW is nearly invariant to the
//! gradient's scale), weight decay 0 unless asked for, LoRA `A` drawn
//! uniformly in `±1/sqrt(in)` and `B` zero so training starts at the original
//! model, `alpha = 2 * rank`. Batches are drawn from a seeded shuffle of the
//! training windows, reshuffled every epoch, so a run is reproducible.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use weightmark::attack::{write_replaced, AttackReport};
use weightmark::Model;
use weightmark::NoProgress;

use crate::error::{EvalError, Result};
use crate::llama::{Llama, Lora};
use crate::metrics::batch_tensors;

/// What is trained.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// Every tensor.
    Full,
    /// Rank-`rank` adapters on the block matrices; everything else frozen.
    Lora {
        /// Adapter rank.
        rank: usize,
    },
    /// Every tensor of the blocks whose bit is set (bit `i`: block `i`, at
    /// most 128 blocks); embeddings, final norm, head and the other blocks
    /// frozen.
    Layers {
        /// Which blocks are trained.
        mask: u128,
    },
}

impl Method {
    /// Training of the blocks `layers` only (each below 128).
    pub fn layers(layers: &[usize]) -> Result<Method> {
        let mut mask = 0u128;
        for &l in layers {
            if l >= 128 {
                return Err(EvalError::invalid(format!(
                    "block {l}: only the first 128 blocks can be chosen"
                )));
            }
            mask |= 1 << l;
        }
        if mask == 0 {
            return Err(EvalError::invalid("no block chosen to train"));
        }
        Ok(Method::Layers { mask })
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Full => f.write_str("full"),
            Method::Lora { rank } => write!(f, "lora-r{rank}"),
            Method::Layers { mask } => {
                f.write_str("layers")?;
                for l in (0..128).filter(|l| mask >> l & 1 == 1) {
                    write!(f, "-{l}")?;
                }
                Ok(())
            }
        }
    }
}

/// How to train.
#[derive(Clone, Debug)]
pub struct FinetuneOptions {
    /// Full or LoRA.
    pub method: Method,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Windows per step.
    pub batch: usize,
    /// Seed of the batch order and the adapters' initialisation.
    pub seed: u64,
}

/// A model being trained.
pub struct Trainer {
    model: Llama,
    optimizer: AdamW,
    train: Vec<Vec<u32>>,
    order: Vec<usize>,
    next: usize,
    rng: ChaCha8Rng,
    batch: usize,
    /// Steps taken.
    pub steps: usize,
}

impl Trainer {
    /// Prepares `model` for training on `train` windows.
    pub fn new(
        mut model: Llama,
        train: Vec<Vec<u32>>,
        options: &FinetuneOptions,
    ) -> Result<Trainer> {
        if train.is_empty() {
            return Err(EvalError::invalid(
                "no training windows; the text is shorter than one window",
            ));
        }
        if options.batch == 0 {
            return Err(EvalError::invalid("the batch size must be at least 1"));
        }
        if !(options.learning_rate > 0.0 && options.learning_rate.is_finite()) {
            return Err(EvalError::invalid(format!(
                "learning rate {} must be a positive number",
                options.learning_rate
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let vars = match options.method {
            Method::Full => model.make_trainable()?,
            Method::Layers { mask } => model.make_blocks_trainable(mask)?,
            Method::Lora { rank } => attach_adapters(&mut model, rank, &mut rng)?,
        };
        let params = ParamsAdamW {
            lr: options.learning_rate,
            weight_decay: options.weight_decay,
            ..ParamsAdamW::default()
        };
        let optimizer = AdamW::new(vars, params)?;
        let order = (0..train.len()).collect();
        let mut trainer = Trainer {
            model,
            optimizer,
            train,
            order,
            next: 0,
            rng,
            batch: options.batch,
            steps: 0,
        };
        trainer.shuffle();
        Ok(trainer)
    }

    fn shuffle(&mut self) {
        for i in (1..self.order.len()).rev() {
            let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
            self.order.swap(i, j);
        }
        self.next = 0;
    }

    fn next_batch(&mut self) -> Vec<usize> {
        let mut picked = Vec::with_capacity(self.batch);
        while picked.len() < self.batch {
            if self.next == self.order.len() {
                self.shuffle();
            }
            picked.push(self.order[self.next]);
            self.next += 1;
        }
        picked
    }

    /// One optimisation step; returns the batch's mean loss (nats per token).
    pub fn step(&mut self) -> Result<f64> {
        let picked = self.next_batch();
        let windows: Vec<&Vec<u32>> = picked.iter().map(|&i| &self.train[i]).collect();
        let (inputs, targets) = batch_tensors(&windows)?;
        let logits = self.model.forward(&inputs)?;
        let vocab = self.model.config.vocab_size;
        let loss = candle_nn::loss::cross_entropy(&logits.reshape(((), vocab))?, &targets)?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        if !value.is_finite() {
            return Err(EvalError::invalid(format!(
                "training diverged at step {} (loss {value}); lower the learning rate",
                self.steps + 1
            )));
        }
        let grads = loss.backward()?;
        self.optimizer.step(&grads)?;
        self.steps += 1;
        Ok(value)
    }

    /// The model as trained so far (adapters attached, not merged).
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// Every tensor with adapters merged, as f32 values by name.
    pub fn merged_values(&self) -> Result<HashMap<String, Vec<f32>>> {
        let mut out = HashMap::new();
        for (name, t) in self.model.merged_tensors()? {
            out.insert(name, t.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Writes the trained model in `original`'s layout and dtypes (rounded to
    /// nearest) to `out`.
    pub fn write(&self, original: &Model, out: &Path) -> Result<AttackReport> {
        Ok(write_replaced(original, out, &self.merged_values()?, &NoProgress)?)
    }
}

/// Attaches rank-`rank` adapters to every block matrix; returns their variables.
fn attach_adapters(model: &mut Llama, rank: usize, rng: &mut ChaCha8Rng) -> Result<Vec<Var>> {
    if rank == 0 {
        return Err(EvalError::invalid("the LoRA rank must be at least 1"));
    }
    let mut vars = Vec::new();
    for (_, _, lin) in model.linears_mut() {
        let (out_dim, in_dim) = lin.weight.dims2()?;
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a: Vec<f32> =
            (0..rank * in_dim).map(|_| ((uniform(rng) * 2.0 - 1.0) * bound) as f32).collect();
        let a = Var::from_tensor(&Tensor::from_vec(a, (rank, in_dim), &Device::Cpu)?)?;
        let b = Var::zeros((out_dim, rank), candle_core::DType::F32, &Device::Cpu)?;
        vars.push(a.clone());
        vars.push(b.clone());
        lin.lora = Some(Lora { a, b, scale: 2.0 });
    }
    Ok(vars)
}

/// A uniform number in [0, 1) from 53 random bits.
fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}
