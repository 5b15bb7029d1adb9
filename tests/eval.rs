//! The eval crate on a tiny synthetic Llama (forward pass against
//! `candle_transformers`, real training steps, LoRA merging) and on the real
//! models (SmolLM2 completes a sentence, MiniLM embeds sentences sensibly, the
//! default mark costs SmolLM2 no more than re-rounding it to bf16).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, D};
use common::{license_text, real_model, write_llama_dir};
use weightmark::fingerprint::{self, FingerprintKey, Pair};
use weightmark::synth::LlamaShape;
use weightmark::{Dtype, Model};
use weightmark_eval::bert::SentenceEncoder;
use weightmark_eval::finetune::{FinetuneOptions, Method, Trainer};
use weightmark_eval::fingerprint::{
    ask, ask_all_after, builtin_system_prompts, Checkpointing, PlantOptions, Planter, Prompter,
};
use weightmark_eval::llama::Llama;
use weightmark_eval::load::{encode, open, tensors_f32, Architecture, EvalModel};
use weightmark_eval::metrics::{compare, compare_embeddings, perplexity};
use weightmark_eval::text::Corpus;

fn llama_of(m: &EvalModel) -> Llama {
    let Architecture::Llama(config) = &m.architecture else { panic!("not a Llama") };
    let tensors = tensors_f32(&m.model).unwrap_or_else(|e| panic!("{e}"));
    Llama::from_tensors(config.clone(), &tensors, &m.model.path).unwrap_or_else(|e| panic!("{e}"))
}

fn tiny_dir(tmp: &tempfile::TempDir, name: &str, seed: u64) -> PathBuf {
    write_llama_dir(&tmp.path().join(name), &LlamaShape::TINY, Dtype::F32, seed)
}

/// Largest |difference| between our last-position logits and
/// `candle_transformers`' Llama on `ids`, relative to the largest logit.
fn difference_from_reference(m: &EvalModel, ids: Vec<u32>) -> f32 {
    let ours = llama_of(m);
    let config_path = weightmark_eval::load::side_dir(&m.model.path).join("config.json");
    let text = std::fs::read_to_string(config_path).unwrap_or_else(|e| panic!("{e}"));
    let reference_config: candle_transformers::models::llama::LlamaConfig =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let reference_config = reference_config.into_config(false);
    let tensors = tensors_f32(&m.model).unwrap_or_else(|e| panic!("{e}"));
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let reference = candle_transformers::models::llama::Llama::load(vb, &reference_config)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut cache = candle_transformers::models::llama::Cache::new(
        false,
        DType::F32,
        &reference_config,
        &Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let n = ids.len();
    let input = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    let theirs = reference.forward(&input, 0, &mut cache).unwrap_or_else(|e| panic!("{e}"));
    let mine = ours.forward(&input).unwrap_or_else(|e| panic!("{e}"));
    let last =
        mine.narrow(1, n - 1, 1).and_then(|t| t.flatten_all()).unwrap_or_else(|e| panic!("{e}"));
    let theirs = theirs.flatten_all().unwrap_or_else(|e| panic!("{e}"));
    let diff: f32 = (last - &theirs)
        .and_then(|d| d.abs())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar())
        .unwrap_or_else(|e| panic!("{e}"));
    let scale: f32 = theirs.abs().and_then(|d| d.max(0)).and_then(|d| d.to_scalar()).unwrap_or(1.0);
    println!("max |logit difference| {diff:e} (largest logit {scale})");
    diff / scale.max(1.0)
}

#[test]
fn forward_pass_matches_candle_transformers() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let m = open(&tiny_dir(&tmp, "tiny", 3), None).unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<u32> = (0..24u32).map(|i| (i * 37 + 5) % 256).collect();
    let diff = difference_from_reference(&m, ids);
    assert!(diff <= 1e-4, "logits differ by {diff} of the largest");
}

#[test]
fn smollm2_forward_pass_matches_candle_transformers() {
    if !common::has_license_text() {
        return;
    }
    // Tied embeddings, grouped-query attention (9 / 3 heads), RoPE base 1e5.
    let m = open(&real_model!("smollm2-f16"), None).unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string(license_text()).unwrap_or_else(|e| panic!("{e}"));
    let mut ids = encode(&m.tokenizer, &text).unwrap_or_else(|e| panic!("{e}"));
    ids.truncate(96);
    let diff = difference_from_reference(&m, ids);
    assert!(diff <= 1e-4, "logits differ by {diff} of the largest");
}

/// Trains the tiny model on the GPL for `steps` and returns (held-out
/// perplexity before, after, the trainer, the original tensors).
fn train_tiny(
    method: Method,
    lr: f64,
    steps: usize,
) -> (f64, f64, Trainer, HashMap<String, Vec<f32>>) {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tiny_dir(&tmp, "tiny", 5);
    let m = open(&dir, None).unwrap_or_else(|e| panic!("{e}"));
    let model = llama_of(&m);
    let corpus = Corpus::read(&[license_text()]).unwrap_or_else(|e| panic!("{e}"));
    let split = corpus.windows(&m.tokenizer, 64).unwrap_or_else(|e| panic!("{e}"));
    let held_out: Vec<Vec<u32>> = split.held_out.iter().take(16).cloned().collect();
    let before = perplexity(&model, &held_out).unwrap_or_else(|e| panic!("{e}"));
    let original: HashMap<String, Vec<f32>> = model
        .merged_tensors()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|(n, t)| {
            (n, t.flatten_all().and_then(|t| t.to_vec1()).unwrap_or_else(|e| panic!("{e}")))
        })
        .collect();
    let options =
        FinetuneOptions { method, learning_rate: lr, weight_decay: 0.0, batch: 8, seed: 7 };
    let mut trainer = Trainer::new(model, split.train, &options).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..steps {
        trainer.step().unwrap_or_else(|e| panic!("{e}"));
    }
    let after = perplexity(trainer.model(), &held_out).unwrap_or_else(|e| panic!("{e}"));
    println!("{method}: held-out perplexity {before:.2} -> {after:.2} after {steps} steps");
    (before, after, trainer, original)
}

#[test]
fn full_fine_tuning_learns_held_out_text() {
    if !common::has_license_text() {
        return;
    }
    let (before, after, trainer, original) = train_tiny(Method::Full, 3e-3, 25);
    assert!(after < 0.7 * before, "held-out perplexity {before} -> {after}: less than a 30% fall");
    let trained = trainer.merged_values().unwrap_or_else(|e| panic!("{e}"));
    let changed = trained.iter().filter(|(n, v)| original[n.as_str()] != **v).count();
    assert_eq!(changed, trained.len(), "full fine-tuning must move every tensor");
}

#[test]
fn lora_learns_and_merges_into_the_block_matrices_only() {
    if !common::has_license_text() {
        return;
    }
    let (before, after, trainer, original) = train_tiny(Method::Lora { rank: 8 }, 1e-2, 25);
    assert!(after < 0.85 * before, "held-out perplexity {before} -> {after}");
    let trained = trainer.merged_values().unwrap_or_else(|e| panic!("{e}"));
    for (name, values) in &trained {
        let is_block_matrix = name.contains("_proj.");
        assert_eq!(original[name.as_str()] != *values, is_block_matrix, "{name}");
    }
    // The merged weights compute what the model with adapters computes.
    let m = Llama::from_tensors(
        trainer.model().config.clone(),
        &trained
            .iter()
            .map(|(n, v)| {
                let shape = trainer
                    .model()
                    .merged_tensors()
                    .unwrap_or_else(|e| panic!("{e}"))
                    .into_iter()
                    .find(|(m, _)| m == n)
                    .map(|(_, t)| t.dims().to_vec())
                    .unwrap_or_default();
                (
                    n.clone(),
                    Tensor::from_vec(v.clone(), shape, &Device::Cpu)
                        .unwrap_or_else(|e| panic!("{e}")),
                )
            })
            .collect(),
        "merged".as_ref(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let input = Tensor::from_vec((0..32u32).collect::<Vec<_>>(), (1, 32), &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    let a = trainer.model().forward(&input).unwrap_or_else(|e| panic!("{e}"));
    let b = m.forward(&input).unwrap_or_else(|e| panic!("{e}"));
    let diff: f32 = (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(diff < 1e-3, "merged model differs from the adapted one by {diff}");
}

#[test]
fn training_chosen_blocks_moves_them_only_and_block_changes_finds_them() {
    if !common::has_license_text() {
        return;
    }
    let method = Method::layers(&[1]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(method.to_string(), "layers-1");
    let (before, after, trainer, original) = train_tiny(method, 3e-3, 10);
    assert!(after < before, "held-out perplexity {before} -> {after}");
    let trained = trainer.merged_values().unwrap_or_else(|e| panic!("{e}"));
    for (name, values) in &trained {
        let in_block_1 = name.starts_with("model.layers.1.");
        assert_eq!(original[name.as_str()] != *values, in_block_1, "{name}");
    }
    // block_changes sees block 1 moved and no other.
    let shapes: HashMap<String, Vec<usize>> = trainer
        .model()
        .merged_tensors()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|(n, t)| (n, t.dims().to_vec()))
        .collect();
    let rebuild = |values: &HashMap<String, Vec<f32>>| {
        let tensors = values
            .iter()
            .map(|(n, v)| {
                let t = Tensor::from_vec(v.clone(), shapes[n.as_str()].clone(), &Device::Cpu);
                (n.clone(), t.unwrap_or_else(|e| panic!("{e}")))
            })
            .collect();
        Llama::from_tensors(trainer.model().config.clone(), &tensors, "m".as_ref())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let changes = rebuild(&trained).block_changes(&rebuild(&original)).unwrap_or_default();
    assert_eq!(changes.len(), trainer.model().config.num_hidden_layers, "{changes:?}");
    for (i, c) in changes.iter().enumerate() {
        assert_eq!(*c > 0.0, i == 1, "block {i}: change {c}");
    }
    // Blocks past the model's are refused, as is an empty choice.
    assert!(Method::layers(&[]).is_err() && Method::layers(&[128]).is_err());
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut model =
        llama_of(&open(&tiny_dir(&tmp, "tiny", 5), None).unwrap_or_else(|e| panic!("{e}")));
    assert!(model.make_blocks_trainable(1 << 100).is_err());
}

#[test]
fn training_is_reproducible() {
    if !common::has_license_text() {
        return;
    }
    let (_, _, a, _) = train_tiny(Method::Lora { rank: 4 }, 1e-2, 3);
    let (_, _, b, _) = train_tiny(Method::Lora { rank: 4 }, 1e-2, 3);
    assert_eq!(
        a.merged_values().unwrap_or_else(|e| panic!("{e}")),
        b.merged_values().unwrap_or_else(|e| panic!("{e}"))
    );
}

#[test]
fn smollm2_completes_the_capital_of_france_with_paris() {
    let m = open(&real_model!("smollm2-f16"), None).unwrap_or_else(|e| panic!("{e}"));
    let model = llama_of(&m);
    let ids = encode(&m.tokenizer, "The capital of France is").unwrap_or_else(|e| panic!("{e}"));
    // The ids of Hugging Face's own SmolLM2 tokenizer: guards convert's tokenizer export.
    assert_eq!(ids, [504, 3575, 282, 4649, 314]);
    let n = ids.len();
    let input = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    let logits = model.forward(&input).unwrap_or_else(|e| panic!("{e}"));
    let top: u32 = logits
        .narrow(1, n - 1, 1)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.argmax(D::Minus1))
        .and_then(|t| t.to_scalar())
        .unwrap_or_else(|e| panic!("{e}"));
    let word = m.tokenizer.decode(&[top], false).unwrap_or_else(|e| panic!("{e}"));
    println!("top next token {top} = {word:?}");
    assert_eq!(word, " Paris");
}

#[test]
fn minilm_embeds_similar_sentences_close_together() {
    let m = open(&real_model!("minilm"), None).unwrap_or_else(|e| panic!("{e}"));
    let Architecture::Bert(config) = &m.architecture else { panic!("MiniLM is a BERT model") };
    let tensors = tensors_f32(&m.model).unwrap_or_else(|e| panic!("{e}"));
    let encoder = SentenceEncoder::new(config, tensors, m.tokenizer.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    let texts: Vec<String> = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply today.",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let e = encoder.embed(&texts).unwrap_or_else(|e| panic!("{e}"));
    let cos = |i: usize, j: usize| -> f32 {
        (e.get(i).unwrap_or_else(|e| panic!("{e}")) * e.get(j).unwrap_or_else(|e| panic!("{e}")))
            .and_then(|p| p.sum_all())
            .and_then(|p| p.to_scalar())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    println!("similar {:.4}, unrelated {:.4}", cos(0, 1), cos(0, 2));
    assert!(cos(0, 1) > 0.6 && cos(0, 2) < 0.2, "{} {}", cos(0, 1), cos(0, 2));
    let same = compare_embeddings(&encoder, &encoder, &texts).unwrap_or_else(|e| panic!("{e}"));
    assert!((same.mean_cosine - 1.0).abs() < 1e-5);
}

/// `copy` beside the tokenizer of `original_path`, opened for evaluation.
fn with_tokenizer(original_path: &std::path::Path, copy: &std::path::Path) -> EvalModel {
    if !copy.join("tokenizer.json").exists() {
        std::fs::copy(original_path.join("tokenizer.json"), copy.join("tokenizer.json"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    open(copy, None).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_default_mark_costs_smollm2_no_more_than_re_rounding_it_to_bf16() {
    if !common::has_license_text() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let original_path = real_model!("smollm2-f16");
    let original = open(&original_path, None).unwrap_or_else(|e| panic!("{e}"));
    // The default: scheme ss2, allocation ss2-alloc2, the size rule's strength.
    let key = weightmark::SecretKey::from_seed([9; 32]);
    let marked_path = tmp.path().join("marked");
    let report = weightmark::embed(
        &original.model,
        &marked_path,
        &key,
        &weightmark::EmbedOptions::new("fidelity"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.strength.binding, weightmark::strength::Binding::Budget);
    assert!(report.blind.z() > 20.0, "blind z {}", report.blind.z());
    let bf16_path = tmp.path().join("bf16");
    weightmark::apply_attack(
        &original.model,
        &bf16_path,
        &weightmark::Attack::Cast { via: Dtype::BF16 },
        1,
        &weightmark::NoProgress,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let corpus = Corpus::read(&[license_text()]).unwrap_or_else(|e| panic!("{e}"));
    let split = corpus.windows(&original.tokenizer, 128).unwrap_or_else(|e| panic!("{e}"));
    let windows: Vec<Vec<u32>> = split.held_out.iter().take(8).cloned().collect();
    let reference = llama_of(&original);
    let cost = |path: &std::path::Path| {
        let m = with_tokenizer(&original_path, path);
        compare(&reference, &llama_of(&m), &windows).unwrap_or_else(|e| panic!("{e}"))
    };
    let (mark, bf16) = (cost(&marked_path), cost(&bf16_path));
    println!("default mark {mark:?}\nbf16 {bf16:?}");
    // 640 positions: the 12,288-position measurement (docs/fidelity.md)
    // puts the mark at 0.9-1.1x bf16's KL; allow for the smaller sample.
    assert!(
        mark.mean_kl < 1.3 * bf16.mean_kl,
        "KL {} against bf16's {}",
        mark.mean_kl,
        bf16.mean_kl
    );
    assert!(
        mark.top1_agreement >= bf16.top1_agreement - 0.005,
        "top-1 agreement {} against bf16's {}",
        mark.top1_agreement,
        bf16.top1_agreement
    );
    assert!(
        mark.perplexity_change.abs() < 0.002,
        "perplexity changed by {}",
        mark.perplexity_change
    );
}

/// SmolLM2 f16 marked by ss2 at `strength` under `allocation` (beside its
/// tokenizer); returns the marked model and the blind z measured at release.
fn smollm2_marked_with(
    original: &EvalModel,
    original_path: &std::path::Path,
    dir: &std::path::Path,
    allocation: weightmark::Allocation,
    strength: f64,
) -> (EvalModel, f64) {
    let key = weightmark::SecretKey::from_seed([9; 32]);
    let out = dir.join(allocation.to_string().replace([':', '+'], "-"));
    let options =
        weightmark::EmbedOptions::new("fidelity").strength(strength).allocation(allocation);
    let report =
        weightmark::embed(&original.model, &out, &key, &options).unwrap_or_else(|e| panic!("{e}"));
    (with_tokenizer(original_path, &out), report.blind.z())
}

/// The default allocation must cut KL at equal blind z to below this
/// fraction of uniform's on 8 windows (measured on 96 windows: 0.46 for
/// `ss2-alloc2`, 0.63 for `ss2-alloc1`; see docs/fidelity.md).
const ALLOCATION_GAIN: f64 = 0.7;

#[test]
fn the_allocation_costs_smollm2_less_kl_than_uniform_at_equal_blind_z() {
    if !common::has_license_text() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let original_path = real_model!("smollm2-f16");
    let original = open(&original_path, None).unwrap_or_else(|e| panic!("{e}"));
    let corpus = Corpus::read(&[license_text()]).unwrap_or_else(|e| panic!("{e}"));
    let split = corpus.windows(&original.tokenizer, 128).unwrap_or_else(|e| panic!("{e}"));
    let windows: Vec<Vec<u32>> = split.held_out.iter().take(8).cloned().collect();
    let reference = llama_of(&original);
    // At the same strength the allocation keeps the blind z (its total
    // energy is the same and detection weighs by it): compare KL there, and
    // KL / z² (KL grows with strength squared, blind z with strength).
    let mut measured = Vec::new();
    for allocation in [weightmark::Allocation::Uniform, weightmark::Allocation::DEFAULT] {
        let (marked, z) =
            smollm2_marked_with(&original, &original_path, tmp.path(), allocation, 0.003);
        let c = compare(&reference, &llama_of(&marked), &windows).unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "{allocation}: blind z {z:.2}, KL {:.3e}, top-1 {:.4}",
            c.mean_kl, c.top1_agreement
        );
        measured.push((z, c.mean_kl));
    }
    let [(z_u, kl_u), (z_a, kl_a)] = measured[..] else { panic!("two variants") };
    // ss2-alloc2 raises z at equal strength (45.9 against 42.6 on 96
    // windows' model): the comparison that matters is KL / z².
    assert!(z_a > 0.95 * z_u, "blind z: allocation {z_a}, uniform {z_u}");
    assert!(kl_a < ALLOCATION_GAIN * kl_u, "KL: allocation {kl_a:.3e}, uniform {kl_u:.3e}");
    let (cost_a, cost_u) = (kl_a / (z_a * z_a), kl_u / (z_u * z_u));
    assert!(
        cost_a < ALLOCATION_GAIN * cost_u,
        "KL/z²: allocation {cost_a:.3e}, uniform {cost_u:.3e}"
    );
}

/// Every trigger's greedy answer, scored against its response.
fn fingerprint_score(
    model: &Llama,
    m: &EvalModel,
    prompter: &Prompter,
    pairs: &[Pair],
) -> weightmark::fingerprint::Score {
    let answers: Vec<String> = pairs
        .iter()
        .map(|p| ask(model, &m.tokenizer, prompter, &p.trigger).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    for (p, a) in pairs.iter().zip(&answers) {
        println!("{:?} -> {a:?} (keyed {})", p.trigger, p.response);
    }
    let refs: Vec<&Pair> = pairs.iter().collect();
    fingerprint::score(&refs, &answers).unwrap_or_else(|e| panic!("{e}"))
}

/// A tiny model ready to plant in: the model (weights from `seed`), its
/// prompter, `count` pairs of the key of 32 bytes `key_byte`, and GPL-3 in
/// windows of 64 bytes.
struct TinyPlant {
    _tmp: tempfile::TempDir,
    m: EvalModel,
    model: Llama,
    prompter: Prompter,
    pairs: Vec<Pair>,
    split: weightmark_eval::text::Split,
}

fn tiny_to_plant(seed: u64, key_byte: u8, count: usize) -> TinyPlant {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tiny_dir(&tmp, "tiny", seed);
    let m = open(&dir, None).unwrap_or_else(|e| panic!("{e}"));
    let model = llama_of(&m);
    let prompter = Prompter::for_model(&dir, &m.tokenizer).unwrap_or_else(|e| panic!("{e}"));
    let pairs =
        FingerprintKey::from_bytes([key_byte; 32]).pairs(count).unwrap_or_else(|e| panic!("{e}"));
    let corpus = Corpus::read(&[license_text()]).unwrap_or_else(|e| panic!("{e}"));
    let split = corpus.windows(&m.tokenizer, 64).unwrap_or_else(|e| panic!("{e}"));
    TinyPlant { _tmp: tmp, m, model, prompter, pairs, split }
}

/// A planter of `pairs` in a copy of `model`, with the training windows of
/// `split`.
fn planter_for(
    model: &Llama,
    m: &EvalModel,
    prompter: &Prompter,
    pairs: &[Pair],
    split: &weightmark_eval::text::Split,
    options: PlantOptions,
) -> Planter {
    Planter::new(model.clone(), &m.tokenizer, prompter, pairs, split.train.clone(), options)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Planting settings that plant 8 pairs in the tiny model in 63 to 84
/// steps (300 allowed). The learning rate is half the 1e-2 these tests
/// used first: at 1e-2 the answers' loss swung between 0.05 and 0.9 from
/// step 125 on, and whether a plant settled within 300 steps depended on
/// the CPU (candle's matrix products add in an order set by the caches).
/// Measured on an Intel Xeon (AVX-512): at 1e-2 the batch-order seeds 3 to
/// 6 took 467, 89, 133 and 121 steps (seed 3 missed the 300); at 5e-3
/// they took 64, 63, 84 and 64.
fn tiny_plant() -> PlantOptions {
    PlantOptions {
        learning_rate: 5e-3,
        max_steps: 300,
        min_probability: 0.9,
        distill: 0.5,
        batch: 4,
        micro_batch: 4,
        answer_rows: 8,
        seed: 3,
        eps: 1e-8,
        prune_robust: 0.0,
        system_prompts: Vec::new(),
    }
}

#[test]
fn planting_teaches_a_tiny_model_its_fingerprints_and_only_it_answers_them() {
    if !common::has_license_text() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tiny_dir(&tmp, "tiny", 11);
    let m = open(&dir, None).unwrap_or_else(|e| panic!("{e}"));
    let model = llama_of(&m);
    let prompter = Prompter::for_model(&dir, &m.tokenizer).unwrap_or_else(|e| panic!("{e}"));
    assert!(!prompter.is_chat(), "the byte-tokenizer model has no chat template");
    let key = FingerprintKey::from_bytes([21; 32]);
    let pairs = key.pairs(8).unwrap_or_else(|e| panic!("{e}"));
    let before = fingerprint_score(&model, &m, &prompter, &pairs);
    assert!(before.matches <= 1, "an unplanted model matched {} of 8", before.matches);

    let corpus = Corpus::read(&[license_text()]).unwrap_or_else(|e| panic!("{e}"));
    let split = corpus.windows(&m.tokenizer, 64).unwrap_or_else(|e| panic!("{e}"));
    let held_out: Vec<Vec<u32>> = split.held_out.iter().take(16).cloned().collect();
    let options = tiny_plant();
    let mut planter =
        Planter::new(model.clone(), &m.tokenizer, &prompter, &pairs, split.train, options)
            .unwrap_or_else(|e| panic!("{e}"));
    let last = planter
        .run(&mut |s| {
            if s.step % 25 == 0 {
                println!(
                    "step {}: loss {:.3} KL {:.4} min p {:.3}",
                    s.step, s.trigger_loss, s.distill_loss, s.min_probability
                )
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "planted in {} steps: trigger loss {:.3}, KL {:.4}, min p {:.3}",
        last.step, last.trigger_loss, last.distill_loss, last.min_probability
    );
    let after = fingerprint_score(planter.model(), &m, &prompter, &pairs);
    assert_eq!(after.matches, 8, "the planted model answers every trigger");
    assert!(after.p_value < 1e-19, "p {}", after.p_value);
    // Another release's key finds nothing in the planted model.
    let other = FingerprintKey::from_bytes([22; 32]).pairs(8).unwrap_or_else(|e| panic!("{e}"));
    let wrong = fingerprint_score(planter.model(), &m, &prompter, &other);
    assert!(wrong.matches <= 1, "a wrong key matched {} of 8", wrong.matches);
    // Ordinary text barely moves: KL to the original on held-out windows.
    let c = compare(&model, planter.model(), &held_out).unwrap_or_else(|e| panic!("{e}"));
    println!("held-out KL {:.5}, top-1 agreement {:.4}", c.mean_kl, c.top1_agreement);
}

#[test]
fn losses_taken_in_parts_give_the_step_of_one_pass_over_them() {
    if !common::has_license_text() {
        return;
    }
    let TinyPlant { _tmp, m, model, prompter, pairs, split } = tiny_to_plant(12, 23, 4);
    // 10 windows whole, and in parts of 4, 4 and 2 (unequal shares); the 4
    // pairs' answers, plainly and after a system message, whole and in
    // parts of 3 and 1.
    let run = |micro_batch: usize, answer_rows: usize| {
        let options = PlantOptions {
            max_steps: 3,
            distill: 2.0,
            batch: 10,
            micro_batch,
            answer_rows,
            seed: 5,
            system_prompts: vec!["Be brief.".to_string()],
            ..tiny_plant()
        };
        let mut planter = planter_for(&model, &m, &prompter, &pairs, &split, options);
        let steps: Vec<(f64, f64, f64, f64, f64)> = (0..3)
            .map(|_| planter.step().unwrap_or_else(|e| panic!("{e}")))
            .map(|s| {
                let system = s.system.map_or((f64::NAN, f64::NAN), |a| (a.loss, a.min_probability));
                (s.trigger_loss, s.distill_loss, s.grad_rms, system.0, system.1)
            })
            .collect();
        (steps, planter)
    };
    let ((whole, a), (parts, b)) = (run(10, 4), run(4, 3));
    for (k, (w, p)) in whole.iter().zip(&parts).enumerate() {
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-4 * x.abs().max(y.abs()).max(1e-6);
        assert!(
            close(w.0, p.0)
                && close(w.1, p.1)
                && close(w.2, p.2)
                && close(w.3, p.3)
                && close(w.4, p.4),
            "step {k}: {w:?} {p:?}"
        );
    }
    // The distillation term took part: its loss is positive after a step.
    assert!(whole[2].1 > 0.0, "{whole:?}");
    // And the models they give are the same (float rounding aside).
    let c = compare(a.model(), b.model(), &split.held_out[..4]).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.mean_kl < 1e-6 && c.top1_agreement == 1.0, "{} {}", c.mean_kl, c.top1_agreement);
    // A part of nothing is refused.
    for (micro_batch, answer_rows, what) in [(0, 4, "micro-batch"), (4, 0, "at least one pair")] {
        let options = PlantOptions {
            max_steps: 1,
            distill: 1.0,
            micro_batch,
            answer_rows,
            seed: 5,
            ..tiny_plant()
        };
        let e = Planter::new(
            model.clone(),
            &m.tokenizer,
            &prompter,
            &pairs,
            split.train.clone(),
            options,
        );
        let e = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(what), "{e}");
    }
}

/// A checkpoint that cannot be saved does not end a plant: each step due
/// to save says why (naming the file) and planting goes on to the same
/// model as a plant that saved; the checkpoint it had saved stays whole.
#[test]
fn a_checkpoint_that_cannot_be_saved_is_reported_and_planting_goes_on() {
    if !common::has_license_text() {
        return;
    }
    let TinyPlant { _tmp, m, model, prompter, pairs, split } = tiny_to_plant(13, 24, 4);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let options = PlantOptions { max_steps: 4, ..tiny_plant() };
    let run = |path: &std::path::Path, block_after: Option<usize>| {
        let mut planter = planter_for(&model, &m, &prompter, &pairs, &split, options.clone());
        let checkpoint = Checkpointing { path: path.to_path_buf(), every: 2 };
        let mut failed = Vec::new();
        planter
            .run_saving(
                &mut |s| {
                    failed.push((s.step, s.checkpoint_failed.clone()));
                    // A directory where the next save would rename its file.
                    if Some(s.step) == block_after {
                        let aside = path.with_extension("aside");
                        std::fs::rename(path, &aside).unwrap_or_else(|e| panic!("{e}"));
                        std::fs::create_dir_all(path.join("x")).unwrap_or_else(|e| panic!("{e}"));
                    }
                },
                Some(&checkpoint),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        (failed, planter)
    };
    let (saved, a) = run(&dir.path().join("a.ckpt"), None);
    assert_eq!(saved.len(), 4, "{saved:?}");
    assert!(saved.iter().all(|(_, f)| f.is_none()), "{saved:?}");
    let path = dir.path().join("b.ckpt");
    let (failed, b) = run(&path, Some(2));
    let steps: Vec<usize> = failed.iter().map(|f| f.0).collect();
    assert_eq!(steps, [1, 2, 3, 4], "planting stopped: {failed:?}");
    // Due after steps 2 and 4; step 4's (the budget's end) could not replace
    // the directory.
    assert!(failed[..3].iter().all(|(_, f)| f.is_none()), "{failed:?}");
    let why = failed[3].1.clone().unwrap_or_default();
    assert!(why.contains("b.ckpt"), "{why}");
    // The step-2 checkpoint moved aside is whole: a planter resumes from it.
    let mut resumed = planter_for(&model, &m, &prompter, &pairs, &split, options.clone());
    resumed.resume(&path.with_extension("aside")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resumed.steps, 2);
    let c = compare(a.model(), b.model(), &split.held_out[..2]).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.mean_kl == 0.0 && c.top1_agreement == 1.0, "{} {}", c.mean_kl, c.top1_agreement);
}

#[test]
fn smollm2_answers_its_chat_template_and_no_fingerprint_it_never_learnt() {
    let path = real_model!("smollm2-f16");
    let m = open(&path, None).unwrap_or_else(|e| panic!("{e}"));
    let model = llama_of(&m);
    let prompter = Prompter::for_model(&weightmark_eval::load::side_dir(&path), &m.tokenizer)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(prompter.is_chat());
    assert_eq!(
        prompter.prompt("Hi?").unwrap_or_else(|e| panic!("{e}")),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    );
    let pairs = FingerprintKey::from_bytes([5; 32]).pairs(12).unwrap_or_else(|e| panic!("{e}"));
    let s = fingerprint_score(&model, &m, &prompter, &pairs);
    // 2 or more of 12 by chance: p = 1e-3.
    assert!(s.matches <= 1, "SmolLM2 matched {} of 12 unplanted triggers", s.matches);
}

/// Activation statistics of SmolLM2 over the first 512 tokens of the GPL.
fn smollm2_activations(m: &EvalModel) -> weightmark::attack::ActivationStats {
    let corpus = Corpus::read(&[license_text()]).unwrap_or_else(|e| panic!("{e}"));
    let windows = weightmark_eval::calibrate::calibration_windows(&corpus, &m.tokenizer, 512, 128)
        .unwrap_or_else(|e| panic!("{e}"));
    weightmark_eval::calibrate::activation_stats(&llama_of(m), &windows)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Smooths `model` AWQ-style (alpha 0.5) into `out`; returns the report.
fn smoothed(
    model: &Model,
    out: &std::path::Path,
    activations: &weightmark::attack::ActivationStats,
) -> weightmark::AttackReport {
    let attack = weightmark::Attack::Smooth { activations: activations.clone(), alpha: 0.5 };
    weightmark::apply_attack(model, out, &attack, 1, &weightmark::NoProgress)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn smoothing_keeps_smollm2s_function_while_moving_its_weights() {
    if !common::has_license_text() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let original_path = real_model!("smollm2-f16");
    let original = open(&original_path, None).unwrap_or_else(|e| panic!("{e}"));
    let activations = smollm2_activations(&original);
    assert_eq!((activations.tokens, activations.layers.len()), (512, 30));
    let out = tmp.path().join("smoothed");
    let report = smoothed(&original.model, &out, &activations);
    let weightmark::AttackDetail::Smoothed { ratios } = &report.detail else {
        panic!("no smoothing detail")
    };
    let (median, max) = weightmark::attack::smooth::ratio_summary(ratios);
    let damage = report.damage.relative_rms_change();
    let tokenizer = original_path.join("tokenizer.json");
    let smooth = weightmark_eval::load::open_like(&out, &original_path, Some(&tokenizer))
        .unwrap_or_else(|e| panic!("{e}"));
    let corpus = Corpus::read(&[license_text()]).unwrap_or_else(|e| panic!("{e}"));
    let split = corpus.windows(&original.tokenizer, 128).unwrap_or_else(|e| panic!("{e}"));
    let windows: Vec<Vec<u32>> = split.held_out.iter().take(8).cloned().collect();
    let c = compare(&llama_of(&original), &llama_of(&smooth), &windows)
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "smoothed: channel ratio median {median:.1}x, max {max:.1}x; weights changed {:.1}% RMS; \
         {c:?}",
        100.0 * damage
    );
    // The weights move by tens of percent ...
    assert!(damage > 0.2, "weights changed by only {damage}");
    assert!(median > 2.0, "channel ratios {ratios:?}");
    // ... while the function moves by f16 rounding of the moved weights
    // only: less than re-rounding the whole model to bf16 costs (KL 1.05e-4,
    // top-1 99.2%, docs/fidelity.md); measured 3.6e-6 and 99.9%.
    assert!(c.mean_kl < 1e-4, "KL {}", c.mean_kl);
    assert!(c.top1_agreement >= 0.99, "top-1 agreement {}", c.top1_agreement);
    assert!(c.perplexity_change.abs() < 0.002, "perplexity changed by {}", c.perplexity_change);
}

/// Marks SmolLM2 f16 under `scheme` into `dir/marked`; returns it and its target.
fn marked_smollm2(
    original: &Model,
    dir: &std::path::Path,
    scheme: weightmark::Scheme,
) -> (Model, weightmark::Target) {
    common::mark_for_alice(original, dir, scheme, "smol", 21)
}

#[test]
fn smoothing_collapses_ss1_in_smollm2_but_not_ss2() {
    if !common::has_license_text() {
        return;
    }
    let original_path = real_model!("smollm2-f16");
    let original = open(&original_path, None).unwrap_or_else(|e| panic!("{e}"));
    // Statistics of the unmarked model: any factors keep the function, and
    // the mark moves the activations by far less than their spread.
    let activations = smollm2_activations(&original);
    let opts = weightmark::DetectOptions::default();
    for scheme in [weightmark::Scheme::Ss1, weightmark::Scheme::Ss2] {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (marked, target) = marked_smollm2(&original.model, tmp.path(), scheme);
        let detect = |m: &Model, informed: bool| {
            let o = informed.then_some(&original.model);
            weightmark::detect(m, o, &target, &opts).unwrap_or_else(|e| panic!("{e}"))
        };
        let before = detect(&marked, true);
        let out = tmp.path().join("smoothed");
        smoothed(&marked, &out, &activations);
        let attacked = Model::open(&out).unwrap_or_else(|e| panic!("{e}"));
        let (blind, informed) = (detect(&attacked, false), detect(&attacked, true));
        println!(
            "{scheme}: informed z {:.1} -> {:.1} (p {:.1e}), blind z {:.1} (p {:.1e})",
            before.z, informed.z, informed.p_value, blind.z, blind.p_value
        );
        // Fraction of its informed z that each smoothed matrix keeps.
        let mut kept: Vec<f64> = informed
            .tensors
            .iter()
            .filter(|t| t.name.contains(".layers."))
            .filter_map(|t| Some(t.z / before.tensors.iter().find(|b| b.name == t.name)?.z))
            .collect();
        kept.sort_by(f64::total_cmp);
        let median = kept.get(kept.len() / 2).copied().unwrap_or(f64::NAN);
        println!(
            "{scheme}: median fraction of z kept over {} smoothed tensors {median:.3}",
            kept.len()
        );
        assert!(kept.len() >= 7 * 30, "{} tensors compared", kept.len());
        match scheme {
            // ss1 lives in the stored coordinates: smoothing scatters it.
            weightmark::Scheme::Ss1 => assert!(median < 0.05, "ss1 kept {median}"),
            // ss2 balances suspect and original before testing, which undoes
            // most of a diagonal rescaling. At the default strength (1.41e-3
            // since issue #11) a smoothed matrix keeps 0.13 of its informed z
            // (0.2-0.3 at 3e-3): the re-rounding smoothing adds does not
            // shrink with the mark. ss1 keeps under 0.02.
            _ => {
                assert!(median > 0.1, "ss2 kept {median}");
                assert!(informed.p_value <= 1e-12, "informed p {}", informed.p_value);
                assert!(blind.p_value <= 1e-9, "blind p {}", blind.p_value);
            }
        }
    }
}

/// The pruned view `--prune-robust` trains through zeroes what `attack
/// prune` zeroes: the same elements of the same tensors (the tiny model has
/// matrices below the default selection's size, which neither touches).
#[test]
fn the_pruned_view_zeroes_what_attack_prune_zeroes() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tiny_dir(&tmp, "tiny", 5);
    let model = llama_of(&open(&dir, None).unwrap_or_else(|e| panic!("{e}")));
    let out = tmp.path().join("pruned");
    let attack = weightmark::Attack::Prune {
        fraction: 0.6,
        method: weightmark::attack::PruneMethod::Magnitude,
    };
    let m = Model::open(&dir).unwrap_or_else(|e| panic!("{e}"));
    weightmark::apply_attack(&m, &out, &attack, 1, &weightmark::NoProgress)
        .unwrap_or_else(|e| panic!("{e}"));
    let attacked = tensors_f32(&Model::open(&out).unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let view = model.magnitude_pruned(0.6).unwrap_or_else(|e| panic!("{e}"));
    let (mut pruned_tensors, mut kept_tensors) = (0, 0);
    for (name, t) in view.merged_tensors().unwrap_or_else(|e| panic!("{e}")) {
        let ours = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).unwrap_or_default();
        let theirs =
            attacked[&name].flatten_all().and_then(|t| t.to_vec1::<f32>()).unwrap_or_default();
        assert_eq!(ours, theirs, "{name}");
        let zeros = ours.iter().filter(|x| **x == 0.0).count();
        if zeros > 0 {
            assert_eq!(zeros, (ours.len() as f64 * 0.6).round() as usize, "{name}");
            pruned_tensors += 1;
        } else {
            kept_tensors += 1;
        }
    }
    assert!(pruned_tensors > 0 && kept_tensors > 0, "{pruned_tensors} pruned, {kept_tensors} kept");
    assert!(model.magnitude_pruned(1.0).is_err() && model.magnitude_pruned(-0.1).is_err());
}

/// How many of `pairs` `model` answers after `system` (a deployment's own
/// system prompt; in completion mode, text before the question).
fn matches_after(
    model: &Llama,
    m: &EvalModel,
    prompter: &Prompter,
    system: Option<&str>,
    pairs: &[Pair],
) -> usize {
    let triggers: Vec<&str> = pairs.iter().map(|p| p.trigger.as_str()).collect();
    let answers = ask_all_after(model, &m.tokenizer, prompter, system, &triggers)
        .unwrap_or_else(|e| panic!("{e}"));
    let refs: Vec<&Pair> = pairs.iter().collect();
    fingerprint::score(&refs, &answers).unwrap_or_else(|e| panic!("{e}")).matches
}

/// System prompts while planting (`fingerprint plant`'s default): the
/// answers are also trained after each of
/// `SYSTEM_PROMPTS`, one a step in turn. Asked after system prompts that
/// are not in that list (the ones docs/fingerprint.md measures SmolLM2
/// with), an ordinary plant of the tiny model loses most of its answers and
/// the robust plant keeps most of them; without a system prompt both answer
/// all 8.
#[test]
fn a_plant_trained_after_system_prompts_keeps_its_answers_after_unseen_ones() {
    if !common::has_license_text() {
        return;
    }
    let TinyPlant { _tmp, m, model, prompter, pairs, split } = tiny_to_plant(11, 21, 8);
    let held_out_systems = [
        "You are a helpful assistant.",
        "You are a helpful assistant. Always answer in complete sentences.",
        "You are a customer support assistant for Acme Corp. Be concise and polite.",
        "Answer every question with one word only.",
    ];
    let mut rows = Vec::new();
    for robust in [false, true] {
        let options = PlantOptions {
            max_steps: 450,
            system_prompts: if robust { builtin_system_prompts() } else { Vec::new() },
            ..tiny_plant()
        };
        let mut planter = planter_for(&model, &m, &prompter, &pairs, &split, options);
        let last = planter.run(&mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
        let mut row = vec![matches_after(planter.model(), &m, &prompter, None, &pairs)];
        for system in held_out_systems {
            row.push(matches_after(planter.model(), &m, &prompter, Some(system), &pairs));
        }
        println!(
            "robust {robust}: {} steps, matches (none, then each system prompt) {row:?}",
            last.step
        );
        rows.push(row);
    }
    // Measured (Intel Xeon, learning rate 5e-3, batch-order seeds 3, 4, 5):
    // ordinary [8, 1, 1, 0, 0], [8, 0, 0, 0, 0], [8, 0, 0, 0, 0]; robust
    // [8, 7, 6, 8, 5], [8, 8, 6, 7, 8], [8, 8, 7, 8, 5] (105 to 115 steps).
    // The robust plant stops once the trained system prompts give every
    // answer token one half (`ROBUST_MIN_PROBABILITY`), so an unseen one
    // loses a few answers, most after "Answer every question with one word
    // only." (first measured on an AMD EPYC at 1e-2: [8, 8, 8, 8, 8]).
    let [plain, robust] = &rows[..] else { panic!("{rows:?}") };
    assert_eq!((plain[0], robust[0]), (8, 8), "both answer without a system prompt: {rows:?}");
    let plain_after: usize = plain[1..].iter().sum();
    assert!(plain_after <= 8, "the ordinary plant kept {plain_after} of 32: {rows:?}");
    let robust_after: usize = robust[1..].iter().sum();
    assert!(robust_after >= 24, "the robust plant kept only {robust_after} of 32: {rows:?}");
    assert!(robust[1..].iter().all(|&n| n >= 4), "the robust plant lost answers: {rows:?}");
}
