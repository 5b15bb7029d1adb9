//! The reveal statement: one release's mark key, disclosed for a dispute
//! about one suspect that a signed report fixed first.
//!
//! A revealed mark key lets anyone plant that release's mark in any model (a
//! framing attack), so a revealed key proves something only about a model
//! that was committed to before the key was out. `weightmark reveal` therefore
//! writes a signed, dated statement that carries the key *and* the owner's
//! earlier detection report about the suspect (its file bytes, so the
//! statement can be checked on its own); `detect` with a revealed key checks
//! that the suspect is the one that report names and refuses any other model.
//! The bare mark key file of earlier versions (no report) still opens its
//! release, but [`Dispute::committed`] is then false. docs/threat-model.md
//! gives the procedure and what a third party must check (that the report
//! was published before the reveal: its date is the owner's own claim).

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::certificate::Certificate;
use super::envelope::{
    digest_set, parse_envelope, predicate_type, read_statement_file, sign_statement,
    verify_envelope, Envelope, Statement, Subject, Tool, STATEMENT_TYPE, TENSOR_ROOT_ALGORITHM,
    TENSOR_ROOT_SUBJECT,
};
use super::report::{parse_detection_statement, DetectionPredicate};
use crate::detect::Target;
use crate::digest::hex;
use crate::error::{Error, Result};
use crate::key::{MarkKey, PublicKey, SecretKey, MARK_KEY_HEADER};
use crate::tardos::RecipientCode;

/// Predicate type of a weightmark reveal statement.
pub const REVEAL_PREDICATE_TYPE: &str = "https://weightmark.dev/reveal/v1";

/// The owner's report that fixed the suspect before the reveal.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommittedReport {
    /// SHA-256 (hex) of the report file: what a third party looks up in the
    /// place (transparency log, timestamp, publication) that dates it.
    pub sha256: String,
    /// The suspect's tensor root, as the report names it.
    pub suspect_tensor_root: String,
    /// The report's creation time (the owner's claim, like every date here).
    pub created: String,
    /// Base64 of the report file's bytes.
    pub file: String,
}

impl CommittedReport {
    /// The report's bytes, checked against the SHA-256 it cites.
    fn bytes(&self) -> std::result::Result<Vec<u8>, String> {
        let bytes = BASE64
            .decode(&self.file)
            .map_err(|_| "the committing report inside is not base64".to_string())?;
        if hex(&Sha256::digest(&bytes)) != self.sha256 {
            return Err("the committing report inside does not have the SHA-256 it cites".into());
        }
        Ok(bytes)
    }
}

/// The predicate of a reveal statement.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RevealPredicate {
    /// Mark scheme of the release.
    pub scheme: String,
    /// Release label.
    pub label: String,
    /// Recipient, if any.
    pub recipient: Option<String>,
    /// Which key is disclosed: `"mark"` (`ss1`), `"release"` or `"recipient"`
    /// (the `ss2` components), or `"fingerprint"` (the release's `fp1`
    /// fingerprint key; its committing report is a fingerprint check).
    pub component: String,
    /// Base64 of the disclosed 32-byte key (a fingerprint key for component
    /// `"fingerprint"`).
    pub mark_key: String,
    /// Its commitment (hex), as in the certificate.
    pub mark_key_commitment: String,
    /// For component `"recipient"` of a release with a recipient code
    /// (`tardos1`): the release component key too (base64), from which the
    /// code's groups, signs and biases derive; without it the recipient's
    /// bits cannot be scored. Absent for every other release, whose
    /// recipient key is tested on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_key: Option<String>,
    /// The commitment (hex) of `release_key`, as in the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_key_commitment: Option<String>,
    /// SHA-256 (hex) of the release's certificate file.
    pub certificate_sha256: String,
    /// The report that fixed the suspect.
    pub report: CommittedReport,
    /// Key id of the owner, who signs the statement.
    pub signer: String,
    /// The tool.
    pub tool: Tool,
    /// Time of the reveal, RFC 3339 UTC.
    pub created: String,
}

/// A revealed mark key as read for detection.
pub struct Reveal {
    /// The file it was read from.
    pub path: PathBuf,
    /// SHA-256 (hex) of the file.
    pub digest: String,
    /// The disclosed key.
    pub mark_key: MarkKey,
    /// With a recipient key of a release with a recipient code: the
    /// release component key disclosed beside it.
    pub release_key: Option<MarkKey>,
    /// The signed statement; `None` for a bare mark key file (no report was
    /// committed to, so no suspect is fixed).
    pub statement: Option<Statement<RevealPredicate>>,
}

/// What a revealed key settles about one suspect: recorded in detection
/// reports and printed by `detect`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dispute {
    /// Whether a report signed by the owner fixed this suspect before the
    /// reveal. False for a bare mark key file: its result says the mark is
    /// present, not who put it there.
    pub committed: bool,
    /// SHA-256 (hex) of the reveal file.
    pub reveal_sha256: String,
    /// When the key was revealed (reveal statements only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revealed: Option<String>,
    /// SHA-256 (hex) of the committing report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_sha256: Option<String>,
    /// Creation time the committing report states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_created: Option<String>,
}

/// Which key of a release a reveal discloses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disclosed {
    /// The mark key (`ss1`; `ss2`: the recipient component, else the
    /// release component); the committing report is a detection report.
    Mark,
    /// The `fp1` fingerprint key; the committing report is a fingerprint
    /// check report.
    Fingerprint,
}

/// The component name of a revealed fingerprint key.
pub const FINGERPRINT: &str = "fingerprint";

/// What a reveal statement is built from.
pub struct RevealInputs<'a> {
    /// Which key to disclose.
    pub disclosed: Disclosed,
    /// The release's certificate, its signature checked with the owner's key.
    pub certificate: &'a Certificate,
    /// The owner's signed detection report about the suspect.
    pub report: &'a Path,
    /// Time of the reveal, RFC 3339 UTC.
    pub created: String,
}

/// Builds the reveal statement of the release of `inputs.certificate`,
/// signed by the owner's `secret` key. Refuses a report that the owner did not
/// sign, that tested another certificate, or that is dated after the reveal.
pub fn build_reveal(inputs: &RevealInputs<'_>, secret: &SecretKey) -> Result<Envelope> {
    let owner = secret.public_key();
    let path = inputs.report;
    let bytes = read_statement_file(path)?;
    let cert = inputs.certificate;
    let report = open_committed(&bytes, path, &owner, inputs.disclosed)?;
    check_report(&report, path, &cert.digest, &inputs.created)?;
    let p = cert.predicate();
    let mut release_key = None;
    let (component, key_base64, commitment) = match inputs.disclosed {
        Disclosed::Mark => {
            let target = Target::from_certificate(cert, secret)?;
            let component = match (target.scheme, &target.recipient_key) {
                (crate::scheme::Scheme::Ss1, _) => "mark",
                (_, Some(_)) => "recipient",
                (_, None) => "release",
            };
            // A recipient's code bits are scored through the release's code
            // (groups, signs, biases), which derives from the release key.
            if component == "recipient" && target.recipient_code != RecipientCode::Independent {
                let key = &target.mark_key;
                release_key = Some((key.to_base64().to_string(), hex(&key.commitment())));
            }
            let key = target.recipient_key.unwrap_or(target.mark_key);
            (component, key.to_base64().to_string(), hex(&key.commitment()))
        }
        Disclosed::Fingerprint => {
            let key = cert.fingerprint_key(secret)?;
            (FINGERPRINT, key.to_base64().to_string(), hex(&key.commitment()))
        }
    };
    let (release_key, release_key_commitment) = release_key.unzip();
    let root = report.suspect.clone();
    let statement = Statement {
        statement_type: STATEMENT_TYPE.to_string(),
        subject: vec![Subject {
            name: TENSOR_ROOT_SUBJECT.to_string(),
            digest: digest_set(TENSOR_ROOT_ALGORITHM, root.clone()),
        }],
        predicate_type: REVEAL_PREDICATE_TYPE.to_string(),
        predicate: RevealPredicate {
            scheme: p.scheme.clone(),
            label: p.label.clone(),
            recipient: p.recipient.clone(),
            component: component.to_string(),
            mark_key: key_base64,
            mark_key_commitment: commitment,
            release_key,
            release_key_commitment,
            certificate_sha256: cert.digest.clone(),
            report: CommittedReport {
                sha256: hex(&Sha256::digest(&bytes)),
                suspect_tensor_root: root,
                created: report.created.clone(),
                file: BASE64.encode(&bytes),
            },
            signer: owner.key_id(),
            tool: Tool { name: "weightmark".into(), version: env!("CARGO_PKG_VERSION").into() },
            created: inputs.created.clone(),
        },
    };
    sign_statement(&statement, secret)
}

/// Writes a reveal statement (mode 0600, never overwriting an existing file).
pub fn save_reveal(path: &Path, envelope: &Envelope) -> Result<()> {
    let text = super::envelope::envelope_to_string(envelope)?;
    crate::key::write_private_new(path, text.as_bytes())
}

/// Reads a revealed key: a reveal statement, checked with the `owner`'s
/// public key together with the report inside it, or a bare mark key file.
pub fn load_reveal(path: &Path, owner: &PublicKey) -> Result<Reveal> {
    let bytes = zeroize::Zeroizing::new(read_statement_file(path)?);
    let digest = hex(&Sha256::digest(&bytes));
    if bytes.starts_with(MARK_KEY_HEADER.as_bytes()) {
        let text = std::str::from_utf8(&bytes).map_err(|_| Error::KeyFile {
            path: path.to_path_buf(),
            reason: "is not UTF-8 text".into(),
        })?;
        let mark_key = MarkKey::from_file_str(text, path)?;
        return Ok(Reveal {
            path: path.to_path_buf(),
            digest,
            mark_key,
            release_key: None,
            statement: None,
        });
    }
    let envelope = parse_envelope(&bytes, path).map_err(|e| named(path, e))?;
    let payload = verify_envelope(&envelope, owner).map_err(|e| named(path, e))?;
    let bad = |reason: String| Error::Certificate { path: path.to_path_buf(), reason };
    let statement = parse_reveal_statement(&payload).map_err(bad)?;
    let p = &statement.predicate;
    if p.component == FINGERPRINT {
        return Err(bad("this reveal discloses a fingerprint key, not a mark key".into()));
    }
    let mark_key = MarkKey::from_base64(&p.mark_key)
        .ok_or_else(|| bad("the revealed mark key is not 32 bytes of base64".into()))?;
    if hex(&mark_key.commitment()) != p.mark_key_commitment {
        return Err(bad("the revealed mark key does not match the commitment it states".into()));
    }
    let release_key = match (&p.release_key, &p.release_key_commitment) {
        (None, None) => None,
        (Some(text), Some(commitment)) if p.component == "recipient" => {
            let key = MarkKey::from_base64(text)
                .ok_or_else(|| bad("the revealed release key is not 32 bytes of base64".into()))?;
            if hex(&key.commitment()) != *commitment {
                return Err(bad(
                    "the revealed release key does not match the commitment it states".into(),
                ));
            }
            Some(key)
        }
        (Some(_), Some(_)) => {
            return Err(bad(format!(
                "a release key is revealed beside a {} key; only a recipient key of a coded \
                 release comes with one",
                p.component
            )))
        }
        _ => return Err(bad("the revealed release key comes without its commitment".into())),
    };
    let report_bytes = p.report.bytes().map_err(bad)?;
    check_committed(&statement, &report_bytes, path, owner, Disclosed::Mark)?;
    Ok(Reveal {
        path: path.to_path_buf(),
        digest,
        mark_key,
        release_key,
        statement: Some(statement),
    })
}

/// Checks the committing report inside a reveal statement: its bytes, its
/// owner's signature, the certificate it tested, its date, and the suspect
/// and date the statement cites.
fn check_committed(
    statement: &Statement<RevealPredicate>,
    report_bytes: &[u8],
    path: &Path,
    owner: &PublicKey,
    disclosed: Disclosed,
) -> Result<()> {
    let bad = |reason: String| Error::Certificate { path: path.to_path_buf(), reason };
    let p = &statement.predicate;
    let report = open_committed(report_bytes, path, owner, disclosed)
        .map_err(|e| bad(format!("the committing report inside: {e}")))?;
    check_report(&report, path, &p.certificate_sha256, &p.created)?;
    let subject_root = statement
        .subject
        .iter()
        .find(|s| s.name == TENSOR_ROOT_SUBJECT)
        .and_then(|s| s.digest.get(TENSOR_ROOT_ALGORITHM));
    if report.suspect != p.report.suspect_tensor_root
        || subject_root != Some(&p.report.suspect_tensor_root)
        || report.created != p.report.created
    {
        return Err(bad("the reveal misstates the suspect or date of its report".into()));
    }
    Ok(())
}

/// A revealed fingerprint key as read for a check.
pub struct FingerprintReveal {
    /// The file it was read from.
    pub path: PathBuf,
    /// SHA-256 (hex) of the file.
    pub digest: String,
    /// The disclosed key.
    pub key: crate::fingerprint::FingerprintKey,
    /// The signed statement.
    pub statement: Statement<RevealPredicate>,
}

/// Reads a revealed fingerprint key: a reveal statement of component
/// `"fingerprint"`, checked with the `owner`'s public key together with the
/// check report inside it.
pub fn load_fingerprint_reveal(path: &Path, owner: &PublicKey) -> Result<FingerprintReveal> {
    let bytes = zeroize::Zeroizing::new(read_statement_file(path)?);
    let digest = hex(&Sha256::digest(&bytes));
    let envelope = parse_envelope(&bytes, path).map_err(|e| named(path, e))?;
    let payload = verify_envelope(&envelope, owner).map_err(|e| named(path, e))?;
    let bad = |reason: String| Error::Certificate { path: path.to_path_buf(), reason };
    let statement = parse_reveal_statement(&payload).map_err(bad)?;
    let p = &statement.predicate;
    if p.component != FINGERPRINT {
        return Err(bad(format!(
            "this reveal discloses a {} key, not a fingerprint key",
            p.component
        )));
    }
    let key = crate::fingerprint::FingerprintKey::from_base64(&p.mark_key)
        .ok_or_else(|| bad("the revealed key is not 32 bytes of base64".into()))?;
    if hex(&key.commitment()) != p.mark_key_commitment {
        return Err(bad("the revealed key does not match the commitment it states".into()));
    }
    let report_bytes = p.report.bytes().map_err(bad)?;
    check_committed(&statement, &report_bytes, path, owner, Disclosed::Fingerprint)?;
    Ok(FingerprintReveal { path: path.to_path_buf(), digest, key, statement })
}

impl FingerprintReveal {
    /// What this revealed key settles about the suspect `suspect` (a local
    /// model's tensor root, or an endpoint as
    /// [`crate::fingerprint::SuspectRecord::id`] names it), checked for the
    /// release of `certificate`: only the suspect the committing report
    /// fixed, since a revealed key can plant its fingerprints in any model.
    pub fn dispute_for(&self, suspect: &str, certificate: &Certificate) -> Result<Dispute> {
        certificate.check_fingerprint_key(&self.key)?;
        let p = &self.statement.predicate;
        let bad = |reason: String| Error::Certificate { path: self.path.clone(), reason };
        if p.certificate_sha256 != certificate.digest {
            return Err(bad(format!(
                "revealed for the certificate with SHA-256 {}..., not for {}",
                p.certificate_sha256.get(..16).unwrap_or_default(),
                certificate.path.display()
            )));
        }
        if p.report.suspect_tensor_root != suspect {
            return Err(bad(format!(
                "this key was revealed for the suspect '{}', committed by report {}...; this \
                 suspect ('{}') was not committed to before the reveal, and a revealed key can \
                 plant its fingerprints in any model",
                p.report.suspect_tensor_root,
                p.report.sha256.get(..16).unwrap_or_default(),
                suspect
            )));
        }
        Ok(Dispute {
            committed: true,
            reveal_sha256: self.digest.clone(),
            revealed: Some(p.created.clone()),
            report_sha256: Some(p.report.sha256.clone()),
            report_created: Some(p.report.created.clone()),
        })
    }
}

impl Reveal {
    /// The release of `certificate` as these revealed keys test it, checked
    /// against the certificate's commitments ([`Target::from_revealed`];
    /// with a release key beside a recipient key,
    /// [`Target::from_revealed_coded`]: the recipient is scored by the
    /// release's code). A key of another release or recipient is refused,
    /// naming the certificate, before any detection runs.
    pub fn target(&self, certificate: &Certificate) -> Result<Target> {
        match &self.release_key {
            Some(release) => {
                Target::from_revealed_coded(certificate, release.clone(), self.mark_key.clone())
            }
            None => Target::from_revealed(certificate, self.mark_key.clone()),
        }
    }

    /// What this revealed key settles about the suspect whose tensor root is
    /// `suspect_tensor_root`, tested for the release of `certificate`. A
    /// reveal statement settles only the suspect its report fixed: any other
    /// model is refused (the revealed key could have planted the mark in it),
    /// as is a reveal made for another certificate. A bare mark key file
    /// settles nothing ([`Dispute::committed`] false).
    pub fn dispute_for(
        &self,
        suspect_tensor_root: &str,
        certificate: &Certificate,
    ) -> Result<Dispute> {
        let Some(statement) = &self.statement else {
            return Ok(Dispute {
                committed: false,
                reveal_sha256: self.digest.clone(),
                revealed: None,
                report_sha256: None,
                report_created: None,
            });
        };
        let p = &statement.predicate;
        let bad = |reason: String| Error::Certificate { path: self.path.clone(), reason };
        if p.certificate_sha256 != certificate.digest {
            return Err(bad(format!(
                "revealed for the certificate with SHA-256 {}..., not for {}",
                p.certificate_sha256.get(..16).unwrap_or_default(),
                certificate.path.display()
            )));
        }
        if p.report.suspect_tensor_root != suspect_tensor_root {
            return Err(bad(format!(
                "this key was revealed for the suspect with tensor root {}..., committed by \
                 report {}...; this suspect (tensor root {}...) was not committed to before the \
                 reveal, and a revealed key can plant its mark in any model",
                p.report.suspect_tensor_root.get(..16).unwrap_or_default(),
                p.report.sha256.get(..16).unwrap_or_default(),
                suspect_tensor_root.get(..16).unwrap_or_default()
            )));
        }
        Ok(Dispute {
            committed: true,
            reveal_sha256: self.digest.clone(),
            revealed: Some(p.created.clone()),
            report_sha256: Some(p.report.sha256.clone()),
            report_created: Some(p.report.created.clone()),
        })
    }
}

/// Parses a payload as a reveal statement.
pub fn parse_reveal_statement(payload: &[u8]) -> Result<Statement<RevealPredicate>, String> {
    match predicate_type(payload) {
        Some(t) if t == REVEAL_PREDICATE_TYPE => {}
        Some(t) => return Err(format!("predicateType is '{t}', not a weightmark reveal")),
        None => return Err("payload is not an in-toto statement".into()),
    }
    serde_json::from_slice(payload).map_err(|e| format!("payload is not a weightmark reveal: {e}"))
}

/// A signature problem with the file named.
fn named(path: &Path, e: Error) -> Error {
    match e {
        Error::BadSignature { .. } | Error::WrongKey { .. } => {
            Error::Certificate { path: path.to_path_buf(), reason: e.to_string() }
        }
        other => other,
    }
}

/// What a reveal relies on in its committing report.
struct Committed {
    /// SHA-256 of the certificate the report tested, if any.
    certificate_sha256: Option<String>,
    /// The suspect: a tensor root, or an endpoint
    /// ([`crate::fingerprint::SuspectRecord::id`]).
    suspect: String,
    /// The report's date.
    created: String,
}

impl Committed {
    fn of_detection(s: &Statement<DetectionPredicate>) -> Committed {
        Committed {
            certificate_sha256: s.predicate.certificate.as_ref().map(|c| c.sha256.clone()),
            suspect: s.predicate.suspect_tensor_root.clone(),
            created: s.predicate.created.clone(),
        }
    }
}

/// A report file's facts, its signature checked with the owner's key: a
/// detection report for a mark key, a fingerprint check report for a
/// fingerprint key.
fn open_committed(
    bytes: &[u8],
    path: &Path,
    owner: &PublicKey,
    disclosed: Disclosed,
) -> Result<Committed> {
    let envelope = parse_envelope(bytes, path).map_err(|e| named(path, e))?;
    let payload = verify_envelope(&envelope, owner).map_err(|e| Error::Certificate {
        path: path.to_path_buf(),
        reason: format!("not a report signed by the owner: {e}"),
    })?;
    let bad = |reason: String| Error::Certificate { path: path.to_path_buf(), reason };
    match disclosed {
        Disclosed::Mark => {
            Ok(Committed::of_detection(&parse_detection_statement(&payload).map_err(bad)?))
        }
        Disclosed::Fingerprint => {
            let s = crate::fingerprint::check::parse_check_statement(&payload).map_err(bad)?;
            Ok(Committed {
                certificate_sha256: Some(s.predicate.certificate.sha256.clone()),
                suspect: s.predicate.suspect.id(),
                created: s.predicate.created.clone(),
            })
        }
    }
}

/// The committing report tested the certificate `certificate_sha256` and
/// predates the reveal at `revealed`.
fn check_report(
    report: &Committed,
    path: &Path,
    certificate_sha256: &str,
    revealed: &str,
) -> Result<()> {
    let bad = |reason: String| Error::Certificate { path: path.to_path_buf(), reason };
    match &report.certificate_sha256 {
        Some(c) if c == certificate_sha256 => {}
        Some(c) => {
            return Err(bad(format!(
                "the report tested another release (certificate SHA-256 {}...)",
                c.get(..16).unwrap_or_default()
            )))
        }
        None => return Err(bad("the report names no certificate: it tested no release".into())),
    }
    // Both dates are RFC 3339 UTC with seconds, so they compare as text.
    if report.created.as_str() > revealed {
        return Err(bad(format!(
            "the report is dated {}, after the reveal ({revealed})",
            report.created
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(certificate: Option<&str>, created: &str) -> Committed {
        Committed::of_detection(&statement(certificate, created))
    }

    fn statement(certificate: Option<&str>, created: &str) -> Statement<DetectionPredicate> {
        let certificate = certificate.map(|sha| {
            serde_json::json!({"sha256": sha, "signer": "k", "mark_key_commitment": "c",
                "signature_checked": true})
        });
        let value = serde_json::json!({
            "_type": STATEMENT_TYPE, "subject": [],
            "predicateType": super::super::report::DETECTION_PREDICATE_TYPE,
            "predicate": {
                "scheme": "ss2", "mode": "blind", "label": "l", "recipient": null,
                "certificate": certificate, "suspect_tensor_root": "00",
                "suspect_tensor_digests": {}, "original_tensor_root": null, "z": 9.0, "s": 9.0,
                "v": 1.0, "elements": 1, "p_value": 0.0, "log10_p_value": -17.0,
                "threshold_p": 1e-9, "detected": true, "tensors": [], "skipped": [],
                "builds_on": null, "signer": "k",
                "tool": {"name": "weightmark", "version": "0"}, "created": created
            }
        });
        serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_committing_report_must_test_this_certificate_before_the_reveal() {
        let path = Path::new("r.json");
        let at = "2026-12-02T10:00:00Z";
        let ok = report(Some("aa"), "2026-12-01T10:00:00Z");
        assert!(check_report(&ok, path, "aa", at).is_ok());
        assert!(check_report(&report(Some("aa"), at), path, "aa", at).is_ok());
        let other = check_report(&ok, path, "bb", at).err().map(|e| e.to_string());
        assert!(other.is_some_and(|e| e.contains("another release")));
        let later = check_report(&report(Some("aa"), "2026-12-03T00:00:00Z"), path, "aa", at);
        assert!(later.err().is_some_and(|e| e.to_string().contains("after the reveal")));
        assert!(check_report(&report(None, "2026-12-01T10:00:00Z"), path, "aa", at).is_err());
    }
}
