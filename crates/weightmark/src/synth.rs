//! Synthetic models: Llama-shaped weight sets built from a seed, and a small
//! safetensors writer for them. Used by `weightmark demo`, the tests and the
//! benches; real models come from `scripts/fetch-models`.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use rayon::prelude::*;

use crate::dtype::{encode_nearest, Dtype};
use crate::error::{Error, Result};
use crate::io::{
    refuse_non_empty_dir, set_public_mode, write_atomic_bytes, AtomicFile, Overwrite, StagingDir,
};
use crate::rng::{fill_normal, stream};

/// A tensor held in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthTensor {
    /// Name.
    pub name: String,
    /// Dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian bytes.
    pub data: Vec<u8>,
}

/// The dimensions of a Llama-layout decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LlamaShape {
    /// Vocabulary size.
    pub vocab: usize,
    /// Residual width.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: usize,
}

impl LlamaShape {
    /// The demo's model: about 33M parameters.
    pub const DEMO: LlamaShape = LlamaShape {
        vocab: 8000,
        hidden: 512,
        intermediate: 1376,
        layers: 8,
        heads: 8,
        kv_heads: 4,
    };

    /// A tiny model for fast tests: about 0.3M parameters.
    pub const TINY: LlamaShape =
        LlamaShape { vocab: 256, hidden: 64, intermediate: 172, layers: 2, heads: 4, kv_heads: 2 };

    /// Total number of parameters.
    pub fn parameters(&self) -> usize {
        llama_layout(self).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// A Hugging Face `config.json` for this shape (Llama, untied head,
    /// RMSNorm epsilon 1e-5, RoPE base 10000, context 4096), naming `dtype`.
    pub fn config_json(&self, dtype: Dtype) -> serde_json::Value {
        let torch_dtype = match dtype {
            Dtype::BF16 => "bfloat16",
            Dtype::F16 => "float16",
            Dtype::F64 => "float64",
            _ => "float32",
        };
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "vocab_size": self.vocab,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": false,
            "torch_dtype": torch_dtype,
        })
    }
}

/// Names and shapes of a Llama-layout model, in Hugging Face naming.
pub fn llama_layout(s: &LlamaShape) -> Vec<(String, Vec<usize>)> {
    let head_dim = s.hidden / s.heads.max(1);
    let kv = s.kv_heads * head_dim;
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![s.vocab, s.hidden])];
    for l in 0..s.layers {
        let p = format!("model.layers.{l}");
        out.extend([
            (format!("{p}.input_layernorm.weight"), vec![s.hidden]),
            (format!("{p}.self_attn.q_proj.weight"), vec![s.hidden, s.hidden]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, s.hidden]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, s.hidden]),
            (format!("{p}.self_attn.o_proj.weight"), vec![s.hidden, s.hidden]),
            (format!("{p}.post_attention_layernorm.weight"), vec![s.hidden]),
            (format!("{p}.mlp.gate_proj.weight"), vec![s.intermediate, s.hidden]),
            (format!("{p}.mlp.up_proj.weight"), vec![s.intermediate, s.hidden]),
            (format!("{p}.mlp.down_proj.weight"), vec![s.hidden, s.intermediate]),
        ]);
    }
    out.push(("model.norm.weight".to_string(), vec![s.hidden]));
    out.push(("lm_head.weight".to_string(), vec![s.vocab, s.hidden]));
    out
}

/// A Llama-shaped model with random weights: matrices are Gaussian with a
/// per-row scale around 0.02 (log-normal spread, as in trained models), the
/// embedding and head also with a per-column (residual channel) scale
/// (log-normal, log-sd 0.5: trained models have channels of very different
/// size), norm weights are near 1.
pub fn llama(shape: &LlamaShape, dtype: Dtype, seed: u64) -> Vec<SynthTensor> {
    llama_layout(shape)
        .into_par_iter()
        .map(|(name, dims)| llama_tensor(&name, &dims, dtype, seed))
        .collect()
}

/// One tensor of [`llama`], by name and shape: the same bytes whether it is
/// made alone or with the rest of the model.
pub fn llama_tensor(name: &str, dims: &[usize], dtype: Dtype, seed: u64) -> SynthTensor {
    match dims {
        [len] => norm_vector(name, *len, dtype, seed),
        [rows, cols, ..] if name == "model.embed_tokens.weight" || name == "lm_head.weight" => {
            scaled_columns(gaussian_matrix(name, *rows, *cols, dtype, seed), seed)
        }
        [rows, cols, ..] => gaussian_matrix(name, *rows, *cols, dtype, seed),
        [] => norm_vector(name, 1, dtype, seed),
    }
}

/// Multiplies each column of a matrix by a seeded log-normal factor
/// (log-sd 0.5), the same factors for every matrix of one seed.
fn scaled_columns(mut t: SynthTensor, seed: u64) -> SynthTensor {
    let cols = t.shape.get(1).copied().unwrap_or(1).max(1);
    let mut factors = vec![0.0; cols];
    fill_normal(&mut stream(seed, "column scales"), 0, &mut factors);
    let size = t.dtype.size();
    let dtype = t.dtype;
    t.data.par_chunks_mut(cols * size).for_each(|row| {
        let mut values = Vec::with_capacity(cols);
        crate::dtype::decode_f64(dtype, row, &mut values);
        for ((o, x), f) in row.chunks_exact_mut(size).zip(&values).zip(&factors) {
            encode_nearest(dtype, x * (0.5 * f).exp(), o);
        }
    });
    t
}

/// A `rows x cols` Gaussian matrix with a log-normal per-row scale near 0.02.
pub fn gaussian_matrix(
    name: &str,
    rows: usize,
    cols: usize,
    dtype: Dtype,
    seed: u64,
) -> SynthTensor {
    let mut scales = vec![0.0; rows];
    fill_normal(&mut stream(seed, &format!("scale\0{name}")), 0, &mut scales);
    let size = dtype.size();
    let mut data = vec![0u8; rows * cols * size];
    data.par_chunks_mut(cols * size).enumerate().for_each(|(r, out)| {
        let mut v = vec![0.0; cols];
        fill_normal(&mut stream(seed, name), (r * cols) as u64, &mut v);
        let scale = 0.02 * (0.3 * scales[r]).exp();
        for (o, x) in out.chunks_exact_mut(size).zip(&v) {
            encode_nearest(dtype, x * scale, o);
        }
    });
    SynthTensor { name: name.to_string(), dtype, shape: vec![rows, cols], data }
}

fn norm_vector(name: &str, len: usize, dtype: Dtype, seed: u64) -> SynthTensor {
    let mut v = vec![0.0; len];
    fill_normal(&mut stream(seed, name), 0, &mut v);
    let mut data = vec![0u8; len * dtype.size()];
    for (o, x) in data.chunks_exact_mut(dtype.size()).zip(&v) {
        encode_nearest(dtype, 1.0 + 0.05 * x, o);
    }
    SynthTensor { name: name.to_string(), dtype, shape: vec![len], data }
}

/// Serialises tensors (in the given order) as a safetensors file.
pub fn to_safetensors(
    tensors: &[SynthTensor],
    metadata: Option<&BTreeMap<String, String>>,
) -> Vec<u8> {
    let entries: Vec<(&str, Dtype, &[usize])> =
        tensors.iter().map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice())).collect();
    let mut out = safetensors_header(&entries, metadata);
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    out
}

/// The bytes of a safetensors file before its data (length prefix and JSON
/// header, padded to 8 bytes with spaces as the reference writer does) for
/// tensors stored in the given order.
fn safetensors_header(
    entries: &[(&str, Dtype, &[usize])],
    metadata: Option<&BTreeMap<String, String>>,
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if let Some(m) = metadata {
        header.insert("__metadata__".into(), serde_json::json!(m));
    }
    let mut offset = 0usize;
    for (name, dtype, shape) in entries {
        let len = shape.iter().product::<usize>() * dtype.size();
        header.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": dtype.name(),
                "shape": shape,
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

/// Writes tensors as one safetensors file (atomically).
pub fn write_file(
    path: &Path,
    tensors: &[SynthTensor],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<()> {
    write_atomic_bytes(path, &to_safetensors(tensors, metadata))
}

/// Writes tensors as `shards` safetensors files in `dir` with a Hugging Face
/// index, splitting the tensor list into contiguous runs.
pub fn write_sharded(dir: &Path, tensors: &[SynthTensor], shards: usize) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let shards = shards.clamp(1, tensors.len().max(1));
    let per = tensors.len().div_ceil(shards);
    let mut weight_map = BTreeMap::new();
    let mut total = 0usize;
    for (i, chunk) in tensors.chunks(per.max(1)).enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        for t in chunk {
            weight_map.insert(t.name.clone(), file.clone());
            total += t.data.len();
        }
        write_file(
            &dir.join(&file),
            chunk,
            Some(&BTreeMap::from([("format".into(), "pt".into())])),
        )?;
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    write_atomic_bytes(&dir.join(crate::model::INDEX_FILE_NAME), index.to_string().as_bytes())
}

/// Writes [`llama`]'s model as one safetensors file (atomically), making and
/// writing one tensor at a time, so memory holds about two tensors whatever
/// the model's size. The bytes are those of [`write_file`] given
/// `llama(shape, dtype, seed)` and no metadata.
pub fn write_llama_file(path: &Path, shape: &LlamaShape, dtype: Dtype, seed: u64) -> Result<()> {
    let tensors = llama_layout(shape);
    let mut file = AtomicFile::create(path)?;
    stream_tensors(file.file()?, path, &tensors, dtype, seed, None)?;
    file.commit(Overwrite::Replace)
}

/// Writes [`llama`]'s model into the new directory `dir` as safetensors shards
/// of at most `max_shard_bytes` of tensor data each (greedy, in layout order;
/// a tensor larger than the limit gets a shard of its own), named
/// `model-0000k-of-0000n.safetensors` with a `model.safetensors.index.json`
/// (one shard is written as `model.safetensors`, without an index), and a
/// `config.json` ([`LlamaShape::config_json`]). Tensors are made and written
/// one at a time (memory holds about two); the directory appears only when
/// complete. Returns the weight files' names.
pub fn write_llama_sharded(
    dir: &Path,
    shape: &LlamaShape,
    dtype: Dtype,
    seed: u64,
    max_shard_bytes: u64,
) -> Result<Vec<String>> {
    refuse_non_empty_dir(dir)?;
    let layout = llama_layout(shape);
    let bytes = |dims: &[usize]| (dims.iter().product::<usize>() * dtype.size()) as u64;
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![Vec::new()];
    let mut current = 0u64;
    for (name, dims) in layout {
        let size = bytes(&dims);
        if current > 0 && current.saturating_add(size) > max_shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        current += size;
        if let Some(last) = shards.last_mut() {
            last.push((name, dims));
        }
    }
    let count = shards.len();
    let staging = StagingDir::create(dir)?;
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut names = Vec::new();
    let mut weight_map = BTreeMap::new();
    let mut total = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let name = if count == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, count)
        };
        let path = staging.path().join(&name);
        let mut file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        total += stream_tensors(&mut file, &path, shard, dtype, seed, Some(&metadata))?;
        for (tensor, _) in shard {
            weight_map.insert(tensor.clone(), name.clone());
        }
        names.push(name);
    }
    if count > 1 {
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json(&staging.path().join(crate::model::INDEX_FILE_NAME), &index)?;
    }
    write_json(&staging.path().join("config.json"), &shape.config_json(dtype))?;
    set_public_mode(staging.path(), 0o755)?;
    staging.commit(dir)?;
    Ok(names)
}

/// Writes `value` as pretty-printed JSON.
fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::io(path, e.into()))?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Writes one safetensors file of [`llama_tensor`]s to `file`: the header,
/// then each tensor in turn. The calling thread makes the next tensor (on
/// its rayon pool) while a writer thread writes this one. Returns the bytes
/// of tensor data written.
fn stream_tensors(
    file: &mut std::fs::File,
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    dtype: Dtype,
    seed: u64,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<u64> {
    let entries: Vec<(&str, Dtype, &[usize])> =
        tensors.iter().map(|(n, d)| (n.as_str(), dtype, d.as_slice())).collect();
    let header = safetensors_header(&entries, metadata);
    std::thread::scope(|scope| -> Result<u64> {
        // A rendezvous channel: at most one tensor being written and one being made.
        let (tx, rx) = std::sync::mpsc::sync_channel::<SynthTensor>(0);
        let writer = scope.spawn(move || -> Result<u64> {
            let io = |e| Error::io(path, e);
            let mut out = BufWriter::with_capacity(1 << 20, file);
            out.write_all(&header).map_err(io)?;
            let mut written = 0u64;
            for t in rx {
                out.write_all(&t.data).map_err(io)?;
                written += t.data.len() as u64;
            }
            out.flush().map_err(io)?;
            Ok(written)
        });
        for (name, dims) in tensors {
            if tx.send(llama_tensor(name, dims, dtype, seed)).is_err() {
                break; // the writer failed; its error is reported below
            }
        }
        drop(tx);
        writer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The tensors as a model held in memory (tests, examples).
pub fn to_model(tensors: &[SynthTensor]) -> Result<crate::model::Model> {
    let list = tensors
        .iter()
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone(), t.data.clone()))
        .collect();
    crate::model::Model::from_tensors("synthetic", list)
}
