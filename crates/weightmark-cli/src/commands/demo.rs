//! `weightmark demo`: the whole story on a synthetic Llama-shaped model.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use weightmark::provenance::envelope_to_string;
use weightmark::synth::{llama, write_file, LlamaShape};
use weightmark::write_atomic;
use weightmark::{apply_attack, Attack};
use weightmark::{
    detect, embed, DetectOptions, Detection, Dtype, EmbedOptions, MarkKey, Model, NoProgress,
    SecretKey, Selection, Target,
};

use crate::cli::DemoArgs;
use crate::format::{count, p_bound};
use crate::{outln, Outcome};

/// Runs the demo; fails (exit 2) if any step does not come out as it should.
pub fn run(args: &DemoArgs) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let temp;
    let dir: &Path = match &args.keep {
        Some(d) => {
            // The demo writes fixed file names: a directory holding anything
            // already is refused, so that nothing of the user's is replaced.
            let used = std::fs::read_dir(d).map(|mut e| e.next().is_some()).unwrap_or(false);
            if used || (d.exists() && !d.is_dir()) {
                anyhow::bail!(
                    "{}: exists and is not an empty directory: give --keep a new or empty one",
                    crate::format::path(d)
                );
            }
            std::fs::create_dir_all(d)
                .with_context(|| format!("{}: cannot create", crate::format::path(d)))?;
            d
        }
        None => {
            temp = tempfile::tempdir().context("cannot create a temporary directory")?;
            temp.path()
        }
    };
    let shape = LlamaShape::DEMO;
    outln!("weightmark demo: mark a model, let someone change it, and find the mark again.\n");

    step(1, "A lab has a model to release.")?;
    let original_path = dir.join("original.safetensors");
    write_file(&original_path, &llama(&shape, Dtype::BF16, 2026), None)?;
    outln!(
        "   Built a synthetic Llama-shaped model in bf16: {} parameters, {} layers, hidden size {}.",
        count(shape.parameters() as u64),
        shape.layers,
        shape.hidden
    );

    step(
        2,
        "The lab makes an owner key (kept secret) and marks the copy it gives to licensee 'acme'.",
    )?;
    let key = SecretKey::generate()?;
    let marked_path = dir.join("marked.safetensors");
    let original = Model::open(&original_path)?;
    let report = embed(
        &original,
        &marked_path,
        &key,
        &EmbedOptions {
            scheme: weightmark::Scheme::Ss1,
            strength: Some(weightmark::DEFAULT_STRENGTH),
            label: "demo-release".into(),
            recipient: Some("acme".into()),
            selection: Selection::Default,
            created: weightmark::now_rfc3339(),
            progress: &NoProgress,
            overwrite: weightmark::Overwrite::Replace,
            allocation: weightmark::Allocation::Uniform,
            recipient_code: weightmark::RecipientCode::Independent,
            recipient_share: None,
        },
    )?;
    let cert_path = dir.join("marked.safetensors.cert.json");
    write_atomic(&cert_path, &envelope_to_string(&report.certificate)?)?;
    outln!(
        "   Marked {} tensors at strength {}: the weights moved by {:.2}% RMS (SNR {:.1} dB).",
        report.tensors.len(),
        weightmark::DEFAULT_STRENGTH,
        100.0 * report.fidelity.relative_rms_change(),
        report.fidelity.snr_db()
    );
    outln!(
        "   A certificate signed with the owner's key records the release: {}",
        crate::format::path(&cert_path)
    );

    step(3, "Someone fine-tunes the leaked copy (5% relative change), then quantizes it to int8.")?;
    let marked = Model::open(&marked_path)?;
    let drifted_path = dir.join("drifted.safetensors");
    let drift =
        apply_attack(&marked, &drifted_path, &Attack::Drift { relative: 0.05 }, 7, &NoProgress)?;
    let drifted = Model::open(&drifted_path)?;
    let derivative_path = dir.join("derivative.safetensors");
    let quant = apply_attack(
        &drifted,
        &derivative_path,
        &Attack::Quantize { bits: 8, group: None },
        7,
        &NoProgress,
    )?;
    outln!(
        "   Drift changed the weights by {:.1}% RMS, int8 rounding by another {:.2}%. \
         The mark itself is only {:.2}%.",
        100.0 * drift.damage.relative_rms_change(),
        100.0 * quant.damage.relative_rms_change(),
        100.0 * report.fidelity.relative_rms_change()
    );

    let derivative = Model::open(&derivative_path)?;
    let mark_key = key.mark_key("demo-release", Some("acme"));
    step(
        4,
        "The lab finds the derivative and tests it with its key, without the original (blind).",
    )?;
    let blind = find(&derivative, None, &mark_key)?;
    say(&blind)?;

    step(5, "With the original at hand the test is far more sensitive (informed).")?;
    let informed = find(&derivative, Some(&original), &mark_key)?;
    say(&informed)?;

    step(6, "Someone else's key finds nothing, nor does the lab's key in the unmarked original.")?;
    let wrong =
        find(&derivative, None, &SecretKey::generate()?.mark_key("demo-release", Some("acme")))?;
    say(&wrong)?;
    let unmarked = find(&original, None, &mark_key)?;
    say(&unmarked)?;

    let all_right = blind.detected && informed.detected && !wrong.detected && !unmarked.detected;
    outln!(
        "\n{} in {:.1} s. Files are in {}.",
        if all_right { "Every step came out as it should" } else { "SOMETHING WENT WRONG" },
        started.elapsed().as_secs_f64(),
        if args.keep.is_some() {
            dir.display().to_string()
        } else {
            "a temporary directory (now removed; use --keep DIR to keep them)".into()
        }
    );
    if !all_right {
        anyhow::bail!("the demo's detections did not come out as expected");
    }
    Ok(Outcome::Success)
}

fn find(
    suspect: &Model,
    original: Option<&Model>,
    mark_key: &MarkKey,
) -> anyhow::Result<Detection> {
    let target = Target::new(mark_key.clone());
    Ok(detect(suspect, original, &target, &DetectOptions::default())?)
}

fn step(n: usize, text: &str) -> anyhow::Result<()> {
    outln!("{n}. {text}");
    Ok(())
}

fn say(d: &Detection) -> anyhow::Result<()> {
    outln!(
        "   z = {:.1}, {} -> {}",
        d.z,
        p_bound(d.p_value),
        if d.detected { "MARK FOUND" } else { "no mark (as expected)" }
    );
    Ok(())
}
