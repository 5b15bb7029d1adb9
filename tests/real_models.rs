//! The library on real models fetched by `scripts/fetch-models`: MiniLM
//! (BERT, F32 and an I64 tensor, 22.7M parameters) and fracast (85k
//! parameters, odd shapes, 3-D tensors). These tests fail, never skip, when
//! the models are missing.

mod common;

use weightmark::{
    detect, embed, DetectOptions, Detection, EmbedOptions, EmbedReport, Model, NoProgress,
    SecretKey, Selection, Target, DEFAULT_STRENGTH,
};

use common::real_model;

fn mark(model: &Model, out: &std::path::Path, key: &SecretKey) -> EmbedReport {
    let options = EmbedOptions {
        scheme: weightmark::Scheme::Ss1,
        strength: Some(DEFAULT_STRENGTH),
        label: "real".into(),
        recipient: None,
        selection: Selection::Default,
        created: "2026-11-28T00:00:00Z".into(),
        progress: &NoProgress,
        overwrite: weightmark::Overwrite::Refuse,
        allocation: weightmark::Allocation::Uniform,
        recipient_code: weightmark::RecipientCode::Independent,
        recipient_share: None,
    };
    embed(model, out, key, &options).unwrap_or_else(|e| panic!("{e}"))
}

fn find(suspect: &Model, original: Option<&Model>, key: &SecretKey) -> Detection {
    let mk = key.mark_key("real", None);
    let target = Target::ss1(mk.clone(), None);
    detect(suspect, original, &target, &DetectOptions { threshold_p: 1e-9, progress: &NoProgress })
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn minilm_is_found_blind_at_default_strength_and_passes_its_i64_tensor_through() {
    let input = real_model!("minilm/model.safetensors");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("minilm.safetensors");
    let model = Model::open(&input).unwrap_or_else(|e| panic!("{e}"));
    let key = SecretKey::from_seed([21; 32]);
    let report = mark(&model, &out, &key);
    assert!(report.fidelity.relative_rms_change() <= 0.01);

    let marked = Model::open(&out).unwrap_or_else(|e| panic!("{e}"));
    let blind = find(&marked, None, &key);
    let wrong = find(&marked, None, &SecretKey::from_seed([22; 32]));
    let unmarked = find(&model, None, &key);
    eprintln!(
        "MiniLM: blind z {:.2} (p {:.2e}), wrong key z {:.2}, unmarked z {:.2}, change {:.4}%",
        blind.z,
        blind.p_value,
        wrong.z,
        unmarked.z,
        100.0 * report.fidelity.relative_rms_change()
    );
    assert!(blind.detected && blind.p_value <= 1e-9, "blind z {}", blind.z);
    assert!(!wrong.detected, "wrong key z {}", wrong.z);
    assert!(!unmarked.detected, "unmarked z {}", unmarked.z);

    let a = std::fs::read(&input).unwrap_or_default();
    let b = std::fs::read(&out).unwrap_or_default();
    let before = safetensors::SafeTensors::deserialize(&a).unwrap_or_else(|e| panic!("{e}"));
    let after = safetensors::SafeTensors::deserialize(&b)
        .unwrap_or_else(|e| panic!("output does not load: {e}"));
    let ids = "embeddings.position_ids";
    let x = before.tensor(ids).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(x.dtype(), safetensors::Dtype::I64);
    assert_eq!(x.data(), after.tensor(ids).unwrap_or_else(|e| panic!("{e}")).data());
    let names_before: Vec<String> = before.names().into_iter().map(|s| s.to_string()).collect();
    let names_after: Vec<String> = after.names().into_iter().map(|s| s.to_string()).collect();
    assert_eq!(names_before.len(), names_after.len());
    for t in model.tensors().filter(|t| !report.tensors.iter().any(|r| r.name == t.name)) {
        assert_eq!(
            &t.data()[..],
            after.tensor(t.name).unwrap_or_else(|e| panic!("{e}")).data(),
            "{}",
            t.name
        );
    }
}

#[test]
fn fracast_is_too_small_for_blind_detection_but_found_informed() {
    let input = real_model!("fracast/model.safetensors");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("fracast.safetensors");
    let model = Model::open(&input).unwrap_or_else(|e| panic!("{e}"));
    assert!(model.tensors().any(|t| t.shape.len() == 3), "fracast should have 3-D tensors");
    let key = SecretKey::from_seed([23; 32]);
    let report = mark(&model, &out, &key);
    // Blind detection would need far more than a 1% change on 76k elements.
    assert!(
        report.strength_for_blind_threshold() > 0.01,
        "{}",
        report.strength_for_blind_threshold()
    );
    let marked = Model::open(&out).unwrap_or_else(|e| panic!("{e}"));
    let informed = find(&marked, Some(&model), &key);
    eprintln!("fracast: informed z {:.1}, blind z at release {:.2}", informed.z, report.blind.z());
    assert!(informed.detected && informed.p_value <= 1e-9, "informed z {}", informed.z);
    let wrong = find(&marked, Some(&model), &SecretKey::from_seed([24; 32]));
    assert!(!wrong.detected, "wrong key informed z {}", wrong.z);
}

#[test]
fn fracast_int8_copy_keeps_its_integer_tensors_byte_for_byte() {
    let input = real_model!("fracast/model.int8.safetensors");
    let model = Model::open(&input).unwrap_or_else(|e| panic!("{e}"));
    let ints: Vec<String> =
        model.tensors().filter(|t| !t.dtype.is_readable()).map(|t| t.name.to_string()).collect();
    assert!(!ints.is_empty(), "expected integer tensors in the int8 copy");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("int8.safetensors");
    let options = EmbedOptions {
        scheme: weightmark::Scheme::Ss1,
        strength: Some(DEFAULT_STRENGTH),
        label: "real".into(),
        recipient: None,
        selection: Selection::Default,
        created: "2026-11-28T00:00:00Z".into(),
        progress: &NoProgress,
        overwrite: weightmark::Overwrite::Refuse,
        allocation: weightmark::Allocation::Uniform,
        recipient_code: weightmark::RecipientCode::Independent,
        recipient_share: None,
    };
    match embed(&model, &out, &SecretKey::from_seed([25; 32]), &options) {
        Ok(report) => {
            let marked = Model::open(&out).unwrap_or_else(|e| panic!("{e}"));
            for name in &ints {
                let a = model.tensor(name).map(|t| t.data().into_owned());
                let b = marked.tensor(name).map(|t| t.data().into_owned());
                assert!(a.is_some() && a == b, "{name} changed");
            }
            assert!(report.tensors.iter().all(|t| !ints.contains(&t.name)));
        }
        // Nothing markable at all is also a correct outcome, said plainly.
        Err(e) => assert!(e.to_string().contains("no tensor to mark"), "{e}"),
    }
}
