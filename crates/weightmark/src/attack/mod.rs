//! Edits applied to marked models to measure how well the mark survives.
//!
//! Each attack is a seeded, reproducible per-tensor function; [`apply`] writes
//! the attacked model in the input's layout and reports the damage (relative
//! RMS change of the weights it touched). Attacks touch the default-selected
//! tensors (float matrices); everything else is copied.

pub mod collude;
pub mod gguf;
pub mod mix;
pub mod permute;
pub mod rescale;
pub mod residual;
pub mod rotate;
pub mod scrub;
pub mod signs;
pub mod smooth;
mod symmetry;
pub mod truncate;

pub use collude::CollusionMethod;
pub use scrub::{Scrub, ScrubNoise};
pub use smooth::{ActivationStats, LayerActivations};

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use crate::dtype::{decode_f64, encode_nearest, Dtype};
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::key::SecretKey;
use crate::llama::LlamaConfig;
use crate::model::{write_model, Model, TensorRef, WriteOptions, WriteReport};
use crate::progress::Progress;
use crate::rng::{fill_normal, stream};
use crate::scheme::Fidelity;
use crate::select::is_default_selected;

/// An edit of a model, for robustness experiments. [`Attack::validate`]
/// checks its parameters; [`apply`] runs it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Attack {
    /// Adds i.i.d. Gaussian noise of `relative` x row RMS.
    Noise {
        /// Noise RMS relative to each row's RMS.
        relative: f64,
    },
    /// Simulated fine-tuning: a change of relative RMS `relative`, half of its
    /// energy a low-rank update (rank 8, as gradient updates are close to
    /// low-rank) and half i.i.d. noise.
    Drift {
        /// Change RMS relative to each row's RMS.
        relative: f64,
    },
    /// Symmetric absmax quantization to `bits` bits (2 to 8), one scale per
    /// row or per group of `group` consecutive elements of a row, then back
    /// to the original dtype.
    Quantize {
        /// Bits per element.
        bits: u32,
        /// Group size; `None` for one scale per row.
        group: Option<usize>,
    },
    /// Sets a fraction of each tensor's elements to zero.
    Prune {
        /// Fraction of elements zeroed, in [0, 1].
        fraction: f64,
        /// Which elements.
        method: PruneMethod,
    },
    /// Merges a LoRA-style update `B A` of rank `rank` (Gaussian factors)
    /// scaled to `relative` x the tensor's Frobenius norm.
    LowRank {
        /// Rank of the update.
        rank: usize,
        /// Frobenius norm of the update relative to the tensor's.
        relative: f64,
    },
    /// Multiplies every weight by `factor` (weight decay).
    Scale {
        /// The factor.
        factor: f64,
    },
    /// Round trip through another dtype (round to nearest) and back.
    Cast {
        /// The dtype passed through (F16, BF16, F32).
        via: Dtype,
    },
    /// A linear merge `lambda * w + (1 - lambda) * u` with an unrelated model
    /// `u` of the same shapes: seeded Gaussian weights with each row's RMS.
    MergeUnrelated {
        /// Weight of the attacked model.
        lambda: f64,
    },
    /// A linear merge `lambda * model + (1 - lambda) * other` with another
    /// model of the same tensor names and shapes.
    Merge {
        /// The other model.
        with: PathBuf,
        /// Weight of the attacked model.
        lambda: f64,
    },
    /// TIES merge with another model fine-tuned from the common `base`
    /// ([`merge_ties`]).
    Ties {
        /// The other model.
        with: PathBuf,
        /// Their common base.
        base: PathBuf,
        /// Fraction of each task vector kept, in [0, 1].
        density: f64,
        /// Weight of the merged task vector.
        lambda: f64,
    },
    /// Function-preserving permutation of MLP neurons and/or attention heads
    /// of a Llama-layout model (heads need its `config.json`).
    Permute {
        /// What is permuted.
        what: PermuteWhat,
    },
    /// Function-preserving rotation of the residual stream of a Llama-layout
    /// model, norm weights folded first ([`rotate::rotate`]).
    Rotate,
    /// Keeps the first `keep` decoder layers of a Llama-layout model.
    Truncate {
        /// Decoder layers kept (at least 1, fewer than the model has).
        keep: usize,
    },
    /// A second mark, embedded with an attacker's key derived from the seed
    /// (the same key for the same seed, in `attack` and in `bench` alike).
    Overwrite {
        /// Strength of the second mark.
        strength: f64,
    },
    /// Writes a quantized GGUF file the way llama.cpp does ([`gguf::write_gguf`]);
    /// needs a Llama-layout model with its `config.json`.
    Gguf {
        /// The quantization type (Q8_0, Q4_0, Q4_K, Q6_K, F16 or F32).
        ty: GgmlType,
    },
    /// Function-preserving, bit-exact edit of the residual stream of a
    /// Llama-layout model ([`residual::residual`]): a seeded permutation
    /// and/or seeded sign flips of its channels, applied to the columns of
    /// every matrix that reads the stream (embeddings, `lm_head`,
    /// q/k/v/gate/up), the rows of every matrix that writes it (o/down) and
    /// the norm weights (permuted; signs pass through RMSNorm). A tied head
    /// stays tied. At least one of the two must be asked for.
    Residual {
        /// Permute the channels.
        permute: bool,
        /// Flip the signs of the channels.
        flip_signs: bool,
    },
    /// Function-preserving, bit-exact seeded sign flips inside the layers of a
    /// Llama-layout model ([`signs::sign_flips`]): MLP neurons (an `up_proj`
    /// row with its `down_proj` column) and value dimensions (a `v_proj` row
    /// with the `o_proj` columns of every query head of its group). Needs the
    /// model's `config.json`.
    SignFlips,
    /// Function-preserving diagonal rescalings of a Llama-layout model with
    /// seeded log-normal factors ([`rescale::rescale`]): norm weights against
    /// the columns that read them, up rows against down columns, v rows
    /// against o columns, q rows against k rows (per RoPE pair and key/value
    /// group). Exact up to rounding in each tensor's dtype; a tied head is
    /// untied. Needs the model's `config.json`.
    Rescale {
        /// Standard deviation of the factors' logarithms (0 changes nothing).
        log_sd: f64,
    },
    /// AWQ/SmoothQuant-style smoothing ([`smooth::smooth`]): the diagonal
    /// rescalings of [`Attack::Rescale`] (norm weights against q/k/v and
    /// gate/up columns, up rows against down columns, v rows against o
    /// columns) with factors `act^alpha / max|W|^(1 - alpha)` from the
    /// activation statistics of a calibration text. Exact up to rounding.
    /// Needs the model's `config.json`.
    Smooth {
        /// Mean `|x|` per input channel of each layer's matrices.
        activations: ActivationStats,
        /// Migration strength in [0, 1] (AWQ and SmoothQuant use 0.5).
        alpha: f64,
    },
    /// Function-preserving mixing of each key/value head's value dimensions
    /// by a seeded, well-conditioned invertible matrix, undone in `o_proj`
    /// ([`mix::mix_vo`]). Exact up to rounding. Needs the model's
    /// `config.json`.
    MixVo,
    /// Function-preserving seeded rotation of each RoPE pair of `q_proj` and
    /// `k_proj` rows, common to a key/value group ([`mix::rope_rotate`]).
    /// Exact up to rounding. Needs the model's `config.json`.
    RopeRotate,
    /// Collusion: the model and other copies of the same release (same tensor
    /// names and shapes) combined element by element ([`collude::collude`]);
    /// the damage is measured against the model.
    Collude {
        /// The other copies (at least one).
        with: Vec<PathBuf>,
        /// How the copies are combined.
        method: CollusionMethod,
    },
    /// The adaptive scrubber ([`scrub::scrub`]): relative noise of the
    /// mark's own amplitude profile (the adversary's guess of the allocation,
    /// recomputed from the suspect) times a budget, from the attacker's seed.
    Scrub(Scrub),
}

/// What [`Attack::Permute`] permutes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermuteWhat {
    /// MLP neurons (rows of gate/up with columns of down).
    Mlp,
    /// Attention heads, grouped-query aware.
    Heads,
    /// Both.
    Both,
}

/// Which elements [`Attack::Prune`] zeroes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneMethod {
    /// The smallest magnitudes of each tensor.
    Magnitude,
    /// A seeded random choice.
    Random,
}

/// GGUF types [`Attack::Gguf`] writes.
pub const GGUF_TYPES: [GgmlType; 6] =
    [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4K, GgmlType::Q6K, GgmlType::F16, GgmlType::F32];

impl Attack {
    /// Checks the parameters before any work; an error says which one is out
    /// of range and what is accepted.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::invalid(what));
        let non_negative = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                bad(format!("{name} {v} must be a finite number >= 0"))
            }
        };
        let finite = |name: &str, v: f64| {
            if v.is_finite() {
                Ok(())
            } else {
                bad(format!("{name} {v} must be a finite number"))
            }
        };
        let fraction = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                bad(format!("{name} {v} must be between 0 and 1"))
            }
        };
        match self {
            Attack::Noise { relative } => non_negative("noise: relative level", *relative),
            Attack::Drift { relative } => non_negative("drift: relative change", *relative),
            Attack::Quantize { bits, group } => {
                if !(2..=8).contains(bits) {
                    return bad(format!("quantize: {bits} bits is out of range; use 2 to 8"));
                }
                if *group == Some(0) {
                    return bad("quantize: a group holds at least 1 element".into());
                }
                Ok(())
            }
            Attack::Prune { fraction: f, .. } => fraction("prune: fraction", *f),
            Attack::LowRank { rank, relative } => {
                if *rank == 0 {
                    return bad("lowrank: the rank must be at least 1".into());
                }
                non_negative("lowrank: relative norm", *relative)
            }
            Attack::Scale { factor } => finite("scale: factor", *factor),
            Attack::Cast { via } => {
                if matches!(via, Dtype::F16 | Dtype::BF16 | Dtype::F32) {
                    Ok(())
                } else {
                    bad(format!("cast: cannot pass through {via}; use f16, bf16 or f32"))
                }
            }
            Attack::MergeUnrelated { lambda } | Attack::Merge { lambda, .. } => {
                finite("merge: lambda", *lambda)
            }
            Attack::Ties { density, lambda, .. } => {
                fraction("TIES merge: density", *density)?;
                finite("TIES merge: lambda", *lambda)
            }
            Attack::Permute { .. } | Attack::Rotate => Ok(()),
            Attack::Truncate { keep } => {
                if *keep == 0 {
                    return bad("truncate: keep at least 1 layer".into());
                }
                Ok(())
            }
            Attack::Overwrite { strength } => {
                if *strength > 0.0 && *strength <= crate::embed::MAX_STRENGTH {
                    Ok(())
                } else {
                    bad(format!(
                        "overwrite: strength {strength} is out of range; use a value in (0, {}]",
                        crate::embed::MAX_STRENGTH
                    ))
                }
            }
            Attack::Residual { permute, flip_signs } => {
                if *permute || *flip_signs {
                    Ok(())
                } else {
                    bad("residual: nothing to do; permute the channels, flip their signs, or both"
                        .into())
                }
            }
            Attack::SignFlips | Attack::MixVo | Attack::RopeRotate => Ok(()),
            Attack::Rescale { log_sd } => non_negative("rescale: log_sd", *log_sd),
            Attack::Smooth { activations, alpha } => {
                fraction("smooth: alpha", *alpha)?;
                activations.validate()
            }
            Attack::Scrub(s) => s.validate(),
            Attack::Collude { with, .. } => {
                if with.is_empty() {
                    bad("collude: give at least one other copy of the release".into())
                } else {
                    Ok(())
                }
            }
            Attack::Gguf { ty } => {
                if GGUF_TYPES.contains(ty) {
                    Ok(())
                } else {
                    let names: Vec<&str> = GGUF_TYPES.iter().map(|t| t.name()).collect();
                    bad(format!("gguf: cannot write type {}; use {}", ty.name(), names.join(", ")))
                }
            }
        }
    }

    /// Whether the edit is applied tensor by tensor to the default selection
    /// (the attacks [`attack_tensor`] knows).
    fn is_per_tensor(&self) -> bool {
        matches!(
            self,
            Attack::Noise { .. }
                | Attack::Drift { .. }
                | Attack::Quantize { .. }
                | Attack::Prune { .. }
                | Attack::LowRank { .. }
                | Attack::Scale { .. }
                | Attack::Cast { .. }
                | Attack::MergeUnrelated { .. }
        )
    }
}

/// What [`apply`] did, beyond the damage.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum AttackDetail {
    /// Nothing more to say.
    None,
    /// [`Attack::Truncate`]: layers before and after, tensors removed.
    Truncated {
        /// Decoder layers of the input.
        layers: usize,
        /// Decoder layers kept.
        kept: usize,
        /// Tensors removed.
        removed: usize,
    },
    /// [`Attack::Gguf`]: the type of each tensor written, and the tensors left
    /// out (no llama.cpp name).
    Gguf {
        /// (llama.cpp name, type) of each tensor written.
        tensors: Vec<(String, GgmlType)>,
        /// Tensors left out.
        skipped: Vec<String>,
        /// Why no tokenizer metadata was written (`None` when it was: the
        /// `tokenizer.ggml.*` keys llama.cpp needs to run the file).
        no_tokenizer: Option<String>,
    },
    /// [`Attack::Smooth`]: `max(s) / min(s)` of each group of smoothing
    /// factors (per layer: q/k/v input, gate/up input, v rows, down input);
    /// [`smooth::ratio_summary`] gives their median and maximum.
    Smoothed {
        /// One ratio per factor group.
        ratios: Vec<f64>,
    },
}

/// What [`apply`] did.
#[derive(Clone, Debug)]
pub struct AttackReport {
    /// Where the edited model went (a file or a directory).
    pub path: PathBuf,
    /// Change over the weights the attack touched (for truncation, the
    /// removed weights count as zeroed).
    pub damage: Fidelity,
    /// Details of some attacks.
    pub detail: AttackDetail,
}

impl AttackReport {
    pub(crate) fn written(written: WriteReport, damage: Fidelity) -> AttackReport {
        AttackReport { path: written.path, damage, detail: AttackDetail::None }
    }
}

/// The attacker's secret key of [`Attack::Overwrite`] for a seed.
pub fn attacker_key(seed: u64) -> SecretKey {
    let mut s = [0x5au8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    SecretKey::from_seed(s)
}

/// Validates `attack`, then applies it with `seed` to `model`, writing the
/// result to `out` (the input's layout; a GGUF file for [`Attack::Gguf`]).
pub fn apply(
    model: &Model,
    out: &Path,
    attack: &Attack,
    seed: u64,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    attack.validate()?;
    if attack.is_per_tensor() {
        return apply_per_tensor(model, out, attack, seed, progress);
    }
    match attack {
        Attack::Merge { with, lambda } => {
            let other = Model::open(with)?;
            merge_linear(&[model, &other], &[*lambda, 1.0 - lambda], out, progress)
        }
        Attack::Ties { with, base, density, lambda } => {
            let (other, base) = (Model::open(with)?, Model::open(base)?);
            merge_ties(&[model, &other], &base, *density, *lambda, out, progress)
        }
        Attack::Permute { what } => permute::permute(model, out, *what, seed, progress),
        Attack::Rotate => rotate::rotate(model, out, seed, progress),
        Attack::Truncate { keep } => truncate::truncate(model, out, *keep),
        Attack::Overwrite { strength } => {
            let options =
                crate::embed::EmbedOptions::new("overwrite").strength(*strength).progress(progress);
            let options =
                crate::embed::EmbedOptions { created: "1970-01-01T00:00:00Z".into(), ..options };
            let report = crate::embed::embed(model, out, &attacker_key(seed), &options)?;
            Ok(AttackReport::written(report.written, report.fidelity))
        }
        Attack::Gguf { ty } => {
            let config = LlamaConfig::for_model(model)?;
            gguf::write_gguf(model, out, *ty, &config)
        }
        Attack::Residual { permute, flip_signs } => {
            let mut map = residual::ResidualMap::identity(residual::hidden_size(model)?);
            if *permute {
                map = map.permuted(seed);
            }
            if *flip_signs {
                map = map.sign_flipped(seed);
            }
            residual::residual(model, out, &map, progress)
        }
        Attack::SignFlips => signs::sign_flips(model, out, seed, progress),
        Attack::Rescale { log_sd } => rescale::rescale(model, out, *log_sd, seed, progress),
        Attack::Smooth { activations, alpha } => {
            smooth::smooth(model, out, activations, *alpha, progress)
        }
        Attack::MixVo => mix::mix_vo(model, out, seed, progress),
        Attack::RopeRotate => mix::rope_rotate(model, out, seed, progress),
        Attack::Collude { with, method } => {
            let others = with.iter().map(Model::open).collect::<Result<Vec<Model>>>()?;
            let mut copies = vec![model];
            copies.extend(others.iter());
            collude::collude(&copies, *method, seed, out, progress)
        }
        Attack::Scrub(s) => scrub::scrub(model, out, s, seed, progress),
        _ => Err(Error::internal(format!("attack {attack:?} has no implementation"))),
    }
}

/// The tensor-by-tensor attacks on the default selection.
fn apply_per_tensor(
    model: &Model,
    out: &Path,
    attack: &Attack,
    seed: u64,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    let damage = Mutex::new(Fidelity::default());
    let transform = |t: &TensorRef<'_>| -> Result<Option<Vec<u8>>> {
        if !is_default_selected(t) {
            return Ok(None);
        }
        let (data, f) = attack_tensor(t, attack, seed);
        add_damage(&damage, f)?;
        Ok(Some(data))
    };
    write_attacked(model, out, &transform, progress, &damage)
}

/// Writes `model` through `transform` to `out` and reports the damage the
/// transform gathered. An attack's output is scratch: an existing one is
/// replaced.
pub(crate) fn write_attacked(
    model: &Model,
    out: &Path,
    transform: &(dyn Fn(&TensorRef<'_>) -> Result<Option<Vec<u8>>> + Sync),
    progress: &dyn Progress,
    damage: &Mutex<Fidelity>,
) -> Result<AttackReport> {
    let options = WriteOptions { progress, overwrite: crate::io::Overwrite::Replace };
    let written = write_model(model, out, transform, &options)?;
    let damage = *damage.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(AttackReport::written(written, damage))
}

/// Writes `model` with some tensors replaced by new values (an edit made
/// elsewhere, such as real fine-tuning), each rounded to nearest in the
/// tensor's own dtype; every other tensor is copied. The damage is measured
/// over the replaced tensors that hold a mark by default (float matrices), the
/// weights a mark lives in. A value vector of the wrong length, or one for a
/// tensor that is not a float, is refused before anything is written.
pub fn write_replaced(
    model: &Model,
    out: &Path,
    values: &std::collections::HashMap<String, Vec<f32>>,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    for (name, v) in values {
        let t = model.tensor(name).ok_or_else(|| {
            Error::invalid(format!("{}: no tensor '{name}' to replace", model.path.display()))
        })?;
        if !t.dtype.is_markable() || v.len() != t.elements() {
            return Err(Error::invalid(format!(
                "{}: tensor '{name}' is {} with {} elements; {} new values cannot replace it",
                model.path.display(),
                t.dtype,
                t.elements(),
                v.len()
            )));
        }
    }
    let damage = Mutex::new(Fidelity::default());
    let transform = |t: &TensorRef<'_>| -> Result<Option<Vec<u8>>> {
        let Some(new) = values.get(t.name) else {
            return Ok(None);
        };
        let data = encode_like(t, new.iter().map(|&v| f64::from(v)));
        if is_default_selected(t) {
            add_damage(&damage, damage_of_bytes(t.dtype, &t.data(), &data))?;
        }
        Ok(Some(data))
    };
    write_attacked(model, out, &transform, progress, &damage)
}

/// The collusion attack: the element-wise average of several copies of one
/// model (same tensor names and shapes), written in the first copy's layout.
pub fn average_models(
    models: &[&Model],
    out: &Path,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    let k = models.len().max(1) as f64;
    merge_linear(models, &vec![1.0 / k; models.len()], out, progress)
}

/// A linear merge `sum_j weights[j] * model_j` of models with the same tensor
/// names and shapes (for two models, `lambda` and `1 - lambda`), written in
/// the first model's layout. Tensors that are not floats are copied from the
/// first model. The damage is measured against the first model.
pub fn merge_linear(
    models: &[&Model],
    weights: &[f64],
    out: &Path,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    let Some(first) = models.first() else {
        return Err(Error::invalid("nothing to merge"));
    };
    if weights.len() != models.len() {
        return Err(Error::invalid("one weight per model is needed"));
    }
    check_same_shapes(first, &models[1..])?;
    let damage = Mutex::new(Fidelity::default());
    let transform = |t: &TensorRef<'_>| -> Result<Option<Vec<u8>>> {
        if !t.dtype.is_markable() {
            return Ok(None);
        }
        let mut sum = Vec::new();
        decode_f64(t.dtype, &t.data(), &mut sum);
        sum.iter_mut().for_each(|v| *v *= weights[0]);
        let mut buf = Vec::new();
        for (m, &wj) in models[1..].iter().zip(&weights[1..]) {
            let other = m
                .tensor(t.name)
                .ok_or_else(|| Error::internal("a tensor checked before the merge vanished"))?;
            decode_f64(other.dtype, &other.data(), &mut buf);
            sum.iter_mut().zip(&buf).for_each(|(s, v)| *s += wj * v);
        }
        let data = encode_like(t, sum.iter().copied());
        add_damage(&damage, damage_of_bytes(t.dtype, &t.data(), &data))?;
        Ok(Some(data))
    };
    write_attacked(first, out, &transform, progress, &damage)
}

/// Refuses models that lack one of `first`'s tensors or hold it in another shape.
fn check_same_shapes(first: &Model, others: &[&Model]) -> Result<()> {
    for m in others {
        for t in first.tensors() {
            if m.tensor(t.name).is_none_or(|o| o.shape != t.shape) {
                return Err(Error::invalid(format!(
                    "{}: tensor '{}' is missing or has another shape; models to merge must match",
                    m.path.display(),
                    t.name
                )));
            }
        }
    }
    Ok(())
}

/// `values` rounded to nearest in `t`'s dtype (elements past the end of
/// `values` keep their bytes).
fn encode_like(t: &TensorRef<'_>, values: impl Iterator<Item = f64>) -> Vec<u8> {
    let mut data = t.data().into_owned();
    for (o, v) in data.chunks_exact_mut(t.dtype.size()).zip(values) {
        encode_nearest(t.dtype, v, o);
    }
    data
}

/// Adds a tensor's damage to the running total.
pub(crate) fn add_damage(total: &Mutex<Fidelity>, f: Fidelity) -> Result<()> {
    let mut d = total.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    *d = d.merge(f);
    Ok(())
}

/// The running total, once the threads are done.
pub(crate) fn take(total: Mutex<Fidelity>) -> Result<Fidelity> {
    Ok(total.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// Writes a new set of tensors as one safetensors file: the file `out` for a
/// single-file input, else the new directory `out` holding `model.safetensors`
/// and, if the input has one, its `config.json` passed through `edit_config`.
/// For edits that add or remove tensors, which [`write_model`] cannot do.
pub(crate) fn write_new_tensors(
    model: &Model,
    out: &Path,
    tensors: &[crate::synth::SynthTensor],
    edit_config: impl Fn(&mut serde_json::Value),
) -> Result<std::path::PathBuf> {
    use crate::io::write_atomic_bytes;
    let bytes = crate::synth::to_safetensors(tensors, None);
    if model.layout == crate::model::Layout::File {
        write_atomic_bytes(out, &bytes)?;
        return Ok(out.to_path_buf());
    }
    if out.exists() {
        return Err(Error::OutputExists { path: out.to_path_buf() });
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_atomic_bytes(&out.join("model.safetensors"), &bytes)?;
    let config = model.path.join("config.json");
    if config.exists() {
        let text = crate::io::read_capped(&config, crate::llama::MAX_CONFIG_LEN)?;
        let mut v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
            Error::NotAModel { path: config.clone(), reason: format!("not JSON: {e}") }
        })?;
        edit_config(&mut v);
        let pretty = serde_json::to_vec_pretty(&v).unwrap_or_default();
        write_atomic_bytes(&out.join("config.json"), &pretty)?;
    }
    Ok(out.to_path_buf())
}

/// TIES merging (Yadav et al., 2023) of models fine-tuned from a common
/// `base`: each model's task vector `m - base` is trimmed to its largest
/// `density` fraction by magnitude, a sign is elected per element from the
/// sum of the trimmed vectors, the trimmed values that agree with it are
/// averaged, and `base + lambda * merged` is written in the first model's
/// layout. All models must have the base's tensor names and shapes.
pub fn merge_ties(
    models: &[&Model],
    base: &Model,
    density: f64,
    lambda: f64,
    out: &Path,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    let Some(first) = models.first() else {
        return Err(Error::invalid("nothing to merge"));
    };
    if !(0.0..=1.0).contains(&density) {
        return Err(Error::invalid(format!("density {density} must be between 0 and 1")));
    }
    check_same_shapes(first, &[&models[1..], &[base]].concat())?;
    let damage = Mutex::new(Fidelity::default());
    let transform = |t: &TensorRef<'_>| -> Result<Option<Vec<u8>>> {
        if !t.dtype.is_markable() {
            return Ok(None);
        }
        let b = base
            .tensor(t.name)
            .ok_or_else(|| Error::internal("a tensor checked before the merge vanished"))?;
        let mut base_v = Vec::new();
        decode_f64(b.dtype, &b.data(), &mut base_v);
        let mut tasks: Vec<Vec<f64>> = Vec::new();
        let mut buf = Vec::new();
        for m in models {
            let mt = m
                .tensor(t.name)
                .ok_or_else(|| Error::internal("a tensor checked before the merge vanished"))?;
            decode_f64(mt.dtype, &mt.data(), &mut buf);
            let mut task: Vec<f64> = buf.iter().zip(&base_v).map(|(x, b)| x - b).collect();
            trim(&mut task, density);
            tasks.push(task);
        }
        let merged: Vec<f64> = (0..base_v.len())
            .map(|i| {
                let sign = tasks.iter().map(|t| t[i]).sum::<f64>().signum();
                let agreeing: Vec<f64> = tasks
                    .iter()
                    .map(|t| t[i])
                    .filter(|v| *v != 0.0 && v.signum() == sign)
                    .collect();
                if agreeing.is_empty() {
                    0.0
                } else {
                    agreeing.iter().sum::<f64>() / agreeing.len() as f64
                }
            })
            .collect();
        let data = encode_like(t, base_v.iter().zip(&merged).map(|(b, m)| b + lambda * m));
        add_damage(&damage, damage_of_bytes(t.dtype, &t.data(), &data))?;
        Ok(Some(data))
    };
    write_attacked(first, out, &transform, progress, &damage)
}

/// Keeps the largest `density` fraction of `v` by magnitude, zeroing the rest.
fn trim(v: &mut [f64], density: f64) {
    let keep = ((v.len() as f64) * density).round() as usize;
    if keep >= v.len() {
        return;
    }
    let mut order: Vec<usize> = (0..v.len()).collect();
    let drop = v.len() - keep;
    order.select_nth_unstable_by(drop - 1, |&a, &b| {
        v[a].abs().total_cmp(&v[b].abs()).then(a.cmp(&b))
    });
    for &i in &order[..drop] {
        v[i] = 0.0;
    }
}

/// Applies a tensor-by-tensor `attack` to one float tensor; returns new
/// bytes and the damage (other attacks leave the tensor as it is).
pub fn attack_tensor(t: &TensorRef<'_>, attack: &Attack, seed: u64) -> (Vec<u8>, Fidelity) {
    let mut w = Vec::new();
    decode_f64(t.dtype, &t.data(), &mut w);
    let cols = t.info.row_len().max(1);
    let rows = w.len() / cols;
    let mut new = w.clone();
    match attack {
        Attack::Noise { relative } => add_noise(&mut new, cols, *relative, seed, t.name),
        Attack::Drift { relative } => {
            let half = relative / std::f64::consts::SQRT_2;
            add_noise(&mut new, cols, half, seed, t.name);
            add_low_rank(&mut new, rows, cols, 8, half, seed, t.name, RowScale::PerRow);
        }
        Attack::Quantize { bits, group } => {
            let group = group.unwrap_or(cols).max(1);
            new.par_chunks_mut(cols).for_each(|row| {
                row.chunks_mut(group).for_each(|g| quantize_absmax(g, *bits));
            });
        }
        Attack::Prune { fraction, method } => prune(&mut new, *fraction, *method, seed, t.name),
        Attack::LowRank { rank, relative } => {
            add_low_rank(&mut new, rows, cols, *rank, *relative, seed, t.name, RowScale::Frobenius)
        }
        Attack::Scale { factor } => new.iter_mut().for_each(|x| *x *= factor),
        Attack::MergeUnrelated { lambda } => {
            new.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
                let mut u = vec![0.0; row.len()];
                fill_normal(
                    &mut stream(seed, &format!("unrelated\0{}", t.name)),
                    (r * cols) as u64,
                    &mut u,
                );
                let rms = row_rms(row);
                for (x, e) in row.iter_mut().zip(&u) {
                    *x = lambda * *x + (1.0 - lambda) * rms * e;
                }
            });
        }
        Attack::Cast { via } => {
            let mut buf = vec![0u8; via.size()];
            let mut back = Vec::with_capacity(1);
            for x in new.iter_mut() {
                if encode_nearest(*via, *x, &mut buf) {
                    decode_f64(*via, &buf, &mut back);
                    *x = back.first().copied().unwrap_or(*x);
                }
            }
        }
        _ => {}
    }
    let size = t.dtype.size();
    let mut out = t.data().into_owned();
    for ((o, &v), &old) in out.chunks_exact_mut(size).zip(&new).zip(&w) {
        if old.is_finite() {
            // On overflow the original element stays.
            encode_nearest(t.dtype, v, o);
        }
    }
    let mut back = Vec::with_capacity(w.len());
    decode_f64(t.dtype, &out, &mut back);
    (out, damage_of(&w, &back))
}

/// Relative change between the bytes of two versions of a tensor.
pub(crate) fn damage_of_bytes(dtype: Dtype, before: &[u8], after: &[u8]) -> Fidelity {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    decode_f64(dtype, before, &mut a);
    decode_f64(dtype, after, &mut b);
    damage_of(&a, &b)
}

/// Relative change between two versions of a tensor's values.
fn damage_of(before: &[f64], after: &[f64]) -> Fidelity {
    Fidelity::between(before, after)
}

fn row_rms(row: &[f64]) -> f64 {
    (row.iter().map(|v| v * v).sum::<f64>() / row.len().max(1) as f64).sqrt()
}

fn add_noise(w: &mut [f64], cols: usize, relative: f64, seed: u64, name: &str) {
    w.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
        let mut rng = stream(seed, &format!("noise\0{name}"));
        let mut n = vec![0.0; row.len()];
        fill_normal(&mut rng, (r * cols) as u64, &mut n);
        let scale = relative * row_rms(row);
        for (x, e) in row.iter_mut().zip(&n) {
            *x += scale * e;
        }
    });
}

/// How a low-rank update is scaled.
#[derive(Clone, Copy)]
enum RowScale {
    /// Each row's change has RMS `relative` x that row's RMS.
    PerRow,
    /// The whole update has Frobenius norm `relative` x the tensor's.
    Frobenius,
}

/// Adds `U V` (Gaussian factors of rank `rank`), scaled as `how` says.
#[allow(clippy::too_many_arguments)]
fn add_low_rank(
    w: &mut [f64],
    rows: usize,
    cols: usize,
    rank: usize,
    relative: f64,
    seed: u64,
    name: &str,
    how: RowScale,
) {
    let rank = rank.max(1);
    let mut rng = stream(seed, &format!("lowrank\0{name}"));
    let mut u = vec![0.0; rows * rank];
    let mut v = vec![0.0; rank * cols];
    fill_normal(&mut rng, 0, &mut u);
    fill_normal(&mut rng, (rows * rank) as u64, &mut v);
    let (Ok(u), Ok(v)) =
        (Array2::from_shape_vec((rows, rank), u), Array2::from_shape_vec((rank, cols), v))
    else {
        return;
    };
    let update: Array2<f64> = u.dot(&v);
    let Ok(original) = ArrayView2::from_shape((rows, cols), &*w).map(|a| a.to_owned()) else {
        return;
    };
    let frobenius_factor = match how {
        RowScale::Frobenius => {
            let norm_w = original.iter().map(|x| x * x).sum::<f64>().sqrt();
            let norm_u = update.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm_u > 0.0 {
                relative * norm_w / norm_u
            } else {
                0.0
            }
        }
        RowScale::PerRow => 0.0,
    };
    for ((row, up), orig) in w.chunks_mut(cols).zip(update.rows()).zip(original.rows()) {
        let factor = match how {
            RowScale::Frobenius => frobenius_factor,
            RowScale::PerRow => {
                let up_rms = (up.iter().map(|x| x * x).sum::<f64>() / cols as f64).sqrt();
                let target =
                    relative * (orig.iter().map(|x| x * x).sum::<f64>() / cols as f64).sqrt();
                if up_rms > 0.0 {
                    target / up_rms
                } else {
                    0.0
                }
            }
        };
        for (x, d) in row.iter_mut().zip(up.iter()) {
            *x += d * factor;
        }
    }
}

/// Symmetric absmax quantization of one group to `bits` bits, in place.
fn quantize_absmax(group: &mut [f64], bits: u32) {
    let levels = f64::from((1u32 << (bits.clamp(2, 8) - 1)) - 1);
    let absmax = group.iter().fold(0.0f64, |m, v| if v.is_finite() { m.max(v.abs()) } else { m });
    if absmax == 0.0 {
        return;
    }
    let scale = absmax / levels;
    for x in group.iter_mut().filter(|x| x.is_finite()) {
        *x = (*x / scale).round().clamp(-levels, levels) * scale;
    }
}

/// Zeroes `fraction` of the elements: the smallest magnitudes, or a seeded
/// random choice.
fn prune(w: &mut [f64], fraction: f64, method: PruneMethod, seed: u64, name: &str) {
    let count = ((w.len() as f64) * fraction.clamp(0.0, 1.0)).round() as usize;
    if count == 0 {
        return;
    }
    let mut order: Vec<usize> = (0..w.len()).collect();
    match method {
        PruneMethod::Magnitude => {
            // Ties broken by index, so the choice is deterministic.
            order.select_nth_unstable_by(count - 1, |&a, &b| {
                w[a].abs().total_cmp(&w[b].abs()).then(a.cmp(&b))
            });
        }
        PruneMethod::Random => {
            let mut keys = vec![0.0; w.len()];
            fill_normal(&mut stream(seed, &format!("prune\0{name}")), 0, &mut keys);
            order.select_nth_unstable_by(count - 1, |&a, &b| {
                keys[a].total_cmp(&keys[b]).then(a.cmp(&b))
            });
        }
    }
    for &i in &order[..count] {
        w[i] = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_refuses_each_out_of_range_parameter_by_name() {
        let refused = [
            (Attack::Noise { relative: -0.1 }, "noise"),
            (Attack::Drift { relative: f64::NAN }, "drift"),
            (Attack::Quantize { bits: 1, group: None }, "1 bits"),
            (Attack::Quantize { bits: 4, group: Some(0) }, "group"),
            (Attack::Prune { fraction: 1.5, method: PruneMethod::Random }, "fraction 1.5"),
            (Attack::LowRank { rank: 0, relative: 0.1 }, "rank"),
            (Attack::Scale { factor: f64::INFINITY }, "factor"),
            (Attack::Cast { via: Dtype::I64 }, "cannot pass through"),
            (Attack::Truncate { keep: 0 }, "keep at least 1"),
            (Attack::Overwrite { strength: 0.0 }, "strength 0"),
            (Attack::Gguf { ty: GgmlType::Q4_1 }, "Q4_1"),
            (Attack::Residual { permute: false, flip_signs: false }, "residual: nothing to do"),
            (Attack::Rescale { log_sd: -1.0 }, "log_sd -1"),
            (Attack::Rescale { log_sd: f64::NAN }, "log_sd NaN"),
            (Attack::Collude { with: vec![], method: CollusionMethod::Median }, "other copy"),
            (Attack::Scrub(Scrub::new(-1.0)), "scrub: budget -1"),
        ];
        for (attack, needle) in refused {
            let err = attack.validate().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(needle), "{attack:?}: {err}");
        }
        assert!(Attack::Quantize { bits: 8, group: Some(32) }.validate().is_ok());
        assert!(Attack::Gguf { ty: GgmlType::Q4K }.validate().is_ok());
    }

    #[test]
    fn quantize_groups_keep_their_absmax_and_levels() {
        let mut g = vec![0.1, -0.4, 0.25, 0.0];
        quantize_absmax(&mut g, 4);
        assert_eq!(g[1], -0.4);
        let step = 0.4 / 7.0;
        for x in &g {
            assert!(((x / step).round() - x / step).abs() < 1e-9);
        }
    }

    #[test]
    fn trim_keeps_the_largest_magnitudes() {
        let mut v = vec![0.1, -0.9, 0.3, -0.05];
        trim(&mut v, 0.5);
        assert_eq!(v, [0.0, -0.9, 0.3, 0.0]);
    }

    #[test]
    fn prune_zeroes_the_smallest_magnitudes() {
        let mut w = vec![0.5, -0.1, 0.3, -0.05, 0.2, 0.9];
        prune(&mut w, 0.5, PruneMethod::Magnitude, 1, "t");
        assert_eq!(w, [0.5, 0.0, 0.3, 0.0, 0.0, 0.9]);
        let mut r = vec![1.0; 1000];
        prune(&mut r, 0.3, PruneMethod::Random, 1, "t");
        assert_eq!(r.iter().filter(|&&x| x == 0.0).count(), 300);
    }
}
