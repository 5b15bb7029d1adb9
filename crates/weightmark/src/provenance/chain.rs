//! Certificate chains: a release certificate that supersedes an earlier one
//! of the same release (a fingerprint planted in a marked release, or a
//! fingerprinted release marked since) names that certificate's SHA-256.
//! [`check_chain`] follows those links through the earlier certificates and
//! checks that each step kept what the earlier certificate promised.

use std::path::PathBuf;

use super::certificate::{Certificate, ReleasePredicate};
use crate::error::{Error, Result};

/// One certificate of a chain, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLink {
    /// The file it was read from.
    pub path: PathBuf,
    /// SHA-256 of the file (hex).
    pub sha256: String,
    /// Whether it certifies a weight mark (and its scheme).
    pub mark: Option<String>,
    /// Whether it certifies a backdoor fingerprint.
    pub fingerprint: bool,
}

impl ChainLink {
    fn of(c: &Certificate) -> ChainLink {
        let p = c.predicate();
        ChainLink {
            path: c.path.clone(),
            sha256: c.digest.clone(),
            mark: p.has_mark().then(|| p.scheme.clone()),
            fingerprint: p.fingerprint.is_some(),
        }
    }
}

/// Follows `certificate`'s `supersedes` links through `earlier` (any order,
/// each loaded and signature-checked by the caller) back to the release's
/// first certificate, and returns the chain, `certificate` first. Each
/// superseded certificate must be among `earlier` (found by its SHA-256) and
/// must describe the same release as its successor: the same signer, label,
/// recipient and original tensor root; its weight mark, if any, carried
/// over unchanged (every mark field: scheme, strengths, key commitments,
/// sketches, allocation, tensors, blind z at release); its fingerprint, if
/// any, carried over unchanged. A certificate of `earlier` the chain never
/// reaches, or a loop, is refused too. Errors name the certificate at fault.
pub fn check_chain(certificate: &Certificate, earlier: &[Certificate]) -> Result<Vec<ChainLink>> {
    let mut chain = vec![ChainLink::of(certificate)];
    let mut used = vec![false; earlier.len()];
    let mut current = certificate;
    while let Some(digest) = &current.predicate().supersedes {
        let bad = |reason: String| Error::Certificate { path: current.path.clone(), reason };
        let Some(i) = earlier.iter().position(|c| &c.digest == digest) else {
            return Err(bad(format!(
                "supersedes the certificate with SHA-256 {digest}, which is not among the \
                 earlier certificates given"
            )));
        };
        if used[i] || earlier[i].digest == certificate.digest {
            return Err(bad(format!(
                "the chain loops back to the certificate with SHA-256 {digest}"
            )));
        }
        used[i] = true;
        let old = &earlier[i];
        if let Some(reason) = broken_link(old.predicate(), current.predicate()) {
            return Err(bad(format!("does not carry over {}: {reason}", old.path.display())));
        }
        chain.push(ChainLink::of(old));
        current = old;
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(Error::Certificate {
            path: earlier[i].path.clone(),
            reason: format!(
                "not in the chain of {} (no certificate of it supersedes this one)",
                certificate.path.display()
            ),
        });
    }
    Ok(chain)
}

/// Why `new` does not carry over the release `old` certifies, or `None`.
fn broken_link(old: &ReleasePredicate, new: &ReleasePredicate) -> Option<String> {
    if old.signer != new.signer {
        return Some(format!("signed by key {}, the successor by {}", old.signer, new.signer));
    }
    if old.label != new.label || old.recipient != new.recipient {
        return Some("another label or recipient".into());
    }
    if old.original_tensor_root != new.original_tensor_root {
        return Some("another original tensor root".into());
    }
    if old.has_mark() && mark_fields(old) != mark_fields(new) {
        return Some(format!("its weight mark ({}) differs or is missing", old.scheme));
    }
    if old.fingerprint.is_some() && old.fingerprint != new.fingerprint {
        return Some("its backdoor fingerprint differs or is missing".into());
    }
    None
}

/// The fields that describe a weight mark: the predicate without what a
/// successor describes afresh (its files, digests, time, tool, fingerprint
/// and link).
fn mark_fields(p: &ReleasePredicate) -> ReleasePredicate {
    let mut m = p.clone();
    m.tensor_digests = Default::default();
    m.files = None;
    m.tool = super::Tool { name: String::new(), version: String::new() };
    m.created = String::new();
    m.fingerprint = None;
    m.supersedes = None;
    m
}
