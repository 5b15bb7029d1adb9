//! Collusion: k licensees holding differently marked copies of one release
//! (same tensor names and shapes) combine them element by element to weaken
//! each copy's mark. Only float tensors (f64, f32, f16, bf16) are combined;
//! every other tensor is copied from the first copy, whose layout the result
//! takes and against which the damage is measured (over the tensors a mark
//! lives in by default, float matrices).

use std::path::Path;

use rand_core::RngCore;

use super::{check_same_shapes, encode_like, AttackReport};
use crate::dtype::decode_f64;
use crate::error::{Error, Result};
use crate::model::{Model, TensorRef};
use crate::progress::Progress;
use crate::rng::stream;

/// How [`collude`] combines the copies, element by element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollusionMethod {
    /// The mean of the k values.
    Mean,
    /// The median (for even k, the mean of the two middle values).
    Median,
    /// `(max + min) / 2` where the copies differ by more than
    /// [`MIDPOINT_TOLERANCE`] (relative), else the mean. For marks `+-a` around
    /// a common `w`, any element where two copies disagree gives back `w`
    /// exactly, whatever the share of each sign.
    Midpoint,
    /// Element `i` (row-major index within its tensor) from copy `i mod k`.
    Interleave,
    /// Each element from a copy drawn at random (seeded, uniform).
    Random,
}

/// Relative spread below which [`CollusionMethod::Midpoint`] treats the
/// copies as equal (and averages them): rounding noise, not a mark.
pub const MIDPOINT_TOLERANCE: f64 = 1e-9;

impl CollusionMethod {
    /// The method's name on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            CollusionMethod::Mean => "mean",
            CollusionMethod::Median => "median",
            CollusionMethod::Midpoint => "midpoint",
            CollusionMethod::Interleave => "interleave",
            CollusionMethod::Random => "random",
        }
    }
}

/// One element from the k copies' values `v` (sorted in place for the median).
fn combine(method: CollusionMethod, v: &mut [f64]) -> f64 {
    let k = v.len().max(1);
    let mean = || v.iter().sum::<f64>() / k as f64;
    match method {
        CollusionMethod::Mean => mean(),
        CollusionMethod::Median => {
            v.sort_unstable_by(f64::total_cmp);
            if k % 2 == 1 {
                v[k / 2]
            } else {
                (v[k / 2 - 1] + v[k / 2]) / 2.0
            }
        }
        CollusionMethod::Midpoint => {
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            if max - min > MIDPOINT_TOLERANCE * max.abs().max(min.abs()) {
                (max + min) / 2.0
            } else {
                mean()
            }
        }
        // Chosen per element by the caller.
        CollusionMethod::Interleave | CollusionMethod::Random => v[0],
    }
}

/// The combined values of one tensor held by every copy.
fn combine_tensor(copies: &[Vec<f64>], method: CollusionMethod, seed: u64, name: &str) -> Vec<f64> {
    let k = copies.len();
    let n = copies.first().map_or(0, Vec::len);
    match method {
        CollusionMethod::Interleave => (0..n).map(|i| copies[i % k][i]).collect(),
        CollusionMethod::Random => {
            let mut rng = stream(seed, &format!("collude\0{name}"));
            (0..n)
                .map(|i| {
                    let j = ((u64::from(rng.next_u32()) * k as u64) >> 32) as usize;
                    copies[j][i]
                })
                .collect()
        }
        _ => {
            let mut buf = vec![0.0; k];
            (0..n)
                .map(|i| {
                    buf.iter_mut().zip(copies).for_each(|(b, c)| *b = c[i]);
                    combine(method, &mut buf)
                })
                .collect()
        }
    }
}

/// Combines `models` (at least two copies of one release, the first giving
/// the layout) by `method`, writing the result to `out`. Copies whose tensor
/// names or shapes differ from the first's are refused, naming the file and
/// the tensor; so is an output that is one of the inputs.
pub fn collude(
    models: &[&Model],
    method: CollusionMethod,
    seed: u64,
    out: &Path,
    progress: &dyn Progress,
) -> Result<AttackReport> {
    let [first, others @ ..] = models else {
        return Err(Error::invalid("collusion needs at least two copies"));
    };
    if others.is_empty() {
        return Err(Error::invalid("collusion needs at least two copies; got one"));
    }
    check_same_shapes(first, others)?;
    for m in others {
        crate::model::refuse_same_path(&m.path, out)?;
    }
    let transform = |t: &TensorRef<'_>| -> Result<Option<Vec<u8>>> {
        if !t.dtype.is_markable() {
            return Ok(None);
        }
        let mut copies = Vec::with_capacity(models.len());
        for m in models {
            let c = m
                .tensor(t.name)
                .ok_or_else(|| Error::internal("a tensor checked before collusion vanished"))?;
            let mut v = Vec::with_capacity(c.elements());
            if !decode_f64(c.dtype, &c.data(), &mut v) || v.len() != t.elements() {
                return Err(Error::invalid(format!(
                    "{}: tensor '{}' is {}; copies to combine must hold floats",
                    m.path.display(),
                    t.name,
                    c.dtype
                )));
            }
            copies.push(v);
        }
        let combined = combine_tensor(&copies, method, seed, t.name);
        Ok(Some(encode_like(t, combined.into_iter())))
    };
    super::symmetry::write_edited(first, out, &transform, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_method_combines_elements_as_documented() {
        let copies =
            vec![vec![1.0, 5.0, 2.0, 0.5], vec![3.0, 4.0, 2.0, 0.5], vec![2.0, 9.0, 2.0, 0.7]];
        let run = |m| combine_tensor(&copies, m, 1, "t");
        assert_eq!(run(CollusionMethod::Mean), [2.0, 6.0, 2.0, 1.7 / 3.0]);
        assert_eq!(run(CollusionMethod::Median), [2.0, 5.0, 2.0, 0.5]);
        assert_eq!(run(CollusionMethod::Midpoint), [2.0, 6.5, 2.0, 0.6]);
        assert_eq!(run(CollusionMethod::Interleave), [1.0, 4.0, 2.0, 0.5]);
        let random = run(CollusionMethod::Random);
        for (i, v) in random.iter().enumerate() {
            assert!(copies.iter().any(|c| c[i] == *v));
        }
        let even = vec![vec![1.0], vec![4.0], vec![2.0], vec![3.0]];
        assert_eq!(combine_tensor(&even, CollusionMethod::Median, 1, "t"), [2.5]);
    }
}
