//! Pieces shared by the function-preserving edits of a Llama-layout model
//! ([`super::residual`], [`super::signs`], [`super::rescale`], [`super::mix`]):
//! seeded signs, factors and angles, exact sign flips on the bytes, row and
//! column scalings rounded back into a tensor's dtype (refusing overflow),
//! and a writer for an edit that unties the head.

use std::path::Path;
use std::sync::Mutex;

use rand_core::RngCore;

use super::{add_damage, damage_of_bytes, AttackReport};
use crate::dtype::{decode_f64, encode_nearest, Dtype};
use crate::error::{Error, Result};
use crate::model::{Model, TensorRef, WriteReport};
use crate::progress::Progress;
use crate::rng::{fill_normal, stream};
use crate::scheme::Fidelity;
use crate::select::is_default_selected;
use crate::synth::SynthTensor;

/// `n` seeded fair coin flips (`true`: negate).
pub(crate) fn random_signs(n: usize, seed: u64, name: &str) -> Vec<bool> {
    let mut rng = stream(seed, name);
    (0..n).map(|_| rng.next_u32() & 1 == 1).collect()
}

/// `n` seeded log-normal factors `exp(log_sd * N(0, 1))`.
pub(crate) fn log_normal(n: usize, log_sd: f64, seed: u64, name: &str) -> Vec<f64> {
    let mut g = vec![0.0; n];
    fill_normal(&mut stream(seed, name), 0, &mut g);
    g.iter().map(|x| (log_sd * x).exp()).collect()
}

/// `n` seeded angles, uniform in [0, 2 pi).
pub(crate) fn angles(n: usize, seed: u64, name: &str) -> Vec<f64> {
    let mut rng = stream(seed, name);
    (0..n).map(|_| f64::from(rng.next_u32()) / 4_294_967_296.0 * std::f64::consts::TAU).collect()
}

/// Refuses a tensor whose elements are not signed floats.
fn require_float(t: &TensorRef<'_>) -> Result<()> {
    if t.dtype.is_readable() {
        Ok(())
    } else {
        Err(Error::invalid(format!("tensor '{}' is {}, not a float tensor", t.name, t.dtype)))
    }
}

/// Negates one little-endian element of a signed float dtype: its sign bit is
/// the top bit of its last byte (IEEE-like types: f64, f32, f16, bf16, f8).
fn negate_element(bytes: &mut [u8]) {
    if let Some(b) = bytes.last_mut() {
        *b ^= 0x80;
    }
}

/// The bytes of a 2-D float tensor with the rows where `negate` is true
/// negated, exactly (sign bits flipped).
pub(crate) fn negate_rows(t: &TensorRef<'_>, data: &mut [u8], negate: &[bool]) -> Result<()> {
    require_float(t)?;
    let (e, cols) = (t.dtype.size(), t.info.row_len().max(1));
    for (row, &flip) in data.chunks_exact_mut(cols * e).zip(negate) {
        if flip {
            row.chunks_exact_mut(e).for_each(negate_element);
        }
    }
    Ok(())
}

/// The bytes of a 2-D float tensor with the columns where `negate` is true
/// negated, exactly.
pub(crate) fn negate_columns(t: &TensorRef<'_>, data: &mut [u8], negate: &[bool]) -> Result<()> {
    require_float(t)?;
    let (e, cols) = (t.dtype.size(), t.info.row_len().max(1));
    for row in data.chunks_exact_mut(cols * e) {
        for (x, &flip) in row.chunks_exact_mut(e).zip(negate) {
            if flip {
                negate_element(x);
            }
        }
    }
    Ok(())
}

/// A markable (f64/f32/f16/bf16) tensor's values, refusing any other dtype.
pub(crate) fn values(t: &TensorRef<'_>) -> Result<Vec<f64>> {
    if !t.dtype.is_markable() {
        return Err(Error::invalid(format!(
            "tensor '{}' is {}; this edit rewrites f64, f32, f16 or bf16 tensors",
            t.name, t.dtype
        )));
    }
    let mut v = Vec::with_capacity(t.elements());
    decode_f64(t.dtype, &t.data(), &mut v);
    Ok(v)
}

/// `values` rounded to nearest in `dtype`, refusing a value the dtype cannot
/// hold (the edit would no longer preserve the function).
pub(crate) fn encode_checked(name: &str, dtype: Dtype, values: &[f64]) -> Result<Vec<u8>> {
    let size = dtype.size();
    let mut out = vec![0u8; values.len() * size];
    for (o, &v) in out.chunks_exact_mut(size).zip(values) {
        if !encode_nearest(dtype, v, o) {
            return Err(Error::invalid(format!(
                "tensor '{name}': the edited value {v:e} does not fit {dtype}; use a milder \
                 setting"
            )));
        }
    }
    Ok(out)
}

/// The bytes of `t` (a matrix, or a vector as one row) with row `r` scaled by
/// `rows[r]` and column `c` by `cols[c]` (either may be absent), rounded to
/// nearest in its dtype.
pub(crate) fn scaled(
    t: &TensorRef<'_>,
    rows: Option<&[f64]>,
    cols: Option<&[f64]>,
) -> Result<Vec<u8>> {
    let mut v = values(t)?;
    let width = t.info.row_len().max(1);
    let height = v.len() / width;
    let fits = |f: Option<&[f64]>, n: usize| f.is_none_or(|f| f.len() == n);
    if !fits(rows, height) || !fits(cols, width) {
        return Err(Error::invalid(format!(
            "tensor '{}' of shape {:?} does not fit the factors of its layer",
            t.name, t.shape
        )));
    }
    for (r, row) in v.chunks_exact_mut(width).enumerate() {
        let fr = rows.map_or(1.0, |f| f[r]);
        match cols {
            Some(fc) => row.iter_mut().zip(fc).for_each(|(x, c)| *x *= fr * c),
            None => row.iter_mut().for_each(|x| *x *= fr),
        }
    }
    encode_checked(t.name, t.dtype, &v)
}

/// Writes `model` through `transform` (in its layout, copying what it
/// leaves alone). The damage is measured over the replaced tensors that hold
/// a mark by default (float matrices, [`is_default_selected`]): the weights a
/// mark lives in, not the norm weights, which would otherwise dominate the
/// energy of a small model.
pub(crate) fn write_edited(
    model: &Model,
    out: &Path,
    transform: &(dyn Fn(&TensorRef<'_>) -> Result<Option<Vec<u8>>> + Sync),
    progress: &dyn Progress,
) -> Result<AttackReport> {
    let damage = Mutex::new(Fidelity::default());
    let measured = |t: &TensorRef<'_>| -> Result<Option<Vec<u8>>> {
        let data = transform(t)?;
        if let Some(d) = data.as_ref().filter(|_| is_default_selected(t)) {
            add_damage(&damage, damage_of_bytes(t.dtype, &t.data(), d))?;
        }
        Ok(data)
    };
    super::write_attacked(model, out, &measured, progress, &damage)
}

/// Like [`write_edited`] for a model whose head is tied to its embeddings
/// and must be untied: every tensor passes through `transform`, then
/// `lm_head.weight` (the values `head`, in the embeddings' dtype and shape,
/// measured against the embeddings it replaces as the head) is added, and a `config.json` beside the input is written with
/// `tie_word_embeddings` false. One safetensors file, as
/// [`super::write_new_tensors`] writes it.
pub(crate) fn write_untied(
    model: &Model,
    out: &Path,
    transform: &(dyn Fn(&TensorRef<'_>) -> Result<Option<Vec<u8>>> + Sync),
    head: &[f64],
) -> Result<AttackReport> {
    crate::model::refuse_same_path(&model.path, out)?;
    let embed = model
        .tensor("model.embed_tokens.weight")
        .ok_or_else(|| Error::invalid("a tied head needs model.embed_tokens.weight"))?;
    let mut damage = Fidelity::default();
    let mut tensors = Vec::with_capacity(model.tensor_count() + 1);
    for t in model.tensors() {
        let data = match transform(&t)? {
            Some(d) => {
                if is_default_selected(&t) {
                    damage = damage.merge(damage_of_bytes(t.dtype, &t.data(), &d));
                }
                d
            }
            None => t.data().into_owned(),
        };
        tensors.push(SynthTensor {
            name: t.name.to_string(),
            dtype: t.dtype,
            shape: t.shape.to_vec(),
            data,
        });
    }
    let head_bytes = encode_checked("lm_head.weight", embed.dtype, head)?;
    // The new head's change is measured against the tied head it replaces.
    damage = damage.merge(damage_of_bytes(embed.dtype, &embed.data(), &head_bytes));
    tensors.push(SynthTensor {
        name: "lm_head.weight".into(),
        dtype: embed.dtype,
        shape: embed.shape.to_vec(),
        data: head_bytes,
    });
    let path = super::write_new_tensors(model, out, &tensors, |v| {
        v["tie_word_embeddings"] = serde_json::json!(false);
    })?;
    let written = WriteReport {
        path,
        files: Vec::new(),
        tensor_digests: Vec::new(),
        copied: Vec::new(),
        skipped: Vec::new(),
        entries_visited: 0,
    };
    Ok(AttackReport::written(written, damage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negating_flips_the_sign_of_every_float_dtype_exactly() {
        for dtype in [Dtype::F64, Dtype::F32, Dtype::F16, Dtype::BF16] {
            for v in [0.5, -3.25, 0.0, 1e-3] {
                let mut b = vec![0u8; dtype.size()];
                assert!(encode_nearest(dtype, v, &mut b));
                let mut expected = Vec::new();
                decode_f64(dtype, &b, &mut expected);
                negate_element(&mut b);
                let mut back = Vec::new();
                decode_f64(dtype, &b, &mut back);
                assert_eq!(back[0], -expected[0], "{dtype} {v}");
            }
        }
    }

    #[test]
    fn seeded_draws_are_reproducible_and_spread() {
        assert_eq!(random_signs(64, 1, "a"), random_signs(64, 1, "a"));
        assert_ne!(random_signs(64, 1, "a"), random_signs(64, 1, "b"));
        let f = log_normal(10_000, 0.5, 2, "f");
        let logs: Vec<f64> = f.iter().map(|x| x.ln()).collect();
        let sd = (logs.iter().map(|x| x * x).sum::<f64>() / logs.len() as f64).sqrt();
        assert!((sd - 0.5).abs() < 0.02, "{sd}");
        assert!(angles(100, 3, "t").iter().all(|a| (0.0..std::f64::consts::TAU).contains(a)));
    }
}
