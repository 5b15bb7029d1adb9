//! `weightmark._native`: the Python package's native module, a thin layer
//! over the `weightmark` library.
//!
//! Every function runs the library with the GIL released and returns plain
//! values (JSON text for results, `bytearray`s for tensor data); the pure
//! Python package (`python/weightmark`) turns them into typed result objects
//! and numpy arrays. Library errors become the exceptions of [`errors`].

#![deny(missing_docs)]

mod commands;
mod detection;
mod errors;
mod memory;
mod progress;
mod summary;

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};

use crate::errors::Outcome;
use crate::memory::RawTensor;
use crate::progress::PyProgress;

/// A tensor as Python hands it over: `(name, dtype, shape, bytes)`.
type PyTensor<'py> = (String, String, Vec<usize>, Bound<'py, PyBytes>);

/// What `mark` returns to Python: `(name, bytearray)` per tensor, the release
/// record and the summary (JSON text).
type PyMarked<'py> = (Vec<(String, Bound<'py, PyByteArray>)>, String, String);

/// Runs `work` without the GIL, reporting progress to `callback`. The
/// work's own error wins; otherwise an exception the callback raised is
/// raised now.
fn detached<T: Send>(
    py: Python<'_>,
    callback: Option<Py<PyAny>>,
    work: impl FnOnce(&dyn weightmark::Progress) -> Outcome<T> + Send,
) -> PyResult<T> {
    let progress = PyProgress::new(callback);
    let result = py.detach(|| work(&progress));
    let callback_error = progress.take_error();
    match (result, callback_error) {
        (Err(failure), _) => Err(failure.into_py(py)),
        (Ok(_), Some(e)) => Err(e),
        (Ok(value), None) => Ok(value),
    }
}

/// Tensors from Python `(name, dtype, shape, bytes)` tuples (copied: the
/// work runs without the GIL).
fn raw_tensors(py: Python<'_>, tensors: Vec<PyTensor<'_>>) -> PyResult<Vec<RawTensor>> {
    tensors
        .into_iter()
        .map(|(name, dtype, shape, data)| {
            let dtype = memory::parse_dtype(&name, &dtype).map_err(|f| f.into_py(py))?;
            Ok((name, dtype, shape, data.as_bytes().to_vec()))
        })
        .collect()
}

/// Writes `NAME.key` (secret, mode 0600) and `NAME.pub`, refusing to
/// overwrite either; returns `(secret_path, public_path, key_id)`.
#[pyfunction]
#[pyo3(signature = (name))]
fn keygen(py: Python<'_>, name: PathBuf) -> PyResult<(String, String, String)> {
    detached(py, None, |_| commands::keygen(&name))
}

/// Marks the model at `model`, writes it to `output` and its certificate
/// beside it; returns the summary as JSON text.
#[pyfunction]
#[pyo3(signature = (model, output, key, *, label=None, recipient=None,
    strength=None, scheme=None, tensors=None, cert=None, force=false,
    progress=None, recipient_code=None, code_groups=None, code_cutoff=None,
    recipient_share=None))]
#[allow(clippy::too_many_arguments)]
fn embed(
    py: Python<'_>,
    model: PathBuf,
    output: PathBuf,
    key: PathBuf,
    label: Option<String>,
    recipient: Option<String>,
    strength: Option<f64>,
    scheme: Option<&str>,
    tensors: Option<Vec<String>>,
    cert: Option<PathBuf>,
    force: bool,
    progress: Option<Py<PyAny>>,
    recipient_code: Option<&str>,
    code_groups: Option<u32>,
    code_cutoff: Option<f64>,
    recipient_share: Option<f64>,
) -> PyResult<String> {
    let scheme = commands::parse_scheme(scheme).map_err(|f| f.into_py(py))?;
    let recipient_code = commands::parse_recipient_code(recipient_code, code_groups, code_cutoff)
        .map_err(|f| f.into_py(py))?;
    let overwrite =
        if force { weightmark::Overwrite::Replace } else { weightmark::Overwrite::Refuse };
    let request = commands::EmbedRequest {
        model,
        output,
        key,
        label,
        recipient,
        strength,
        scheme,
        tensors,
        recipient_code,
        recipient_share,
        cert,
        overwrite,
    };
    detached(py, progress, |p| commands::embed_files(request, p))
}

/// Tests the model at `suspect` for one release's mark, informed with
/// `original`; returns the CLI's `detect --json` object as JSON text and
/// the reader's warnings about the suspect.
#[pyfunction]
#[pyo3(signature = (suspect, key, *, cert=None, label=None, recipient=None, original=None,
    threshold=weightmark::DEFAULT_THRESHOLD_P, progress=None))]
#[allow(clippy::too_many_arguments)]
fn detect(
    py: Python<'_>,
    suspect: PathBuf,
    key: PathBuf,
    cert: Option<PathBuf>,
    label: Option<String>,
    recipient: Option<String>,
    original: Option<PathBuf>,
    threshold: f64,
    progress: Option<Py<PyAny>>,
) -> PyResult<(String, Vec<String>)> {
    let request = detection::DetectRequest { key, cert, label, recipient, threshold };
    detached(py, progress, |p| {
        let release = detection::release(&request)?;
        let model = weightmark::Model::open(&suspect)?;
        let original = original.as_ref().map(weightmark::Model::open).transpose()?;
        let name = suspect.display().to_string();
        let json = detection::run(&release, &model, &name, original.as_ref(), threshold, p)?;
        Ok((json, model.warnings.clone()))
    })
}

/// Tests tensors held in memory, `(name, dtype, shape, bytes)` each, for one
/// release's mark, informed with `original` tensors; returns the CLI's
/// `detect --json` object as JSON text (`suspect` is `"<arrays>"`).
#[pyfunction]
#[pyo3(signature = (tensors, key, *, cert=None, label=None, recipient=None, original=None,
    threshold=weightmark::DEFAULT_THRESHOLD_P, progress=None))]
#[allow(clippy::too_many_arguments)]
fn detect_arrays(
    py: Python<'_>,
    tensors: Vec<PyTensor<'_>>,
    key: PathBuf,
    cert: Option<PathBuf>,
    label: Option<String>,
    recipient: Option<String>,
    original: Option<Vec<PyTensor<'_>>>,
    threshold: f64,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let suspect = raw_tensors(py, tensors)?;
    let original = original.map(|o| raw_tensors(py, o)).transpose()?;
    let request = detection::DetectRequest { key, cert, label, recipient, threshold };
    detached(py, progress, |p| {
        let release = detection::release(&request)?;
        let suspect = memory::model("<arrays>", suspect)?;
        let original = original.map(|o| memory::model("<original arrays>", o)).transpose()?;
        detection::run(&release, &suspect, "<arrays>", original.as_ref(), threshold, p)
    })
}

/// Tests every certificate of the directory `certs` against `suspect` in one
/// pass; returns the CLI's `identify --json` object as JSON text and the
/// files left out, `(path, reason)`.
#[pyfunction]
#[pyo3(signature = (suspect, key, certs, *, original=None,
    threshold=weightmark::DEFAULT_THRESHOLD_P, progress=None))]
fn identify(
    py: Python<'_>,
    suspect: PathBuf,
    key: PathBuf,
    certs: PathBuf,
    original: Option<PathBuf>,
    threshold: f64,
    progress: Option<Py<PyAny>>,
) -> PyResult<(String, Vec<(String, String)>)> {
    detached(py, progress, |p| {
        commands::identify_files(&suspect, &key, &certs, original.as_deref(), threshold, p)
    })
}

/// Checks the signature of the certificate or report at `file` with the
/// public key at `public`, and `model` against it; returns the CLI's
/// `verify --json` object as JSON text.
#[pyfunction]
#[pyo3(signature = (file, public, *, model=None))]
fn verify(
    py: Python<'_>,
    file: PathBuf,
    public: PathBuf,
    model: Option<PathBuf>,
) -> PyResult<String> {
    detached(py, None, |_| commands::verify_files(&file, &public, model.as_deref()))
}

/// A model's files, tensors and digests: the CLI's `inspect --json` object
/// as JSON text, and the reader's warnings.
#[pyfunction]
#[pyo3(signature = (model, *, digests=true))]
fn inspect(py: Python<'_>, model: PathBuf, digests: bool) -> PyResult<(String, Vec<String>)> {
    detached(py, None, |_| commands::inspect_model(&model, digests))
}

/// Converts a GGUF model to Hugging Face-layout safetensors in the new
/// directory `output`; returns a summary as JSON text.
#[pyfunction]
#[pyo3(signature = (model, output, *, dtype="f32", max_shard_size=None))]
fn convert(
    py: Python<'_>,
    model: PathBuf,
    output: PathBuf,
    dtype: &str,
    max_shard_size: Option<String>,
) -> PyResult<String> {
    let dtype = dtype.to_string();
    detached(py, None, |_| {
        commands::convert_model(&model, &output, &dtype, max_shard_size.as_deref())
    })
}

/// Marks tensors held in memory, `(name, dtype, shape, bytes)` each; returns
/// every tensor's bytes in order as `(name, bytearray)`, the release record
/// and the summary (both JSON text).
#[pyfunction]
#[pyo3(signature = (tensors, key, *, label, recipient=None,
    strength=None, scheme=None, tensors_globs=None, progress=None,
    recipient_code=None, code_groups=None, code_cutoff=None, recipient_share=None))]
#[allow(clippy::too_many_arguments)]
fn mark<'py>(
    py: Python<'py>,
    tensors: Vec<PyTensor<'py>>,
    key: PathBuf,
    label: String,
    recipient: Option<String>,
    strength: Option<f64>,
    scheme: Option<&str>,
    tensors_globs: Option<Vec<String>>,
    progress: Option<Py<PyAny>>,
    recipient_code: Option<&str>,
    code_groups: Option<u32>,
    code_cutoff: Option<f64>,
    recipient_share: Option<f64>,
) -> PyResult<PyMarked<'py>> {
    let scheme = commands::parse_scheme(scheme).map_err(|f| f.into_py(py))?;
    let recipient_code = commands::parse_recipient_code(recipient_code, code_groups, code_cutoff)
        .map_err(|f| f.into_py(py))?;
    let raw = raw_tensors(py, tensors)?;
    let request = memory::MarkRequest {
        key,
        label,
        recipient,
        strength,
        scheme,
        globs: tensors_globs,
        recipient_code,
        recipient_share,
    };
    let (marked, record, summary) = detached(py, progress, |p| memory::mark(raw, &request, p))?;
    let arrays =
        marked.into_iter().map(|(name, data)| (name, PyByteArray::new(py, &data))).collect();
    Ok((arrays, record, summary))
}

/// Signs the certificate of a model marked with `mark` and saved since at
/// `saved`, from the release `record` (JSON text); writes it to `cert`
/// (default `SAVED.cert.json` beside the model) and returns its path.
#[pyfunction]
#[pyo3(signature = (saved, record, key, *, cert=None))]
fn certify(
    py: Python<'_>,
    saved: PathBuf,
    record: &str,
    key: PathBuf,
    cert: Option<PathBuf>,
) -> PyResult<String> {
    let record = record.to_string();
    detached(py, None, |_| memory::certify_saved(&saved, &record, &key, cert))
}

/// The native half of the `weightmark` Python package (use `weightmark`,
/// not this module).
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_STRENGTH", weightmark::DEFAULT_STRENGTH)?;
    m.add("MAX_STRENGTH", weightmark::MAX_STRENGTH)?;
    m.add("DEFAULT_THRESHOLD_P", weightmark::DEFAULT_THRESHOLD_P)?;
    m.add("WeightmarkError", py.get_type::<errors::WeightmarkError>())?;
    m.add("FormatError", py.get_type::<errors::FormatError>())?;
    m.add("KeyFileError", py.get_type::<errors::KeyFileError>())?;
    m.add("CertificateError", py.get_type::<errors::CertificateError>())?;
    m.add("InputError", py.get_type::<errors::InputError>())?;
    m.add_function(wrap_pyfunction!(keygen, m)?)?;
    m.add_function(wrap_pyfunction!(embed, m)?)?;
    m.add_function(wrap_pyfunction!(detect, m)?)?;
    m.add_function(wrap_pyfunction!(detect_arrays, m)?)?;
    m.add_function(wrap_pyfunction!(identify, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add_function(wrap_pyfunction!(mark, m)?)?;
    m.add_function(wrap_pyfunction!(certify, m)?)?;
    Ok(())
}
