//! The CI smoke pass of the fuzz targets, on stable Rust: every file of the
//! malformed-input corpus (`tests/malformed/`) and a fixed number of seeded
//! mutations of each (bit flips, interesting bytes, cuts, repeats, splices)
//! go through the same entry points as the cargo-fuzz targets
//! (`weightmark::fuzzing`, `fuzz/`). None may panic. The long runs are
//! `scripts/fuzz` (docs/fuzzing.md); this one takes seconds.

use std::path::{Path, PathBuf};

use weightmark::fuzzing;

/// Mutations tried per corpus file.
const MUTATIONS: usize = 200;

fn corpus(folder: &str) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/malformed").join(folder);
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    assert!(!files.is_empty(), "no corpus files under {}", root.display());
    files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())))
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.is_dir() {
            collect(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `seed` (spliced with `other` now and then).
fn mutate(seed: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len());
        match rng.below(7) {
            0 if !v.is_empty() => v[at] ^= 1 << rng.below(8),
            1 if !v.is_empty() => {
                const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, b'[', b'"', b'9'];
                v[at] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => v.truncate(at),
            3 if at + 8 <= v.len() => {
                // A little-endian length or count made huge or zero.
                let value: u64 = [0, u64::MAX, 1 << 40, 1 << 63, 1 << 20][rng.below(5)];
                v[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            4 => {
                let end = (at + 1 + rng.below(64)).min(v.len());
                let chunk = v[at..end].to_vec();
                v.splice(
                    at..at,
                    chunk.iter().copied().cycle().take(chunk.len() * (1 + rng.below(8))),
                );
            }
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
            _ => v.insert(at.min(v.len()), rng.next() as u8),
        }
    }
    v
}

/// Runs `target` on every corpus file of `folders` and on mutations of each.
fn smoke(folders: &[&str], target: fn(&[u8]) -> bool) -> usize {
    let seeds: Vec<Vec<u8>> = folders.iter().flat_map(|f| corpus(f)).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut runs = 0;
    for (i, seed) in seeds.iter().enumerate() {
        let _ = target(seed);
        let other = &seeds[(i + 1) % seeds.len()];
        for _ in 0..MUTATIONS {
            let input = mutate(seed, other, &mut rng);
            let _ = target(&input);
            runs += 1;
        }
    }
    runs
}

#[test]
fn safetensors_headers_and_indexes_never_panic() {
    assert!(smoke(&["safetensors", "index"], fuzzing::safetensors) > 1000);
}

#[test]
fn gguf_files_never_panic() {
    assert!(smoke(&["gguf"], fuzzing::gguf) > 1000);
}

#[test]
fn envelopes_and_statements_never_panic() {
    assert!(smoke(&["envelope"], fuzzing::envelope) > 1000);
}

#[test]
fn config_files_never_panic() {
    assert!(smoke(&["config"], fuzzing::llama_config) > 1000);
}
