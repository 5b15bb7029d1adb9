//! `weightmark attack`: one edit of a model, for robustness experiments.
//! The arguments become a library [`Attack`], which validates itself and is
//! applied by one function ([`weightmark::apply_attack`]); this module prints
//! what it did. Every edit is seeded and reproducible and reports its own
//! damage (the relative RMS change of the weights it touched).

use anyhow::Context;
use weightmark::attack::Scrub;
use weightmark::{apply_attack, Attack, AttackDetail, AttackReport, Dtype, Model};

use crate::cli::{AttackArgs, AttackIo, AttackKind, MergeMethod, Permuted};
use crate::progress::Bar;
use crate::{outln, Outcome};

/// Applies the edit.
pub fn run(args: &AttackArgs) -> anyhow::Result<Outcome> {
    if let AttackKind::Finetune(a) = &args.kind {
        return super::eval::finetune(a);
    }
    let (attack, io) = match &args.kind {
        // The statistics come from a forward pass over the calibration text.
        AttackKind::Smooth(a) => (super::eval::smooth_attack(a)?, a.io.clone()),
        kind => to_attack(kind)?,
    };
    // Parameters are checked before the model is even opened.
    attack.validate()?;
    let model = Model::open(&io.model)?;
    let destination = match attack {
        // A GGUF file is written where it is named, whatever the input's layout.
        Attack::Gguf { .. } => io.output.clone(),
        _ => weightmark::resolve_output(&model, &io.output)?,
    };
    refuse_existing(&destination, io.force)?;
    let report = apply_attack(&model, &io.output, &attack, io.seed, &Bar::new())
        .with_context(|| format!("could not edit {}", crate::format::path(&io.model)))?;
    say(&attack, &io, &report)?;
    Ok(Outcome::Success)
}

/// Refuses, before any work, an output that exists (a file, or a non-empty
/// directory) unless `force` allows replacing a file: an attack never
/// destroys a file the user did not name for replacing.
pub(crate) fn refuse_existing(destination: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let overwrite =
        if force { weightmark::Overwrite::Replace } else { weightmark::Overwrite::Refuse };
    match weightmark::prepare_outputs(&[destination], overwrite) {
        Err(e @ weightmark::Error::OutputExists { .. }) => {
            Err(anyhow::anyhow!("{e} (--force replaces it)"))
        }
        other => other.map(|_| ()).map_err(Into::into),
    }
}

/// The library attack an `attack` subcommand asks for, with its input and output.
fn to_attack(kind: &AttackKind) -> anyhow::Result<(Attack, AttackIo)> {
    let level = |relative: f64| relative;
    Ok(match kind {
        AttackKind::Gguf { ty, model, output, force } => (
            Attack::Gguf { ty: (*ty).into() },
            AttackIo { seed: 1, model: model.clone(), output: output.clone(), force: *force },
        ),
        AttackKind::Noise(a) => (Attack::Noise { relative: level(a.relative) }, a.io.clone()),
        AttackKind::Drift(a) => (Attack::Drift { relative: level(a.relative) }, a.io.clone()),
        AttackKind::Quantize { bits, group, io } => {
            (Attack::Quantize { bits: *bits, group: *group }, io.clone())
        }
        AttackKind::Prune { fraction, method, io } => {
            (Attack::Prune { fraction: *fraction, method: (*method).into() }, io.clone())
        }
        AttackKind::Lowrank { rank, relative, io } => {
            (Attack::LowRank { rank: *rank, relative: *relative }, io.clone())
        }
        AttackKind::Scale { factor, io } => (Attack::Scale { factor: *factor }, io.clone()),
        AttackKind::Cast { via, io } => (Attack::Cast { via: Dtype::from(*via) }, io.clone()),
        AttackKind::Merge { other, lambda, method, base, density, io } => match method {
            MergeMethod::Linear => {
                (Attack::Merge { with: other.clone(), lambda: *lambda }, io.clone())
            }
            MergeMethod::Ties => {
                let base = base.clone().context("--method ties needs --base BASE")?;
                let attack =
                    Attack::Ties { with: other.clone(), base, density: *density, lambda: *lambda };
                (attack, io.clone())
            }
        },
        AttackKind::Permute { what, io } => (Attack::Permute { what: (*what).into() }, io.clone()),
        AttackKind::Rotate { io } => (Attack::Rotate, io.clone()),
        AttackKind::Truncate { keep, io } => (Attack::Truncate { keep: *keep }, io.clone()),
        AttackKind::Overwrite { strength, io } => {
            (Attack::Overwrite { strength: *strength }, io.clone())
        }
        AttackKind::Residual { no_permute, flip_signs, io } => {
            (Attack::Residual { permute: !no_permute, flip_signs: *flip_signs }, io.clone())
        }
        AttackKind::SignFlips { io } => (Attack::SignFlips, io.clone()),
        AttackKind::Scrub { budget, strength, allocation, noise, io } => {
            let strength = match strength {
                Some(s) => *s,
                None => {
                    weightmark::default_strength(&Model::open(&io.model)?, *allocation)?.strength
                }
            };
            let scrub = Scrub { noise: (*noise).into(), ..Scrub::new(*budget) }
                .against(strength, *allocation);
            (Attack::Scrub(scrub), io.clone())
        }
        AttackKind::Rescale { log_sd, io } => (Attack::Rescale { log_sd: *log_sd }, io.clone()),
        AttackKind::MixVo { io } => (Attack::MixVo, io.clone()),
        AttackKind::RopeRotate { io } => (Attack::RopeRotate, io.clone()),
        AttackKind::Collude { with, method, io } => {
            (Attack::Collude { with: with.clone(), method: (*method).into() }, io.clone())
        }
        AttackKind::Finetune(_) => anyhow::bail!("fine-tuning is not a library attack"),
        AttackKind::Smooth(_) => anyhow::bail!("smoothing needs activation statistics first"),
    })
}

/// One line (two for GGUF) about the edit.
fn say(attack: &Attack, io: &AttackIo, report: &AttackReport) -> anyhow::Result<()> {
    let out = crate::format::path(&report.path);
    let change = 100.0 * report.damage.relative_rms_change();
    match (attack, &report.detail) {
        (_, AttackDetail::Truncated { layers, kept, removed }) => outln!(
            "kept {kept} of {layers} layers ({removed} tensors removed) -> {out}: relative RMS \
             change {change:.1}% (removed weights count as zeroed)"
        ),
        (_, AttackDetail::Gguf { tensors, skipped, no_tokenizer }) => {
            let mut counts = std::collections::BTreeMap::new();
            for (_, t) in tensors {
                *counts.entry(t.name()).or_insert(0) += 1;
            }
            let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
            outln!(
                "wrote {out} ({} tensors: {}): relative RMS change {change:.3}% of the written \
                 weights",
                tensors.len(),
                summary.join(", ")
            );
            for s in skipped {
                outln!("  left out (no llama.cpp name): {}", crate::format::safe(s));
            }
            match no_tokenizer {
                None => outln!("  tokenizer: written (the tokenizer.ggml.* keys llama.cpp reads)"),
                Some(why) => outln!(
                    "  tokenizer: not written, so llama.cpp cannot run the file ({})",
                    crate::format::safe(why)
                ),
            }
        }
        (Attack::Rotate, _) => outln!(
            "residual stream rotated (seed {}, norm weights folded) -> {out}: the function is \
             unchanged; element by element the weights changed by {change:.1}% RMS",
            io.seed
        ),
        (Attack::Permute { what }, _) => outln!(
            "{} permuted (seed {}) -> {out}: the function is unchanged; element by element the \
             permuted weights changed by {change:.1}% RMS",
            match Permuted::from_library(*what) {
                Permuted::Mlp => "MLP neurons",
                Permuted::Heads => "attention heads",
                Permuted::Both => "MLP neurons and attention heads",
            },
            io.seed
        ),
        (Attack::Residual { permute, flip_signs }, _) => outln!(
            "residual channels {} (seed {}) -> {out}: the function is unchanged (bit-exact); \
             element by element the weights changed by {change:.1}% RMS",
            match (permute, flip_signs) {
                (true, true) => "permuted and sign-flipped",
                (true, false) => "permuted",
                _ => "sign-flipped",
            },
            io.seed
        ),
        (Attack::SignFlips, _) => outln!(
            "MLP neurons and value dimensions sign-flipped (seed {}) -> {out}: the function is \
             unchanged (bit-exact); element by element the flipped weights changed by \
             {change:.1}% RMS",
            io.seed
        ),
        (Attack::Smooth { activations, alpha }, AttackDetail::Smoothed { ratios }) => {
            let (median, max) = weightmark::attack::smooth::ratio_summary(ratios);
            outln!(
                "smoothed AWQ-style (alpha {alpha}, activations of {} calibration tokens) -> \
                 {out}: the function is unchanged up to rounding; element by element the \
                 weights changed by {change:.1}% RMS",
                activations.tokens
            );
            outln!(
                "channel ratio max(s)/min(s) over {} factor groups (4 per layer): median \
                 {median:.1}x, max {max:.1}x",
                ratios.len()
            );
        }
        (Attack::Rescale { log_sd }, _) => outln!(
            "rescaled with log-normal factors of log-sd {log_sd} (seed {}) -> {out}: the function \
             is unchanged up to rounding; element by element the weights changed by \
             {change:.1}% RMS",
            io.seed
        ),
        (Attack::MixVo, _) => outln!(
            "value dimensions of each key/value head mixed (seed {}) -> {out}: the function is \
             unchanged up to rounding; element by element v/o changed by {change:.1}% RMS",
            io.seed
        ),
        (Attack::RopeRotate, _) => outln!(
            "RoPE pairs of q/k rotated per key/value group (seed {}) -> {out}: the function is \
             unchanged up to rounding; element by element q/k changed by {change:.1}% RMS",
            io.seed
        ),
        (Attack::Collude { with, method }, _) => outln!(
            "{} of {} copies (seed {}) -> {out}: relative RMS change {change:.3}% against {}",
            method.name(),
            with.len() + 1,
            io.seed,
            crate::format::path(&io.model)
        ),
        (Attack::Scrub(s), _) => outln!(
            "scrubbed: {} noise at {} x the mark's amplitude (strength {}, allocation {}; \
             seed {}) -> {out}: relative RMS change {change:.3}%",
            s.noise.name(),
            s.budget,
            s.strength,
            s.allocation,
            io.seed
        ),
        (Attack::Overwrite { strength }, _) => outln!(
            "second mark at strength {strength} (attacker key from seed {}) -> {out}: relative \
             RMS change {change:.3}%",
            io.seed
        ),
        (Attack::Merge { with, lambda }, _) => outln!(
            "linear merge, lambda {lambda}, with {} -> {out}: relative RMS change {change:.3}% of \
             the touched weights",
            crate::format::path(with)
        ),
        (Attack::Ties { with, density, lambda, .. }, _) => outln!(
            "TIES merge (density {density}, lambda {lambda}) with {} -> {out}: relative RMS \
             change {change:.3}% of the touched weights",
            crate::format::path(with)
        ),
        _ => outln!(
            "{attack:?} (seed {}) -> {out}: relative RMS change {change:.3}% of the touched weights",
            io.seed
        ),
    }
    Ok(())
}
