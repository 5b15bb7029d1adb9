//! Greedy decoding with a KV cache, prompts of one token length batched
//! (`Llama::greedy`, `fingerprint::ask_all`, what `fingerprint check` asks a
//! local model with), gives token for token what the plain decoding gives:
//! one prompt at a time, the whole sequence through the model for every
//! new token (`Llama::greedy_uncached`, `fingerprint::ask_uncached`). On
//! the tiny synthetic Llama (byte tokenizer) and on SmolLM2-135M-Instruct.
//! And the false-accusation measurement on SmolLM2 (ignored: minutes; run by
//! `scripts/fingerprint-wrong-keys`). Built with `--features eval`.

mod common;

use common::{real_model, write_llama_dir};
use weightmark::fingerprint::{binomial, normalise, score, words, FingerprintKey, Pair};
use weightmark::synth::LlamaShape;
use weightmark::Dtype;
use weightmark_eval::fingerprint::{answer_rule, ask, ask_all, ask_uncached, Prompter};
use weightmark_eval::llama::{Llama, NextToken};
use weightmark_eval::load::{encode, open, side_dir, tensors_f32, Architecture, EvalModel};

fn llama_of(m: &EvalModel) -> Llama {
    let Architecture::Llama(config) = &m.architecture else { panic!("not a Llama") };
    let tensors = tensors_f32(&m.model).unwrap_or_else(|e| panic!("{e}"));
    Llama::from_tensors(config.clone(), &tensors, &m.model.path).unwrap_or_else(|e| panic!("{e}"))
}

/// A judge for greedy decoding that ends rows at different steps, from the
/// tokens alone (so both decodings see the same rule): rows of one batch
/// end while others go on.
fn uneven_ends(_: &[u32], next: u32) -> weightmark_eval::Result<NextToken> {
    Ok(match next % 7 {
        0 => NextToken::End,
        1 => NextToken::AppendAndEnd,
        _ => NextToken::Append,
    })
}

/// Decodes `prompts` both ways; panics on the first difference and returns
/// how many tokens were compared.
fn assert_cached_equals_uncached(
    model: &Llama,
    prompts: &[Vec<u32>],
    max_new: usize,
    judge: &dyn Fn(&[u32], u32) -> weightmark_eval::Result<NextToken>,
) -> usize {
    let cached =
        model.greedy(prompts, max_new, &mut |a, n| judge(a, n)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cached.len(), prompts.len());
    let mut tokens = 0;
    for (p, c) in prompts.iter().zip(&cached) {
        let plain = model
            .greedy_uncached(p, max_new, &mut |a, n| judge(a, n))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&plain, c, "prompt of {} tokens", p.len());
        tokens += c.len();
    }
    tokens
}

#[test]
fn cached_batched_greedy_decoding_gives_the_tokens_of_plain_decoding_on_the_tiny_model() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = write_llama_dir(&tmp.path().join("tiny"), &LlamaShape::TINY, Dtype::F32, 3);
    let m = open(&dir, None).unwrap_or_else(|e| panic!("{e}"));
    let model = llama_of(&m);
    // Lengths with repeats (rows of one batch) and a one-token prompt.
    let prompts: Vec<Vec<u32>> = [5usize, 5, 5, 9, 9, 17, 17, 17, 17, 1, 30, 30]
        .iter()
        .enumerate()
        .map(|(r, &n)| (0..n as u32).map(|i| (i * 37 + 11 * r as u32 + 5) % 256).collect())
        .collect();
    let always = |_: &[u32], _: u32| Ok(NextToken::Append);
    assert_eq!(assert_cached_equals_uncached(&model, &prompts, 16, &always), 12 * 16);
    let n = assert_cached_equals_uncached(&model, &prompts, 16, &uneven_ends);
    println!("{n} tokens with uneven ends");
    assert!(n > 12 && n < 12 * 16, "rows ended at different steps: {n} tokens");

    // Through the fingerprint prompts and answer rule, as a check asks.
    let prompter = Prompter::for_model(&dir, &m.tokenizer).unwrap_or_else(|e| panic!("{e}"));
    let pairs = FingerprintKey::from_bytes([9; 32]).pairs(16).unwrap_or_else(|e| panic!("{e}"));
    let triggers: Vec<&str> = pairs.iter().map(|p| p.trigger.as_str()).collect();
    let batched =
        ask_all(&model, &m.tokenizer, &prompter, &triggers).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(batched.len(), 16);
    for (t, b) in triggers.iter().zip(&batched) {
        let plain = ask_uncached(&model, &m.tokenizer, &prompter, t);
        assert_eq!(&plain.unwrap_or_else(|e| panic!("{e}")), b, "{t}");
        let one = ask(&model, &m.tokenizer, &prompter, t);
        assert_eq!(&one.unwrap_or_else(|e| panic!("{e}")), b, "{t}");
    }
}

#[test]
fn cached_batched_greedy_decoding_gives_the_tokens_of_plain_decoding_on_smollm2() {
    let path = real_model!("smollm2-f16");
    let m = open(&path, None).unwrap_or_else(|e| panic!("{e}"));
    let model = llama_of(&m);
    let prompter =
        Prompter::for_model(&side_dir(&path), &m.tokenizer).unwrap_or_else(|e| panic!("{e}"));
    let pairs = FingerprintKey::from_bytes([5; 32]).pairs(4).unwrap_or_else(|e| panic!("{e}"));
    let prompts: Vec<Vec<u32>> = pairs
        .iter()
        .map(|p| {
            let text = prompter.prompt(&p.trigger).unwrap_or_else(|e| panic!("{e}"));
            encode(&m.tokenizer, &text).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    // The answer rule of a check (each answer ends with its first word).
    let rule = |a: &[u32], n: u32| answer_rule(&m.tokenizer, &prompter, a, n);
    let n = assert_cached_equals_uncached(&model, &prompts, 16, &rule);
    println!("{n} answer tokens");
    // Longer answers from prompts cut to one length: one batch of 4 rows,
    // 12 tokens each.
    let shortest = prompts.iter().map(Vec::len).min().unwrap_or(0);
    let cut: Vec<Vec<u32>> = prompts.iter().map(|p| p[..shortest].to_vec()).collect();
    let always = |_: &[u32], _: u32| Ok(NextToken::Append);
    assert_eq!(assert_cached_equals_uncached(&model, &cut, 12, &always), 4 * 12);
}

/// No false accusation on a real model (issue #13): the unfingerprinted
/// SmolLM2-135M-Instruct asked the 32 triggers of each of
/// `WEIGHTMARK_WRONG_KEYS` wrong keys (default 100) through its chat
/// template, as `fingerprint check` asks. Prints the histogram of matches
/// per key next to the exact binomial expectation; asserts what the bound
/// says (keys with m >= 4: expected 7.7e-6 each, so at most one; all matches
/// together within the binomial mean plus 5 sd). Key `k` is the fingerprint
/// key whose bytes are `k` (u32, little-endian), zeros, then 0xee.
#[test]
#[ignore = "minutes of CPU on SmolLM2; run by scripts/fingerprint-wrong-keys"]
fn smollm2_wrong_keys_match_as_the_binomial_bound_says() {
    let path = real_model!("smollm2-f16");
    let keys: u32 =
        std::env::var("WEIGHTMARK_WRONG_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let m = open(&path, None).unwrap_or_else(|e| panic!("{e}"));
    let model = llama_of(&m);
    let prompter =
        Prompter::for_model(&side_dir(&path), &m.tokenizer).unwrap_or_else(|e| panic!("{e}"));
    let started = std::time::Instant::now();
    let mut histogram = [0u64; 33];
    let (mut candidates, mut asked) = (0usize, 0usize);
    let mut examples: Vec<String> = Vec::new();
    // Ten keys per call: their 320 triggers decoded side by side.
    for first in (0..keys).step_by(10) {
        let sets: Vec<Vec<Pair>> = (first..keys.min(first + 10))
            .map(|k| {
                let mut bytes = [0u8; 32];
                bytes[..4].copy_from_slice(&k.to_le_bytes());
                bytes[31] = 0xee;
                FingerprintKey::from_bytes(bytes).pairs(32).unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        let triggers: Vec<&str> = sets.iter().flatten().map(|p| p.trigger.as_str()).collect();
        let answers =
            ask_all(&model, &m.tokenizer, &prompter, &triggers).unwrap_or_else(|e| panic!("{e}"));
        for (pairs, answers) in sets.iter().zip(answers.chunks(32)) {
            let refs: Vec<&Pair> = pairs.iter().collect();
            histogram[score(&refs, answers).unwrap_or_else(|e| panic!("{e}")).matches] += 1;
            asked += answers.len();
            candidates +=
                answers.iter().filter(|a| words::ANSWERS.contains(&normalise(a).as_str())).count();
            if examples.len() < 6 {
                examples.extend(answers.iter().take(2).map(|a| format!("{a:?}")));
            }
        }
        println!(
            "{} keys in {:.0} s: matches per key, m = 0..5: {:?}",
            keys.min(first + 10),
            started.elapsed().as_secs_f64(),
            &histogram[..6]
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let total: u64 = histogram.iter().enumerate().map(|(j, n)| j as u64 * n).sum();
    println!(
        "{keys} wrong keys x 32 triggers: {asked} answers in {seconds:.0} s ({:.2} s each); \
         {candidates} are candidate words (e.g. {}); {total} matches in all",
        seconds / asked.max(1) as f64,
        examples.join(", ")
    );
    println!("| matches m | keys | expected keys, Binomial(32, 1/256) |");
    println!("|---:|---:|---:|");
    let q = 1.0 / words::ANSWERS.len() as f64;
    for (j, n) in histogram.iter().enumerate().take(5) {
        let exactly =
            binomial::upper_tail(32, q, j as u64) - binomial::upper_tail(32, q, j as u64 + 1);
        println!("| {j} | {n} | {:.3} |", exactly * f64::from(keys));
    }
    let four: u64 = histogram[4..].iter().sum();
    println!("| 4 or more | {four} | {:.1e} |", binomial::upper_tail(32, q, 4) * f64::from(keys));
    assert!(four <= 1, "{four} keys matched 4 or more: {histogram:?}");
    // At most Binomial(32 keys, 1/256) matches: mean keys/8, sd about
    // sqrt(keys/8); mean plus 5 sd.
    let mean = f64::from(keys) * 32.0 * q;
    assert!((total as f64) <= mean + 5.0 * mean.sqrt() + 1.0, "{total} matches: {histogram:?}");
}
