//! Looking for a mark in a suspect model, blind or informed.
//!
//! The suspect's tensors are matched to the certificate's by canonical name.
//! A tensor that is missing, has another shape, or cannot be read as numbers
//! is reported by name and left out; every other tensor is tested, and the
//! per-tensor statistics add up to the global z (see [`crate::scheme`]).

use serde::Serialize;

use crate::digest::{hex, model_tensor_digests, tensor_root};
use crate::error::Result;
use crate::key::MarkKey;
use crate::model::{Model, TensorRef};
use crate::pattern::TensorStreams;
use crate::progress::Progress;
use crate::scheme::{detect_tensor, p_value_bound, Stats};
use crate::select::is_default_selected;

/// Blind (suspect alone) or informed (suspect minus the original).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Without the original.
    Blind,
    /// With the original.
    Informed,
}

/// What to look for.
pub struct Target<'a> {
    /// The release mark key.
    pub mark_key: &'a MarkKey,
    /// Tensors to test (from a certificate), with their certified shapes;
    /// `None` tests the suspect's default selection.
    pub tensors: Option<Vec<(String, Vec<usize>)>>,
}

/// Options for [`detect`].
pub struct DetectOptions<'a> {
    /// Decide "detected" when the p-value bound is at most this.
    pub threshold_p: f64,
    /// Progress receiver.
    pub progress: &'a dyn Progress,
}

/// Statistics of one tested tensor.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TensorResult {
    /// Tensor name.
    pub name: String,
    /// Its z.
    pub z: f64,
    /// Its S.
    pub s: f64,
    /// Its V.
    pub v: f64,
    /// Elements tested.
    pub elements: u64,
}

/// A tensor that could not be tested, and why.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Skipped {
    /// Tensor name.
    pub name: String,
    /// Why it was left out.
    pub reason: String,
}

/// The outcome of a detection.
#[derive(Clone, Debug, Serialize)]
pub struct Detection {
    /// Whether `p_value <= threshold_p`.
    pub detected: bool,
    /// Blind or informed.
    pub mode: Mode,
    /// Global z.
    pub z: f64,
    /// Hoeffding bound `exp(-z^2/2)` on the false-positive probability.
    pub p_value: f64,
    /// `log10` of the bound, `-z^2 / (2 ln 10)`: exact where `p_value`
    /// underflows to 0 (z above about 38).
    pub log10_p_value: f64,
    /// Decision threshold on `p_value`.
    pub threshold_p: f64,
    /// Elements tested.
    pub elements: u64,
    /// Global S.
    pub s: f64,
    /// Global V.
    pub v: f64,
    /// Per-tensor results: in certificate order with a certificate, else in
    /// suspect order.
    pub tensors: Vec<TensorResult>,
    /// Tensors that could not be tested.
    pub skipped: Vec<Skipped>,
    /// Tensor root over every tensor of the suspect (hex).
    pub suspect_digest: String,
}

/// Runs detection of `target` in `suspect`, informed when `original` is given.
pub fn detect(
    suspect: &Model,
    original: Option<&Model>,
    target: &Target<'_>,
    options: &DetectOptions<'_>,
) -> Result<Detection> {
    let mut skipped = Vec::new();
    let mut plan: Vec<(TensorRef<'_>, Option<TensorRef<'_>>)> = Vec::new();
    let wanted: Vec<(String, Option<Vec<usize>>)> = match &target.tensors {
        Some(list) => list.iter().map(|(n, s)| (n.clone(), Some(s.clone()))).collect(),
        None => suspect
            .tensors()
            .filter(is_default_selected)
            .map(|t| (t.name.to_string(), None))
            .collect(),
    };
    for (name, shape) in &wanted {
        let skip = |reason: String| Skipped { name: name.clone(), reason };
        let Some(t) = suspect.tensor(name) else {
            skipped.push(skip("missing from the suspect".into()));
            continue;
        };
        if let Some(shape) = shape.as_ref().filter(|s| s.as_slice() != t.shape) {
            skipped
                .push(skip(format!("shape {:?} in the suspect, {shape:?} when marked", t.shape)));
            continue;
        }
        if !t.dtype.is_readable() {
            skipped
                .push(skip(format!("dtype {} in the suspect cannot be read as numbers", t.dtype)));
            continue;
        }
        let orig = match original {
            None => None,
            Some(o) => match o.tensor(name) {
                None => {
                    skipped.push(skip("missing from the original".into()));
                    continue;
                }
                Some(ot) if ot.shape != t.shape || !ot.dtype.is_readable() => {
                    skipped.push(skip(format!(
                        "original has shape {:?} and dtype {}, suspect {:?} and {}",
                        ot.shape, ot.dtype, t.shape, t.dtype
                    )));
                    continue;
                }
                Some(ot) => Some(ot),
            },
        };
        plan.push((t, orig));
    }

    let planned: u64 = plan.iter().map(|(t, _)| t.data.len() as u64).sum();
    options.progress.start("detecting", planned + suspect.data_bytes());
    // Statistics of planned tensors, then digests of every suspect tensor.
    let results: Vec<TensorResult> = plan
        .iter()
        .map(|(t, o)| {
            let streams = TensorStreams::new(target.mark_key, t.name);
            let st = detect_tensor(t, o.as_ref(), &streams);
            options.progress.advance(t.data.len() as u64);
            TensorResult {
                name: t.name.to_string(),
                z: st.z(),
                s: st.s,
                v: st.v,
                elements: st.elements,
            }
        })
        .collect();
    let digests = model_tensor_digests(suspect);
    options.progress.advance(suspect.data_bytes());
    options.progress.finish();

    let total = results
        .iter()
        .fold(Stats::default(), |acc, r| acc.merge(Stats { s: r.s, v: r.v, elements: r.elements }));
    let z = total.z();
    let p_value = p_value_bound(z);
    Ok(Detection {
        detected: p_value <= options.threshold_p,
        mode: if original.is_some() { Mode::Informed } else { Mode::Blind },
        z,
        p_value,
        log10_p_value: if z > 0.0 { -z * z / (2.0 * std::f64::consts::LN_10) } else { 0.0 },
        threshold_p: options.threshold_p,
        elements: total.elements,
        s: total.s,
        v: total.v,
        tensors: results,
        skipped,
        suspect_digest: hex(&tensor_root(&digests)),
    })
}
