//! Throughput of embed, detect and hashing on a synthetic ~256 MB F32 model
//! (scheme ss1), and of GGUF dequantization, one bench per ggml type.
//!
//! Run with `cargo bench -p weightmark --bench throughput`, or one group with
//! `cargo bench -p weightmark --bench throughput -- gguf_dequantize`; ss2 on
//! bf16 and f16 models is `benches/ss2.rs`; whole commands side by side with
//! `cp`, `openssl` and numpy peers: `scripts/bench-compare`.

use std::cell::OnceCell;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use weightmark::gguf::quant::dequantize;
use weightmark::gguf::quantize::quantize;
use weightmark::gguf::GgmlType;
use weightmark::model_tensor_digests;
use weightmark::synth::{gaussian_matrix, write_file};
use weightmark::{
    detect, embed, DetectOptions, Dtype, EmbedOptions, Model, NoProgress, SecretKey, Selection,
    Target,
};

/// 16 matrices of 2048 x 2048 F32: 64M elements, 256 MiB.
const MATRICES: usize = 16;
const SIDE: usize = 2048;

fn or_panic<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// The model, made on first use, so that a run filtered to another group
/// does not pay for it.
struct Setup {
    dir: tempfile::TempDir,
    model: Model,
    key: SecretKey,
}

impl Setup {
    fn new() -> Setup {
        let dir = or_panic(tempfile::tempdir());
        let tensors: Vec<_> = (0..MATRICES)
            .map(|i| gaussian_matrix(&format!("layers.{i}.weight"), SIDE, SIDE, Dtype::F32, 1))
            .collect();
        let path = dir.path().join("bench.safetensors");
        or_panic(write_file(&path, &tensors, None));
        let model = or_panic(Model::open(&path));
        Setup { dir, model, key: SecretKey::from_seed([1; 32]) }
    }

    fn marked(&self) -> PathBuf {
        self.dir.path().join("marked.safetensors")
    }

    fn embed(&self) {
        let options = EmbedOptions {
            scheme: weightmark::Scheme::Ss1,
            strength: Some(weightmark::DEFAULT_STRENGTH),
            label: "bench".into(),
            recipient: None,
            selection: Selection::Default,
            created: "2026-11-28T00:00:00Z".into(),
            progress: &NoProgress,
            // Every iteration writes the same output file.
            overwrite: weightmark::Overwrite::Replace,
            allocation: weightmark::Allocation::Uniform,
            recipient_code: weightmark::RecipientCode::Independent,
            recipient_share: None,
        };
        or_panic(embed(&self.model, &self.marked(), &self.key, &options));
    }
}

fn throughput(c: &mut Criterion) {
    let setup = OnceCell::new();
    let setup = || setup.get_or_init(Setup::new);
    // The marked copy the detect benches read (one more embed, so that a
    // run filtered to detection has one).
    let suspect = OnceCell::new();
    let suspect = || {
        suspect.get_or_init(|| {
            setup().embed();
            or_panic(Model::open(setup().marked()))
        })
    };
    let target = || Target::ss1(setup().key.mark_key("bench", None), None);
    let detect_options = DetectOptions { threshold_p: 1e-9, progress: &NoProgress };

    let mut group = c.benchmark_group("model_256MiB_f32");
    group.sample_size(10);
    group.throughput(Throughput::Bytes((MATRICES * SIDE * SIDE * 4) as u64));
    group.bench_function("embed", |b| {
        let s = setup();
        b.iter(|| s.embed())
    });
    group.bench_function("detect_blind", |b| {
        let (suspect, target) = (suspect(), target());
        b.iter(|| or_panic(detect(suspect, None, &target, &detect_options)))
    });
    group.bench_function("detect_informed", |b| {
        let (suspect, target, model) = (suspect(), target(), &setup().model);
        b.iter(|| or_panic(detect(suspect, Some(model), &target, &detect_options)))
    });
    group.bench_function("tensor_digests", |b| {
        let suspect = suspect();
        b.iter(|| model_tensor_digests(suspect))
    });
    group.finish();
}

/// Elements per dequantization bench: 1M (4 MiB of f32 out).
const GGUF_ELEMENTS: usize = 1 << 20;

/// Every type `gguf::quant::dequantize` reads.
const GGML_TYPES: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// Byte offsets of the f16 scales and minima in one block of the types that
/// `quantize` cannot write (ggml-common.h's block layouts).
fn half_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        _ => &[],
    }
}

/// `GGUF_ELEMENTS` elements of `ty`: Gaussian weights quantized by the
/// crate's writer where it has one (F32, F16, Q4_0, Q5_0, Q8_0, Q4_K, Q6_K),
/// BF16 from the synthetic generator, else random blocks whose scales are set
/// to 0.01 (dequantization does the same arithmetic whatever the values).
fn gguf_blocks(ty: GgmlType) -> Vec<u8> {
    if ty == GgmlType::BF16 {
        return gaussian_matrix("x", GGUF_ELEMENTS / 1024, 1024, Dtype::BF16, 1).data;
    }
    let m = gaussian_matrix("x", GGUF_ELEMENTS / 1024, 1024, Dtype::F32, 1);
    let values: Vec<f32> =
        m.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let mut out = Vec::new();
    if quantize(ty, &values, &mut out) {
        return out;
    }
    let (per, bytes) = ty.block();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut data: Vec<u8> = (0..GGUF_ELEMENTS / per * bytes)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    for block in data.chunks_exact_mut(bytes) {
        for &at in half_fields(ty) {
            block[at..at + 2].copy_from_slice(&0x211fu16.to_le_bytes()); // f16 0.01
        }
    }
    data
}

fn gguf_dequantize(c: &mut Criterion) {
    let mut group = c.benchmark_group("gguf_dequantize");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(GGUF_ELEMENTS as u64));
    for ty in GGML_TYPES {
        let data = gguf_blocks(ty);
        let mut out = Vec::with_capacity(GGUF_ELEMENTS);
        group.bench_with_input(BenchmarkId::from_parameter(ty.name()), &data, |b, data| {
            b.iter(|| {
                dequantize(ty, data, &mut out);
                assert_eq!(out.len(), GGUF_ELEMENTS);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, throughput, gguf_dequantize);
criterion_main!(benches);
