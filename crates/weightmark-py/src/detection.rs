//! Detection of one release's mark, in model files or in tensors held in
//! memory, with the CLI's `detect` semantics and its `--json` object.

use std::path::PathBuf;

use serde_json::json;
use weightmark::{
    detect, load_certificate, Certificate, DetectOptions, Error, Model, Progress, SecretKey, Target,
};

use crate::errors::{json_text, Failure, Outcome};

/// What to look for.
pub struct DetectRequest {
    /// The owner's secret key file.
    pub key: PathBuf,
    /// The release's certificate (its signature is checked against the key).
    pub cert: Option<PathBuf>,
    /// Release label, without a certificate.
    pub label: Option<String>,
    /// Recipient, without a certificate.
    pub recipient: Option<String>,
    /// Decision threshold on the p-value bound.
    pub threshold: f64,
}

/// Refuses a threshold that is not a probability.
pub fn check_threshold(threshold: f64) -> Outcome<()> {
    if threshold > 0.0 && threshold < 1.0 {
        Ok(())
    } else {
        Err(Failure::Input(format!("threshold {threshold} must be a probability between 0 and 1")))
    }
}

/// The release under test, checked before any model is read.
pub struct Release {
    label: String,
    recipient: Option<String>,
    target: Target,
    cert: Option<Certificate>,
}

/// Loads the key and certificate and derives the target. A certificate made
/// with another key, or with a scheme this version does not know, is refused
/// here (`CertificateError`).
pub fn release(r: &DetectRequest) -> Outcome<Release> {
    check_threshold(r.threshold)?;
    if r.recipient.as_deref() == Some("") {
        return Err(Failure::Input(
            "the recipient is empty: leave it out to test a release without one".into(),
        ));
    }
    let secret = SecretKey::load(&r.key)?;
    let Some(path) = &r.cert else {
        let label = r.label.clone().ok_or_else(|| {
            Failure::Input("give the release's certificate (cert=) or its label (label=)".into())
        })?;
        let target = Target::from_label(&secret, &label, r.recipient.as_deref());
        return Ok(Release { label, recipient: r.recipient.clone(), target, cert: None });
    };
    let cert = load_certificate(path, &secret.public_key())?;
    let target = Target::from_certificate(&cert, &secret)?;
    let p = cert.predicate();
    Ok(Release { label: p.label.clone(), recipient: p.recipient.clone(), target, cert: Some(cert) })
}

/// Tests `suspect` (named `suspect_name` in the result) for the release,
/// informed with `original`: the CLI's `detect --json` object. A suspect in
/// which nothing could be tested is an error, as in the CLI.
pub fn run(
    release: &Release,
    suspect: &Model,
    suspect_name: &str,
    original: Option<&Model>,
    threshold: f64,
    progress: &dyn Progress,
) -> Outcome<String> {
    let options = DetectOptions { threshold_p: threshold, progress };
    let result = detect(suspect, original, &release.target, &options)?;
    if result.nothing_tested() {
        let why: Vec<String> =
            result.skipped.iter().take(3).map(|s| format!("'{}' {}", s.name, s.reason)).collect();
        return Err(Failure::Input(format!(
            "{suspect_name}: nothing could be tested ({} tensor(s) skipped: {}{})",
            result.skipped.len(),
            why.join("; "),
            if result.skipped.len() > 3 { "; ..." } else { "" }
        )));
    }
    let mut value = serde_json::to_value(&result)
        .map_err(|e| Failure::Library(Error::internal(format!("cannot write JSON: {e}"))))?;
    let cert = release.cert.as_ref();
    if let Some(obj) = value.as_object_mut() {
        obj.insert("label".into(), json!(release.label));
        obj.insert("recipient".into(), json!(release.recipient));
        obj.insert("certificate_digest".into(), json!(cert.map(|c| &c.digest)));
        obj.insert(
            "certificate_signature_checked".into(),
            json!(cert.map(|c| c.signature_checked)),
        );
        obj.insert("suspect".into(), json!(suspect_name));
        // The CLI's dispute and builds-on fields: never set from Python (no
        // revealed key, no chained report), present so the objects match.
        obj.insert("dispute".into(), serde_json::Value::Null);
        obj.insert("builds_on_signature_checked".into(), serde_json::Value::Null);
        obj.insert("report".into(), serde_json::Value::Null);
    }
    json_text(&value)
}
