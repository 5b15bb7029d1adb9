//! Split detection run as separate processes of the binary, as a scheduler's
//! array jobs would run it: a plan, one part per job, a combine step. The
//! combined verdict must equal one `detect` over the whole model byte for
//! byte (`--json` and the table), and parts that do not cover the model
//! exactly once, or come from another plan, model or key, are refused with
//! exit 2 naming the file.

mod common;

use common::{stderr, Scene};
use weightmark::synth::{llama, write_sharded, LlamaShape};
use weightmark::Dtype;

/// Small enough for seconds, Llama-shaped so `ss2` finds its canonical
/// order, neuron and head maps across shards.
const SHAPE: LlamaShape =
    LlamaShape { vocab: 512, hidden: 128, intermediate: 344, layers: 4, heads: 4, kv_heads: 2 };

/// A model in 3 shards with its `config.json` (the head counts `ss2`'s
/// head sketch needs) in `name`.
fn sharded(s: &Scene, name: &str, dtype: Dtype, seed: u64) {
    let dir = s.path(name);
    write_sharded(&dir, &llama(&SHAPE, dtype, seed), 3).unwrap_or_else(|e| panic!("{e}"));
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": SHAPE.hidden,
        "intermediate_size": SHAPE.intermediate, "num_hidden_layers": SHAPE.layers,
        "num_attention_heads": SHAPE.heads, "num_key_value_heads": SHAPE.kv_heads,
        "vocab_size": SHAPE.vocab, "rms_norm_eps": 1e-5
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap_or_else(|e| panic!("{e}"));
}

/// Owner key, a sharded original, and a marked copy `marked` with its
/// certificate `marked.cert.json`, embedded with `extra` options.
fn marked_scene(extra: &[&str]) -> Scene {
    let s = Scene::new();
    s.keygen("owner");
    sharded(&s, "original", Dtype::BF16, 7);
    let mut args = vec!["embed", "-k", "owner.key", "--label", "v1", "--strength", "0.02"];
    args.extend(extra);
    args.extend(["original", "-o", "marked", "--created", "2026-12-02T09:00:00Z"]);
    s.ok(&args);
    s
}

/// Plan, `count` parts and their file names, run as separate processes
/// with the key arguments `key`.
fn plan_and_parts(s: &Scene, key: &[&str], count: usize) -> Vec<String> {
    let mut plan = key.to_vec();
    plan.splice(0..0, ["detect"]);
    plan.extend(["--cert", "marked.cert.json", "--plan-out", "plan.json", "marked"]);
    s.ok(&plan);
    (0..count)
        .map(|i| {
            let (part, out) = (format!("{i}/{count}"), format!("part-{i}.json"));
            let mut args = vec!["detect"];
            args.extend(key);
            args.extend(["--cert", "marked.cert.json", "--plan", "plan.json"]);
            args.extend(["--part", &part, "--part-out", &out, "marked"]);
            s.ok(&args);
            out
        })
        .collect()
}

/// `detect` over the whole model and the combine step of `parts`, with
/// `extra` output options; both stdouts, each with its exit code.
fn single_and_combined(
    s: &Scene,
    key: &[&str],
    parts: &[String],
    extra: &[&str],
) -> [(String, Option<i32>); 2] {
    let mut single = vec!["detect"];
    single.extend(key);
    single.extend(["--cert", "marked.cert.json"]);
    single.extend(extra);
    single.push("marked");
    let mut combine = vec!["detect"];
    combine.extend(key);
    combine.extend(["--cert", "marked.cert.json", "--plan", "plan.json"]);
    combine.extend(extra);
    combine.push("--combine");
    combine.extend(parts.iter().map(String::as_str));
    [single, combine].map(|args| {
        let o = s.run(&args);
        (common::stdout(&o), o.status.code())
    })
}

#[test]
fn ss2_split_detection_equals_one_run_byte_for_byte() {
    // ss2 with the allocation, whose detection weights span shards.
    let s = marked_scene(&["--allocation", "ss2-alloc1"]);
    let key = ["-k", "owner.key"];
    let mut parts = plan_and_parts(&s, &key, 3);
    let [single, combined] = single_and_combined(&s, &key, &parts, &["--json"]);
    assert_eq!(single.1, Some(0), "{}", single.0);
    assert_eq!(single, combined);
    let v: serde_json::Value = serde_json::from_str(&single.0).unwrap_or_default();
    assert_eq!(v["scheme"], "ss2");
    assert!(v["z"].as_f64().unwrap_or(0.0) > 6.44, "{v}");
    // Any order of the parts; the table too.
    parts.reverse();
    let [single, combined] = single_and_combined(&s, &key, &parts, &[]);
    assert_eq!(single, combined);
    // A part does not depend on the thread count.
    let one_thread = s.run_env(
        &part_job("marked.cert.json", "plan.json", "1/3", "one-thread.json", "marked"),
        &[("RAYON_NUM_THREADS", "1")],
    );
    assert_eq!(one_thread.status.code(), Some(0), "{}", stderr(&one_thread));
    assert_eq!(
        std::fs::read(s.path("one-thread.json")).unwrap_or_default(),
        std::fs::read(s.path("part-1.json")).unwrap_or_default()
    );
    // The combine step signs a report that verifies against the model.
    let mut args = vec!["detect", "-k", "owner.key", "--cert", "marked.cert.json"];
    args.extend(["--plan", "plan.json", "--report", "split.report.json", "--combine"]);
    args.extend(parts.iter().map(String::as_str));
    s.ok(&args);
    s.ok(&["verify", "split.report.json", "--pub", "owner.pub", "--model", "marked"]);
}

#[test]
fn ss2_split_detection_of_a_copy_at_another_recipient_share_equals_one_run() {
    // The decision weighs the recipient component by the certificate's
    // strengths (2 at share 0.8); the plan carries that weight to the combine.
    let s = marked_scene(&["-r", "alice", "--recipient-share", "0.8"]);
    let key = ["-k", "owner.key"];
    let parts = plan_and_parts(&s, &key, 3);
    let plan = std::fs::read_to_string(s.path("plan.json")).unwrap_or_default();
    // 2 (sqrt(0.8 / 0.2)) to the last bit or two of the certificate's strengths.
    assert!(plan.contains(r#""recipient_weight":"400000000000000"#), "no weight 2 in the plan");
    let [single, combined] = single_and_combined(&s, &key, &parts, &["--json"]);
    assert_eq!(single.1, Some(0), "{}", single.0);
    assert_eq!(single, combined);
}

#[test]
fn ss1_split_detection_with_a_recipient_equals_one_run() {
    // Two parts over three shards: one part holds two files.
    let s = marked_scene(&["--scheme", "ss1", "-r", "alice"]);
    let key = ["-k", "owner.key"];
    let parts = plan_and_parts(&s, &key, 2);
    let [single, combined] = single_and_combined(&s, &key, &parts, &["--json"]);
    assert_eq!(single.1, Some(0), "{}", single.0);
    assert_eq!(single, combined);
}

#[test]
fn jobs_need_only_the_revealed_key_and_write_the_same_parts() {
    let s = marked_scene(&[]);
    let owner = ["-k", "owner.key"];
    let parts = plan_and_parts(&s, &owner, 3);
    let owned: Vec<Vec<u8>> =
        parts.iter().map(|p| std::fs::read(s.path(p)).unwrap_or_default()).collect();
    // The owner commits to the suspect, then reveals the release's key.
    s.ok(&[
        "detect",
        "-k",
        "owner.key",
        "--cert",
        "marked.cert.json",
        "--report",
        "r.json",
        "marked",
    ]);
    s.ok(&[
        "reveal",
        "-k",
        "owner.key",
        "--cert",
        "marked.cert.json",
        "--report",
        "r.json",
        "-o",
        "k.reveal",
    ]);
    std::fs::remove_dir_all(s.path("jobs")).ok();
    for p in &parts {
        std::fs::remove_file(s.path(p)).unwrap_or_else(|e| panic!("{e}"));
    }
    let revealed = ["--mark-key", "k.reveal", "--pub", "owner.pub"];
    std::fs::remove_file(s.path("plan.json")).unwrap_or_else(|e| panic!("{e}"));
    let again = plan_and_parts(&s, &revealed, 3);
    for (p, before) in again.iter().zip(&owned) {
        assert_eq!(&std::fs::read(s.path(p)).unwrap_or_default(), before, "{p}");
    }
    let [single, combined] = single_and_combined(&s, &revealed, &again, &["--json"]);
    assert_eq!(single.1, Some(0), "{}", single.0);
    assert_eq!(single, combined);
}

/// The strings of `v` as `&str`s.
fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Runs `args` and asserts exit 2 with a one-line error containing `says`.
fn refused(s: &Scene, args: &[&str], says: &str) {
    let o = s.run(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(says), "{args:?}: expected '{says}' in: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// The arguments of one `detect` job: part `part` of `plan` over `model`
/// with the certificate `cert`, written to `out`.
fn part_job<'a>(
    cert: &'a str,
    plan: &'a str,
    part: &'a str,
    out: &'a str,
    model: &'a str,
) -> [&'a str; 12] {
    [
        "detect",
        "-k",
        "owner.key",
        "--cert",
        cert,
        "--plan",
        plan,
        "--part",
        part,
        "--part-out",
        out,
        model,
    ]
}

#[test]
fn parts_missing_doubled_or_from_another_model_are_refused() {
    let s = marked_scene(&[]);
    let key = ["-k", "owner.key"];
    let parts = plan_and_parts(&s, &key, 3);
    let combine = |parts: &[&str]| {
        let mut args = vec!["detect", "-k", "owner.key", "--cert", "marked.cert.json"];
        args.extend(["--plan", "plan.json", "--combine"]);
        args.extend(parts);
        args.iter().map(|a| a.to_string()).collect::<Vec<String>>()
    };
    // A part missing: the plan is named, with a file no part covers.
    let args = combine(&[&parts[0], &parts[2]]);
    refused(&s, &strs(&args), "plan.json: 1 of its 3 file(s) are covered by no part");
    // A part twice (under another name too): the second copy is named.
    std::fs::copy(s.path(&parts[1]), s.path("copy.json")).unwrap_or_else(|e| panic!("{e}"));
    let args = combine(&[&parts[0], &parts[1], &parts[2], "copy.json"]);
    refused(&s, &strs(&args), "copy.json: covers 'model-00002-of-00003.safetensors', which");
    // A part of another model's plan.
    sharded(&s, "other", Dtype::F16, 8);
    s.ok(&[
        "detect",
        "-k",
        "owner.key",
        "--cert",
        "marked.cert.json",
        "--plan-out",
        "other-plan.json",
        "other",
    ]);
    s.ok(&part_job("marked.cert.json", "other-plan.json", "1/3", "other-1.json", "other"));
    let args = combine(&[&parts[0], "other-1.json", &parts[2]]);
    refused(&s, &strs(&args), "other-1.json: comes from another plan");
    // A job given another model than its plan's.
    refused(
        &s,
        &part_job("marked.cert.json", "plan.json", "0/3", "x.json", "other"),
        "plan.json: was made for another model",
    );
    // A job given a model with the same files but other weights (another
    // release of the same original): its part runs, and the combine step
    // finds tensors that differ from those the plan read.
    s.ok(&["embed", "-k", "owner.key", "--label", "v2", "original", "-o", "marked2"]);
    s.ok(&part_job("marked.cert.json", "plan.json", "0/3", "twin-0.json", "marked2"));
    let args = combine(&["twin-0.json", &parts[1], &parts[2]]);
    refused(
        &s,
        &strs(&args),
        "twin-0.json: tensor 'model.embed_tokens.weight' differs from the one the plan read",
    );
    // A job with another release's certificate.
    refused(
        &s,
        &part_job("marked2.cert.json", "plan.json", "0/3", "x.json", "marked"),
        "marked2.cert.json: is not the certificate the plan",
    );
    // More parts than files.
    refused(
        &s,
        &part_job("marked.cert.json", "plan.json", "3/4", "x.json", "marked"),
        "part 3/4: the model has 3 file(s)",
    );
    assert!(!s.path("x.json").exists());
    // The plan's outputs are refused over an existing file.
    refused(
        &s,
        &[
            "detect",
            "-k",
            "owner.key",
            "--cert",
            "marked.cert.json",
            "--plan-out",
            "plan.json",
            "marked",
        ],
        "plan.json: already exists",
    );
}

/// A split embed's first of two parts, up to its record file.
const PART_0: [&str; 7] = ["-o", "split", "--plan", "plan.json", "--part", "0/2", "--part-out"];

/// The files of directory `dir` by name, with their bytes.
fn tree(s: &Scene, dir: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(s.path(dir))
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(Result::ok)
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap_or_else(|e| panic!("{e}"));
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn split_embed_writes_the_shards_and_certificate_of_one_run() {
    // dave's strength gives the copy z to spare, so the default share is
    // above 0.5: the plan records it, and every step must agree on it.
    let options: [&[&str]; 3] = [
        &["--allocation", "ss2-alloc1", "-r", "bob"],
        &["--scheme", "ss1", "-r", "carol"],
        &["-r", "dave", "--strength", "0.05"],
    ];
    for extra in options {
        let s = Scene::new();
        s.keygen("owner");
        sharded(&s, "original", Dtype::BF16, 7);
        let run = |tail: &[&str]| {
            let mut args = vec!["embed", "-k", "owner.key", "--label", "v1"];
            args.extend(extra);
            args.extend(["--created", "2026-12-02T09:00:00Z", "original"]);
            args.extend(tail);
            s.run(&args)
        };
        let one = run(&["-o", "one"]);
        assert_eq!(one.status.code(), Some(0), "{}", stderr(&one));
        let ok = |o: std::process::Output| {
            assert_eq!(o.status.code(), Some(0), "{extra:?}: {}", stderr(&o));
            common::stdout(&o)
        };
        ok(run(&["-o", "split", "--plan-out", "plan.json"]));
        let plan = String::from_utf8_lossy(&std::fs::read(s.path("plan.json")).unwrap_or_default())
            .into_owned();
        assert_eq!(plan.contains("recipient_share"), extra.contains(&"dave"), "{extra:?}: {plan}");
        if extra.contains(&"dave") {
            // A step at another share (as a build whose default was 0.5
            // would run it) is refused, not mixed into the copy.
            let mut args = vec!["--recipient-share", "0.5"];
            args.extend(PART_0);
            args.push("half.json");
            let at_half = run(&args);
            assert_eq!(at_half.status.code(), Some(2), "{}", stderr(&at_half));
            assert!(stderr(&at_half).contains("plan.json: was made with other options"));
            assert!(!s.path("half.json").exists());
        }
        for i in 0..2 {
            let (part, out) = (format!("{i}/2"), format!("part-{i}.json"));
            ok(run(&["-o", "split", "--plan", "plan.json", "--part", &part, "--part-out", &out]));
        }
        // A part missing, then a part twice: refused, nothing signed.
        let missing = run(&["-o", "split", "--plan", "plan.json", "--combine", "part-1.json"]);
        assert_eq!(missing.status.code(), Some(2));
        assert!(
            stderr(&missing).contains("plan.json: no part wrote 'model-00001-of-00003"),
            "{}",
            stderr(&missing)
        );
        let twice = run(&[
            "-o",
            "split",
            "--plan",
            "plan.json",
            "--combine",
            "part-0.json",
            "part-1.json",
            "part-1.json",
        ]);
        assert_eq!(twice.status.code(), Some(2));
        assert!(
            stderr(&twice).contains("part-1.json: wrote 'model-00002-of-00003.safetensors', which"),
            "{}",
            stderr(&twice)
        );
        assert!(!s.path("split.cert.json").exists());
        let combined = ok(run(&[
            "-o",
            "split",
            "--plan",
            "plan.json",
            "--combine",
            "part-1.json",
            "part-0.json",
        ]));
        assert_eq!(tree(&s, "one"), tree(&s, "split"), "{extra:?}");
        assert_eq!(
            std::fs::read(s.path("one.cert.json")).unwrap_or_default(),
            std::fs::read(s.path("split.cert.json")).unwrap_or_default(),
            "{extra:?}"
        );
        assert_eq!(common::stdout(&one), combined.replace("split", "one"), "{extra:?}");
        // A job with other options than the plan's is refused.
        let other = s.run(
            &[
                "embed",
                "-k",
                "owner.key",
                "--label",
                "v2",
                "--created",
                "2026-12-02T09:00:00Z",
                "original",
            ]
            .into_iter()
            .chain(PART_0)
            .chain(["x.json"])
            .collect::<Vec<_>>(),
        );
        assert_eq!(other.status.code(), Some(2));
        assert!(
            stderr(&other).contains("plan.json: was made with other options"),
            "{}",
            stderr(&other)
        );
    }
}
