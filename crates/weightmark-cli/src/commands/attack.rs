//! `weightmark attack`: one edit of a model, for robustness experiments.

use anyhow::Context;
use weightmark::attack::{apply, Attack};
use weightmark::gguf::writer::{write_gguf, LlamaConfig};
use weightmark::gguf::GgmlType;
use weightmark::Model;

use crate::cli::{AttackArgs, AttackKind};
use crate::progress::Bar;
use crate::{outln, Outcome};

/// Applies the edit.
pub fn run(args: &AttackArgs) -> anyhow::Result<Outcome> {
    let (attack, seed, model, output) = match &args.kind {
        AttackKind::Gguf { ty, model, output } => return gguf(ty, model, output),
        AttackKind::Noise(a) => {
            (Attack::Noise { relative: a.relative }, a.seed, &a.model, &a.output)
        }
        AttackKind::Drift(a) => {
            (Attack::Drift { relative: a.relative }, a.seed, &a.model, &a.output)
        }
        AttackKind::Int8 { seed, model, output } => {
            (Attack::QuantizeInt8PerRow, *seed, model, output)
        }
    };
    if let Attack::Noise { relative } | Attack::Drift { relative } = attack {
        anyhow::ensure!(
            relative.is_finite() && relative >= 0.0,
            "--relative {relative} must be a non-negative number"
        );
    }
    let m = Model::open(model)?;
    let report = apply(&m, output, &attack, seed, &Bar::new())
        .with_context(|| format!("could not edit {}", model.display()))?;
    outln!(
        "{attack:?} (seed {seed}) -> {}: relative RMS change {:.3}% of the touched weights",
        report.written.path.display(),
        100.0 * report.damage.relative_rms_change()
    );
    Ok(Outcome::Success)
}

fn gguf(ty: &str, model: &std::path::Path, output: &std::path::Path) -> anyhow::Result<Outcome> {
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
    outln!("wrote {} ({} tensors: {})", output.display(), report.tensors.len(), summary.join(", "));
    for s in &report.skipped {
        outln!("  left out (no llama.cpp name): {s}");
    }
    Ok(Outcome::Success)
}
