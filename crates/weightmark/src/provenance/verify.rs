//! Checking a certificate, a detection report or a reveal statement: its signature, and
//! optionally that a model on disk is the one it is about.
//!
//! Signature problems are errors of kind [`Error::BadSignature`] or
//! [`Error::WrongKey`] (the CLI's exit 1); a file that is not an envelope at
//! all is [`Error::Certificate`] (exit 2). A model that differs is not an
//! error: [`ModelCheck`] lists which files and which tensors differ.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::certificate::{
    parse_release_statement, ReleaseFile, ReleasePredicate, RELEASE_PREDICATE_TYPE,
};
use super::envelope::payload_bytes;
use super::envelope::{
    parse_envelope, predicate_type, read_statement_file, verify_envelope, Statement,
    TENSOR_ROOT_SUBJECT,
};
use super::identification::{
    parse_identification_statement, IdentificationPredicate, IDENTIFICATION_PREDICATE_TYPE,
};
use super::report::{parse_detection_statement, DetectionPredicate, DETECTION_PREDICATE_TYPE};
use super::reveal::{
    load_fingerprint_reveal, load_reveal, parse_reveal_statement, RevealPredicate, FINGERPRINT,
    REVEAL_PREDICATE_TYPE,
};
use crate::digest::{hex, model_file_digests, model_tensor_digests, tensor_root};
use crate::error::{Error, Result};
use crate::fingerprint::check::{
    parse_check_statement, FingerprintCheckPredicate, CHECK_PREDICATE_TYPE,
};
use crate::key::PublicKey;
use crate::model::side::{copy_checked, walk, Content, Purpose, HIDDEN};
use crate::model::{Model, OutputFile, SkippedFile};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

/// What kind of statement was verified.
#[derive(Clone, Debug)]
pub enum VerifiedKind {
    /// A release certificate.
    Certificate(Box<Statement<ReleasePredicate>>),
    /// A detection report.
    Report(Box<Statement<DetectionPredicate>>),
    /// A reveal statement (a mark key disclosed for a dispute), checked
    /// together with the committing report inside it.
    Reveal(Box<Statement<RevealPredicate>>),
    /// A fingerprint check report (`fingerprint check --report`).
    FingerprintCheck(Box<Statement<FingerprintCheckPredicate>>),
    /// An identification report (every licensee's certificate tested),
    /// whose bounds and decisions were recomputed and agree.
    Identification(Box<Statement<IdentificationPredicate>>),
}

/// A statement whose signature verified.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The statement.
    pub kind: VerifiedKind,
    /// Key id of the signer.
    pub signer: String,
    /// SHA-256 (hex) of the file.
    pub digest: String,
    /// The model comparison, when a model was given.
    pub model: Option<ModelCheck>,
}

/// How a model compares with the digests a statement records.
///
/// Weight files (safetensors files, index) are matched by SHA-256 and may
/// differ when every tensor is identical (a re-saved or re-sharded copy).
/// Side files (config, tokenizer, chat template, code) are matched by name
/// and SHA-256 against a certificate's file list, when the certificate has
/// one and the model is a directory; any side file added, removed or
/// changed is a mismatch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelCheck {
    /// Recorded files (name) with no file of the same SHA-256 in the model.
    pub files_not_found: Vec<String>,
    /// Model files (name) whose SHA-256 the statement does not record.
    pub files_unrecorded: Vec<String>,
    /// Tensors present in both whose digests differ.
    pub tensors_changed: Vec<String>,
    /// Recorded tensors absent from the model.
    pub tensors_missing: Vec<String>,
    /// Model tensors the statement does not record.
    pub tensors_extra: Vec<String>,
    /// Whether the model's tensor root equals the recorded one.
    pub tensor_root_matches: bool,
    /// Whether side files were compared: false for a report, for a
    /// certificate made before side files were recorded, and for a model
    /// given as a single file.
    pub side_files_compared: bool,
    /// Side files of the model the certificate does not list.
    pub side_files_added: Vec<String>,
    /// Side files the certificate lists that the model lacks.
    pub side_files_removed: Vec<String>,
    /// Side files in both whose SHA-256 differs.
    pub side_files_changed: Vec<String>,
    /// Entries of the model directory that cannot be part of a release (a
    /// link out of the directory, a FIFO, ...), as `name (reason)`: each is
    /// a mismatch.
    pub side_files_refused: Vec<String>,
    /// Whether the statement lists the release's files (certificates made
    /// since side files were recorded).
    pub certificate_lists_files: bool,
    /// Hidden entries of the model directory (`.git/`, `.cache/`), which a
    /// release never holds: not compared.
    pub not_compared: Vec<String>,
}

impl ModelCheck {
    /// Every file is byte-identical to a recorded one, and vice versa.
    pub fn files_match(&self) -> bool {
        self.files_not_found.is_empty() && self.files_unrecorded.is_empty()
    }

    /// No side file was added, removed, changed or refused (true when side
    /// files were not compared).
    pub fn side_files_match(&self) -> bool {
        self.side_files_added.is_empty()
            && self.side_files_removed.is_empty()
            && self.side_files_changed.is_empty()
            && self.side_files_refused.is_empty()
    }

    /// Every tensor (name, dtype, shape, data) is as recorded.
    pub fn tensors_match(&self) -> bool {
        self.tensor_root_matches
            && self.tensors_changed.is_empty()
            && self.tensors_missing.is_empty()
            && self.tensors_extra.is_empty()
    }
}

impl Verified {
    /// Whether the model (when one was compared) matches: every tensor, and
    /// every side file that was compared. What `verify` answers with its
    /// exit code.
    pub fn model_matches(&self) -> bool {
        self.model.as_ref().is_none_or(|c| c.tensors_match() && c.side_files_match())
    }

    /// The `verify --json` object for the statement read from `file`
    /// (docs/formats.md §9), shared by the CLI and the Python package.
    pub fn to_json(&self, file: &Path) -> serde_json::Value {
        let (kind, predicate) = match &self.kind {
            VerifiedKind::Certificate(s) => ("certificate", serde_json::json!(s.predicate)),
            VerifiedKind::Report(s) => ("report", serde_json::json!(s.predicate)),
            VerifiedKind::Reveal(s) => ("reveal", serde_json::json!(s.predicate)),
            VerifiedKind::FingerprintCheck(s) => {
                ("fingerprint-check", serde_json::json!(s.predicate))
            }
            VerifiedKind::Identification(s) => ("identification", serde_json::json!(s.predicate)),
        };
        serde_json::json!({
            "valid": self.model_matches(),
            "signature_valid": true,
            "file": file.display().to_string(),
            "kind": kind,
            "signer": self.signer,
            "sha256": self.digest,
            "predicate": predicate,
            "model": self.model.as_ref().map(|c| serde_json::json!({
                "files_match": c.files_match(),
                "tensors_match": c.tensors_match(),
                "files_not_found": c.files_not_found,
                "files_unrecorded": c.files_unrecorded,
                "tensors_changed": c.tensors_changed,
                "tensors_missing": c.tensors_missing,
                "tensors_extra": c.tensors_extra,
                "certificate_lists_files": c.certificate_lists_files,
                "side_files_compared": c.side_files_compared,
                "side_files_match": c.side_files_match(),
                "side_files_added": c.side_files_added,
                "side_files_removed": c.side_files_removed,
                "side_files_changed": c.side_files_changed,
                "side_files_refused": c.side_files_refused,
                "not_compared": c.not_compared,
            })),
        })
    }
}

/// Verifies the certificate or report at `path` against `public`, and
/// compares `model` with it when given.
pub fn verify_file(path: &Path, public: &PublicKey, model: Option<&Model>) -> Result<Verified> {
    let bytes = read_statement_file(path)?;
    let envelope = parse_envelope(&bytes, path)?;
    let payload = verify_envelope(&envelope, public)?;
    let not_ours = |reason: String| Error::Certificate { path: path.to_path_buf(), reason };
    let kind = match predicate_type(&payload).as_deref() {
        Some(RELEASE_PREDICATE_TYPE) => VerifiedKind::Certificate(Box::new(
            parse_release_statement(&payload).map_err(not_ours)?,
        )),
        Some(DETECTION_PREDICATE_TYPE) => {
            VerifiedKind::Report(Box::new(parse_detection_statement(&payload).map_err(not_ours)?))
        }
        Some(CHECK_PREDICATE_TYPE) => VerifiedKind::FingerprintCheck(Box::new(
            parse_check_statement(&payload).map_err(not_ours)?,
        )),
        Some(IDENTIFICATION_PREDICATE_TYPE) => VerifiedKind::Identification(Box::new(
            parse_identification_statement(&payload).map_err(not_ours)?,
        )),
        Some(REVEAL_PREDICATE_TYPE) => {
            // Checks the report inside and the key against its commitment.
            let fingerprint = parse_reveal_statement(&payload)
                .is_ok_and(|s| s.predicate.component == FINGERPRINT);
            if fingerprint {
                VerifiedKind::Reveal(Box::new(load_fingerprint_reveal(path, public)?.statement))
            } else {
                match load_reveal(path, public)?.statement {
                    Some(s) => VerifiedKind::Reveal(Box::new(s)),
                    None => return Err(not_ours("not a signed reveal statement".into())),
                }
            }
        }
        other => {
            return Err(not_ours(format!(
                "signed, but predicateType {} is neither a weightmark certificate nor a report",
                other.unwrap_or("(none)")
            )))
        }
    };
    let model = model.map(|m| compare_model(&kind, m)).transpose()?;
    Ok(Verified { kind, signer: public.key_id(), digest: hex(&Sha256::digest(&bytes)), model })
}

fn compare_model(kind: &VerifiedKind, model: &Model) -> Result<ModelCheck> {
    let committed;
    let (subjects, recorded_tensors) = match kind {
        VerifiedKind::Certificate(s) => (&s.subject, &s.predicate.tensor_digests),
        VerifiedKind::Report(s) => (&s.subject, &s.predicate.suspect_tensor_digests),
        VerifiedKind::FingerprintCheck(s) => (&s.subject, &s.predicate.suspect.tensor_digests),
        VerifiedKind::Identification(s) => (&s.subject, &s.predicate.suspect_tensor_digests),
        VerifiedKind::Reveal(s) => {
            // The suspect is the committing report's (checked on loading).
            committed = BASE64
                .decode(&s.predicate.report.file)
                .ok()
                .and_then(|b| parse_envelope(&b, Path::new("<report>")).ok())
                .and_then(|e| payload_bytes(&e).ok())
                .and_then(|p| parse_detection_statement(&p).ok());
            match &committed {
                Some(r) => (&r.subject, &r.predicate.suspect_tensor_digests),
                None => return Ok(ModelCheck::default()),
            }
        }
    };
    let mut check = ModelCheck::default();

    let files = model_file_digests(model);
    let recorded_files: Vec<(&str, &str)> = subjects
        .iter()
        .filter(|s| s.name != TENSOR_ROOT_SUBJECT)
        .filter_map(|s| s.digest.get("sha256").map(|d| (s.name.as_str(), d.as_str())))
        .collect();
    for (name, digest) in &recorded_files {
        if !files.iter().any(|(_, d)| hex(d) == *digest) {
            check.files_not_found.push(name.to_string());
        }
    }
    for (name, digest) in &files {
        if !recorded_files.iter().any(|(_, d)| *d == hex(digest)) {
            check.files_unrecorded.push(name.clone());
        }
    }

    let actual = model_tensor_digests(model);
    let actual_map: BTreeMap<&str, String> =
        actual.iter().map(|(n, d)| (n.as_str(), hex(d))).collect();
    for (name, digest) in recorded_tensors {
        match actual_map.get(name.as_str()) {
            None => check.tensors_missing.push(name.clone()),
            Some(d) if d != digest => check.tensors_changed.push(name.clone()),
            Some(_) => {}
        }
    }
    for name in actual_map.keys() {
        if !recorded_tensors.contains_key(*name) {
            check.tensors_extra.push(name.to_string());
        }
    }
    let recorded_root = subjects
        .iter()
        .find(|s| s.name == TENSOR_ROOT_SUBJECT)
        .and_then(|s| s.digest.values().next().cloned())
        .unwrap_or_default();
    check.tensor_root_matches = hex(&tensor_root(&actual)) == recorded_root;

    let recorded_side = match kind {
        VerifiedKind::Certificate(s) => s.predicate.files.as_ref(),
        VerifiedKind::Report(_)
        | VerifiedKind::Reveal(_)
        | VerifiedKind::FingerprintCheck(_)
        | VerifiedKind::Identification(_) => None,
    };
    check.certificate_lists_files = recorded_side.is_some();
    if let (Some(recorded), true) = (recorded_side, model.path.is_dir()) {
        compare_side_files(&mut check, recorded, &recorded_files, model)?;
    }
    Ok(check)
}

/// Compares the side files of the model directory with a certificate's
/// file list, by name and SHA-256 (weight files are left to the digest and
/// tensor comparisons above).
fn compare_side_files(
    check: &mut ModelCheck,
    recorded: &[ReleaseFile],
    recorded_weights: &[(&str, &str)],
    model: &Model,
) -> Result<()> {
    let found = side_inventory(model)?;
    check.side_files_compared = true;
    let recorded: BTreeMap<&str, &str> = recorded
        .iter()
        .filter(|f| !recorded_weights.iter().any(|(name, _)| *name == f.name))
        .map(|f| (f.name.as_str(), f.sha256.as_str()))
        .collect();
    let actual: BTreeMap<&str, String> =
        found.files.iter().map(|f| (f.name.as_str(), hex(&f.sha256))).collect();
    for (name, digest) in &actual {
        match recorded.get(name) {
            None => check.side_files_added.push(name.to_string()),
            Some(d) if !d.eq_ignore_ascii_case(digest) => {
                check.side_files_changed.push(name.to_string())
            }
            Some(_) => {}
        }
    }
    check.side_files_removed =
        recorded.keys().filter(|n| !actual.contains_key(*n)).map(|n| n.to_string()).collect();
    for s in found.skipped {
        if s.reason == HIDDEN {
            check.not_compared.push(s.name);
        } else {
            check.side_files_refused.push(s.to_string());
        }
    }
    Ok(())
}

/// The side files of a directory model, hashed, and the entries left out.
struct SideInventory {
    files: Vec<OutputFile>,
    skipped: Vec<SkippedFile>,
}

fn side_inventory(model: &Model) -> Result<SideInventory> {
    let weights = weight_files(model);
    let exclude: Vec<&str> = weights.iter().map(|f| f.name.as_str()).collect();
    let found = walk(&model.path, &exclude, Purpose::Inventory)?;
    let mut files = Vec::new();
    for f in found.files {
        if let Content::Plain(sha256, size) = copy_checked(&f.source, None)? {
            files.push(OutputFile { name: f.name, sha256, size });
        }
    }
    Ok(SideInventory { files, skipped: found.skipped })
}

/// The model's weight files (safetensors files, index, GGUF file) with
/// their digests and sizes.
fn weight_files(model: &Model) -> Vec<OutputFile> {
    let mut out: Vec<OutputFile> = model
        .files
        .iter()
        .map(|f| OutputFile {
            name: f.file_name.clone(),
            sha256: Sha256::digest(f.bytes()).into(),
            size: f.bytes().len() as u64,
        })
        .collect();
    if let Some(index) = &model.index {
        out.push(OutputFile {
            name: index.file_name.clone(),
            sha256: Sha256::digest(&index.bytes).into(),
            size: index.bytes.len() as u64,
        });
    }
    out
}

/// Every file of a saved model as a certificate lists it: the weight files
/// and, for a directory, its side files (as a consumer of the directory
/// sees them), sorted by name.
pub(crate) fn release_inventory(model: &Model) -> Result<Vec<OutputFile>> {
    let mut files = weight_files(model);
    if model.path.is_dir() {
        files.extend(side_inventory(model)?.files);
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}
