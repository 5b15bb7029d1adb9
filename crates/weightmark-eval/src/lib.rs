//! # weightmark-eval
//!
//! Answers two questions about a mark with real models instead of
//! simulations: what does it cost the model, and does it survive someone
//! fine-tuning the model?
//!
//! - [`load`] opens a model for evaluation: weights through the core library,
//!   `config.json` and `tokenizer.json` from beside them.
//! - [`llama`] is a Llama-family decoder written on candle's differentiable
//!   operations, with LoRA adapters; [`bert`] runs BERT-layout sentence
//!   encoders (MiniLM).
//! - [`metrics`] measures perplexity, the KL divergence and top-1 agreement of
//!   two decoders, and the embedding cosine of two encoders.
//! - [`finetune`] trains a decoder on text on the CPU with AdamW, fully or
//!   with LoRA, and writes the result in the input's layout and dtypes.
//! - [`fingerprint`] asks a model the `fp1` triggers and plants them by
//!   training, with a distillation penalty that keeps ordinary text unchanged.
//! - [`checkpoint`] saves a plant's state so that it can stop and go on
//!   later with the same result ([`adamw`]: an optimiser whose state can be
//!   saved).
//! - [`calibrate`] measures the activation statistics that AWQ/SmoothQuant-
//!   style smoothing (`weightmark attack smooth`) takes its factors from.
//! - [`confidence`] matches a planted model's confidence on ordinary text to
//!   the original's with one scale on its final norm (a temperature), which
//!   leaves its greedy answers as they were.
//! - [`curve`] follows a mark through fine-tuning: detection and held-out
//!   perplexity at checkpoints, beside the simulated `drift` attack of the same
//!   size.
//!
//! The crate is kept out of the default `weightmark` build: the CLI gains the
//! `eval` commands and `attack finetune` with `--features eval`.

pub mod adamw;
pub mod bert;
pub mod calibrate;
pub mod checkpoint;
pub mod confidence;
pub mod curve;

pub mod error;
pub mod finetune;
pub mod fingerprint;
pub mod llama;
pub mod load;
pub mod metrics;
pub mod text;

pub use error::{EvalError, Result};
