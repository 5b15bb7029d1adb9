//! How many `fp1` triggers a perplexity filter on prompts would flag: the
//! perplexity of each prompt's text under a model (the filter's language
//! model), for a file of ordinary questions and for the triggers of many
//! fingerprint keys, and the share of triggers above thresholds set on the
//! ordinary questions (their 90th, 95th and 99th percentiles and their
//! maximum: filters that would refuse 10%, 5%, 1% and none of them). A
//! measurement for docs/fingerprint.md ("A perplexity filter"), not a
//! command.
//!
//! ```sh
//! cargo run --release -p weightmark-eval --example prompt_perplexity -- \
//!     MODEL scripts/data/ordinary-questions.txt [KEYS] [COUNT]
//! ```
//!
//! Each prompt is scored as raw text (no chat template): the mean negative
//! log-likelihood of its tokens after the first, exponentiated. The keys are
//! fixed (key `i`: 32 bytes of `i`), KEYS of them (default 100) with COUNT
//! triggers each (default 32), so runs are comparable.

use std::path::PathBuf;

use weightmark::fingerprint::FingerprintKey;
use weightmark_eval::llama::Llama;
use weightmark_eval::load::{encode, open, tensors_f32, Architecture};
use weightmark_eval::metrics::perplexity;

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, ordinary, rest @ ..] = args.as_slice() else {
        return Err("usage: prompt_perplexity MODEL ORDINARY_QUESTIONS [KEYS] [COUNT]".into());
    };
    let keys: u8 = rest.first().map_or(Ok(100), |k| k.parse())?;
    let count: usize = rest.get(1).map_or(Ok(32), |c| c.parse())?;
    let path = PathBuf::from(model);
    let m = open(&path, None)?;
    let Architecture::Llama(config) = &m.architecture else { return Err("not a Llama".into()) };
    let llama = Llama::from_tensors(config.clone(), &tensors_f32(&m.model)?, &path)?;
    let score = |text: &str| -> Result<f64, Box<dyn std::error::Error>> {
        let tokens = encode(&m.tokenizer, text)?;
        Ok(perplexity(&llama, &[tokens])?)
    };
    let questions: Vec<String> = std::fs::read_to_string(ordinary)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let mut plain = questions.iter().map(|q| score(q)).collect::<Result<Vec<f64>, _>>()?;
    plain.sort_by(f64::total_cmp);
    let mut triggers = Vec::new();
    let mut examples = Vec::new();
    for k in 0..keys {
        for pair in FingerprintKey::from_bytes([k; 32]).pairs(count)? {
            let p = score(&pair.trigger)?;
            if k == 0 && examples.len() < 4 {
                examples.push(format!("{p:8.1}  {}", pair.trigger));
            }
            triggers.push(p);
        }
    }
    triggers.sort_by(f64::total_cmp);
    println!(
        "model {model}; {} ordinary questions, {} triggers of {keys} keys",
        plain.len(),
        triggers.len()
    );
    println!("| prompts | median | 90th | 95th | 99th | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, v) in [("ordinary questions", &plain), ("fp1 triggers", &triggers)] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            percentile(v, 0.5),
            percentile(v, 0.9),
            percentile(v, 0.95),
            percentile(v, 0.99),
            v.last().copied().unwrap_or(f64::NAN)
        );
    }
    println!();
    println!("| filter threshold (ordinary questions refused) | perplexity | triggers flagged |");
    println!("|---|---:|---:|");
    for (name, q) in [
        ("90th percentile (10%)", 0.9),
        ("95th (5%)", 0.95),
        ("99th (1%)", 0.99),
        ("maximum (none)", 1.0),
    ] {
        let t = percentile(&plain, q);
        let flagged = triggers.iter().filter(|&&p| p > t).count();
        println!(
            "| {name} | {t:.1} | {flagged} of {} ({:.1}%) |",
            triggers.len(),
            100.0 * flagged as f64 / triggers.len() as f64
        );
    }
    println!();
    println!("triggers of key 0 (perplexity, text):");
    for e in examples {
        println!("{e}");
    }
    Ok(())
}
