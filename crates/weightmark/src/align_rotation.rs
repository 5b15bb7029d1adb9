//! Informed re-alignment of a residual-stream rotation (see
//! [`crate::attack::rotate`]): with the original's norm weights folded into its
//! matrices, the rotation `Q` is recovered by orthogonal Procrustes on the
//! matrices that read the stream with rows no other edit reorders (the
//! embeddings and the output head), `Q = polar(sum A^T B)` (A original, B
//! suspect), computed with Newton-Schulz iterations; then the suspect is
//! rotated back and compared with the folded original. Nothing here depends on
//! the key.

use ndarray::{Array2, ArrayView1};
use rayon::prelude::*;

use crate::error::Result;
use crate::llama::{as_matrix, folded, norm_weights, role, Role};
use crate::model::{Model, SpillWriter, TensorRef};

/// A rotation found and undone.
pub struct Unrotated {
    /// The suspect rotated back: a view of it whose rotated matrices are
    /// read from a temporary file.
    pub suspect: Model,
    /// The original with its norms folded in (and set to 1): a view of it,
    /// the changed tensors likewise in a temporary file.
    pub original: Model,
    /// What was recovered.
    pub recovered: String,
}

/// Mean cosine between matching rows of two matrices.
fn mean_row_cosine(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    let mut total = 0.0;
    for (x, y) in a.rows().into_iter().zip(b.rows()) {
        let (xy, xx, yy) = (x.dot(&y), x.dot(&x), y.dot(&y));
        total += if xx > 0.0 && yy > 0.0 { xy / (xx.sqrt() * yy.sqrt()) } else { 0.0 };
    }
    total / a.nrows().max(1) as f64
}

/// [`mean_row_cosine`] of two tensors' matrices (as [`as_matrix`] reads them),
/// decoding one row of each at a time: the same number, bit for bit, without
/// holding either matrix as f64. `None` where [`as_matrix`] gives none.
fn mean_row_cosine_by_rows(a: &TensorRef<'_>, b: &TensorRef<'_>) -> Option<f64> {
    let shape = |t: &TensorRef<'_>| match t.shape {
        [n] => Some((1, *n)),
        [r, c] => Some((*r, *c)),
        _ => None,
    };
    let (rows, cols) = shape(a)?;
    if shape(b)? != (rows, cols) || !a.dtype.is_readable() || !b.dtype.is_readable() {
        return None;
    }
    let (da, db) = (a.data(), b.data());
    let row_bytes = |t: &TensorRef<'_>| cols * t.dtype.size();
    let (ra, rb) = (row_bytes(a), row_bytes(b));
    if da.len() / a.dtype.size() != rows * cols || db.len() / b.dtype.size() != rows * cols {
        return None;
    }
    let terms: Vec<f64> = (0..rows)
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new()),
            |(x, y), i| {
                crate::dtype::decode_f64(a.dtype, &da[i * ra..(i + 1) * ra], x);
                crate::dtype::decode_f64(b.dtype, &db[i * rb..(i + 1) * rb], y);
                let (x, y) = (ArrayView1::from(&x[..]), ArrayView1::from(&y[..]));
                let (xy, xx, yy) = (x.dot(&y), x.dot(&x), y.dot(&y));
                if xx > 0.0 && yy > 0.0 {
                    xy / (xx.sqrt() * yy.sqrt())
                } else {
                    0.0
                }
            },
        )
        .collect();
    let mut total = 0.0;
    for t in terms {
        total += t;
    }
    Some(total / rows.max(1) as f64)
}

/// The orthogonal polar factor of `m` (Newton-Schulz).
fn polar(m: &Array2<f64>) -> Array2<f64> {
    let norm = m.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm == 0.0 {
        return Array2::eye(m.nrows());
    }
    let mut x = m / norm;
    for _ in 0..100 {
        let xtx = x.t().dot(&x);
        let next = &x * 1.5 - &x.dot(&xtx) * 0.5;
        let change = (&next - &x).iter().map(|v| v.abs()).fold(0.0, f64::max);
        x = next;
        if change < 1e-12 {
            break;
        }
    }
    x
}

/// `m` in `t`'s dtype (rounded to nearest), as `t`'s new bytes.
fn encode(t: &TensorRef<'_>, m: &Array2<f64>) -> Vec<u8> {
    let mut data = t.data().into_owned();
    for (o, &v) in data.chunks_exact_mut(t.dtype.size()).zip(m.iter()) {
        crate::dtype::encode_nearest(t.dtype, v, o);
    }
    data
}

/// A view of `model` with the tensors `change` gives new values for (in
/// stored layout) read from a temporary file, written one tensor at a
/// time: the rest are borrowed, and no more than one changed tensor is in
/// memory at once.
fn replaced(
    model: &Model,
    change: impl Fn(&TensorRef<'_>) -> Option<Array2<f64>>,
) -> Result<Model> {
    let mut spill = SpillWriter::new()?;
    for t in model.tensors() {
        if let Some(m) = change(&t) {
            spill.put(t.name, &encode(&t, &m))?;
        }
    }
    model.view_replacing(&spill.finish()?)
}

/// Finds and undoes a rotation of the residual stream; `None` if the
/// suspect's embeddings already line up with the original's.
pub fn unrotate(
    suspect: &Model,
    original: &Model,
    undo: crate::align::Undo,
) -> Result<Option<Unrotated>> {
    let (Some(se), Some(oe)) =
        (suspect.tensor("model.embed_tokens.weight"), original.tensor("model.embed_tokens.weight"))
    else {
        return Ok(None);
    };
    if se.shape != oe.shape {
        return Ok(None);
    }
    // The usual answer (no rotation) from the embeddings read a row at a
    // time; both are decoded whole only for a suspect that fails this check.
    match mean_row_cosine_by_rows(&se, &oe) {
        Some(c) if c < 0.5 => {}
        _ => return Ok(None),
    }
    // The embeddings' width (a 1-D embedding is one row). The fit and the
    // check below each hold at most two decoded embedding-sized matrices
    // (f64: 1 GB each for a 32000 x 4096 vocabulary), one pair at a time.
    let hidden = match *oe.shape {
        [n] | [_, n] => n,
        _ => return Ok(None),
    };
    let norms = norm_weights(original);
    let mut m = Array2::<f64>::zeros((hidden, hidden));
    // Only tensors whose rows no other edit reorders: the embeddings and the
    // output head (vocabulary rows). Neuron and head permutations reorder the
    // rows of the other reading matrices and would corrupt the fit.
    for t in original.tensors() {
        if !matches!(t.name, "model.embed_tokens.weight" | "lm_head.weight") {
            continue;
        }
        let (Some(a), Some(b)) =
            (folded(&t, &norms), suspect.tensor(t.name).and_then(|s| as_matrix(&s)))
        else {
            continue;
        };
        if a.dim() == b.dim() && a.ncols() == hidden {
            m += &a.t().dot(&b);
        }
    }
    let q = polar(&m);
    // Confirm: the rotated-back embeddings must line up with the original's.
    let Some(se_m) = as_matrix(&se) else { return Ok(None) };
    let back = se_m.dot(&q.t());
    drop(se_m);
    let Some(oe_m) = as_matrix(&oe) else { return Ok(None) };
    if mean_row_cosine(&back, &oe_m) < 0.9 {
        return Ok(None);
    }
    drop((back, oe_m));
    // A signed permutation is a rotation too; ss2 detection is invariant to
    // it (canonical order, magnitudes), and undoing it would re-round every
    // weight for nothing.
    let signed_permutation = q.rows().into_iter().all(|r| r.iter().any(|v| v.abs() > 0.98));
    if signed_permutation && undo == crate::align::Undo::RotationsOnly {
        return Ok(None);
    }
    let suspect = replaced(suspect, |t| match role(t.name) {
        Some(Role::Reads(_)) => as_matrix(t).filter(|m| m.ncols() == hidden).map(|m| m.dot(&q.t())),
        Some(Role::Writes) => as_matrix(t).filter(|m| m.nrows() == hidden).map(|m| q.dot(&m)),
        _ => None,
    })?;
    let original = replaced(original, |t| match role(t.name) {
        Some(Role::Reads(_)) => folded(t, &norms),
        Some(Role::Norm) => Some(Array2::from_elem((1, t.elements()), 1.0)),
        _ => None,
    })?;
    Ok(Some(Unrotated {
        suspect,
        original,
        recovered: format!(
            "the residual stream was rotated ({hidden} x {hidden} orthogonal matrix recovered by \
             Procrustes, norm weights folded): undone"
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{gaussian_matrix, to_model, SynthTensor};
    use crate::Dtype;

    #[test]
    fn the_row_by_row_mean_cosine_is_the_matrix_one_bit_for_bit() {
        for (da, db) in [(Dtype::BF16, Dtype::F32), (Dtype::F16, Dtype::F16)] {
            let a = gaussian_matrix("a", 300, 257, da, 1);
            // The same values in another dtype, with one row zeroed, and
            // an unrelated matrix.
            let mut b = SynthTensor { name: "b".into(), ..gaussian_matrix("a", 300, 257, db, 1) };
            b.data[..257 * db.size()].fill(0);
            let c = gaussian_matrix("c", 300, 257, db, 2);
            let m = to_model(&[a, b, c]).unwrap_or_else(|e| panic!("{e}"));
            let t = |n: &str| m.tensor(n).unwrap_or_else(|| panic!("{n}"));
            for (other, near) in [("b", true), ("c", false)] {
                let (x, y) = (t("a"), t(other));
                let want = mean_row_cosine(
                    &as_matrix(&x).unwrap_or_else(|| panic!("a")),
                    &as_matrix(&y).unwrap_or_else(|| panic!("{other}")),
                );
                let got = mean_row_cosine_by_rows(&x, &y).unwrap_or_else(|| panic!("none"));
                assert_eq!(got.to_bits(), want.to_bits(), "{other}");
                assert_eq!(got > 0.9, near, "{other}: {got}");
            }
        }
    }
}
