//! Writes the malformed-input corpus under `tests/malformed/` (run by
//! `scripts/make-malformed-corpus`; the files are committed, so every case
//! stays a test of `tests/malformed.rs` and a seed of the fuzzers).
//!
//! Layout: `safetensors/*.safetensors` and `gguf/*.gguf` (read by
//! `inspect`), `index/*/` (sharded model directories, read by `inspect`),
//! `envelope/*.json` (certificates and reports, read by `verify` with
//! `owner.pub`), `config/*.json` (a `config.json` put beside a tiny Llama
//! model, read by `attack permute --what heads` and by informed `detect`).
//! `MANIFEST` lists every case with the exit codes `tests/malformed.rs`
//! accepts and what the case is.
//!
//! Usage: `cargo run -p weightmark --example make_malformed_corpus -- DIR`

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use weightmark::fuzzing::CORPUS_OWNER_SEED;
use weightmark::provenance::{pae, Envelope, EnvelopeSignature, PAYLOAD_TYPE};
use weightmark::synth::{to_safetensors, SynthTensor};
use weightmark::{Dtype, SecretKey};

/// Collects the cases and the manifest.
struct Corpus {
    root: PathBuf,
    manifest: String,
}

impl Corpus {
    /// Writes one case file at `rel` (relative to the corpus root).
    fn file(&mut self, rel: &str, codes: &str, what: &str, bytes: &[u8]) {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{}: {e}", parent.display()));
        }
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let _ = writeln!(self.manifest, "{rel}\t{codes}\t{what}");
    }

    /// Writes one directory case: `files` are (name, bytes); a name ending
    /// in `/` is a directory (holding a `.keep` file, as git needs one).
    fn dir(&mut self, rel: &str, codes: &str, what: &str, files: &[(&str, Vec<u8>)]) {
        let dir = self.root.join(rel);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for (name, bytes) in files {
            if let Some(sub) = name.strip_suffix('/') {
                std::fs::create_dir_all(dir.join(sub)).unwrap_or_else(|e| panic!("{e}"));
                std::fs::write(dir.join(sub).join(".keep"), b"").unwrap_or_else(|e| panic!("{e}"));
            } else {
                std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        let _ = writeln!(self.manifest, "{rel}\t{codes}\t{what}");
    }
}

/// A safetensors file from a JSON header and `data` bytes of data.
fn st(json: &str, data: usize) -> Vec<u8> {
    let mut v = (json.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(json.as_bytes());
    v.extend(std::iter::repeat_n(0u8, data));
    v
}

/// A header entry.
fn entry(name: &str, dtype: &str, shape: &str, begin: u64, end: u64) -> String {
    format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{begin},{end}]}}"#)
}

/// A valid one-tensor file (`x`, F32, 2 x 2) for shards.
fn shard(names: &[&str]) -> Vec<u8> {
    let tensors: Vec<SynthTensor> = names
        .iter()
        .map(|n| SynthTensor {
            name: n.to_string(),
            dtype: Dtype::F32,
            shape: vec![2, 2],
            data: vec![0u8; 16],
        })
        .collect();
    to_safetensors(&tensors, None)
}

/// JSON nested `depth` arrays deep.
fn bomb(depth: usize) -> String {
    "[".repeat(depth) + &"]".repeat(depth)
}

fn safetensors(c: &mut Corpus) {
    let mut f = |name: &str, what: &str, bytes: Vec<u8>| {
        c.file(&format!("safetensors/{name}.safetensors"), "2", what, &bytes)
    };
    f("empty", "an empty file", vec![]);
    f("three-bytes", "shorter than the 8-byte length prefix", vec![1, 2, 3]);
    f("seven-bytes", "one byte short of the prefix", vec![0; 7]);
    f("prefix-only", "a zero header length and nothing else", 0u64.to_le_bytes().to_vec());
    f("header-len-max", "header length u64::MAX", u64::MAX.to_le_bytes().to_vec());
    let mut v = 100_000_001u64.to_le_bytes().to_vec();
    v.extend_from_slice(b"{}");
    f("header-len-over-cap", "header length one past the 100 MB cap", v);
    let mut v = 1000u64.to_le_bytes().to_vec();
    v.extend_from_slice(b"{}");
    f("header-past-end", "header length runs past the end (truncated file)", v);
    let mut v = 4u64.to_le_bytes().to_vec();
    v.extend_from_slice(&[b'{', 0xff, 0xfe, b'}']);
    f("header-not-utf8", "header bytes are not UTF-8", v);
    let json = format!("{{{}}}", entry("é", "F32", "[1]", 0, 4));
    let cut = json.find('é').map_or(0, |i| i + 1);
    let mut v = (cut as u64).to_le_bytes().to_vec();
    v.extend_from_slice(&json.as_bytes()[..cut]);
    f("header-cut-mid-char", "header length cuts a UTF-8 character in two", v);
    f("header-array", "header is a JSON array", st("[1,2]", 0));
    f("header-string", "header is a JSON string", st(r#""x""#, 0));
    f("header-null", "header is JSON null", st("null", 0));
    f("header-truncated-json", "header JSON stops mid-object", st(r#"{"a":"#, 0));
    f("header-bom", "header starts with a byte-order mark", st("\u{feff}{}", 0));
    f("header-trailing-garbage", "text after the header object", st("{} xx", 0));
    f(
        "offsets-reversed",
        "data_offsets [10, 5]",
        st(&format!("{{{}}}", entry("x", "U8", "[5]", 10, 5)), 10),
    );
    f(
        "offsets-overlap",
        "two tensors share bytes",
        st(
            &format!("{{{},{}}}", entry("a", "F32", "[2]", 0, 8), entry("b", "F32", "[2]", 4, 12)),
            12,
        ),
    );
    f(
        "offsets-gap",
        "four bytes between two tensors belong to none",
        st(
            &format!("{{{},{}}}", entry("a", "F32", "[2]", 0, 8), entry("b", "F32", "[2]", 12, 20)),
            20,
        ),
    );
    f(
        "offsets-past-end",
        "data ends past the file",
        st(&format!("{{{}}}", entry("x", "F32", "[4]", 0, 16)), 8),
    );
    f(
        "offsets-huge",
        "data_offsets [0, u64::MAX]",
        st(&format!("{{{}}}", entry("x", "U8", "[1]", 0, u64::MAX)), 8),
    );
    f(
        "offsets-three",
        "data_offsets with three numbers",
        st(r#"{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}"#, 1),
    );
    f("offsets-missing", "no data_offsets", st(r#"{"x":{"dtype":"U8","shape":[1]}}"#, 1));
    f(
        "offsets-negative",
        "a negative offset",
        st(r#"{"x":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}}"#, 1),
    );
    f(
        "trailing-bytes",
        "bytes after the last tensor",
        st(&format!("{{{}}}", entry("x", "F32", "[2]", 0, 8)), 12),
    );
    f("dtype-unknown", "dtype Q4", st(&format!("{{{}}}", entry("x", "Q4", "[2]", 0, 8)), 8));
    f(
        "dtype-lowercase",
        "dtype f32 (names are upper case)",
        st(&format!("{{{}}}", entry("x", "f32", "[2]", 0, 8)), 8),
    );
    f(
        "dtype-number",
        "dtype is a number",
        st(r#"{"x":{"dtype":5,"shape":[2],"data_offsets":[0,8]}}"#, 8),
    );
    f("dtype-empty", "dtype is empty", st(&format!("{{{}}}", entry("x", "", "[2]", 0, 8)), 8));
    f(
        "shape-overflow",
        "shape whose product overflows u64",
        st(&format!("{{{}}}", entry("x", "F32", "[4294967296,4294967296,16]", 0, 8)), 8),
    );
    f(
        "shape-overflow-bytes",
        "elements fit u64, bytes do not",
        st(&format!("{{{}}}", entry("x", "F64", "[2305843009213693952]", 0, 8)), 8),
    );
    f(
        "shape-negative",
        "a negative dimension",
        st(r#"{"x":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#, 1),
    );
    f(
        "shape-float",
        "a fractional dimension",
        st(r#"{"x":{"dtype":"U8","shape":[2.5],"data_offsets":[0,1]}}"#, 1),
    );
    f(
        "shape-string",
        "shape is a string",
        st(r#"{"x":{"dtype":"U8","shape":"2","data_offsets":[0,2]}}"#, 2),
    );
    f(
        "shape-zero-with-data",
        "a zero dimension but eight bytes of data",
        st(&format!("{{{}}}", entry("x", "F32", "[0,2]", 0, 8)), 8),
    );
    f(
        "zero-dim-hides-overflow",
        "shape [0, 2^32, 2^32]: no elements, but the other dimensions overflow",
        st(&format!("{{{}}}", entry("x", "F32", "[0,4294967296,4294967296]", 0, 0)), 0),
    );
    f(
        "size-mismatch",
        "shape [2] x F32 with four bytes",
        st(&format!("{{{}}}", entry("x", "F32", "[2]", 0, 4)), 4),
    );
    f(
        "unknown-field",
        "a tensor entry with an extra field",
        st(r#"{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":1}}"#, 1),
    );
    f(
        "duplicate-name",
        "two tensors called x",
        st(
            &format!("{{{},{}}}", entry("x", "F32", "[2]", 0, 8), entry("x", "F32", "[2]", 8, 16)),
            16,
        ),
    );
    f("metadata-twice", "__metadata__ twice", st(r#"{"__metadata__":{},"__metadata__":{}}"#, 0));
    f("metadata-number", "__metadata__ with a number value", st(r#"{"__metadata__":{"a":1}}"#, 0));
    f("metadata-array", "__metadata__ is an array", st(r#"{"__metadata__":[]}"#, 0));
    f(
        "bomb-metadata",
        "arrays nested 10000 deep in __metadata__",
        st(&format!(r#"{{"__metadata__":{{"a":{}}}}}"#, bomb(10_000)), 0),
    );
    f(
        "bomb-tensor",
        "arrays nested 10000 deep as a tensor entry",
        st(&format!(r#"{{"x":{}}}"#, bomb(10_000)), 0),
    );
    f(
        "name-escape",
        "a size mismatch in a tensor whose name holds a terminal escape and a newline",
        st(&format!("{{{}}}", entry("\\u001b[31mred\\nline", "F32", "[2]", 0, 4)), 4),
    );
    let mut v = b"GGUF".to_vec();
    v.extend_from_slice(&3u32.to_le_bytes());
    f("gguf-magic", "GGUF magic in a .safetensors file, truncated after the version", v);
}

fn index(c: &mut Corpus) {
    const INDEX: &str = "model.safetensors.index.json";
    let one = shard(&["x"]);
    let map = |pairs: &[(&str, &str)]| {
        let m: serde_json::Map<String, serde_json::Value> =
            pairs.iter().map(|(t, f)| (t.to_string(), serde_json::Value::from(*f))).collect();
        serde_json::json!({"metadata": {}, "weight_map": m}).to_string().into_bytes()
    };
    let mut d = |name: &str, what: &str, files: Vec<(&str, Vec<u8>)>| {
        c.dir(&format!("index/{name}"), "2", what, &files)
    };
    d(
        "not-json",
        "the index is not JSON",
        vec![(INDEX, b"weight_map".to_vec()), ("a.safetensors", one.clone())],
    );
    d(
        "array",
        "the index is a JSON array",
        vec![(INDEX, b"[]".to_vec()), ("a.safetensors", one.clone())],
    );
    d("empty-map", "weight_map is empty", vec![(INDEX, map(&[])), ("a.safetensors", one.clone())]);
    d(
        "no-map",
        "no weight_map",
        vec![(INDEX, br#"{"metadata":{}}"#.to_vec()), ("a.safetensors", one.clone())],
    );
    d(
        "map-number",
        "a weight_map value is a number",
        vec![(INDEX, br#"{"weight_map":{"x":1}}"#.to_vec()), ("a.safetensors", one.clone())],
    );
    d(
        "not-utf8",
        "the index is not UTF-8",
        vec![
            (INDEX, b"{\"weight_map\":{\"x\":\"a\xff\"}}".to_vec()),
            ("a.safetensors", one.clone()),
        ],
    );
    d(
        "bomb",
        "arrays nested 10000 deep in the metadata",
        vec![
            (
                INDEX,
                format!(r#"{{"metadata":{},"weight_map":{{"x":"a.safetensors"}}}}"#, bomb(10_000))
                    .into_bytes(),
            ),
            ("a.safetensors", one.clone()),
        ],
    );
    d(
        "climbs-out",
        "a shard named ../escape.safetensors",
        vec![(INDEX, map(&[("x", "../escape.safetensors")])), ("a.safetensors", one.clone())],
    );
    d(
        "absolute",
        "a shard named /etc/passwd",
        vec![(INDEX, map(&[("x", "/etc/passwd")])), ("a.safetensors", one.clone())],
    );
    d(
        "backslash",
        r"a shard named ..\escape.safetensors",
        vec![(INDEX, map(&[("x", "..\\escape.safetensors")])), ("a.safetensors", one.clone())],
    );
    d(
        "empty-name",
        "a shard with an empty name",
        vec![(INDEX, map(&[("x", "")])), ("a.safetensors", one.clone())],
    );
    d(
        "missing-shard",
        "the index names a shard that does not exist",
        vec![
            (INDEX, map(&[("x", "a.safetensors"), ("y", "b.safetensors")])),
            ("a.safetensors", one.clone()),
        ],
    );
    d(
        "shard-is-dir",
        "a shard that is a directory",
        vec![
            (INDEX, map(&[("x", "a.safetensors"), ("y", "b.safetensors")])),
            ("a.safetensors", one.clone()),
            ("b.safetensors/", vec![]),
        ],
    );
    d(
        "tensor-not-in-shard",
        "the index lists a tensor its shard lacks",
        vec![
            (INDEX, map(&[("x", "a.safetensors"), ("y", "a.safetensors")])),
            ("a.safetensors", one.clone()),
        ],
    );
    d(
        "tensor-not-listed",
        "a shard holds a tensor the index does not list",
        vec![(INDEX, map(&[("x", "a.safetensors")])), ("a.safetensors", shard(&["x", "y"]))],
    );
    d(
        "wrong-shard",
        "the index puts a tensor in the other shard",
        vec![
            (INDEX, map(&[("x", "b.safetensors"), ("y", "a.safetensors")])),
            ("a.safetensors", one.clone()),
            ("b.safetensors", shard(&["y"])),
        ],
    );
    d(
        "duplicate-across-shards",
        "two shards hold a tensor of the same name",
        vec![
            (INDEX, map(&[("x", "a.safetensors"), ("y", "b.safetensors")])),
            ("a.safetensors", one.clone()),
            ("b.safetensors", shard(&["x", "y"])),
        ],
    );
    d(
        "bad-shard",
        "a shard whose header is truncated",
        vec![
            (INDEX, map(&[("x", "a.safetensors")])),
            ("a.safetensors", 1000u64.to_le_bytes().to_vec()),
        ],
    );
    d(
        "two-indexes",
        "two shard indexes",
        vec![
            (INDEX, map(&[("x", "a.safetensors")])),
            ("other.safetensors.index.json", map(&[("x", "a.safetensors")])),
            ("a.safetensors", one.clone()),
        ],
    );
    d(
        "no-index",
        "two .safetensors files and no index",
        vec![("a.safetensors", one.clone()), ("b.safetensors", shard(&["y"]))],
    );
    d("no-model", "a directory without a model", vec![(".keep", vec![])]);
    d(
        "index-is-dir",
        "the index is a directory",
        vec![("model.safetensors.index.json/", vec![]), ("a.safetensors", one.clone())],
    );
}

/// Little-endian writer for GGUF files.
#[derive(Default)]
struct Gguf(Vec<u8>);

impl Gguf {
    fn header(version: u32, tensors: u64, kvs: u64) -> Gguf {
        let mut g = Gguf(b"GGUF".to_vec());
        g.u32(version).u64(tensors).u64(kvs);
        g
    }
    fn u32(&mut self, v: u32) -> &mut Gguf {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Gguf {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &[u8]) -> &mut Gguf {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s);
        self
    }
    fn kv_str(&mut self, key: &str, value: &str) -> &mut Gguf {
        self.str(key.as_bytes()).u32(8).str(value.as_bytes())
    }
    fn kv_u32(&mut self, key: &str, value: u32) -> &mut Gguf {
        self.str(key.as_bytes()).u32(4).u32(value)
    }
    fn kv_u64(&mut self, key: &str, value: u64) -> &mut Gguf {
        self.str(key.as_bytes()).u32(10).u64(value)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Gguf {
        self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to 32 bytes and appends `n` data bytes.
    fn data(&mut self, n: usize) -> Vec<u8> {
        while self.0.len() % 32 != 0 {
            self.0.push(0);
        }
        self.0.extend(std::iter::repeat_n(0x11u8, n));
        std::mem::take(&mut self.0)
    }
}

fn gguf(c: &mut Corpus) {
    let mut f = |name: &str, what: &str, bytes: Vec<u8>| {
        c.file(&format!("gguf/{name}.gguf"), "2", what, &bytes)
    };
    f("empty", "an empty .gguf file", vec![]);
    f("magic-only", "the magic and nothing else", b"GGUF".to_vec());
    f(
        "bad-magic",
        "GGUG instead of GGUF",
        Gguf::header(3, 0, 0)
            .data(0)
            .iter()
            .enumerate()
            .map(|(i, &b)| if i == 3 { b'G' } else { b })
            .collect(),
    );
    f("version-1", "version 1", Gguf::header(1, 0, 0).data(0));
    f("version-4", "version 4", Gguf::header(4, 0, 0).data(0));
    f("version-max", "version u32::MAX", Gguf::header(u32::MAX, 0, 0).data(0));
    f(
        "truncated-counts",
        "the file ends inside the tensor count",
        b"GGUF\x03\x00\x00\x00\x01\x00".to_vec(),
    );
    f("tensor-count-huge", "tensor count u64::MAX", Gguf::header(3, u64::MAX, 0).data(0));
    f("kv-count-huge", "metadata count u64::MAX", Gguf::header(3, 0, u64::MAX).data(0));
    f(
        "tensor-count-2e32",
        "tensor count 2^32 in a small file",
        Gguf::header(3, 1 << 32, 0).data(64),
    );
    let mut g = Gguf::header(3, 0, 1);
    g.u64(1 << 63);
    f("key-len-huge", "a key of 2^63 bytes", g.data(0));
    let mut g = Gguf::header(3, 0, 1);
    g.u64((1 << 20) + 1);
    f("key-len-over-cap", "a key one byte over the 1 MiB string cap", g.data(0));
    let mut g = Gguf::header(3, 0, 1);
    g.u64(100).0.extend_from_slice(b"general.");
    f("key-past-end", "a key of 100 bytes in a file that ends after 8", g.0.clone());
    let mut g = Gguf::header(3, 0, 1);
    g.str(b"general.\xffname").u32(8).str(b"x");
    f("key-not-utf8", "a key that is not UTF-8", g.data(0));
    let mut g = Gguf::header(3, 0, 1);
    g.str(b"general.name").u32(8).str(b"\xc3");
    f("value-not-utf8", "a string value cut inside a UTF-8 character", g.data(0));
    let mut g = Gguf::header(3, 0, 1);
    g.str(b"general.x").u32(13).u32(0);
    f("value-type-13", "metadata value type 13 (none such)", g.data(0));
    let mut g = Gguf::header(3, 0, 1);
    g.str(b"general.x").u32(u32::MAX);
    f("value-type-max", "metadata value type u32::MAX", g.data(0));
    let mut g = Gguf::header(3, 0, 1);
    g.str(b"general.x").u32(9).u32(0).u64(u64::MAX);
    f("array-count-huge", "an array of u64::MAX values", g.data(0));
    let mut g = Gguf::header(3, 0, 1);
    g.str(b"general.x")
        .u32(9)
        .u32(9)
        .u64(1)
        .u32(9)
        .u64(1)
        .u32(9)
        .u64(1)
        .u32(9)
        .u64(1)
        .u32(0)
        .u64(1);
    g.0.push(0);
    f("array-nested-deep", "arrays of arrays nested five deep", g.data(0));
    let mut g = Gguf::header(3, 0, 1);
    g.str(b"general.x").u32(9).u32(9).u64(4000);
    for _ in 0..4000 {
        g.u32(9).u64(0);
    }
    let empty_arrays = g.data(0);
    let mut g = Gguf::header(3, 0, 1);
    g.str(b"general.x").u32(9).u32(8).u64(3).str(b"a").str(b"b").u64(1 << 40);
    f("array-string-past-end", "an array whose third string runs past the end", g.0.clone());
    let mut g = Gguf::header(3, 0, 2);
    g.kv_str("general.name", "a").kv_str("general.name", "b");
    f("duplicate-key", "a metadata key twice", g.data(0));
    let mut g = Gguf::header(3, 1, 1);
    g.kv_u32("general.alignment", 0).tensor("w", &[32], 0, 0);
    f("alignment-zero", "general.alignment 0", g.data(128));
    let mut g = Gguf::header(3, 1, 1);
    g.kv_u32("general.alignment", 3).tensor("w", &[32], 0, 0);
    f("alignment-three", "general.alignment 3", g.data(128));
    let mut g = Gguf::header(3, 1, 1);
    g.kv_str("general.alignment", "32").tensor("w", &[32], 0, 0);
    f("alignment-string", "general.alignment is a string", g.data(128));
    let mut g = Gguf::header(3, 1, 1);
    g.kv_u64("general.alignment", 1 << 62).tensor("w", &[32], 0, 0);
    f("alignment-huge", "general.alignment 2^62", g.data(128));
    let mut g = Gguf::header(3, 1, 0);
    g.tensor("w", &[], 0, 0);
    f("dims-zero", "a tensor with no dimensions", g.data(32));
    let mut g = Gguf::header(3, 1, 0);
    g.tensor("w", &[1; 9], 0, 0);
    f("dims-nine", "a tensor with nine dimensions", g.data(32));
    let mut g = Gguf::header(3, 1, 0);
    g.tensor("w", &[(1 << 40) + 1], 0, 0);
    f("dim-over-cap", "a dimension over 2^40", g.data(32));
    let mut g = Gguf::header(3, 1, 0);
    g.tensor("w", &[1 << 40, 1 << 40], 0, 0);
    f("elements-overflow", "2^40 x 2^40 elements", g.data(32));
    let mut g = Gguf::header(3, 1, 0);
    g.tensor("w", &[1 << 40, 1 << 20], 0, 0);
    f("elements-past-end", "2^60 F32 elements in a small file", g.data(32));
    let mut g = Gguf::header(3, 1, 0);
    g.tensor("w", &[32], 1000, 0);
    f("type-1000", "tensor type 1000", g.data(128));
    let mut g = Gguf::header(3, 1, 0);
    g.tensor("w", &[32], 4, 0);
    f("type-removed", "tensor type 4 (Q4_2, removed from ggml)", g.data(128));
    let mut g = Gguf::header(3, 1, 0);
    g.tensor("w", &[32], 0, 1 << 20);
    f("offset-past-end", "tensor data at 1 MiB in a small file", g.data(128));
    let mut g = Gguf::header(3, 1, 0);
    g.tensor("w", &[4], 0, 4);
    f("offset-misaligned", "tensor data at offset 4 (alignment 32)", g.data(128));
    let mut g = Gguf::header(3, 1, 0);
    g.tensor("w", &[4], 0, u64::MAX - 8);
    f("offset-overflow", "tensor offset near u64::MAX", g.data(128));
    let mut g = Gguf::header(3, 1, 0);
    g.tensor("w", &[31, 2], 8, 0);
    f("partial-block", "a Q8_0 row of 31 elements (blocks of 32)", g.data(128));
    let mut g = Gguf::header(3, 2, 0);
    g.tensor("a", &[32], 0, 0).tensor("b", &[32], 0, 64);
    f("overlap", "two tensors share bytes", g.data(128));
    let mut g = Gguf::header(3, 2, 0);
    g.tensor("a", &[8], 0, 0).tensor("a", &[8], 0, 32);
    f("duplicate-tensor", "two tensors called a", g.data(64));
    let mut g = Gguf::header(3, 1, 0);
    g.str(b"w\xff").u32(1).u64(8).u32(0).u64(0);
    f("tensor-name-not-utf8", "a tensor name that is not UTF-8", g.data(32));
    let mut g = Gguf::header(3, 2, 0);
    g.tensor("a", &[8], 0, 0).str(b"b").u32(2).u64(8);
    f("truncated-tensor-info", "the file ends inside the second tensor's dimensions", g.0.clone());
    let mut g = Gguf::header(3, 1, 0);
    g.tensor("a", &[64], 0, 0);
    f("data-truncated", "256 bytes of data declared, 100 present", g.data(100));
    let llama = |heads: u32, rows: u64| {
        let mut g = Gguf::header(3, 1, 2);
        g.kv_str("general.architecture", "llama").kv_u32("llama.attention.head_count", heads);
        g.tensor("blk.0.attn_q.weight", &[8, rows], 0, 0);
        g.data((8 * rows * 4) as usize)
    };
    f("llama-heads-zero", "Llama attn_q with head_count 0", llama(0, 8));
    f("llama-heads-uneven", "Llama attn_q of 8 rows over 3 heads", llama(3, 8));
    f("llama-heads-huge", "Llama attn_q with head_count u32::MAX", llama(u32::MAX, 8));
    f(
        "llama-heads-odd-width",
        "Llama attn_q of 8 rows over 8 heads (odd head width 1)",
        llama(8, 8),
    );
    let mut g = Gguf::header(3, 1, 2);
    g.kv_str("general.architecture", "llama").kv_u32("llama.attention.head_count", 2);
    g.tensor("blk.0.attn_q.weight", &[8, 0], 0, 0);
    f("llama-q-empty", "an empty Llama attn_q", g.data(32));
    let mut g = Gguf::header(3, 1, 2);
    g.kv_str("general.architecture", "llama").kv_u32("llama.attention.head_count", 2);
    g.tensor("blk.0.attn_q.weight", &[0, 1 << 40, 1 << 40, 1], 0, 0);
    f(
        "zero-dim-hides-overflow",
        "a Llama attn_q of dims [0, 2^40, 2^40, 1]: no elements, but rows x columns overflow",
        g.data(32),
    );
    c.file(
        "gguf/array-of-empty-arrays.gguf",
        "0,2",
        "an array of 4000 empty arrays (12 bytes each in the file) and no tensors: valid, though its metadata takes more memory than its bytes",
        &empty_arrays,
    );
}

/// The envelope cases: a signature problem is exit 1 (`INVALID`), input
/// that is no envelope or no weightmark statement is exit 2.
fn envelope(c: &mut Corpus, owner: &SecretKey) {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    let other = SecretKey::from_seed([0x77; 32]);
    let signed = |payload_type: &str, payload: &[u8], key: &SecretKey| Envelope {
        payload_type: payload_type.into(),
        payload: STANDARD.encode(payload),
        signatures: vec![EnvelopeSignature {
            keyid: key.public_key().key_id(),
            sig: STANDARD.encode(key.sign(&pae(payload_type, payload))),
        }],
    };
    let text = |e: &Envelope| {
        weightmark::provenance::envelope_to_string(e).unwrap_or_else(|e| panic!("{e}")).into_bytes()
    };
    let statement = |predicate_type: &str, predicate: serde_json::Value| {
        serde_json::json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [],
            "predicateType": predicate_type,
            "predicate": predicate,
        })
        .to_string()
        .into_bytes()
    };
    let release = "https://weightmark.dev/release/v1";
    let detection = "https://weightmark.dev/detection/v1";
    let good_payload = statement(release, serde_json::json!({}));
    let mut f = |name: &str, codes: &str, what: &str, bytes: Vec<u8>| {
        c.file(&format!("envelope/{name}.json"), codes, what, &bytes)
    };
    f("empty", "2", "an empty file", vec![]);
    f("not-json", "2", "plain text", b"hello\n".to_vec());
    f("array", "2", "a JSON array", b"[]".to_vec());
    f("object-empty", "2", "an empty object", b"{}".to_vec());
    f(
        "not-utf8",
        "2",
        "bytes that are not UTF-8 and no envelope fields",
        b"{\"a\":\"\xff\xfe\"}".to_vec(),
    );
    f("bomb", "2", "arrays nested 10000 deep", bomb(10_000).into_bytes());
    f(
        "bomb-in-object",
        "2",
        "a field holding arrays nested 10000 deep",
        format!(r#"{{"payload":{}}}"#, bomb(10_000)).into_bytes(),
    );
    f("only-payload", "2", "a payload and nothing else", br#"{"payload":"e30="}"#.to_vec());
    let env = signed(PAYLOAD_TYPE, &good_payload, owner);
    let mut v: serde_json::Value = serde_json::from_slice(&text(&env)).unwrap_or_default();
    v["signatures"] = serde_json::json!({});
    f(
        "signatures-object",
        "1",
        "signatures is an object, not an array",
        v.to_string().into_bytes(),
    );
    let mut v: serde_json::Value = serde_json::from_slice(&text(&env)).unwrap_or_default();
    v["payloadType"] = serde_json::json!(7);
    f("payload-type-number", "1", "payloadType is a number", v.to_string().into_bytes());
    let mut v: serde_json::Value = serde_json::from_slice(&text(&env)).unwrap_or_default();
    v["extra"] = serde_json::json!(1);
    f("unknown-field", "1", "an extra top-level field", v.to_string().into_bytes());
    let mut v: serde_json::Value = serde_json::from_slice(&text(&env)).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("payload");
    }
    f("missing-payload", "1", "no payload field", v.to_string().into_bytes());
    let mut v: serde_json::Value = serde_json::from_slice(&text(&env)).unwrap_or_default();
    v["signatures"][0]["sig"] = serde_json::json!("!!!not base64!!!");
    f("sig-not-base64", "1", "the signature is not base64", v.to_string().into_bytes());
    let mut v: serde_json::Value = serde_json::from_slice(&text(&env)).unwrap_or_default();
    v["signatures"][0]["sig"] = serde_json::json!(STANDARD.encode([1u8; 10]));
    f("sig-short", "1", "a 10-byte signature", v.to_string().into_bytes());
    let mut v: serde_json::Value = serde_json::from_slice(&text(&env)).unwrap_or_default();
    v["signatures"][0]["sig"] = serde_json::json!(STANDARD.encode([1u8; 64]));
    f("sig-wrong", "1", "a 64-byte signature of something else", v.to_string().into_bytes());
    let mut v: serde_json::Value = serde_json::from_slice(&text(&env)).unwrap_or_default();
    v["signatures"][0]["sig"] = serde_json::json!(STANDARD.encode([0xffu8; 64]));
    f(
        "sig-non-canonical",
        "1",
        "a 64-byte signature of all ones bits (not a canonical scalar)",
        v.to_string().into_bytes(),
    );
    let mut v: serde_json::Value = serde_json::from_slice(&text(&env)).unwrap_or_default();
    v["signatures"] = serde_json::json!([]);
    f("no-signatures", "1", "an empty signature list", v.to_string().into_bytes());
    let mut v: serde_json::Value = serde_json::from_slice(&text(&env)).unwrap_or_default();
    if let Some(o) = v["signatures"][0].as_object_mut() {
        o.remove("keyid");
    }
    v["signatures"][0]["sig"] = serde_json::json!(STANDARD.encode([1u8; 64]));
    f("keyid-absent-bad-sig", "1", "no keyid and a wrong signature", v.to_string().into_bytes());
    let mut v: serde_json::Value = serde_json::from_slice(&text(&env)).unwrap_or_default();
    v["payload"] = serde_json::json!("%%%");
    f("payload-not-base64", "1", "the payload is not base64", v.to_string().into_bytes());
    let mut v: serde_json::Value = serde_json::from_slice(&text(&env)).unwrap_or_default();
    v["payload"] = serde_json::json!(STANDARD.encode(b"{\"a\":2}"));
    f(
        "payload-tampered",
        "1",
        "a payload the signature does not cover",
        v.to_string().into_bytes(),
    );
    let mut v: serde_json::Value = serde_json::from_slice(&text(&env)).unwrap_or_default();
    v["payload"] = serde_json::json!(URL_SAFE_NO_PAD.encode(b"{\"a\":\"\xfb\xff\"}"));
    f(
        "payload-tampered-url-safe",
        "1",
        "an URL-safe base64 payload the signature does not cover",
        v.to_string().into_bytes(),
    );
    f(
        "other-signer",
        "1",
        "signed by another key",
        text(&signed(PAYLOAD_TYPE, &good_payload, &other)),
    );
    f(
        "wrong-payload-type",
        "1",
        "signed correctly under payloadType text/plain",
        text(&signed("text/plain", &good_payload, owner)),
    );
    let full = text(&env);
    f(
        "truncated",
        "2",
        "the envelope cut in half, before its signatures: no envelope",
        full[..full.len() / 2].to_vec(),
    );
    let cut = full.windows(5).position(|w| w == b"\"sig\"").map_or(full.len(), |i| i + 12);
    f(
        "truncated-in-signature",
        "1",
        "the envelope cut inside its signature: a corrupted envelope",
        full[..cut].to_vec(),
    );
    let mut bytes = full.clone();
    if let Some(i) = bytes.windows(5).position(|w| w == b"\"sig\"") {
        bytes[i + 10] = 0xff;
    }
    f("sig-not-utf8", "1", "a byte that is not UTF-8 inside the signature", bytes);
    let dup = String::from_utf8_lossy(&full).replacen(
        "\"payload\":",
        "\"payload\": \"e30=\", \"payload\":",
        1,
    );
    f("duplicate-field", "1", "payload given twice", dup.into_bytes());
    let ok = |payload: &[u8]| text(&signed(PAYLOAD_TYPE, payload, owner));
    f("signed-not-json", "2", "a valid signature over a payload that is not JSON", ok(b"not json"));
    f("signed-empty", "2", "a valid signature over an empty payload", ok(b""));
    f(
        "signed-unknown-type",
        "2",
        "a valid signature over a statement of another predicateType",
        ok(&statement("https://example.com/x", serde_json::json!({}))),
    );
    f(
        "signed-no-type",
        "2",
        "a valid signature over a statement without predicateType",
        ok(br#"{"_type":"https://in-toto.io/Statement/v1","subject":[]}"#),
    );
    f(
        "signed-release-empty",
        "2",
        "a valid signature over a release statement with an empty predicate",
        ok(&good_payload),
    );
    f(
        "signed-detection-empty",
        "2",
        "a valid signature over a detection statement with an empty predicate",
        ok(&statement(detection, serde_json::json!({}))),
    );
    f(
        "signed-bomb",
        "2",
        "a valid signature over arrays nested 10000 deep",
        ok(bomb(10_000).as_bytes()),
    );
    let mut predicate = release_predicate();
    predicate["tensors"] = serde_json::json!([{"name": "w", "dtype": "F32", "shape": [2, 2]}, {"name": "w", "dtype": "F32", "shape": [2, 2]}]);
    f(
        "signed-release-duplicate-tensor",
        "2",
        "a signed certificate listing a tensor twice",
        ok(&statement(release, predicate)),
    );
    let mut predicate = release_predicate();
    predicate["tensors"] = serde_json::json!([{"name": "w", "dtype": "F32", "shape": [-2, 2]}]);
    f(
        "signed-release-negative-shape",
        "2",
        "a signed certificate with a negative dimension",
        ok(&statement(release, predicate)),
    );
    let mut predicate = release_predicate();
    predicate["strength"] = serde_json::json!("strong");
    f(
        "signed-release-strength-string",
        "2",
        "a signed certificate whose strength is a string",
        ok(&statement(release, predicate)),
    );
    let mut predicate = release_predicate();
    predicate["marked_elements"] = serde_json::json!(-1);
    f(
        "signed-release-negative-count",
        "2",
        "a signed certificate with marked_elements -1",
        ok(&statement(release, predicate)),
    );
    let mut bad_subject = statement(release, release_predicate());
    bad_subject = String::from_utf8_lossy(&bad_subject)
        .replacen("\"subject\":[]", "\"subject\":{}", 1)
        .into_bytes();
    f(
        "signed-subject-object",
        "2",
        "a signed certificate whose subject is an object",
        ok(&bad_subject),
    );
}

/// A complete release predicate (scheme ss1) for the signed cases to spoil.
fn release_predicate() -> serde_json::Value {
    serde_json::json!({
        "scheme": "ss1", "strength": 0.01, "label": "l", "recipient": null,
        "mark_key_commitment": "00".repeat(32), "tensors": [], "marked_elements": 0,
        "tensor_digests": {}, "original_tensor_root": "00".repeat(32), "blind_z_at_release": 0.0,
        "signer": "x", "tool": {"name": "weightmark", "version": "0"}, "created": "2026-01-01T00:00:00Z"
    })
}

/// The config cases; the codes are those of `attack permute --what heads`
/// (which needs the head counts); informed `detect` may exit 1 (the config
/// is not needed to test) or 2 (it is refused), never anything else.
fn config(c: &mut Corpus) {
    let base = || {
        serde_json::json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 2048
        })
    };
    let mut f = |name: &str, codes: &str, what: &str, bytes: Vec<u8>| {
        c.file(&format!("config/{name}.json"), codes, what, &bytes)
    };
    let with = |key: &str, raw: &str| {
        let mut v = base();
        v[key] = serde_json::json!("@@");
        v.to_string().replace("\"@@\"", raw).into_bytes()
    };
    f("empty", "2", "an empty config.json", vec![]);
    f("not-json", "2", "plain text", b"llama\n".to_vec());
    f("array", "2", "a JSON array", b"[4]".to_vec());
    f("not-utf8", "2", "bytes that are not UTF-8", b"{\"model_type\":\"\xff\"}".to_vec());
    f("bomb", "2", "arrays nested 10000 deep", bomb(10_000).into_bytes());
    let mut v = base();
    if let Some(o) = v.as_object_mut() {
        o.remove("num_attention_heads");
    }
    f("heads-missing", "2", "no num_attention_heads", v.to_string().into_bytes());
    f("heads-zero", "2", "num_attention_heads 0", with("num_attention_heads", "0"));
    f("heads-2e40", "2", "num_attention_heads 2^40", with("num_attention_heads", "1099511627776"));
    f(
        "heads-u64-max",
        "2",
        "num_attention_heads u64::MAX",
        with("num_attention_heads", "18446744073709551615"),
    );
    f(
        "heads-2e64",
        "2",
        "num_attention_heads 2^64 (beyond u64)",
        with("num_attention_heads", "18446744073709551616"),
    );
    f(
        "heads-1e400",
        "2",
        "num_attention_heads 1e400 (beyond f64)",
        with("num_attention_heads", "1e400"),
    );
    f("heads-negative", "2", "num_attention_heads -4", with("num_attention_heads", "-4"));
    f("heads-float", "2", "num_attention_heads 4.5", with("num_attention_heads", "4.5"));
    f("heads-float-whole", "0,2", "num_attention_heads 4.0", with("num_attention_heads", "4.0"));
    f("heads-string", "2", "num_attention_heads \"4\"", with("num_attention_heads", "\"4\""));
    f("heads-null", "2", "num_attention_heads null", with("num_attention_heads", "null"));
    f(
        "heads-not-dividing",
        "2",
        "3 heads do not divide the hidden size 64",
        with("num_attention_heads", "3"),
    );
    f(
        "heads-odd-width",
        "0,2",
        "64 heads: head width 1, odd (RoPE pairs dimensions)",
        with("num_attention_heads", "64"),
    );
    f("kv-zero", "2", "num_key_value_heads 0", with("num_key_value_heads", "0"));
    f("kv-not-dividing", "2", "3 key/value heads for 4 heads", with("num_key_value_heads", "3"));
    f("kv-more-than-heads", "2", "8 key/value heads for 4 heads", with("num_key_value_heads", "8"));
    f("kv-2e40", "2", "num_key_value_heads 2^40", with("num_key_value_heads", "1099511627776"));
    f(
        "kv-negative",
        "0,2",
        "num_key_value_heads -2 (ignored today: the default is the head count)",
        with("num_key_value_heads", "-2"),
    );
    f("hidden-zero", "0,2", "hidden_size 0", with("hidden_size", "0"));
    f("hidden-2e62", "0,2", "hidden_size 2^62", with("hidden_size", "4611686018427387904"));
    f("layers-2e40", "0,2", "num_hidden_layers 2^40", with("num_hidden_layers", "1099511627776"));
    f("intermediate-zero", "0,2", "intermediate_size 0", with("intermediate_size", "0"));
}

fn main() {
    let root = std::env::args_os().nth(1).map(PathBuf::from).unwrap_or_else(|| {
        eprintln!("usage: make_malformed_corpus DIR");
        std::process::exit(2)
    });
    for sub in ["safetensors", "index", "gguf", "envelope", "config"] {
        let _ = std::fs::remove_dir_all(root.join(sub));
    }
    let owner = SecretKey::from_seed(CORPUS_OWNER_SEED);
    let mut c = Corpus { root: root.clone(), manifest: String::new() };
    safetensors(&mut c);
    index(&mut c);
    gguf(&mut c);
    envelope(&mut c, &owner);
    config(&mut c);
    let public = owner.public_key().to_file_string("2026-12-02T00:00:00Z");
    write(&root.join("owner.pub"), public.as_bytes());
    let header = "# Malformed-input corpus: PATH<TAB>EXIT CODES<TAB>WHAT. Written by\n\
                  # scripts/make-malformed-corpus; run by tests/malformed.rs.\n";
    write(&root.join("MANIFEST"), (header.to_string() + &c.manifest).as_bytes());
    let cases = c.manifest.lines().count();
    println!("{cases} cases written under {}", root.display());
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
