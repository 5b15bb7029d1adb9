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
//! 5. [`identify()`] ranks every licensee's certificate against a suspect in
//!    one read pass, with Bonferroni-adjusted bounds.
//!
//! ```no_run
//! use weightmark::{detect, embed, DetectOptions, EmbedOptions, Model, SecretKey, Target};
//! # fn main() -> weightmark::Result<()> {
//! let key = SecretKey::generate()?;
//! let model = Model::open("model.safetensors")?;
//! let report = embed(&model, "marked.safetensors".as_ref(), &key, &EmbedOptions::new("release-1"))?;
//! weightmark::write_atomic("marked.cert.json".as_ref(), &report.certificate_text()?)?;
//!
//! let suspect = Model::open("marked.safetensors")?;
//! let cert = weightmark::load_certificate("marked.cert.json".as_ref(), &key.public_key())?;
//! let target = Target::from_certificate(&cert, &key)?;
//! let found = detect(&suspect, None, &target, &DetectOptions::default())?;
//! assert!(found.detected);
//! # Ok(()) }
//! ```
//!
//! Modules are private; this page re-exports what a caller needs. The
//! namespaces [`attack`] (edits for robustness experiments), [`bench`]
//! (robustness sweeps), [`provenance`] (certificates and reports),
//! [`gguf`] (llama.cpp's format), [`fingerprint`] (backdoor fingerprints,
//! `fp1`) and [`synth`] (synthetic test models) are
//! public because they hold many related items.

#![deny(missing_docs)]
#![deny(unsafe_code)]

mod align;
mod align_rotation;
mod allocation;
pub mod attack;
pub mod bench;
mod canonical;
mod convert;
mod detect;
mod digest;
mod dtype;
mod embed;
mod error;
mod f16c;
pub mod fingerprint;
#[doc(hidden)]
pub mod fuzzing;
pub mod gguf;
mod heads;
mod identify;
mod inspect;
mod io;
mod key;
mod llama;
mod model;
mod pattern;
mod progress;
pub mod provenance;
mod release;
mod rng;
mod scheme;
mod select;
pub mod split;
mod ss2;
mod stability;
pub mod strength;
pub mod synth;
pub mod tardos;

pub use allocation::{Allocation, Parts as AllocationParts};
pub use attack::{apply as apply_attack, Attack, AttackDetail, AttackReport};
pub use canonical::{NeuronSketch, ResidualSketch};
pub use convert::{convert, parse_size, ConvertOptions, ConvertReport};
pub use detect::{
    adjusted_log10, detect, detect_many, log10_p_bound, DetectOptions, Detection, Mode, Skipped,
    Target, TensorResult,
};
pub use digest::{hex, model_file_digests, model_tensor_digests, tensor_root, Sha256Digest};
pub use dtype::{decode_f64, Dtype};
pub use embed::{
    certify, default_strength, embed, embed_in_memory, embed_superseding, issue, normalize_created,
    EmbedOptions, EmbedReport, MemoryEmbedding, TensorSummary, MAX_STRENGTH,
};
pub use error::{Error, FormatError, Result};
pub use heads::HeadSketch;
pub use identify::{
    identify, load_candidates, Candidate, Candidates, Identification, IdentifyOptions,
    RankedCandidate, ReleaseReading,
};
pub use inspect::{inspect_json, Digests};
pub use io::{
    prepare_outputs, remove_stale_temporaries, remove_temporaries, write_atomic,
    write_atomic_bytes, write_atomic_with, write_new, Overwrite,
};
pub use key::{MarkKey, PublicKey, RevealedRelease, SecretKey};
pub use llama::{HeadPermutation, LlamaConfig};
pub use model::{
    resolve_output, Layout, Model, OutputFile, Reorder, SkippedFile, TensorRef, WriteReport,
    DENY_PREFIXES, DENY_SUFFIXES,
};
pub use progress::{NoProgress, Progress};
pub use provenance::{
    load_certificate, load_certificate_unverified, Certificate, ReleasePredicate,
};
pub use release::{
    check_release_paths, check_side_path, check_superseding_path, default_certificate_path,
    same_file,
};
pub use scheme::{
    p_value_bound, z_for_p, Fidelity, Scheme, Stats, DEFAULT_STRENGTH, DEFAULT_THRESHOLD_P,
};
pub use select::{is_default_selected, Selection, MIN_DEFAULT_ELEMENTS};
pub use ss2::EVEN_RECIPIENT_SHARE;
pub use stability::{canonical_moves, CanonicalMoves};
pub use tardos::{RecipientCode, TardosCode};

/// The current time as RFC 3339 UTC with seconds (`2026-11-28T13:20:55Z`).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    now.format(&format).unwrap_or_else(|_| now.unix_timestamp().to_string())
}
