//! Content digests: SHA-256 of files as written, and a layout-independent
//! digest of a model's tensors.
//!
//! A *tensor digest* is SHA-256 over a canonical encoding of the tensor's
//! name, dtype, shape and data; the *tensor root* is SHA-256 over the sorted
//! list of (name, tensor digest). Two models with the same tensors have the
//! same root however they are sharded, ordered or re-saved. The exact byte
//! layout is specified in `docs/formats.md`.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use rayon::prelude::*;

use crate::model::{Model, TensorRef};

/// Domain string of a tensor digest.
const TENSOR_DOMAIN: &[u8] = b"weightmark/v1 tensor\0";
/// Domain string of the tensor root.
const ROOT_DOMAIN: &[u8] = b"weightmark/v1 tensor root\0";

/// A 32-byte SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// Lower-case hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Parses lower- or upper-case hex into exactly `N` bytes.
pub fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// Starts a tensor digest over the tensor's identity (name, dtype, shape);
/// feed the data bytes next, then finalize.
pub fn tensor_hasher(name: &str, dtype: &str, shape: &[usize]) -> Sha256 {
    let mut h = Sha256::new();
    h.update(TENSOR_DOMAIN);
    h.update((name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update((dtype.len() as u64).to_le_bytes());
    h.update(dtype.as_bytes());
    h.update((shape.len() as u64).to_le_bytes());
    for &d in shape {
        h.update((d as u64).to_le_bytes());
    }
    h
}

/// Digest of one tensor's name, dtype, shape and data.
pub fn tensor_digest(t: &TensorRef<'_>) -> Sha256Digest {
    let mut h = tensor_hasher(t.name, t.dtype.name(), t.shape);
    h.update(t.data());
    h.finalize().into()
}

/// Least decoded bytes a batch of [`model_tensor_digests`] may hold.
const DECODED_BATCH_MIN: usize = 256 << 20;

/// Digests of every tensor of a model, in model order (computed in parallel).
/// Tensors decoded on read (GGUF) are hashed in runs whose decoded bytes
/// stay within twice the largest tensor (at least [`DECODED_BATCH_MIN`]), so
/// memory stays flat whatever the number of threads.
pub fn model_tensor_digests(model: &Model) -> Vec<(String, Sha256Digest)> {
    model_tensor_digests_with(model, &HashMap::new())
}

/// [`model_tensor_digests`], taking the digests in `known` (by tensor name,
/// computed from the same bytes while they were at hand) as they are.
pub(crate) fn model_tensor_digests_with(
    model: &Model,
    known: &HashMap<String, Sha256Digest>,
) -> Vec<(String, Sha256Digest)> {
    tensor_digests_of(model, known, &|_| true)
}

/// [`model_tensor_digests_with`] for the tensors `wanted` by name (one part
/// of a split run), in model order.
pub(crate) fn tensor_digests_of(
    model: &Model,
    known: &HashMap<String, Sha256Digest>,
    wanted: &dyn Fn(&str) -> bool,
) -> Vec<(String, Sha256Digest)> {
    let tensors: Vec<TensorRef<'_>> = model.tensors().filter(|t| wanted(t.name)).collect();
    let digest = |t: &TensorRef<'_>| match known.get(t.name) {
        Some(d) => (t.name.to_string(), *d),
        None => (t.name.to_string(), tensor_digest(t)),
    };
    let decoded = |t: &TensorRef<'_>| {
        if t.is_decoded_on_read() && !known.contains_key(t.name) {
            t.byte_len()
        } else {
            0
        }
    };
    let largest = tensors.iter().map(decoded).max().unwrap_or(0);
    let budget = largest.saturating_mul(2).max(DECODED_BATCH_MIN);
    let mut out = Vec::with_capacity(tensors.len());
    let mut rest = tensors.as_slice();
    while !rest.is_empty() {
        let (mut n, mut bytes) = (0, 0usize);
        while let Some(t) = rest.get(n) {
            if n > 0 && bytes.saturating_add(decoded(t)) > budget {
                break;
            }
            bytes = bytes.saturating_add(decoded(t));
            n += 1;
        }
        let (run, next) = rest.split_at(n);
        out.par_extend(run.par_iter().map(digest));
        rest = next;
    }
    out
}

/// The digests of the tensors `wanted` that are read in place (not decoded
/// on read), hashed in parallel until `stop` is set: a tensor not yet
/// started then is skipped, so the caller that set it (a failed test beside
/// this hashing) does not wait for the rest. Whatever is returned is exact;
/// what is missing is missing.
pub(crate) fn mapped_tensor_digests_until(
    model: &Model,
    wanted: &dyn Fn(&str) -> bool,
    stop: &std::sync::atomic::AtomicBool,
) -> HashMap<String, Sha256Digest> {
    let tensors: Vec<TensorRef<'_>> =
        model.tensors().filter(|t| wanted(t.name) && !t.is_decoded_on_read()).collect();
    tensors
        .par_iter()
        .filter(|_| !stop.load(std::sync::atomic::Ordering::Relaxed))
        .map(|t| (t.name.to_string(), tensor_digest(t)))
        .collect()
}

/// SHA-256 of every file of a model (shards, and the index for a sharded
/// model), by file name, computed in parallel.
pub fn model_file_digests(model: &Model) -> Vec<(String, Sha256Digest)> {
    let mut out: Vec<(String, Sha256Digest)> = model
        .files
        .par_iter()
        .map(|f| (f.file_name.clone(), Sha256::digest(f.bytes()).into()))
        .collect();
    if let Some(index) = &model.index {
        out.push((index.file_name.clone(), Sha256::digest(&index.bytes).into()));
    }
    if let Some(raw) = &model.raw {
        out.push((raw.file_name.clone(), Sha256::digest(raw.bytes()).into()));
    }
    out
}

/// Root digest over (name, tensor digest) pairs, sorted by name.
pub fn tensor_root(digests: &[(String, Sha256Digest)]) -> Sha256Digest {
    let mut sorted: Vec<&(String, Sha256Digest)> = digests.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    h.update(ROOT_DOMAIN);
    h.update((sorted.len() as u64).to_le_bytes());
    for (name, d) in sorted {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(d);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&b), "0001abff");
        assert_eq!(from_hex::<4>("0001ABff"), Some(b));
        assert_eq!(from_hex::<4>("0001ab"), None);
        assert_eq!(from_hex::<2>("zz00"), None);
    }

    #[test]
    fn root_ignores_order() {
        let a = ("a".to_string(), [1u8; 32]);
        let b = ("b".to_string(), [2u8; 32]);
        assert_eq!(tensor_root(&[a.clone(), b.clone()]), tensor_root(&[b, a]));
    }

    #[test]
    fn hashing_beside_the_tests_stops_when_told_and_is_exact_otherwise() {
        use crate::synth::{gaussian_matrix, write_file};
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("m.safetensors");
        let tensors: Vec<_> = (0..6)
            .map(|i| gaussian_matrix(&format!("w{i}"), 64, 64, crate::Dtype::F32, i))
            .collect();
        write_file(&path, &tensors, None).unwrap_or_else(|e| panic!("{e}"));
        let model = Model::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let wanted = |name: &str| name != "w3";
        let stop = std::sync::atomic::AtomicBool::new(false);
        let early = mapped_tensor_digests_until(&model, &wanted, &stop);
        let all: HashMap<_, _> =
            tensor_digests_of(&model, &HashMap::new(), &wanted).into_iter().collect();
        assert_eq!(early, all);
        assert_eq!(early.len(), 5);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(mapped_tensor_digests_until(&model, &wanted, &stop).is_empty());
    }

    #[test]
    fn known_answer_empty_root() {
        // SHA-256 of the domain string followed by a zero count.
        let mut h = Sha256::new();
        h.update(b"weightmark/v1 tensor root\0");
        h.update(0u64.to_le_bytes());
        let expected: Sha256Digest = h.finalize().into();
        assert_eq!(tensor_root(&[]), expected);
    }
}
