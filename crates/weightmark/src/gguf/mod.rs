//! Reading GGUF files (llama.cpp's format) as models.
//!
//! A GGUF suspect is read whole: every tensor is dequantized to f32, its
//! dimensions reversed to Hugging Face order, its name mapped to the Hugging
//! Face name for the architectures in [`names::MAPPED_ARCHITECTURES`], and the
//! Q/K rows of Llama-family attention un-permuted. The result is a [`Model`]
//! like any other, so `detect`, `identify` and `convert` work on it directly.
//! Memory: 4 bytes per parameter (a 7B model needs 28 GB).

pub mod meta;
pub mod names;
pub mod quant;
pub mod quantize;
pub mod reader;
pub mod tokenizer;

use rayon::prelude::*;

pub use quant::GgmlType;
pub use reader::{Array, GgufFile, GgufTensorInfo, Value};

use crate::error::FormatError;

/// A GGUF tensor converted to an f32 tensor with its canonical name.
pub struct CanonicalTensor {
    /// Canonical (Hugging Face) name.
    pub name: String,
    /// Shape in Hugging Face order (dimensions reversed from GGUF's).
    pub shape: Vec<usize>,
    /// Little-endian f32 bytes.
    pub data: Vec<u8>,
    /// The name in the GGUF file.
    pub gguf_name: String,
    /// The stored type.
    pub ggml_type: GgmlType,
}

/// Converts every tensor of a parsed GGUF file. Returns the tensors and
/// warnings (an unmapped architecture, unknown tensor names).
pub fn canonical_tensors(
    file: &GgufFile,
    bytes: &[u8],
) -> Result<(Vec<CanonicalTensor>, Vec<String>), FormatError> {
    let arch = file.architecture().unwrap_or("").to_string();
    let mapped = names::MAPPED_ARCHITECTURES.contains(&arch.as_str());
    let mut warnings = Vec::new();
    if !mapped {
        warnings.push(format!(
            "architecture '{arch}' has no Hugging Face name mapping here: tensors keep their GGUF names"
        ));
    }
    let heads = file.meta_u64(&format!("{arch}.attention.head_count")).unwrap_or(0) as usize;
    let kv_heads = file
        .meta_u64(&format!("{arch}.attention.head_count_kv"))
        .map(|v| v as usize)
        .unwrap_or(heads);
    let permuted = names::qk_permuted(&arch);
    let tensors: Vec<Result<(CanonicalTensor, Option<String>), FormatError>> = file
        .tensors
        .par_iter()
        .map(|t| {
            let raw = bytes.get(t.start..t.start + t.len).unwrap_or_default();
            let mut values = Vec::new();
            quant::dequantize(t.ggml_type, raw, &mut values);
            let mut shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
            let mut warning = None;
            let name = if mapped {
                names::hf_name(&t.name).unwrap_or_else(|| {
                    warning = Some(format!("tensor '{}' has no Hugging Face name; kept as is", t.name));
                    t.name.clone()
                })
            } else {
                t.name.clone()
            };
            if permuted {
                if let Some(kind) = names::qk_kind(&t.name) {
                    let h = match kind {
                        names::QkHeads::Query => heads,
                        names::QkHeads::Key => kv_heads,
                    };
                    let rows = shape.first().copied().unwrap_or(0);
                    let cols = if shape.len() > 1 { shape[1..].iter().product() } else { 1 };
                    if values.is_empty() {
                        return Err(FormatError::Gguf {
                            reason: format!("tensor '{}' is empty", t.name.escape_debug()),
                        });
                    }
                    values = names::unpermute_rows(&values, rows, cols, h).ok_or_else(|| {
                        FormatError::Gguf {
                            reason: format!(
                                "tensor '{}': {rows} rows cannot be split into {h} heads of even size",
                                t.name
                            ),
                        }
                    })?;
                }
            }
            if shape.is_empty() {
                shape.push(1);
            }
            let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Ok((CanonicalTensor { name, shape, data, gguf_name: t.name.clone(), ggml_type: t.ggml_type }, warning))
        })
        .collect();
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        let (t, w) = t?;
        warnings.extend(w);
        out.push(t);
    }
    Ok((out, warnings))
}
