//! Opening a model for evaluation: its weights (through the core library, so
//! every layout `weightmark` reads works, sharded or not), its `config.json`
//! and its `tokenizer.json`, both looked up beside the weights.
//!
//! A GGUF file carries neither file in Hugging Face form; `weightmark convert`
//! writes both, so a GGUF suspect is evaluated after conversion.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;
use weightmark::decode_f64;
use weightmark::{Layout, Model};

use crate::error::{EvalError, Result};
use crate::llama::LlamaConfig;

/// The architectures the eval crate runs.
#[derive(Clone, Debug)]
pub enum Architecture {
    /// A decoder (`model_type` llama, mistral, qwen2 without biases, ...).
    Llama(LlamaConfig),
    /// A BERT-layout encoder used for sentence embeddings (MiniLM).
    Bert(Box<candle_transformers::models::bert::Config>),
}

/// A model opened for evaluation.
pub struct EvalModel {
    /// The weights, validated by the core library.
    pub model: Model,
    /// What the config says it is.
    pub architecture: Architecture,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
}

/// The directory that holds a model's side files: the model itself when it is
/// a directory, else the directory of the file.
pub fn side_dir(model_path: &Path) -> PathBuf {
    if model_path.is_dir() {
        return model_path.to_path_buf();
    }
    match model_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Opens the model at `path` with `config.json` and `tokenizer.json` from
/// beside it (or the tokenizer at `tokenizer`, when given).
pub fn open(path: &Path, tokenizer: Option<&Path>) -> Result<EvalModel> {
    open_like(path, path, tokenizer)
}

/// Opens the model at `path` like [`open`], but reads `config.json` from
/// beside `reference` when `path` has none beside it (a bare marked copy of
/// `reference`, say).
pub fn open_like(path: &Path, reference: &Path, tokenizer: Option<&Path>) -> Result<EvalModel> {
    let model = Model::open(path)?;
    if model.layout == Layout::Gguf {
        return Err(EvalError::input(
            path,
            "GGUF files carry no config.json or tokenizer.json; run `weightmark convert` first",
        ));
    }
    let dir = side_dir(path);
    let own_config = dir.join("config.json");
    let config =
        if own_config.is_file() { own_config } else { side_dir(reference).join("config.json") };
    let architecture = read_config(&config)?;
    let tokenizer_path =
        tokenizer.map(Path::to_path_buf).unwrap_or_else(|| dir.join("tokenizer.json"));
    let tokenizer = load_tokenizer(&tokenizer_path)?;
    Ok(EvalModel { model, architecture, tokenizer })
}

/// Reads a Hugging Face `config.json` and decides the architecture.
pub fn read_config(path: &Path) -> Result<Architecture> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        EvalError::input(
            path,
            format!("cannot read the model's config ({e}); it must sit beside the weights"),
        )
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| EvalError::input(path, format!("not JSON: {e}")))?;
    let model_type = value.get("model_type").and_then(|v| v.as_str()).unwrap_or("").to_string();
    let parse_error =
        |e: serde_json::Error| EvalError::input(path, format!("{model_type} config: {e}"));
    match model_type.as_str() {
        "llama" | "mistral" => {
            Ok(Architecture::Llama(serde_json::from_value(value).map_err(parse_error)?))
        }
        "bert" => {
            Ok(Architecture::Bert(Box::new(serde_json::from_value(value).map_err(parse_error)?)))
        }
        other => Err(EvalError::input(
            path,
            format!("model_type '{other}' is not supported (llama, mistral or bert)"),
        )),
    }
}

/// Loads a Hugging Face `tokenizer.json`.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if !path.is_file() {
        return Err(EvalError::input(
            path,
            "no tokenizer.json; `weightmark convert` writes one for GGUF models, or pass --tokenizer",
        ));
    }
    Tokenizer::from_file(path)
        .map_err(|e| EvalError::input(path, format!("not a usable tokenizer: {e}")))
}

/// Every float tensor of `model` as an f32 candle tensor on the CPU, by name.
pub fn tensors_f32(model: &Model) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let mut buf = Vec::new();
    for t in model.tensors() {
        if !t.dtype.is_readable() {
            continue;
        }
        if !decode_f64(t.dtype, &t.data(), &mut buf) {
            continue;
        }
        let values: Vec<f32> = buf.iter().map(|&v| v as f32).collect();
        out.insert(t.name.to_string(), Tensor::from_vec(values, t.shape, &Device::Cpu)?);
    }
    Ok(out)
}

/// Encodes `text` without adding special tokens.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    tokenizer
        .encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| EvalError::invalid(format!("tokenizer failed: {e}")))
}
