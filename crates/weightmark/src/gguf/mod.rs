//! Reading GGUF files (llama.cpp's format) as models.
//!
//! A GGUF suspect is read lazily: [`lazy_tensors`] checks every tensor and
//! gives it its Hugging Face name and shape (dimensions reversed from GGUF's,
//! names mapped for the architectures in [`names::MAPPED_ARCHITECTURES`]);
//! [`LazyTensor::decode`] dequantizes one tensor to f32 when it is read,
//! un-permuting the Q/K rows of Llama-family attention on the way. The
//! result is a [`Model`](crate::Model) like any other, so `detect`,
//! `identify` and `convert` work on it directly, holding one decoded tensor
//! at a time (4 bytes per parameter of that tensor) rather than the whole
//! model. [`canonical_tensors`] decodes every tensor at once.

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

/// Elements decoded per parallel work item (rows are grouped up to this).
const DECODE_CHUNK: usize = 1 << 16;

/// A GGUF tensor under its canonical name, checked and ready to be
/// dequantized on demand ([`LazyTensor::decode`]).
#[derive(Clone, Debug)]
pub struct LazyTensor {
    /// Canonical (Hugging Face) name.
    pub name: String,
    /// Shape in Hugging Face order (dimensions reversed from GGUF's).
    pub shape: Vec<usize>,
    /// The tensor's entry in the GGUF file (name, type, where its bytes are).
    pub gguf: GgufTensorInfo,
    /// For a permuted Q/K projection: the number of heads whose rows
    /// llama.cpp's converter interleaved.
    unpermute_heads: Option<usize>,
}

impl LazyTensor {
    /// Number of elements.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of the decoded tensor (4 per element).
    pub fn byte_len(&self) -> usize {
        self.elements() * 4
    }

    /// Dequantizes the tensor from `file` (the whole GGUF file's bytes, as
    /// parsed) to little-endian f32 bytes in Hugging Face row order. Rows
    /// are decoded in parallel straight into the output, so the only
    /// allocation is the result.
    pub fn decode(&self, file: &[u8]) -> Vec<u8> {
        let raw = file.get(self.gguf.start..self.gguf.start + self.gguf.len).unwrap_or_default();
        let ty = self.gguf.ggml_type;
        let (per, bytes) = ty.block();
        let mut out = vec![0u8; self.byte_len()];
        if out.is_empty() {
            return out;
        }
        // A row: the elements of every dimension after the first (HF order),
        // which GGUF stores contiguously as whole blocks.
        let cols: usize = self.shape.iter().skip(1).product::<usize>().max(1);
        let rows = self.elements() / cols;
        let whole_blocks = cols % per == 0;
        match self.unpermute_heads {
            Some(heads) if whole_blocks => {
                let row_bytes = cols / per * bytes;
                let group = (DECODE_CHUNK / cols).max(1);
                for_items(&mut out, group * cols * 4, |values, g, chunk| {
                    for (i, row) in chunk.chunks_mut(cols * 4).enumerate() {
                        let src = gguf_row(g * group + i, rows, heads);
                        let from = raw.get(src * row_bytes..(src + 1) * row_bytes);
                        quant::dequantize(ty, from.unwrap_or_default(), values);
                        write_f32(values, row);
                    }
                });
            }
            Some(heads) => {
                // Rows shorter than a block (a quantized 1-D tensor): decode
                // it whole, then move the rows.
                let mut values = Vec::new();
                quant::dequantize(ty, raw, &mut values);
                for (dst, row) in out.chunks_mut(cols * 4).enumerate() {
                    let src = gguf_row(dst, rows, heads);
                    write_f32(values.get(src * cols..(src + 1) * cols).unwrap_or_default(), row);
                }
            }
            None => {
                // Whole blocks per work item: the first GGUF dimension is
                // whole blocks (checked by the reader).
                let unit = self.gguf.dims.first().map_or(1, |&d| d as usize).max(1);
                let group = (DECODE_CHUNK / unit).max(1);
                let from_bytes = group * (unit / per * bytes);
                for_items(&mut out, group * unit * 4, |values, g, chunk| {
                    let from = raw.get(g * from_bytes..((g + 1) * from_bytes).min(raw.len()));
                    quant::dequantize(ty, from.unwrap_or_default(), values);
                    write_f32(values, chunk);
                });
            }
        }
        out
    }
}

/// Runs `work(values, g, chunk)` over the chunks of `item` bytes of `out`
/// (`values` is scratch space): in parallel when called from outside the
/// thread pool, in order on this thread when called from a pool thread (a
/// caller decoding several tensors in parallel). Otherwise a pool thread
/// waiting on its chunks would start decoding further tensors of its caller
/// meanwhile (rayon steals work while it waits), so that any number of
/// decoded tensors could be alive at once.
fn for_items(out: &mut [u8], item: usize, work: impl Fn(&mut Vec<f32>, usize, &mut [u8]) + Sync) {
    if rayon::current_thread_index().is_some() {
        let mut values = Vec::new();
        out.chunks_mut(item).enumerate().for_each(|(g, chunk)| work(&mut values, g, chunk));
    } else {
        out.par_chunks_mut(item)
            .enumerate()
            .for_each_init(Vec::new, |values, (g, chunk)| work(values, g, chunk));
    }
}

/// Writes `values` as little-endian f32 bytes into `out`.
fn write_f32(values: &[f32], out: &mut [u8]) {
    for (o, v) in out.chunks_exact_mut(4).zip(values) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

/// The GGUF row stored for Hugging Face row `hf` of a Q/K projection of
/// `rows` rows in `heads` heads (see [`names::unpermute_rows`]): HF row
/// `h*d + s*(d/2) + i` is GGUF row `h*d + 2i + s`. The heads were checked
/// to split the rows evenly by [`lazy_tensors`].
fn gguf_row(hf: usize, rows: usize, heads: usize) -> usize {
    let d = rows / heads.max(1);
    let half = (d / 2).max(1);
    let (h, within) = (hf / d.max(1), hf % d.max(1));
    let (s, i) = (within / half, within % half);
    h * d + 2 * i + s
}

/// Checks every tensor of a parsed GGUF file and gives it its canonical name
/// and shape, decoding nothing. Returns the tensors in file order and
/// warnings (an unmapped architecture, unknown tensor names). Every error
/// the decoding could meet is found here, so [`LazyTensor::decode`] cannot
/// fail.
pub fn lazy_tensors(file: &GgufFile) -> Result<(Vec<LazyTensor>, Vec<String>), FormatError> {
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
    let mut out = Vec::with_capacity(file.tensors.len());
    for t in &file.tensors {
        let mut shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        let name = if mapped {
            names::hf_name(&t.name).unwrap_or_else(|| {
                warnings.push(format!("tensor '{}' has no Hugging Face name; kept as is", t.name));
                t.name.clone()
            })
        } else {
            t.name.clone()
        };
        let mut unpermute_heads = None;
        if permuted {
            if let Some(kind) = names::qk_kind(&t.name) {
                let h = match kind {
                    names::QkHeads::Query => heads,
                    names::QkHeads::Key => kv_heads,
                };
                let rows = shape.first().copied().unwrap_or(0);
                if t.elements() == 0 {
                    return Err(FormatError::Gguf {
                        reason: format!("tensor '{}' is empty", t.name.escape_debug()),
                    });
                }
                if h == 0 || h > rows || rows % h != 0 || (rows / h) % 2 != 0 {
                    return Err(FormatError::Gguf {
                        reason: format!(
                            "tensor '{}': {rows} rows cannot be split into {h} heads of even size",
                            t.name
                        ),
                    });
                }
                unpermute_heads = Some(h);
            }
        }
        if shape.is_empty() {
            shape.push(1);
        }
        out.push(LazyTensor { name, shape, gguf: t.clone(), unpermute_heads });
    }
    Ok((out, warnings))
}

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

/// Converts every tensor of a parsed GGUF file at once (4 bytes per
/// parameter; a model reads them one at a time instead, see [`LazyTensor`]).
/// Returns the tensors and warnings (an unmapped architecture, unknown
/// tensor names).
pub fn canonical_tensors(
    file: &GgufFile,
    bytes: &[u8],
) -> Result<(Vec<CanonicalTensor>, Vec<String>), FormatError> {
    let (tensors, warnings) = lazy_tensors(file)?;
    let out = tensors
        .into_iter()
        .map(|t| {
            let data = t.decode(bytes);
            CanonicalTensor {
                name: t.name,
                shape: t.shape,
                data,
                gguf_name: t.gguf.name,
                ggml_type: t.gguf.ggml_type,
            }
        })
        .collect();
    Ok((out, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Llama GGUF header (2 heads, 2 key/value heads) over Q8_0 tensors
    /// of the given names and GGUF dims, laid out back to back from byte 0
    /// of `bytes` (a block: scale 1/64, then 32 signed bytes).
    fn file(tensors: &[(&str, Vec<u64>)]) -> (GgufFile, Vec<u8>) {
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("general.architecture".to_string(), Value::Str("llama".into()));
        metadata.insert("llama.attention.head_count".to_string(), Value::U64(2));
        metadata.insert("llama.attention.head_count_kv".to_string(), Value::U64(2));
        let (mut infos, mut bytes) = (Vec::new(), Vec::new());
        for (name, dims) in tensors {
            let elements: u64 = dims.iter().product();
            let start = bytes.len();
            for b in 0..elements / 32 {
                bytes.extend_from_slice(&half::f16::from_f32(1.0 / 64.0).to_le_bytes());
                bytes.extend((0..32u64).map(|i| ((b * 31 + i * 7) % 251) as u8));
            }
            infos.push(GgufTensorInfo {
                name: name.to_string(),
                dims: dims.clone(),
                ggml_type: GgmlType::Q8_0,
                start,
                len: bytes.len() - start,
            });
        }
        (GgufFile { version: 3, metadata, tensors: infos }, bytes)
    }

    #[test]
    fn decoding_one_tensor_equals_dequantizing_it_whole_and_unpermuting() {
        // Permuted rows spanning several work items, a permuted 1-D tensor
        // shorter than a block per row, and plain rows over several items.
        let (f, bytes) = file(&[
            ("blk.0.attn_q.weight", vec![32, 4096]),
            ("blk.0.attn_k.bias", vec![64]),
            ("blk.0.ffn_up.weight", vec![64, 3000]),
        ]);
        let (lazy, warnings) = lazy_tensors(&f).unwrap_or_else(|e| panic!("{e}"));
        assert!(warnings.is_empty(), "{warnings:?}");
        for (t, info) in lazy.iter().zip(&f.tensors) {
            let mut values = Vec::new();
            quant::dequantize(
                info.ggml_type,
                &bytes[info.start..info.start + info.len],
                &mut values,
            );
            if names::qk_kind(&info.name).is_some() {
                let cols = t.shape[1..].iter().product();
                values = names::unpermute_rows(&values, t.shape[0], cols, 2)
                    .unwrap_or_else(|| panic!("{}", info.name));
            }
            let want: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert!(t.decode(&bytes) == want, "{} ({})", t.name, info.name);
            // On a pool thread (a caller decoding tensors in parallel) it
            // decodes in order on that thread: the same bytes.
            let (on_pool, ()) = rayon::join(|| t.decode(&bytes), || ());
            assert!(on_pool == want, "{} ({}) on a pool thread", t.name, info.name);
        }
        assert_eq!(lazy[0].name, "model.layers.0.self_attn.q_proj.weight");
        assert_eq!(lazy[0].shape, [4096, 32]);
    }

    #[test]
    fn heads_that_do_not_split_the_rows_are_refused_before_any_decoding() {
        let (f, _) = file(&[("blk.0.attn_q.weight", vec![32, 6])]);
        let mut f = f;
        f.metadata.insert("llama.attention.head_count".to_string(), Value::U64(4));
        let r = lazy_tensors(&f);
        assert!(
            matches!(&r, Err(FormatError::Gguf { reason }) if reason.contains("cannot be split")),
            "{:?}",
            r.map(|_| ())
        );
    }
}
