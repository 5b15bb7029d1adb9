//! The release certificate: what `embed` signs about a marked model.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::envelope::{open_statement, Envelope, Statement, Tool};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::canonical::{NeuronSketch, ResidualSketch};
use crate::digest::hex;
use crate::error::{Error, Result};
use crate::fingerprint::FingerprintKey;
use crate::heads::HeadSketch;
use crate::key::{MarkKey, PublicKey};
use crate::scheme::Scheme;

/// Predicate type of a weightmark release certificate.
pub const RELEASE_PREDICATE_TYPE: &str = "https://weightmark.dev/release/v1";

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

/// A [`ResidualSketch`] as a certificate records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SketchRecord {
    /// The tensor the bits come from.
    pub tensor: String,
    /// The sampled rows, ascending.
    pub rows: Vec<usize>,
    /// The bits: little-endian 64-bit words, channel-major in canonical
    /// order, standard base64.
    pub bits: String,
}

impl SketchRecord {
    /// The record of `sketch`.
    pub fn of(sketch: &ResidualSketch) -> SketchRecord {
        SketchRecord {
            tensor: sketch.tensor.clone(),
            rows: sketch.rows.clone(),
            bits: BASE64.encode(words_to_bytes(&sketch.bits)),
        }
    }

    /// The sketch, checked (a whole number of words, rows ascending, a
    /// whole number of channels).
    pub fn to_sketch(&self) -> Result<ResidualSketch> {
        let bad = |reason: String| Error::invalid(format!("residual_sketch: {reason}"));
        let bits = bytes_to_words(&self.bits).map_err(bad)?;
        let sketch = ResidualSketch { tensor: self.tensor.clone(), rows: self.rows.clone(), bits };
        sketch.validate().map_err(bad)?;
        Ok(sketch)
    }
}

/// A [`NeuronSketch`] as a certificate records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NeuronSketchRecord {
    /// The sampled residual channels, as canonical positions.
    pub columns: Vec<usize>,
    /// Neurons per layer.
    pub neurons: usize,
    /// One little-endian 64-bit word per neuron, layer by layer, standard base64.
    pub bits: String,
}

impl NeuronSketchRecord {
    /// The record of `sketch`.
    pub fn of(sketch: &NeuronSketch) -> NeuronSketchRecord {
        NeuronSketchRecord {
            columns: sketch.columns.clone(),
            neurons: sketch.neurons,
            bits: BASE64.encode(words_to_bytes(&sketch.bits)),
        }
    }

    /// The sketch, checked.
    pub fn to_sketch(&self) -> Result<NeuronSketch> {
        let bad = |reason: String| Error::invalid(format!("neuron_sketch: {reason}"));
        let bits = bytes_to_words(&self.bits).map_err(bad)?;
        let sketch = NeuronSketch { columns: self.columns.clone(), neurons: self.neurons, bits };
        sketch.validate().map_err(bad)?;
        Ok(sketch)
    }
}

/// A [`HeadSketch`] as a certificate records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeadSketchRecord {
    /// The sampled output channels (rows of `o_proj`), as canonical positions.
    pub outputs: Vec<usize>,
    /// The sampled input channels (columns of `v_proj`), as canonical positions.
    pub inputs: Vec<usize>,
    /// Query heads per layer.
    pub heads: usize,
    /// Key/value heads per layer.
    pub kv_heads: usize,
    /// Four little-endian 64-bit words per query head, layer by layer,
    /// standard base64.
    pub bits: String,
}

impl HeadSketchRecord {
    /// The record of `sketch`.
    pub fn of(sketch: &HeadSketch) -> HeadSketchRecord {
        HeadSketchRecord {
            outputs: sketch.outputs.clone(),
            inputs: sketch.inputs.clone(),
            heads: sketch.heads,
            kv_heads: sketch.kv_heads,
            bits: BASE64.encode(words_to_bytes(&sketch.bits)),
        }
    }

    /// The sketch, checked.
    pub fn to_sketch(&self) -> Result<HeadSketch> {
        let bad = |reason: String| Error::invalid(format!("head_sketch: {reason}"));
        let bits = bytes_to_words(&self.bits).map_err(bad)?;
        let sketch = HeadSketch {
            outputs: self.outputs.clone(),
            inputs: self.inputs.clone(),
            heads: self.heads,
            kv_heads: self.kv_heads,
            bits,
        };
        sketch.validate().map_err(bad)?;
        Ok(sketch)
    }
}

fn words_to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Little-endian 64-bit words from standard base64.
fn bytes_to_words(text: &str) -> std::result::Result<Vec<u64>, String> {
    let bytes = BASE64.decode(text).map_err(|_| "bits are not base64".to_string())?;
    if bytes.len() % 8 != 0 {
        return Err(format!("{} bytes of bits, not whole 64-bit words", bytes.len()));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect())
}

/// One file of a release as recorded in a certificate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleaseFile {
    /// Path relative to the release (`/`-separated); for a single-file
    /// release, the file's name.
    pub name: String,
    /// SHA-256 of its bytes (hex).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// The predicate of a release certificate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReleasePredicate {
    /// Mark scheme ("ss1"); see [`ReleasePredicate::scheme`].
    pub scheme: String,
    /// Strength: mark RMS relative to row RMS.
    pub strength: f64,
    /// Release label.
    pub label: String,
    /// Recipient (licensee), if any.
    pub recipient: Option<String>,
    /// Hex SHA-256 commitment to the release mark key (`ss2`: the release
    /// component key).
    pub mark_key_commitment: String,
    /// `ss2` with a recipient: commitment to the recipient component key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_key_commitment: Option<String>,
    /// `ss2`: relative strength of the release component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_strength: Option<f64>,
    /// `ss2`: relative strength of the recipient component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_strength: Option<f64>,
    /// `ss2`: how canonical coordinates were taken (`"llama-residual"`: the
    /// residual order of the embedding; `"stored"`: as stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical: Option<String>,
    /// `ss2` with a Llama layout: the public sketch of the original's
    /// residual channels that detection matches the suspect's against
    /// (docs/formats.md). Absent from certificates written before it existed;
    /// detection then orders the suspect's channels by magnitude alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual_sketch: Option<SketchRecord>,
    /// `ss2` with a Llama layout: the public sketch of the original's MLP
    /// neurons that blind detection matches the suspect's against
    /// (docs/formats.md). Absent: neurons are tested in stored order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neuron_sketch: Option<NeuronSketchRecord>,
    /// `ss2` with a Llama layout and a `config.json`: the public sketch of
    /// the original's attention heads that blind detection matches the
    /// suspect's against (docs/formats.md). Absent: heads are tested in
    /// stored order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_sketch: Option<HeadSketchRecord>,
    /// `ss2`: how the strength was spread over the elements
    /// (`"ss2-alloc1"`, docs/ss2.md §8); absent for uniform, as in every
    /// certificate written before allocations existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<String>,
    /// `ss2` with a recipient: the collusion-secure code of the recipient
    /// component (`{"code": "tardos1", "groups": G, "cutoff": t}`,
    /// docs/provenance.md); absent for an independent pattern per
    /// recipient, as in every certificate written before codes existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_code: Option<crate::tardos::RecipientCodeRecord>,
    /// The marked tensors.
    pub tensors: Vec<CertifiedTensor>,
    /// Elements counted by the blind statistic at release: finite elements
    /// of marked rows whose RMS is not zero.
    pub marked_elements: u64,
    /// Tensor digest (hex) of every tensor of the output, by name.
    #[serde(default)]
    pub tensor_digests: BTreeMap<String, String>,
    /// Every file of the release (weight files, index, side files such as
    /// config and tokenizer), sorted by name. `None` in certificates made
    /// before side files were covered, and in an in-memory release record
    /// until [`crate::certify`] fills it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<ReleaseFile>>,
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
    /// The backdoor fingerprint planted in this release, if any (a
    /// commitment to its key, never the triggers). Absent from certificates
    /// of releases without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<FingerprintRecord>,
    /// SHA-256 (hex) of the certificate this one supersedes: the earlier
    /// certificate of the same release, before a fingerprint was planted in
    /// it. Absent from a release's first certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<String>,
}

/// The `scheme` of a release that carries no weight mark, only a
/// fingerprint.
pub const NO_MARK: &str = "none";

/// A release's backdoor fingerprint as its certificate records it
/// (docs/fingerprint.md).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FingerprintRecord {
    /// Fingerprint scheme ("fp1").
    pub scheme: String,
    /// Number of pairs planted, K.
    pub count: usize,
    /// Hex SHA-256 commitment to the release's fingerprint key.
    pub key_commitment: String,
}

impl ReleasePredicate {
    /// Whether the release carries a weight mark (a fingerprint-only
    /// release has scheme [`NO_MARK`]).
    pub fn has_mark(&self) -> bool {
        self.scheme != NO_MARK
    }

    /// The scheme, or [`Error::UnknownScheme`] for one this version does not know.
    pub fn scheme(&self) -> Result<Scheme> {
        if !self.has_mark() {
            return Err(Error::invalid(
                "this release carries no weight mark, only a backdoor fingerprint (fp1)",
            ));
        }
        Scheme::from_name(&self.scheme)
            .ok_or_else(|| Error::UnknownScheme { scheme: self.scheme.clone() })
    }

    /// The original's tensor root, to which `ss2` keys are bound.
    pub fn original_root(&self) -> Result<[u8; 32]> {
        crate::digest::from_hex(&self.original_tensor_root)
            .ok_or_else(|| Error::invalid("original_tensor_root is not 64 hex digits".to_string()))
    }

    /// The residual sketch, checked; `None` when the certificate has none.
    pub fn residual_sketch(&self) -> Result<Option<ResidualSketch>> {
        self.residual_sketch.as_ref().map(SketchRecord::to_sketch).transpose()
    }

    /// The neuron sketch, checked; `None` when the certificate has none.
    pub fn neuron_sketch(&self) -> Result<Option<NeuronSketch>> {
        self.neuron_sketch.as_ref().map(NeuronSketchRecord::to_sketch).transpose()
    }

    /// The head sketch, checked; `None` when the certificate has none.
    pub fn head_sketch(&self) -> Result<Option<HeadSketch>> {
        self.head_sketch.as_ref().map(HeadSketchRecord::to_sketch).transpose()
    }

    /// The allocation, checked ([`crate::allocation::Allocation::Uniform`]
    /// when the field is absent).
    pub fn allocation(&self) -> Result<crate::allocation::Allocation> {
        crate::allocation::Allocation::from_certificate_field(self.allocation.as_deref())
    }

    /// The recipient code, checked ([`crate::tardos::RecipientCode::Independent`]
    /// when the field is absent).
    pub fn recipient_code(&self) -> Result<crate::tardos::RecipientCode> {
        crate::tardos::RecipientCode::from_record(self.recipient_code.as_ref())
    }

    /// The weight of the recipient component against the release component
    /// in the decision on both ([`crate::ss2::Strengths::recipient_weight`]):
    /// 1 when the certificate has no recipient strength or the two strengths
    /// are equal (every certificate at the default share). A strength that
    /// is not a positive finite number is refused.
    pub fn recipient_weight(&self) -> Result<f64> {
        match (self.release_strength, self.recipient_strength) {
            (Some(release), Some(recipient)) => {
                let ok = |x: f64| x.is_finite() && x > 0.0;
                if !ok(release) || !ok(recipient) {
                    return Err(Error::invalid(format!(
                        "component strengths {release} and {recipient} are not positive numbers"
                    )));
                }
                Ok(crate::ss2::Strengths { release, recipient }.recipient_weight())
            }
            _ => Ok(1.0),
        }
    }

    /// The certified tensors as (name, shape), what detection tests.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect()
    }
}

/// A parsed certificate.
#[derive(Clone, Debug)]
pub struct Certificate {
    /// The file it was read from.
    pub path: std::path::PathBuf,
    /// The statement.
    pub statement: Statement<ReleasePredicate>,
    /// The envelope as read.
    pub envelope: Envelope,
    /// SHA-256 of the certificate file's bytes (hex), for reports to cite.
    pub digest: String,
    /// Whether the signature was checked against the owner's public key.
    pub signature_checked: bool,
    /// Key id that verified the signature, when it was checked.
    pub verified_signer: Option<String>,
}

impl Certificate {
    /// The predicate.
    pub fn predicate(&self) -> &ReleasePredicate {
        &self.statement.predicate
    }

    /// Drops the bulk that testing has no further use for once a
    /// [`crate::Target`] was derived from this certificate: the predicate's
    /// sketch records (`residual_sketch`, `neuron_sketch`, `head_sketch`,
    /// which the target holds decoded) and the envelope's payload (the signed
    /// bytes, whose signature was checked on reading; `statement` is what
    /// they said). Path, digest, signature check and every other predicate
    /// field stay, so reports cite the certificate as before. A 7B release's
    /// certificate is 5.4 MB, 98% sketches and payload, and
    /// [`crate::load_candidates`] holds one per licensee.
    pub fn shed_sketches(&mut self) {
        let p = &mut self.statement.predicate;
        (p.residual_sketch, p.neuron_sketch, p.head_sketch) = (None, None, None);
        self.envelope.payload = String::new();
    }

    /// The release mark key of this certificate derived from the owner's
    /// secret key, checked against the certificate's commitment (a key that
    /// did not make the certificate is [`Error::WrongKey`]).
    pub fn mark_key(&self, secret: &crate::key::SecretKey) -> Result<MarkKey> {
        let p = self.predicate();
        let mark_key = secret.mark_key(&p.label, p.recipient.as_deref());
        self.check_mark_key(&mark_key)?;
        Ok(mark_key)
    }

    /// The release's fingerprint key derived from the owner's secret key,
    /// checked against the certificate's commitment. A certificate without a
    /// fingerprint, or a key that did not make it, is [`Error::WrongKey`].
    pub fn fingerprint_key(&self, secret: &crate::key::SecretKey) -> Result<FingerprintKey> {
        let p = self.predicate();
        let root = p.original_root().map_err(|e| self.named(e))?;
        let key = secret.fingerprint_key(&p.label, p.recipient.as_deref(), &root);
        self.check_fingerprint_key(&key)?;
        Ok(key)
    }

    /// The certificate's fingerprint record, or an error naming the file
    /// when the release has none.
    pub fn fingerprint(&self) -> Result<&FingerprintRecord> {
        let f = self.predicate().fingerprint.as_ref().ok_or_else(|| {
            self.named(Error::invalid("this release has no backdoor fingerprint"))
        })?;
        if f.scheme != crate::fingerprint::SCHEME {
            return Err(self.named(Error::invalid(format!(
                "fingerprint scheme '{}'; this version knows '{}'",
                f.scheme.escape_debug(),
                crate::fingerprint::SCHEME
            ))));
        }
        if f.count == 0 || f.count > crate::fingerprint::MAX_COUNT {
            return Err(self.named(Error::invalid(format!(
                "fingerprint count {} is not between 1 and {}",
                f.count,
                crate::fingerprint::MAX_COUNT
            ))));
        }
        Ok(f)
    }

    /// Checks that `key` is the fingerprint key this certificate committed to.
    pub fn check_fingerprint_key(&self, key: &FingerprintKey) -> Result<()> {
        let f = self.fingerprint()?;
        let got = hex(&key.commitment());
        if got != f.key_commitment {
            return Err(Error::WrongKey {
                reason: format!(
                    "this fingerprint key does not belong to the release of this certificate \
                     ({}): its commitment {}... differs from the \
                     certificate's {}...",
                    self.release_name(),
                    &got[..16],
                    f.key_commitment.get(..16).unwrap_or_default()
                ),
            });
        }
        Ok(())
    }

    /// "label 'L', recipient 'R'" (or "recipient none"): the release, as
    /// error messages name it.
    fn release_name(&self) -> String {
        let p = self.predicate();
        let recipient =
            p.recipient.as_deref().map(|r| format!("'{r}'")).unwrap_or_else(|| "none".into());
        format!("label '{}', recipient {recipient}", p.label)
    }

    /// `e` as a problem with this certificate's file.
    fn named(&self, e: Error) -> Error {
        Error::Certificate { path: self.path.clone(), reason: e.to_string() }
    }

    /// Checks that `key` is the recipient component key this (`ss2`)
    /// certificate committed to.
    pub fn check_recipient_key(&self, key: &MarkKey) -> Result<()> {
        let p = self.predicate();
        if p.recipient_key_commitment.as_deref() != Some(hex(&key.commitment()).as_str()) {
            return Err(Error::WrongKey {
                reason: format!(
                    "this key is not the recipient component of the release of this certificate \
                     ({})",
                    self.release_name()
                ),
            });
        }
        Ok(())
    }

    /// Checks that `mark_key` is the one this certificate committed to.
    pub fn check_mark_key(&self, mark_key: &MarkKey) -> Result<()> {
        let got = hex(&mark_key.commitment());
        let p = self.predicate();
        if got != p.mark_key_commitment {
            return Err(Error::WrongKey {
                reason: format!(
                    "this mark key does not belong to the release of this certificate \
                     ({}): its commitment {}... differs from the \
                     certificate's {}...",
                    self.release_name(),
                    &got[..16],
                    &p.mark_key_commitment.get(..16).unwrap_or_default()
                ),
            });
        }
        Ok(())
    }
}

/// Reads a certificate, checks its signature by `public`, and parses it.
pub fn load_certificate(path: &Path, public: &PublicKey) -> Result<Certificate> {
    load(path, Some(public))
}

/// Reads a certificate without checking its signature (for `detect
/// --mark-key` without the owner's public key; the commitment still binds the
/// mark key to it).
pub fn load_certificate_unverified(path: &Path) -> Result<Certificate> {
    load(path, None)
}

fn load(path: &Path, public: Option<&PublicKey>) -> Result<Certificate> {
    let opened = open_statement(path, public)?;
    let statement = parse_release_statement(&opened.payload)
        .map_err(|reason| Error::Certificate { path: path.to_path_buf(), reason })?;
    Ok(Certificate {
        path: path.to_path_buf(),
        statement,
        envelope: opened.envelope,
        digest: opened.sha256,
        signature_checked: public.is_some(),
        verified_signer: public.map(PublicKey::key_id),
    })
}

/// Parses a payload as a release statement.
pub fn parse_release_statement(payload: &[u8]) -> Result<Statement<ReleasePredicate>, String> {
    match super::envelope::predicate_type(payload) {
        Some(t) if t == RELEASE_PREDICATE_TYPE => {}
        Some(t) => {
            return Err(format!("predicateType is '{t}', not a weightmark release certificate"))
        }
        None => return Err("payload is not an in-toto statement".into()),
    }
    let statement: Statement<ReleasePredicate> = serde_json::from_slice(payload)
        .map_err(|e| format!("payload is not a weightmark release statement: {e}"))?;
    let mut seen = std::collections::HashSet::new();
    if let Some(t) = statement.predicate.tensors.iter().find(|t| !seen.insert(t.name.as_str())) {
        return Err(format!("tensor '{}' is listed twice", t.name.escape_debug()));
    }
    let mut seen = std::collections::HashSet::new();
    let files = statement.predicate.files.iter().flatten();
    if let Some(f) = files.clone().find(|f| !seen.insert(f.name.as_str())) {
        return Err(format!("file '{}' is listed twice", f.name.escape_debug()));
    }
    if let Some(f) = files.clone().find(|f| crate::digest::from_hex::<32>(&f.sha256).is_none()) {
        return Err(format!("file '{}': sha256 is not 64 hex digits", f.name.escape_debug()));
    }
    if statement.predicate_type != RELEASE_PREDICATE_TYPE {
        return Err(format!(
            "predicateType is '{}', not a weightmark release certificate",
            statement.predicate_type
        ));
    }
    Ok(statement)
}
