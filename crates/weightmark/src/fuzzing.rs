//! Entry points for the fuzz targets (`fuzz/`, run by `scripts/fuzz`) and the
//! stable smoke test over the malformed-input corpus (`tests/fuzz_smoke.rs`).
//!
//! Each function takes untrusted bytes, runs them through the same parsers
//! and validators the commands use, and then through what consumes a
//! validated result, and returns whether the input was accepted. None may
//! panic, abort, or allocate more than a small multiple of its input,
//! whatever the bytes: that is what the fuzzers check. Not part of the
//! supported API.

use std::path::Path;
use std::sync::OnceLock;

use crate::dtype::decode_f64;
use crate::gguf::{canonical_tensors, GgufFile};
use crate::key::SecretKey;
use crate::llama::{AttentionGeometry, LlamaConfig};
use crate::model::{Header, Model, ShardIndex};
use crate::provenance::certificate::parse_release_statement;
use crate::provenance::envelope::{
    parse_envelope, payload_bytes, verify_envelope, Envelope, PAYLOAD_TYPE,
};
use crate::provenance::report::parse_detection_statement;
use crate::synth::{llama, LlamaShape};

/// The fixed owner seed of the fuzz targets and of the corpus's signed
/// envelopes (`tests/malformed/owner.pub` is its public key): corpus cases
/// with a valid signature reach the statement parsers.
pub const CORPUS_OWNER_SEED: [u8; 32] = [0x5e; 32];

/// A safetensors file's bytes (the whole file): the header is parsed and
/// validated, then every tensor's data is decoded as the detector does. The
/// same bytes are also parsed as a shard index
/// (`model.safetensors.index.json`). Returns whether either was accepted.
pub fn safetensors(bytes: &[u8]) -> bool {
    let header_ok = match Header::parse(bytes, bytes.len() as u64) {
        Ok(header) => {
            let start = header.data_start();
            let mut values = Vec::new();
            for t in &header.tensors {
                let _ = (t.elements(), t.row_len());
                // What readers rely on: any product of the dimensions fits
                // (an overflow panics in the fuzz builds, which check it).
                let _: usize = t.shape.iter().map(|&d| d.max(1)).product();
                let data = bytes.get(start + t.begin..start + t.end).unwrap_or_default();
                decode_f64(t.dtype, data, &mut values);
            }
            true
        }
        Err(_) => false,
    };
    let index_ok = ShardIndex::parse(crate::model::INDEX_FILE_NAME, bytes.to_vec()).is_ok();
    header_ok || index_ok
}

/// A GGUF file's bytes: parsed and validated, then every tensor dequantized
/// to f32 with its Hugging Face name, as a GGUF suspect is read.
pub fn gguf(bytes: &[u8]) -> bool {
    match GgufFile::parse(bytes) {
        Ok(file) => {
            // What readers rely on: any product of the dimensions fits.
            for t in &file.tensors {
                let _: u64 = t.dims.iter().map(|&d| d.max(1)).product();
            }
            canonical_tensors(&file, bytes).is_ok()
        }
        Err(_) => false,
    }
}

/// A certificate or report file's bytes, as `verify` reads them: the DSSE
/// envelope is parsed, its signature checked against the corpus owner's key
/// and its payload parsed as a release or detection statement. The bytes are
/// also signed as a payload by that key, so the statement parsers see
/// arbitrary payloads behind a valid signature. Returns whether a statement
/// was accepted either way.
pub fn envelope(bytes: &[u8]) -> bool {
    let key = owner();
    let path = Path::new("fuzz.cert.json");
    let mut accepted = false;
    if let Ok(envelope) = parse_envelope(bytes, path) {
        let _ = payload_bytes(&envelope);
        if let Ok(payload) = verify_envelope(&envelope, &key.public_key()) {
            accepted |= statement(&payload);
        }
    }
    // The same bytes as a payload signed by the owner.
    let signed = sign_raw(bytes, key);
    if let Ok(payload) = verify_envelope(&signed, &key.public_key()) {
        accepted |= statement(&payload);
    }
    accepted
}

/// A `config.json`'s bytes beside a tiny synthetic Llama model: read as the
/// commands read it (head counts for `attack`, head geometry, and informed
/// re-alignment, which takes the head counts from the original's config).
pub fn llama_config(bytes: &[u8]) -> bool {
    // A fresh directory per input (removed on return), so that nothing is
    // left behind and callers on several threads never share a config.
    let Ok(dir) = tempfile::tempdir() else { return false };
    if std::fs::write(dir.path().join("config.json"), bytes).is_err() {
        return false;
    }
    let shape =
        LlamaShape { vocab: 32, hidden: 16, intermediate: 24, layers: 1, heads: 4, kv_heads: 2 };
    let tensors = llama(&shape, crate::dtype::Dtype::F32, 7)
        .into_iter()
        .map(|t| (t.name, t.dtype, t.shape, t.data))
        .collect();
    let path = dir.path().join("model.safetensors");
    let Ok(model) = Model::from_tensors(&path.to_string_lossy(), tensors) else { return false };
    let accepted = LlamaConfig::for_model(&model).is_ok();
    let _ = AttentionGeometry::for_model(&model);
    let _ = crate::align::realign(&model, &model, crate::align::Undo::All);
    accepted
}

/// The corpus owner's key.
fn owner() -> &'static SecretKey {
    static KEY: OnceLock<SecretKey> = OnceLock::new();
    KEY.get_or_init(|| SecretKey::from_seed(CORPUS_OWNER_SEED))
}

/// An envelope holding `payload` as is, signed by `key`.
fn sign_raw(payload: &[u8], key: &SecretKey) -> Envelope {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    let sig = key.sign(&crate::provenance::pae(PAYLOAD_TYPE, payload));
    Envelope {
        payload_type: PAYLOAD_TYPE.to_string(),
        payload: STANDARD.encode(payload),
        signatures: vec![crate::provenance::EnvelopeSignature {
            keyid: key.public_key().key_id(),
            sig: STANDARD.encode(sig),
        }],
    }
}

/// Parses a verified payload as whichever statement it claims to be.
fn statement(payload: &[u8]) -> bool {
    parse_release_statement(payload).is_ok() | parse_detection_statement(payload).is_ok()
}
