//! Writing a Llama-layout safetensors model as a quantized GGUF file the way
//! llama.cpp's converter and `llama-quantize` do: llama.cpp tensor names,
//! reversed dimensions, Q/K rows permuted for its RoPE layout, 1-D tensors in
//! F32, 2-D tensors in the requested type, with llama.cpp's fallback (Q4_K to
//! Q5_0, Q6_K to Q8_0, else F16) for rows that are not whole blocks.

use std::io::Write;
use std::path::Path;

use rayon::prelude::*;

use super::{AttackDetail, AttackReport};
use crate::dtype::decode_f64;
use crate::error::{Error, Result};
use crate::gguf::meta::{put_str, Kv};
use crate::gguf::names::{gguf_name, permute_rows, splits_into_heads};
use crate::gguf::quantize::quantize;
use crate::gguf::tokenizer::GgufTokenizer;
use crate::gguf::GgmlType;
use crate::llama::LlamaConfig;
use crate::model::{Model, TensorRef};

/// The type llama.cpp uses for a tensor with rows of `ne0` elements.
fn type_for(requested: GgmlType, ndims: usize, ne0: usize) -> GgmlType {
    if ndims < 2 {
        return GgmlType::F32;
    }
    let fits = |t: GgmlType| ne0 % t.block().0 == 0;
    let fallback = match requested {
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q6K => GgmlType::Q8_0,
        other => other,
    };
    [requested, fallback, GgmlType::F16].into_iter().find(|&t| fits(t)).unwrap_or(GgmlType::F16)
}

/// One tensor as it will be written.
struct Planned<'a> {
    tensor: TensorRef<'a>,
    /// llama.cpp name.
    name: String,
    /// Dimensions, fastest-varying first.
    dims: Vec<u64>,
    ty: GgmlType,
    /// Heads whose rows llama.cpp's converter interleaves (Q and K).
    heads: Option<usize>,
    /// Size of the quantized data, before padding.
    blob_len: usize,
}

/// Elements quantized per piece of work (whole rows, so whole blocks).
const PIECE: usize = 1 << 16;

/// A tensor's values as f32 (llama.cpp's row order) and their quantized bytes,
/// in pieces of `piece` elements.
struct Quantized {
    values: Vec<f32>,
    blobs: Vec<Vec<u8>>,
    piece: usize,
}

/// A planned tensor as f32, quantized in pieces of whole rows on the thread
/// pool. Blocks never cross a row, so the pieces' bytes, in order, are those
/// of the whole tensor quantized at once.
fn quantize_tensor(p: &Planned<'_>) -> Result<Quantized> {
    let t = &p.tensor;
    let data = t.data();
    let size = t.dtype.size().max(1);
    let row = (*t.shape.last().unwrap_or(&1)).max(1);
    let piece = row * (PIECE / row).max(1);
    let mut values = vec![0f32; data.len() / size];
    values.par_chunks_mut(piece).zip(data.par_chunks(piece * size)).for_each(|(out, bytes)| {
        let mut wide = Vec::new();
        decode_f64(t.dtype, bytes, &mut wide);
        for (o, v) in out.iter_mut().zip(&wide) {
            *o = *v as f32;
        }
    });
    drop(data);
    if let Some(h) = p.heads {
        let rows = t.shape.first().copied().unwrap_or(1);
        let cols: usize = t.shape.iter().skip(1).product();
        values = permute_rows(&values, rows, cols.max(1), h).ok_or_else(|| {
            Error::invalid(format!(
                "tensor '{}': {rows} rows cannot be split into {h} heads",
                t.name
            ))
        })?;
    }
    let blobs = values
        .par_chunks(piece)
        .map(|v| {
            let mut bytes = Vec::new();
            quantize(p.ty, v, &mut bytes);
            bytes
        })
        .collect();
    Ok(Quantized { values, blobs, piece })
}

/// Writes `model` (Llama layout, Hugging Face names) as a GGUF file of type
/// `requested` (Q8_0, Q4_0, Q4_K, Q6_K, F16 or F32).
pub fn write_gguf(
    model: &Model,
    out: &Path,
    requested: GgmlType,
    config: &LlamaConfig,
) -> Result<AttackReport> {
    if !super::GGUF_TYPES.contains(&requested) {
        return Err(Error::invalid(format!(
            "cannot write GGUF type {}: use Q8_0, Q4_0, Q4_K, Q6_K, F16 or F32",
            requested.name()
        )));
    }
    crate::model::refuse_same_path(&model.path, out)?;
    if model
        .files
        .iter()
        .any(|f| f.path.canonicalize().ok() == out.canonicalize().ok() && out.exists())
    {
        return Err(Error::invalid(format!(
            "{}: the output is one of the input's files",
            out.display()
        )));
    }
    const ALIGN: usize = 32;
    // First the plan (names, shapes, types and so each blob's size) without
    // reading any data, so the header with every offset can be written first
    // and each tensor then quantized and written in turn.
    let mut planned = Vec::new();
    let mut skipped = Vec::new();
    for t in model.tensors() {
        let Some(name) = gguf_name(t.name) else {
            skipped.push(t.name.to_string());
            continue;
        };
        if !t.dtype.is_readable() {
            skipped.push(t.name.to_string());
            continue;
        }
        let rows = t.shape.first().copied().unwrap_or(1);
        let heads = if name.contains(".attn_q.") {
            Some(config.heads)
        } else if name.contains(".attn_k.") {
            Some(config.kv_heads)
        } else {
            None
        };
        if let Some(h) = heads.filter(|&h| !splits_into_heads(rows, h)) {
            return Err(Error::invalid(format!(
                "tensor '{}': {rows} rows cannot be split into {h} heads",
                t.name
            )));
        }
        let dims: Vec<u64> = t.shape.iter().rev().map(|&d| d as u64).collect();
        let ty = type_for(requested, t.shape.len(), *t.shape.last().unwrap_or(&1));
        let (per, block_bytes) = ty.block();
        let blob_len = t.elements() / per * block_bytes;
        planned.push(Planned { tensor: t, name, dims, ty, heads, blob_len });
    }
    let file_type: u32 = match requested {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q8_0 => 7,
        GgmlType::Q4K => 15,
        _ => 18,
    };
    let mut header = Vec::new();
    header.extend_from_slice(crate::gguf::reader::MAGIC);
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&(planned.len() as u64).to_le_bytes());
    let mut kvs: Vec<(String, Kv)> = vec![
        ("general.architecture".into(), Kv::Str("llama".into())),
        ("general.name".into(), Kv::Str(model.display_name())),
        ("general.file_type".into(), Kv::U32(file_type)),
        ("general.quantization_version".into(), Kv::U32(2)),
        ("llama.context_length".into(), Kv::U32(config.context as u32)),
        ("llama.embedding_length".into(), Kv::U32(config.hidden as u32)),
        ("llama.block_count".into(), Kv::U32(config.layers as u32)),
        ("llama.feed_forward_length".into(), Kv::U32(config.intermediate as u32)),
        (
            "llama.rope.dimension_count".into(),
            Kv::U32((config.hidden / config.heads.max(1)) as u32),
        ),
        ("llama.attention.head_count".into(), Kv::U32(config.heads as u32)),
        ("llama.attention.head_count_kv".into(), Kv::U32(config.kv_heads as u32)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Kv::F32(config.rms_eps as f32)),
        ("llama.rope.freq_base".into(), Kv::F32(config.rope_theta as f32)),
        ("llama.vocab_size".into(), Kv::U32(config.vocab as u32)),
    ];
    let dir = if model.path.is_dir() {
        model.path.clone()
    } else {
        model.path.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let no_tokenizer = match crate::gguf::tokenizer::to_gguf_tokenizer(&dir, config.vocab)? {
        GgufTokenizer::Keys(keys) => {
            kvs.extend(keys);
            None
        }
        GgufTokenizer::None(why) => Some(why),
    };
    header.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (key, value) in &kvs {
        put_str(&mut header, key);
        value.put(&mut header);
    }
    let mut offset = 0usize;
    for p in &planned {
        put_str(&mut header, &p.name);
        header.extend_from_slice(&(p.dims.len() as u32).to_le_bytes());
        for d in &p.dims {
            header.extend_from_slice(&d.to_le_bytes());
        }
        header.extend_from_slice(&p.ty.id().to_le_bytes());
        header.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += p.blob_len.div_ceil(ALIGN) * ALIGN;
    }
    while header.len() % ALIGN != 0 {
        header.push(0);
    }
    let mut tmp = crate::io::AtomicFile::create(out)?;
    let io = |e| Error::io(out, e);
    let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.file()?);
    w.write_all(&header).map_err(io)?;
    let mut damage = crate::scheme::Fidelity::default();
    for p in &planned {
        let q = quantize_tensor(p)?;
        let written: usize = q.blobs.iter().map(Vec::len).sum();
        if written != p.blob_len {
            return Err(Error::internal(format!(
                "tensor '{}': {written} bytes quantized, {} planned",
                p.tensor.name, p.blob_len
            )));
        }
        let mut back = Vec::new();
        for (values, blob) in q.values.chunks(q.piece).zip(&q.blobs) {
            crate::gguf::quant::dequantize(p.ty, blob, &mut back);
            // In element order, one element at a time: the same sums, bit for
            // bit, as over the whole model at once.
            for (&a, &b) in values.iter().zip(&back) {
                let (a, b) = (f64::from(a), f64::from(b));
                damage.sum_sq_original += a * a;
                damage.sum_sq_change += (b - a) * (b - a);
                damage.max_abs_change = damage.max_abs_change.max((b - a).abs());
                damage.elements += 1;
            }
            w.write_all(blob).map_err(io)?;
        }
        let pad = p.blob_len.div_ceil(ALIGN) * ALIGN - p.blob_len;
        w.write_all(&vec![0u8; pad]).map_err(io)?;
    }
    w.flush().map_err(io)?;
    drop(w);
    tmp.commit(crate::io::Overwrite::Replace)?;
    Ok(AttackReport {
        path: out.to_path_buf(),
        damage,
        detail: AttackDetail::Gguf {
            tensors: planned.into_iter().map(|p| (p.name, p.ty)).collect(),
            skipped,
            no_tokenizer,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::names::{hf_name, unpermute_rows};

    #[test]
    fn names_and_permutation_invert_the_reader() {
        for hf in [
            "model.layers.3.self_attn.q_proj.weight",
            "lm_head.weight",
            "model.layers.0.mlp.down_proj.weight",
        ] {
            assert_eq!(gguf_name(hf).and_then(|g| hf_name(&g)).as_deref(), Some(hf));
        }
        let v: Vec<f32> = (0..48).map(|i| i as f32).collect();
        let p = permute_rows(&v, 12, 4, 3).unwrap_or_default();
        assert_eq!(unpermute_rows(&p, 12, 4, 3), Some(v));
    }

    #[test]
    fn fallback_types_follow_llama_cpp() {
        assert_eq!(type_for(GgmlType::Q4K, 2, 576), GgmlType::Q5_0);
        assert_eq!(type_for(GgmlType::Q4K, 2, 1536), GgmlType::Q4K);
        assert_eq!(type_for(GgmlType::Q6K, 2, 576), GgmlType::Q8_0);
        assert_eq!(type_for(GgmlType::Q8_0, 1, 576), GgmlType::F32);
        assert_eq!(type_for(GgmlType::Q8_0, 2, 100), GgmlType::F16);
    }
}
