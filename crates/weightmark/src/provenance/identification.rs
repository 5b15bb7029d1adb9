//! The identification report: what `identify --report` signs about a
//! suspect tested against every licensee's certificate.
//!
//! Its point is honest accounting: it records how many certificates were
//! tested (the Bonferroni factor m), each candidate's z, bound and adjusted
//! bound `min(1, m p)`, the releases the certificates belong to, and the
//! suspect by its digests, so a reader sees the correction applied and can
//! recompute it. [`check_identification`] recomputes every bound and
//! decision from the z's, m and the threshold; `verify` refuses a signed
//! report whose numbers do not agree.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::envelope::{
    digest_set, sign_statement, Envelope, Statement, Subject, Tool, STATEMENT_TYPE,
    TENSOR_ROOT_ALGORITHM, TENSOR_ROOT_SUBJECT,
};
use super::report::CertificateRef;
use crate::detect::{adjusted_log10, Mode};
use crate::digest::{hex, Sha256Digest};
use crate::error::{Error, Result};
use crate::identify::{Candidate, Identification};
use crate::key::SecretKey;

/// Predicate type of a weightmark identification report.
pub const IDENTIFICATION_PREDICATE_TYPE: &str = "https://weightmark.dev/identification/v1";

/// The correction applied to the candidates' bounds.
pub const BONFERRONI: &str = "bonferroni";

/// A release whose certificates were tested.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleaseRef {
    /// Release label.
    pub label: String,
    /// Mark scheme.
    pub scheme: String,
    /// Tensor root of the release's unmarked original (hex).
    pub original_tensor_root: String,
    /// Certificates of this release tested.
    pub certificates: u64,
}

/// One candidate (certificate) as the report records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IdentifiedCandidate {
    /// The certificate tested.
    pub certificate: CertificateRef,
    /// `ss2` with a recipient: the certificate's recipient-key commitment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_key_commitment: Option<String>,
    /// Release label.
    pub label: String,
    /// Recipient (licensee).
    pub recipient: Option<String>,
    /// The z that identifies this candidate (`ss2` with a recipient: of the
    /// recipient's own component).
    pub z: f64,
    /// `ss2`: the z of the release component (shared by every copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_z: Option<f64>,
    /// Elements tested.
    pub elements: u64,
    /// A coded recipient component (`tardos1`): Bernstein's range ratio
    /// `rho`; the bound is `exp(-z^2 / (2 (1 + rho z / 3)))`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<f64>,
    /// Hoeffding bound `exp(-z^2/2)` for this candidate alone (Bernstein's
    /// with `range`).
    pub p_value: f64,
    /// `log10` of `p_value`.
    pub log10_p_value: f64,
    /// `min(1, m x p_value)`.
    pub adjusted_p_value: f64,
    /// `log10` of the adjusted bound.
    pub log10_adjusted_p_value: f64,
    /// Whether the adjusted bound is at most the threshold.
    pub identified: bool,
}

/// The predicate of an identification report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IdentificationPredicate {
    /// Blind or informed.
    pub mode: Mode,
    /// Certificates tested: the Bonferroni factor m.
    pub certificates_tested: u64,
    /// The correction applied ([`BONFERRONI`]: adjusted = `min(1, m p)`).
    pub correction: String,
    /// Decision threshold on the adjusted bound.
    pub threshold_p: f64,
    /// Candidates named.
    pub identified: u64,
    /// The releases the certificates belong to, by label and original.
    pub releases: Vec<ReleaseRef>,
    /// Tensor root of the suspect (hex).
    pub suspect_tensor_root: String,
    /// Tensor digest (hex) of every tensor of the suspect, by name.
    pub suspect_tensor_digests: BTreeMap<String, String>,
    /// Tensor root of the original, for informed identification.
    pub original_tensor_root: Option<String>,
    /// Every candidate, highest z first.
    pub candidates: Vec<IdentifiedCandidate>,
    /// Key id of whoever ran the identification and signed the report.
    pub signer: String,
    /// The tool.
    pub tool: Tool,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
}

/// What an identification report is built from.
pub struct IdentificationInputs<'a> {
    /// The identification.
    pub identification: &'a Identification,
    /// The candidates given to [`crate::identify()`], in the same order.
    pub candidates: &'a [Candidate],
    /// SHA-256 of each suspect file, by name.
    pub suspect_files: &'a [(String, Sha256Digest)],
    /// Tensor root of the original, for informed identification.
    pub original_tensor_root: Option<String>,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
}

/// Builds and signs an identification report with `signer`.
pub fn build_identification_report(
    inputs: &IdentificationInputs<'_>,
    signer: &SecretKey,
) -> Result<Envelope> {
    let id = inputs.identification;
    if id.certificates != inputs.candidates.len() {
        return Err(Error::internal("identification and candidates differ in number"));
    }
    let mut candidates = Vec::with_capacity(id.candidates.len());
    let mut releases: Vec<ReleaseRef> = Vec::new();
    for ranked in &id.candidates {
        let c = inputs
            .candidates
            .get(ranked.index)
            .ok_or_else(|| Error::internal("a ranked candidate has no certificate"))?;
        let p = c.certificate.predicate();
        candidates.push(IdentifiedCandidate {
            certificate: CertificateRef {
                sha256: c.certificate.digest.clone(),
                signer: c.certificate.verified_signer.clone().unwrap_or_else(|| p.signer.clone()),
                mark_key_commitment: p.mark_key_commitment.clone(),
                signature_checked: c.certificate.signature_checked,
            },
            recipient_key_commitment: p.recipient_key_commitment.clone(),
            label: ranked.label.clone(),
            recipient: ranked.recipient.clone(),
            z: ranked.z,
            release_z: ranked.release_z,
            elements: ranked.elements,
            range: ranked.range,
            p_value: ranked.p_value,
            log10_p_value: ranked.log10_p_value,
            adjusted_p_value: ranked.adjusted_p_value,
            log10_adjusted_p_value: ranked.log10_adjusted_p_value,
            identified: ranked.identified,
        });
        let found = releases.iter_mut().find(|r| {
            r.label == p.label
                && r.original_tensor_root == p.original_tensor_root
                && r.scheme == p.scheme
        });
        match found {
            Some(r) => r.certificates += 1,
            None => releases.push(ReleaseRef {
                label: p.label.clone(),
                scheme: p.scheme.clone(),
                original_tensor_root: p.original_tensor_root.clone(),
                certificates: 1,
            }),
        }
    }
    releases.sort_by(|a, b| {
        (&a.label, &a.original_tensor_root).cmp(&(&b.label, &b.original_tensor_root))
    });
    let mut subject: Vec<Subject> = inputs
        .suspect_files
        .iter()
        .map(|(name, sha)| Subject { name: name.clone(), digest: digest_set("sha256", hex(sha)) })
        .collect();
    subject.push(Subject {
        name: TENSOR_ROOT_SUBJECT.to_string(),
        digest: digest_set(TENSOR_ROOT_ALGORITHM, id.suspect_digest.clone()),
    });
    let statement = Statement {
        statement_type: STATEMENT_TYPE.to_string(),
        subject,
        predicate_type: IDENTIFICATION_PREDICATE_TYPE.to_string(),
        predicate: IdentificationPredicate {
            mode: id.mode,
            certificates_tested: id.certificates as u64,
            correction: BONFERRONI.to_string(),
            threshold_p: id.threshold_p,
            identified: id.identified as u64,
            releases,
            suspect_tensor_root: id.suspect_digest.clone(),
            suspect_tensor_digests: id
                .suspect_tensor_digests
                .iter()
                .map(|(n, d)| (n.clone(), hex(d)))
                .collect(),
            original_tensor_root: inputs.original_tensor_root.clone(),
            candidates,
            signer: signer.public_key().key_id(),
            tool: Tool { name: "weightmark".into(), version: env!("CARGO_PKG_VERSION").into() },
            created: inputs.created.clone(),
        },
    };
    check_identification(&statement.predicate)
        .map_err(|reason| Error::internal(format!("identification report: {reason}")))?;
    sign_statement(&statement, signer)
}

/// Parses a payload as an identification statement and checks that its
/// numbers agree ([`check_identification`]).
pub fn parse_identification_statement(
    payload: &[u8],
) -> Result<Statement<IdentificationPredicate>, String> {
    let statement: Statement<IdentificationPredicate> = serde_json::from_slice(payload)
        .map_err(|e| format!("payload is not a weightmark identification report: {e}"))?;
    if statement.predicate_type != IDENTIFICATION_PREDICATE_TYPE {
        return Err(format!(
            "predicateType is '{}', not a weightmark identification report",
            statement.predicate_type
        ));
    }
    check_identification(&statement.predicate)?;
    Ok(statement)
}

/// Recomputes what a reader would from an identification report: one
/// candidate per certificate tested, each bound from its z
/// (`log10 p = -z^2 / (2 ln 10)` for z > 0, else 0; with a `range` rho,
/// Bernstein's `-z^2 / (2 (1 + rho z / 3) ln 10)`), each adjusted bound as
/// `min(1, m p)`, each decision against the threshold, the count of
/// candidates named and of certificates per release. The first
/// disagreement is the error.
pub fn check_identification(p: &IdentificationPredicate) -> Result<(), String> {
    let m = p.certificates_tested;
    if p.correction != BONFERRONI {
        return Err(format!("unknown correction '{}'", p.correction.escape_debug()));
    }
    if m == 0 || p.candidates.len() as u64 != m {
        return Err(format!(
            "it says {m} certificates were tested but lists {} candidates",
            p.candidates.len()
        ));
    }
    let per_release: u64 = p.releases.iter().map(|r| r.certificates).sum();
    if per_release != m {
        return Err(format!("its releases count {per_release} certificates, not {m}"));
    }
    if !(p.threshold_p > 0.0 && p.threshold_p < 1.0) {
        return Err(format!("threshold {} is not a probability", p.threshold_p));
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
    for c in &p.candidates {
        let who = c.recipient.as_deref().unwrap_or("(none)").escape_debug().to_string();
        let range = c.range.unwrap_or(0.0);
        if !(range.is_finite() && range >= 0.0) {
            return Err(format!("candidate '{who}': range {range} is not a finite ratio >= 0"));
        }
        let log10_p = crate::tardos::log10_bernstein(c.z, range);
        let log10_adjusted = adjusted_log10(log10_p, m);
        if !c.z.is_finite()
            || !close(c.log10_p_value, log10_p)
            || !close(c.p_value, 10f64.powf(log10_p))
        {
            return Err(format!("candidate '{who}': its p-value bound is not that of z {}", c.z));
        }
        if !close(c.log10_adjusted_p_value, log10_adjusted)
            || !close(c.adjusted_p_value, 10f64.powf(log10_adjusted))
        {
            return Err(format!(
                "candidate '{who}': its adjusted bound is not min(1, {m} x p) for z {}",
                c.z
            ));
        }
        if c.identified != (log10_adjusted <= p.threshold_p.log10()) {
            return Err(format!(
                "candidate '{who}': the decision disagrees with its adjusted bound and the \
                 threshold {}",
                p.threshold_p
            ));
        }
    }
    let named = p.candidates.iter().filter(|c| c.identified).count() as u64;
    if named != p.identified {
        return Err(format!("it says {} identified but {named} candidates are", p.identified));
    }
    Ok(())
}

/// Reads an identification report and checks its signature with `public`
/// and its numbers; every error names the file.
pub fn load_identification(
    path: &Path,
    public: &crate::key::PublicKey,
) -> Result<Statement<IdentificationPredicate>> {
    let opened = super::envelope::open_statement(path, Some(public))?;
    parse_identification_statement(&opened.payload)
        .map_err(|reason| Error::Certificate { path: path.to_path_buf(), reason })
}
