//! Many licensees of one release (issue #12, items 2 and 3): a licensee's
//! certificate issued without writing the copy (`issue`), and the honest
//! accounting of tests in signed reports (`identify --report`,
//! `detect --tested N`). Synthetic models only: seconds in CI.

mod common;

use std::path::{Path, PathBuf};

use common::{json, stderr, stdout, Scene, TINY_LLAMA};
use weightmark::synth::{llama, write_sharded};
use weightmark::Dtype;

const CREATED: &str = "2026-12-02T09:00:00Z";

/// A 3-shard bf16 Llama-shaped model with side files (config, tokenizer,
/// a nested chat template) in `scene/model`.
fn sharded_model(scene: &Scene) -> PathBuf {
    let dir = scene.path("model");
    write_sharded(&dir, &llama(&TINY_LLAMA, Dtype::BF16, 12), 3).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("config.json"), r#"{"model_type": "llama"}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("tokenizer.json"), r#"{"version": "1.0"}"#)
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(dir.join("templates")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("templates/chat.jinja"), "{{ messages }}")
        .unwrap_or_else(|e| panic!("{e}"));
    dir
}

/// Every path under `dir` with its size and modification time, sorted.
fn tree(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{e}")) {
            let entry = entry.unwrap_or_else(|e| panic!("{e}"));
            let meta = entry.metadata().unwrap_or_else(|e| panic!("{e}"));
            if meta.is_dir() {
                stack.push(entry.path());
            }
            let modified = meta.modified().unwrap_or_else(|e| panic!("{e}"));
            out.push((entry.path(), meta.len(), modified));
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn issue_signs_the_certificate_embed_signs_and_writes_nothing_else() {
    let scene = Scene::new();
    let key = scene.keygen("lab");
    let model = sharded_model(&scene);
    let model_arg = model.to_string_lossy().into_owned();
    let before = tree(scene.dir.path());

    let out = scene.ok(&[
        "issue",
        "-k",
        &key,
        "--label",
        "v1",
        "-r",
        "acme",
        "--strength",
        "0.01",
        "--created",
        CREATED,
        &model_arg,
        "--cert",
        "acme.cert.json",
    ]);
    assert!(out.contains("nothing else written"), "{out}");
    // The listing differs by the certificate alone; the model is untouched.
    let mut after = tree(scene.dir.path());
    after.retain(|(p, _, _)| p != &scene.path("acme.cert.json"));
    assert_eq!(before, after, "issue wrote something besides the certificate");
    assert!(scene.path("acme.cert.json").is_file());

    // A real embed with the same parameters signs the same bytes.
    scene.ok(&[
        "embed",
        "-k",
        &key,
        "--label",
        "v1",
        "-r",
        "acme",
        "--strength",
        "0.01",
        "--created",
        CREATED,
        &model_arg,
        "-o",
        "copy-acme",
        "--cert",
        "embedded.cert.json",
    ]);
    let issued = read(&scene.path("acme.cert.json"));
    assert_eq!(
        issued,
        read(&scene.path("embedded.cert.json")),
        "the issued certificate differs from the one embed signed"
    );
    // The certificate lists the side files the copy carries.
    let text = String::from_utf8_lossy(&issued).into_owned();
    let cert = json_of(&text);
    let files: Vec<String> = cert["predicate"]["files"]
        .as_array()
        .unwrap_or_else(|| panic!("no files in {cert}"))
        .iter()
        .filter_map(|f| f["name"].as_str().map(str::to_string))
        .collect();
    for side in ["config.json", "tokenizer.json", "templates/chat.jinja"] {
        assert!(files.iter().any(|f| f == side), "{side} missing from {files:?}");
    }

    // The copy written later verifies against the certificate issued first.
    let verified =
        scene.ok(&["verify", "acme.cert.json", "--pub", "lab.pub", "--model", "copy-acme"]);
    assert!(verified.contains("MODEL MATCHES: every file"), "{verified}");

    // Another recipient: another certificate, which the acme copy does not match.
    scene.ok(&[
        "issue",
        "-k",
        &key,
        "--label",
        "v1",
        "-r",
        "bolt",
        "--strength",
        "0.01",
        "--created",
        CREATED,
        &model_arg,
        "--cert",
        "bolt.cert.json",
    ]);
    let bolt = read(&scene.path("bolt.cert.json"));
    assert_ne!(issued, bolt);
    let bolt_cert = json_of(&String::from_utf8_lossy(&bolt));
    assert_ne!(cert["predicate"]["tensor_digests"], bolt_cert["predicate"]["tensor_digests"]);
    let o = scene.run(&["verify", "bolt.cert.json", "--pub", "lab.pub", "--model", "copy-acme"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn issue_and_embed_refuse_a_creation_time_that_is_not_rfc3339_utc() {
    let scene = Scene::new();
    let key = scene.keygen("lab");
    let model = sharded_model(&scene);
    let model_arg = model.to_string_lossy().into_owned();
    for bad in ["2026-12-02 09:00:00", "2026-12-02T10:00:00+01:00", "yesterday"] {
        let o = scene.run(&["issue", "-k", &key, "--created", bad, &model_arg, "--cert", "c.json"]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stdout(&o));
        let err = stderr(&o);
        assert!(err.contains("--created") && err.contains("RFC 3339"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        let o = scene.run(&["embed", "-k", &key, "--created", bad, &model_arg, "-o", "copy"]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stdout(&o));
    }
    assert!(!scene.path("c.json").exists() && !scene.path("copy").exists());
    // +00:00 is UTC: accepted and recorded with a Z.
    scene.ok(&[
        "issue",
        "-k",
        &key,
        "--created",
        "2026-12-02T09:00:00+00:00",
        &model_arg,
        "--cert",
        "c.json",
    ]);
    let cert = json_of(&String::from_utf8_lossy(&read(&scene.path("c.json"))));
    assert_eq!(cert["predicate"]["created"], CREATED);
}

/// The statement inside a certificate or report file (its payload decoded).
fn json_of(text: &str) -> serde_json::Value {
    use base64::Engine as _;
    let envelope: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let payload = envelope["payload"].as_str().unwrap_or_else(|| panic!("no payload: {text}"));
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(payload).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"))
}

/// The owner key from a fixed seed (results are reproducible), saved as
/// `lab.key` and `lab.pub` in `scene`.
fn lab_key(scene: &Scene, seed: u8) {
    weightmark::SecretKey::from_seed([seed; 32])
        .save(&scene.path("lab.key"), &scene.path("lab.pub"), CREATED)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A single-file bf16 Llama-shaped model, the owner key from a fixed seed
/// (results are reproducible), certificates for four recipients issued into
/// `certs/`, and the copy of `r2` written by embed.
fn licensees(scene: &Scene) -> (String, String) {
    lab_key(scene, 5);
    let model =
        common::write_llama(scene.dir.path(), "model.safetensors", &TINY_LLAMA, Dtype::BF16, 3);
    let model = model.to_string_lossy().into_owned();
    std::fs::create_dir(scene.path("certs")).unwrap_or_else(|e| panic!("{e}"));
    for r in ["r0", "r1", "r2", "r3"] {
        let cert = format!("certs/{r}.json");
        scene.ok(&[
            "issue",
            "-k",
            "lab.key",
            "--label",
            "v1",
            "-r",
            r,
            "--strength",
            "0.01",
            "--created",
            CREATED,
            "-o",
            "copy.safetensors",
            &model,
            "--cert",
            &cert,
        ]);
    }
    scene.ok(&[
        "embed",
        "-k",
        "lab.key",
        "--label",
        "v1",
        "-r",
        "r2",
        "--strength",
        "0.01",
        &model,
        "-o",
        "copy.safetensors",
        "--cert",
        "r2-embed.json",
        "--created",
        CREATED,
    ]);
    // Single file: `issue -o` names the file as `embed -o` will.
    assert_eq!(read(&scene.path("certs/r2.json")), read(&scene.path("r2-embed.json")));
    // Issued with the copy's name: the later copy matches file for file.
    let v =
        scene.ok(&["verify", "certs/r2.json", "--pub", "lab.pub", "--model", "copy.safetensors"]);
    assert!(v.contains("MODEL MATCHES: the tensors and weight files"), "{v}");
    ("lab.key".into(), model)
}

/// Rewrites the payload of the statement in `file` with `edit`, keeping the
/// signature (a tampered file).
fn tamper(scene: &Scene, file: &str, edit: impl Fn(&mut serde_json::Value)) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let text = String::from_utf8_lossy(&read(&scene.path(file))).into_owned();
    let mut envelope: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let mut statement = json_of(&text);
    edit(&mut statement);
    let payload = serde_json::to_vec(&statement).unwrap_or_else(|e| panic!("{e}"));
    envelope["payload"] = b64.encode(payload).into();
    let name = format!("tampered-{file}");
    std::fs::write(scene.path(&name), envelope.to_string()).unwrap_or_else(|e| panic!("{e}"));
    name
}

#[test]
fn identify_signs_a_report_that_records_every_certificate_tested() {
    let scene = Scene::new();
    let (key, model) = licensees(&scene);
    let out = scene.ok(&[
        "identify",
        "-k",
        &key,
        "--certs",
        "certs",
        "--original",
        &model,
        "copy.safetensors",
        "--report",
        "id.json",
    ]);
    assert!(out.contains("signed report: id.json"), "{out}");

    let o = scene.run(&[
        "verify",
        "id.json",
        "--pub",
        "lab.pub",
        "--json",
        "--model",
        "copy.safetensors",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let v = json(&o);
    assert_eq!(v["kind"], "identification");
    assert_eq!(v["model"]["tensors_match"], true);
    let p = &v["predicate"];
    assert_eq!(p["certificates_tested"], 4);
    assert_eq!(p["correction"], "bonferroni");
    assert_eq!(p["identified"], 1);
    assert_eq!(p["releases"].as_array().map(Vec::len), Some(1));
    assert_eq!(p["releases"][0]["label"], "v1");
    assert_eq!(p["releases"][0]["certificates"], 4);
    let candidates = p["candidates"].as_array().unwrap_or_else(|| panic!("{p}"));
    assert_eq!(candidates.len(), 4);
    assert_eq!(candidates[0]["recipient"], "r2");
    assert_eq!(candidates[0]["identified"], true);
    for c in candidates {
        let (lp, la) = (c["log10_p_value"].as_f64(), c["log10_adjusted_p_value"].as_f64());
        let (lp, la) = (lp.unwrap_or(f64::NAN), la.unwrap_or(f64::NAN));
        assert!((la - (lp + 4f64.log10()).min(0.0)).abs() < 1e-9, "{c}");
        assert!(c["certificate"]["sha256"].as_str().is_some_and(|s| s.len() == 64), "{c}");
    }
    assert!(candidates[1..].iter().all(|c| c["identified"] == false));
    // The suspect digest binds the report to the copy, not to the original.
    let o = scene.run(&["verify", "id.json", "--pub", "lab.pub", "--model", &model]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("MODEL DIFFERS"), "{}", stdout(&o));
    let text = scene.ok(&["verify", "id.json", "--pub", "lab.pub"]);
    assert!(text.contains("4 certificates tested") && text.contains("recipient 'r2'"), "{text}");

    // Edited count or z, signature kept: invalid, and the file is named.
    for (what, edit) in [
        (
            "count",
            Box::new(|s: &mut serde_json::Value| {
                s["predicate"]["certificates_tested"] = 1.into();
            }) as Box<dyn Fn(&mut serde_json::Value)>,
        ),
        (
            "z",
            Box::new(|s: &mut serde_json::Value| {
                s["predicate"]["candidates"][1]["z"] = 40.0.into();
            }),
        ),
    ] {
        let name = tamper(&scene, "id.json", edit);
        let o = scene.run(&["verify", &name, "--pub", "lab.pub"]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}{}", stdout(&o), stderr(&o));
        assert!(stdout(&o).contains(&format!("INVALID: {name}")), "{what}: {}", stdout(&o));
    }
}

#[test]
fn a_signed_identification_report_whose_numbers_disagree_is_refused() {
    let scene = Scene::new();
    let (key, model) = licensees(&scene);
    scene.ok(&[
        "identify",
        "-k",
        &key,
        "--certs",
        "certs",
        "--original",
        &model,
        "copy.safetensors",
        "--report",
        "id.json",
    ]);
    // Re-signed by the owner after dropping the innocent candidates: the
    // signature holds, the accounting does not.
    let secret =
        weightmark::SecretKey::load(&scene.path("lab.key")).unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&read(&scene.path("id.json"))).into_owned();
    let mut statement: weightmark::provenance::Statement<
        weightmark::provenance::IdentificationPredicate,
    > = serde_json::from_value(json_of(&text)).unwrap_or_else(|e| panic!("{e}"));
    statement.predicate.candidates.truncate(1);
    let envelope = weightmark::provenance::sign_statement(&statement, &secret)
        .unwrap_or_else(|e| panic!("{e}"));
    let resigned =
        weightmark::provenance::envelope_to_string(&envelope).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(scene.path("resigned.json"), resigned).unwrap_or_else(|e| panic!("{e}"));
    let o = scene.run(&["verify", "resigned.json", "--pub", "lab.pub"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("resigned.json") && err.contains("4 certificates were tested but lists 1"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn detect_tested_n_adjusts_the_bound_the_decision_and_the_report() {
    let scene = Scene::new();
    let (key, _) = licensees(&scene);
    // Blind, with one certificate: a moderate z, so the correction matters.
    let args =
        ["detect", "-k", key.as_str(), "--cert", "certs/r2.json", "copy.safetensors", "--json"];
    let one = json(&scene.run(&args));
    assert_eq!(one["certificates_tested"], 1);
    assert_eq!(one["adjusted_p_value"], one["p_value"]);
    let log10_p = one["log10_p_value"].as_f64().unwrap_or(f64::NAN);
    assert!(log10_p < -1.0 && log10_p > -200.0, "this model's blind z moved: {one}");
    // A threshold the bound meets once but not after 100 tests.
    let threshold = format!("{:e}", 10f64.powf(log10_p + 1.0));
    let mut with = args.to_vec();
    with.extend(["--threshold", &threshold]);
    let o = scene.run(&with);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    with.extend(["--tested", "100", "--report", "d.json"]);
    let o = scene.run(&with);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let hundred = json(&o);
    assert_eq!(hundred["detected"], false);
    assert_eq!(hundred["certificates_tested"], 100);
    let adjusted = hundred["log10_adjusted_p_value"].as_f64().unwrap_or(f64::NAN);
    assert!((adjusted - (log10_p + 2.0).min(0.0)).abs() < 1e-9, "{hundred}");

    let o = scene.run(&["verify", "d.json", "--pub", "lab.pub", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let p = &json(&o)["predicate"];
    assert_eq!(p["certificates_tested"], 100);
    assert_eq!(p["detected"], false);
    assert!((p["log10_adjusted_p_value"].as_f64().unwrap_or(f64::NAN) - adjusted).abs() < 1e-12);
    let text = scene.ok(&["verify", "d.json", "--pub", "lab.pub"]);
    assert!(text.contains("100 certificates tested: adjusted bound min(1, 100 x p)"), "{text}");
    let name = tamper(&scene, "d.json", |s| s["predicate"]["certificates_tested"] = 1.into());
    let o = scene.run(&["verify", &name, "--pub", "lab.pub"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains(&format!("INVALID: {name}")), "{}", stdout(&o));
    // --tested 0 is a usage error.
    let mut zero = args.to_vec();
    zero.extend(["--tested", "0"]);
    assert_eq!(scene.run(&zero).status.code(), Some(2));
}

#[test]
fn tardos1_licensees_are_issued_identified_and_their_report_verifies() {
    let scene = Scene::new();
    lab_key(&scene, 6);
    let shape = weightmark::synth::LlamaShape {
        vocab: 2048,
        hidden: 128,
        intermediate: 344,
        layers: 2,
        heads: 4,
        kv_heads: 2,
    };
    let model = common::write_llama(scene.dir.path(), "model.safetensors", &shape, Dtype::BF16, 4);
    let model = model.to_string_lossy().into_owned();
    let code = ["--recipient-code", "tardos1", "--code-groups", "1024", "--strength", "0.03"];
    let release = |r: &str| -> Vec<String> {
        let mut a: Vec<String> = ["-k", "lab.key", "--label", "v1", "-r", r, "--created", CREATED]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(code.iter().map(|s| s.to_string()));
        a
    };
    std::fs::create_dir(scene.path("certs")).unwrap_or_else(|e| panic!("{e}"));
    for r in ["r0", "r1", "r2", "r3"] {
        let cert = format!("certs/{r}.json");
        let mut args = vec!["issue".to_string()];
        args.extend(release(r));
        args.extend(["-o", "copy.safetensors", &model, "--cert", &cert].map(String::from));
        let out = scene.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.contains("--recipient-code tardos1 --code-groups 1024"), "{out}");
    }
    let mut args = vec!["embed".to_string()];
    args.extend(release("r2"));
    args.extend([&model, "-o", "copy.safetensors", "--cert", "r2-embed.json"].map(String::from));
    scene.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // The code is recorded, and issue signs what embed signs.
    assert_eq!(read(&scene.path("certs/r2.json")), read(&scene.path("r2-embed.json")));
    let cert = json_of(&String::from_utf8_lossy(&read(&scene.path("certs/r2.json"))));
    assert_eq!(
        cert["predicate"]["recipient_code"],
        serde_json::json!({"code": "tardos1", "groups": 1024, "cutoff": 0.01})
    );

    let o = scene.run(&[
        "identify",
        "-k",
        "lab.key",
        "--certs",
        "certs",
        "--original",
        &model,
        "copy.safetensors",
        "--report",
        "id.json",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let v = json(&o);
    let candidates = v["candidates"].as_array().cloned().unwrap_or_default();
    assert_eq!(candidates.len(), 4);
    for c in &candidates {
        let named = c["identified"].as_bool() == Some(true);
        assert_eq!(named, c["recipient"] == "r2", "{c}");
        assert!(c["range"].as_f64().is_some_and(|r| r > 0.0), "{c}");
    }
    // verify recomputes the Bernstein bounds from z and range.
    let o = scene.run(&["verify", "id.json", "--pub", "lab.pub", "--model", "copy.safetensors"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    // A report whose range was lowered (a smaller bound) is refused, re-signed or not.
    let secret =
        weightmark::SecretKey::load(&scene.path("lab.key")).unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&read(&scene.path("id.json"))).into_owned();
    let mut statement: weightmark::provenance::Statement<
        weightmark::provenance::IdentificationPredicate,
    > = serde_json::from_value(json_of(&text)).unwrap_or_else(|e| panic!("{e}"));
    statement.predicate.candidates[0].range = Some(0.0);
    let envelope = weightmark::provenance::sign_statement(&statement, &secret)
        .unwrap_or_else(|e| panic!("{e}"));
    let resigned =
        weightmark::provenance::envelope_to_string(&envelope).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(scene.path("resigned.json"), resigned).unwrap_or_else(|e| panic!("{e}"));
    let o = scene.run(&["verify", "resigned.json", "--pub", "lab.pub"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("its p-value bound is not that of z"), "{}", stderr(&o));

    // Bad parameters and a code without a recipient: one line, exit 2, nothing written.
    for (extra, why) in [
        (vec!["-r", "r9", "--recipient-code", "tardos1", "--code-groups", "0"], "code groups"),
        (vec!["-r", "r9", "--recipient-code", "tardos1", "--code-cutoff", "0.7"], "code cutoff"),
        (vec!["--recipient-code", "tardos1"], "needs scheme ss2 and a recipient"),
    ] {
        let mut args =
            vec!["issue", "-k", "lab.key", "--label", "v1", &model, "--cert", "bad.json"];
        args.extend(extra);
        let o = scene.run(&args);
        assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
        let err = stderr(&o);
        assert!(err.contains(why) && err.lines().count() == 1, "{err}");
        assert!(!scene.path("bad.json").exists());
    }
}

/// `detect --json` of `suspect` with certificate `cert`.
fn detect_json(scene: &Scene, cert: &str, suspect: &str) -> serde_json::Value {
    json(&scene.run(&["detect", "-k", "lab.key", "--cert", cert, suspect, "--json"]))
}

#[test]
fn a_recipient_share_moves_the_mark_between_components_at_the_same_cost() {
    let scene = Scene::new();
    lab_key(&scene, 5);
    let model =
        common::write_llama(scene.dir.path(), "model.safetensors", &TINY_LLAMA, Dtype::BF16, 3);
    let model = model.to_string_lossy().into_owned();
    // What names and marks alice's release, for embed and issue alike.
    let common = [
        "-k",
        "lab.key",
        "--label",
        "v1",
        "-r",
        "alice",
        "--strength",
        "0.04",
        "--created",
        CREATED,
    ];
    let release = |out: &str, cert: &str, share: Option<&str>| {
        let mut args = vec!["embed"];
        args.extend(common);
        args.extend([model.as_str(), "-o", out, "--cert", cert]);
        if let Some(s) = share {
            args.extend(["--recipient-share", s]);
        }
        scene.ok(&args)
    };
    let said = release("half.safetensors", "half.json", Some("0.5"));
    assert!(said.contains("recipient share 0.5: given"), "{said}");
    release("most.safetensors", "most.json", Some("0.8"));
    // The certificate records the split: sqrt(0.8) and sqrt(0.2) of the
    // strength, the same total energy.
    let strengths = |cert: &str| {
        let c = json_of(&String::from_utf8_lossy(&read(&scene.path(cert))));
        let p = &c["predicate"];
        let f = |k: &str| p[k].as_f64().unwrap_or_else(|| panic!("no {k} in {p}"));
        (f("release_strength"), f("recipient_strength"))
    };
    let (hr, hq) = strengths("half.json");
    assert_eq!(hr, hq, "a share of 0.5 splits the energy in half");
    let (mr, mq) = strengths("most.json");
    assert!((mq / mr - 2.0).abs() < 1e-12, "recipient/release {mq}/{mr}, not sqrt(0.8/0.2)");
    assert!((mr * mr + mq * mq - 16e-4).abs() < 1e-15, "total energy {}", mr * mr + mq * mq);

    // Each component's blind z follows its strength; the decision, which
    // weighs the components by their strengths, keeps the whole mark's z.
    let half = detect_json(&scene, "half.json", "half.safetensors");
    let most = detect_json(&scene, "most.json", "most.safetensors");
    let z = |v: &serde_json::Value, k: &str| {
        let x = if k.is_empty() { &v["z"] } else { &v[k]["z"] };
        x.as_f64().unwrap_or_else(|| panic!("no {k} z in {v}"))
    };
    let (h_p, h_q, h) =
        (z(&half, "release_component"), z(&half, "recipient_component"), z(&half, ""));
    let (m_p, m_q, m) =
        (z(&most, "release_component"), z(&most, "recipient_component"), z(&most, ""));
    eprintln!("share 0.5: release z {h_p:.2}, recipient z {h_q:.2}, decision z {h:.2}");
    eprintln!("share 0.8: release z {m_p:.2}, recipient z {m_q:.2}, decision z {m:.2}");
    assert!(
        m_q / h_q > 1.1 && m_q / h_q < 1.45,
        "recipient z {m_q} against {h_q} (sqrt 1.6 = 1.26)"
    );
    assert!(m_p / h_p > 0.5 && m_p / h_p < 0.8, "release z {m_p} against {h_p} (sqrt 0.4 = 0.63)");
    assert!((m / h - 1.0).abs() < 0.1, "decision z {m} at share 0.8 against {h} at the default");
    assert_eq!(most["detected"], true, "{most}");

    // issue signs the same certificate and says how to write the copy.
    let mut args = vec!["issue"];
    args.extend(common);
    args.extend(["--recipient-share", "0.8", "-o", "most.safetensors", &model]);
    args.extend(["--cert", "issued.json"]);
    let out = scene.ok(&args);
    assert_eq!(read(&scene.path("issued.json")), read(&scene.path("most.json")));
    assert!(out.contains("--recipient-share 0.8"), "{out}");

    // Without a share: the default rule's, from the predicted z (which this
    // strength puts well above the floor's 12), printed by embed, recorded
    // as the strengths, and written into issue's command for the copy,
    // which reproduces the certificate byte for byte.
    let said = release("default.safetensors", "default.json", None);
    // The number printed after `label`, up to `end`.
    let number = |label: &str, end: char| -> f64 {
        said.split(label)
            .nth(1)
            .and_then(|r| r.split(end).next())
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("no {label} in {said}"))
    };
    let share = number("recipient share ", ':');
    let predicted = number("predicted blind z ", ' ');
    assert!(said.contains(&format!("recipient share {share}: the default")), "{said}");
    let rule = (1.0 - (12.0 / 2f64.sqrt() / predicted).powi(2)).clamp(0.5, 0.8);
    assert!(predicted > 14.0 && share > 0.5, "z {predicted}, share {share}: {said}");
    assert!((share - rule).abs() <= 0.011, "share {share}, rule {rule} at z {predicted}");
    let (dr, dq) = strengths("default.json");
    assert!((dq / dr - (share / (1.0 - share)).sqrt()).abs() < 1e-9, "{dq}/{dr} at {share}");
    let mut args = vec!["issue"];
    args.extend(common);
    args.extend(["-o", "default.safetensors", &model, "--cert", "issued-default.json"]);
    let out = scene.ok(&args);
    assert!(out.contains(&format!("--recipient-share {share} ")), "{out}");
    let same = |a: &str, b: &str| read(&scene.path(a)) == read(&scene.path(b));
    assert!(same("issued-default.json", "default.json"), "issue's default differs from embed's");
    let mut args = vec!["issue"];
    args.extend(common);
    let given = share.to_string();
    args.extend(["--recipient-share", &given, "-o", "default.safetensors", &model]);
    args.extend(["--cert", "issued-given.json"]);
    scene.ok(&args);
    assert!(same("issued-given.json", "default.json"), "the printed share gives another copy");
    let default = detect_json(&scene, "default.json", "default.safetensors");
    assert_eq!(default["detected"], true, "{default}");

    // Out of range, or without a recipient to share with: refused, one line.
    for (extra, why) in [
        (vec!["-r", "alice", "--recipient-share", "0.99"], "recipient share 0.99 is out of range"),
        (vec!["-r", "alice", "--recipient-share", "NaN"], "recipient share NaN is out of range"),
        (vec!["--recipient-share", "0.8"], "needs scheme ss2 and a recipient"),
    ] {
        let mut args = vec!["embed", "-k", "lab.key", "--label", "v1", &model, "-o", "refused"];
        args.extend(extra.iter().copied());
        let o = scene.run(&args);
        assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(why) && err.trim().lines().count() == 1, "{err}");
        assert!(!scene.path("refused").exists());
    }
}
