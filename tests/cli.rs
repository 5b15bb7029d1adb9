//! End-to-end tests of the `weightmark` binary: key files, embed and detect
//! with exit codes and JSON, malformed inputs, determinism across thread
//! counts, real models, and the demo. Each test runs the real binary in a
//! fresh temporary directory.

mod common;

use common::{json, stderr, stdout, Scene};

use std::path::Path;

use weightmark::synth::{llama, write_file, write_sharded, LlamaShape};
use weightmark::Dtype;

const SMALL: LlamaShape =
    LlamaShape { vocab: 4096, hidden: 256, intermediate: 688, layers: 4, heads: 4, kv_heads: 2 };

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    let s = Scene::new();
    let out = s.run(&["keygen", "-o", "owner"]);
    assert_eq!(out.status.code(), Some(0));
    let secret = std::fs::read_to_string(s.path("owner.key")).unwrap_or_default();
    let public = std::fs::read_to_string(s.path("owner.pub")).unwrap_or_default();
    assert!(secret.starts_with("weightmark secret key v1\n"));
    assert!(public.starts_with("weightmark public key v1\n"));
    let secret_line = secret.lines().last().unwrap_or_default().to_string();
    assert!(
        !stdout(&out).contains(&secret_line) && !stderr(&out).contains(&secret_line),
        "secret printed"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            std::fs::metadata(s.path("owner.key")).map(|m| m.permissions().mode()).unwrap_or(0);
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = s.run(&["keygen", "-o", "owner"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("already exists"), "{}", stderr(&again));
    assert_eq!(std::fs::read_to_string(s.path("owner.key")).unwrap_or_default(), secret);
}

#[test]
fn a_secret_key_readable_by_others_is_refused() {
    let s = Scene::new();
    let key = s.keygen("owner");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(s.path(&key), std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        write_file(&s.path("m.safetensors"), &llama(&LlamaShape::TINY, Dtype::F32, 1), None)
            .unwrap_or_else(|e| panic!("{e}"));
        let out = s.run(&["embed", "-k", &key, "m.safetensors", "-o", "o.safetensors"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
        assert!(!s.path("o.safetensors").exists());
    }
}

#[test]
fn embed_then_detect_with_exit_codes_and_json_fields() {
    let s = Scene::new();
    let key = s.keygen("owner");
    write_file(&s.path("m.safetensors"), &llama(&SMALL, Dtype::BF16, 2), None)
        .unwrap_or_else(|e| panic!("{e}"));
    // ss1: `detect --label` without a certificate is for ss1 only.
    let out = s.run(&[
        "embed",
        "-k",
        &key,
        "--scheme",
        "ss1",
        "--strength",
        "0.01",
        "--label",
        "v1",
        "-r",
        "acme",
        "m.safetensors",
        "-o",
        "marked.safetensors",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in
        ["relative RMS change", "SNR", "largest change", "blind z of the output", "certificate:"]
    {
        assert!(text.contains(needle), "embed output lacks '{needle}': {text}");
    }
    assert!(s.path("marked.safetensors.cert.json").exists());

    let found = s.run(&[
        "detect",
        "-k",
        &key,
        "--cert",
        "marked.safetensors.cert.json",
        "marked.safetensors",
        "--json",
    ]);
    assert_eq!(found.status.code(), Some(0), "{}", stderr(&found));
    let v = json(&found);
    assert_eq!(v["detected"], true);
    assert_eq!(v["mode"], "blind");
    assert!(v["z"].as_f64().unwrap_or(0.0) > 6.44);
    assert!(v["p_value"].as_f64().unwrap_or(1.0) <= 1e-9);
    assert_eq!(v["threshold_p"].as_f64(), Some(1e-9));
    assert!(v["elements"].as_u64().unwrap_or(0) > 1_000_000);
    let tensors = v["tensors"].as_array().cloned().unwrap_or_default();
    assert!(
        !tensors.is_empty()
            && tensors
                .iter()
                .all(|t| t["name"].is_string() && t["z"].is_number() && t["elements"].is_u64())
    );
    assert_eq!(v["suspect_digest"].as_str().map(str::len), Some(64));
    assert_eq!(v["recipient"], "acme");

    let informed = s.run(&[
        "detect",
        "-k",
        &key,
        "--cert",
        "marked.safetensors.cert.json",
        "--original",
        "m.safetensors",
        "marked.safetensors",
        "--json",
    ]);
    assert_eq!(informed.status.code(), Some(0));
    assert_eq!(json(&informed)["mode"], "informed");

    let unmarked = s.run(&[
        "detect",
        "-k",
        &key,
        "--cert",
        "marked.safetensors.cert.json",
        "m.safetensors",
        "--json",
    ]);
    assert_eq!(unmarked.status.code(), Some(1), "{}", stderr(&unmarked));
    assert_eq!(json(&unmarked)["detected"], false);

    // Without the certificate: label and recipient name the release.
    let by_label =
        s.run(&["detect", "-k", &key, "--label", "v1", "-r", "acme", "marked.safetensors"]);
    assert_eq!(by_label.status.code(), Some(0), "{}", stderr(&by_label));
    assert!(stdout(&by_label).contains("MARK FOUND"));
    let other_recipient =
        s.run(&["detect", "-k", &key, "--label", "v1", "-r", "other", "marked.safetensors"]);
    assert_eq!(other_recipient.status.code(), Some(1));

    // Another owner's key cannot use this certificate.
    let other = s.keygen("other");
    let refused = s.run(&[
        "detect",
        "-k",
        &other,
        "--cert",
        "marked.safetensors.cert.json",
        "marked.safetensors",
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("signed by key"), "{}", stderr(&refused));
}

#[test]
fn output_equal_to_input_is_refused() {
    let s = Scene::new();
    let key = s.keygen("owner");
    write_file(&s.path("m.safetensors"), &llama(&LlamaShape::TINY, Dtype::F32, 1), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let before = std::fs::read(s.path("m.safetensors")).unwrap_or_default();
    for out in ["m.safetensors", "./m.safetensors", "."] {
        let o = s.run(&["embed", "-k", &key, "m.safetensors", "-o", out]);
        assert_eq!(o.status.code(), Some(2), "-o {out}");
        assert!(stderr(&o).contains("the output is the input"), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read(s.path("m.safetensors")).unwrap_or_default(), before);
}

#[test]
fn attacks_and_the_demo_never_replace_an_existing_output_without_force() {
    let s = Scene::new();
    write_file(&s.path("m.safetensors"), &llama(&LlamaShape::TINY, Dtype::F32, 1), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let mine = b"the user's own file";
    for out in ["out.safetensors", "out.gguf"] {
        std::fs::write(s.path(out), mine).unwrap_or_else(|e| panic!("{e}"));
    }
    // A weight attack, a function-preserving one and a GGUF export: each
    // refuses before any work, in one line naming the file, and keeps it.
    let attacks: [&[&str]; 3] = [
        &["attack", "noise", "--relative", "0.01", "m.safetensors", "-o", "out.safetensors"],
        &["attack", "permute", "m.safetensors", "-o", "out.safetensors"],
        &["attack", "gguf", "--type", "Q8_0", "m.safetensors", "-o", "out.gguf"],
    ];
    for args in attacks {
        let o = s.run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}{}", stdout(&o), stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("already exists") && err.contains("--force"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        let out = args[args.len() - 1];
        assert!(err.contains(out), "{err}");
        assert_eq!(std::fs::read(s.path(out)).unwrap_or_default(), mine);
    }
    // --force replaces the file with the edited model.
    let mut forced = attacks[0].to_vec();
    forced.push("--force");
    s.ok(&forced);
    let replaced = std::fs::read(s.path("out.safetensors")).unwrap_or_default();
    assert!(replaced != mine && weightmark::Model::open(s.path("out.safetensors")).is_ok());
    // The demo writes fixed names: a --keep directory with anything in it is refused.
    std::fs::create_dir(s.path("kept")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(s.path("kept/original.safetensors"), mine).unwrap_or_else(|e| panic!("{e}"));
    let o = s.run(&["demo", "--keep", "kept"]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("not an empty directory"), "{}", stderr(&o));
    assert_eq!(std::fs::read(s.path("kept/original.safetensors")).unwrap_or_default(), mine);
}

/// A valid two-tensor file whose header is replaced by `header`.
fn file_with_header(header: &str, data_len: usize) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend(std::iter::repeat_n(0u8, data_len));
    v
}

#[test]
fn malformed_inputs_exit_2_with_one_line_naming_file_and_problem_and_leave_nothing() {
    let good = weightmark::synth::to_safetensors(&llama(&LlamaShape::TINY, Dtype::F32, 1), None);
    let t = |name: &str, shape: &str, b: usize, e: usize| {
        format!(r#""{name}":{{"dtype":"F32","shape":{shape},"data_offsets":[{b},{e}]}}"#)
    };
    let mut non_utf8 = file_with_header(&format!("{{{}}}", t("ab", "[64,64]", 0, 16384)), 16384);
    non_utf8[11] = 0xff; // inside the name "ab"
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good[..good.len() / 2].to_vec(), "past the"),
        (
            "header length past the end",
            {
                let mut v = good.clone();
                v[..8].copy_from_slice(&(good.len() as u64).to_le_bytes());
                v
            },
            "runs past the end",
        ),
        (
            "overlapping offsets",
            file_with_header(
                &format!("{{{},{}}}", t("a", "[64,64]", 0, 16384), t("b", "[64,64]", 8192, 24576)),
                24576,
            ),
            "overlap",
        ),
        (
            "out-of-bounds offsets",
            file_with_header(&format!("{{{}}}", t("a", "[64,64]", 0, 16384)), 100),
            "past the",
        ),
        (
            "shape x dtype mismatch",
            file_with_header(&format!("{{{}}}", t("a", "[64,65]", 0, 16384)), 16384),
            "needs 16640 bytes",
        ),
        ("non-UTF-8 name", non_utf8, "not valid UTF-8"),
        (
            "duplicate names",
            file_with_header(
                &format!("{{{},{}}}", t("a", "[64,64]", 0, 16384), t("a", "[64,64]", 16384, 32768)),
                32768,
            ),
            "appears twice",
        ),
    ];
    for (what, bytes, needle) in cases {
        let s = Scene::new();
        let key = s.keygen("owner");
        std::fs::write(s.path("bad.safetensors"), &bytes).unwrap_or_else(|e| panic!("{e}"));
        let before = s.files();
        let o = s.run(&["embed", "-k", &key, "bad.safetensors", "-o", "out.safetensors"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: not one line: {err}");
        assert!(err.contains("bad.safetensors") && err.contains(needle), "{what}: {err}");
        assert_eq!(s.files(), before, "{what}: output left behind");
        let d = s.run(&["detect", "-k", &key, "--label", "x", "bad.safetensors"]);
        assert_eq!(d.status.code(), Some(2), "{what}: detect");
    }
}

#[test]
fn malformed_shard_indexes_exit_2_and_leave_nothing() {
    let tensors = llama(&LlamaShape::TINY, Dtype::F32, 1);
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "index escapes the directory",
            Box::new(|dir: &Path| {
                let p = dir.join("model.safetensors.index.json");
                let text = std::fs::read_to_string(&p).unwrap_or_default().replacen(
                    "model-00001-of-00002.safetensors",
                    "../model-00001-of-00002.safetensors",
                    1,
                );
                std::fs::write(p, text).unwrap_or_else(|e| panic!("{e}"));
            }),
            "outside the model directory",
        ),
        (
            "missing shard",
            Box::new(|dir: &Path| {
                std::fs::remove_file(dir.join("model-00002-of-00002.safetensors"))
                    .unwrap_or_else(|e| panic!("{e}"));
            }),
            "does not exist",
        ),
    ];
    for (what, damage, needle) in cases {
        let s = Scene::new();
        let key = s.keygen("owner");
        write_sharded(&s.path("model"), &tensors, 2).unwrap_or_else(|e| panic!("{e}"));
        damage(&s.path("model"));
        let before = s.files();
        let o = s.run(&["embed", "-k", &key, "model", "-o", "out"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
        assert!(
            err.contains("model.safetensors.index.json") && err.contains(needle),
            "{what}: {err}"
        );
        assert_eq!(s.files(), before, "{what}: output left behind");
    }
}

#[test]
fn same_input_gives_byte_identical_output_with_1_and_4_threads() {
    let s = Scene::new();
    let key = s.keygen("owner");
    write_file(&s.path("m.safetensors"), &llama(&SMALL, Dtype::BF16, 4), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut outputs = Vec::new();
    for threads in ["1", "4"] {
        let out = format!("out-{threads}.safetensors");
        let o = s.run_env(
            &["embed", "-k", &key, "--label", "same", "m.safetensors", "-o", &out],
            &[("RAYON_NUM_THREADS", threads)],
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        outputs.push(std::fs::read(s.path(&out)).unwrap_or_default());
    }
    assert!(
        !outputs[0].is_empty() && outputs[0] == outputs[1],
        "outputs differ between 1 and 4 threads"
    );
}

/// An `ss2` release with a recipient on an F16 model (vectorised F16
/// decoding and rounding, the parallel informed reference, the statistic's
/// profiles): the marked bytes, every certificate field but the time, and
/// blind and informed detection are the same with 1 and 2 threads.
#[test]
fn ss2_embed_certificate_and_detection_are_the_same_with_1_and_2_threads() {
    let s = Scene::new();
    let key = s.keygen("owner");
    write_file(&s.path("m.safetensors"), &llama(&SMALL, Dtype::F16, 6), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut runs = Vec::new();
    for threads in ["1", "2"] {
        let env = [("RAYON_NUM_THREADS", threads)];
        // The same file name in its own directory: the certificate names it.
        std::fs::create_dir(s.path(threads)).unwrap_or_else(|e| panic!("{e}"));
        let out = format!("{threads}/out.safetensors");
        let cert = format!("{threads}.cert.json");
        let args = ["embed", "-k", &key, "--label", "same", "-r", "bob", "--strength", "0.01"];
        let args = [&args[..], &["m.safetensors", "-o"]].concat();
        let o = s.run_env(&[&args[..], &[out.as_str(), "--cert", &cert]].concat(), &env);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let model = std::fs::read(s.path(&out)).unwrap_or_default();
        let loaded =
            weightmark::provenance::certificate::load_certificate_unverified(&s.path(&cert))
                .unwrap_or_else(|e| panic!("{e}"));
        let mut predicate =
            serde_json::to_value(loaded.predicate()).unwrap_or_else(|e| panic!("{e}"));
        predicate.as_object_mut().map(|p| p.remove("created"));
        let mut detections = Vec::new();
        for original in [None, Some("m.safetensors")] {
            let mut args = vec!["detect", "-k", &key, "--cert", &cert, &out, "--json"];
            args.extend(original.map(|o| ["--original", o]).into_iter().flatten());
            let d = s.run_env(&args, &env);
            assert_eq!(d.status.code(), Some(0), "{}", stderr(&d));
            // All but the paths and the certificate's digest (its time differs).
            let mut v = json(&d);
            v.as_object_mut().map(|o| (o.remove("suspect"), o.remove("certificate_digest")));
            detections.push(v);
        }
        runs.push((model, predicate, detections));
    }
    let (a, b) = (&runs[0], &runs[1]);
    assert!(!a.0.is_empty() && a.0 == b.0, "marked bytes differ between 1 and 2 threads");
    assert_eq!(a.1["scheme"], "ss2");
    assert!(a.1["neuron_sketch"].is_object() && a.1["residual_sketch"].is_object());
    // Compared as a whole (the sketches make the values long to print).
    assert!(a.1 == b.1, "certificates differ between 1 and 2 threads");
    assert!(a.2[0]["z"].as_f64() > Some(6.44) && a.2[1]["mode"] == "informed");
    assert_eq!(a.2, b.2, "detection differs between 1 and 2 threads");
}

#[test]
fn sharded_model_directory_keeps_its_layout_and_the_certificate_stays_outside() {
    let s = Scene::new();
    let key = s.keygen("owner");
    write_sharded(&s.path("model"), &llama(&SMALL, Dtype::F16, 5), 3)
        .unwrap_or_else(|e| panic!("{e}"));
    let o = s.run(&["embed", "-k", &key, "model", "-o", "marked"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(s.path("marked.cert.json").exists());
    assert!(!s.path("marked").join("marked.cert.json").exists());
    let inspect = s.run(&["inspect", "marked", "--json"]);
    let v = json(&inspect);
    assert_eq!(v["layout"], "DirectorySharded");
    assert_eq!(v["files"].as_array().map(Vec::len), Some(3));
    let d = s.run(&[
        "detect",
        "-k",
        &key,
        "--cert",
        "marked.cert.json",
        "--original",
        "model",
        "marked",
        "--json",
    ]);
    assert_eq!(d.status.code(), Some(0), "{}", stderr(&d));
}

#[test]
fn fracast_is_reported_too_small_for_blind_detection_and_found_informed() {
    let fracast = common::real_model!("fracast/model.safetensors");
    let s = Scene::new();
    let key = s.keygen("owner");
    let f = fracast.to_string_lossy().into_owned();
    let o = s.run(&["embed", "-k", &key, &f, "-o", "fracast.safetensors"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("too small for blind detection"), "{}", stdout(&o));
    let d = s.run(&[
        "detect",
        "-k",
        &key,
        "--cert",
        "fracast.safetensors.cert.json",
        "--original",
        &f,
        "fracast.safetensors",
        "--json",
    ]);
    assert_eq!(d.status.code(), Some(0), "{}", stderr(&d));
    assert!(json(&d)["p_value"].as_f64().unwrap_or(1.0) <= 1e-9);
}

#[test]
fn minilm_directory_is_marked_with_its_tokenizer_copied_and_found_blind() {
    let minilm = common::real_model!("minilm");
    let s = Scene::new();
    let key = s.keygen("owner");
    let m = minilm.to_string_lossy().into_owned();
    let o = s.run(&["embed", "-k", &key, &m, "-o", "minilm-marked"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        s.path("minilm-marked/tokenizer.json").exists()
            && s.path("minilm-marked/1_Pooling/config.json").exists()
    );
    let d = s.run(&[
        "detect",
        "-k",
        &key,
        "--cert",
        "minilm-marked.cert.json",
        "minilm-marked",
        "--json",
    ]);
    assert_eq!(d.status.code(), Some(0), "{}", stderr(&d));
    assert!(json(&d)["p_value"].as_f64().unwrap_or(1.0) <= 1e-9);
    let wrong = s.keygen("wrong");
    let w = s.run(&["detect", "-k", &wrong, "--label", "minilm", "minilm-marked", "--json"]);
    assert_eq!(w.status.code(), Some(1), "{}", stderr(&w));
}

#[test]
fn inspect_lists_dtypes_shapes_and_digests() {
    let s = Scene::new();
    write_file(&s.path("m.safetensors"), &common::mixed_tensors(), Some(&common::mixed_metadata()))
        .unwrap_or_else(|e| panic!("{e}"));
    let v = json(&s.run(&["inspect", "m.safetensors", "--json"]));
    let tensors = v["tensors"].as_array().cloned().unwrap_or_default();
    let ids = tensors
        .iter()
        .find(|t| t["name"] == "embeddings.position_ids")
        .cloned()
        .unwrap_or_default();
    assert_eq!(ids["dtype"], "I64");
    assert_eq!(ids["shape"], serde_json::json!([1, 512]));
    assert_eq!(ids["marked_by_default"], false);
    assert_eq!(ids["digest"].as_str().map(str::len), Some(64));
    assert_eq!(v["tensor_root"].as_str().map(str::len), Some(64));
}

#[test]
fn demo_tells_the_whole_story_and_every_step_succeeds() {
    let s = Scene::new();
    let o = s.run(&["demo"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert_eq!(text.matches("MARK FOUND").count(), 2, "{text}");
    assert_eq!(text.matches("no mark (as expected)").count(), 2, "{text}");
    assert!(text.contains("Every step came out as it should"));
}

/// A default build lists the eval commands but explains how to get them.
#[cfg(not(feature = "eval"))]
#[test]
fn eval_commands_need_the_eval_feature() {
    let s = Scene::new();
    std::fs::write(s.path("t.txt"), "some text").unwrap_or_else(|e| panic!("{e}"));
    for args in [
        &["eval", "ppl", "m", "--text", "t.txt"][..],
        &["attack", "finetune", "--steps", "1", "--text", "t.txt", "m", "-o", "out"][..],
        &["attack", "smooth", "--text", "t.txt", "m", "-o", "out"][..],
    ] {
        let o = s.run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains("--features eval"), "{}", stderr(&o));
        assert!(!s.path("out").exists());
    }
}

/// Informed detection of a suspect identical to the original: every tested
/// element is unchanged, so there is no mark (exit 1, like `identify`), not
/// "nothing could be tested" (exit 2).
#[test]
fn informed_detection_of_the_unmarked_original_is_no_mark_not_an_error() {
    let s = Scene::new();
    s.keygen("lab");
    weightmark::synth::write_file(
        &s.path("m.safetensors"),
        &[weightmark::synth::gaussian_matrix("a.weight", 64, 128, Dtype::F32, 1)],
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // ss1 counts no element whose difference is zero: the case that exited 2.
    let embed = ["embed", "-k", "lab.key", "--scheme", "ss1", "m.safetensors"];
    s.ok(&[&embed[..], &["-o", "marked.safetensors"]].concat());
    let args = [
        "detect",
        "-k",
        "lab.key",
        "--cert",
        "marked.safetensors.cert.json",
        "--original",
        "m.safetensors",
        "m.safetensors",
    ];
    let o = s.run(&args);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("no mark found"), "{}", stdout(&o));
    let o = s.run(&[&args[..], &["--json"]].concat());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(json(&o)["detected"], false);
}
