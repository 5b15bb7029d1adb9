//! Under H0 the detection statistic is a standard normal: 1,000 wrong keys
//! against a marked model give mean z near 0, standard deviation near 1, and
//! no false detection.

mod common;

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
        strength: 0.01,
        label: "release".into(),
        recipient: None,
        selection: Selection::Default,
        created: "2026-11-28T00:00:00Z".into(),
        progress: &NoProgress,
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
