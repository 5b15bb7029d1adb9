//! The eval commands, built with `--features eval`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::json;
use weightmark_eval::bert::SentenceEncoder;
use weightmark_eval::finetune::{FinetuneOptions, Method, Trainer};
use weightmark_eval::llama::Llama;
use weightmark_eval::load::{self, tensors_f32, Architecture, EvalModel};
use weightmark_eval::metrics::{compare, compare_embeddings, perplexity};
use weightmark_eval::text::{Corpus, Split};

use weightmark::attack::ActivationStats;
use weightmark::bench::{measure, scratch_path, Row, SweepInputs};
use weightmark::{apply_attack, Attack, NoProgress};
use weightmark_eval::calibrate::{activation_stats, calibration_windows};
use weightmark_eval::curve::{finetune_curve, CurvePlan};

use crate::cli::{
    EvalArgs, EvalKind, FinetuneArgs, RobustnessArgs, SmoothArgs, TextArgs, TextSplit,
};
use crate::{outln, Outcome};

/// Default learning rates: typical for full fine-tuning and for LoRA.
pub const DEFAULT_LR_FULL: f64 = 1e-4;
/// See [`DEFAULT_LR_FULL`].
pub const DEFAULT_LR_LORA: f64 = 1e-3;

/// Runs `weightmark eval`.
pub fn run(args: &EvalArgs) -> anyhow::Result<Outcome> {
    match &args.kind {
        EvalKind::Ppl { model, split, text, json } => ppl(model, *split, text, *json),
        EvalKind::Compare { a, b, text, json } => compare_models(a, b, text, *json),
    }
}

/// Builds the decoder of an opened model, or says why it is not one.
pub fn decoder(m: &EvalModel) -> anyhow::Result<Llama> {
    let Architecture::Llama(config) = &m.architecture else {
        bail!(
            "{}: a BERT-layout encoder has no next-token perplexity; use `eval compare` for \
             embedding similarity",
            crate::format::path(&m.model.path)
        )
    };
    Ok(Llama::from_tensors(config.clone(), &tensors_f32(&m.model)?, &m.model.path)?)
}

/// At most `max` items (0: all).
fn limit(mut v: Vec<Vec<u32>>, max: usize) -> Vec<Vec<u32>> {
    if max > 0 {
        v.truncate(max);
    }
    v
}

fn read_windows(m: &EvalModel, text: &TextArgs) -> anyhow::Result<(Corpus, Split)> {
    let corpus = Corpus::read(&text.text)?;
    let split = corpus.windows(&m.tokenizer, text.seq)?;
    for p in &split.too_short {
        eprintln!(
            "weightmark: note: {} is shorter than one window of {} tokens",
            crate::format::path(p),
            text.seq
        );
    }
    Ok((corpus, split))
}

fn ppl(model: &Path, split_arg: TextSplit, text: &TextArgs, json: bool) -> anyhow::Result<Outcome> {
    let m = load::open(model, text.tokenizer.as_deref())?;
    let llama = decoder(&m)?;
    let (_, split) = read_windows(&m, text)?;
    let (windows, which) = match split_arg {
        TextSplit::HeldOut => (split.held_out, "held-out"),
        TextSplit::Train => (split.train, "train"),
        TextSplit::All => (split.all(), "all"),
    };
    let windows = limit(windows, text.max_windows);
    let value = perplexity(&llama, &windows)
        .with_context(|| format!("{}: perplexity failed", crate::format::path(model)))?;
    let tokens = windows.len() * text.seq;
    if json {
        outln!(
            "{}",
            json!({
                "model": model.display().to_string(),
                "perplexity": value,
                "split": which,
                "windows": windows.len(),
                "tokens_predicted": tokens,
                "seq": text.seq,
            })
        );
    } else {
        outln!(
            "perplexity {value:.4} over {tokens} predicted tokens ({} windows of {}, split {which})",
            windows.len(),
            text.seq
        );
    }
    Ok(Outcome::Success)
}

/// The tokenizer used for both models of a comparison: the one given, else A's.
fn shared_tokenizer(a: &Path, text: &TextArgs) -> PathBuf {
    text.tokenizer.clone().unwrap_or_else(|| load::side_dir(a).join("tokenizer.json"))
}

fn compare_models(a: &Path, b: &Path, text: &TextArgs, json: bool) -> anyhow::Result<Outcome> {
    let tokenizer = shared_tokenizer(a, text);
    let ma = load::open(a, Some(&tokenizer))?;
    let mb = load::open_like(b, a, Some(&tokenizer))?;
    match (&ma.architecture, &mb.architecture) {
        (Architecture::Llama(_), Architecture::Llama(_)) => {
            let (_, split) = read_windows(&ma, text)?;
            let windows = limit(split.all(), text.max_windows);
            let c = compare(&decoder(&ma)?, &decoder(&mb)?, &windows)?;
            if json {
                outln!("{}", serde_json::to_string(&c)?);
            } else {
                outln!(
                    "perplexity {:.4} -> {:.4} ({:+.3}%), mean KL {:.3e} nats, top-1 agreement {:.3}% over {} positions",
                    c.perplexity_a,
                    c.perplexity_b,
                    100.0 * c.perplexity_change,
                    c.mean_kl,
                    100.0 * c.top1_agreement,
                    c.positions
                );
            }
        }
        (Architecture::Bert(ca), Architecture::Bert(cb)) => {
            let corpus = Corpus::read(&text.text)?;
            let mut paragraphs = corpus.paragraphs(5);
            if text.max_windows > 0 {
                paragraphs.truncate(text.max_windows);
            }
            let ea = SentenceEncoder::new(ca, tensors_f32(&ma.model)?, ma.tokenizer.clone())?;
            let eb = SentenceEncoder::new(cb, tensors_f32(&mb.model)?, mb.tokenizer.clone())?;
            let c = compare_embeddings(&ea, &eb, &paragraphs)?;
            if json {
                outln!("{}", serde_json::to_string(&c)?);
            } else {
                outln!(
                    "embedding cosine: mean {:.6}, min {:.6} over {} paragraphs",
                    c.mean_cosine,
                    c.min_cosine,
                    c.texts
                );
            }
        }
        _ => bail!(
            "{} and {} are different architectures",
            crate::format::path(a),
            crate::format::path(b)
        ),
    }
    Ok(Outcome::Success)
}

/// Runs `weightmark attack finetune`.
pub fn finetune(args: &FinetuneArgs) -> anyhow::Result<Outcome> {
    let io = &args.io;
    let m = load::open(&io.model, args.text.tokenizer.as_deref())?;
    let destination = weightmark::resolve_output(&m.model, &io.output)?;
    crate::commands::attack::refuse_existing(&destination, io.force)?;
    let llama = decoder(&m)?;
    let (_, split) = read_windows(&m, &args.text)?;
    let held_out = limit(split.held_out.clone(), args.text.max_windows);
    let method = match args.lora {
        Some(rank) => Method::Lora { rank },
        None => Method::Full,
    };
    let lr = args.lr.unwrap_or(match method {
        Method::Full | Method::Layers { .. } => DEFAULT_LR_FULL,
        Method::Lora { .. } => DEFAULT_LR_LORA,
    });
    let options = FinetuneOptions {
        method,
        learning_rate: lr,
        weight_decay: args.weight_decay,
        batch: args.batch,
        seed: io.seed,
    };
    let before = (!held_out.is_empty()).then(|| perplexity(&llama, &held_out)).transpose()?;
    let train_windows = split.train.len();
    let mut trainer = Trainer::new(llama, split.train, &options)?;
    let started = std::time::Instant::now();
    for step in 1..=args.steps {
        let loss = trainer.step()?;
        if args.log_every > 0 && (step % args.log_every == 0 || step == args.steps) {
            eprintln!(
                "step {step}/{}: loss {loss:.4} ({:.1} s/step)",
                args.steps,
                started.elapsed().as_secs_f64() / step as f64
            );
        }
    }
    let after =
        (!held_out.is_empty()).then(|| perplexity(trainer.model(), &held_out)).transpose()?;
    let report = trainer
        .write(&m.model, &io.output)
        .with_context(|| format!("could not write {}", crate::format::path(&io.output)))?;
    outln!(
        "{method} fine-tuning: {} steps of {} x {} tokens (lr {lr:e}, seed {}) on {train_windows} training windows -> {}",
        args.steps,
        args.batch,
        args.text.seq,
        io.seed,
        crate::format::path(&report.path)
    );
    match (before, after) {
        (Some(b), Some(a)) => outln!(
            "held-out perplexity {b:.4} -> {a:.4} ({:+.1}%) over {} windows",
            100.0 * (a / b - 1.0),
            held_out.len()
        ),
        _ => outln!("no held-out windows (the text is shorter than ten windows)"),
    }
    outln!(
        "relative RMS change of the marked weights: {:.3}%",
        100.0 * report.damage.relative_rms_change()
    );
    Ok(Outcome::Success)
}

/// The fine-tuning attacks of `bench robustness`: one training run per entry
/// of `plan` (`finetune-full` or `finetune-lora`, with its checkpoints) on
/// the marked model.
pub fn finetune_rows(
    args: &RobustnessArgs,
    inputs: &SweepInputs<'_>,
    plan: &[(String, Vec<usize>)],
) -> anyhow::Result<Vec<Row>> {
    let m = load::open(&args.model, None)?;
    let llama = decoder(&m)?;
    let layers = match plan.iter().any(|(name, _)| name == "finetune-layers") {
        true => {
            let Some(original) = &args.original else {
                bail!("finetune-layers needs --original: the blocks trained are those that differ most from it");
            };
            let reference = decoder(&load::open_like(original, &args.model, None)?)?;
            Some(most_changed(&llama, &reference, args.finetune.finetune_layers)?)
        }
        false => None,
    };
    let seed = args.seed;
    let args = &args.finetune;
    let text = TextArgs {
        text: args.text.clone(),
        seq: args.seq,
        max_windows: args.eval_windows,
        tokenizer: None,
    };
    let (_, split) = read_windows(&m, &text)?;
    let held_out = limit(split.held_out.clone(), args.eval_windows);
    let mut rows = Vec::new();
    for (name, checkpoints) in plan {
        let (method, learning_rate) = match (name.as_str(), layers) {
            ("finetune-lora", _) => (Method::Lora { rank: args.lora_rank }, args.lr_lora),
            ("finetune-layers", Some(method)) => (method, args.lr_full),
            _ => (Method::Full, args.lr_full),
        };
        let options =
            FinetuneOptions { method, learning_rate, weight_decay: 0.0, batch: args.batch, seed };
        let curve = CurvePlan { options, checkpoints: checkpoints.clone() };
        rows.extend(finetune_curve(inputs, llama.clone(), split.train.clone(), &held_out, &curve)?);
    }
    Ok(rows)
}

/// The `n` blocks of `model` that differ most from `reference`
/// ([`Llama::block_changes`]), as a training method; printed, since the
/// choice is part of the result.
fn most_changed(model: &Llama, reference: &Llama, n: usize) -> anyhow::Result<Method> {
    let changes = model.block_changes(reference)?;
    if n == 0 || n > changes.len() {
        bail!("--finetune-layers {n}: choose between 1 and {} blocks", changes.len());
    }
    let mut order: Vec<usize> = (0..changes.len()).collect();
    order.sort_by(|&a, &b| changes[b].total_cmp(&changes[a]).then(a.cmp(&b)));
    order.truncate(n);
    order.sort_unstable();
    let listed: Vec<String> =
        order.iter().map(|&l| format!("{l} ({:.3}%)", 100.0 * changes[l])).collect();
    eprintln!(
        "bench: finetune-layers trains blocks {} (relative change from --original; median {:.3}%)",
        listed.join(", "),
        100.0 * median(&changes)
    );
    Ok(Method::layers(&order)?)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The activation statistics of the model `m` over `tokens` tokens of
/// `text` in windows of `seq` (taken from the files in turn).
fn calibrate(
    m: &EvalModel,
    text: &[PathBuf],
    tokens: usize,
    seq: usize,
) -> anyhow::Result<ActivationStats> {
    let llama = decoder(m)?;
    let corpus = Corpus::read(text)?;
    let windows = calibration_windows(&corpus, &m.tokenizer, tokens, seq)?;
    activation_stats(&llama, &windows)
        .with_context(|| format!("{}: calibration failed", crate::format::path(&m.model.path)))
}

/// The smoothing `attack smooth` asks for: its activation statistics
/// measured on the model over the calibration text.
pub fn smooth_attack(args: &SmoothArgs) -> anyhow::Result<Attack> {
    // Alpha is checked before the forward passes.
    if !(0.0..=1.0).contains(&args.alpha) {
        bail!("smooth: alpha {} must be between 0 and 1", args.alpha);
    }
    let m = load::open(&args.io.model, args.tokenizer.as_deref())?;
    let activations = calibrate(&m, &args.text, args.tokens, args.seq)?;
    Ok(Attack::Smooth { activations, alpha: args.alpha })
}

/// The smoothing rows of `bench robustness`: the activation statistics are
/// measured once on the marked model, then each level (alpha) is applied and
/// measured.
pub fn smooth_rows(
    args: &RobustnessArgs,
    inputs: &SweepInputs<'_>,
    alphas: &[f64],
) -> anyhow::Result<Vec<Row>> {
    let m = load::open(&args.model, None)?;
    let b = &args.finetune;
    let activations = calibrate(&m, &b.text, b.calibration_tokens, b.seq)?;
    drop(m);
    let mut rows = Vec::with_capacity(alphas.len());
    for &alpha in alphas {
        let started = std::time::Instant::now();
        let out = scratch_path(inputs.marked, inputs.scratch, &format!("smooth-{alpha}"));
        let attack = Attack::Smooth { activations: activations.clone(), alpha };
        let damage = apply_attack(inputs.marked, &out, &attack, inputs.seed, &NoProgress)?
            .damage
            .relative_rms_change();
        let row = measure(inputs, &out, "smooth", alpha, damage, started)?;
        (inputs.on_row)(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// The second detector of `bench robustness` on a fingerprinted release: each
/// attacked model is asked every trigger of the release's fingerprint `key`
/// (`count` pairs) and as many of a fixed wrong key's, through the config,
/// tokenizer and chat template beside the marked model `marked`.
pub fn fingerprint_detector(
    marked: &Path,
    key: weightmark::fingerprint::FingerprintKey,
    count: usize,
) -> anyhow::Result<Option<super::FingerprintDetector>> {
    let side = load::side_dir(marked);
    let wrong = weightmark::fingerprint::FingerprintKey::from_bytes([0xa5; 32]);
    Ok(Some(Box::new(move |path: &Path| {
        let scores = weightmark_eval::fingerprint::read_fingerprints(
            path,
            &side,
            &[(&key, count), (&wrong, count)],
        )
        .map_err(|e| weightmark::Error::invalid(format!("reading the fingerprint: {e}")))?;
        let [right, wrong] = scores.as_slice() else {
            return Err(weightmark::Error::invalid("reading the fingerprint: two scores expected"));
        };
        Ok(weightmark::bench::FingerprintReading {
            asked: right.asked,
            matches: right.matches,
            p_value: right.p_value,
            log10_p: right.log10_p,
            wrong_key_matches: wrong.matches,
        })
    })))
}
