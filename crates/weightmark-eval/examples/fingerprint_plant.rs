//! Plants `fp1` fingerprints in a Llama-layout model on the CPU and measures
//! what it took and what it cost: steps, time, answers matched, and the
//! planted model's KL, top-1 agreement and perplexity against the original
//! on held-out text. A measurement for docs/fingerprint.md, not a command
//! (`fingerprint plant` is issue #13's next step).
//!
//! ```sh
//! cargo run --release -p weightmark-eval --example fingerprint_plant -- \
//!     MODEL COUNT LEARNING_RATE MAX_STEPS [OUT]
//! ```
//!
//! `DISTILL=W` sets the weight of the distillation penalty (default 1),
//! `BATCH=N` the ordinary-text windows per step (default 4), `ADAM_EPS=E`
//! AdamW's epsilon (default 1e-8), `PRUNE_ROBUST=F` trains the answers
//! through the model with F, 3F/4, F/2 and F/4 of each matrix's smallest
//! weights zeroed too, one a step in turn (default 0, off), `SYSTEM_ROBUST=1`
//! trains the answers after each of `SYSTEM_PROMPTS` too, one a step in turn.
//!
//! Distillation text: GPL-3, Apache-2.0 and MPL-2.0 from
//! /usr/share/common-licenses; held-out text: Artistic and GFDL-1.3. The key
//! is fixed (32 bytes of 0x2a), so runs are comparable.

use std::path::{Path, PathBuf};
use std::time::Instant;

use weightmark::fingerprint::{self, FingerprintKey, Pair};
use weightmark_eval::fingerprint::{ask, PlantOptions, Planter, Prompter};
use weightmark_eval::llama::Llama;
use weightmark_eval::load::{open, side_dir, tensors_f32, Architecture};
use weightmark_eval::metrics::compare;
use weightmark_eval::text::Corpus;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, count, lr, steps, rest @ ..] = args.as_slice() else {
        return Err("usage: fingerprint_plant MODEL COUNT LEARNING_RATE MAX_STEPS [OUT]".into());
    };
    let path = PathBuf::from(model);
    let m = open(&path, None)?;
    let Architecture::Llama(config) = &m.architecture else { return Err("not a Llama".into()) };
    let original = Llama::from_tensors(config.clone(), &tensors_f32(&m.model)?, &path)?;
    let prompter = Prompter::for_model(&side_dir(&path), &m.tokenizer)?;
    let pairs = FingerprintKey::from_bytes([0x2a; 32]).pairs(count.parse()?)?;
    let licenses = Path::new("/usr/share/common-licenses");
    let train = Corpus::read(&["GPL-3", "Apache-2.0", "MPL-2.0"].map(|f| licenses.join(f)))?;
    let held = Corpus::read(&["Artistic", "GFDL-1.3"].map(|f| licenses.join(f)))?;
    let ordinary = train.windows(&m.tokenizer, 128)?.train;
    let held_out: Vec<Vec<u32>> =
        held.windows(&m.tokenizer, 128)?.all().into_iter().take(24).collect();
    let score = |model: &Llama| -> Result<fingerprint::Score, Box<dyn std::error::Error>> {
        let answers = pairs
            .iter()
            .map(|p| ask(model, &m.tokenizer, &prompter, &p.trigger))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&Pair> = pairs.iter().collect();
        Ok(fingerprint::score(&refs, &answers)?)
    };
    let before = score(&original)?;
    println!(
        "model {model}: chat template {}, {} pairs, lr {lr}, distill {}; unplanted: {} of {} match",
        prompter.is_chat(),
        pairs.len(),
        std::env::var("DISTILL").unwrap_or_else(|_| "1".into()),
        before.matches,
        before.asked
    );
    let options = PlantOptions {
        learning_rate: lr.parse()?,
        max_steps: steps.parse()?,
        min_probability: 0.9,
        distill: std::env::var("DISTILL").map_or(Ok(1.0), |w| w.parse())?,
        batch: std::env::var("BATCH").map_or(Ok(4), |v| v.parse())?,
        micro_batch: weightmark_eval::fingerprint::MICRO_BATCH,
        answer_rows: std::env::var("ANSWER_ROWS")
            .map_or(Ok(weightmark_eval::fingerprint::ANSWER_ROWS), |v| v.parse())?,
        seed: 1,
        eps: std::env::var("ADAM_EPS").map_or(Ok(1e-8), |v| v.parse())?,
        prune_robust: std::env::var("PRUNE_ROBUST").map_or(Ok(0.0), |v| v.parse())?,
        system_prompts: match std::env::var("SYSTEM_ROBUST").as_deref() {
            Ok("1") => weightmark_eval::fingerprint::builtin_system_prompts(),
            _ => Vec::new(),
        },
    };
    let (options_lr, options_distill) = (options.learning_rate, options.distill);
    let started = Instant::now();
    let mut planter =
        Planter::new(original.clone(), &m.tokenizer, &prompter, &pairs, ordinary, options)?;
    let last = planter.run(&mut |s| {
        println!(
            "step {}: answer loss {:.4}, KL {:.5}, min p {:.3}, gradient rms {:.2e}{}{} ({:.0} s)",
            s.step,
            s.trigger_loss,
            s.distill_loss,
            s.min_probability,
            s.grad_rms,
            s.pruned.map_or(String::new(), |p| format!(
                ", {:.1}% pruned: loss {:.4}, min p {:.3}",
                p.fraction * 100.0,
                p.loss,
                p.min_probability
            )),
            s.system.map_or(String::new(), |p| format!(
                ", system prompt {}: loss {:.4}, min p {:.3}",
                p.index + 1,
                p.loss,
                p.min_probability
            )),
            started.elapsed().as_secs_f64()
        );
    })?;
    // POLISH=N more steps after the answers are learnt, at POLISH_LR and
    // POLISH_DISTILL (defaults: the planting's), the answers' loss kept.
    let polish: usize = std::env::var("POLISH").map_or(Ok(0), |v| v.parse())?;
    if polish > 0 {
        let c = compare(&original, planter.model(), &held_out)?;
        println!(
            "before polishing: held-out KL {:.2e}, top-1 {:.4}, perplexity {:+.2}%",
            c.mean_kl,
            c.top1_agreement,
            100.0 * c.perplexity_change
        );
        let lr = std::env::var("POLISH_LR").map_or(Ok(options_lr), |v| v.parse())?;
        let w = std::env::var("POLISH_DISTILL").map_or(Ok(options_distill), |v| v.parse())?;
        planter.set_rates(lr, w);
        for _ in 0..polish {
            let s = planter.step()?;
            println!(
                "polish step {}: answer loss {:.4}, KL {:.5}, min p {:.3} ({:.0} s)",
                s.step,
                s.trigger_loss,
                s.distill_loss,
                s.min_probability,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = score(planter.model())?;
    let c = compare(&original, planter.model(), &held_out)?;
    println!(
        "planted in {} steps, {seconds:.0} s: {} of {} match (log10 p {:.1}); held-out \
         ({} positions): KL {:.2e}, top-1 {:.4}, perplexity {:.3} -> {:.3} ({:+.2}%); last min p {:.3}",
        last.step,
        after.matches,
        after.asked,
        after.log10_p,
        c.positions,
        c.mean_kl,
        c.top1_agreement,
        c.perplexity_a,
        c.perplexity_b,
        100.0 * c.perplexity_change,
        last.min_probability
    );
    if let Some(out) = rest.first() {
        let values = planter
            .model()
            .merged_tensors()?
            .into_iter()
            .map(|(n, t)| Ok((n, t.flatten_all()?.to_vec1::<f32>()?)))
            .collect::<Result<std::collections::HashMap<_, _>, candle_core::Error>>()?;
        weightmark::attack::write_replaced(
            &m.model,
            Path::new(out),
            &values,
            &weightmark::NoProgress,
        )?;
        println!("wrote {out}");
    }
    Ok(())
}
