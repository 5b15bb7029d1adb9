//! Writing any readable model (a GGUF file in particular) as Hugging
//! Face-layout safetensors: one file, or shards with an index, plus a
//! `config.json` built from GGUF metadata and, for byte-level BPE
//! vocabularies, a `tokenizer.json` with its `tokenizer_config.json`
//! ([`crate::gguf::tokenizer`]).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::json;

use crate::dtype::{decode_f64, encode_nearest, Dtype};
use crate::error::{Error, Result};
use crate::gguf::tokenizer::{to_hf_tokenizer, TokenizerExport};
use crate::gguf::GgufFile;
use crate::model::{Model, TensorRef, INDEX_FILE_NAME};

/// Options for [`convert`].
pub struct ConvertOptions {
    /// Dtype of the float tensors written (F32, F16 or BF16).
    pub dtype: Dtype,
    /// Largest shard in bytes; `None` writes a single `model.safetensors`.
    pub max_shard_bytes: Option<u64>,
}

/// What [`convert`] wrote.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    /// Shard file names (one for a single file).
    pub files: Vec<String>,
    /// Tensors written.
    pub tensors: usize,
    /// Whether a config.json was written.
    pub config: bool,
    /// Whether a tokenizer.json and tokenizer_config.json were written.
    pub tokenizer: bool,
    /// Things the user should know (a tokenizer that could not be exported, ...).
    pub warnings: Vec<String>,
}

/// Writes `model` into the new directory `out` as safetensors.
pub fn convert(model: &Model, out: &Path, options: &ConvertOptions) -> Result<ConvertReport> {
    if !matches!(options.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        return Err(Error::invalid(format!(
            "cannot convert to {}: the output dtype must be f32, f16 or bf16",
            options.dtype
        )));
    }
    if out.exists() && fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(Error::invalid(format!(
            "{}: exists and is not an empty directory",
            out.display()
        )));
    }
    let staging = crate::io::StagingDir::create(out)?;

    // Checked before any tensor is written: malformed metadata fails fast.
    let tokenizer = match &model.raw {
        Some(raw) => to_hf_tokenizer(&raw.gguf).map_err(|e| Error::format(&model.path, e))?,
        None => TokenizerExport::Absent,
    };

    let tensors: Vec<TensorRef<'_>> = model.tensors().collect();
    let size_of = |t: &TensorRef<'_>| -> u64 {
        let dtype = if t.dtype.is_readable() { options.dtype } else { t.dtype };
        (t.elements() * dtype.size()) as u64
    };
    // Greedy split into shards no larger than the limit (a bigger tensor gets its own).
    let mut shards: Vec<Vec<&TensorRef<'_>>> = vec![Vec::new()];
    let mut current = 0u64;
    for t in &tensors {
        let size = size_of(t);
        let limit = options.max_shard_bytes.unwrap_or(u64::MAX);
        if current > 0 && current.saturating_add(size) > limit {
            shards.push(Vec::new());
            current = 0;
        }
        current += size;
        if let Some(last) = shards.last_mut() {
            last.push(t);
        }
    }
    let count = shards.len();
    let mut names = Vec::new();
    let mut weight_map = BTreeMap::new();
    let mut total = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let name = if count == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, count)
        };
        total += write_shard(&staging.path().join(&name), shard, options.dtype)?;
        for t in shard {
            weight_map.insert(t.name.to_string(), name.clone());
        }
        names.push(name);
    }
    if count > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json(&staging.path().join(INDEX_FILE_NAME), &index)?;
    }
    let config = match &model.raw {
        Some(raw) => hf_config(&raw.gguf, model, options.dtype),
        None => None,
    };
    if let Some(config) = &config {
        write_json(&staging.path().join("config.json"), config)?;
    }
    let mut warnings = Vec::new();
    let tokenizer = match tokenizer {
        TokenizerExport::Files(files) => {
            write_json(&staging.path().join("tokenizer.json"), &files.tokenizer)?;
            write_json(&staging.path().join("tokenizer_config.json"), &files.config)?;
            true
        }
        TokenizerExport::Unsupported(why) => {
            warnings.push(format!("no tokenizer.json written: {why}"));
            false
        }
        TokenizerExport::Absent => false,
    };
    crate::io::set_public_mode(staging.path(), 0o755)?;
    staging.commit(out)?;
    Ok(ConvertReport {
        files: names,
        tensors: tensors.len(),
        config: config.is_some(),
        tokenizer,
        warnings,
    })
}

/// Writes `value` as pretty-printed JSON.
fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::io(path, e.into()))?;
    fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Writes one safetensors file; returns its data bytes.
fn write_shard(path: &Path, tensors: &[&TensorRef<'_>], dtype: Dtype) -> Result<u64> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0u64;
    for t in tensors {
        let d = if t.dtype.is_readable() { dtype } else { t.dtype };
        let len = (t.elements() * d.size()) as u64;
        header.insert(
            t.name.to_string(),
            json!({"dtype": d.name(), "shape": t.shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let io = |e| Error::io(path, e);
    w.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&json).map_err(io)?;
    let mut values = Vec::new();
    for t in tensors {
        if !t.dtype.is_readable() {
            w.write_all(&t.data()).map_err(io)?;
            continue;
        }
        decode_f64(t.dtype, &t.data(), &mut values);
        let mut bytes = vec![0u8; values.len() * dtype.size()];
        for (o, &v) in bytes.chunks_exact_mut(dtype.size()).zip(&values) {
            encode_nearest(dtype, v, o);
        }
        w.write_all(&bytes).map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(offset)
}

/// A Hugging Face `config.json` from GGUF metadata (Llama and Qwen families).
fn hf_config(gguf: &GgufFile, model: &Model, dtype: Dtype) -> Option<serde_json::Value> {
    let arch = gguf.architecture()?;
    let (architecture, model_type) = match arch {
        "llama" | "mistral" => ("LlamaForCausalLM", "llama"),
        "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
        "qwen3" => ("Qwen3ForCausalLM", "qwen3"),
        _ => return None,
    };
    let u = |k: &str| gguf.meta_u64(&format!("{arch}.{k}"));
    let f = |k: &str| gguf.metadata.get(&format!("{arch}.{k}")).and_then(|v| v.as_f64());
    let vocab = u("vocab_size").or_else(|| {
        model.tensor("model.embed_tokens.weight").and_then(|t| t.shape.first().map(|&v| v as u64))
    });
    let heads = u("attention.head_count");
    let mut config = json!({
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": u("embedding_length"),
        "intermediate_size": u("feed_forward_length"),
        "num_hidden_layers": u("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": u("attention.head_count_kv").or(heads),
        "max_position_embeddings": u("context_length"),
        "rms_norm_eps": f("attention.layer_norm_rms_epsilon"),
        "rope_theta": f("rope.freq_base"),
        "vocab_size": vocab,
        "hidden_act": "silu",
        "tie_word_embeddings": model.tensor("lm_head.weight").is_none(),
        "bos_token_id": gguf.meta_u64("tokenizer.ggml.bos_token_id"),
        "eos_token_id": gguf.meta_u64("tokenizer.ggml.eos_token_id"),
        "torch_dtype": match dtype { Dtype::F16 => "float16", Dtype::BF16 => "bfloat16", _ => "float32" },
    });
    // Leave out what the GGUF file does not say rather than writing nulls.
    if let Some(map) = config.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    Some(config)
}

/// Parses a size such as `500MB`, `2GB`, `1GiB` or `123456` (bytes).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * factor;
    (1.0..1e18).contains(&bytes).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("500MB"), Some(500_000_000));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("42"), Some(42));
        assert_eq!(parse_size("2 GB"), Some(2_000_000_000));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("0"), None);
    }
}
