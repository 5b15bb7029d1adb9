//! The certificate of a fingerprinted release (docs/fingerprint.md,
//! "Certificate").
//!
//! Planting writes a new model, so it ends with a new certificate over the
//! planted files. On an unmarked model that certificate is the release's
//! first, with scheme [`NO_MARK`] and no mark fields of substance. On a
//! marked model it keeps every field of the mark's certificate (detection
//! reads them), adds the fingerprint, names the SHA-256 of the certificate it
//! supersedes and covers the planted files; the old certificate file is left
//! as it is.

use crate::digest::{hex, model_file_digests, model_tensor_digests, tensor_root};
use crate::embed::{release_files, sign_release};
use crate::error::{Error, Result};
use crate::key::SecretKey;
use crate::model::Model;
use crate::provenance::certificate::{FingerprintRecord, NO_MARK};
use crate::provenance::{Certificate, Envelope, ReleasePredicate, Tool};

use super::{check_count, FingerprintKey, SCHEME};

/// What a fingerprinted release's certificate is built from.
pub struct FingerprintRelease<'a> {
    /// The certificate of the marked model the fingerprint was planted in,
    /// its signature checked with the owner's key; `None` for an unmarked
    /// model.
    pub base: Option<&'a Certificate>,
    /// Release label (taken from `base` when there is one).
    pub label: String,
    /// Recipient (taken from `base` when there is one).
    pub recipient: Option<String>,
    /// Tensor root of the original the fingerprint key is bound to (see
    /// [`release_root`]).
    pub original_root: [u8; 32],
    /// Pairs planted, K.
    pub count: usize,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
}

/// The tensor root a release's fingerprint key is bound to: the unmarked
/// original's, which is `base`'s `original_tensor_root` for a marked model
/// and the model's own root otherwise.
pub fn release_root(model: &Model, base: Option<&Certificate>) -> Result<[u8; 32]> {
    match base {
        Some(c) => c
            .predicate()
            .original_root()
            .map_err(|e| Error::Certificate { path: c.path.clone(), reason: e.to_string() }),
        None => Ok(tensor_root(&model_tensor_digests(model))),
    }
}

/// Checks that `model` is the release `base` certifies (every tensor as the
/// certificate records it), so that a fingerprint is not planted in another
/// model under that release's certificate.
pub fn check_base(model: &Model, base: &Certificate) -> Result<()> {
    let recorded = &base.predicate().tensor_digests;
    let actual = model_tensor_digests(model);
    let differs = actual.iter().find(|(n, d)| recorded.get(n) != Some(&hex(d)));
    let missing = recorded.keys().find(|n| !actual.iter().any(|(a, _)| a == *n));
    let reason = match (differs, missing) {
        (Some((n, _)), _) => format!("tensor '{}' differs from the release", n.escape_debug()),
        (None, Some(n)) => format!("tensor '{}' of the release is missing", n.escape_debug()),
        (None, None) => return Ok(()),
    };
    Err(Error::Certificate {
        path: base.path.clone(),
        reason: format!(
            "{} is not the release of this certificate: {reason}",
            model.path.display()
        ),
    })
}

/// Signs the certificate of the fingerprinted model `saved` (as written) with
/// the owner's `key`. Refuses a `base` certificate signed by another key or
/// already carrying a fingerprint, and a count out of range.
pub fn certify_fingerprint(
    saved: &Model,
    release: &FingerprintRelease<'_>,
    key: &SecretKey,
) -> Result<Envelope> {
    check_count(release.count)?;
    let signer = key.public_key().key_id();
    let fp_key: FingerprintKey =
        key.fingerprint_key(&release.label, release.recipient.as_deref(), &release.original_root);
    let digests = model_tensor_digests(saved);
    let mut predicate = match release.base {
        Some(base) => {
            let bad = |reason: String| Error::Certificate { path: base.path.clone(), reason };
            let p = base.predicate();
            if p.signer != signer {
                return Err(bad(format!(
                    "signed by key {}, not by this key {signer}: only the owner can extend it",
                    p.signer
                )));
            }
            if p.fingerprint.is_some() {
                return Err(bad("this release already carries a fingerprint".into()));
            }
            if p.label != release.label || p.recipient != release.recipient {
                return Err(bad("the release's label or recipient differs".into()));
            }
            let mut p = p.clone();
            p.supersedes = Some(base.digest.clone());
            p
        }
        None => ReleasePredicate {
            scheme: NO_MARK.to_string(),
            strength: 0.0,
            label: release.label.clone(),
            recipient: release.recipient.clone(),
            mark_key_commitment: String::new(),
            recipient_key_commitment: None,
            release_strength: None,
            recipient_strength: None,
            canonical: None,
            residual_sketch: None,
            neuron_sketch: None,
            head_sketch: None,
            allocation: None,
            recipient_code: None,
            tensors: Vec::new(),
            marked_elements: 0,
            tensor_digests: Default::default(),
            files: None,
            original_tensor_root: hex(&release.original_root),
            blind_z_at_release: 0.0,
            signer: signer.clone(),
            tool: Tool { name: String::new(), version: String::new() },
            created: String::new(),
            fingerprint: None,
            supersedes: None,
        },
    };
    predicate.fingerprint = Some(FingerprintRecord {
        scheme: SCHEME.to_string(),
        count: release.count,
        key_commitment: hex(&fp_key.commitment()),
    });
    predicate.tensor_digests = digests.iter().map(|(n, d)| (n.clone(), hex(d))).collect();
    predicate.files = Some(release_files(&crate::provenance::verify::release_inventory(saved)?));
    predicate.signer = signer;
    predicate.tool = Tool { name: "weightmark".into(), version: env!("CARGO_PKG_VERSION").into() };
    predicate.created = release.created.clone();
    if saved.files.is_empty() {
        return Err(Error::Certificate {
            path: saved.path.clone(),
            reason: "only a saved model (safetensors files) can be certified".into(),
        });
    }
    sign_release(predicate, &model_file_digests(saved), &digests, key)
}
