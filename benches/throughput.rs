//! Throughput of embed, detect and hashing on a synthetic ~256 MB F32 model.
//!
//! Run with `cargo bench -p weightmark --bench throughput`; compare with `cp`
//! and `sha256sum` of the same file using `scripts/bench-compare`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weightmark::model_tensor_digests;
use weightmark::synth::{gaussian_matrix, write_file};
use weightmark::{
    detect, embed, DetectOptions, Dtype, EmbedOptions, Model, NoProgress, SecretKey, Selection,
    Target,
};

/// 16 matrices of 2048 x 2048 F32: 64M elements, 256 MiB.
fn build(dir: &std::path::Path) -> std::path::PathBuf {
    let tensors: Vec<_> = (0..16)
        .map(|i| gaussian_matrix(&format!("layers.{i}.weight"), 2048, 2048, Dtype::F32, 1))
        .collect();
    let path = dir.join("bench.safetensors");
    write_file(&path, &tensors, None).unwrap_or_else(|e| panic!("{e}"));
    path
}

fn throughput(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let input = build(dir.path());
    let model = Model::open(&input).unwrap_or_else(|e| panic!("{e}"));
    let bytes = model.data_bytes();
    let key = SecretKey::from_seed([1; 32]);
    let options = EmbedOptions {
        scheme: weightmark::Scheme::Ss1,
        strength: Some(weightmark::DEFAULT_STRENGTH),
        label: "bench".into(),
        recipient: None,
        selection: Selection::Default,
        created: "2026-11-28T00:00:00Z".into(),
        progress: &NoProgress,
        overwrite: weightmark::Overwrite::Refuse,
        allocation: weightmark::Allocation::Uniform,
        recipient_code: weightmark::RecipientCode::Independent,
    };
    let marked = dir.path().join("marked.safetensors");

    let mut group = c.benchmark_group("model_256MiB_f32");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("embed", |b| {
        b.iter(|| embed(&model, &marked, &key, &options).unwrap_or_else(|e| panic!("{e}")))
    });
    let suspect = Model::open(&marked).unwrap_or_else(|e| panic!("{e}"));
    let mark_key = key.mark_key("bench", None);
    let target = Target::ss1(mark_key.clone(), None);
    let detect_options = DetectOptions { threshold_p: 1e-9, progress: &NoProgress };
    group.bench_function("detect_blind", |b| {
        b.iter(|| {
            detect(&suspect, None, &target, &detect_options).unwrap_or_else(|e| panic!("{e}"))
        })
    });
    group.bench_function("detect_informed", |b| {
        b.iter(|| {
            detect(&suspect, Some(&model), &target, &detect_options)
                .unwrap_or_else(|e| panic!("{e}"))
        })
    });
    group.bench_function("tensor_digests", |b| b.iter(|| model_tensor_digests(&suspect)));
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
