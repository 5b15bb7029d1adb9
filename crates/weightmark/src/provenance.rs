//! Signed statements: release certificates as in-toto Statements v1 inside
//! DSSE envelopes signed with ed25519.
//!
//! The envelope is `{"payloadType", "payload" (base64), "signatures": [{"keyid",
//! "sig" (base64)}]}`; the signature covers DSSE's pre-authentication encoding
//! `"DSSEv1" SP len(type) SP type SP len(body) SP body`. The payload is the
//! Statement JSON: subjects are the output files with their SHA-256, plus the
//! layout-independent tensor root; the predicate ([`ReleasePredicate`]) holds
//! what detection needs. `docs/formats.md` specifies every byte.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::digest::hex;
use crate::error::{Error, Result};
use crate::key::{PublicKey, SecretKey};

/// DSSE payload type of in-toto statements.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// in-toto Statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// Predicate type of a weightmark release certificate.
pub const RELEASE_PREDICATE_TYPE: &str = "https://weightmark.dev/release/v1";
/// Digest-set key for the tensor root (see [`crate::digest`]).
pub const TENSOR_ROOT_ALGORITHM: &str = "weightmarkTensorRootV1";
/// Subject name used for the tensor root.
pub const TENSOR_ROOT_SUBJECT: &str = "tensors";
/// Largest certificate file accepted.
const MAX_CERT_LEN: u64 = 64 * 1024 * 1024;

/// A DSSE envelope.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Payload type.
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Base64 of the payload bytes.
    pub payload: String,
    /// Signatures.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One DSSE signature.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    /// Signer's key id (see [`PublicKey::key_id`]).
    pub keyid: String,
    /// Base64 of the 64-byte ed25519 signature.
    pub sig: String,
}

/// An in-toto subject.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Subject {
    /// File name, or [`TENSOR_ROOT_SUBJECT`].
    pub name: String,
    /// Algorithm to hex digest.
    pub digest: std::collections::BTreeMap<String, String>,
}

/// An in-toto Statement v1 with a typed predicate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Statement<P> {
    /// Always [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub statement_type: String,
    /// What the statement is about.
    pub subject: Vec<Subject>,
    /// The predicate's type URI.
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The predicate.
    pub predicate: P,
}

/// One marked tensor as recorded in a certificate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertifiedTensor {
    /// Canonical tensor name.
    pub name: String,
    /// Dtype name.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
}

/// The tool that made a statement.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tool {
    /// "weightmark".
    pub name: String,
    /// Its version.
    pub version: String,
}

/// The predicate of a release certificate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReleasePredicate {
    /// Mark scheme ("ss1").
    pub scheme: String,
    /// Strength: mark RMS relative to row RMS.
    pub strength: f64,
    /// Release label.
    pub label: String,
    /// Recipient (licensee), if any.
    pub recipient: Option<String>,
    /// Hex SHA-256 commitment to the release mark key.
    pub mark_key_commitment: String,
    /// The marked tensors.
    pub tensors: Vec<CertifiedTensor>,
    /// Elements counted by the blind statistic at release: finite elements
    /// of marked rows whose RMS is not zero.
    pub marked_elements: u64,
    /// Tensor root of the unmarked original (hex).
    pub original_tensor_root: String,
    /// Blind z measured on the output right after marking.
    pub blind_z_at_release: f64,
    /// Key id of the signer.
    pub signer: String,
    /// The tool.
    pub tool: Tool,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
}

/// A parsed, signature-checked certificate.
#[derive(Clone, Debug)]
pub struct Certificate {
    /// The statement.
    pub statement: Statement<ReleasePredicate>,
    /// The envelope as read.
    pub envelope: Envelope,
    /// SHA-256 of the certificate file's bytes (hex), for reports to cite.
    pub digest: String,
}

impl Certificate {
    /// The predicate.
    pub fn predicate(&self) -> &ReleasePredicate {
        &self.statement.predicate
    }
}

/// DSSE pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out =
        format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Signs a statement into an envelope.
pub fn sign_statement<P: Serialize>(statement: &Statement<P>, key: &SecretKey) -> Result<Envelope> {
    let payload = serde_json::to_vec(statement)
        .map_err(|e| Error::invalid(format!("cannot serialise statement: {e}")))?;
    let sig = key.sign(&pae(PAYLOAD_TYPE, &payload));
    Ok(Envelope {
        payload_type: PAYLOAD_TYPE.to_string(),
        payload: BASE64.encode(&payload),
        signatures: vec![EnvelopeSignature {
            keyid: key.public_key().key_id(),
            sig: BASE64.encode(sig),
        }],
    })
}

/// Checks an envelope's signature by `public` and returns the payload bytes.
pub fn verify_envelope(envelope: &Envelope, public: &PublicKey) -> Result<Vec<u8>> {
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(Error::BadSignature {
            reason: format!(
                "payloadType is '{}', expected '{PAYLOAD_TYPE}'",
                envelope.payload_type
            ),
        });
    }
    let payload = BASE64
        .decode(&envelope.payload)
        .map_err(|_| Error::BadSignature { reason: "payload is not base64".into() })?;
    let want = public.key_id();
    let sig = envelope.signatures.iter().find(|s| s.keyid == want).ok_or_else(|| {
        let ids: Vec<&str> = envelope.signatures.iter().map(|s| s.keyid.as_str()).collect();
        Error::WrongKey { reason: format!("signed by key {}, not by key {want}", ids.join(", ")) }
    })?;
    let sig_bytes = BASE64
        .decode(&sig.sig)
        .map_err(|_| Error::BadSignature { reason: "signature is not base64".into() })?;
    public.verify(&pae(&envelope.payload_type, &payload), &sig_bytes)?;
    Ok(payload)
}

/// Serialises an envelope as pretty JSON with a trailing newline.
pub fn envelope_to_string(envelope: &Envelope) -> Result<String> {
    serde_json::to_string_pretty(envelope)
        .map(|s| s + "\n")
        .map_err(|e| Error::invalid(format!("cannot serialise envelope: {e}")))
}

/// Reads a certificate file, checks its signature by `public`, and parses it.
pub fn load_certificate(path: &Path, public: &PublicKey) -> Result<Certificate> {
    let cert_err = |reason: String| Error::Certificate { path: path.to_path_buf(), reason };
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > MAX_CERT_LEN {
        return Err(cert_err(format!("{} bytes is too large for a certificate", meta.len())));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let envelope: Envelope = serde_json::from_slice(&bytes)
        .map_err(|e| cert_err(format!("not a DSSE envelope: {e}")))?;
    let payload = verify_envelope(&envelope, public).map_err(|e| cert_err(e.to_string()))?;
    let statement: Statement<ReleasePredicate> = serde_json::from_slice(&payload)
        .map_err(|e| cert_err(format!("payload is not a weightmark release statement: {e}")))?;
    if statement.predicate_type != RELEASE_PREDICATE_TYPE {
        return Err(cert_err(format!(
            "predicateType is '{}', not a weightmark release certificate",
            statement.predicate_type
        )));
    }
    let digest = hex(&Sha256::digest(&bytes));
    Ok(Certificate { statement, envelope, digest })
}

/// Writes `text` to `path` atomically (temporary file beside it, then rename).
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    write_atomic_bytes(path, text.as_bytes())
}

/// Writes `bytes` to `path` atomically (temporary file beside it, then rename).
pub fn write_atomic_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".weightmark-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    crate::model::set_public_mode(tmp.path(), 0o644)?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_known_answer() {
        // The example from the DSSE specification.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn envelope_signs_and_rejects_tampering() {
        let key = SecretKey::from_seed([5u8; 32]);
        let st = Statement {
            statement_type: STATEMENT_TYPE.into(),
            subject: vec![],
            predicate_type: "x".into(),
            predicate: serde_json::json!({"a": 1}),
        };
        let env = sign_statement(&st, &key).unwrap_or_else(|e| panic!("{e}"));
        assert!(verify_envelope(&env, &key.public_key()).is_ok());
        let mut bad = env.clone();
        bad.payload = BASE64.encode(b"{\"a\":2}");
        assert!(verify_envelope(&bad, &key.public_key()).is_err());
        let other = SecretKey::from_seed([6u8; 32]).public_key();
        assert!(matches!(verify_envelope(&env, &other), Err(Error::WrongKey { .. })));
    }
}
