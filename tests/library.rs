//! End-to-end tests of the library on synthetic models: detection in every
//! markable dtype, byte-for-byte pass-through, determinism across thread
//! counts, sharded layouts, and reporting of missing tensors.

mod common;

use std::path::Path;

use weightmark::synth::{llama, write_file, write_sharded, LlamaShape};
use weightmark::{
    detect, embed, DetectOptions, Detection, Dtype, EmbedOptions, EmbedReport, Model, NoProgress,
    SecretKey, Selection, Target, DEFAULT_STRENGTH,
};

use common::{mixed_metadata, mixed_tensors, write_llama, SHAPE_20M};

const CREATED: &str = "2026-11-28T00:00:00Z";

fn options(label: &str, selection: Selection) -> EmbedOptions<'static> {
    EmbedOptions {
        scheme: weightmark::Scheme::Ss1,
        strength: Some(DEFAULT_STRENGTH),
        label: label.to_string(),
        recipient: None,
        selection,
        created: CREATED.to_string(),
        progress: &NoProgress,
        overwrite: weightmark::Overwrite::Refuse,
        allocation: weightmark::Allocation::Uniform,
        recipient_code: weightmark::RecipientCode::Independent,
        recipient_share: None,
    }
}

fn mark(input: &Path, output: &Path, key: &SecretKey) -> EmbedReport {
    let model = Model::open(input).unwrap_or_else(|e| panic!("{e}"));
    embed(&model, output, key, &options("release", Selection::Default))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn find(suspect: &Path, original: Option<&Path>, key: &SecretKey) -> Detection {
    let suspect = Model::open(suspect).unwrap_or_else(|e| panic!("{e}"));
    let original = original.map(|o| Model::open(o).unwrap_or_else(|e| panic!("{e}")));
    let mark_key = key.mark_key("release", None);
    let target = Target::ss1(mark_key.clone(), None);
    detect(
        &suspect,
        original.as_ref(),
        &target,
        &DetectOptions { threshold_p: 1e-9, progress: &NoProgress },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_markable_dtype_is_found_blind_at_default_strength() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = SecretKey::from_seed([11; 32]);
    assert!(SHAPE_20M.parameters() >= 20_000_000);
    for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64] {
        let original =
            write_llama(dir.path(), &format!("orig-{dtype}.safetensors"), &SHAPE_20M, dtype, 5);
        let marked = dir.path().join(format!("marked-{dtype}.safetensors"));
        let report = mark(&original, &marked, &key);
        assert!(
            report.fidelity.relative_rms_change() <= 0.01,
            "{dtype}: change {}",
            report.fidelity.relative_rms_change()
        );

        let blind = find(&marked, None, &key);
        let informed = find(&marked, Some(&original), &key);
        let unmarked = find(&original, None, &key);
        eprintln!(
            "{dtype}: blind z {:.2}, informed z {:.1}, unmarked z {:.2}, change {:.4}",
            blind.z,
            informed.z,
            unmarked.z,
            report.fidelity.relative_rms_change()
        );
        assert!(blind.detected && blind.z >= 10.0, "{dtype}: blind z {}", blind.z);
        assert!(
            informed.detected && informed.z >= 10.0 * blind.z,
            "{dtype}: informed z {} vs blind {}",
            informed.z,
            blind.z
        );
        assert!(!unmarked.detected && unmarked.z < 6.0, "{dtype}: unmarked z {}", unmarked.z);
        // The z measured at embedding time is the blind z of the output.
        assert!((report.blind.z() - blind.z).abs() < 1e-6, "{dtype}");
        std::fs::remove_file(&original).ok();
        std::fs::remove_file(&marked).ok();
    }
}

#[test]
fn unselected_tensors_metadata_and_order_pass_through_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let input = dir.path().join("mixed.safetensors");
    write_file(&input, &mixed_tensors(), Some(&mixed_metadata())).unwrap_or_else(|e| panic!("{e}"));
    let output = dir.path().join("out.safetensors");
    let report = mark(&input, &output, &SecretKey::from_seed([1; 32]));
    let names: Vec<&str> = report.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["z.first.weight", "m.second.weight"]);

    let a = std::fs::read(&input).unwrap_or_default();
    let b = std::fs::read(&output).unwrap_or_default();
    let header_len = u64::from_le_bytes(a[..8].try_into().unwrap_or_default()) as usize + 8;
    assert_eq!(a.len(), b.len());
    assert_eq!(a[..header_len], b[..header_len], "header (metadata, order, offsets) changed");

    let before = safetensors::SafeTensors::deserialize(&a).unwrap_or_else(|e| panic!("{e}"));
    let after = safetensors::SafeTensors::deserialize(&b)
        .unwrap_or_else(|e| panic!("output does not load: {e}"));
    for name in ["embeddings.position_ids", "mask", "a.small.weight", "norm.weight"] {
        let x = before.tensor(name).unwrap_or_else(|e| panic!("{e}"));
        let y = after.tensor(name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(x.data(), y.data(), "{name} changed");
        assert_eq!(x.dtype(), y.dtype());
    }
    for name in names {
        let x = before.tensor(name).unwrap_or_else(|e| panic!("{e}"));
        let y = after.tensor(name).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(x.data(), y.data(), "{name} was not marked");
    }
}

#[test]
fn output_is_byte_identical_whatever_the_thread_count() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let shape = LlamaShape {
        vocab: 2000,
        hidden: 256,
        intermediate: 688,
        layers: 2,
        heads: 4,
        kv_heads: 2,
    };
    let input = write_llama(dir.path(), "in.safetensors", &shape, Dtype::BF16, 3);
    let key = SecretKey::from_seed([2; 32]);
    let mut outputs = Vec::new();
    for threads in [1, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        // Same file name in both runs: the certificate records it.
        let sub = dir.path().join(format!("threads-{threads}"));
        std::fs::create_dir_all(&sub).unwrap_or_else(|e| panic!("{e}"));
        let out = sub.join("out.safetensors");
        let report = pool.install(|| mark(&input, &out, &key));
        let cert = serde_json::to_string(&report.certificate).unwrap_or_default();
        outputs.push((std::fs::read(&out).unwrap_or_default(), cert, report.blind));
    }
    assert!(outputs[0].0 == outputs[1].0, "marked bytes differ between 1 and 4 threads");
    assert_eq!(outputs[0].1, outputs[1].1, "certificates differ");
    assert_eq!(outputs[0].2, outputs[1].2, "statistics differ");
}

#[test]
fn sharded_input_gives_sharded_output_with_a_valid_index() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let input = dir.path().join("sharded");
    let shape = LlamaShape {
        vocab: 1000,
        hidden: 128,
        intermediate: 344,
        layers: 3,
        heads: 4,
        kv_heads: 2,
    };
    write_sharded(&input, &llama(&shape, Dtype::F16, 9), 3).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(input.join("config.json"), "{\"model_type\":\"llama\"}")
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(input.join("pytorch_model.bin"), b"unmarked weights")
        .unwrap_or_else(|e| panic!("{e}"));
    let output = dir.path().join("marked");
    let key = SecretKey::from_seed([4; 32]);
    let report = mark(&input, &output, &key);

    let mut names: Vec<String> = std::fs::read_dir(&output)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "config.json",
            "model-00001-of-00003.safetensors",
            "model-00002-of-00003.safetensors",
            "model-00003-of-00003.safetensors",
            "model.safetensors.index.json"
        ]
    );
    let skipped: Vec<&str> = report.written.skipped.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(skipped, ["pytorch_model.bin"]);
    let index_in = std::fs::read(input.join("model.safetensors.index.json")).unwrap_or_default();
    let index_out = std::fs::read(output.join("model.safetensors.index.json")).unwrap_or_default();
    assert_eq!(index_in, index_out);
    let index: serde_json::Value = serde_json::from_slice(&index_out).unwrap_or_default();
    let map = index["weight_map"].as_object().cloned().unwrap_or_default();
    for (tensor, file) in &map {
        let bytes =
            std::fs::read(output.join(file.as_str().unwrap_or_default())).unwrap_or_default();
        let st =
            safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(st.tensor(tensor).is_ok(), "{tensor} not in {file}");
    }
    let reopened = Model::open(&output).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reopened.layout, weightmark::Layout::DirectorySharded);
    let informed = find(&output, Some(&input), &key);
    assert!(informed.detected, "informed z {}", informed.z);
}

#[test]
fn missing_and_reshaped_tensors_are_named_and_the_rest_still_tested() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let shape = LlamaShape {
        vocab: 4000,
        hidden: 256,
        intermediate: 688,
        layers: 4,
        heads: 4,
        kv_heads: 2,
    };
    let input = write_llama(dir.path(), "in.safetensors", &shape, Dtype::F32, 8);
    let marked = dir.path().join("marked.safetensors");
    let key = SecretKey::from_seed([6; 32]);
    let report = mark(&input, &marked, &key);
    // Certified tensor list, as `detect --cert` passes it.
    let certified: Vec<(String, Vec<usize>)> = Model::open(&input)
        .unwrap_or_else(|e| panic!("{e}"))
        .tensors()
        .filter(|t| report.tensors.iter().any(|r| r.name == t.name))
        .map(|t| (t.name.to_string(), t.shape.to_vec()))
        .collect();

    // A derivative that dropped one tensor and truncated another's vocabulary.
    let model = Model::open(&marked).unwrap_or_else(|e| panic!("{e}"));
    let mut tensors: Vec<weightmark::synth::SynthTensor> = model
        .tensors()
        .filter(|t| t.name != "model.layers.1.mlp.up_proj.weight")
        .map(|t| weightmark::synth::SynthTensor {
            name: t.name.into(),
            dtype: t.dtype,
            shape: t.shape.to_vec(),
            data: t.data().into_owned(),
        })
        .collect();
    if let Some(lm) = tensors.iter_mut().find(|t| t.name == "lm_head.weight") {
        lm.shape = vec![3000, 256];
        lm.data.truncate(3000 * 256 * 4);
    }
    let suspect_path = dir.path().join("suspect.safetensors");
    write_file(&suspect_path, &tensors, None).unwrap_or_else(|e| panic!("{e}"));
    let suspect = Model::open(&suspect_path).unwrap_or_else(|e| panic!("{e}"));
    let mark_key = key.mark_key("release", None);
    let target = Target::ss1(mark_key.clone(), Some(certified));
    let d = detect(
        &suspect,
        None,
        &target,
        &DetectOptions { threshold_p: 1e-9, progress: &NoProgress },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let skipped: Vec<(&str, &str)> =
        d.skipped.iter().map(|s| (s.name.as_str(), s.reason.as_str())).collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped
        .iter()
        .any(|(n, r)| *n == "model.layers.1.mlp.up_proj.weight" && r.contains("missing")));
    assert!(skipped.iter().any(|(n, r)| *n == "lm_head.weight" && r.contains("shape")));
    assert_eq!(d.tensors.len(), report.tensors.len() - 2);
    assert!(d.z > 0.0);
}

#[test]
fn globs_choose_tensors_and_bad_globs_are_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let input = dir.path().join("mixed.safetensors");
    write_file(&input, &mixed_tensors(), None).unwrap_or_else(|e| panic!("{e}"));
    let model = Model::open(&input).unwrap_or_else(|e| panic!("{e}"));
    let key = SecretKey::from_seed([3; 32]);
    let out = dir.path().join("out.safetensors");
    let globs = |g: &[&str]| Selection::Globs(g.iter().map(|s| s.to_string()).collect());

    let r = embed(&model, &out, &key, &options("r", globs(&["m.*", "a.small.*"])))
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = r.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a.small.weight", "m.second.weight"]);

    // A fresh output each time: an existing one is refused before the selection is looked at.
    let out = dir.path().join("out2.safetensors");
    let err = embed(&model, &out, &key, &options("r", globs(&["nothing.*"])))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("'nothing.*' matches no tensor"), "{err}");
    let err = embed(&model, &out, &key, &options("r", globs(&["embeddings.*"])))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("embeddings.position_ids") && err.contains("I64"), "{err}");
}

#[test]
fn recipients_get_independent_marks() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let shape = LlamaShape {
        vocab: 2000,
        hidden: 256,
        intermediate: 688,
        layers: 2,
        heads: 4,
        kv_heads: 2,
    };
    let input = write_llama(dir.path(), "in.safetensors", &shape, Dtype::F32, 1);
    let model = Model::open(&input).unwrap_or_else(|e| panic!("{e}"));
    let key = SecretKey::from_seed([8; 32]);
    let out = dir.path().join("alice.safetensors");
    let mut o = options("release", Selection::Default);
    o.recipient = Some("alice".into());
    embed(&model, &out, &key, &o).unwrap_or_else(|e| panic!("{e}"));
    let suspect = Model::open(&out).unwrap_or_else(|e| panic!("{e}"));
    let z_for = |recipient: &str| {
        let mk = key.mark_key("release", Some(recipient));
        let t = Target::ss1(mk.clone(), None);
        detect(
            &suspect,
            Some(&model),
            &t,
            &DetectOptions { threshold_p: 1e-9, progress: &NoProgress },
        )
        .map(|d| d.z)
        .unwrap_or(f64::NAN)
    };
    assert!(z_for("alice") > 100.0);
    assert!(z_for("bob").abs() < 6.0, "bob z {}", z_for("bob"));
}

#[test]
fn a_tensor_listed_twice_is_tested_once_so_z_cannot_be_inflated() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let input = write_llama(dir.path(), "in.safetensors", &LlamaShape::TINY, Dtype::F32, 2);
    let marked = dir.path().join("marked.safetensors");
    let key = SecretKey::from_seed([12; 32]);
    mark(&input, &marked, &key);
    let suspect = Model::open(&marked).unwrap_or_else(|e| panic!("{e}"));
    let t = suspect
        .tensors()
        .find(|t| t.shape.len() == 2)
        .map(|t| (t.name.to_string(), t.shape.to_vec()));
    let Some(t) = t else { panic!("no matrix") };
    let mark_key = key.mark_key("release", None);
    let opts = DetectOptions { threshold_p: 1e-9, progress: &NoProgress };
    let once = detect(&suspect, None, &Target::ss1(mark_key.clone(), Some(vec![t.clone()])), &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    let many =
        detect(&suspect, None, &Target::ss1(mark_key.clone(), Some(vec![t.clone(); 100])), &opts)
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(once.z, many.z);
    assert_eq!(many.skipped.len(), 99);
    assert!(many.skipped.iter().all(|s| s.reason == "listed twice"));
}

#[test]
fn marking_in_memory_gives_the_bytes_embed_writes_and_certify_binds_the_saved_files() {
    let s = common::Scene::new();
    let input = s.path("m.safetensors");
    let tensors = mixed_tensors();
    write_file(&input, &tensors, Some(&mixed_metadata())).unwrap_or_else(|e| panic!("{e}"));
    let key = SecretKey::from_seed([21; 32]);
    let opts = options("mem", Selection::Default);
    let model = Model::open(&input).unwrap_or_else(|e| panic!("{e}"));
    let on_disk =
        embed(&model, &s.path("disk.safetensors"), &key, &opts).unwrap_or_else(|e| panic!("{e}"));
    let disk = Model::open(s.path("disk.safetensors")).unwrap_or_else(|e| panic!("{e}"));

    let held = Model::from_tensors(
        "state-dict",
        tensors
            .iter()
            .map(|t| (t.name.clone(), t.dtype, t.shape.clone(), t.data.clone()))
            .collect(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let memory = weightmark::embed_in_memory(&held, &key, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(memory.tensors.len(), tensors.len());
    for (name, data) in &memory.tensors {
        let written = disk.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
        assert!(written.data()[..] == data[..], "tensor {name} differs from embed's bytes");
    }
    assert_eq!(memory.blind.elements, on_disk.blind.elements);
    let disk_digests: std::collections::BTreeMap<String, String> =
        weightmark::model_tensor_digests(&disk)
            .iter()
            .map(|(n, d)| (n.clone(), weightmark::hex(d)))
            .collect();
    assert_eq!(memory.record.tensor_digests, disk_digests);

    // Saved elsewhere, in another tensor order, the model is certified and
    // the certificate verifies against it; an edited tensor is refused.
    let mut saved: Vec<_> = tensors
        .iter()
        .map(|t| {
            let data = memory.tensors.iter().find(|(n, _)| *n == t.name).map(|(_, d)| d.clone());
            weightmark::synth::SynthTensor { data: data.unwrap_or_default(), ..t.clone() }
        })
        .collect();
    saved.reverse();
    write_file(&s.path("saved.safetensors"), &saved, None).unwrap_or_else(|e| panic!("{e}"));
    let saved_model = Model::open(s.path("saved.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    let envelope =
        weightmark::certify(&saved_model, &memory.record, &key).unwrap_or_else(|e| panic!("{e}"));
    let cert = s.path("saved.cert.json");
    let text =
        weightmark::provenance::envelope_to_string(&envelope).unwrap_or_else(|e| panic!("{e}"));
    weightmark::write_atomic(&cert, &text).unwrap_or_else(|e| panic!("{e}"));
    let verified =
        weightmark::provenance::verify_file(&cert, &key.public_key(), Some(&saved_model))
            .unwrap_or_else(|e| panic!("{e}"));
    let check = verified.model.unwrap_or_else(|| panic!("no model check"));
    assert!(check.files_match() && check.tensor_root_matches && check.tensors_changed.is_empty());

    saved[0].data[0] ^= 1;
    write_file(&s.path("edited.safetensors"), &saved, None).unwrap_or_else(|e| panic!("{e}"));
    let edited = Model::open(s.path("edited.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    let err = weightmark::certify(&edited, &memory.record, &key).err().map(|e| e.to_string());
    assert!(err.as_deref().is_some_and(|e| e.contains("differs")), "{err:?}");
    let stranger = SecretKey::from_seed([22; 32]);
    assert!(weightmark::certify(&saved_model, &memory.record, &stranger).is_err());
}

/// Informed detection of the original itself tests every tensor and finds
/// no mark (every difference is zero); only a suspect whose every tensor is
/// skipped has nothing tested.
#[test]
fn the_original_tested_against_itself_is_tested_and_unmarked() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = SecretKey::from_seed([12; 32]);
    let tensors = vec![weightmark::synth::gaussian_matrix("a.weight", 64, 128, Dtype::F32, 1)];
    let original = dir.path().join("m.safetensors");
    write_file(&original, &tensors, None).unwrap_or_else(|e| panic!("{e}"));
    let itself = find(&original, Some(&original), &key);
    assert!(!itself.nothing_tested(), "{:?}", itself.skipped);
    assert!(!itself.detected && itself.elements == 0 && itself.tensors.len() == 1);

    let other = vec![weightmark::synth::gaussian_matrix("b.weight", 64, 128, Dtype::F32, 2)];
    let unrelated = dir.path().join("other.safetensors");
    write_file(&unrelated, &other, None).unwrap_or_else(|e| panic!("{e}"));
    let suspect = Model::open(&unrelated).unwrap_or_else(|e| panic!("{e}"));
    let target =
        Target::ss1(key.mark_key("release", None), Some(vec![("a.weight".into(), vec![64, 128])]));
    let none = detect(&suspect, None, &target, &DetectOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(none.nothing_tested());
}
