//! The malformed-input corpus (`tests/malformed/`, listed in its `MANIFEST`,
//! written by `scripts/make-malformed-corpus`) run through the real binary,
//! one process per case, under an address-space limit and a timeout far
//! above normal (a hang detector, not a speed check). Every case must end
//! with one of the exit codes its manifest line allows, never by a signal or
//! a panic; an input error (exit 2) is one line on stderr naming the input;
//! a signature problem (`verify`, exit 1) is one `INVALID` line on stdout.
//! The fuzz targets (`fuzz/`, `scripts/fuzz`) start from the same files.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weightmark::synth::{llama, write_file, LlamaShape};
use weightmark::Dtype;

/// Address space a case may use (KiB, for `ulimit -v`): far above what a
/// small input needs, far below what an allocation taken from an unchecked
/// count would ask for.
const ADDRESS_SPACE_KIB: u64 = 2 << 20;

/// A case that runs longer than this hangs.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Cases that fail on this branch because their fix belongs to another part
/// of issue #14; the test fails when one of them passes, so that the mark is
/// removed once the fix is merged. (case, command, why)
const KNOWN_FAILURES: &[(&str, &str, &str)] = &[];

/// One line of the manifest.
struct Case {
    path: String,
    codes: Vec<i32>,
    what: String,
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/malformed")
}

fn manifest() -> Vec<Case> {
    let text = std::fs::read_to_string(corpus().join("MANIFEST"))
        .unwrap_or_else(|e| panic!("tests/malformed/MANIFEST: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.splitn(3, '\t');
            let path = parts.next().unwrap_or_default().to_string();
            let codes = parts
                .next()
                .unwrap_or_default()
                .split(',')
                .map(|c| c.parse().unwrap_or_else(|_| panic!("MANIFEST: bad codes in {l:?}")))
                .collect();
            Case { path, codes, what: parts.next().unwrap_or_default().to_string() }
        })
        .collect()
}

/// What one run of the binary did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs the binary with `args` under the address-space limit and the timeout.
fn run(args: &[&str], dir: &Path) -> Run {
    let binary = env!("CARGO_BIN_EXE_weightmark");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {ADDRESS_SPACE_KIB} && exec \"$0\" \"$@\""))
        .arg(binary)
        .args(args)
        .current_dir(dir)
        // Few threads and malloc arenas: each reserves address space.
        .env("RAYON_NUM_THREADS", "2")
        .env("MALLOC_ARENA_MAX", "2")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run weightmark: {e}"));
    let start = Instant::now();
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let readers = [
        std::thread::spawn(move || read_all(out.as_mut())),
        std::thread::spawn(move || read_all(err.as_mut())),
    ];
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if start.elapsed() > TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("waiting for weightmark: {e}"),
        }
    };
    let [stdout, stderr] = readers.map(|r| r.join().unwrap_or_default());
    Run { code: status.and_then(|s| s.code()), stdout, stderr, elapsed: start.elapsed() }
}

fn read_all(pipe: Option<&mut impl Read>) -> String {
    let mut bytes = Vec::new();
    if let Some(p) = pipe {
        let _ = p.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Checks one run against the allowed codes; `names` are the paths of which
/// an error message must contain one.
fn check(run: &Run, codes: &[i32], names: &[&str]) -> Result<(), String> {
    let said = format!("stdout {:?}, stderr {:?}", run.stdout, run.stderr);
    let Some(code) = run.code else {
        return Err(if run.elapsed > TIMEOUT {
            format!("still running after {TIMEOUT:?}; {said}")
        } else {
            format!("killed by a signal (abort or out of memory); {said}")
        });
    };
    if run.stderr.contains("panicked") || run.stderr.contains("memory allocation") {
        return Err(format!("panicked; {said}"));
    }
    if !codes.contains(&code) {
        return Err(format!("exit {code}, expected one of {codes:?}; {said}"));
    }
    let one_line =
        |text: &str| text.ends_with('\n') && text.trim_end_matches('\n').lines().count() == 1;
    let clean = |text: &str| !text.trim_end_matches('\n').chars().any(char::is_control);
    match code {
        2 => {
            if !one_line(&run.stderr) || !run.stderr.starts_with("weightmark: error: ") {
                return Err(format!("exit 2 without one error line on stderr; {said}"));
            }
            if !clean(&run.stderr) {
                return Err(format!("control characters in the error line; {said}"));
            }
            if !names.iter().any(|n| run.stderr.contains(n)) {
                return Err(format!("the error names none of {names:?}; {said}"));
            }
        }
        1 if run.stdout.starts_with("INVALID: ")
            && (!one_line(&run.stdout) || !run.stderr.is_empty() || !clean(&run.stdout)) =>
        {
            return Err(format!("exit 1 without one INVALID line; {said}"));
        }
        _ => {}
    }
    Ok(())
}

/// Where the config cases run: an owner key, a suspect, and a tiny Llama
/// model written once and copied beside each config.
struct ConfigScene {
    scene: common::Scene,
    model: Vec<u8>,
}

impl ConfigScene {
    fn new() -> ConfigScene {
        let scene = common::Scene::new();
        scene.keygen("owner");
        // The suspect is the original with its lowest mantissa bits changed:
        // every head matches, so re-alignment goes through all of its steps
        // with the config's counts, and there is a difference to test.
        let mut tensors = llama(&LlamaShape::TINY, Dtype::F32, 1);
        let original = scene.path("original.safetensors");
        write_file(&original, &tensors, None).unwrap_or_else(|e| panic!("{e}"));
        for t in &mut tensors {
            t.data.chunks_mut(4).for_each(|x| x[0] ^= 0b101);
        }
        write_file(&scene.path("suspect.safetensors"), &tensors, None)
            .unwrap_or_else(|e| panic!("{e}"));
        let model = std::fs::read(&original).unwrap_or_else(|e| panic!("{e}"));
        ConfigScene { scene, model }
    }

    /// Runs a config case through `attack permute --what heads` and informed
    /// `detect`.
    fn run(&self, i: usize, case: &Case, config: &Path) -> Vec<(&'static str, Result<(), String>)> {
        let dir = self.scene.path(&format!("case{i}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("model.safetensors"), &self.model)
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(config, dir.join("config.json")).unwrap_or_else(|e| panic!("{e}"));
        let model = dir.to_string_lossy().into_owned();
        let out = self.scene.path(&format!("out{i}")).to_string_lossy().into_owned();
        let base = self.scene.dir.path();
        let permute = run(&["attack", "permute", "--what", "heads", &model, "-o", &out], base);
        let detect = run(
            &[
                "detect",
                "-k",
                "owner.key",
                "--label",
                "l",
                "--original",
                &model,
                "suspect.safetensors",
            ],
            base,
        );
        vec![
            ("permute", check(&permute, &case.codes, &[&model])),
            ("detect", check(&detect, &[1, 2], &[&model])),
        ]
    }
}

#[test]
fn no_malformed_input_crashes_hangs_or_is_reported_unclearly() {
    let cases = manifest();
    assert!(cases.len() >= 100, "the corpus has {} cases, fewer than 100", cases.len());
    let root = corpus();
    let public = root.join("owner.pub").to_string_lossy().into_owned();
    let config = ConfigScene::new();
    let work = common::Scene::new();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
    let results: Vec<(usize, &'static str, Result<(), String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(case) = cases.get(i) else { break };
                        let path = root.join(&case.path);
                        let shown = path.to_string_lossy().into_owned();
                        assert!(path.exists(), "MANIFEST lists {} which does not exist", case.path);
                        let dir = work.dir.path();
                        let results: Vec<(&'static str, Result<(), String>)> =
                            match case.path.split('/').next() {
                                Some("safetensors" | "gguf" | "index") => {
                                    let r = run(&["inspect", "--no-digests", &shown], dir);
                                    vec![("inspect", check(&r, &case.codes, &[&shown]))]
                                }
                                Some("envelope") => {
                                    let r = run(&["verify", &shown, "--pub", &public], dir);
                                    vec![("verify", check(&r, &case.codes, &[&shown]))]
                                }
                                Some("config") => config.run(i, case, &path),
                                _ => panic!("MANIFEST: {} is in no known folder", case.path),
                            };
                        out.extend(results.into_iter().map(|(c, r)| (i, c, r)));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut problems = Vec::new();
    for (i, command, result) in results {
        let case = &cases[i];
        let known = KNOWN_FAILURES.iter().find(|(p, c, _)| *p == case.path && *c == command);
        match (result, known) {
            (Err(e), None) => {
                problems.push(format!("{} ({}), {command}: {e}", case.path, case.what))
            }
            (Ok(()), Some((_, _, why))) => problems.push(format!(
                "{} ({command}) now passes: remove it from KNOWN_FAILURES ({why})",
                case.path
            )),
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn every_corpus_file_is_a_listed_case() {
    let root = corpus();
    let listed: std::collections::HashSet<String> =
        manifest().into_iter().map(|c| c.path).collect();
    for folder in ["safetensors", "gguf", "envelope", "config", "index"] {
        for entry in std::fs::read_dir(root.join(folder)).unwrap_or_else(|e| panic!("{e}")) {
            let name = entry.map(|e| e.file_name().to_string_lossy().into_owned());
            let rel = format!("{folder}/{}", name.unwrap_or_default());
            assert!(listed.contains(&rel), "{rel} is not in tests/malformed/MANIFEST");
        }
    }
}
