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
