//! `weightmark attack`: one edit of a model, for robustness experiments.
//! Every edit is seeded and reproducible and reports its own damage (the
//! relative RMS change of the weights it touched).

use std::path::Path;

use anyhow::{ensure, Context};
use weightmark::attack::{apply, merge_linear, Attack, AttackReport, PruneMethod};
use weightmark::gguf::writer::{write_gguf, LlamaConfig};
use weightmark::gguf::GgmlType;
use weightmark::{embed, Dtype, EmbedOptions, Model, SecretKey, Selection};

use crate::cli::{AttackArgs, AttackIo, AttackKind};
use crate::progress::Bar;
use crate::{outln, Outcome};

/// Applies the edit.
pub fn run(args: &AttackArgs) -> anyhow::Result<Outcome> {
    let (attack, io): (Attack, &AttackIo) = match &args.kind {
        AttackKind::Gguf { ty, model, output } => return gguf(ty, model, output),
        AttackKind::Merge { other, lambda, method, base, density, io } => {
            if method == "ties" {
                let base = base.as_ref().context("--method ties needs --base BASE")?;
                let (a, b, base_m) =
                    (Model::open(&io.model)?, Model::open(other)?, Model::open(base)?);
                let report = weightmark::attack::merge_ties(
                    &[&a, &b],
                    &base_m,
                    *density,
                    *lambda,
                    &io.output,
                    &Bar::new(),
                )
                .with_context(|| {
                    format!("could not merge {} with {}", io.model.display(), other.display())
                })?;
                return say(
                    &format!(
                        "TIES merge (density {density}, lambda {lambda}) with {}",
                        other.display()
                    ),
                    &report,
                );
            }
            return merge(other, *lambda, io);
        }
        AttackKind::Overwrite { strength, io } => return overwrite(*strength, io),
        AttackKind::Finetune(a) => return super::eval::finetune(a),
        AttackKind::Permute { what, io } => return permute(what, io),
        AttackKind::Truncate { keep, io } => {
            let m = Model::open(&io.model)?;
            let r = weightmark::attack::truncate::truncate(&m, &io.output, *keep)
                .with_context(|| format!("could not truncate {}", io.model.display()))?;
            outln!(
                "kept {} of {} layers ({} tensors removed) -> {}: relative RMS change {:.1}% (removed weights count as zeroed)",
                r.layers.1,
                r.layers.0,
                r.removed,
                io.output.display(),
                100.0 * r.relative_change
            );
            return Ok(Outcome::Success);
        }
        AttackKind::Rotate { io } => {
            let m = Model::open(&io.model)?;
            let report = weightmark::attack::rotate::rotate(&m, &io.output, io.seed, &Bar::new())
                .with_context(|| format!("could not rotate {}", io.model.display()))?;
            outln!(
                "residual stream rotated (seed {}, norm weights folded) -> {}: the function is \
                 unchanged; element by element the weights changed by {:.1}% RMS",
                io.seed,
                report.written.path.display(),
                100.0 * report.damage.relative_rms_change()
            );
            return Ok(Outcome::Success);
        }
        AttackKind::Noise(a) => {
            ensure!(
                a.relative.is_finite() && a.relative >= 0.0,
                "--relative must be a non-negative number"
            );
            (Attack::Noise { relative: a.relative }, &a.io)
        }
        AttackKind::Drift(a) => {
            ensure!(
                a.relative.is_finite() && a.relative >= 0.0,
                "--relative must be a non-negative number"
            );
            (Attack::Drift { relative: a.relative }, &a.io)
        }
        AttackKind::Quantize { bits, group, io } => {
            ensure!(group.is_none_or(|g| g > 0), "--group must be at least 1");
            (Attack::Quantize { bits: *bits, group: *group }, io)
        }
        AttackKind::Prune { fraction, method, io } => {
            ensure!((0.0..=1.0).contains(fraction), "--fraction must be between 0 and 1");
            let method =
                if method == "random" { PruneMethod::Random } else { PruneMethod::Magnitude };
            (Attack::Prune { fraction: *fraction, method }, io)
        }
        AttackKind::Lowrank { rank, relative, io } => {
            ensure!(
                *rank > 0 && relative.is_finite() && *relative >= 0.0,
                "--rank must be positive and --relative non-negative"
            );
            (Attack::LowRank { rank: *rank, relative: *relative }, io)
        }
        AttackKind::Scale { factor, io } => {
            ensure!(factor.is_finite(), "--factor must be a number");
            (Attack::Scale { factor: *factor }, io)
        }
        AttackKind::Cast { via, io } => {
            let via = match via.as_str() {
                "f16" => Dtype::F16,
                "bf16" => Dtype::BF16,
                _ => Dtype::F32,
            };
            (Attack::Cast { via }, io)
        }
    };
    let m = Model::open(&io.model)?;
    let report = apply(&m, &io.output, &attack, io.seed, &Bar::new())
        .with_context(|| format!("could not edit {}", io.model.display()))?;
    say(&format!("{attack:?} (seed {})", io.seed), &report)
}

fn permute(what: &str, io: &AttackIo) -> anyhow::Result<Outcome> {
    use weightmark::attack::permute::{permute_heads, permute_mlp};
    let m = Model::open(&io.model)?;
    let bar = Bar::new();
    let heads = || -> anyhow::Result<(usize, usize)> {
        let c =
            LlamaConfig::for_model(&m).context("permuting heads needs the model's config.json")?;
        Ok((c.heads, c.kv_heads))
    };
    let report = match what {
        "mlp" => permute_mlp(&m, &io.output, io.seed, &bar)?,
        "heads" => {
            let (h, kv) = heads()?;
            permute_heads(&m, &io.output, h, kv, io.seed, &bar)?
        }
        _ => {
            let (h, kv) = heads()?;
            let parent =
                io.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let staging = tempfile::Builder::new().prefix(".weightmark-").tempdir_in(parent)?;
            let name =
                io.output.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "model".into());
            let step = staging.path().join(name);
            let mlp = permute_mlp(&m, &step, io.seed, &bar)?;
            let mid = Model::open(&step)?;
            let mut heads = permute_heads(&mid, &io.output, h, kv, io.seed, &bar)?;
            // The two steps touch different tensors: their sums add.
            heads.damage = heads.damage.merge(mlp.damage);
            heads
        }
    };
    outln!(
        "{} permuted (seed {}) -> {}: the function is unchanged; element by element the \
         permuted weights changed by {:.1}% RMS",
        match what {
            "mlp" => "MLP neurons",
            "heads" => "attention heads",
            _ => "MLP neurons and attention heads",
        },
        io.seed,
        report.written.path.display(),
        100.0 * report.damage.relative_rms_change()
    );
    Ok(Outcome::Success)
}

fn say(what: &str, report: &AttackReport) -> anyhow::Result<Outcome> {
    outln!(
        "{what} -> {}: relative RMS change {:.3}% of the touched weights",
        report.written.path.display(),
        100.0 * report.damage.relative_rms_change()
    );
    Ok(Outcome::Success)
}

fn merge(other: &Path, lambda: f64, io: &AttackIo) -> anyhow::Result<Outcome> {
    ensure!(lambda.is_finite(), "--lambda must be a number");
    let a = Model::open(&io.model)?;
    let b = Model::open(other)?;
    let report = merge_linear(&[&a, &b], &[lambda, 1.0 - lambda], &io.output, &Bar::new())
        .with_context(|| {
            format!("could not merge {} with {}", io.model.display(), other.display())
        })?;
    say(&format!("linear merge, lambda {lambda}, with {}", other.display()), &report)
}

fn overwrite(strength: f64, io: &AttackIo) -> anyhow::Result<Outcome> {
    let m = Model::open(&io.model)?;
    let attacker = SecretKey::from_seed(seed_bytes(io.seed));
    let options = EmbedOptions {
        strength,
        label: "overwrite".into(),
        recipient: None,
        selection: Selection::Default,
        created: weightmark::now_rfc3339(),
        progress: &Bar::new(),
    };
    let report = embed(&m, &io.output, &attacker, &options)
        .with_context(|| format!("could not overwrite the mark of {}", io.model.display()))?;
    outln!(
        "second mark at strength {strength} (attacker key from seed {}) -> {}: relative RMS change {:.3}%",
        io.seed,
        report.written.path.display(),
        100.0 * report.fidelity.relative_rms_change()
    );
    Ok(Outcome::Success)
}

/// A 32-byte seed from a number (the attacker's key in experiments).
fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut s = [0x5au8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s
}

fn gguf(ty: &str, model: &Path, output: &Path) -> anyhow::Result<Outcome> {
    let ggml = match ty {
        "Q8_0" => GgmlType::Q8_0,
        "Q4_0" => GgmlType::Q4_0,
        "Q4_K" => GgmlType::Q4K,
        "Q6_K" => GgmlType::Q6K,
        "F16" => GgmlType::F16,
        _ => GgmlType::F32,
    };
    let m = Model::open(model)?;
    let config = LlamaConfig::for_model(&m).context("attack gguf needs the model's config.json")?;
    let report = write_gguf(&m, output, ggml, &config)
        .with_context(|| format!("could not write {}", output.display()))?;
    let mut counts = std::collections::BTreeMap::new();
    for (_, t) in &report.tensors {
        *counts.entry(t.name()).or_insert(0) += 1;
    }
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    outln!(
        "wrote {} ({} tensors: {}): relative RMS change {:.3}% of the written weights",
        output.display(),
        report.tensors.len(),
        summary.join(", "),
        100.0 * report.damage.relative_rms_change()
    );
    for s in &report.skipped {
        outln!("  left out (no llama.cpp name): {s}");
    }
    Ok(Outcome::Success)
}
