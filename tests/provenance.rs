//! End-to-end tests of provenance: certificates checked by an independent
//! implementation, tampering, verification of models against certificates,
//! signed detection reports and their chains, disputes with a revealed mark
//! key, and leak identification across recipients.

mod common;

use common::{json, stderr, stdout, Scene};

use std::path::Path;
use std::process::Command;

use weightmark::synth::{
    gaussian_matrix, llama, write_file, write_sharded, LlamaShape, SynthTensor,
};
use weightmark::{Dtype, Model};

const SMALL: LlamaShape =
    LlamaShape { vocab: 4096, hidden: 256, intermediate: 688, layers: 4, heads: 4, kv_heads: 2 };

/// A two-tensor model: a small certificate, so every byte can be flipped.
fn two_tensor_model(path: &Path) {
    let tensors = vec![
        gaussian_matrix("a.weight", 64, 128, Dtype::F32, 1),
        gaussian_matrix("b.weight", 128, 64, Dtype::F32, 2),
    ];
    write_file(path, &tensors, None).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn an_independent_implementation_verifies_certificates_and_reports() {
    if !common::python_has(&["cryptography"]) {
        return;
    }
    let s = Scene::new();
    s.ok(&["keygen", "-o", "lab"]);
    write_file(&s.path("m.safetensors"), &llama(&SMALL, Dtype::BF16, 1), None)
        .unwrap_or_else(|e| panic!("{e}"));
    s.ok(&[
        "embed",
        "-k",
        "lab.key",
        "--strength",
        "0.01",
        "m.safetensors",
        "-o",
        "marked.safetensors",
    ]);
    s.ok(&[
        "detect",
        "-k",
        "lab.key",
        "--cert",
        "marked.safetensors.cert.json",
        "marked.safetensors",
        "--report",
        "r.json",
    ]);
    s.ok(&["keygen", "-o", "other"]);
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/verify_certificate.py");
    let python = |file: &str, key: &str| {
        Command::new("python3")
            .arg(&script)
            .args([file, key])
            .current_dir(s.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("python3 is needed for this test: {e}"))
    };
    let cert = python("marked.safetensors.cert.json", "lab.pub");
    assert!(
        !stderr(&cert).contains("No module named 'cryptography'"),
        "the Python `cryptography` package is missing: run scripts/test, which installs it"
    );
    assert_eq!(cert.status.code(), Some(0), "{}{}", stdout(&cert), stderr(&cert));
    assert_eq!(stdout(&cert).trim(), "ok https://weightmark.dev/release/v1");
    let report = python("r.json", "lab.pub");
    assert_eq!(
        stdout(&report).trim(),
        "ok https://weightmark.dev/detection/v1",
        "{}",
        stderr(&report)
    );
    let wrong = python("marked.safetensors.cert.json", "other.pub");
    assert_eq!(wrong.status.code(), Some(1));
}

#[test]
fn flipping_any_byte_of_payload_or_signature_makes_verify_exit_1() {
    let s = Scene::new();
    s.ok(&["keygen", "-o", "lab"]);
    two_tensor_model(&s.path("m.safetensors"));
    s.ok(&["embed", "-k", "lab.key", "m.safetensors", "-o", "marked.safetensors"]);
    let original = std::fs::read(s.path("marked.safetensors.cert.json")).unwrap_or_default();
    let text = String::from_utf8_lossy(&original).into_owned();
    let span = |field: &str| {
        let key = format!("\"{field}\": \"");
        let start = text.find(&key).map(|i| i + key.len()).unwrap_or_else(|| panic!("no {field}"));
        let end = start + text[start..].find('"').unwrap_or(0);
        start..end
    };
    let positions: Vec<usize> = span("payload").chain(span("sig")).collect();
    assert!(positions.len() > 500, "payload and signature span {} bytes", positions.len());
    for (n, &i) in positions.iter().enumerate() {
        let mut bytes = original.clone();
        bytes[i] ^= if n % 2 == 0 { 0x01 } else { 0x20 };
        std::fs::write(s.path("tampered.json"), &bytes).unwrap_or_else(|e| panic!("{e}"));
        let o = s.run(&["verify", "tampered.json", "--pub", "lab.pub"]);
        assert_eq!(o.status.code(), Some(1), "byte {i} flipped: {}{}", stdout(&o), stderr(&o));
    }
    s.ok(&["keygen", "-o", "other"]);
    let o = s.run(&["verify", "marked.safetensors.cert.json", "--pub", "other.pub"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("INVALID") && stdout(&o).contains("not by key"), "{}", stdout(&o));
    let o = s.run(&["verify", "m.safetensors", "--pub", "lab.pub"]);
    assert_eq!(o.status.code(), Some(2), "not an envelope at all is unusable input");
}

#[test]
fn verify_model_names_the_changed_tensor_and_accepts_a_resharded_copy() {
    let s = Scene::new();
    s.ok(&["keygen", "-o", "lab"]);
    write_file(&s.path("m.safetensors"), &llama(&SMALL, Dtype::F16, 3), None)
        .unwrap_or_else(|e| panic!("{e}"));
    s.ok(&["embed", "-k", "lab.key", "m.safetensors", "-o", "marked.safetensors"]);
    let cert = "marked.safetensors.cert.json";
    assert!(s
        .ok(&["verify", cert, "--pub", "lab.pub", "--model", "marked.safetensors"])
        .contains("MODEL MATCHES:"));

    let marked = Model::open(s.path("marked.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    let mut tensors: Vec<SynthTensor> = marked
        .tensors()
        .map(|t| SynthTensor {
            name: t.name.into(),
            dtype: t.dtype,
            shape: t.shape.to_vec(),
            data: t.data().into_owned(),
        })
        .collect();
    write_sharded(&s.path("resharded"), &tensors, 3).unwrap_or_else(|e| panic!("{e}"));
    let out = s.ok(&["verify", cert, "--pub", "lab.pub", "--model", "resharded"]);
    assert!(out.contains("MODEL MATCHES AT TENSOR LEVEL") && out.contains("files differ"), "{out}");

    let victim = "model.layers.2.mlp.down_proj.weight";
    if let Some(t) = tensors.iter_mut().find(|t| t.name == victim) {
        t.data[10] ^= 0x01;
    }
    write_file(&s.path("edited.safetensors"), &tensors, None).unwrap_or_else(|e| panic!("{e}"));
    let o = s.run(&["verify", cert, "--pub", "lab.pub", "--model", "edited.safetensors"]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    assert!(text.contains(&format!("tensor changed: {victim}")), "{text}");
    assert_eq!(text.matches("tensor changed").count(), 1, "{text}");
}

#[test]
fn reports_are_signed_by_whoever_ran_detection_and_chain_back() {
    let s = Scene::new();
    s.ok(&["keygen", "-o", "lab"]);
    s.ok(&["keygen", "-o", "auditor"]);
    write_file(&s.path("m.safetensors"), &llama(&SMALL, Dtype::F32, 4), None)
        .unwrap_or_else(|e| panic!("{e}"));
    s.ok(&[
        "embed",
        "-k",
        "lab.key",
        "-r",
        "acme",
        "--strength",
        "0.01",
        "m.safetensors",
        "-o",
        "acme.safetensors",
    ]);
    let cert = "acme.safetensors.cert.json";
    s.ok(&[
        "detect",
        "-k",
        "lab.key",
        "--cert",
        cert,
        "acme.safetensors",
        "--report",
        "first.json",
    ]);
    // An auditor holding only a revealed mark key and the owner's public key.
    s.ok(&[
        "reveal",
        "-k",
        "lab.key",
        "--cert",
        cert,
        "--report",
        "first.json",
        "-o",
        "acme.markkey",
    ]);
    s.ok(&[
        "detect",
        "--mark-key",
        "acme.markkey",
        "--cert",
        cert,
        "--pub",
        "lab.pub",
        "-k",
        "auditor.key",
        "--original",
        "m.safetensors",
        "acme.safetensors",
        "--report",
        "second.json",
        "--builds-on",
        "first.json",
    ]);
    let o = s.run(&["verify", "second.json", "--pub", "auditor.pub", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["kind"], "report");
    let p = &v["predicate"];
    assert_eq!(p["mode"], "informed");
    assert_eq!(p["detected"], true);
    assert_eq!(p["recipient"], "acme");
    let first_sha =
        json(&s.run(&["verify", "first.json", "--pub", "lab.pub", "--json"]))["sha256"].clone();
    assert_eq!(p["builds_on"]["sha256"], first_sha);
    assert_eq!(p["builds_on"]["signature_checked"], true, "checked with --pub");
    assert_eq!(p["dispute"]["committed"], true);
    let cert_sha = json(&s.run(&["verify", cert, "--pub", "lab.pub", "--json"]))["sha256"].clone();
    assert_eq!(p["certificate"]["sha256"], cert_sha);
    // The report is the auditor's, not the lab's.
    assert_eq!(s.run(&["verify", "second.json", "--pub", "lab.pub"]).status.code(), Some(1));
}

#[test]
fn a_revealed_mark_key_finds_its_release_and_is_refused_for_another() {
    let s = Scene::new();
    s.ok(&["keygen", "-o", "lab"]);
    write_file(&s.path("m.safetensors"), &llama(&SMALL, Dtype::BF16, 5), None)
        .unwrap_or_else(|e| panic!("{e}"));
    for r in ["alice", "bob"] {
        s.ok(&[
            "embed",
            "-k",
            "lab.key",
            "-r",
            r,
            "--strength",
            "0.01",
            "m.safetensors",
            "-o",
            &format!("{r}.safetensors"),
        ]);
        let cert = format!("{r}.safetensors.cert.json");
        let commit = format!("{r}.commit.json");
        let suspect = format!("{r}.safetensors");
        s.ok(&["detect", "-k", "lab.key", "--cert", &cert, &suspect, "--report", &commit]);
        let key = format!("{r}.markkey");
        s.ok(&["reveal", "-k", "lab.key", "--cert", &cert, "--report", &commit, "-o", &key]);
    }
    let key_text = std::fs::read_to_string(s.path("alice.markkey")).unwrap_or_default();
    let secret_text = std::fs::read_to_string(s.path("lab.key")).unwrap_or_default();
    let seed_line = secret_text.lines().last().unwrap_or_default();
    assert!(key_text.contains("\"payloadType\"") && !key_text.contains(seed_line));

    let found = s.run(&[
        "detect",
        "--mark-key",
        "alice.markkey",
        "--cert",
        "alice.safetensors.cert.json",
        "--pub",
        "lab.pub",
        "alice.safetensors",
        "--json",
    ]);
    assert_eq!(found.status.code(), Some(0), "{}", stderr(&found));
    assert_eq!(json(&found)["certificate_signature_checked"], true);

    let refused = s.run(&[
        "detect",
        "--mark-key",
        "bob.markkey",
        "--cert",
        "alice.safetensors.cert.json",
        "--pub",
        "lab.pub",
        "alice.safetensors",
    ]);
    assert_eq!(refused.status.code(), Some(2));
    let err = stderr(&refused);
    assert!(
        err.contains("does not belong to the release of this certificate")
            && err.contains("'alice'"),
        "{err}"
    );
    assert!(stdout(&refused).is_empty(), "detection must not run: {}", stdout(&refused));
    // A mark key cannot stand in for the owner's secret key.
    let o = s.run(&["embed", "-k", "alice.markkey", "m.safetensors", "-o", "x.safetensors"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn identify_ranks_the_leaking_recipient_first_with_adjusted_p_values() {
    let s = Scene::new();
    s.ok(&["keygen", "-o", "lab"]);
    write_file(&s.path("m.safetensors"), &llama(&SMALL, Dtype::F32, 6), None)
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(s.path("certs")).unwrap_or_else(|e| panic!("{e}"));
    for r in ["r1", "r2", "r3", "r4", "r5"] {
        s.ok(&[
            "embed",
            "-k",
            "lab.key",
            "-r",
            r,
            "--label",
            "v2",
            "--strength",
            "0.01",
            "m.safetensors",
            "-o",
            &format!("{r}.safetensors"),
            "--cert",
            &format!("certs/{r}.json"),
        ]);
    }
    let o = s.run(&["identify", "-k", "lab.key", "--certs", "certs", "r3.safetensors", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["certificates"], 5);
    assert_eq!(v["identified"], 1);
    let c = v["candidates"].as_array().cloned().unwrap_or_default();
    assert_eq!(c[0]["recipient"], "r3");
    assert_eq!(c[0]["identified"], true);
    let lp = c[0]["log10_p_value"].as_f64().unwrap_or(0.0);
    let la = c[0]["log10_adjusted_p_value"].as_f64().unwrap_or(0.0);
    assert!((la - lp - 5f64.log10()).abs() < 1e-9, "Bonferroni for 5 tests: {lp} {la}");
    assert!(c[1..].iter().all(|x| x["identified"] == false));

    let informed = s.run(&[
        "identify",
        "-k",
        "lab.key",
        "--certs",
        "certs",
        "--original",
        "m.safetensors",
        "r3.safetensors",
        "--json",
    ]);
    assert_eq!(json(&informed)["candidates"][0]["recipient"], "r3");
    let unmarked = s.run(&["identify", "-k", "lab.key", "--certs", "certs", "m.safetensors"]);
    assert_eq!(unmarked.status.code(), Some(1), "{}", stdout(&unmarked));
}

/// The auditor's point 7, first bullet: a report cited with `--builds-on` is
/// checked when its signer's public key is at hand (the detecting key's own,
/// `--pub`, or `--builds-on-pub`); a forged one is refused, and one that could
/// not be checked is recorded and shown as unchecked, not as "signed by".
#[test]
fn a_cited_report_is_checked_or_recorded_as_unchecked() {
    let s = Scene::new();
    s.ok(&["keygen", "-o", "lab"]);
    s.ok(&["keygen", "-o", "other"]);
    two_tensor_model(&s.path("m.safetensors"));
    s.ok(&["embed", "-k", "lab.key", "m.safetensors", "-o", "marked.safetensors"]);
    let cert = "marked.safetensors.cert.json";
    let detect = |key: &str, report: &str, extra: &[&str]| {
        let mut args = vec!["detect", "-k", key, "marked.safetensors", "--report", report];
        if key == "lab.key" {
            args.extend(["--cert", cert]);
        } else {
            args.extend(["--label", "someone else's"]);
        }
        args.extend(extra);
        s.run(&args)
    };
    for (key, report) in [("lab.key", "first.json"), ("other.key", "other.json")] {
        let o = detect(key, report, &[]);
        assert_ne!(o.status.code(), Some(2), "{}", stderr(&o));
    }
    // The lab's report with another key's signature: its keyid still says lab.
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(s.path(f)).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{f}: {e}"))
    };
    let mut forged = read("first.json");
    forged["signatures"][0]["sig"] = read("other.json")["signatures"][0]["sig"].clone();
    std::fs::write(s.path("forged.json"), forged.to_string()).unwrap_or_else(|e| panic!("{e}"));

    let refused = detect("lab.key", "second.json", &["--builds-on", "forged.json"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stdout(&refused));
    let err = stderr(&refused);
    assert!(err.contains("forged.json") && err.contains("signature"), "{err}");
    assert!(!s.path("second.json").exists());

    let builds_on = |report: &str| {
        let v = json(&s.run(&["verify", report, "--pub", "lab.pub", "--json"]));
        v["predicate"]["builds_on"].clone()
    };
    // Signed by someone whose public key was not given: recorded as unchecked.
    let o = detect("lab.key", "third.json", &["--builds-on", "other.json"]);
    assert_ne!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(builds_on("third.json")["signature_checked"], false);
    let text = s.ok(&["verify", "third.json", "--pub", "lab.pub"]);
    assert!(text.contains("signature NOT checked"), "{text}");
    // The same report with its signer's public key: checked.
    let o = detect(
        "lab.key",
        "fourth.json",
        &["--builds-on", "other.json", "--builds-on-pub", "other.pub"],
    );
    assert_ne!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(builds_on("fourth.json")["signature_checked"], true);
    let text = s.ok(&["verify", "fourth.json", "--pub", "lab.pub"]);
    assert!(text.contains("signature checked against key"), "{text}");
    // The detecting key's own earlier report is checked with that key.
    let o = detect("lab.key", "fifth.json", &["--builds-on", "first.json"]);
    assert_ne!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(builds_on("fifth.json")["signature_checked"], true);
}

/// A marked copy for recipient `alice` of a small Llama model, its
/// certificate, and the lab's signed report committing to it as the suspect.
fn committed_suspect(s: &Scene) {
    s.ok(&["keygen", "-o", "lab"]);
    write_file(&s.path("m.safetensors"), &llama(&SMALL, Dtype::BF16, 7), None)
        .unwrap_or_else(|e| panic!("{e}"));
    s.ok(&[
        "embed",
        "-k",
        "lab.key",
        "-r",
        "alice",
        "--strength",
        "0.01",
        "m.safetensors",
        "-o",
        "alice.safetensors",
    ]);
    s.ok(&[
        "detect",
        "-k",
        "lab.key",
        "--cert",
        "alice.safetensors.cert.json",
        "alice.safetensors",
        "--report",
        "commit.json",
    ]);
}

/// Writes the mark key `reveal` discloses for the release of `cert` as a
/// bare mark key file (the format before reveal statements).
fn bare_mark_key(s: &Scene, cert: &str, path: &str) {
    let secret = weightmark::SecretKey::load(&s.path("lab.key")).unwrap_or_else(|e| panic!("{e}"));
    let c = weightmark::load_certificate(&s.path(cert), &secret.public_key())
        .unwrap_or_else(|e| panic!("{e}"));
    let target =
        weightmark::Target::from_certificate(&c, &secret).unwrap_or_else(|e| panic!("{e}"));
    let release = weightmark::RevealedRelease {
        label: &c.predicate().label,
        recipient: c.predicate().recipient.as_deref(),
        certificate_sha256: &c.digest,
    };
    target
        .recipient_key
        .unwrap_or(target.mark_key)
        .save(&s.path(path), &release)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Point 7, second bullet: a revealed key is used with the owner's public
/// key, so an unsigned or edited certificate cannot pass.
#[test]
fn detect_with_a_revealed_key_needs_the_owners_public_key() {
    let s = Scene::new();
    committed_suspect(&s);
    let cert = "alice.safetensors.cert.json";
    bare_mark_key(&s, cert, "bare.markkey");
    let o = s.run(&["detect", "--mark-key", "bare.markkey", "--cert", cert, "alice.safetensors"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("--pub"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
}

/// Point 7, third bullet: the framing attack. A revealed key can plant its
/// mark in any model, so it settles only the suspect that a report signed by
/// the owner fixed before the reveal; any other model is refused, and a bare
/// mark key (the old format, no commitment) is run with a warning on stdout.
#[test]
fn a_revealed_key_settles_only_the_suspect_committed_before_the_reveal() {
    let s = Scene::new();
    committed_suspect(&s);
    let cert = "alice.safetensors.cert.json";
    s.ok(&[
        "reveal",
        "-k",
        "lab.key",
        "--cert",
        cert,
        "--report",
        "commit.json",
        "-o",
        "reveal.json",
    ]);
    let text = s.ok(&["verify", "reveal.json", "--pub", "lab.pub"]);
    assert!(text.contains("VALID reveal"), "{text}");
    let commit_sha =
        json(&s.run(&["verify", "commit.json", "--pub", "lab.pub", "--json"]))["sha256"].clone();
    let reveal = |suspect: &str| {
        s.run(&[
            "detect",
            "--mark-key",
            "reveal.json",
            "--cert",
            cert,
            "--pub",
            "lab.pub",
            suspect,
            "--json",
        ])
    };
    let found = reveal("alice.safetensors");
    assert_eq!(found.status.code(), Some(0), "{}", stderr(&found));
    let v = json(&found);
    assert_eq!(v["dispute"]["committed"], true, "{v}");
    assert_eq!(v["dispute"]["report_sha256"], commit_sha, "{v}");

    // Someone holding the revealed key makes a model that carries the mark but
    // was never committed to (here: alice's copy, lightly edited).
    s.ok(&[
        "attack",
        "noise",
        "--relative",
        "0.001",
        "alice.safetensors",
        "-o",
        "planted.safetensors",
    ]);
    let framed = reveal("planted.safetensors");
    assert_eq!(framed.status.code(), Some(2), "{}", stdout(&framed));
    let err = stderr(&framed);
    assert!(err.contains("reveal.json") && err.contains("committed"), "{err}");
    assert!(stdout(&framed).is_empty(), "{}", stdout(&framed));

    // A reveal must cite a report signed by the owner about this release.
    s.ok(&["keygen", "-o", "other"]);
    let o = s.run(&[
        "detect",
        "-k",
        "other.key",
        "--label",
        "x",
        "alice.safetensors",
        "--report",
        "foreign.json",
    ]);
    assert_ne!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = s.run(&[
        "reveal",
        "-k",
        "lab.key",
        "--cert",
        cert,
        "--report",
        "foreign.json",
        "-o",
        "bad.json",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(!s.path("bad.json").exists());

    // The old bare mark key file: no commitment to check, so a warning.
    bare_mark_key(&s, cert, "bare.markkey");
    let args = ["detect", "--mark-key", "bare.markkey", "--cert", cert, "--pub", "lab.pub"];
    let o = s.run(&[&args[..], &["planted.safetensors"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("NOT committed"), "{}", stdout(&o));
    let o = s.run(&[&args[..], &["planted.safetensors", "--json"]].concat());
    assert_eq!(json(&o)["dispute"]["committed"], false);
}

#[test]
fn a_coded_release_is_disputed_with_the_recipient_and_release_keys_and_for_that_recipient_only() {
    let s = Scene::new();
    s.ok(&["keygen", "-o", "lab"]);
    s.ok(&["keygen", "-o", "arbiter"]);
    write_file(&s.path("m.safetensors"), &llama(&LlamaShape::TINY, Dtype::BF16, 6), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let code = ["--recipient-code", "tardos1", "--code-groups", "4096"];
    for r in ["alice", "bob"] {
        let out = format!("{r}.safetensors");
        let mut args = vec!["embed", "-k", "lab.key", "-r", r, "--strength", "0.03"];
        args.extend(code);
        args.extend(["m.safetensors", "-o", &out]);
        s.ok(&args);
    }
    let (alice, bob) = ("alice.safetensors.cert.json", "bob.safetensors.cert.json");
    s.ok(&[
        "attack",
        "collude",
        "--method",
        "midpoint",
        "--with",
        "bob.safetensors",
        "alice.safetensors",
        "-o",
        "leak.safetensors",
    ]);
    let commit = ["--original", "m.safetensors", "--tested", "2", "leak.safetensors"];
    let mut args = vec!["detect", "-k", "lab.key", "--cert", alice, "--report", "commit.json"];
    args.extend(commit);
    s.ok(&args);
    let said = s.ok(&[
        "reveal",
        "-k",
        "lab.key",
        "--cert",
        alice,
        "--report",
        "commit.json",
        "-o",
        "r.json",
    ]);
    assert!(said.contains("recipient and release component keys"), "{said}");
    // The arbiter scores alice by the code, for the committed suspect.
    let arbiter = |cert: &str, suspect: &str| {
        s.run(&[
            "detect",
            "--mark-key",
            "r.json",
            "--cert",
            cert,
            "--pub",
            "lab.pub",
            "-k",
            "arbiter.key",
            "--original",
            "m.safetensors",
            "--tested",
            "2",
            suspect,
            "--json",
        ])
    };
    let o = arbiter(alice, "leak.safetensors");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["dispute"]["committed"], true);
    let coded = &v["recipient_component"];
    assert!(coded["range"].as_f64().is_some(), "not scored by the code: {v}");
    let log10_p = coded["log10_p_value"].as_f64().unwrap_or(0.0);
    assert!(log10_p + 2f64.log10() <= -9.0, "alice not named: {coded}");
    // Bob's certificate with alice's keys: refused before any detection.
    let o = arbiter(bob, "leak.safetensors");
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("r.json") && err.contains("bob.safetensors.cert.json"), "{err}");
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    // Another suspect (alice's own copy) was not committed to: refused.
    let o = arbiter(alice, "alice.safetensors");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not committed to before the reveal"), "{}", stderr(&o));
    // The statement, edited after signing (the recipient renamed): refused.
    let text = std::fs::read_to_string(s.path("r.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let payload = v["payload"].as_str().unwrap_or_default();
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine as _;
    let decoded = BASE64.decode(payload).unwrap_or_else(|e| panic!("{e}"));
    let edited = String::from_utf8_lossy(&decoded).replace("\"alice\"", "\"bob\"");
    assert_ne!(edited.as_bytes(), decoded.as_slice());
    let mut v = v.clone();
    v["payload"] = serde_json::Value::String(BASE64.encode(edited.as_bytes()));
    std::fs::write(s.path("r.json"), v.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let o = arbiter(bob, "leak.safetensors");
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("r.json"), "{}", stderr(&o));
}
