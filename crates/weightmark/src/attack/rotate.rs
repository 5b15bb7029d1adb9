//! Function-preserving rotation of the residual stream of a Llama-layout
//! model: RMSNorm weights are first folded into the matrices that read the
//! normalised stream (and set to 1), then every matrix that reads the stream
//! is multiplied by a seeded random orthogonal `Q` on its input side
//! (`W Q`), and every matrix that writes it on its output side (`Q^T W`).
//! `RMSNorm(h Q) = RMSNorm(h) Q` for unit norm weights, so the logits are
//! unchanged while every element of every matrix moves. A head tied to the
//! embeddings is untied (an `lm_head.weight` is written), since the final
//! norm must be folded into the head but not into the embedding lookup.

use std::path::Path;

use ndarray::Array2;

use super::AttackReport;
use crate::dtype::encode_nearest;
use crate::error::{Error, Result};
use crate::llama::{as_matrix, folded, norm_weights, role, Role};
use crate::model::{Model, TensorRef};
use crate::progress::Progress;
use crate::rng::{fill_normal, stream};
use crate::scheme::Fidelity;
use crate::synth::SynthTensor;

/// A seeded random orthogonal matrix (Gram-Schmidt on a Gaussian matrix).
pub fn random_orthogonal(n: usize, seed: u64) -> Array2<f64> {
    seeded_orthogonal(n, seed, "rotate")
}

/// A random orthogonal matrix drawn from the stream of `seed` and `name`
/// (Gram-Schmidt on a Gaussian matrix).
pub fn seeded_orthogonal(n: usize, seed: u64, name: &str) -> Array2<f64> {
    let mut g = vec![0.0; n * n];
    fill_normal(&mut stream(seed, name), 0, &mut g);
    let mut q = Array2::from_shape_vec((n, n), g).unwrap_or_else(|_| Array2::eye(n));
    for i in 0..n {
        for j in 0..i {
            let d = q.row(i).dot(&q.row(j));
            let rj = q.row(j).to_owned();
            q.row_mut(i).scaled_add(-d, &rj);
        }
        let norm = q.row(i).dot(&q.row(i)).sqrt();
        q.row_mut(i).mapv_inplace(|x| x / norm);
    }
    q
}

fn encode_like(t: &TensorRef<'_>, m: &Array2<f64>) -> Vec<u8> {
    let mut out = t.data().into_owned();
    for (o, &v) in out.chunks_exact_mut(t.dtype.size()).zip(m.iter()) {
        encode_nearest(t.dtype, v, o);
    }
    out
}

/// Rotates the residual stream of a Llama-layout model by a seeded orthogonal matrix.
pub fn rotate(
    model: &Model,
    out: &Path,
    seed: u64,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    let hidden = model
        .tensor("model.embed_tokens.weight")
        .and_then(|t| t.shape.get(1).copied())
        .ok_or_else(|| {
            Error::invalid(format!(
                "{}: no model.embed_tokens.weight: rotate needs a Llama-layout model",
                model.path.display()
            ))
        })?;
    let q = random_orthogonal(hidden, seed);
    let norms = norm_weights(model);
    let damage = std::sync::Mutex::new(Fidelity::default());
    let transform = |t: &TensorRef<'_>| -> Result<Option<Vec<u8>>> {
        let Some(r) = role(t.name) else { return Ok(None) };
        let bad = || {
            Error::invalid(format!("tensor '{}' does not fit a hidden size of {hidden}", t.name))
        };
        let m = match r {
            Role::Norm => Array2::from_elem((1, t.elements()), 1.0),
            Role::Reads(_) => {
                let m = folded(t, &norms).ok_or_else(bad)?;
                if m.ncols() != hidden {
                    return Err(bad());
                }
                m.dot(&q)
            }
            Role::Writes => {
                let m = as_matrix(t).ok_or_else(bad)?;
                if m.nrows() != hidden {
                    return Err(bad());
                }
                q.t().dot(&m)
            }
        };
        let data = encode_like(t, &m);
        super::add_damage(&damage, super::damage_of_bytes(t.dtype, &t.data(), &data))?;
        Ok(Some(data))
    };
    if model.tensor("lm_head.weight").is_some() {
        return super::write_attacked(model, out, &transform, progress, &damage);
    }
    // A head tied to the embeddings cannot take the final norm: untie it, writing
    // `lm_head.weight` = (embeddings with the final norm folded in) Q.
    crate::model::refuse_same_path(&model.path, out)?;
    let mut tensors = Vec::new();
    for t in model.tensors() {
        let data = transform(&t)?.unwrap_or_else(|| t.data().into_owned());
        tensors.push(SynthTensor {
            name: t.name.to_string(),
            dtype: t.dtype,
            shape: t.shape.to_vec(),
            data,
        });
    }
    let embed =
        model.tensor("model.embed_tokens.weight").ok_or_else(|| Error::invalid("no embeddings"))?;
    let mut head =
        as_matrix(&embed).ok_or_else(|| Error::invalid("embeddings are not a matrix"))?;
    if let Some(g) = norms.get("model.norm.weight") {
        for mut row in head.rows_mut() {
            row.iter_mut().zip(g).for_each(|(x, s)| *x *= s);
        }
    }
    let head = head.dot(&q);
    tensors.push(SynthTensor {
        name: "lm_head.weight".into(),
        dtype: embed.dtype,
        shape: embed.shape.to_vec(),
        data: encode_like(&embed, &head),
    });
    let path = super::write_new_tensors(model, out, &tensors, |v| {
        v["tie_word_embeddings"] = serde_json::json!(false);
    })?;
    let written = crate::model::WriteReport {
        path,
        files: Vec::new(),
        tensor_digests: Vec::new(),
        copied: Vec::new(),
        skipped: Vec::new(),
        entries_visited: 0,
    };
    Ok(AttackReport::written(written, super::take(damage)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_orthogonal_is_orthogonal() {
        let q = random_orthogonal(32, 3);
        let i = q.dot(&q.t());
        for ((r, c), v) in i.indexed_iter() {
            assert!((v - if r == c { 1.0 } else { 0.0 }).abs() < 1e-10);
        }
    }
}
