//! The Python exceptions and the mapping of every library error onto them.
//!
//! `WeightmarkError` is the base; `FormatError` (a malformed model, index or
//! GGUF file), `KeyFileError` (key files), `CertificateError` (certificates,
//! reports, signatures, wrong keys, unknown schemes) and `InputError` (invalid
//! arguments, missing files and other I/O, tensor selection) derive from it.
//! The message is the library's one line; the file it names, when there is
//! one, is also the exception's `path` attribute (else `None`).

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use weightmark::Error;

pyo3::create_exception!(
    weightmark,
    WeightmarkError,
    PyException,
    "Base class of every error weightmark raises (a panic in the library is not one: it \
     surfaces as pyo3's PanicException)."
);
pyo3::create_exception!(
    weightmark,
    FormatError,
    WeightmarkError,
    "A model file, shard index or GGUF file is malformed or not a model."
);
pyo3::create_exception!(
    weightmark,
    KeyFileError,
    WeightmarkError,
    "A key file is malformed, or would be overwritten."
);
pyo3::create_exception!(
    weightmark,
    CertificateError,
    WeightmarkError,
    "A certificate or report is malformed, does not verify, belongs to another key, or uses a \
     scheme this version does not know."
);
pyo3::create_exception!(
    weightmark,
    InputError,
    WeightmarkError,
    "An invalid argument, a missing file or another I/O failure, or a tensor selection problem."
);

/// Which exception a library error becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `FormatError`.
    Format,
    /// `KeyFileError`.
    KeyFile,
    /// `CertificateError`.
    Certificate,
    /// `InputError`.
    Input,
    /// The base `WeightmarkError` (internal errors: a bug, not the input).
    Base,
}

/// The exception kind of `e`, and the file it names.
pub fn classify(e: &Error) -> (Kind, Option<&std::path::Path>) {
    match e {
        Error::Io { path, .. } => (Kind::Input, Some(path)),
        Error::Format { path, .. } | Error::NotAModel { path, .. } => (Kind::Format, Some(path)),
        Error::KeyFile { path, .. } | Error::KeyExists { path } => (Kind::KeyFile, Some(path)),
        Error::Certificate { path, .. } => (Kind::Certificate, Some(path)),
        Error::BadSignature { .. } | Error::WrongKey { .. } | Error::UnknownScheme { .. } => {
            (Kind::Certificate, None)
        }
        Error::Selection { .. } | Error::InvalidArgument { .. } => (Kind::Input, None),
        Error::OutputExists { path } => (Kind::Input, Some(path)),
        Error::Internal { .. } => (Kind::Base, None),
        // A variant added to the library later: the base class, never a
        // guess at a more specific one.
        _ => (Kind::Base, None),
    }
}

/// The Python exception for a library error.
pub fn to_py(py: Python<'_>, e: &Error) -> PyErr {
    let (kind, path) = classify(e);
    let path = path.map(|p| p.display().to_string());
    raise(py, kind, e.to_string(), path)
}

/// An exception of `kind` with `message`, its `path` attribute set.
pub fn raise(py: Python<'_>, kind: Kind, message: String, path: Option<String>) -> PyErr {
    let err = match kind {
        Kind::Format => FormatError::new_err(message),
        Kind::KeyFile => KeyFileError::new_err(message),
        Kind::Certificate => CertificateError::new_err(message),
        Kind::Input => InputError::new_err(message),
        Kind::Base => WeightmarkError::new_err(message),
    };
    // Setting an attribute on a fresh exception instance cannot fail short of
    // memory exhaustion; the message is what matters, so a failure is ignored.
    let _ = err.value(py).setattr("path", path);
    err
}

/// An `InputError` for an argument this layer checks itself.
pub fn input(py: Python<'_>, message: impl Into<String>) -> PyErr {
    raise(py, Kind::Input, message.into(), None)
}

/// Errors of the work done with the GIL released: a library error, or an
/// argument problem found there. Converted once the GIL is held again.
#[derive(Debug)]
pub enum Failure {
    /// A library error.
    Library(Error),
    /// A problem with the arguments or inputs, with the message to show.
    Input(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Library(e)
    }
}

impl Failure {
    /// The Python exception.
    pub fn into_py(self, py: Python<'_>) -> PyErr {
        match self {
            Failure::Library(e) => to_py(py, &e),
            Failure::Input(message) => input(py, message),
        }
    }
}

/// Result of work done without the GIL.
pub type Outcome<T> = std::result::Result<T, Failure>;

/// A JSON value as text (serialising our own values cannot fail; if it ever
/// did, the error says so instead of panicking).
pub fn json_text(value: &serde_json::Value) -> Outcome<String> {
    serde_json::to_string(value)
        .map_err(|e| Failure::Library(Error::internal(format!("cannot write JSON: {e}"))))
}
