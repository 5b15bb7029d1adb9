//! Untrusted inputs through the library (issue #14, points 3 and 5): the
//! numbers of a suspect's `config.json` are checked against its tensors, and
//! a shard index is checked in time linear in its size.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use weightmark::synth::{llama, write_file, write_sharded, LlamaShape, SynthTensor};
use weightmark::{Dtype, Error, LlamaConfig, Model};

fn ok<T>(r: weightmark::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `f` on another thread; panics if it takes longer than `limit` (a
/// hang detector set far above the normal time, not a speed check).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
}

#[test]
fn a_shard_index_of_200k_tensors_is_checked_in_linear_time() {
    // Checking each indexed tensor by a search of its shard's list was
    // quadratic: 80k tensors in one shard took two minutes, 200k take about
    // fifteen. Hashed look-ups take well under a second.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let tensors: Vec<SynthTensor> = (0..200_000)
        .map(|i| SynthTensor {
            name: format!("t.{i:06}"),
            dtype: Dtype::U8,
            shape: vec![1],
            data: vec![i as u8],
        })
        .collect();
    ok(write_sharded(dir.path(), &tensors, 1));
    let path = dir.path().to_path_buf();
    let count =
        within(Duration::from_secs(90), move || Model::open(&path).map(|m| m.tensor_count()));
    assert_eq!(ok(count), 200_000);
}

fn write_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let s = LlamaShape::TINY;
    let mut config = serde_json::json!({
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "vocab_size": s.vocab,
        "rms_norm_eps": 1e-5,
    });
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn every_number_of_a_config_json_is_checked_against_the_tensors_it_describes() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    ok(write_file(
        &dir.path().join("model.safetensors"),
        &llama(&LlamaShape::TINY, Dtype::F32, 1),
        None,
    ));
    let model = ok(Model::open(dir.path()));
    write_config(dir.path(), |_| {});
    let config = ok(LlamaConfig::for_model(&model));
    assert_eq!((config.heads, config.kv_heads, config.hidden), (4, 2, 64));
    let cases: [(&str, serde_json::Value, &str); 12] = [
        ("num_attention_heads", serde_json::json!(0), "'num_attention_heads' is 0"),
        ("num_attention_heads", serde_json::json!(1u64 << 40), "must be from 1"),
        ("num_attention_heads", serde_json::json!(3), "cannot be grouped"),
        ("num_attention_heads", serde_json::json!(8), "does not fit"),
        ("num_attention_heads", serde_json::json!("4"), "not a whole number"),
        ("num_key_value_heads", serde_json::json!(0), "'num_key_value_heads' is 0"),
        ("num_key_value_heads", serde_json::json!(4), "k_proj"),
        ("num_hidden_layers", serde_json::json!(1), "is in layer 1"),
        ("hidden_size", serde_json::json!(65), "does not fit"),
        ("intermediate_size", serde_json::json!(171), "does not fit"),
        ("vocab_size", serde_json::json!(255), "vocabulary 255"),
        ("rms_norm_eps", serde_json::json!(-1.0), "not a positive number"),
    ];
    for (key, value, says) in cases {
        write_config(dir.path(), |c| c[key] = value.clone());
        let err = LlamaConfig::for_model(&model).err();
        let text = err.as_ref().map(ToString::to_string).unwrap_or_default();
        assert!(
            matches!(&err, Some(Error::NotAModel { path, .. }) if path.ends_with("config.json")),
            "{key} = {value}: {err:?}"
        );
        assert!(text.contains(says), "{key} = {value}: {text}");
    }
}

#[cfg(unix)]
#[test]
fn a_config_json_that_is_a_fifo_or_a_device_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    ok(write_file(
        &dir.path().join("model.safetensors"),
        &llama(&LlamaShape::TINY, Dtype::F32, 1),
        None,
    ));
    let model = ok(Model::open(dir.path()));
    let config = dir.path().join("config.json");
    let made = std::process::Command::new("mkfifo").arg(&config).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo");
    let path = dir.path().to_path_buf();
    let err = within(Duration::from_secs(60), move || {
        let model = Model::open(&path).map_err(|e| e.to_string())?;
        LlamaConfig::for_model(&model).map(|_| ()).map_err(|e| e.to_string())
    });
    assert!(err.as_ref().is_err_and(|e| e.contains("FIFO")), "{err:?}");
    std::fs::remove_file(&config).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink("/dev/zero", &config).unwrap_or_else(|e| panic!("{e}"));
    let err = LlamaConfig::for_model(&model).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("is a device"), "{err}");
}

#[test]
fn the_real_smollm2_configs_pass_the_checks() {
    // SmolLM2: 9 query heads over 3 key/value heads of width 64, tied embeddings.
    for dir in ["smollm2-f16", "smollm2-bf16-sharded"] {
        let Some(path) = common::fixture(dir) else { continue };
        let model = ok(Model::open(&path));
        let config = ok(LlamaConfig::for_model(&model));
        assert_eq!((config.heads, config.kv_heads, config.layers), (9, 3, 30), "{dir}");
    }
}
