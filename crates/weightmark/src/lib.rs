//! # weightmark
//!
//! Keyed, low-magnitude marks in the weights of neural networks; detection of
//! those marks in suspected derivatives with an exact p-value bound; and
//! signed provenance for every release.
//!
//! The flow, in library terms:
//!
//! 1. [`SecretKey::generate`] makes an owner key (a 32-byte master seed from
//!    which the ed25519 signing key and the mark master key are derived).
//! 2. [`Model::open`] memory-maps and validates a safetensors model (a file,
//!    or a directory with shards and an index).
//! 3. [`embed()`] marks the selected tensors (scheme `ss1`, see [`scheme`]),
//!    writes the output in the input's layout, and returns a signed
//!    certificate ([`provenance`]).
//! 4. [`detect()`] tests a suspect, blind or with the original (informed),
//!    and reports per-tensor and global z with the Hoeffding bound
//!    `p <= exp(-z^2/2)`.
//!
//! ```no_run
//! use weightmark::{detect, embed, DetectOptions, EmbedOptions, Model, NoProgress, SecretKey, Selection, Target};
//! # fn main() -> weightmark::Result<()> {
//! let key = SecretKey::generate()?;
//! let model = Model::open("model.safetensors")?;
//! let options = EmbedOptions {
//!     strength: weightmark::DEFAULT_STRENGTH,
//!     label: "release-1".into(),
//!     recipient: None,
//!     selection: Selection::Default,
//!     created: "2026-11-28T00:00:00Z".into(),
//!     progress: &NoProgress,
//! };
//! let report = embed(&model, "marked.safetensors".as_ref(), &key, &options)?;
//! let suspect = Model::open("marked.safetensors")?;
//! let mark_key = key.mark_key("release-1", None);
//! let target = Target { mark_key: &mark_key, tensors: None };
//! let found = detect(&suspect, None, &target, &DetectOptions { threshold_p: 1e-9, progress: &NoProgress })?;
//! assert!(found.detected);
//! # let _ = report; Ok(()) }
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod align;
mod align_rotation;
pub mod attack;
pub mod bench;
pub mod convert;
pub mod detect;
pub mod digest;
pub mod dtype;
pub mod embed;
mod error;
pub mod gguf;
mod io;
pub mod key;
pub mod model;
pub mod pattern;
pub mod progress;
pub mod provenance;
mod rng;
pub mod scheme;
pub mod select;
pub mod synth;

pub use detect::{detect, detect_many, DetectOptions, Detection, Mode, Target};
pub use dtype::Dtype;
pub use embed::{embed, EmbedOptions, EmbedReport};
pub use error::{Error, FormatError, Result};
pub use key::{MarkKey, PublicKey, SecretKey};
pub use model::{Layout, Model, TensorRef};
pub use progress::{NoProgress, Progress};
pub use provenance::{load_certificate, Certificate};
pub use scheme::{Stats, DEFAULT_STRENGTH, DEFAULT_THRESHOLD_P};
pub use select::Selection;

/// The current time as RFC 3339 UTC with seconds (`2026-11-28T13:20:55Z`).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    now.format(&format).unwrap_or_else(|_| now.unix_timestamp().to_string())
}
