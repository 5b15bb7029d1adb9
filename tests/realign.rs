//! Function-preserving edits and informed re-alignment: permuting MLP neurons
//! leaves a Llama-layout model's logits unchanged (checked with the small
//! forward pass of `common`), and informed detection finds and undoes the
//! permutation.

mod common;

use common::{logits, relative_difference};

use ndarray::Array2;
use weightmark::attack::permute::{permute_heads, permute_mlp, HeadPermutation};
use weightmark::synth::{llama, write_file, LlamaShape};
use weightmark::{
    detect, embed, DetectOptions, Dtype, EmbedOptions, Model, NoProgress, SecretKey, Selection,
    Target,
};

const SHAPE: LlamaShape =
    LlamaShape { vocab: 512, hidden: 128, intermediate: 344, layers: 2, heads: 4, kv_heads: 2 };

fn matrix(m: &Model, name: &str) -> Array2<f64> {
    let t = m.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
    let mut v = Vec::new();
    weightmark::decode_f64(t.dtype, &t.data(), &mut v);
    Array2::from_shape_vec((t.shape[0], t.shape[1]), v).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn permuting_mlp_neurons_leaves_the_logits_unchanged() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("m.safetensors");
    write_file(&path, &llama(&SHAPE, Dtype::F32, 4), None).unwrap_or_else(|e| panic!("{e}"));
    let model = Model::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("p.safetensors");
    permute_mlp(&model, &out, 7, &NoProgress).unwrap_or_else(|e| panic!("{e}"));
    let permuted = Model::open(&out).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(
        model.tensor("model.layers.0.mlp.up_proj.weight").map(|t| t.data().into_owned()),
        permuted.tensor("model.layers.0.mlp.up_proj.weight").map(|t| t.data().into_owned()),
        "the permutation must move weights"
    );
    let tokens = [3, 141, 59, 26, 5, 358];
    let (a, b) = (logits(&model, &SHAPE, &tokens), logits(&permuted, &SHAPE, &tokens));
    let moved = relative_difference(&a, &b);
    assert!(moved <= 1e-4, "logits moved by {moved} (relative)");
    assert!(a.len() == tokens.len() * SHAPE.vocab);
}

#[test]
fn permuting_attention_heads_leaves_the_logits_unchanged() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("m.safetensors");
    write_file(&path, &llama(&SHAPE, Dtype::F32, 5), None).unwrap_or_else(|e| panic!("{e}"));
    let model = Model::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("p.safetensors");
    // A seed that also swaps the key/value heads of layer 0 (not only the
    // query heads within their groups).
    let seed = (1..100u64)
        .find(|&s| HeadPermutation::seeded(SHAPE.heads, SHAPE.kv_heads, s, 0).kv == [1, 0])
        .unwrap_or(1);
    permute_heads(&model, &out, SHAPE.heads, SHAPE.kv_heads, seed, &NoProgress)
        .unwrap_or_else(|e| panic!("{e}"));
    let permuted = Model::open(&out).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(
        model.tensor("model.layers.0.self_attn.q_proj.weight").map(|t| t.data().into_owned()),
        permuted.tensor("model.layers.0.self_attn.q_proj.weight").map(|t| t.data().into_owned()),
        "the permutation must move weights"
    );
    let tokens = [7, 300, 12, 99, 400];
    let (a, b) = (logits(&model, &SHAPE, &tokens), logits(&permuted, &SHAPE, &tokens));
    let moved = relative_difference(&a, &b);
    assert!(moved <= 1e-4, "logits moved by {moved} (relative)");
}

#[test]
fn informed_detection_undoes_head_and_neuron_permutations_together() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let orig_dir = dir.path().join("original");
    std::fs::create_dir(&orig_dir).unwrap_or_else(|e| panic!("{e}"));
    let shape = LlamaShape {
        vocab: 2048,
        hidden: 256,
        intermediate: 688,
        layers: 2,
        heads: 8,
        kv_heads: 2,
    };
    write_file(&orig_dir.join("model.safetensors"), &llama(&shape, Dtype::F32, 6), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let config = format!(
        r#"{{"num_attention_heads": {}, "num_key_value_heads": {}, "num_hidden_layers": {}, "hidden_size": {}, "intermediate_size": {}}}"#,
        shape.heads, shape.kv_heads, shape.layers, shape.hidden, shape.intermediate
    );
    std::fs::write(orig_dir.join("config.json"), config).unwrap_or_else(|e| panic!("{e}"));
    let original = Model::open(&orig_dir).unwrap_or_else(|e| panic!("{e}"));
    let key = SecretKey::from_seed([33; 32]);
    let options = EmbedOptions {
        scheme: weightmark::Scheme::Ss1,
        strength: Some(0.01),
        label: "r".into(),
        recipient: None,
        selection: Selection::Globs(vec!["*.mlp.*".into(), "*.self_attn.*".into()]),
        created: "2026-11-28T00:00:00Z".into(),
        progress: &NoProgress,
        overwrite: weightmark::Overwrite::Refuse,
        allocation: weightmark::Allocation::Uniform,
        recipient_code: weightmark::RecipientCode::Independent,
        recipient_share: None,
    };
    let marked_path = dir.path().join("marked.safetensors");
    embed(&original, &marked_path, &key, &options).unwrap_or_else(|e| panic!("{e}"));
    let marked = Model::open(&marked_path).unwrap_or_else(|e| panic!("{e}"));
    let step = dir.path().join("step.safetensors");
    permute_mlp(&marked, &step, 5, &NoProgress).unwrap_or_else(|e| panic!("{e}"));
    let step = Model::open(&step).unwrap_or_else(|e| panic!("{e}"));
    let permuted_path = dir.path().join("permuted.safetensors");
    permute_heads(&step, &permuted_path, shape.heads, shape.kv_heads, 5, &NoProgress)
        .unwrap_or_else(|e| panic!("{e}"));
    let permuted = Model::open(&permuted_path).unwrap_or_else(|e| panic!("{e}"));

    let mk = key.mark_key("r", None);
    let tensors: Vec<(String, Vec<usize>)> = marked
        .tensors()
        .filter(|t| t.name.contains(".mlp.") || t.name.contains(".self_attn."))
        .map(|t| (t.name.to_string(), t.shape.to_vec()))
        .collect();
    let target = Target::ss1(mk.clone(), Some(tensors));
    let opts = DetectOptions { threshold_p: 1e-9, progress: &NoProgress };
    let blind = detect(&permuted, None, &target, &opts).unwrap_or_else(|e| panic!("{e}"));
    let informed =
        detect(&permuted, Some(&original), &target, &opts).unwrap_or_else(|e| panic!("{e}"));
    let reference =
        detect(&marked, Some(&original), &target, &opts).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "permuted heads+MLP: blind z {:.2}, informed z {:.1} (unpermuted {:.1}); {:?}",
        blind.z, informed.z, reference.z, informed.realigned
    );
    assert!(blind.z.abs() < 6.0, "blind z {}", blind.z);
    assert_eq!(
        informed.realigned.iter().filter(|r| r.contains("attention heads")).count(),
        shape.layers
    );
    assert_eq!(
        informed.realigned.iter().filter(|r| r.contains("MLP neurons")).count(),
        shape.layers
    );
    assert!(
        (informed.z - reference.z).abs() < 1e-6 * reference.z,
        "{} vs {}",
        informed.z,
        reference.z
    );
}

#[test]
fn informed_detection_undoes_an_mlp_permutation() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("m.safetensors");
    let shape = LlamaShape {
        vocab: 2048,
        hidden: 256,
        intermediate: 688,
        layers: 3,
        heads: 4,
        kv_heads: 2,
    };
    write_file(&path, &llama(&shape, Dtype::BF16, 4), None).unwrap_or_else(|e| panic!("{e}"));
    let original = Model::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let key = SecretKey::from_seed([31; 32]);
    let options = EmbedOptions {
        scheme: weightmark::Scheme::Ss1,
        strength: Some(0.01),
        label: "r".into(),
        recipient: None,
        selection: Selection::Globs(vec!["*.mlp.*".into()]),
        created: "2026-11-28T00:00:00Z".into(),
        progress: &NoProgress,
        overwrite: weightmark::Overwrite::Refuse,
        allocation: weightmark::Allocation::Uniform,
        recipient_code: weightmark::RecipientCode::Independent,
        recipient_share: None,
    };
    let marked_path = dir.path().join("marked.safetensors");
    embed(&original, &marked_path, &key, &options).unwrap_or_else(|e| panic!("{e}"));
    let marked = Model::open(&marked_path).unwrap_or_else(|e| panic!("{e}"));
    let permuted_path = dir.path().join("permuted.safetensors");
    permute_mlp(&marked, &permuted_path, 11, &NoProgress).unwrap_or_else(|e| panic!("{e}"));
    let permuted = Model::open(&permuted_path).unwrap_or_else(|e| panic!("{e}"));

    let mk = key.mark_key("r", None);
    let tensors: Vec<(String, Vec<usize>)> = marked
        .tensors()
        .filter(|t| t.name.contains(".mlp."))
        .map(|t| (t.name.to_string(), t.shape.to_vec()))
        .collect();
    let target = Target::ss1(mk.clone(), Some(tensors));
    let opts = DetectOptions { threshold_p: 1e-9, progress: &NoProgress };
    let blind = detect(&permuted, None, &target, &opts).unwrap_or_else(|e| panic!("{e}"));
    let informed =
        detect(&permuted, Some(&original), &target, &opts).unwrap_or_else(|e| panic!("{e}"));
    let reference =
        detect(&marked, Some(&original), &target, &opts).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "permuted: blind z {:.2}, informed z {:.1} (unpermuted {:.1})",
        blind.z, informed.z, reference.z
    );
    assert!(!blind.detected, "blind detection cannot see through a permutation (z {})", blind.z);
    assert_eq!(informed.realigned.len(), shape.layers, "{:?}", informed.realigned);
    assert!(
        (informed.z - reference.z).abs() < 1e-6 * reference.z,
        "{} vs {}",
        informed.z,
        reference.z
    );
    assert!(reference.realigned.is_empty(), "nothing to undo in the unpermuted copy");
    // A wrong key stays silent after re-alignment.
    let wrong = SecretKey::from_seed([32; 32]).mark_key("r", None);
    let w = detect(&permuted, Some(&original), &Target::ss1(wrong.clone(), None), &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!w.detected, "wrong key z {}", w.z);
}

#[test]
fn rotating_the_residual_stream_leaves_the_logits_unchanged() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("m.safetensors");
    write_file(&path, &llama(&SHAPE, Dtype::F32, 8), None).unwrap_or_else(|e| panic!("{e}"));
    let model = Model::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("r.safetensors");
    weightmark::attack::rotate::rotate(&model, &out, 5, &NoProgress)
        .unwrap_or_else(|e| panic!("{e}"));
    let rotated = Model::open(&out).unwrap_or_else(|e| panic!("{e}"));
    let tokens = [1, 2, 300, 45, 6];
    let (a, b) = (logits(&model, &SHAPE, &tokens), logits(&rotated, &SHAPE, &tokens));
    let moved = relative_difference(&a, &b);
    assert!(moved <= 1e-4, "logits moved by {moved} (relative)");
    let e0 = matrix(&model, "model.embed_tokens.weight");
    let e1 = matrix(&rotated, "model.embed_tokens.weight");
    assert!(
        (&e0 - &e1).iter().map(|v| v.abs()).sum::<f64>() > 1.0,
        "the rotation must move weights"
    );
}

#[test]
fn informed_detection_undoes_rotation_and_permutation_together() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let shape = LlamaShape {
        vocab: 2048,
        hidden: 256,
        intermediate: 688,
        layers: 2,
        heads: 4,
        kv_heads: 2,
    };
    let path = dir.path().join("m.safetensors");
    write_file(&path, &llama(&shape, Dtype::F32, 9), None).unwrap_or_else(|e| panic!("{e}"));
    let original = Model::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let key = SecretKey::from_seed([34; 32]);
    let options = EmbedOptions {
        scheme: weightmark::Scheme::Ss1,
        strength: Some(weightmark::DEFAULT_STRENGTH),
        label: "r".into(),
        recipient: None,
        selection: Selection::Default,
        created: "2026-11-28T00:00:00Z".into(),
        progress: &NoProgress,
        overwrite: weightmark::Overwrite::Refuse,
        allocation: weightmark::Allocation::Uniform,
        recipient_code: weightmark::RecipientCode::Independent,
        recipient_share: None,
    };
    let marked_path = dir.path().join("marked.safetensors");
    embed(&original, &marked_path, &key, &options).unwrap_or_else(|e| panic!("{e}"));
    let marked = Model::open(&marked_path).unwrap_or_else(|e| panic!("{e}"));
    let step = dir.path().join("step.safetensors");
    permute_mlp(&marked, &step, 2, &NoProgress).unwrap_or_else(|e| panic!("{e}"));
    let step = Model::open(&step).unwrap_or_else(|e| panic!("{e}"));
    let attacked_path = dir.path().join("attacked.safetensors");
    weightmark::attack::rotate::rotate(&step, &attacked_path, 3, &NoProgress)
        .unwrap_or_else(|e| panic!("{e}"));
    let attacked = Model::open(&attacked_path).unwrap_or_else(|e| panic!("{e}"));

    let mk = key.mark_key("r", None);
    let tensors: Vec<(String, Vec<usize>)> = marked
        .tensors()
        .filter(weightmark::is_default_selected)
        .map(|t| (t.name.to_string(), t.shape.to_vec()))
        .collect();
    let target = Target::ss1(mk.clone(), Some(tensors));
    let opts = DetectOptions { threshold_p: 1e-9, progress: &NoProgress };
    let blind = detect(&attacked, None, &target, &opts).unwrap_or_else(|e| panic!("{e}"));
    let informed =
        detect(&attacked, Some(&original), &target, &opts).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "rotated + permuted: blind z {:.2}, informed z {:.1}; {:?}",
        blind.z, informed.z, informed.realigned
    );
    assert!(blind.z.abs() < 6.0, "blind z {}", blind.z);
    assert!(
        informed.realigned.first().is_some_and(|r| r.contains("rotated")),
        "{:?}",
        informed.realigned
    );
    assert!(
        informed.realigned.iter().any(|r| r.contains("MLP neurons")),
        "{:?}",
        informed.realigned
    );
    assert!(informed.log10_p_value <= -12.0, "informed z {}", informed.z);
    let wrong = SecretKey::from_seed([35; 32]).mark_key("r", None);
    let w = detect(&attacked, Some(&original), &Target::ss1(wrong.clone(), None), &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!w.detected, "wrong key z {}", w.z);
}

#[test]
fn rotating_a_tied_model_unties_its_head_and_keeps_the_logits() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("tied.safetensors");
    let tensors: Vec<_> =
        llama(&SHAPE, Dtype::F32, 12).into_iter().filter(|t| t.name != "lm_head.weight").collect();
    write_file(&path, &tensors, None).unwrap_or_else(|e| panic!("{e}"));
    let model = Model::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("r.safetensors");
    weightmark::attack::rotate::rotate(&model, &out, 8, &NoProgress)
        .unwrap_or_else(|e| panic!("{e}"));
    let rotated = Model::open(&out).unwrap_or_else(|e| panic!("{e}"));
    assert!(rotated.tensor("lm_head.weight").is_some(), "the head must be untied");
    let tokens = [9, 8, 7, 100];
    let (a, b) = (logits(&model, &SHAPE, &tokens), logits(&rotated, &SHAPE, &tokens));
    let moved = relative_difference(&a, &b);
    assert!(moved <= 1e-4, "logits moved by {moved} (relative)");
}

#[test]
fn smollm2s_permuted_heads_and_neurons_are_all_undone_and_its_own_are_left_in_place() {
    // A real model (9 query heads in 3 groups, 30 layers): heads and
    // neurons are first checked in place, so this is where a check too
    // loose to see a real permutation would show.
    let path = common::real_model!("smollm2-f16");
    let original = Model::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("permuted");
    let both = weightmark::attack::PermuteWhat::Both;
    weightmark::attack::permute::permute(&original, &out, both, 3, &NoProgress)
        .unwrap_or_else(|e| panic!("{e}"));
    let permuted = Model::open(&out).unwrap_or_else(|e| panic!("{e}"));
    let target = Target::ss1(SecretKey::from_seed([41; 32]).mark_key("r", None), None);
    let opts = DetectOptions { threshold_p: 1e-9, progress: &NoProgress };
    let count = |d: &weightmark::Detection, what: &str| {
        d.realigned.iter().filter(|l| l.starts_with(what)).count()
    };
    let layers = 30;
    let d = detect(&permuted, Some(&original), &target, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&d, "MLP neurons of layer"), layers, "{:?}", d.realigned);
    assert_eq!(count(&d, "attention heads of layer"), layers, "{:?}", d.realigned);
    let d = detect(&original, Some(&original), &target, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert!(d.realigned.is_empty(), "{:?}", d.realigned);
}
