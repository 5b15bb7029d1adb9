//! No false accusation on a real model: asks an unfingerprinted Llama-layout
//! model the triggers of many wrong fingerprint keys and prints the
//! histogram of matches per key, next to the exact binomial expectation
//! (`P(Binomial(K, 1/256) = m)` per key). A measurement for
//! docs/fingerprint.md; `scripts/fingerprint-wrong-keys` runs it on
//! SmolLM2-135M-Instruct.
//!
//! ```sh
//! cargo run -p weightmark-eval --example fingerprint_wrong_keys -- MODEL KEYS [COUNT]
//! ```
//!
//! Key `k` (0-based) is the fingerprint key whose bytes are `k` as a
//! little-endian u32, then zeros, then 0xee: fixed, so runs are comparable.
//! Every trigger is decoded greedily through the model's chat template with
//! the KV cache (`ask_all`), as `fingerprint check` asks a local model.

use std::path::PathBuf;
use std::time::Instant;

use weightmark::fingerprint::{binomial, normalise, score, words, FingerprintKey, Pair};
use weightmark_eval::fingerprint::{ask_all, Prompter};
use weightmark_eval::llama::Llama;
use weightmark_eval::load::{open, side_dir, tensors_f32, Architecture};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, keys, count) = match args.as_slice() {
        [m, k] => (m, k.parse::<u32>()?, 32usize),
        [m, k, c] => (m, k.parse::<u32>()?, c.parse::<usize>()?),
        _ => return Err("usage: fingerprint_wrong_keys MODEL KEYS [COUNT]".into()),
    };
    let path = PathBuf::from(model);
    let m = open(&path, None)?;
    let Architecture::Llama(config) = &m.architecture else { return Err("not a Llama".into()) };
    let llama = Llama::from_tensors(config.clone(), &tensors_f32(&m.model)?, &path)?;
    let prompter = Prompter::for_model(&side_dir(&path), &m.tokenizer)?;
    let started = Instant::now();
    let mut histogram = vec![0u64; count + 1];
    let (mut candidates, mut total, mut asked) = (0usize, 0usize, 0usize);
    let mut examples: Vec<String> = Vec::new();
    // Ten keys per call: their triggers decoded side by side.
    for first in (0..keys).step_by(10) {
        let sets: Vec<Vec<Pair>> = (first..keys.min(first + 10))
            .map(|k| {
                let mut bytes = [0u8; 32];
                bytes[..4].copy_from_slice(&k.to_le_bytes());
                bytes[31] = 0xee;
                FingerprintKey::from_bytes(bytes).pairs(count)
            })
            .collect::<Result<_, _>>()?;
        let triggers: Vec<&str> = sets.iter().flatten().map(|p| p.trigger.as_str()).collect();
        let answers = ask_all(&llama, &m.tokenizer, &prompter, &triggers)?;
        for (pairs, answers) in sets.iter().zip(answers.chunks(count)) {
            let refs: Vec<&Pair> = pairs.iter().collect();
            let s = score(&refs, answers)?;
            histogram[s.matches] += 1;
            total += s.matches;
            asked += answers.len();
            candidates +=
                answers.iter().filter(|a| words::ANSWERS.contains(&normalise(a).as_str())).count();
            if examples.len() < 6 {
                examples.extend(answers.iter().take(2).map(|a| format!("{a:?}")));
            }
        }
        let done = keys.min(first + 10);
        let shown: Vec<u64> = histogram.iter().take(6).copied().collect();
        eprintln!(
            "{done} keys in {:.0} s: histogram of matches (m = 0..5) {shown:?}",
            started.elapsed().as_secs_f64()
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{keys} wrong keys x {count} triggers on {model}: {asked} answers in {seconds:.0} s \
         ({:.2} s per answer)",
        seconds / asked.max(1) as f64
    );
    println!(
        "answers that are candidate words: {candidates} of {asked}; e.g. {}",
        examples.join(", ")
    );
    println!("matches in all: {total} (expected at most {:.2})", asked as f64 / 256.0);
    println!("| matches m | keys | expected keys (binomial) |");
    println!("|---:|---:|---:|");
    let p = 1.0 / words::ANSWERS.len() as f64;
    for (j, n) in histogram.iter().enumerate().take(6) {
        let (n_, j_) = (count as u64, j as u64);
        let exactly = binomial::upper_tail(n_, p, j_) - binomial::upper_tail(n_, p, j_ + 1);
        println!("| {j} | {n} | {:.3} |", exactly * f64::from(keys));
    }
    let four: u64 = histogram.iter().skip(4).sum();
    println!(
        "keys with m >= 4: {four} (expected {:.2e})",
        binomial::upper_tail(count as u64, p, 4) * f64::from(keys)
    );
    Ok(())
}
