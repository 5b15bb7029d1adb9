//! The writers that stream a model out one tensor at a time (issue #15:
//! 7B-class models in flat memory) write exactly the bytes the in-memory
//! writers wrote: `attack gguf` against digests of the files written before it
//! streamed, and the synthetic Llama generator against the in-memory
//! generator and serialiser.

mod common;

use std::path::Path;

use sha2::{Digest, Sha256};
use weightmark::gguf::GgmlType;
use weightmark::synth::{
    llama, llama_layout, to_safetensors, write_llama_file, write_llama_sharded, LlamaShape,
};
use weightmark::{apply_attack, hex, Attack, Dtype, Model, NoProgress};

/// Rows of 256 (whole Q4_K and Q6_K blocks) and of 320 (not: the fallbacks),
/// Q/K rows permuted by 4 query and 2 key/value heads.
const SHAPE: LlamaShape =
    LlamaShape { vocab: 256, hidden: 256, intermediate: 320, layers: 2, heads: 4, kv_heads: 2 };

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hex(&Sha256::digest(bytes))
}

#[test]
fn attack_gguf_writes_the_same_bytes_as_the_writer_that_held_every_blob() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model_dir = common::write_llama_dir(&dir.path().join("model"), &SHAPE, Dtype::BF16, 7);
    let model = Model::open(&model_dir).unwrap_or_else(|e| panic!("{e}"));
    // SHA-256 of each file and the damage sums, as written by the writer of
    // commit b61ae61 (which quantized every tensor before writing any).
    let expected = [
        (
            GgmlType::Q4K,
            "63c74093ee9dec7bfdb65ef6ae48c510c826361720d457d80adb4e54a97fb0bc",
            "409c3ebb5209d34b 400955ddd17049f0 3f97f06000000000 1017088",
        ),
        (
            GgmlType::Q6K,
            "8b80a16a97483ca30e2e4c15c0cee5edbc9089370e7e15dac67d54902c867e8e",
            "409c3ebb5209d34b 3fc70633513de502 3f81400000000000 1017088",
        ),
        (
            GgmlType::Q8_0,
            "05df4e1378aa0637aceb6dccda3fb57818044985dc50b9f2d454b8fc9f15a256",
            "409c3ebb5209d34b 3f91d8fbe4574813 3f62a80000000000 1017088",
        ),
        (
            GgmlType::Q4_0,
            "91dbdc48c573fdc510fcb93ffc01a4323f23999d0471e19d97798f09c3b94aa5",
            "409c3ebb5209d34b 4011d648c642a5f9 3fa2800000000000 1017088",
        ),
        (
            GgmlType::F16,
            "8b24d0f18df2c10659c8d88ff47ac54fc5a87eb08bc2bf13492d7c278a689bea",
            "409c3ebb5209d34b 3d41f2576a000000 3e60000000000000 1017088",
        ),
        (
            GgmlType::F32,
            "9d2879f07bd9fc60bef98121ccfd2cba5361b425309f842d217648bbd86ceb79",
            "409c3ebb5209d34b 0000000000000000 0000000000000000 1017088",
        ),
    ];
    let mut seen = Vec::new();
    for (ty, _, _) in expected {
        let out = dir.path().join(format!("{}.gguf", ty.name()));
        let report = apply_attack(&model, &out, &Attack::Gguf { ty }, 0, &NoProgress)
            .unwrap_or_else(|e| panic!("{e}"));
        let d = report.damage;
        let damage = format!(
            "{:016x} {:016x} {:016x} {}",
            d.sum_sq_original.to_bits(),
            d.sum_sq_change.to_bits(),
            d.max_abs_change.to_bits(),
            d.elements
        );
        seen.push((ty, sha256(&out), damage));
    }
    for ((ty, sha, damage), (_, want_sha, want_damage)) in seen.iter().zip(expected) {
        assert_eq!((sha.as_str(), damage.as_str()), (want_sha, want_damage), "{}", ty.name());
    }
}

#[test]
fn the_streamed_llama_file_is_the_in_memory_serialisation_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for dtype in [Dtype::BF16, Dtype::F32] {
        let path = dir.path().join(format!("{}.safetensors", dtype.name()));
        write_llama_file(&path, &SHAPE, dtype, 3).unwrap_or_else(|e| panic!("{e}"));
        let streamed = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(streamed == to_safetensors(&llama(&SHAPE, dtype, 3), None), "{}", dtype.name());
    }
}

#[test]
fn sharded_llama_holds_the_same_tensors_in_shards_no_larger_than_the_limit() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("sharded");
    // Each decoder layer is about 0.9 MB in bf16, the embedding 128 kB.
    let limit = 600_000;
    let files =
        write_llama_sharded(&out, &SHAPE, Dtype::BF16, 5, limit).unwrap_or_else(|e| panic!("{e}"));
    assert!(files.len() > 2, "{files:?}");
    for f in &files {
        let size = std::fs::metadata(out.join(f)).map(|m| m.len()).unwrap_or(0);
        // A shard over the limit holds one tensor larger than the limit.
        let header = safetensors_names(&out.join(f));
        assert!(size <= limit + 4096 || header.len() == 1, "{f}: {size} bytes, {header:?}");
    }
    let model = Model::open(&out).unwrap_or_else(|e| panic!("{e}"));
    let expected = llama(&SHAPE, Dtype::BF16, 5);
    let names: Vec<String> = model.tensors().map(|t| t.name.to_string()).collect();
    let mut want: Vec<String> = llama_layout(&SHAPE).into_iter().map(|(n, _)| n).collect();
    want.sort();
    let mut got = names.clone();
    got.sort();
    assert_eq!(got, want);
    for t in &expected {
        let found = model.tensor(&t.name).unwrap_or_else(|| panic!("{} missing", t.name));
        assert!(found.data().as_ref() == t.data.as_slice(), "{} differs", t.name);
        assert_eq!(found.shape, t.shape.as_slice());
    }
    let config = weightmark::LlamaConfig::for_model(&model).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (config.hidden, config.intermediate, config.layers, config.heads, config.kv_heads),
        (SHAPE.hidden, SHAPE.intermediate, SHAPE.layers, SHAPE.heads, SHAPE.kv_heads)
    );
}

/// The tensor names in one safetensors file's header.
fn safetensors_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{e}"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{e}"));
    st.names().into_iter().map(String::from).collect()
}
