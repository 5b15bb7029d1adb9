//! DSSE envelopes around in-toto statements, signed with ed25519.
//!
//! The envelope is `{"payloadType", "payload" (base64), "signatures": [{"keyid",
//! "sig" (base64)}]}`; the signature covers DSSE's pre-authentication encoding
//! `"DSSEv1" SP len(type) SP type SP len(body) SP body`.
//!
//! Envelopes are written in the standard form (standard base64 with padding,
//! a `keyid` on every signature); reading accepts everything the DSSE
//! specification allows: standard or URL-safe base64, with or without
//! padding, and signatures without a `keyid` (an unauthenticated hint there).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::key::{PublicKey, SecretKey};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD as BASE64};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// DSSE payload type of in-toto statements.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// in-toto Statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// Digest-set key for the tensor root (see [`crate::digest`]).
pub const TENSOR_ROOT_ALGORITHM: &str = "weightmarkTensorRootV1";
/// Subject name used for the tensor root.
pub const TENSOR_ROOT_SUBJECT: &str = "tensors";
/// Largest certificate or report file accepted.
pub const MAX_STATEMENT_LEN: u64 = 64 * 1024 * 1024;

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
    /// Signer's key id (see [`PublicKey::key_id`]); optional in DSSE, so an
    /// envelope without one reads as an empty id.
    #[serde(default)]
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
    pub digest: BTreeMap<String, String>,
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

/// The tool that made a statement.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tool {
    /// "weightmark".
    pub name: String,
    /// Its version.
    pub version: String,
}

/// A digest set with one entry.
pub fn digest_set(algorithm: &str, hex_digest: String) -> BTreeMap<String, String> {
    BTreeMap::from([(algorithm.to_string(), hex_digest)])
}

/// The `predicateType` of a payload, without parsing the rest.
pub fn predicate_type(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "predicateType")]
        predicate_type: String,
    }
    serde_json::from_slice::<Peek>(payload).ok().map(|p| p.predicate_type)
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
    let payload = payload_bytes(envelope)?;
    let want = public.key_id();
    // A signature without a keyid may be by anyone: try it too.
    let matching: Vec<&EnvelopeSignature> =
        envelope.signatures.iter().filter(|s| s.keyid == want || s.keyid.is_empty()).collect();
    if matching.is_empty() {
        let ids: Vec<&str> = envelope.signatures.iter().map(|s| s.keyid.as_str()).collect();
        return Err(Error::WrongKey {
            reason: format!("signed by key {}, not by key {want}", ids.join(", ")),
        });
    }
    let message = pae(&envelope.payload_type, &payload);
    let mut last = None;
    for sig in matching {
        match decode_base64(&sig.sig) {
            None => last = Some(Error::BadSignature { reason: "signature is not base64".into() }),
            Some(bytes) => match public.verify(&message, &bytes) {
                Ok(()) => return Ok(payload),
                Err(e) => last = Some(e),
            },
        }
    }
    Err(last.unwrap_or_else(|| Error::BadSignature { reason: "no signature".into() }))
}

/// Serialises an envelope as pretty JSON with a trailing newline.
pub fn envelope_to_string(envelope: &Envelope) -> Result<String> {
    serde_json::to_string_pretty(envelope)
        .map(|s| s + "\n")
        .map_err(|e| Error::invalid(format!("cannot serialise envelope: {e}")))
}

/// Parses an envelope from a file's bytes. Bytes that are not UTF-8 are
/// replaced (they can only sit inside string values, whose base64 then fails
/// to decode), so a corrupted payload or signature is reported as an invalid
/// signature rather than as an unreadable file.
pub fn parse_envelope(bytes: &[u8], path: &Path) -> Result<Envelope> {
    let text = String::from_utf8_lossy(bytes);
    serde_json::from_str(&text).map_err(|e| {
        // A file with an envelope's fields that no longer parses was an
        // envelope once: a corrupted or tampered statement, not unusable input.
        if text.contains("\"payloadType\"") && text.contains("\"signatures\"") {
            Error::BadSignature { reason: format!("the envelope is corrupted ({e})") }
        } else {
            Error::Certificate {
                path: path.to_path_buf(),
                reason: format!("not a DSSE envelope: {e}"),
            }
        }
    })
}

/// Reads a statement file (certificate or report), at most `MAX_STATEMENT_LEN`
/// bytes; returns its bytes.
pub fn read_statement_file(path: &Path) -> Result<Vec<u8>> {
    crate::io::read_capped(path, MAX_STATEMENT_LEN)
}

/// A statement file read and opened: its bytes' SHA-256 (hex), the envelope,
/// and the payload (signature checked when a public key is given).
pub struct OpenedStatement {
    /// SHA-256 (hex) of the file's bytes.
    pub sha256: String,
    /// The envelope.
    pub envelope: Envelope,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

/// Reads a certificate or report file, parses its envelope and, when `public`
/// is given, checks its signature. Every error names the file.
pub fn open_statement(path: &Path, public: Option<&PublicKey>) -> Result<OpenedStatement> {
    let named = |e: Error| match e {
        Error::BadSignature { .. } | Error::WrongKey { .. } => {
            Error::Certificate { path: path.to_path_buf(), reason: e.to_string() }
        }
        other => other,
    };
    let bytes = read_statement_file(path)?;
    let envelope = parse_envelope(&bytes, path).map_err(named)?;
    let payload = match public {
        Some(public) => verify_envelope(&envelope, public).map_err(named)?,
        None => payload_bytes(&envelope).map_err(named)?,
    };
    let sha256 = crate::digest::hex(&sha2::Sha256::digest(&bytes));
    Ok(OpenedStatement { sha256, envelope, payload })
}

/// Decodes an envelope's payload (base64).
pub fn payload_bytes(envelope: &Envelope) -> Result<Vec<u8>> {
    decode_base64(&envelope.payload)
        .ok_or_else(|| Error::BadSignature { reason: "payload is not base64".into() })
}

/// Decodes base64 as DSSE allows it: the standard or the URL-safe alphabet
/// (not both in one string), with or without padding.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let url_safe = text.contains(['-', '_']);
    let alphabet = if url_safe { &base64::alphabet::URL_SAFE } else { &base64::alphabet::STANDARD };
    GeneralPurpose::new(alphabet, config).decode(text).ok()
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

    #[test]
    fn envelopes_in_every_form_dsse_allows_verify() {
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
        let key = SecretKey::from_seed([5u8; 32]);
        // A payload whose base64 has '+' or '/' and padding in the standard form.
        let st = Statement {
            statement_type: STATEMENT_TYPE.into(),
            subject: vec![],
            predicate_type: "x".into(),
            predicate: serde_json::json!({"a": "\u{fb}\u{ff}?>~"}),
        };
        let env = sign_statement(&st, &key).unwrap_or_else(|e| panic!("{e}"));
        let payload = BASE64.decode(&env.payload).unwrap_or_else(|e| panic!("{e}"));
        let sig = BASE64.decode(&env.signatures[0].sig).unwrap_or_else(|e| panic!("{e}"));
        assert!(env.payload.contains(['+', '/']) || env.signatures[0].sig.contains(['+', '/']));
        let engines: [&GeneralPurpose; 3] = [&STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD];
        for engine in engines {
            let mut other = env.clone();
            other.payload = engine.encode(&payload);
            other.signatures[0].sig = engine.encode(&sig);
            let got = verify_envelope(&other, &key.public_key());
            assert_eq!(got.ok().as_deref(), Some(payload.as_slice()), "{other:?}");
        }
        // No keyid at all: the signature is still checked, and the envelope
        // written back out has the standard form.
        let mut json: serde_json::Value =
            serde_json::to_value(&env).unwrap_or_else(|e| panic!("{e}"));
        if let Some(s) = json["signatures"][0].as_object_mut() {
            s.remove("keyid");
        }
        let text = json.to_string();
        let parsed = parse_envelope(text.as_bytes(), Path::new("c.json"));
        let parsed = parsed.unwrap_or_else(|e| panic!("{e}"));
        assert!(verify_envelope(&parsed, &key.public_key()).is_ok());
        let other = SecretKey::from_seed([6u8; 32]).public_key();
        assert!(verify_envelope(&parsed, &other).is_err());
        // Mixed alphabets are not base64 of either kind.
        let mut mixed = env.clone();
        mixed.payload = format!("{}-_+/", env.payload.trim_end_matches('='));
        assert!(verify_envelope(&mixed, &key.public_key()).is_err());
    }
}
