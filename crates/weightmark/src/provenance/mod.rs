//! Signed statements about models: release certificates and detection
//! reports, each an in-toto Statement v1 inside a DSSE envelope signed with
//! ed25519, and their verification.
//!
//! * [`envelope`]: the DSSE envelope, its pre-authentication encoding,
//!   signing and signature checks.
//! * [`certificate`]: the release certificate written by `embed`.
//! * [`chain`]: following a certificate back through the ones it supersedes.
//! * [`report`]: the detection report written by `detect --report`.
//! * [`identification`]: the identification report written by
//!   `identify --report`: every certificate tested, with the correction.
//! * [`reveal`]: the reveal statement written by `reveal`: a mark key
//!   disclosed for one suspect that a report fixed first.
//! * [`verify`]: checking a certificate or report, and a model against it.
//!
//! `docs/formats.md` specifies every byte.

pub mod certificate;
pub mod chain;
pub mod envelope;
pub mod identification;
pub mod report;
pub mod reveal;
pub mod verify;

pub use certificate::{
    load_certificate, load_certificate_unverified, Certificate, CertifiedTensor, HeadSketchRecord,
    NeuronSketchRecord, ReleaseFile, ReleasePredicate, SketchRecord,
};
pub use chain::{check_chain, ChainLink};
pub use envelope::{
    envelope_to_string, pae, parse_envelope, sign_statement, verify_envelope, Envelope,
    EnvelopeSignature, Statement, Subject, Tool, PAYLOAD_TYPE, STATEMENT_TYPE,
    TENSOR_ROOT_ALGORITHM, TENSOR_ROOT_SUBJECT,
};
pub use identification::{
    build_identification_report, load_identification, IdentificationInputs,
    IdentificationPredicate, IDENTIFICATION_PREDICATE_TYPE,
};
pub use report::{load_cited_report, DetectionPredicate, Report};
pub use reveal::{
    build_reveal, load_fingerprint_reveal, load_reveal, save_reveal, Disclosed, Dispute,
    FingerprintReveal, Reveal, RevealInputs, RevealPredicate,
};
pub use verify::{verify_file, ModelCheck, Verified, VerifiedKind};
