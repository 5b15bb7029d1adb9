//! The detection report: what `detect --report` signs about a suspect.
//!
//! A report names the suspect by its digests, the release it was tested for
//! (the certificate's digest and commitment), the statistics and the
//! decision, and optionally the report it builds on (a derivative of a
//! derivative), so a chain of reports can be followed back to a release.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::certificate::Certificate;
use super::envelope::{
    digest_set, open_statement, sign_statement, Envelope, Statement, Subject, Tool, STATEMENT_TYPE,
    TENSOR_ROOT_ALGORITHM, TENSOR_ROOT_SUBJECT,
};
use super::reveal::Dispute;
use crate::detect::{ComponentResult, Detection, Mode, Skipped, TensorResult};
use crate::digest::{hex, Sha256Digest};
use crate::error::{Error, Result};
use crate::key::{PublicKey, SecretKey};

/// Predicate type of a weightmark detection report.
pub const DETECTION_PREDICATE_TYPE: &str = "https://weightmark.dev/detection/v1";

/// The certificate a detection tested.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertificateRef {
    /// SHA-256 (hex) of the certificate file.
    pub sha256: String,
    /// Key id that verified the certificate's signature; when the signature
    /// was not checked, the signer the certificate claims (see
    /// `signature_checked`).
    pub signer: String,
    /// The certificate's mark-key commitment.
    pub mark_key_commitment: String,
    /// Whether the certificate's signature was checked against the owner's
    /// public key when the detection ran.
    pub signature_checked: bool,
}

/// An earlier report this one builds on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReportRef {
    /// SHA-256 (hex) of the earlier report file.
    pub sha256: String,
    /// Key id in the earlier report's envelope: the key that verified its
    /// signature when `signature_checked`, else only what the envelope claims
    /// (check the chain by verifying that report with its signer's public key).
    pub signer: String,
    /// The tensor root of the suspect it was about.
    pub suspect_tensor_root: String,
    /// Whether the earlier report's signature was checked when this report
    /// was made (false in reports written before this field existed).
    #[serde(default)]
    pub signature_checked: bool,
}

/// The predicate of a detection report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DetectionPredicate {
    /// Mark scheme tested, `"ss1"` or `"ss2"` (reports written before
    /// this field followed the detection said `"ss1"` for both).
    pub scheme: String,
    /// Blind or informed.
    pub mode: Mode,
    /// Release label tested.
    pub label: String,
    /// Recipient tested, if any.
    pub recipient: Option<String>,
    /// The certificate tested, if detection used one.
    pub certificate: Option<CertificateRef>,
    /// Tensor root of the suspect (hex).
    pub suspect_tensor_root: String,
    /// Tensor digest (hex) of every tensor of the suspect, by name.
    pub suspect_tensor_digests: BTreeMap<String, String>,
    /// Tensor root of the original, for informed detection.
    pub original_tensor_root: Option<String>,
    /// Global z of the decision (for `ss2` with an independent recipient
    /// component: of both components together).
    pub z: f64,
    /// `ss2` with a recipient: the recipient component alone (whose copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_component: Option<ComponentResult>,
    /// `ss2` decided on both components: the release component alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_component: Option<ComponentResult>,
    /// Global S.
    pub s: f64,
    /// Global V.
    pub v: f64,
    /// Elements tested.
    pub elements: u64,
    /// Hoeffding bound `exp(-z^2/2)`.
    pub p_value: f64,
    /// `log10` of the bound.
    pub log10_p_value: f64,
    /// How many certificates were tested to find this one (the Bonferroni
    /// factor N; 1 in reports written before this field existed).
    #[serde(default = "one")]
    pub certificates_tested: u64,
    /// `min(1, N x p_value)`, on which `detected` decides (absent from
    /// reports written before this field existed, which decided on `p_value`).
    #[serde(default)]
    pub adjusted_p_value: Option<f64>,
    /// `log10` of the adjusted bound.
    #[serde(default)]
    pub log10_adjusted_p_value: Option<f64>,
    /// Decision threshold on the (adjusted) bound.
    pub threshold_p: f64,
    /// The decision.
    pub detected: bool,
    /// Per-tensor statistics.
    pub tensors: Vec<TensorResult>,
    /// Tensors that could not be tested.
    pub skipped: Vec<Skipped>,
    /// Function-preserving transforms recovered and undone before testing.
    #[serde(default)]
    pub realigned: Vec<String>,
    /// The report this one builds on.
    pub builds_on: Option<ReportRef>,
    /// For detection with a revealed mark key: whether the owner's report
    /// committed to this suspect before the reveal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispute: Option<Dispute>,
    /// Key id of whoever ran the detection and signed the report.
    pub signer: String,
    /// The tool.
    pub tool: Tool,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
}

fn one() -> u64 {
    1
}

/// A parsed report.
#[derive(Clone, Debug)]
pub struct Report {
    /// The statement.
    pub statement: Statement<DetectionPredicate>,
    /// SHA-256 (hex) of the report file.
    pub digest: String,
    /// Key id of the envelope's first signature.
    pub signer: String,
    /// Whether the signature was checked (with the key of id `signer`).
    pub signature_checked: bool,
}

/// What a report is built from.
pub struct ReportInputs<'a> {
    /// The detection.
    pub detection: &'a Detection,
    /// Release label and recipient tested.
    pub label: &'a str,
    /// Recipient tested.
    pub recipient: Option<&'a str>,
    /// The certificate tested, if any.
    pub certificate: Option<&'a Certificate>,
    /// SHA-256 of each suspect file, by name.
    pub suspect_files: &'a [(String, Sha256Digest)],
    /// Tensor root of the original, for informed detection.
    pub original_tensor_root: Option<String>,
    /// The report this one builds on.
    pub builds_on: Option<&'a Report>,
    /// What a revealed key settles about the suspect, for detection with one.
    pub dispute: Option<&'a Dispute>,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
}

/// Builds and signs a detection report with `signer`.
pub fn build_report(inputs: &ReportInputs<'_>, signer: &SecretKey) -> Result<Envelope> {
    let d = inputs.detection;
    let mut subject: Vec<Subject> = inputs
        .suspect_files
        .iter()
        .map(|(name, sha)| Subject { name: name.clone(), digest: digest_set("sha256", hex(sha)) })
        .collect();
    subject.push(Subject {
        name: TENSOR_ROOT_SUBJECT.to_string(),
        digest: digest_set(TENSOR_ROOT_ALGORITHM, d.suspect_digest.clone()),
    });
    let certificate = inputs.certificate.map(|c| CertificateRef {
        sha256: c.digest.clone(),
        signer: c.verified_signer.clone().unwrap_or_else(|| c.predicate().signer.clone()),
        mark_key_commitment: c.predicate().mark_key_commitment.clone(),
        signature_checked: c.signature_checked,
    });
    let builds_on = inputs.builds_on.map(|r| ReportRef {
        sha256: r.digest.clone(),
        signer: r.signer.clone(),
        suspect_tensor_root: r.statement.predicate.suspect_tensor_root.clone(),
        signature_checked: r.signature_checked,
    });
    let statement = Statement {
        statement_type: STATEMENT_TYPE.to_string(),
        subject,
        predicate_type: DETECTION_PREDICATE_TYPE.to_string(),
        predicate: DetectionPredicate {
            scheme: d.scheme.clone(),
            mode: d.mode,
            label: inputs.label.to_string(),
            recipient: inputs.recipient.map(str::to_string),
            certificate,
            suspect_tensor_root: d.suspect_digest.clone(),
            suspect_tensor_digests: d
                .suspect_tensor_digests
                .iter()
                .map(|(n, dg)| (n.clone(), hex(dg)))
                .collect(),
            original_tensor_root: inputs.original_tensor_root.clone(),
            z: d.z,
            recipient_component: d.recipient_component,
            release_component: d.release_component,
            s: d.s,
            v: d.v,
            elements: d.elements,
            p_value: d.p_value,
            log10_p_value: d.log10_p_value,
            certificates_tested: d.certificates_tested,
            adjusted_p_value: Some(d.adjusted_p_value),
            log10_adjusted_p_value: Some(d.log10_adjusted_p_value),
            threshold_p: d.threshold_p,
            detected: d.detected,
            tensors: d.tensors.clone(),
            skipped: d.skipped.clone(),
            realigned: d.realigned.clone(),
            builds_on,
            dispute: inputs.dispute.cloned(),
            signer: signer.public_key().key_id(),
            tool: Tool { name: "weightmark".into(), version: env!("CARGO_PKG_VERSION").into() },
            created: inputs.created.clone(),
        },
    };
    sign_statement(&statement, signer)
}

/// Reads a report; checks its signature when `public` is given.
pub fn load_report(path: &Path, public: Option<&PublicKey>) -> Result<Report> {
    let opened = open_statement(path, public)?;
    let statement = parse_detection_statement(&opened.payload)
        .map_err(|reason| Error::Certificate { path: path.to_path_buf(), reason })?;
    // DSSE makes keyid optional: without one, the signer the predicate names.
    let signer = match public {
        Some(public) => public.key_id(),
        None => opened
            .envelope
            .signatures
            .first()
            .map(|s| s.keyid.clone())
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| statement.predicate.signer.clone()),
    };
    Ok(Report { statement, digest: opened.sha256, signer, signature_checked: public.is_some() })
}

/// Reads a report cited by a new one (`builds on`): its signature is checked
/// with whichever of `keys` its envelope names, and a signature that does not
/// verify is an error naming the file. When none of `keys` is the signer's,
/// the report is read unchecked ([`Report::signature_checked`] false), which
/// the citing report records.
pub fn load_cited_report(path: &Path, keys: &[PublicKey]) -> Result<Report> {
    let opened = open_statement(path, None)?;
    let signer =
        keys.iter().find(|k| opened.envelope.signatures.iter().any(|s| s.keyid == k.key_id()));
    load_report(path, signer)
}

/// Parses a payload as a detection statement.
pub fn parse_detection_statement(payload: &[u8]) -> Result<Statement<DetectionPredicate>, String> {
    match super::envelope::predicate_type(payload) {
        Some(t) if t == DETECTION_PREDICATE_TYPE => {}
        Some(t) => {
            return Err(format!("predicateType is '{t}', not a weightmark detection report"))
        }
        None => return Err("payload is not an in-toto statement".into()),
    }
    let statement: Statement<DetectionPredicate> = serde_json::from_slice(payload)
        .map_err(|e| format!("payload is not a weightmark detection report: {e}"))?;
    if statement.predicate_type != DETECTION_PREDICATE_TYPE {
        return Err(format!(
            "predicateType is '{}', not a weightmark detection report",
            statement.predicate_type
        ));
    }
    Ok(statement)
}
