//! Looking for a mark in a suspect model, blind or informed.
//!
//! The suspect's tensors are matched to the certificate's by canonical name.
//! A tensor that is missing, has another shape, or cannot be read as numbers
//! is reported by name and left out; every other tensor is tested, and the
//! per-tensor statistics add up to the global z (see [`crate::scheme`]).

use serde::{Deserialize, Serialize};

use crate::digest::{hex, model_tensor_digests, tensor_root, Sha256Digest};
use crate::error::{Error, Result};
use crate::key::{MarkKey, SecretKey};
use crate::model::{Model, TensorRef};
use crate::pattern::TensorStreams;
use crate::progress::Progress;
use crate::provenance::Certificate;
use crate::scheme::Scheme;
use crate::scheme::{detect_tensor_multi, p_value_bound, Stats};
use crate::select::is_default_selected;

/// Blind (suspect alone) or informed (suspect minus the original).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Without the original.
    Blind,
    /// With the original.
    Informed,
}

/// What to look for: one release's mark key and the tensors it marked.
pub struct Target {
    /// The release mark key.
    pub mark_key: MarkKey,
    /// Tensors to test (from a certificate), with their certified shapes;
    /// `None` tests the suspect's default selection.
    pub tensors: Option<Vec<(String, Vec<usize>)>>,
}

impl Target {
    /// Looks for `mark_key` in the suspect's default selection.
    pub fn new(mark_key: MarkKey) -> Target {
        Target { mark_key, tensors: None }
    }

    /// The release of `certificate`, with the mark key derived from the
    /// owner's `secret` key and checked against the certificate's commitment,
    /// testing the tensors it certifies. Refuses a scheme this version does
    /// not know and a key that did not make the certificate; both errors
    /// name the certificate file.
    pub fn from_certificate(certificate: &Certificate, secret: &SecretKey) -> Result<Target> {
        let mark_key = secret
            .mark_key(&certificate.predicate().label, certificate.predicate().recipient.as_deref());
        Target::from_revealed(certificate, mark_key)
    }

    /// The release of `certificate` tested with a mark key revealed in a
    /// dispute (no secret key needed), checked against the commitment.
    pub fn from_revealed(certificate: &Certificate, mark_key: MarkKey) -> Result<Target> {
        let named =
            |e: Error| Error::Certificate { path: certificate.path.clone(), reason: e.to_string() };
        let p = certificate.predicate();
        match p.scheme().map_err(named)? {
            Scheme::Ss1 => {}
        }
        certificate.check_mark_key(&mark_key).map_err(named)?;
        Ok(Target { mark_key, tensors: Some(p.tensor_shapes()) })
    }

    /// An `ss1` release named by label and recipient, without its
    /// certificate: the default selection of the suspect is tested.
    pub fn from_label(secret: &SecretKey, label: &str, recipient: Option<&str>) -> Target {
        Target::new(secret.mark_key(label, recipient))
    }
}

/// Options for [`detect`].
pub struct DetectOptions<'a> {
    /// Decide "detected" when the p-value bound is at most this.
    pub threshold_p: f64,
    /// Progress receiver.
    pub progress: &'a dyn Progress,
}

impl Default for DetectOptions<'static> {
    /// The default threshold ([`crate::DEFAULT_THRESHOLD_P`]), no progress reports.
    fn default() -> Self {
        DetectOptions { threshold_p: crate::DEFAULT_THRESHOLD_P, progress: &crate::NoProgress }
    }
}

/// Statistics of one tested tensor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
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
    /// Function-preserving transforms found and undone before testing
    /// (informed detection only).
    pub realigned: Vec<String>,
    /// Digest of every tensor of the suspect (for signed reports).
    #[serde(skip)]
    pub suspect_tensor_digests: Vec<(String, Sha256Digest)>,
}

/// Runs detection of `target` in `suspect`, informed when `original` is given.
pub fn detect(
    suspect: &Model,
    original: Option<&Model>,
    target: &Target,
    options: &DetectOptions<'_>,
) -> Result<Detection> {
    let mut all = detect_many(suspect, original, &[target], options)?;
    all.pop().ok_or_else(|| Error::internal("detection produced no result"))
}

/// Runs detection of several targets (releases, recipients) in one read pass
/// over the suspect: each tensor is decoded once and tested under every key
/// that marked it ([`detect_tensor_multi`]). Results are in target order.
pub fn detect_many(
    suspect: &Model,
    original: Option<&Model>,
    targets: &[&Target],
    options: &DetectOptions<'_>,
) -> Result<Vec<Detection>> {
    // With the original at hand, undo function-preserving edits first. The
    // digests below are still those of the suspect as given.
    let realigned = match original {
        Some(o) => crate::align::realign(suspect, o)?,
        None => None,
    };
    let given = suspect;
    let suspect = realigned.as_ref().map_or(suspect, |r| &r.model);
    let original = realigned.as_ref().and_then(|r| r.original.as_ref()).or(original);
    let recovered: Vec<String> =
        realigned.as_ref().map(|r| r.recovered.clone()).unwrap_or_default();
    let mut skipped: Vec<Vec<Skipped>> = vec![Vec::new(); targets.len()];
    // Tensor name -> (suspect tensor, original tensor, targets that test it), in
    // order of first appearance.
    let mut plan: Vec<(TensorRef<'_>, Option<TensorRef<'_>>, Vec<usize>)> = Vec::new();
    for (ti, target) in targets.iter().enumerate() {
        let wanted: Vec<(String, Option<Vec<usize>>)> = match &target.tensors {
            Some(list) => list.iter().map(|(n, s)| (n.clone(), Some(s.clone()))).collect(),
            None => suspect
                .tensors()
                .filter(is_default_selected)
                .map(|t| (t.name.to_string(), None))
                .collect(),
        };
        let mut seen = std::collections::HashSet::new();
        for (name, shape) in &wanted {
            // A tensor counted twice would inflate z; test each once.
            if !seen.insert(name.as_str()) {
                skipped[ti].push(Skipped { name: name.clone(), reason: "listed twice".into() });
                continue;
            }
            match check_tensor(suspect, original, name, shape.as_deref()) {
                Err(reason) => skipped[ti].push(Skipped { name: name.clone(), reason }),
                Ok((t, o)) => match plan.iter_mut().find(|(p, _, _)| p.name == t.name) {
                    Some((_, _, users)) => users.push(ti),
                    None => plan.push((t, o, vec![ti])),
                },
            }
        }
    }

    let planned: u64 = plan.iter().map(|(t, _, _)| t.data.len() as u64).sum();
    options.progress.start("detecting", planned + suspect.data_bytes());
    let mut results: Vec<Vec<TensorResult>> = vec![Vec::new(); targets.len()];
    for (t, o, users) in &plan {
        let streams: Vec<TensorStreams> =
            users.iter().map(|&ti| TensorStreams::new(&targets[ti].mark_key, t.name)).collect();
        let refs: Vec<&TensorStreams> = streams.iter().collect();
        let stats = detect_tensor_multi(t, o.as_ref(), &refs);
        for (&ti, st) in users.iter().zip(stats) {
            results[ti].push(TensorResult {
                name: t.name.to_string(),
                z: st.z(),
                s: st.s,
                v: st.v,
                elements: st.elements,
            });
        }
        options.progress.advance(t.data.len() as u64);
    }
    let digests = model_tensor_digests(given);
    options.progress.advance(given.data_bytes());
    options.progress.finish();
    let suspect_digest = hex(&tensor_root(&digests));

    Ok(results
        .into_iter()
        .zip(skipped)
        .map(|(tensors, skipped)| {
            let total = tensors.iter().fold(Stats::default(), |acc, r| {
                acc.merge(Stats { s: r.s, v: r.v, elements: r.elements })
            });
            let z = total.z();
            let p_value = p_value_bound(z);
            Detection {
                detected: p_value <= options.threshold_p,
                mode: if original.is_some() { Mode::Informed } else { Mode::Blind },
                z,
                p_value,
                log10_p_value: log10_p_bound(z),
                threshold_p: options.threshold_p,
                elements: total.elements,
                s: total.s,
                v: total.v,
                tensors,
                skipped,
                suspect_digest: suspect_digest.clone(),
                realigned: recovered.clone(),
                suspect_tensor_digests: digests.clone(),
            }
        })
        .collect())
}

/// `log10` of the bound `exp(-z^2/2)`: `-z^2 / (2 ln 10)` for positive `z`.
pub fn log10_p_bound(z: f64) -> f64 {
    if z > 0.0 {
        -z * z / (2.0 * std::f64::consts::LN_10)
    } else {
        0.0
    }
}

/// The suspect's (and original's) tensor called `name`, or why it cannot be tested.
fn check_tensor<'m>(
    suspect: &'m Model,
    original: Option<&'m Model>,
    name: &str,
    shape: Option<&[usize]>,
) -> std::result::Result<(TensorRef<'m>, Option<TensorRef<'m>>), String> {
    let t = suspect.tensor(name).ok_or("missing from the suspect")?;
    if let Some(shape) = shape.filter(|s| *s != t.shape) {
        return Err(format!("shape {:?} in the suspect, {shape:?} when marked", t.shape));
    }
    if !t.dtype.is_readable() {
        return Err(format!("dtype {} in the suspect cannot be read as numbers", t.dtype));
    }
    let Some(o) = original else { return Ok((t, None)) };
    let ot = o.tensor(name).ok_or("missing from the original")?;
    if ot.shape != t.shape || !ot.dtype.is_readable() {
        return Err(format!(
            "original has shape {:?} and dtype {}, suspect {:?} and {}",
            ot.shape, ot.dtype, t.shape, t.dtype
        ));
    }
    Ok((t, Some(ot)))
}
