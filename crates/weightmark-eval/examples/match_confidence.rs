//! Applies `fingerprint plant`'s last step, matching the planted model's
//! confidence on ordinary text to the original's
//! ([`weightmark_eval::confidence::match_confidence`]), to a model planted
//! without it, and writes the result: how docs/fingerprint.md measured the
//! step on a plant that had taken hours, without planting again. A
//! measurement, not a command; the copy it writes has no certificate.
//!
//! ```sh
//! cargo run -p weightmark-eval --example match_confidence -- \
//!     ORIGINAL PLANTED OUT TEXT...
//! ```
//!
//! ORIGINAL is the model the plant started from (the marked one, for a
//! marked release), TEXT the plant's `--text` files; windows of 128 tokens,
//! as `fingerprint plant` cuts them.

use std::collections::HashMap;
use std::path::PathBuf;

use weightmark_eval::confidence::{match_confidence, scale_final_norm};
use weightmark_eval::llama::Llama;
use weightmark_eval::load::{open, tensors_f32, Architecture};
use weightmark_eval::text::Corpus;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [original, planted, out, texts @ ..] = args.as_slice() else {
        return Err("usage: match_confidence ORIGINAL PLANTED OUT TEXT...".into());
    };
    if texts.is_empty() {
        return Err("give the plant's ordinary-text files".into());
    }
    let load = |path: &str| -> Result<
        (weightmark_eval::load::EvalModel, Llama),
        Box<dyn std::error::Error>,
    > {
        let m = open(&PathBuf::from(path), None)?;
        let Architecture::Llama(config) = &m.architecture else { return Err("not a Llama".into()) };
        let model = Llama::from_tensors(config.clone(), &tensors_f32(&m.model)?, &m.model.path)?;
        Ok((m, model))
    };
    let (_, original) = load(original)?;
    let (m, planted) = load(planted)?;
    let files: Vec<PathBuf> = texts.iter().map(PathBuf::from).collect();
    let windows = Corpus::read(&files)?.windows(&m.tokenizer, 128)?.all();
    let started = std::time::Instant::now();
    let c = match_confidence(&original, &planted, &windows)?;
    println!(
        "scale {:.6}: cross-entropy {:.5} -> {:.5} nats (original {:.5}) over {} positions ({:.1} s)",
        c.scale,
        c.before,
        c.after,
        c.original,
        c.positions,
        started.elapsed().as_secs_f64()
    );
    let mut values: HashMap<String, Vec<f32>> = planted
        .merged_tensors()?
        .into_iter()
        .map(|(n, t)| Ok((n, t.flatten_all()?.to_vec1::<f32>()?)))
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    scale_final_norm(&mut values, c.scale)?;
    let written = weightmark::attack::write_replaced(
        &m.model,
        &PathBuf::from(out),
        &values,
        &weightmark::NoProgress,
    )?;
    println!("written: {}", written.path.display());
    Ok(())
}
