//! `weightmark fingerprint plant` and `check` on a local model, end to end
//! (built with `--features eval`), on the tiny synthetic Llama with a byte
//! tokenizer the eval tests use: mark, then plant on the marked release (the
//! new certificate supersedes the old one, which is left as it was, and the
//! mark is still found), check the planted model (found, with the exact
//! binomial p; the unplanted model and another release's key are not),
//! verify the signed report, reveal the fingerprint key for that suspect
//! only. Plant then mark: the final certificate covers both, names the
//! planted one, and `verify --chain` follows the link. And no false
//! accusation: 1,000 wrong keys asked of the planted model match as the
//! binomial bound says.

mod common;

use common::{json, license_text, stderr, stdout, write_llama_dir, Scene};
use sha2::{Digest, Sha256};
use weightmark::fingerprint::{binomial, certify_fingerprint, FingerprintKey, FingerprintRelease};
use weightmark::synth::LlamaShape;
use weightmark::{Dtype, Model, SecretKey};

/// Planting settings that plant 8 pairs in the tiny model in about 100 steps
/// (not through pruned views, as the default does: the tests that plant
/// through them say so).
// 450 steps, not 300: planting stops as soon as every trigger is planted.
const TINY_PLANT: [&str; 14] = [
    "--count",
    "8",
    "--seq",
    "64",
    "--lr",
    "1e-2",
    "--max-steps",
    "450",
    "--distill",
    "0.5",
    "--seed",
    "3",
    "--prune-robust",
    "0",
];

/// The environment of the plants whose outcome a test asserts: one thread
/// (whether multithreaded planting is bit-reproducible is not established;
/// one thread takes the question out of these tests).
const ONE_THREAD: [(&str, &str); 1] = [("RAYON_NUM_THREADS", "1")];

/// Writes `owner.key` and `owner.pub` from a fixed seed. The triggers and
/// answers derive from the owner key, and how many of 8 a tiny plant takes
/// depends on them: with a fresh random key per run the tests planted 8, 7, 6
/// or 0 of 8. A fixed key makes the planted outcome the same in every run.
fn fixed_owner(s: &Scene) {
    SecretKey::from_seed([0x4f; 32])
        .save(&s.path("owner.key"), &s.path("owner.pub"), "2026-12-03T00:00:00Z")
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Planting that keeps the mark of the tiny model.
const GENTLE_PLANT: [&str; 14] = [
    "--count",
    "8",
    "--seq",
    "64",
    "--lr",
    "2e-3",
    "--max-steps",
    "800",
    "--distill",
    "0.5",
    "--seed",
    "3",
    "--prune-robust",
    "0",
];

fn z_of(s: &Scene, args: &[&str]) -> (f64, bool) {
    let o = s.run(args);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{args:?}: {}", stderr(&o));
    let v = json(&o);
    (v["z"].as_f64().unwrap_or(f64::NAN), v["detected"] == true)
}

#[test]
fn mark_then_plant_keeps_the_mark_and_the_fingerprint_is_found_reported_and_revealed() {
    if !common::has_license_text() {
        return;
    }
    let s = Scene::new();
    write_llama_dir(&s.path("tiny"), &LlamaShape::TINY, Dtype::F32, 11);
    fixed_owner(&s);
    let text = license_text().display().to_string();
    // A strong mark: the tiny model has few elements.
    s.ok(&[
        "embed",
        "-k",
        "owner.key",
        "--label",
        "tiny",
        "tiny",
        "-o",
        "marked",
        "--strength",
        "0.05",
    ]);
    let old_cert = std::fs::read(s.path("marked.cert.json")).unwrap_or_default();
    let blind = ["detect", "-k", "owner.key", "--cert", "marked.cert.json", "marked", "--json"];
    let (z_before, found_before) = z_of(&s, &blind);

    let mut plant = vec![
        "fingerprint",
        "plant",
        "-k",
        "owner.key",
        "--cert",
        "marked.cert.json",
        "marked",
        "-o",
        "planted",
        "--text",
        &text,
    ];
    // A gentler learning rate than TINY_PLANT's: AdamW moves every weight by
    // about the learning rate a step, and at 1e-2 a hundred steps bury the
    // tiny model's mark (blind z 19 -> 2, informed 2).
    plant.extend(GENTLE_PLANT);
    let o = s.run_env(&plant, &ONE_THREAD);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("8 of 8 after"), "{}", stdout(&o));
    // Nothing overwritten without --force.
    let again = s.run(&plant);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("planted: exists"), "{}", stderr(&again));
    assert_eq!(std::fs::read(s.path("marked.cert.json")).unwrap_or_default(), old_cert);

    // The new certificate: the mark's fields kept, the fingerprint added,
    // the old certificate named, the planted files covered.
    let v: serde_json::Value = serde_json::from_str(&s.ok(&[
        "verify",
        "planted.cert.json",
        "--pub",
        "owner.pub",
        "--model",
        "planted",
        "--json",
    ]))
    .unwrap_or_default();
    let old: serde_json::Value = serde_json::from_str(&s.ok(&[
        "verify",
        "marked.cert.json",
        "--pub",
        "owner.pub",
        "--json",
    ]))
    .unwrap_or_default();
    let (p, q) = (&v["predicate"], &old["predicate"]);
    assert_eq!(p["supersedes"].as_str(), Some(common_hex(&old_cert).as_str()));
    assert_eq!(p["fingerprint"]["scheme"], "fp1");
    assert_eq!(p["fingerprint"]["count"], 8);
    assert!(p["fingerprint"].get("triggers").is_none());
    for field in ["scheme", "mark_key_commitment", "tensors", "original_tensor_root", "label"] {
        assert_eq!(p[field], q[field], "{field}");
    }
    assert_ne!(p["tensor_digests"], q["tensor_digests"], "planting moved the weights");

    // The mark is still found with the new certificate, blind and informed.
    let blind = ["detect", "-k", "owner.key", "--cert", "planted.cert.json", "planted", "--json"];
    let (z_after, found_after) = z_of(&s, &blind);
    let informed = [
        "detect",
        "-k",
        "owner.key",
        "--cert",
        "planted.cert.json",
        "--original",
        "tiny",
        "planted",
        "--json",
    ];
    let (zi_after, found_informed) = z_of(&s, &informed);
    println!("blind z before planting {z_before:.2} ({found_before}), after {z_after:.2} ({found_after}); informed after {zi_after:.1}");
    assert!(found_informed, "informed z {zi_after}");
    assert_eq!(found_after, found_before, "blind z {z_before} -> {z_after}");

    // identify tests the release once: the marked certificate, superseded
    // by the planted one in the same directory, is skipped with a note.
    std::fs::create_dir(s.path("certs")).unwrap_or_else(|e| panic!("{e}"));
    for c in ["marked.cert.json", "planted.cert.json"] {
        std::fs::copy(s.path(c), s.path("certs").join(c)).unwrap_or_else(|e| panic!("{e}"));
    }
    let o = s.run(&[
        "identify",
        "-k",
        "owner.key",
        "--certs",
        "certs",
        "--original",
        "tiny",
        "planted",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("marked.cert.json: superseded by"), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["certificates"].as_u64(), Some(1), "{v}");
    assert!(
        v["candidates"][0]["certificate"]
            .as_str()
            .is_some_and(|c| c.ends_with("planted.cert.json")),
        "{v}"
    );

    // The planted model gives its keyed answers: 8 of 8, p = 256^-8.
    let check = [
        "fingerprint",
        "check",
        "-k",
        "owner.key",
        "--cert",
        "planted.cert.json",
        "planted",
        "--json",
        "--report",
        "r.json",
    ];
    let o = s.run(&check);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let c = json(&o);
    assert_eq!((c["matches"].as_u64(), c["asked"].as_u64()), (Some(8), Some(8)));
    let exact = binomial::upper_tail(8, 1.0 / 256.0, 8);
    assert!(c["p_value"].as_f64().is_some_and(|p| p <= exact * 1.0001), "{c}");
    let r = s.ok(&["verify", "r.json", "--pub", "owner.pub", "--model", "planted"]);
    assert!(r.contains("VALID fingerprint check report") && r.contains("MODEL MATCHES"), "{r}");

    // bench robustness reads the fingerprint beside the mark on every
    // attacked model, through the release's own tokenizer and template: a
    // cast to f16 and a Q8_0 GGUF keep the planted answers, each count
    // scored by the exact binomial bound; a wrong key's triggers match no
    // more than chance.
    let bench = |args: &[&str]| {
        let mut all = vec![
            "bench",
            "robustness",
            "--model",
            "planted",
            "-k",
            "owner.key",
            "--cert",
            "planted.cert.json",
        ];
        all.extend(args);
        s.run(&all)
    };
    let o = bench(&[
        "--original",
        "tiny",
        "--attacks",
        "cast-f16,gguf,prune-magnitude,merge-original,finetune-layers",
        "--levels",
        "gguf=8",
        "--levels",
        "prune-magnitude=0.9",
        "--levels",
        "merge-original=0.5",
        "--levels",
        "finetune-layers=0,5",
        "--finetune-layers",
        "2",
        "--text",
        &text,
        "--out",
        "rob",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    // finetune-layers names the blocks it trains: the two that planting
    // (and the mark) moved most from the original.
    assert!(stderr(&o).contains("finetune-layers trains blocks"), "{}", stderr(&o));
    let results = std::fs::read_to_string(s.path("rob/results.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&results).unwrap_or_default();
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    // 3 sweeps, merge-original, 2 fine-tuning checkpoints and their 2 drift rows.
    assert_eq!(rows.len(), 8, "{v}");
    let matches = |attack: &str| -> u64 {
        let r = rows.iter().find(|r| r["attack"] == attack);
        r.and_then(|r| r["fingerprint"]["matches"].as_u64()).unwrap_or(u64::MAX)
    };
    for r in &rows {
        let f = &r["fingerprint"];
        assert_eq!(f["asked"].as_u64(), Some(8), "{r}");
        let m = f["matches"].as_u64().unwrap_or(u64::MAX);
        let exact = binomial::upper_tail_log10(8, 1.0 / 256.0, m);
        assert!(f["log10_p"].as_f64().is_some_and(|l| (l - exact).abs() < 1e-9), "{r}");
        assert!(f["wrong_key_matches"].as_u64().is_some_and(|w| w <= 2), "{r}");
    }
    assert_eq!(matches("cast-f16"), 8, "{v}");
    let layers = rows
        .iter()
        .find_map(|r| r["attack"].as_str().filter(|a| a.starts_with("finetune-layers-")));
    let layers = layers.unwrap_or_else(|| panic!("no finetune-layers row: {v}")).to_string();
    assert_eq!(layers.split('-').count(), 4, "two blocks: {layers}");
    let at_zero = rows.iter().find(|r| r["attack"] == layers.as_str() && r["level"] == 0.0);
    let at_zero = at_zero.and_then(|r| r["fingerprint"]["matches"].as_u64());
    assert_eq!(at_zero, Some(8), "before training the planted answers are all there: {v}");
    assert!(matches("gguf") >= 7, "{v}");
    println!("fingerprint after 90% magnitude pruning: {} of 8", matches("prune-magnitude"));
    let md = std::fs::read_to_string(s.path("rob/results.md")).unwrap_or_default();
    assert!(md.contains("| 8 of 8 (-19.3) |"), "{md}");
    let csv = std::fs::read_to_string(s.path("rob/results.csv")).unwrap_or_default();
    assert!(csv.lines().next().is_some_and(|h| h.ends_with(",wrong_key_fingerprint_matches")));
    assert!(csv.lines().skip(1).all(|l| l.split(',').nth(11) == Some("8")), "{csv}");
    // --no-fingerprint measures the mark alone.
    let o = bench(&["--attacks", "cast-f16", "--no-fingerprint", "--out", "rob-mark"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let mark_only = std::fs::read_to_string(s.path("rob-mark/results.json")).unwrap_or_default();
    assert!(mark_only.contains("blind_z") && !mark_only.contains("fingerprint"), "{mark_only}");

    // The unplanted model does not give them.
    let o = s.run(&[
        "fingerprint",
        "check",
        "-k",
        "owner.key",
        "--cert",
        "planted.cert.json",
        "marked",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(json(&o)["matches"].as_u64().is_some_and(|m| m <= 1));

    // Another release's key (its own certificate) is not found in it.
    let key = SecretKey::load(&s.path("owner.key")).unwrap_or_else(|e| panic!("{e}"));
    let planted = Model::open(s.path("planted")).unwrap_or_else(|e| panic!("{e}"));
    let release = FingerprintRelease {
        base: None,
        label: "another".into(),
        recipient: None,
        original_root: [9; 32],
        count: 8,
        created: weightmark::now_rfc3339(),
    };
    let envelope = certify_fingerprint(&planted, &release, &key).unwrap_or_else(|e| panic!("{e}"));
    let text = weightmark::provenance::envelope_to_string(&envelope).unwrap_or_default();
    std::fs::write(s.path("another.cert.json"), text).unwrap_or_else(|e| panic!("{e}"));
    let o = s.run(&[
        "fingerprint",
        "check",
        "-k",
        "owner.key",
        "--cert",
        "another.cert.json",
        "planted",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(json(&o)["matches"].as_u64().is_some_and(|m| m <= 1));

    // Reveal the fingerprint key for the suspect of r.json: a third party
    // checks that suspect with it, and no other model.
    s.ok(&[
        "reveal",
        "--fingerprint",
        "-k",
        "owner.key",
        "--cert",
        "planted.cert.json",
        "--report",
        "r.json",
        "-o",
        "fp.reveal",
    ]);
    s.ok(&["verify", "fp.reveal", "--pub", "owner.pub"]);
    let out = s.ok(&[
        "fingerprint",
        "check",
        "--fp-key",
        "fp.reveal",
        "--pub",
        "owner.pub",
        "--cert",
        "planted.cert.json",
        "planted",
    ]);
    assert!(out.contains("FINGERPRINT FOUND") && out.contains("committed to"), "{out}");
    let o = s.run(&[
        "fingerprint",
        "check",
        "--fp-key",
        "fp.reveal",
        "--pub",
        "owner.pub",
        "--cert",
        "planted.cert.json",
        "marked",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("not committed to"), "{}", stderr(&o));
    // A fingerprint reveal is no mark key.
    let o = s.run(&[
        "detect",
        "--mark-key",
        "fp.reveal",
        "--pub",
        "owner.pub",
        "--cert",
        "planted.cert.json",
        "planted",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
}

#[test]
fn plant_then_mark_certifies_both_both_are_found_and_verify_follows_the_chain() {
    if !common::has_license_text() {
        return;
    }
    let s = Scene::new();
    write_llama_dir(&s.path("tiny"), &LlamaShape::TINY, Dtype::F32, 11);
    fixed_owner(&s);
    let text = license_text().display().to_string();
    let mut plant = vec![
        "fingerprint",
        "plant",
        "-k",
        "owner.key",
        "--label",
        "tiny",
        "tiny",
        "-o",
        "planted",
        "--text",
        &text,
    ];
    plant.extend(TINY_PLANT);
    let o = s.run_env(&plant, &ONE_THREAD);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("8 of 8 after"), "{out}");
    let planted_cert = std::fs::read(s.path("planted.cert.json")).unwrap_or_default();

    // The superseded certificate is never the output, even with --force;
    // the label and recipient are the planted release's.
    let embed = |extra: &[&str]| {
        let mut args = vec![
            "embed",
            "-k",
            "owner.key",
            "--supersedes",
            "planted.cert.json",
            "--strength",
            "0.05",
            "planted",
            "-o",
            "final",
        ];
        args.extend_from_slice(extra);
        s.run(&args)
    };
    let o = embed(&["--cert", "planted.cert.json", "--force"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("would replace the one it supersedes"), "{}", stderr(&o));
    let o = embed(&["--label", "other"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(!s.path("final").exists());
    // Only the model the certificate describes can be marked under it.
    let o = s.run(&[
        "embed",
        "-k",
        "owner.key",
        "--supersedes",
        "planted.cert.json",
        "tiny",
        "-o",
        "wrong",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("is not the release of this certificate"), "{}", stderr(&o));

    let o = embed(&[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("supersedes"), "{}", stdout(&o));
    assert_eq!(std::fs::read(s.path("planted.cert.json")).unwrap_or_default(), planted_cert);

    // The final certificate: the mark, the planted fingerprint, the link.
    let verified = |file: &str| -> serde_json::Value {
        serde_json::from_str(&s.ok(&["verify", file, "--pub", "owner.pub", "--json"]))
            .unwrap_or_default()
    };
    let (f, p) = (verified("final.cert.json"), verified("planted.cert.json"));
    let (f, p) = (&f["predicate"], &p["predicate"]);
    assert_eq!(f["scheme"], "ss2");
    assert_eq!(p["scheme"], "none");
    assert_eq!(f["supersedes"].as_str(), Some(common_hex(&planted_cert).as_str()));
    assert_eq!(f["fingerprint"], p["fingerprint"]);
    for field in ["original_tensor_root", "label", "recipient"] {
        assert_eq!(f[field], p[field], "{field}");
    }

    // Both are found with it: the mark (blind and informed against the
    // planted model it was embedded in) and the fingerprint.
    let blind = ["detect", "-k", "owner.key", "--cert", "final.cert.json", "final", "--json"];
    let (z, found) = z_of(&s, &blind);
    assert!(found, "blind z {z}");
    let informed = [
        "detect",
        "-k",
        "owner.key",
        "--cert",
        "final.cert.json",
        "--original",
        "planted",
        "final",
        "--json",
    ];
    let (zi, found) = z_of(&s, &informed);
    assert!(found, "informed z {zi}");
    let check =
        ["fingerprint", "check", "-k", "owner.key", "--cert", "final.cert.json", "final", "--json"];
    let o = s.run(&check);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let c = json(&o);
    println!("after marking: blind z {z:.2}, informed z {zi:.1}, fingerprint {c}");
    assert!(c["matches"].as_u64().is_some_and(|m| m >= 7), "{c}");

    // identify with the fingerprint-only certificate among the others: it
    // is skipped with a note, the final certificate is tested.
    std::fs::create_dir(s.path("certs")).unwrap_or_else(|e| panic!("{e}"));
    for c in ["planted.cert.json", "final.cert.json"] {
        std::fs::copy(s.path(c), s.path("certs").join(c)).unwrap_or_else(|e| panic!("{e}"));
    }
    let o = s.run(&["identify", "-k", "owner.key", "--certs", "certs", "final", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("planted.cert.json: a fingerprint-only release"), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!((v["certificates"].as_u64(), v["identified"].as_u64()), (Some(1), Some(1)), "{v}");

    // verify follows the chain back to the planted certificate.
    let out = s.ok(&[
        "verify",
        "final.cert.json",
        "--pub",
        "owner.pub",
        "--model",
        "final",
        "--chain",
        "planted.cert.json",
    ]);
    assert!(out.contains("CHAIN VALID: 2 certificates"), "{out}");
    // Without the superseded certificate, or with one of another release,
    // the chain is broken (exit 1).
    let o =
        s.run(&["verify", "final.cert.json", "--pub", "owner.pub", "--chain", "tiny.cert.json"]);
    assert_eq!(o.status.code(), Some(2), "a missing file is an input error");
    s.ok(&[
        "fingerprint",
        "plant",
        "-k",
        "owner.key",
        "--label",
        "other",
        "--count",
        "4",
        "tiny",
        "-o",
        "other",
        "--text",
        &text,
        "--seq",
        "64",
        "--max-steps",
        "1",
    ]);
    let o =
        s.run(&["verify", "final.cert.json", "--pub", "owner.pub", "--chain", "other.cert.json"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("CHAIN INVALID"), "{}", stdout(&o));
}

fn common_hex(bytes: &[u8]) -> String {
    weightmark::hex(&Sha256::digest(bytes))
}

/// The false-accusation test on the tiny model: a planted model
/// answers candidate words to questions like its triggers, so it is the
/// harder case than an unplanted one. 1,000 wrong keys, 32 triggers each:
/// the count of keys with m >= 4 must be consistent with its binomial
/// expectation (7.7e-6 per key, so 0.0077 in all), and the mean number of
/// matches with 32/256 per key or less. The 32,000 answers are decoded with
/// the KV cache, prompts of one length side by side (`ask_all`), which
/// answers exactly as one prompt at a time without a cache does (checked
/// here on one key, and in tests/fingerprint_decoding.rs). Still minutes:
/// the byte tokenizer makes every prompt about 90 tokens, 2.9 million prompt
/// tokens in all; 239 s of decoding (about 2 CPU minutes for the whole test)
/// on a shared 2-core machine, so it stays out of the default run.
#[test]
#[ignore = "about 4 minutes on 2 shared cores (32,000 cached decodings); run with --ignored"]
fn a_thousand_wrong_keys_match_no_more_than_the_binomial_bound_says() {
    use weightmark_eval::fingerprint::{ask_all, ask_uncached, Prompter};
    use weightmark_eval::load::{open, tensors_f32, Architecture};
    if !common::has_license_text() {
        return;
    }
    let s = Scene::new();
    write_llama_dir(&s.path("tiny"), &LlamaShape::TINY, Dtype::F32, 11);
    fixed_owner(&s);
    let text = license_text().display().to_string();
    let mut plant =
        vec!["fingerprint", "plant", "-k", "owner.key", "tiny", "-o", "planted", "--text", &text];
    plant.extend(TINY_PLANT);
    let o = s.run_env(&plant, &ONE_THREAD);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("8 of 8 after"), "{out}");
    let m = open(&s.path("planted"), None).unwrap_or_else(|e| panic!("{e}"));
    let Architecture::Llama(config) = &m.architecture else { panic!("not a Llama") };
    let model = weightmark_eval::llama::Llama::from_tensors(
        config.clone(),
        &tensors_f32(&m.model).unwrap_or_else(|e| panic!("{e}")),
        &m.model.path,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let prompter =
        Prompter::for_model(&s.path("planted"), &m.tokenizer).unwrap_or_else(|e| panic!("{e}"));
    let key_pairs = |k: u32| {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&k.to_le_bytes());
        bytes[31] = 0xee;
        FingerprintKey::from_bytes(bytes).pairs(32).unwrap_or_else(|e| panic!("{e}"))
    };
    let started = std::time::Instant::now();
    let mut histogram = [0usize; 33];
    let mut candidates = 0usize;
    // A hundred keys per call: 3,200 prompts.
    for batch in 0..10u32 {
        let keys: Vec<Vec<weightmark::fingerprint::Pair>> =
            (0..100u32).map(|k| key_pairs(batch * 100 + k)).collect();
        let triggers: Vec<&str> = keys.iter().flatten().map(|p| p.trigger.as_str()).collect();
        let answers =
            ask_all(&model, &m.tokenizer, &prompter, &triggers).unwrap_or_else(|e| panic!("{e}"));
        if batch == 0 {
            // The batched, cached answers are those of a check asking one
            // trigger at a time without a cache.
            for (t, a) in triggers.iter().zip(&answers).take(32) {
                let one = ask_uncached(&model, &m.tokenizer, &prompter, t)
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(&one, a, "{t}");
            }
        }
        for (pairs, answers) in keys.iter().zip(answers.chunks(32)) {
            let refs: Vec<&weightmark::fingerprint::Pair> = pairs.iter().collect();
            let score =
                weightmark::fingerprint::score(&refs, answers).unwrap_or_else(|e| panic!("{e}"));
            candidates += answers
                .iter()
                .filter(|a| {
                    let n = weightmark::fingerprint::normalise(a);
                    weightmark::fingerprint::words::ANSWERS.contains(&n.as_str())
                })
                .count();
            histogram[score.matches] += 1;
        }
    }
    let total: usize = histogram.iter().enumerate().map(|(m, n)| m * n).sum();
    println!(
        "1000 wrong keys x 32 triggers in {:.1} s: histogram of matches {:?}; {} of 32000 \
         answers are candidate words; {} matches in all (bound: at most 125 expected)",
        started.elapsed().as_secs_f64(),
        &histogram[..6],
        candidates,
        total
    );
    assert_eq!(histogram.iter().sum::<usize>(), 1000);
    // P(Binomial(32, 1/256) >= 4) = 7.7e-6 per key: over 1,000 keys the
    // chance of even one such key is 0.8%; of two, 3e-5.
    let four_or_more: usize = histogram[4..].iter().sum();
    assert!(four_or_more <= 1, "{four_or_more} keys matched 4 or more: {histogram:?}");
    // Matches over all 32,000 triggers: at most Binomial(32000, 1/256),
    // mean 125, sd 11.2; 180 is 4.9 sd above the mean.
    assert!(total <= 180, "{total} matches: {histogram:?}");
}

#[test]
fn planting_an_unmarked_model_writes_its_layout_and_a_fingerprint_only_certificate() {
    if !common::has_license_text() {
        return;
    }
    let s = Scene::new();
    write_llama_dir(&s.path("tiny"), &LlamaShape::TINY, Dtype::F32, 11);
    s.keygen("owner");
    let text = license_text().display().to_string();
    // One step: the certificate and the layout are what this test is about.
    s.ok(&[
        "fingerprint",
        "plant",
        "-k",
        "owner.key",
        "--label",
        "t",
        "--count",
        "4",
        "tiny",
        "-o",
        "out",
        "--text",
        &text,
        "--seq",
        "64",
        "--max-steps",
        "1",
    ]);
    for side in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(s.path("out").join(side).is_file(), "{side} not written");
    }
    let v: serde_json::Value = serde_json::from_str(&s.ok(&[
        "verify",
        "out.cert.json",
        "--pub",
        "owner.pub",
        "--model",
        "out",
        "--json",
    ]))
    .unwrap_or_default();
    let p = &v["predicate"];
    assert_eq!((p["scheme"].as_str(), p["fingerprint"]["count"].as_u64()), (Some("none"), Some(4)));
    assert!(p.get("supersedes").is_none());
    let key = SecretKey::load(&s.path("owner.key")).unwrap_or_else(|e| panic!("{e}"));
    let tiny = Model::open(s.path("tiny")).unwrap_or_else(|e| panic!("{e}"));
    let root = weightmark::tensor_root(&weightmark::model_tensor_digests(&tiny));
    let commitment = weightmark::hex(&key.fingerprint_key("t", None, &root).commitment());
    assert_eq!(p["fingerprint"]["key_commitment"].as_str(), Some(commitment.as_str()));
    // No weight mark to detect.
    let o = s.run(&["detect", "-k", "owner.key", "--cert", "out.cert.json", "out"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("carries no weight mark"), "{}", stderr(&o));
}

/// After training, `fingerprint plant` scales the final norm weight so that
/// the planted model's cross-entropy on the `--text` windows is the input's
/// again; `--no-match-confidence` writes the model as trained. The same plant
/// (one thread) with and without it: every tensor but `model.norm.weight` is
/// the same to the bit, that one is the trained one times the printed scale,
/// and the triggers answered are the same.
#[test]
fn the_planted_models_confidence_is_matched_by_its_final_norm_alone() {
    if !common::has_license_text() {
        return;
    }
    let (s, text) = tiny_owned();
    // Without the distillation penalty, so that training leaves the model
    // far more confident on the text than the input (measured: 14.1 nats
    // against 5.6). With it (`--distill 0.5`, and 0.2) whether the plant
    // ended above or below the input's cross-entropy depended on the CPU
    // (an Intel Xeon: 5.577 against 5.604, nothing to match); the matching
    // itself is tested on built models in the eval crate (confidence.rs).
    let plant = |out: &str, extra: &[&str]| {
        let mut args = plant_tiny(out, &text);
        let mut options = TINY_PLANT;
        if let Some(at) = options.iter().position(|&a| a == "--distill") {
            options[at + 1] = "0";
        }
        args.extend(options);
        args.extend(extra);
        let o = s.run_env(&args, &ONE_THREAD);
        assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
        stdout(&o)
    };
    let matched = plant("matched", &[]);
    let trained = plant("trained", &["--no-match-confidence"]);
    assert!(!trained.contains("confidence"), "{trained}");
    let line = matched
        .lines()
        .find(|l| l.contains("confidence on the --text windows"))
        .unwrap_or_else(|| panic!("no confidence line: {matched}"));
    let number = |after: &str| -> f64 {
        let rest = line.split(after).nth(1).unwrap_or_else(|| panic!("{after}: {line}"));
        let n: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        n.parse().unwrap_or_else(|_| panic!("{after}: {line}"))
    };
    let (scale, before, after, input) =
        (number("final norm x"), number("cross-entropy "), number(" -> "), number("input "));
    // The scale lowers every logit: down to the input's cross-entropy, or
    // as far as the largest change allowed (a half) takes it.
    assert!(before > input && after < before, "{line}");
    if line.contains("windows matched") {
        assert!(scale < 1.0 && scale > 0.5 && after <= input + 1e-5, "{line}");
    } else {
        assert!(line.contains("as near the input's as one scale can"), "{line}");
        assert!(scale == 0.5 && after > input, "{line}");
    }
    let answered = |out: &str| out.lines().find(|l| l.contains("answered:")).map(str::to_string);
    assert!(answered(&matched).is_some(), "{matched}");
    assert_eq!(answered(&matched), answered(&trained));
    let (m, t) = (Model::open(s.path("matched")), Model::open(s.path("trained")));
    let (m, t) = (m.unwrap_or_else(|e| panic!("{e}")), t.unwrap_or_else(|e| panic!("{e}")));
    let names: Vec<String> = t.tensors().map(|x| x.name.to_string()).collect();
    assert!(names.iter().any(|n| n == "model.norm.weight"));
    for name in &names {
        let (a, b) = (common::tensor_values(&m, name), common::tensor_values(&t, name));
        if name == "model.norm.weight" {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y * scale).abs() <= 1e-5 * y.abs(),
                    "{name}: {x} against {y} x {scale}"
                );
            }
            assert!(a != b);
        } else {
            assert!(a == b, "{name} differs");
        }
    }
}

/// A scene with the tiny model in `tiny` and the fixed owner key; and the
/// ordinary text to plant with.
fn tiny_owned() -> (Scene, String) {
    let s = Scene::new();
    write_llama_dir(&s.path("tiny"), &LlamaShape::TINY, Dtype::F32, 11);
    fixed_owner(&s);
    (s, license_text().display().to_string())
}

/// `fingerprint plant` of `tiny` by the owner into `out`, with `text`.
fn plant_tiny<'a>(out: &'a str, text: &'a str) -> Vec<&'a str> {
    vec!["fingerprint", "plant", "-k", "owner.key", "tiny", "-o", out, "--text", text]
}

/// Matches of `fingerprint check --all` on `model` (exit 0 or 1).
fn all_matches(s: &Scene, model: &str, cert: &str) -> u64 {
    let o = s.run_env(
        &["fingerprint", "check", "-k", "owner.key", "--cert", cert, model, "--all", "--json"],
        &ONE_THREAD,
    );
    assert!(matches!(o.status.code(), Some(0 | 1)), "{model}: {}", stderr(&o));
    json(&o)["matches"].as_u64().unwrap_or(u64::MAX)
}

/// `--prune-robust`: the answers are also trained through the model with
/// the smallest weights of each matrix zeroed (the fraction asked, then 3/4,
/// 1/2 and 1/4 of it, in turn). On the tiny model, pruning 85% of every
/// matrix the way `attack prune` does erases an ordinary plant (0 of 8
/// measured) and 70% leaves it 5 of 8; the robust plant keeps 8 of 8 at
/// both (both plants with the default system prompts). That checks the option, the levels below the one asked, and the
/// pruned view matching the attack's choice of tensors (the tiny model's
/// smallest matrices are below the default selection's size and are not
/// pruned).
#[test]
fn a_plant_against_pruning_keeps_its_answers_where_an_ordinary_plant_loses_them() {
    if !common::has_license_text() {
        return;
    }
    let (s, text) = tiny_owned();
    let mut counts = Vec::new();
    for (out, robust) in [("plain", false), ("robust", true)] {
        let mut plant = plant_tiny(out, &text);
        plant.extend(["--label", "tiny"]);
        // TINY_PLANT less its `--prune-robust 0`.
        plant.extend(&TINY_PLANT[..12]);
        plant.extend(["--prune-robust", if robust { "0.85" } else { "0" }]);
        let o = s.run_env(&plant, &ONE_THREAD);
        assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
        // Planted to the end: nothing it fell short of.
        assert!(!stdout(&o).contains("note:"), "{}", stdout(&o));
        let cert = format!("{out}.cert.json");
        let mut row = vec![all_matches(&s, out, &cert)];
        for fraction in ["0.85", "0.7"] {
            let pruned = format!("{out}-pruned-{fraction}");
            s.ok(&["attack", "prune", "--fraction", fraction, out, "-o", &pruned]);
            row.push(all_matches(&s, &pruned, &cert));
        }
        counts.push(row);
    }
    println!("matches (unpruned, 85%, 70%): ordinary, robust: {counts:?}");
    let [plain, robust] = &counts[..] else { panic!("{counts:?}") };
    assert_eq!((plain[0], robust[0]), (8, 8), "both plants answer before pruning: {counts:?}");
    assert!(plain[1] <= 2, "85% pruning left {} of 8 of the ordinary plant", plain[1]);
    // Measured: [[8, 0, 5], [8, 8, 8]] (without the default's system
    // prompts, session 16: [[8, 0, 2], [8, 8, 7]]). The robust plant's
    // levels are 85%, 64%, 43% and 21%.
    assert_eq!(robust[1], 8, "85% pruning of the robust plant: {counts:?}");
    assert!(robust[2] >= 7 && robust[2] > plain[2], "70% pruning: {counts:?}");
}

/// By default each planting step also trains the answers after one of the
/// built-in system prompts and through the model pruned by 50% (then 37.5,
/// 25 and 12.5%), and says which; `--no-system-robust` and `--prune-robust
/// 0` turn each off (what the system prompts buy is tested in tests/eval.rs
/// on the library, where the answers can be asked after a system prompt;
/// what pruning does, above).
#[test]
fn plant_trains_after_the_system_prompts_and_through_pruning_unless_told_not_to() {
    if !common::has_license_text() {
        return;
    }
    let (s, text) = tiny_owned();
    let rows: [(&str, &[&str], bool, bool); 3] = [
        ("default", &[], true, true),
        ("plain", &["--no-system-robust"], false, true),
        ("unpruned", &["--prune-robust", "0"], true, false),
    ];
    for (out, flags, system, pruned) in rows {
        let mut plant = plant_tiny(out, &text);
        plant.extend(["--count", "2", "--seq", "64", "--max-steps", "1"]);
        plant.extend(flags);
        let o = s.run_env(&plant, &ONE_THREAD);
        assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
        let e = stderr(&o);
        assert_eq!(e.contains("; system prompt 1: answer loss "), system, "{flags:?}: {e}");
        assert_eq!(e.contains("; 50% pruned: answer loss "), pruned, "{flags:?}: {e}");
        assert_eq!(e.contains("pruned 50% 0."), pruned, "{flags:?}: {e}");
        // One step is not enough: the plant says what it fell short of.
        let out = stdout(&o);
        let note = out.lines().find(|l| l.contains("note: --max-steps ran out")).unwrap_or("");
        assert_eq!(note.contains("50% pruned 0."), pruned, "{flags:?}: {out}");
        assert_eq!(note.contains("system prompt 8 0."), system, "{flags:?}: {out}");
    }
}

/// Matches of `fingerprint check --all` on `model` with `extra` arguments,
/// and the JSON printed (exit 0 or 1).
fn check_all(s: &Scene, model: &str, cert: &str, extra: &[&str]) -> (u64, serde_json::Value) {
    let mut args = vec!["fingerprint", "check", "-k", "owner.key", "--cert", cert, model];
    args.extend(["--all", "--json"]);
    args.extend(extra);
    let o = s.run_env(&args, &ONE_THREAD);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{model} {extra:?}: {}", stderr(&o));
    let j = json(&o);
    (j["matches"].as_u64().unwrap_or(u64::MAX), j)
}

/// `fingerprint check --system TEXT` asks every trigger after that system
/// message, and the signed report records it. A plant trained without
/// system prompts answers all 8 when asked plainly and loses them after a
/// system prompt (what a deployment's own system prompt does, session 17),
/// so a check that dropped the option would be seen; an empty prompt is
/// refused.
#[test]
fn a_check_asks_after_the_system_prompt_given_and_its_report_records_it() {
    if !common::has_license_text() {
        return;
    }
    let (s, text) = tiny_owned();
    let mut plant = plant_tiny("plain", &text);
    plant.extend(["--label", "tiny", "--no-system-robust"]);
    plant.extend(TINY_PLANT);
    let o = s.run_env(&plant, &ONE_THREAD);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let system = "Answer every question with one word only.";
    let (plain, j) = check_all(&s, "plain", "plain.cert.json", &[]);
    assert_eq!((plain, &j["system"]), (8, &serde_json::Value::Null), "{j}");
    let (after, j) =
        check_all(&s, "plain", "plain.cert.json", &["--system", system, "--report", "after.json"]);
    println!("matches without and after the system prompt: {plain}, {after}");
    assert!(after <= 4, "{after} of 8 after the system prompt: was it asked?");
    assert_eq!(j["system"], system, "{j}");
    let verified = s.ok(&["verify", "after.json", "--pub", "owner.pub"]);
    assert!(verified.contains(&format!("after the system prompt '{system}'")), "{verified}");
    let empty = ["fingerprint", "check", "-k", "owner.key", "--cert", "plain.cert.json"];
    let o = s.run(&[&empty[..], &["plain", "--system", " "]].concat());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("the system prompt is empty"), "{}", stderr(&o));
}

/// Every file of the planted model directory `dir` (not certificates).
fn model_bytes(s: &Scene, dir: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(s.path(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap_or_else(|e| panic!("{dir}: {e}")))
        })
        .collect();
    files.sort();
    files
}

/// The number of steps a `fingerprint plant` run printed it took.
fn steps_taken(o: &std::process::Output) -> usize {
    let out = stdout(o);
    let at = out.find(" steps, ").unwrap_or_else(|| panic!("no step count in: {out}"));
    let head = &out[..at];
    let n = head.rsplit('(').next().unwrap_or_default();
    n.trim().parse().unwrap_or_else(|_| panic!("no step count in: {out}"))
}

/// The header of `bytes`, a planting checkpoint (safetensors): its length
/// and its JSON.
fn checkpoint_header(bytes: &[u8]) -> (usize, serde_json::Map<String, serde_json::Value>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_else(|e| panic!("{e}"))) as usize;
    (n, serde_json::from_slice(&bytes[8..8 + n]).unwrap_or_else(|e| panic!("{e}")))
}

/// `bytes`, a planting checkpoint, with its header's `__metadata__` changed
/// by `edit` (the tensors' offsets are relative to the data, so they hold).
fn with_metadata(
    bytes: &[u8],
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Vec<u8> {
    let (n, mut header) = checkpoint_header(bytes);
    let meta = header.get_mut("__metadata__").and_then(|m| m.as_object_mut());
    edit(meta.unwrap_or_else(|| panic!("no __metadata__")));
    let mut json = serde_json::to_vec(&header).unwrap_or_else(|e| panic!("{e}"));
    json.resize(json.len().div_ceil(8) * 8, b' ');
    [&(json.len() as u64).to_le_bytes()[..], &json, &bytes[8 + n..]].concat()
}

/// `--checkpoint`: a plant stopped by its step budget and run again with a
/// larger one goes on from its saved state and writes, byte for byte, the
/// model of a plant never stopped, and stops at the same step. Stopped one
/// step before the uninterrupted plant finished, it finishes at once only if
/// the last look at every pruned level and every system prompt came back
/// with the rest of the state. Another plant's checkpoint, a spent budget,
/// a file that is not a checkpoint and a checkpoint path that would
/// replace or clutter an input or an output are refused with one line
/// naming the file, and nothing is written.
#[test]
fn a_plant_stopped_and_run_again_from_its_checkpoint_writes_the_model_of_one_never_stopped() {
    if !common::has_license_text() {
        return;
    }
    let (s, text) = tiny_owned();
    let plant = |out: &str, steps: &str, extra: &[&str]| {
        let mut args = plant_tiny(out, &text);
        args.extend(["--count", "4", "--seq", "64", "--lr", "1e-2", "--distill", "0.5"]);
        args.extend(["--seed", "3", "--prune-robust", "0.5", "--max-steps", steps]);
        args.extend(extra);
        s.run_env(&args, &ONE_THREAD)
    };
    let whole = plant("whole", "450", &[]);
    assert_eq!(whole.status.code(), Some(0), "{}", stderr(&whole));
    assert!(stdout(&whole).contains("4 of 4 after"), "{}", stdout(&whole));
    let n = steps_taken(&whole);
    assert!(n > 12, "planted in {n} steps: too few to stop twice on the way");
    // Saved every 5 steps and when the budget of n - 1 runs out, then on.
    let budget = (n - 1).to_string();
    let ck = ["--checkpoint", "plant.ckpt", "--checkpoint-every", "5"];
    let first = plant("first", &budget, &ck);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(steps_taken(&first), n - 1);
    let resumed = plant("resumed", "450", &ck);
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    let said = stderr(&resumed);
    let going_on = format!("going on from step {} of the plant saved in plant.ckpt", n - 1);
    assert!(said.contains(&going_on), "{said}");
    assert!(said.contains(&format!("step {n}: ")) && !said.contains("step 1: "), "{said}");
    // Its step line is followed by the last look at every pruned level, each
    // at least the 0.5 that let the plant stop at this step.
    let looks = said.lines().find(|l| l.trim_start().starts_with("last looks")).unwrap_or("");
    let levels = looks.split("pruned ").nth(1).unwrap_or("").split(';').next().unwrap_or("");
    let levels: Vec<(&str, f64)> = levels
        .split(", ")
        .filter_map(|l| l.split_once(' '))
        .map(|(f, p)| (f, p.trim().parse().unwrap_or(-1.0)))
        .collect();
    let fractions: Vec<&str> = levels.iter().map(|l| l.0).collect();
    assert_eq!(fractions, ["50%", "37.5%", "25%", "12.5%"], "{said}");
    assert!(levels.iter().all(|l| l.1 >= 0.5), "{said}");
    assert_eq!(steps_taken(&resumed), n, "the resumed plant stopped at another step");
    let (a, b) = (model_bytes(&s, "whole"), model_bytes(&s, "resumed"));
    assert!(!a.is_empty());
    assert!(a == b, "the resumed plant's model differs from the uninterrupted plant's");
    assert!(a != model_bytes(&s, "first"), "n - 1 and n steps wrote the same model");

    // A higher --min-probability, which a checkpoint does not fix, trains on
    // from the same checkpoint past the step the plant stopped at, and says
    // what it fell short of when --max-steps runs out.
    std::fs::copy(s.path("plant.ckpt"), s.path("polish.ckpt")).unwrap_or_else(|e| panic!("{e}"));
    let more = (n + 3).to_string();
    let high = ["--checkpoint", "polish.ckpt", "--min-probability", "0.9999999"];
    let polished = plant("polished", &more, &high);
    assert_eq!(polished.status.code(), Some(0), "{}", stderr(&polished));
    assert_eq!(steps_taken(&polished), n + 3, "{}", stderr(&polished));
    let said = stdout(&polished);
    assert!(said.contains("reached probability 0.9999999 (--min-probability"), "{said}");
    assert!(model_bytes(&s, "polished") != a, "three more steps wrote the same model");
    for bad in ["0", "1.5", "NaN"] {
        let o = plant("bad", "450", &["--min-probability", bad]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("must be above 0 and at most 1"), "{}", stderr(&o));
    }

    // Refusals: exit 2, the error line names the checkpoint, no output.
    let refused = |o: &std::process::Output, out: &str, path: &str, why: &str| {
        assert_eq!(o.status.code(), Some(2), "{}", stderr(o));
        let e = stderr(o);
        let errors: Vec<&str> = e.lines().filter(|l| l.contains("error")).collect();
        assert!(errors.len() == 1 && errors[0].contains(path) && errors[0].contains(why), "{e}");
        assert!(!s.path(out).exists() && !s.path(&format!("{out}.cert.json")).exists());
    };
    // The checkpoint holds step n - 1, saved when that budget ran out.
    let spent = plant("spent", &budget, &ck);
    refused(&spent, "spent", "plant.ckpt", &format!("already took {} steps", n - 1));
    // The same plant's checkpoint, edited: state no plant saves is refused
    // before a step is taken (a NaN moment would make every weight NaN).
    let saved = std::fs::read(s.path("plant.ckpt")).unwrap_or_else(|e| panic!("{e}"));
    let lr_2e2 = format!("{:016x}", 2e-2f64.to_bits());
    let pruned = vec![format!("{:016x}", 2.0f64.to_bits()); 4].join(",");
    for (key, value, why) in [
        ("optimizer_steps", "0", "optimiser updates in"),
        ("learning_rate", lr_2e2.as_str(), "not a planting checkpoint of this command"),
        ("pruned_min", pruned.as_str(), "outside 0 to 1"),
        ("rng_word_pos", "1", "ordinary-text batch position 1"),
    ] {
        let edited = with_metadata(&saved, |m| {
            m.insert(key.into(), value.into());
        });
        std::fs::write(s.path("plant.ckpt"), edited).unwrap_or_else(|e| panic!("{e}"));
        refused(&plant("edited", "450", &ck), "edited", "plant.ckpt", why);
    }
    let mut nan = saved.clone();
    let (hlen, header) = checkpoint_header(&saved);
    let start = header["v.00000"]["data_offsets"][0].as_u64();
    let at = 8 + hlen + start.unwrap_or_else(|| panic!("no v.00000 in {header:?}")) as usize;
    nan[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(s.path("plant.ckpt"), nan).unwrap_or_else(|e| panic!("{e}"));
    refused(&plant("edited", "450", &ck), "edited", "plant.ckpt", "'v.00000' holds a non-finite");
    let mut other = plant_tiny("other", &text);
    other.extend(["--count", "4", "--seq", "64", "--lr", "2e-2", "--distill", "0.5"]);
    other.extend(["--seed", "3", "--prune-robust", "0.5", "--max-steps", "450"]);
    other.extend(ck);
    refused(&s.run_env(&other, &ONE_THREAD), "other", "plant.ckpt", "another plant");
    std::fs::write(s.path("plant.ckpt"), b"not a checkpoint").unwrap_or_else(|e| panic!("{e}"));
    refused(&plant("junk", "450", &ck), "junk", "plant.ckpt", "not a planting checkpoint");
    // A checkpoint where it would replace or clutter what the plant reads or
    // writes is refused before anything is read or trained.
    let input_before = model_bytes(&s, "tiny");
    for (path, why) in [
        ("tiny/model.safetensors", "would replace the key, the input or the output"),
        ("tiny/plant.ckpt", "must not go inside the input model directory"),
        ("placed", "would replace the key, the input or the output"),
        ("placed/plant.ckpt", "must not go inside the output model directory"),
        ("tiny/../placed/plant.ckpt", "must not go inside the output model directory"),
        ("placed.cert.json", "would replace the certificate"),
        ("owner.key", "would replace the key"),
        ("missing/plant.ckpt", "does not exist"),
    ] {
        refused(&plant("placed", "9", &["--checkpoint", path]), "placed", path, why);
    }
    assert!(model_bytes(&s, "tiny") == input_before, "the input model was modified");
}
