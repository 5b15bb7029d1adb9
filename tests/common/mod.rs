//! Helpers shared by the end-to-end tests: real-model fixtures and synthetic
//! models written to temporary directories.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use weightmark::synth::{llama, write_file, LlamaShape, SynthTensor};
use weightmark::Dtype;

/// A Llama-shaped model of 20.1M parameters: the "20M or more" floor.
pub const SHAPE_20M: LlamaShape =
    LlamaShape { vocab: 8192, hidden: 384, intermediate: 1152, layers: 8, heads: 6, kv_heads: 2 };

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

/// Path of a real model file; fails the test (never skips it) when missing.
pub fn real_model(relative: &str) -> PathBuf {
    let path = models_dir().join(relative);
    assert!(
        path.exists(),
        "real model {} is missing: run scripts/fetch-models first (or set WEIGHTMARK_MODELS)",
        path.display()
    );
    path
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
