//! The library's error type.
//!
//! Every variant says what went wrong in one short lowercase line and, where it
//! can, names the file and the tensor. Problems inside a model file are
//! [`FormatError`]s wrapped in [`Error::Format`] together with the path, so a
//! message always reads `path: tensor 'name': reason`.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A problem found while validating a safetensors header or a shard index.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// The file is shorter than the 8-byte header length prefix.
    #[error("file is {len} bytes, too short to hold a safetensors header")]
    TooShort {
        /// File length in bytes.
        len: u64,
    },
    /// The declared header length exceeds the cap.
    #[error("header length {len} exceeds the {cap}-byte limit")]
    HeaderTooLarge {
        /// Declared header length.
        len: u64,
        /// The cap.
        cap: u64,
    },
    /// The declared header length runs past the end of the file.
    #[error("header length {len} runs past the end of the {file_len}-byte file (truncated?)")]
    HeaderPastEnd {
        /// Declared header length.
        len: u64,
        /// File length in bytes.
        file_len: u64,
    },
    /// The header bytes are not UTF-8.
    #[error("header is not valid UTF-8 (byte {offset})")]
    HeaderNotUtf8 {
        /// Offset of the first invalid byte inside the header.
        offset: usize,
    },
    /// The header is not the JSON object safetensors expects.
    #[error("header is not valid safetensors JSON: {reason}")]
    HeaderJson {
        /// What the JSON parser said.
        reason: String,
    },
    /// Two tensors share a name.
    #[error("tensor '{}' appears twice in the header", .name.escape_debug())]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// A dtype string that this tool does not know.
    #[error("tensor '{}': unknown dtype '{}'", .name.escape_debug(), .dtype.escape_debug())]
    UnknownDtype {
        /// Tensor name.
        name: String,
        /// The dtype as written.
        dtype: String,
    },
    /// Shape times dtype size overflows or disagrees with the data offsets.
    #[error("tensor '{}': shape {shape:?} x {dtype} needs {expected} bytes but data_offsets hold {actual}", .name.escape_debug())]
    SizeMismatch {
        /// Tensor name.
        name: String,
        /// Declared shape.
        shape: Vec<u64>,
        /// Dtype name.
        dtype: &'static str,
        /// Bytes implied by shape and dtype (`u64::MAX` on overflow).
        expected: u64,
        /// Bytes between the data offsets.
        actual: u64,
    },
    /// Data offsets that end before they begin.
    #[error("tensor '{}': data_offsets [{begin}, {end}] end before they begin", .name.escape_debug())]
    OffsetsReversed {
        /// Tensor name.
        name: String,
        /// Declared begin.
        begin: u64,
        /// Declared end.
        end: u64,
    },
    /// Shape arithmetic overflowed.
    #[error("tensor '{}': shape {shape:?} overflows", .name.escape_debug())]
    ShapeOverflow {
        /// Tensor name.
        name: String,
        /// Declared shape.
        shape: Vec<u64>,
    },
    /// Data offsets are reversed, overlap another tensor or leave a gap.
    #[error("tensor '{}': data_offsets [{begin}, {end}] overlap or leave a gap (expected to start at {expected_begin})", .name.escape_debug())]
    OffsetsNotContiguous {
        /// Tensor name.
        name: String,
        /// Declared begin.
        begin: u64,
        /// Declared end.
        end: u64,
        /// Where the tensor should have started.
        expected_begin: u64,
    },
    /// Data offsets point past the end of the file.
    #[error("tensor '{}': data_offsets end at {end}, past the {data_len}-byte data section", .name.escape_debug())]
    OffsetsOutOfBounds {
        /// Tensor name.
        name: String,
        /// Declared end.
        end: u64,
        /// Length of the data section.
        data_len: u64,
    },
    /// Bytes after the last tensor that no tensor accounts for.
    #[error("{extra} bytes after the last tensor belong to no tensor")]
    TrailingBytes {
        /// Unaccounted bytes.
        extra: u64,
    },
    /// The shard index is malformed.
    #[error("shard index: {reason}")]
    Index {
        /// What is wrong.
        reason: String,
    },
    /// A shard index names a file outside the model directory.
    #[error("shard index: tensor '{}' points outside the model directory: '{}'", .name.escape_debug(), .file.escape_debug())]
    IndexEscapes {
        /// Tensor name.
        name: String,
        /// The file as written in the index.
        file: String,
    },
    /// A GGUF file is malformed or uses something this tool cannot read.
    #[error("GGUF: {reason}")]
    Gguf {
        /// What is wrong.
        reason: String,
    },
    /// A tensor the index lists is not in the shard it names.
    #[error("shard index: tensor '{}' is not in shard '{file}'", .name.escape_debug())]
    IndexTensorMissing {
        /// Tensor name.
        name: String,
        /// Shard file name.
        file: String,
    },
}

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A model file or index is malformed.
    #[error("{}: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: FormatError,
    },
    /// The path is not a model this tool can read.
    #[error("{}: {reason}", path.display())]
    NotAModel {
        /// The path given.
        path: PathBuf,
        /// Why it is not a model.
        reason: String,
    },
    /// A key file is malformed (the message never quotes key material).
    #[error("{}: {reason}", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong, with a line number where it helps.
        reason: String,
    },
    /// A key file that would be overwritten.
    #[error("{}: already exists; refusing to overwrite a key (choose another name or remove it)", path.display())]
    KeyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A certificate or report is malformed or fails a check.
    #[error("{}: {reason}", path.display())]
    Certificate {
        /// The certificate file (or `<memory>`).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A plan or part file of a split detection is malformed, or does not
    /// fit the others (another plan, model or key; a part missing or twice).
    #[error("{}: {reason}", path.display())]
    Split {
        /// The plan or part file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A signature did not verify.
    #[error("signature does not verify: {reason}")]
    BadSignature {
        /// Why.
        reason: String,
    },
    /// The key given does not belong to the certificate.
    #[error("{reason}")]
    WrongKey {
        /// Which ids disagree.
        reason: String,
    },
    /// A tensor selection problem (glob matched nothing, tensor not markable).
    #[error("{reason}")]
    Selection {
        /// What is wrong.
        reason: String,
    },
    /// Invalid parameters (strength out of range, output equals input, ...).
    #[error("{reason}")]
    InvalidArgument {
        /// What is wrong.
        reason: String,
    },
    /// A certificate names a mark scheme this version does not know.
    #[error("the certificate uses scheme '{}'; this version knows {}", .scheme.escape_debug(), crate::scheme::Scheme::ALL.map(|s| format!("'{s}'")).join(", "))]
    UnknownScheme {
        /// The scheme as written.
        scheme: String,
    },
    /// An OpenAI-compatible endpoint could not be asked: unreachable, an
    /// HTTP error status, a timeout or a malformed response.
    #[error("endpoint {url}: {reason}")]
    Endpoint {
        /// The URL requested.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// An endpoint refused one request with an HTTP 4xx status other than
    /// 429 (a content filter, a request it will not serve): that trigger
    /// goes unanswered and a check asks the next.
    #[error("endpoint {url}: {reason}")]
    Refused {
        /// The URL requested.
        url: String,
        /// The status and the start of the body.
        reason: String,
    },
    /// An output that already exists and would be replaced.
    #[error("{}: already exists; refusing to overwrite it", path.display())]
    OutputExists {
        /// The existing path.
        path: PathBuf,
    },
    /// A worker thread failed on its own (a bug, not a problem with the
    /// input): the work was abandoned.
    #[error("internal error: {what}")]
    Internal {
        /// What failed.
        what: String,
    },
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// Wraps a format error with the path it concerns.
    pub fn format(path: impl Into<PathBuf>, source: FormatError) -> Self {
        Error::Format { path: path.into(), source }
    }

    /// Builds an [`Error::Internal`].
    pub fn internal(what: impl Into<String>) -> Self {
        Error::Internal { what: what.into() }
    }

    /// Builds an [`Error::InvalidArgument`].
    pub fn invalid(reason: impl Into<String>) -> Self {
        Error::InvalidArgument { reason: reason.into() }
    }
}
