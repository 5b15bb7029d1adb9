//! Under H0 the detection statistic is a standard normal: 1,000 wrong keys
//! against a marked model give mean z near 0, standard deviation near 1, and
//! no false detection.

mod common;

use std::sync::Arc;

use weightmark::synth::{llama, write_file, LlamaShape};
use weightmark::{
    detect, embed, DetectOptions, Dtype, EmbedOptions, Model, NoProgress, SecretKey, Selection,
    Target,
};

#[test]
fn a_thousand_wrong_keys_look_like_standard_normal_noise() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let shape =
        LlamaShape { vocab: 512, hidden: 128, intermediate: 344, layers: 2, heads: 4, kv_heads: 2 };
    let input = dir.path().join("in.safetensors");
    write_file(&input, &llama(&shape, Dtype::BF16, 21), None).unwrap_or_else(|e| panic!("{e}"));
    let marked = dir.path().join("marked.safetensors");
    let owner = SecretKey::from_seed([42; 32]);
    let options = EmbedOptions {
        scheme: weightmark::Scheme::Ss1,
        strength: Some(0.01),
        label: "release".into(),
        recipient: None,
        selection: Selection::Default,
        created: "2026-11-28T00:00:00Z".into(),
        progress: &NoProgress,
        overwrite: weightmark::Overwrite::Refuse,
        allocation: weightmark::Allocation::Uniform,
        recipient_code: weightmark::RecipientCode::Independent,
        recipient_share: None,
    };
    let model = Model::open(&input).unwrap_or_else(|e| panic!("{e}"));
    embed(&model, &marked, &owner, &options).unwrap_or_else(|e| panic!("{e}"));
    let suspect = Model::open(&marked).unwrap_or_else(|e| panic!("{e}"));
    let detect_options = DetectOptions { threshold_p: 1e-9, progress: &NoProgress };

    let right = owner.mark_key("release", None);
    let found = detect(&suspect, None, &Target::ss1(right.clone(), None), &detect_options)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(found.detected, "the right key must find the mark (z {})", found.z);

    let mut zs = Vec::with_capacity(1000);
    for i in 0u32..1000 {
        let mut seed = [0u8; 32];
        seed[..4].copy_from_slice(&i.to_le_bytes());
        seed[31] = 0xee;
        let wrong = SecretKey::from_seed(seed).mark_key("release", None);
        let d = detect(&suspect, None, &Target::ss1(wrong.clone(), None), &detect_options)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!d.detected, "wrong key {i} reached the threshold: z {}", d.z);
        zs.push(d.z);
    }
    let n = zs.len() as f64;
    let mean = zs.iter().sum::<f64>() / n;
    let sd = (zs.iter().map(|z| (z - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let max = zs.iter().cloned().fold(f64::MIN, f64::max);
    eprintln!(
        "1000 wrong keys: mean z {mean:.4}, sd {sd:.4}, max {max:.2}, right key z {:.1}",
        found.z
    );
    assert!(mean.abs() <= 0.1, "mean z {mean}");
    assert!((0.9..=1.1).contains(&sd), "sd {sd}");
}

/// z of 1,000 wrong ss2 release keys (tested in one pass) against `suspect`.
fn ss2_wrong_key_zs(
    suspect: &Model,
    tensors: Vec<(String, Vec<usize>)>,
    sketch: Option<weightmark::ResidualSketch>,
    neurons: Option<weightmark::NeuronSketch>,
    heads: Option<weightmark::HeadSketch>,
) -> Vec<f64> {
    // One decoded copy of each sketch, shared by the thousand targets.
    let (sketch, neurons, heads) =
        (sketch.map(Arc::new), neurons.map(Arc::new), heads.map(Arc::new));
    let targets: Vec<Target> = (0u32..1000)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            seed[31] = 0xdd;
            let (release, _) = SecretKey::from_seed(seed).ss2_keys("release", None, &[7; 32]);
            Target {
                scheme: weightmark::Scheme::Ss2,
                mark_key: release,
                recipient_key: None,
                tensors: Some(tensors.clone()),
                residual_sketch: sketch.clone(),
                neuron_sketch: neurons.clone(),
                head_sketch: heads.clone(),
                allocation: weightmark::Allocation::Uniform,
                recipient_code: weightmark::RecipientCode::Independent,
                recipient_weight: 1.0,
            }
        })
        .collect();
    let refs: Vec<&Target> = targets.iter().collect();
    let options = DetectOptions::default();
    weightmark::detect_many(suspect, None, &refs, &options)
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|d| {
            assert!(!d.detected, "a wrong key reached the threshold: z {}", d.z);
            d.z
        })
        .collect()
}

fn mean_sd(zs: &[f64]) -> (f64, f64) {
    let n = zs.len() as f64;
    let mean = zs.iter().sum::<f64>() / n;
    (mean, (zs.iter().map(|z| (z - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt())
}

#[test]
fn ss2_a_thousand_wrong_keys_on_the_unmarked_and_on_a_stranger_s_model_look_like_noise() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let shape =
        LlamaShape { vocab: 512, hidden: 128, intermediate: 344, layers: 2, heads: 4, kv_heads: 2 };
    let input = dir.path().join("in.safetensors");
    write_file(&input, &llama(&shape, Dtype::BF16, 22), None).unwrap_or_else(|e| panic!("{e}"));
    // The head counts a head sketch needs.
    let config = serde_json::json!({
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "num_hidden_layers": shape.layers,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
    })
    .to_string();
    std::fs::write(dir.path().join("config.json"), config).unwrap_or_else(|e| panic!("{e}"));
    let model = Model::open(&input).unwrap_or_else(|e| panic!("{e}"));
    let tensors: Vec<(String, Vec<usize>)> = model
        .tensors()
        .filter(weightmark::is_default_selected)
        .map(|t| (t.name.to_string(), t.shape.to_vec()))
        .collect();
    // Someone else marked this model (ss2): our wrong keys must not see it.
    let stranger = dir.path().join("stranger.safetensors");
    let options = EmbedOptions::new("theirs").strength(0.01);
    embed(&model, &stranger, &SecretKey::from_seed([9; 32]), &options)
        .unwrap_or_else(|e| panic!("{e}"));
    let stranger = Model::open(&stranger).unwrap_or_else(|e| panic!("{e}"));
    for (what, suspect) in [("unmarked", &model), ("marked by someone else", &stranger)] {
        // As a certificate of a release of `model` would carry it.
        let sketch = weightmark::ResidualSketch::of_model(&model);
        assert!(sketch.is_some(), "a Llama-layout model has a residual sketch");
        let neurons = weightmark::NeuronSketch::of_model(&model);
        assert!(neurons.is_some(), "a Llama-layout model has a neuron sketch");
        let heads = weightmark::HeadSketch::of_model(&model);
        assert!(heads.is_some(), "a Llama-layout model with a config.json has a head sketch");
        let zs = ss2_wrong_key_zs(suspect, tensors.clone(), sketch, neurons, heads);
        let (mean, sd) = mean_sd(&zs);
        let max = zs.iter().cloned().fold(f64::MIN, f64::max);
        eprintln!(
            "ss2, 1000 wrong keys on the {what} model: mean z {mean:.4}, sd {sd:.4}, max {max:.2}"
        );
        assert!(mean.abs() <= 0.1, "{what}: mean z {mean}");
        assert!((0.9..=1.1).contains(&sd), "{what}: sd {sd}");
    }
}

#[test]
fn ss2_the_same_label_on_two_models_gives_unrelated_marks() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let shape =
        LlamaShape { vocab: 512, hidden: 128, intermediate: 344, layers: 2, heads: 4, kv_heads: 2 };
    let owner = SecretKey::from_seed([11; 32]);
    let mut certs = Vec::new();
    for (name, seed) in [("a", 1), ("b", 2)] {
        let input = dir.path().join(format!("{name}.safetensors"));
        write_file(&input, &llama(&shape, Dtype::F32, seed), None)
            .unwrap_or_else(|e| panic!("{e}"));
        let model = Model::open(&input).unwrap_or_else(|e| panic!("{e}"));
        let out = dir.path().join(format!("{name}-marked.safetensors"));
        let report = embed(&model, &out, &owner, &EmbedOptions::new("model").strength(0.01))
            .unwrap_or_else(|e| panic!("{e}"));
        let cert = dir.path().join(format!("{name}.cert.json"));
        weightmark::write_atomic(&cert, &report.certificate_text().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        certs.push(
            weightmark::load_certificate(&cert, &owner.public_key())
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let b_marked =
        Model::open(dir.path().join("b-marked.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    let as_b = Target::from_certificate(&certs[1], &owner).unwrap_or_else(|e| panic!("{e}"));
    let as_a = Target::from_certificate(&certs[0], &owner).unwrap_or_else(|e| panic!("{e}"));
    let options = DetectOptions::default();
    let right = detect(&b_marked, None, &as_b, &options).unwrap_or_else(|e| panic!("{e}"));
    let wrong = detect(&b_marked, None, &as_a, &options).unwrap_or_else(|e| panic!("{e}"));
    assert!(right.detected, "B's own certificate finds B (z {})", right.z);
    assert!(!wrong.detected && wrong.z.abs() < 5.0, "A's certificate on B: z {}", wrong.z);
}
