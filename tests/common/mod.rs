//! Helpers shared by the end-to-end tests: real-model fixtures and synthetic
//! models written to temporary directories.

#![allow(dead_code)]

pub mod llama_server;

use std::path::{Path, PathBuf};

use weightmark::synth::{llama, write_file, LlamaShape, SynthTensor};
use weightmark::Dtype;

/// A Llama-shaped model of 20.1M parameters: the "20M or more" floor.
pub const SHAPE_20M: LlamaShape =
    LlamaShape { vocab: 8192, hidden: 384, intermediate: 1152, layers: 8, heads: 6, kv_heads: 2 };

/// A tiny Llama shape (2 layers) for tests of layout-aware edits.
pub const TINY_LLAMA: LlamaShape =
    LlamaShape { vocab: 256, hidden: 64, intermediate: 128, layers: 2, heads: 4, kv_heads: 2 };

/// Where `scripts/fetch-models` put the real models.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEIGHTMARK_MODELS") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("weightmark").join("models")
}

/// Whether every fixture must be present (set by `scripts/test`, so CI
/// fails on a missing model or package instead of skipping the test).
pub fn fixtures_required() -> bool {
    std::env::var_os("WEIGHTMARK_REQUIRE_FIXTURES").is_some_and(|v| v == "1")
}

/// A missing fixture: fails the test under `scripts/test`, else says on
/// stderr that the test is skipped, and why, and returns false.
pub fn fixture_missing(what: &str, how: &str) -> bool {
    assert!(!fixtures_required(), "{what} is missing: {how}");
    // Straight to stderr, past the test harness's capture, so a skip is seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {what} is missing ({how}); scripts/test runs this test"
    );
    false
}

/// Path of a real model file, or `None` (the test skips itself, with a
/// message) when it is missing outside `scripts/test`. Use [`real_model!`].
pub fn fixture(relative: &str) -> Option<PathBuf> {
    let path = models_dir().join(relative);
    if path.exists() {
        return Some(path);
    }
    fixture_missing(
        &format!("real model {}", path.display()),
        "run scripts/fetch-models first, or set WEIGHTMARK_MODELS",
    );
    None
}

/// `real_model!("minilm")`: the fixture's path, or return from the test
/// (skipped with a message) when it is missing outside `scripts/test`.
#[allow(unused_macros)]
macro_rules! real_model {
    ($relative:expr) => {
        match $crate::common::fixture($relative) {
            Some(path) => path,
            None => return Default::default(),
        }
    };
}
#[allow(unused_imports)]
pub(crate) use real_model;

/// Whether python3 can import every module named; a missing one skips the
/// test (with a message) outside `scripts/test`, which installs them.
pub fn python_has(modules: &[&str]) -> bool {
    let code = modules.iter().map(|m| format!("import {m}")).collect::<Vec<_>>().join("; ");
    let ok = std::process::Command::new("python3")
        .args(["-c", &code])
        .output()
        .is_ok_and(|o| o.status.success());
    ok || fixture_missing(
        &format!("the Python package(s) {}", modules.join(", ")),
        "scripts/test installs them",
    )
}

/// Writes a synthetic Llama-shaped model and returns its path.
pub fn write_llama(dir: &Path, name: &str, shape: &LlamaShape, dtype: Dtype, seed: u64) -> PathBuf {
    let path = dir.join(name);
    write_file(&path, &llama(shape, dtype, seed), None).unwrap_or_else(|e| panic!("{e}"));
    path
}

/// A small model mixing what must pass through untouched with what is marked:
/// an I64 tensor, a BOOL tensor, a 1-D norm, a small matrix below the 4096
/// element floor, metadata, and two markable matrices, in a deliberate order.
pub fn mixed_tensors() -> Vec<SynthTensor> {
    let ids: Vec<u8> = (0..512i64).flat_map(|i| i.to_le_bytes()).collect();
    let mut tensors = vec![
        weightmark::synth::gaussian_matrix("z.first.weight", 256, 128, Dtype::F32, 1),
        SynthTensor {
            name: "embeddings.position_ids".into(),
            dtype: Dtype::I64,
            shape: vec![1, 512],
            data: ids,
        },
        SynthTensor {
            name: "mask".into(),
            dtype: Dtype::Bool,
            shape: vec![7],
            data: vec![1, 0, 1, 1, 0, 0, 1],
        },
        weightmark::synth::gaussian_matrix("a.small.weight", 16, 16, Dtype::F32, 2),
        weightmark::synth::gaussian_matrix("m.second.weight", 128, 96, Dtype::F32, 3),
    ];
    let norm: Vec<u8> = (0..128).flat_map(|i| (1.0f32 + i as f32 * 1e-3).to_le_bytes()).collect();
    tensors.push(SynthTensor {
        name: "norm.weight".into(),
        dtype: Dtype::F32,
        shape: vec![128],
        data: norm,
    });
    tensors
}

/// Metadata used with [`mixed_tensors`].
pub fn mixed_metadata() -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("note".to_string(), "kept byte for byte".to_string()),
    ])
}

/// A fresh temporary directory in which the `weightmark` binary runs (CLI tests).
pub struct Scene {
    /// The directory (removed on drop).
    pub dir: tempfile::TempDir,
}

impl Scene {
    /// A new, empty scene.
    pub fn new() -> Scene {
        Scene { dir: tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")) }
    }

    /// A path inside the scene.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs the binary with `args` in the scene.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.run_env(args, &[])
    }

    /// Runs the binary with `args` and extra environment variables.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let binary = option_env!("CARGO_BIN_EXE_weightmark").unwrap_or_else(|| {
            panic!("Scene runs the weightmark binary: use it from the CLI crate's tests")
        });
        let mut cmd = std::process::Command::new(binary);
        cmd.args(args).current_dir(self.dir.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap_or_else(|e| panic!("cannot run weightmark: {e}"))
    }

    /// Runs the binary and asserts exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}{}", stdout(&o), stderr(&o));
        stdout(&o)
    }

    /// `keygen -o NAME`; returns the secret key file name.
    pub fn keygen(&self, name: &str) -> String {
        self.ok(&["keygen", "-o", name]);
        format!("{name}.key")
    }

    /// File names in the scene, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names
    }
}

/// A command's stdout as text.
pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's stderr as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A command's stdout parsed as JSON.
pub fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)))
}

/// GPT-2's map from bytes to printable characters, which byte-level BPE
/// vocabularies are written in.
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut chars = vec!['\0'; 256];
    for &b in &printable {
        chars[b as usize] = char::from_u32(b).unwrap_or('?');
    }
    let mut next = 256;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            chars[b as usize] = char::from_u32(next).unwrap_or('?');
            printable.push(b);
            next += 1;
        }
    }
    chars
}

/// Writes a Hugging Face `tokenizer.json` whose tokens are the 256 bytes (id =
/// byte value): byte-level BPE without merges, for tiny synthetic models.
pub fn write_byte_tokenizer(path: &Path) {
    let vocab: serde_json::Map<String, serde_json::Value> =
        byte_chars().iter().enumerate().map(|(i, c)| (c.to_string(), i.into())).collect();
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": []
        }
    });
    std::fs::write(path, tokenizer.to_string()).unwrap_or_else(|e| panic!("{e}"));
}

/// Writes a synthetic Llama model directory that the eval commands can run:
/// `model.safetensors`, `config.json` and a byte tokenizer (the vocabulary must
/// be 256).
pub fn write_llama_dir(dir: &Path, shape: &LlamaShape, dtype: Dtype, seed: u64) -> PathBuf {
    assert_eq!(shape.vocab, 256, "the byte tokenizer has 256 tokens");
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
    write_file(&dir.join("model.safetensors"), &llama(shape, dtype, seed), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let config = serde_json::json!({
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": shape.vocab,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": false
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap_or_else(|e| panic!("{e}"));
    write_byte_tokenizer(&dir.join("tokenizer.json"));
    dir.to_path_buf()
}

/// A real English text shipped with Debian: the GPL version 3 (a test that
/// needs it checks [`has_license_text`] first).
pub fn license_text() -> PathBuf {
    PathBuf::from("/usr/share/common-licenses/GPL-3")
}

/// Whether [`license_text`] exists; a missing one skips the test (with a
/// message) outside `scripts/test`.
pub fn has_license_text() -> bool {
    license_text().is_file()
        || fixture_missing("/usr/share/common-licenses/GPL-3", "Debian's base-files ships it")
}

/// A tensor of a model as f64 values, row-major.
pub fn tensor_values(m: &weightmark::Model, name: &str) -> Vec<f64> {
    let t = m.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
    let mut v = Vec::new();
    weightmark::decode_f64(t.dtype, &t.data(), &mut v);
    v
}

/// `x w^T`: `x` holds rows of `w`'s width (a weight in PyTorch's [out, in]
/// layout), the result rows of its height.
fn linear(x: &[f64], w: &[f64], width: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len() / width * (w.len() / width));
    for row in x.chunks_exact(width) {
        out.extend(
            w.chunks_exact(width).map(|wr| wr.iter().zip(row).map(|(a, b)| a * b).sum::<f64>()),
        );
    }
    out
}

/// RMSNorm (epsilon 1e-5) of each row of `x` (rows of `w`'s length), times `w`.
pub fn rms_norm(x: &[f64], w: &[f64]) -> Vec<f64> {
    let mut out = x.to_vec();
    for row in out.chunks_exact_mut(w.len()) {
        let rms = (row.iter().map(|v| v * v).sum::<f64>() / row.len() as f64 + 1e-5).sqrt();
        row.iter_mut().zip(w).for_each(|(v, g)| *v = *v / rms * g);
    }
    out
}

/// RoPE (base 10000, Hugging Face's `rotate_half` pairing of `i` with
/// `i + d/2`) on rows of `heads` heads, row `n` at position `n`.
pub fn rope(x: &mut [f64], heads: usize, width: usize) {
    let d = width / heads;
    for (pos, row) in x.chunks_exact_mut(width).enumerate() {
        for h in 0..heads {
            for i in 0..d / 2 {
                let theta = pos as f64 / 10000f64.powf(2.0 * i as f64 / d as f64);
                let (a, b) = (row[h * d + i], row[h * d + i + d / 2]);
                row[h * d + i] = a * theta.cos() - b * theta.sin();
                row[h * d + i + d / 2] = a * theta.sin() + b * theta.cos();
            }
        }
    }
}

/// Logits (tokens x vocab, row-major) of a Llama-layout model: RMSNorm,
/// RoPE, grouped-query causal attention, SwiGLU MLP, and the head, or the
/// embeddings when the head is tied (no `lm_head.weight`). Computed in f64
/// from the stored values.
pub fn logits(m: &weightmark::Model, shape: &LlamaShape, tokens: &[usize]) -> Vec<f64> {
    let embed = tensor_values(m, "model.embed_tokens.weight");
    let hidden = shape.hidden;
    let n = tokens.len();
    let mut h: Vec<f64> =
        tokens.iter().flat_map(|&t| embed[t * hidden..(t + 1) * hidden].to_vec()).collect();
    for l in 0..shape.layers {
        let p = |name: &str| tensor_values(m, &format!("model.layers.{l}.{name}.weight"));
        let x = rms_norm(&h, &p("input_layernorm"));
        let mut q = linear(&x, &p("self_attn.q_proj"), hidden);
        let mut k = linear(&x, &p("self_attn.k_proj"), hidden);
        let v = linear(&x, &p("self_attn.v_proj"), hidden);
        let (q_width, kv_width) = (q.len() / n, k.len() / n);
        let d = q_width / shape.heads;
        rope(&mut q, shape.heads, q_width);
        rope(&mut k, shape.kv_heads, kv_width);
        let mut attn = vec![0.0; n * q_width];
        for head in 0..shape.heads {
            let kv = head / (shape.heads / shape.kv_heads);
            for i in 0..n {
                let qi = &q[i * q_width + head * d..i * q_width + (head + 1) * d];
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        let kj = &k[j * kv_width + kv * d..j * kv_width + (kv + 1) * d];
                        qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = weights.iter().sum();
                for (j, w) in weights.iter().enumerate() {
                    for c in 0..d {
                        attn[i * q_width + head * d + c] += w / sum * v[j * kv_width + kv * d + c];
                    }
                }
            }
        }
        let o = linear(&attn, &p("self_attn.o_proj"), q_width);
        h.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        let x = rms_norm(&h, &p("post_attention_layernorm"));
        let gate = linear(&x, &p("mlp.gate_proj"), hidden);
        let up = linear(&x, &p("mlp.up_proj"), hidden);
        let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
        let down = linear(&act, &p("mlp.down_proj"), act.len() / n);
        h.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
    }
    let x = rms_norm(&h, &tensor_values(m, "model.norm.weight"));
    let head = if m.tensor("lm_head.weight").is_some() {
        tensor_values(m, "lm_head.weight")
    } else {
        embed
    };
    linear(&x, &head, hidden)
}

/// The largest difference between two logit arrays, relative to the largest
/// magnitude of the first.
pub fn relative_difference(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "logits of different sizes");
    let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    worst / scale
}

/// Marks `model` for recipient "alice" under `scheme` into `dir/marked`
/// with the owner key of `seed`, writes and reloads its certificate, and
/// returns the marked model and the release's detection target.
pub fn mark_for_alice(
    model: &weightmark::Model,
    dir: &Path,
    scheme: weightmark::Scheme,
    label: &str,
    seed: u8,
) -> (weightmark::Model, weightmark::Target) {
    let key = weightmark::SecretKey::from_seed([seed; 32]);
    let out = dir.join("marked");
    let options = weightmark::EmbedOptions::new(label).scheme(scheme).recipient("alice");
    let report = weightmark::embed(model, &out, &key, &options).unwrap_or_else(|e| panic!("{e}"));
    let cert = dir.join("marked.cert.json");
    weightmark::write_atomic(&cert, &report.certificate_text().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    let cert =
        weightmark::load_certificate(&cert, &key.public_key()).unwrap_or_else(|e| panic!("{e}"));
    let target =
        weightmark::Target::from_certificate(&cert, &key).unwrap_or_else(|e| panic!("{e}"));
    (weightmark::Model::open(&out).unwrap_or_else(|e| panic!("{e}")), target)
}
