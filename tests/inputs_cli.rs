//! Untrusted inputs through the real binary (issue #14, points 3, 5 and 8):
//! side files that lie, inputs built to exhaust memory, and names built to
//! take over a terminal. Each command runs under a data-segment limit (what a
//! runaway allocation would exceed) and a timeout far above its normal time
//! (a hang detector, not a speed check).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, stdout, Scene};
use weightmark::synth::{gaussian_matrix, llama, write_file, LlamaShape, SynthTensor};
use weightmark::Dtype;

const MB: u64 = 1 << 20;

/// Runs the binary in `scene` with its data segment (heap and other private
/// writable memory, not the memory-mapped model files) limited to `data`
/// bytes; panics if it has not finished after `timeout`.
fn run_bounded(scene: &Scene, args: &[&str], data: u64, timeout: Duration) -> Output {
    let binary = env!("CARGO_BIN_EXE_weightmark");
    let mut script = format!("ulimit -d {} && exec \"$0\"", data / 1024);
    for i in 1..=args.len() {
        script.push_str(&format!(" \"${i}\""));
    }
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg(binary)
        .args(args)
        .current_dir(scene.dir.path())
        // A fixed thread count: every worker's stack counts against the limit.
        .env("RAYON_NUM_THREADS", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run weightmark: {e}"));
    let started = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} did not finish within {timeout:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap_or_else(|e| panic!("{e}"))
}

/// Exit 0, 1 or 2 with one clean message: no panic, no abort, no signal.
fn assert_clean(o: &Output, what: &str) {
    let err = stderr(o);
    assert!(
        matches!(o.status.code(), Some(0..=2)) && !err.contains("panicked"),
        "{what}: {:?}\n{}{err}",
        o.status,
        stdout(o)
    );
}

fn write_config(dir: &Path, shape: &LlamaShape, heads: serde_json::Value) {
    let config = serde_json::json!({
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": heads,
        "vocab_size": shape.vocab,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_lying_config_json_beside_the_suspect_never_panics_aborts_or_hangs() {
    let scene = Scene::new();
    let shape = LlamaShape::TINY;
    let original = scene.path("original");
    std::fs::create_dir_all(&original).unwrap_or_else(|e| panic!("{e}"));
    write_file(&original.join("model.safetensors"), &llama(&shape, Dtype::F32, 1), None)
        .unwrap_or_else(|e| panic!("{e}"));
    scene.keygen("owner");
    // An unrelated model of the same shape: nothing of the key in it.
    let suspect = scene.path("suspect");
    std::fs::create_dir_all(&suspect).unwrap_or_else(|e| panic!("{e}"));
    write_file(&suspect.join("model.safetensors"), &llama(&shape, Dtype::F32, 2), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let detect =
        ["detect", "-k", "owner.key", "--label", "v1", "--original", "original", "suspect"];
    let config = suspect.join("config.json");
    // Zero heads divided by; 2^40 heads allocated for; a config that is a
    // FIFO nobody writes to; one that is /dev/zero.
    type Make<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Make)> = vec![
        ("zero heads", Box::new(|| write_config(&suspect, &shape, serde_json::json!(0)))),
        ("2^40 heads", Box::new(|| write_config(&suspect, &shape, serde_json::json!(1u64 << 40)))),
        (
            "a FIFO",
            Box::new(|| {
                let made = Command::new("mkfifo").arg(&config).status();
                assert!(made.is_ok_and(|s| s.success()), "mkfifo");
            }),
        ),
        (
            "/dev/zero",
            Box::new(|| {
                std::os::unix::fs::symlink("/dev/zero", &config).unwrap_or_else(|e| panic!("{e}"))
            }),
        ),
    ];
    for (what, make) in cases {
        let _ = std::fs::remove_file(&config);
        make();
        let o = run_bounded(&scene, &detect, 1024 * MB, Duration::from_secs(120));
        assert_clean(&o, what);
        assert_eq!(o.status.code(), Some(1), "{what}: an unmarked suspect\n{}", stderr(&o));
    }
}

/// A GGUF file whose metadata holds one array of `count` one-byte values.
fn gguf_with_big_array(count: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&2u64.to_le_bytes()); // metadata entries
    let key = |b: &mut Vec<u8>, k: &str| {
        b.extend_from_slice(&(k.len() as u64).to_le_bytes());
        b.extend_from_slice(k.as_bytes());
    };
    key(&mut b, "general.architecture");
    b.extend_from_slice(&8u32.to_le_bytes());
    key(&mut b, "llama");
    key(&mut b, "big.array");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // u8 elements
    b.extend_from_slice(&count.to_le_bytes());
    b.extend(std::iter::repeat_n(7u8, count as usize));
    key(&mut b, "w");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&8u64.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // F32
    b.extend_from_slice(&0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.extend(std::iter::repeat_n(0u8, 32));
    b
}

#[test]
fn a_big_gguf_metadata_array_costs_about_its_size_in_memory() {
    let scene = Scene::new();
    // 24 MB of one-byte values: 768 MB as one 32-byte value each.
    std::fs::write(scene.path("m.gguf"), gguf_with_big_array(24 * MB))
        .unwrap_or_else(|e| panic!("{e}"));
    let o = run_bounded(&scene, &["inspect", "m.gguf"], 256 * MB, Duration::from_secs(120));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("1 tensors"), "{}", stdout(&o));
}

#[test]
fn one_long_row_is_marked_and_tested_in_memory_near_its_size() {
    let scene = Scene::new();
    // An F32 [1, 6M] tensor: 24 MB. Whole-row work buffers took over ten times that.
    let n = 6 << 20;
    let t = gaussian_matrix("long", 1, n, Dtype::F32, 3);
    write_file(&scene.path("m.safetensors"), &[t], None).unwrap_or_else(|e| panic!("{e}"));
    scene.keygen("owner");
    let timeout = Duration::from_secs(300);
    // Bounds: ss1 works in pieces of the row; ss2 also keeps a few numbers
    // per column (its magnitude profiles: several times the row in f64),
    // and its embed predicts the informed statistic.
    for (scheme, limit) in [("ss1", 4 * 24 * MB + 64 * MB), ("ss2", 10 * 24 * MB + 64 * MB)] {
        let out = format!("{scheme}.safetensors");
        let cert = format!("{out}.cert.json");
        let embed = ["embed", "-k", "owner.key", "--scheme", scheme, "m.safetensors", "-o", &out];
        let o = run_bounded(&scene, &embed, limit, timeout);
        assert_eq!(o.status.code(), Some(0), "{scheme} embed: {}", stderr(&o));
        let detect = ["detect", "-k", "owner.key", "--cert", &cert, &out];
        let informed = [&detect[..5], &["--original", "m.safetensors", &out]].concat();
        for (mode, args) in [("blind", &detect[..]), ("informed", &informed[..])] {
            let o = run_bounded(&scene, args, limit, timeout);
            assert_clean(&o, &format!("{scheme} {mode}"));
            // ss2 balances each column by its own magnitude: a single row
            // leaves it nothing to see. ss1 finds its mark informed (blind,
            // 6.3M elements at the default strength give z near the
            // threshold, so its verdict depends on the key).
            if scheme == "ss1" && mode == "informed" {
                assert_eq!(o.status.code(), Some(0), "{scheme} {mode}: {}", stdout(&o));
            }
        }
    }
}

#[test]
fn a_rotated_suspect_is_realigned_in_less_memory_than_the_model() {
    let scene = Scene::new();
    // 142 MB of F32, no tensor above 8 MB; rotated, every matrix changes.
    let shape = LlamaShape {
        vocab: 2048,
        hidden: 512,
        intermediate: 2048,
        layers: 8,
        heads: 8,
        kv_heads: 8,
    };
    let model = scene.path("m.safetensors");
    weightmark::synth::write_llama_file(&model, &shape, Dtype::F32, 3)
        .unwrap_or_else(|e| panic!("{e}"));
    let size = std::fs::metadata(&model).map(|m| m.len()).unwrap_or_else(|e| panic!("{e}"));
    scene.keygen("owner");
    scene.ok(&["embed", "-k", "owner.key", "m.safetensors", "-o", "marked.safetensors"]);
    scene.ok(&["attack", "rotate", "marked.safetensors", "-o", "rot.safetensors", "--seed", "3"]);
    // Realigning held the rotated suspect and the folded original in
    // memory: twice the model (331 MB here). Both are now read from a
    // temporary file, one matrix in memory at a time.
    let cert = "marked.safetensors.cert.json";
    let args = ["detect", "-k", "owner.key", "--cert", cert, "--original", "m.safetensors"];
    let args = [&args[..], &["rot.safetensors", "--json"]].concat();
    let o = run_bounded(&scene, &args, size, Duration::from_secs(300));
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)));
    let realigned = report["realigned"].to_string();
    assert!(realigned.contains("rotated"), "{realigned}");
    assert!(report["z"].as_f64().is_some_and(|z| z > 100.0), "{report}");
}

/// A safetensors file with one small F32 tensor of the given name.
fn tensor(name: &str) -> SynthTensor {
    SynthTensor { name: name.into(), dtype: Dtype::F32, shape: vec![2], data: vec![0; 8] }
}

#[test]
fn names_and_paths_from_inputs_cannot_write_control_characters_to_the_terminal() {
    let scene = Scene::new();
    let evil = "w\x1b]0;owned\x07\x1b[2J\nFAKE LINE\u{202e}";
    write_file(&scene.path("m.safetensors"), &[tensor(evil), tensor("ok")], None)
        .unwrap_or_else(|e| panic!("{e}"));
    let o = scene.run(&["inspect", "m.safetensors"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(!out.contains('\x1b') && !out.contains('\x07') && !out.contains('\u{202e}'), "{out:?}");
    assert!(!out.lines().any(|l| l.starts_with("FAKE LINE")), "{out:?}");
    assert!(out.contains("w\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\nFAKE LINE\\u{202e}"), "{out:?}");
    // --json: the same name, off the terminal and still valid JSON.
    let o = scene.run(&["inspect", "m.safetensors", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(!out.contains('\x1b') && !out.contains('\u{202e}'), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["tensors"][0]["name"], evil, "{out}");
    // A path in an error message, printed by main.
    let bad = "bad\x1b[31m\n.safetensors";
    std::fs::write(scene.path(bad), [1u8, 2, 3]).unwrap_or_else(|e| panic!("{e}"));
    let o = scene.run(&["inspect", bad]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(!err.contains('\x1b') && err.lines().count() == 1, "{err:?}");
    assert!(err.contains("bad\\u{1b}[31m\\n.safetensors") && err.contains("too short"), "{err:?}");
}

#[test]
fn a_shard_that_is_a_directory_is_named_as_one() {
    let scene = Scene::new();
    let dir = scene.path("sharded");
    std::fs::create_dir_all(dir.join("model-00002-of-00002.safetensors"))
        .unwrap_or_else(|e| panic!("{e}"));
    write_file(&dir.join("model-00001-of-00002.safetensors"), &[tensor("a")], None)
        .unwrap_or_else(|e| panic!("{e}"));
    let index = serde_json::json!({"weight_map": {
        "a": "model-00001-of-00002.safetensors",
        "b": "model-00002-of-00002.safetensors",
    }});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let o = scene.run(&["inspect", "sharded"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("model-00002-of-00002.safetensors: is a directory, not a regular file"),
        "{err}"
    );
    assert!(!err.contains("No such device"), "{err}");
}
