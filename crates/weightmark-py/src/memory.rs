//! Tensors held in memory: marking a state dict without writing it, signing
//! the certificate once it is saved, and detection in arrays.
//!
//! Tensors cross the boundary as `(name, dtype, shape, bytes)` with the
//! safetensors dtype name (`"F32"`, `"BF16"`, ...) and little-endian bytes;
//! the Python side converts to and from numpy arrays.

use std::path::{Path, PathBuf};

use weightmark::provenance::envelope_to_string;
use weightmark::{
    certify, check_release_paths, default_certificate_path, embed_in_memory, write_atomic, Dtype,
    Model, Progress, ReleasePredicate, SecretKey,
};

use crate::commands::options;
use crate::errors::{json_text, Failure, Outcome};
use crate::summary::{marking_summary, Marked};

/// One tensor as the Python side hands it over.
pub type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// The dtype of a safetensors dtype name (`"F32"`, `"bf16"`: any case).
pub fn parse_dtype(tensor: &str, name: &str) -> Outcome<Dtype> {
    Dtype::from_name(&name.to_ascii_uppercase()).ok_or_else(|| {
        Failure::Input(format!(
            "tensor '{}': unknown dtype '{}' (use a safetensors dtype name such as F32, F16, BF16, \
             F64 or I64)",
            tensor.escape_debug(),
            name.escape_debug()
        ))
    })
}

/// A model held in memory named `name` in messages.
pub fn model(name: &str, tensors: Vec<RawTensor>) -> Outcome<Model> {
    Ok(Model::from_tensors(name, tensors)?)
}

/// The arguments of `mark`.
pub struct MarkRequest {
    /// The owner's secret key file.
    pub key: PathBuf,
    /// Release label.
    pub label: String,
    /// Recipient.
    pub recipient: Option<String>,
    /// Mark strength (`None`: the library's size rule).
    pub strength: Option<f64>,
    /// Mark scheme (the library's default when absent).
    pub scheme: Option<weightmark::Scheme>,
    /// Tensor globs (default selection when absent or empty).
    pub globs: Option<Vec<String>>,
    /// How the recipient component is built.
    pub recipient_code: weightmark::RecipientCode,
    /// The recipient component's share of the mark (`None`: the default).
    pub recipient_share: Option<f64>,
}

/// What `mark` returns: every tensor's bytes (marked or unchanged) in
/// order, the release record (JSON) and the summary (JSON).
pub type MarkedTensors = (Vec<(String, Vec<u8>)>, String, String);

/// Marks the tensors in memory (bytes equal to what `embed` writes).
pub fn mark(
    tensors: Vec<RawTensor>,
    r: &MarkRequest,
    progress: &dyn Progress,
) -> Outcome<MarkedTensors> {
    let key = SecretKey::load(&r.key)?;
    let model = model("<arrays>", tensors)?;
    let options = options(
        &r.label,
        r.recipient.clone(),
        r.strength,
        r.scheme,
        r.globs.clone(),
        (r.recipient_code, r.recipient_share),
        progress,
    );
    let marked = embed_in_memory(&model, &key, &options)?;
    let record = serde_json::to_value(&marked.record)
        .map_err(|e| Failure::Library(weightmark::Error::internal(format!("{e}"))))?;
    let summary = marking_summary(&Marked {
        scheme: options.scheme,
        label: &r.label,
        recipient: r.recipient.as_deref(),
        strength: marked.record.strength,
        signer: &key.public_key().key_id(),
        tensors: &marked.summaries,
        fidelity: &marked.fidelity,
        blind: &marked.blind,
        informed: Some(&marked.informed),
    });
    Ok((marked.tensors, json_text(&record)?, json_text(&serde_json::Value::Object(summary))?))
}

/// Signs the certificate of a model marked in memory and saved at `saved`;
/// writes it to `cert` (default: beside the saved model, as `embed` would)
/// and returns its path.
pub fn certify_saved(
    saved: &Path,
    record: &str,
    key: &Path,
    cert: Option<PathBuf>,
) -> Outcome<String> {
    let record: ReleasePredicate = serde_json::from_str(record)
        .map_err(|e| Failure::Input(format!("the release record is not valid: {e}")))?;
    let secret = SecretKey::load(key)?;
    let model = Model::open(saved)?;
    let cert_path = cert.unwrap_or_else(|| default_certificate_path(saved));
    check_release_paths(&model, key, saved, &cert_path)?;
    let envelope = certify(&model, &record, &secret)?;
    write_atomic(&cert_path, &envelope_to_string(&envelope)?)?;
    Ok(cert_path.display().to_string())
}
