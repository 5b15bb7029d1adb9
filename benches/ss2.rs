//! Throughput of embed and detect with the default scheme (ss2, with the
//! options the CLI passes by default) on synthetic Llama-shaped models in bf16
//! and f16, the dtypes real releases come in.
//!
//! Run with `cargo bench -p weightmark --bench ss2`, or one group with
//! `cargo bench -p weightmark --bench ss2 -- ss2_bf16`. Each group takes under
//! a minute on two cores (45 s for bf16 at load 3). Whole commands on real models, side by side
//! with `cp`, `openssl` and numpy peers: `scripts/bench-compare`.

use std::cell::OnceCell;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use weightmark::synth::{write_llama_sharded, LlamaShape};
use weightmark::{
    detect, embed, load_certificate, write_new, Allocation, DetectOptions, Dtype, EmbedOptions,
    EmbedReport, Model, NoProgress, Overwrite, RecipientCode, Scheme, SecretKey, Selection, Target,
    DEFAULT_THRESHOLD_P,
};

/// A Llama layout of 20M parameters (40 MB in bf16 or f16): the embedding,
/// head and 4 layers at the demo model's widths, so that canonical
/// coordinates, neuron and head matching all run as on a real model.
const SHAPE: LlamaShape =
    LlamaShape { vocab: 8000, hidden: 512, intermediate: 1376, layers: 4, heads: 8, kv_heads: 4 };

fn or_panic<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// What `weightmark embed -k KEY MODEL -o OUT` passes (commands/embed.rs),
/// with a fixed creation time.
fn options() -> EmbedOptions<'static> {
    EmbedOptions {
        scheme: Scheme::Ss2,
        strength: None,
        label: "bench".into(),
        recipient: None,
        selection: Selection::Default,
        created: "2026-12-03T00:00:00Z".into(),
        progress: &NoProgress,
        overwrite: Overwrite::Refuse,
        allocation: Allocation::DEFAULT,
        recipient_code: RecipientCode::Independent,
        recipient_share: None,
    }
}

/// The model (a directory with `config.json`, as the CLI is given one),
/// made on first use, so that a run filtered to another group does not pay
/// for it.
struct Setup {
    dir: tempfile::TempDir,
    model: Model,
    key: SecretKey,
}

impl Setup {
    fn new(dtype: Dtype) -> Setup {
        let dir = or_panic(tempfile::tempdir());
        let path = dir.path().join("model");
        or_panic(write_llama_sharded(&path, &SHAPE, dtype, 1, u64::MAX));
        let model = or_panic(Model::open(&path));
        Setup { dir, model, key: SecretKey::from_seed([1; 32]) }
    }

    fn marked(&self) -> PathBuf {
        self.dir.path().join("marked")
    }

    /// Removes the marked copy, if any: embed never replaces a non-empty
    /// directory.
    fn clear(&self) {
        let _ = std::fs::remove_dir_all(self.marked());
    }

    /// Marks the model into the (absent) directory `marked`.
    fn embed(&self) -> EmbedReport {
        or_panic(embed(&self.model, &self.marked(), &self.key, &options()))
    }

    /// One more embed, with what `detect --cert` reads: the marked copy and
    /// the target from its certificate file.
    fn suspect(&self) -> (Model, Target) {
        self.clear();
        let report = self.embed();
        let cert = self.dir.path().join("marked.cert.json");
        or_panic(write_new(&cert, &or_panic(report.certificate_text()), Overwrite::Replace));
        let certificate = or_panic(load_certificate(&cert, &self.key.public_key()));
        let target = or_panic(Target::from_certificate(&certificate, &self.key));
        (or_panic(Model::open(self.marked())), target)
    }
}

fn embed_and_detect(c: &mut Criterion, dtype: Dtype, group_name: &str) {
    let setup = OnceCell::new();
    let setup = || setup.get_or_init(|| Setup::new(dtype));
    let suspect = OnceCell::new();
    let suspect = || suspect.get_or_init(|| setup().suspect());
    let detect_options = DetectOptions { threshold_p: DEFAULT_THRESHOLD_P, progress: &NoProgress };

    let mut group = c.benchmark_group(group_name);
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes((SHAPE.parameters() * dtype.size()) as u64));
    group.bench_function("embed", |b| {
        let s = setup();
        b.iter_batched(|| s.clear(), |()| s.embed(), BatchSize::PerIteration)
    });
    group.bench_function("detect_blind", |b| {
        let (suspect, target) = suspect();
        b.iter(|| or_panic(detect(suspect, None, target, &detect_options)))
    });
    group.bench_function("detect_informed", |b| {
        let ((suspect, target), original) = (suspect(), &setup().model);
        b.iter(|| or_panic(detect(suspect, Some(original), target, &detect_options)))
    });
    group.finish();
}

fn ss2_bf16(c: &mut Criterion) {
    embed_and_detect(c, Dtype::BF16, "ss2_bf16");
}

fn ss2_f16(c: &mut Criterion) {
    embed_and_detect(c, Dtype::F16, "ss2_f16");
}

criterion_group!(benches, ss2_bf16, ss2_f16);
criterion_main!(benches);
