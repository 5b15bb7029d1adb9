//! Marking a whole model: select tensors, mark each, write the output in the
//! input's layout, and sign a release certificate.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use crate::digest::{hex, tensor_digest, tensor_root, Sha256Digest};
use crate::error::{Error, Result};
use crate::key::SecretKey;
use crate::model::{write_model, Model, TensorRef, WriteOptions, WriteReport};
use crate::pattern::TensorStreams;
use crate::progress::Progress;
use crate::provenance::certificate::RELEASE_PREDICATE_TYPE;
use crate::provenance::{
    sign_statement, CertifiedTensor, Envelope, ReleasePredicate, Statement, Subject, Tool,
    STATEMENT_TYPE, TENSOR_ROOT_ALGORITHM, TENSOR_ROOT_SUBJECT,
};
use crate::scheme::{embed_tensor, z_for_p, Fidelity, Stats, DEFAULT_THRESHOLD_P};
use crate::select::{select, Selection};

/// Largest strength accepted: beyond 10% the "mark" is a visible edit.
pub const MAX_STRENGTH: f64 = 0.1;

/// Options for [`embed`].
pub struct EmbedOptions<'a> {
    /// Mark RMS relative to each row's RMS.
    pub strength: f64,
    /// Release label.
    pub label: String,
    /// Recipient (licensee), for a distinct mark per copy.
    pub recipient: Option<String>,
    /// Which tensors to mark.
    pub selection: Selection,
    /// Creation time to record (RFC 3339).
    pub created: String,
    /// Progress receiver.
    pub progress: &'a dyn Progress,
}

/// Per-tensor outcome of marking.
#[derive(Clone, Debug)]
pub struct TensorSummary {
    /// Tensor name.
    pub name: String,
    /// Fidelity of this tensor.
    pub fidelity: Fidelity,
    /// Blind statistics of the marked tensor.
    pub blind: Stats,
}

/// What [`embed`] did.
#[derive(Clone, Debug)]
pub struct EmbedReport {
    /// The files written.
    pub written: WriteReport,
    /// Marked tensors in model order.
    pub tensors: Vec<TensorSummary>,
    /// Fidelity over all marked tensors.
    pub fidelity: Fidelity,
    /// Blind statistics of the output (measured, unattacked).
    pub blind: Stats,
    /// Informed statistics of the output against the input (measured).
    pub informed: Stats,
    /// The signed certificate.
    pub certificate: Envelope,
}

impl EmbedReport {
    /// The signed certificate as the text of a `.cert.json` file.
    pub fn certificate_text(&self) -> Result<String> {
        crate::provenance::envelope_to_string(&self.certificate)
    }

    /// Smallest strength at which this model's blind z would reach the
    /// default threshold (z = 6.44), from `z = strength * sqrt(n)`.
    /// Rounded up to three significant digits, so the value printed is enough.
    pub fn strength_for_blind_threshold(&self) -> f64 {
        let exact = z_for_p(DEFAULT_THRESHOLD_P) / (self.blind.elements.max(1) as f64).sqrt();
        let scale = 10f64.powi(2 - exact.log10().floor() as i32);
        (exact * scale).ceil() / scale
    }
}

impl EmbedOptions<'static> {
    /// Options for the release `label` with the defaults: strength
    /// [`crate::DEFAULT_STRENGTH`], no recipient, the default tensor
    /// selection, the current time, no progress reports.
    pub fn new(label: impl Into<String>) -> EmbedOptions<'static> {
        EmbedOptions {
            strength: crate::DEFAULT_STRENGTH,
            label: label.into(),
            recipient: None,
            selection: Selection::Default,
            created: crate::now_rfc3339(),
            progress: &crate::progress::NoProgress,
        }
    }
}

impl<'a> EmbedOptions<'a> {
    /// The same options for one recipient (licensee): a distinct mark.
    #[must_use]
    pub fn recipient(mut self, recipient: impl Into<String>) -> Self {
        self.recipient = Some(recipient.into());
        self
    }

    /// The same options at another strength.
    #[must_use]
    pub fn strength(mut self, strength: f64) -> Self {
        self.strength = strength;
        self
    }

    /// The same options reporting progress to `progress`.
    pub fn progress<'b>(self, progress: &'b dyn Progress) -> EmbedOptions<'b> {
        EmbedOptions {
            strength: self.strength,
            label: self.label,
            recipient: self.recipient,
            selection: self.selection,
            created: self.created,
            progress,
        }
    }
}

/// Validates options that do not need the model.
fn check_options(options: &EmbedOptions<'_>) -> Result<()> {
    if !(options.strength > 0.0 && options.strength <= MAX_STRENGTH) {
        return Err(Error::invalid(format!(
            "strength {} is out of range: use a value in (0, {MAX_STRENGTH}] (default 0.003)",
            options.strength
        )));
    }
    if options.label.is_empty() {
        return Err(Error::invalid("the release label is empty"));
    }
    if options.recipient.as_deref() == Some("") {
        return Err(Error::invalid(
            "the recipient is empty: leave it out for a release without one",
        ));
    }
    Ok(())
}

/// Marks `model` with `key` and writes it to `out`; returns the report with a
/// signed certificate (which the caller saves beside the output).
pub fn embed(
    model: &Model,
    out: &Path,
    key: &SecretKey,
    options: &EmbedOptions<'_>,
) -> Result<EmbedReport> {
    check_options(options)?;
    let selected = select(model, &options.selection)?;
    let chosen: HashSet<&str> = selected.iter().map(String::as_str).collect();
    let mark_key = key.mark_key(&options.label, options.recipient.as_deref());
    let results: Mutex<BTreeMap<String, (Fidelity, Stats, Stats)>> = Mutex::new(BTreeMap::new());
    let originals: Mutex<Vec<(String, Sha256Digest)>> = Mutex::new(Vec::new());

    let transform = |t: &TensorRef<'_>| -> Result<Option<Vec<u8>>> {
        let marked = if chosen.contains(t.name) {
            let streams = TensorStreams::new(&mark_key, t.name);
            let (digest, e) =
                rayon::join(|| tensor_digest(t), || embed_tensor(t, &streams, options.strength));
            lock(&results)?.insert(t.name.to_string(), (e.fidelity, e.blind, e.informed));
            lock(&originals)?.push((t.name.to_string(), digest));
            Some(e.data)
        } else {
            lock(&originals)?.push((t.name.to_string(), tensor_digest(t)));
            None
        };
        Ok(marked)
    };
    let written =
        write_model(model, out, &transform, &WriteOptions { progress: options.progress })?;

    // A poisoned lock means a worker panicked; rayon has already resumed that
    // panic on this thread, so the data is only reached when none did.
    let results = results.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    let originals = originals.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut tensors = Vec::new();
    let (mut fidelity, mut blind, mut informed) =
        (Fidelity::default(), Stats::default(), Stats::default());
    for name in &selected {
        if let Some(&(f, b, i)) = results.get(name) {
            fidelity = fidelity.merge(f);
            blind = blind.merge(b);
            informed = informed.merge(i);
            tensors.push(TensorSummary { name: name.clone(), fidelity: f, blind: b });
        }
    }

    let certified = selected
        .iter()
        .filter_map(|n| model.tensor(n))
        .map(|t| CertifiedTensor {
            name: t.name.to_string(),
            dtype: t.dtype.name().to_string(),
            shape: t.shape.to_vec(),
        })
        .collect();
    let mut subject: Vec<Subject> = written
        .files
        .iter()
        .map(|f| Subject { name: f.name.clone(), digest: digest_set("sha256", &f.sha256) })
        .collect();
    subject.push(Subject {
        name: TENSOR_ROOT_SUBJECT.to_string(),
        digest: digest_set(TENSOR_ROOT_ALGORITHM, &tensor_root(&written.tensor_digests)),
    });
    let statement = Statement {
        statement_type: STATEMENT_TYPE.to_string(),
        subject,
        predicate_type: RELEASE_PREDICATE_TYPE.to_string(),
        predicate: ReleasePredicate {
            scheme: crate::scheme::Scheme::Ss1.name().to_string(),
            strength: options.strength,
            label: options.label.clone(),
            recipient: options.recipient.clone(),
            mark_key_commitment: hex(&mark_key.commitment()),
            tensors: certified,
            marked_elements: blind.elements,
            tensor_digests: written
                .tensor_digests
                .iter()
                .map(|(n, d)| (n.clone(), hex(d)))
                .collect(),
            original_tensor_root: hex(&tensor_root(&originals)),
            blind_z_at_release: blind.z(),
            signer: key.public_key().key_id(),
            tool: Tool { name: "weightmark".into(), version: env!("CARGO_PKG_VERSION").into() },
            created: options.created.clone(),
        },
    };
    let certificate = sign_statement(&statement, key)?;
    Ok(EmbedReport { written, tensors, fidelity, blind, informed, certificate })
}

fn digest_set(algorithm: &str, digest: &Sha256Digest) -> BTreeMap<String, String> {
    BTreeMap::from([(algorithm.to_string(), hex(digest))])
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    Ok(m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}
