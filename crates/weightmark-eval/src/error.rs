//! The eval crate's error type.
//!
//! Like the library's, every message is one line that names the file (or the
//! tensor) and the reason. Errors from the core library pass through
//! unchanged; failures inside candle, which only happen on a bug or on
//! exhausted memory, are wrapped so the message says which step failed.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

/// What can go wrong while evaluating or training a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// Reading or validating the model files (from the core library).
    #[error(transparent)]
    Model(#[from] weightmark::Error),
    /// An input file (config, tokenizer, text) is missing or unusable.
    #[error("{}: {reason}", .path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the architecture needs is absent or has the wrong shape.
    #[error("{}: tensor '{name}': {reason}", .path.display())]
    Tensor {
        /// The model.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request that cannot be honoured (bad option value, unsupported model).
    #[error("{0}")]
    Invalid(String),
    /// A tensor operation failed inside candle.
    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
}

impl EvalError {
    /// An [`EvalError::Input`] for `path`.
    pub fn input(path: impl Into<PathBuf>, reason: impl Into<String>) -> EvalError {
        EvalError::Input { path: path.into(), reason: reason.into() }
    }

    /// An [`EvalError::Invalid`].
    pub fn invalid(reason: impl Into<String>) -> EvalError {
        EvalError::Invalid(reason.into())
    }
}
