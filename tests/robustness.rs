//! End-to-end tests of the attack suite and `bench robustness` on synthetic
//! models: each attack does what it says and reports its damage, and the
//! sweep writes its tables and plots with no false positive for a wrong key.

mod common;

use common::Scene;

use weightmark::synth::{llama, write_file, LlamaShape};
use weightmark::{Dtype, Model};

const SHAPE: LlamaShape =
    LlamaShape { vocab: 2048, hidden: 256, intermediate: 512, layers: 2, heads: 4, kv_heads: 2 };

/// A scene holding the synthetic model `m.safetensors`.
fn scene() -> Scene {
    let s = Scene::new();
    write_file(&s.path("m.safetensors"), &llama(&SHAPE, Dtype::F32, 3), None)
        .unwrap_or_else(|e| panic!("{e}"));
    s
}

/// Values of every matrix of a model, concatenated.
fn values(s: &Scene, name: &str) -> Vec<f64> {
    let m = Model::open(s.path(name)).unwrap_or_else(|e| panic!("{e}"));
    let mut all = Vec::new();
    let mut buf = Vec::new();
    for t in m.tensors().filter(weightmark::is_default_selected) {
        weightmark::decode_f64(t.dtype, &t.data(), &mut buf);
        all.extend_from_slice(&buf);
    }
    all
}

/// The relative RMS change between two value lists.
fn change(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let n: f64 = a.iter().map(|x| x * x).sum();
    (d / n).sqrt()
}

#[test]
fn each_attack_does_what_it_says_and_reports_its_damage() {
    let s = scene();
    let before = values(&s, "m.safetensors");
    let cases: [(&[&str], f64, f64); 6] = [
        (&["noise", "--relative", "0.1"], 0.09, 0.11),
        (&["drift", "--relative", "0.2"], 0.18, 0.22),
        (&["lowrank", "--rank", "16", "--relative", "0.1"], 0.09, 0.11),
        (&["scale", "--factor", "0.9"], 0.099, 0.101),
        (&["quantize", "--bits", "8"], 0.001, 0.02),
        (&["prune", "--fraction", "0.5"], 0.1, 0.5),
    ];
    for (args, lo, hi) in &cases {
        let mut full = vec!["attack"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["m.safetensors", "-o", "out.safetensors", "--force"]);
        let text = s.ok(&full);
        let after = values(&s, "out.safetensors");
        let measured = change(&before, &after);
        assert!((*lo..=*hi).contains(&measured), "{args:?}: change {measured}");
        let reported: f64 = text
            .split("relative RMS change ")
            .nth(1)
            .and_then(|t| t.split('%').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or(f64::NAN);
        assert!(
            (reported / 100.0 - measured).abs() < 1e-3,
            "{args:?}: reported {reported}% vs {measured}"
        );
    }
    // Pruning zeroes exactly the requested share of each tensor.
    s.ok(&["attack", "prune", "--fraction", "0.5", "m.safetensors", "-o", "pruned.safetensors"]);
    let pruned = values(&s, "pruned.safetensors");
    let zeros = pruned.iter().filter(|&&x| x == 0.0).count() as f64 / pruned.len() as f64;
    assert!((zeros - 0.5).abs() < 0.01, "{zeros}");
    // int4 in groups of 32: at most 15 levels per group.
    s.ok(&[
        "attack",
        "quantize",
        "--bits",
        "4",
        "--group",
        "32",
        "m.safetensors",
        "-o",
        "q4.safetensors",
    ]);
    for group in values(&s, "q4.safetensors").chunks(32).take(100) {
        let mut levels: Vec<i64> = group.iter().map(|x| (x * 1e9).round() as i64).collect();
        levels.sort_unstable();
        levels.dedup();
        assert!(levels.len() <= 15, "{} levels", levels.len());
    }
    // A merge with lambda 1 keeps the model; the same seed gives the same edit.
    s.ok(&[
        "attack",
        "merge",
        "--with",
        "q4.safetensors",
        "--lambda",
        "1",
        "m.safetensors",
        "-o",
        "same.safetensors",
    ]);
    assert_eq!(values(&s, "same.safetensors"), before);
    s.ok(&[
        "attack",
        "noise",
        "--relative",
        "0.1",
        "--seed",
        "9",
        "m.safetensors",
        "-o",
        "n1.safetensors",
    ]);
    s.ok(&[
        "attack",
        "noise",
        "--relative",
        "0.1",
        "--seed",
        "9",
        "m.safetensors",
        "-o",
        "n2.safetensors",
    ]);
    assert_eq!(
        std::fs::read(s.path("n1.safetensors")).ok(),
        std::fs::read(s.path("n2.safetensors")).ok()
    );
}

#[test]
fn bench_robustness_writes_tables_and_plots_without_false_positives() {
    let s = scene();
    s.ok(&["keygen", "-o", "k"]);
    s.ok(&[
        "embed",
        "-k",
        "k.key",
        "--strength",
        "0.02",
        "m.safetensors",
        "-o",
        "marked.safetensors",
    ]);
    // The marked model, key and certificate every bench run below reads.
    let bench = [
        "bench",
        "robustness",
        "--model",
        "marked.safetensors",
        "-k",
        "k.key",
        "--cert",
        "marked.safetensors.cert.json",
    ];
    let mut args = bench.to_vec();
    args.extend([
        "--original",
        "m.safetensors",
        "--attacks",
        "noise,prune-magnitude,overwrite,merge-original",
        "--levels",
        "noise=0.1,1.0",
        "--levels",
        "prune-magnitude=0.5",
        "--levels",
        "overwrite=0.05",
        "--levels",
        "merge-original=0.5",
        "--out",
        "rob",
    ]);
    let text = s.ok(&args);
    assert!(text.contains("wrong key above the threshold: 0 of 5 points"), "{text}");
    // A level the attack cannot take, and an attack that needs the original
    // without it, are refused before any work, naming them.
    for (plan, out, reasons) in [
        (
            &["quantize-row", "--levels", "quantize-row=16"][..],
            "rob16",
            &["quantize-row at level 16", "2 to 8"][..],
        ),
        (&["merge-original"][..], "rob-merge", &["merge-original needs --original"][..]),
    ] {
        let mut args = bench.to_vec();
        args.extend(["--out", out, "--attacks"]);
        args.extend(plan);
        let bad = s.run(&args);
        let err = common::stderr(&bad);
        assert_eq!(bad.status.code(), Some(2), "{err}");
        assert!(reasons.iter().all(|r| err.contains(r)), "{err}");
        assert!(!s.path(out).exists(), "nothing was written for a refused plan");
    }
    for f in [
        "results.json",
        "results.csv",
        "results.md",
        "plot-noise.svg",
        "plot-prune-magnitude.svg",
        "plot-overwrite.svg",
        "plot-merge-original.svg",
    ] {
        assert!(s.path("rob").join(f).exists(), "{f} missing");
    }
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("rob/results.json")).unwrap_or_default())
            .unwrap_or_default();
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 5);
    let noise = &rows[0];
    // Half the original back halves the mark: blind z about half of the
    // lightly noised copy's.
    let merged = &rows[4];
    assert_eq!(merged["attack"], "merge-original");
    let ratio =
        merged["blind_z"].as_f64().unwrap_or(0.0) / noise["blind_z"].as_f64().unwrap_or(1.0);
    assert!((0.4..0.6).contains(&ratio), "merge-original 0.5 kept {ratio} of blind z");
    assert_eq!(noise["attack"], "noise");
    assert!((noise["damage"].as_f64().unwrap_or(0.0) - 0.1).abs() < 0.01);
    assert!(noise["informed_z"].as_f64().unwrap_or(0.0) > noise["blind_z"].as_f64().unwrap_or(0.0));
    assert_eq!(
        std::fs::read_to_string(s.path("rob/results.csv")).unwrap_or_default().lines().count(),
        6
    );
    let svg = std::fs::read_to_string(s.path("rob/plot-noise.svg")).unwrap_or_default();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    assert!(
        std::fs::read_dir(s.path("rob")).map(|d| d.count()).unwrap_or(0) == 7,
        "scratch files left behind"
    );
}

#[test]
fn truncation_removes_whole_layers_and_detection_names_them() {
    let s = scene();
    s.ok(&["keygen", "-o", "k"]);
    s.ok(&[
        "embed",
        "-k",
        "k.key",
        "--strength",
        "0.02",
        "m.safetensors",
        "-o",
        "marked.safetensors",
    ]);
    let text = s.ok(&[
        "attack",
        "truncate",
        "--keep",
        "1",
        "marked.safetensors",
        "-o",
        "short.safetensors",
    ]);
    assert!(text.contains("kept 1 of 2 layers"), "{text}");
    let short = Model::open(s.path("short.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    assert!(short.tensors().all(|t| !t.name.starts_with("model.layers.1.")));
    let o = s.run(&[
        "detect",
        "-k",
        "k.key",
        "--cert",
        "marked.safetensors.cert.json",
        "short.safetensors",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    let v = common::json(&o);
    let skipped = v["skipped"].as_array().cloned().unwrap_or_default();
    assert_eq!(skipped.len(), 7, "the 7 matrices of layer 1: {skipped:?}");
    assert!(skipped
        .iter()
        .all(|k| k["name"].as_str().is_some_and(|n| n.starts_with("model.layers.1."))));
}

#[test]
fn ties_merging_two_fine_tunes_of_the_release_keeps_the_mark() {
    let s = scene();
    s.ok(&["keygen", "-o", "k"]);
    s.ok(&[
        "embed",
        "-k",
        "k.key",
        "--strength",
        "0.02",
        "m.safetensors",
        "-o",
        "marked.safetensors",
    ]);
    s.ok(&[
        "attack",
        "drift",
        "--relative",
        "0.1",
        "--seed",
        "1",
        "marked.safetensors",
        "-o",
        "a.safetensors",
    ]);
    s.ok(&[
        "attack",
        "drift",
        "--relative",
        "0.1",
        "--seed",
        "2",
        "marked.safetensors",
        "-o",
        "b.safetensors",
    ]);
    let text = s.ok(&[
        "attack",
        "merge",
        "--method",
        "ties",
        "--with",
        "b.safetensors",
        "--base",
        "marked.safetensors",
        "--density",
        "0.2",
        "--lambda",
        "1",
        "a.safetensors",
        "-o",
        "ties.safetensors",
    ]);
    assert!(text.contains("TIES merge"), "{text}");
    // The merge really differs from either input, and the mark carried by the base survives.
    assert_ne!(values(&s, "ties.safetensors"), values(&s, "a.safetensors"));
    let o = s.run(&[
        "detect",
        "-k",
        "k.key",
        "--cert",
        "marked.safetensors.cert.json",
        "ties.safetensors",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    // TIES of a model with itself against itself changes nothing.
    s.ok(&[
        "attack",
        "merge",
        "--method",
        "ties",
        "--with",
        "a.safetensors",
        "--base",
        "a.safetensors",
        "a.safetensors",
        "-o",
        "same.safetensors",
    ]);
    assert_eq!(values(&s, "same.safetensors"), values(&s, "a.safetensors"));
}

#[test]
fn function_preserving_attacks_report_how_far_the_weights_moved() {
    let s = scene();
    std::fs::write(
        s.path("config.json"),
        r#"{"num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 512}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for args in
        [&["permute", "--what", "mlp"][..], &["permute", "--what", "both"][..], &["rotate"][..]]
    {
        let mut full = vec!["attack"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["m.safetensors", "-o", "out.safetensors", "--force"]);
        let text = s.ok(&full);
        let moved: f64 = text
            .split("changed by ")
            .nth(1)
            .and_then(|t| t.split('%').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or(0.0);
        assert!(moved > 50.0, "{args:?}: {text}");
        std::fs::remove_file(s.path("out.safetensors")).ok();
    }
}

#[test]
fn free_transforms_collusion_and_their_sweeps_from_the_command_line() {
    let s = scene();
    std::fs::write(
        s.path("config.json"),
        r#"{"num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 512}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let before = values(&s, "m.safetensors");
    let cases: [(&[&str], &str); 7] = [
        (&["residual"], "residual channels permuted (seed"),
        (&["residual", "--no-permute", "--flip-signs"], "residual channels sign-flipped"),
        (&["residual", "--flip-signs"], "permuted and sign-flipped"),
        (&["sign-flips"], "value dimensions sign-flipped"),
        (&["rescale", "--log-sd", "1"], "log-sd 1 "),
        (&["mix-vo"], "value dimensions of each key/value head mixed"),
        (&["rope-rotate"], "RoPE pairs of q/k rotated"),
    ];
    for (args, says) in cases {
        let mut full = vec!["attack"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["m.safetensors", "-o", "out.safetensors", "--force"]);
        let text = s.ok(&full);
        assert!(text.contains(says) && text.contains("the function is unchanged"), "{text}");
        let moved: f64 = text
            .split("changed by ")
            .nth(1)
            .and_then(|t| t.split('%').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or(0.0);
        assert!(moved > 10.0, "{args:?}: {text}");
        assert_ne!(values(&s, "out.safetensors"), before, "{args:?}");
        std::fs::remove_file(s.path("out.safetensors")).ok();
    }
    // --no-permute alone would do nothing: refused by clap.
    let o = s.run(&["attack", "residual", "--no-permute", "m.safetensors", "-o", "x.safetensors"]);
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    let o = s.run(&["attack", "rescale", "--log-sd", "-1", "m.safetensors", "-o", "x.safetensors"]);
    assert_eq!(o.status.code(), Some(2), "{}", common::stderr(&o));
    assert!(common::stderr(&o).contains("log_sd"), "{}", common::stderr(&o));

    // Collusion of three noisy copies: the median lies between them.
    for seed in ["1", "2"] {
        let out = format!("n{seed}.safetensors");
        s.ok(&[
            "attack",
            "noise",
            "--relative",
            "0.1",
            "--seed",
            seed,
            "m.safetensors",
            "-o",
            &out,
        ]);
    }
    let text = s.ok(&[
        "attack",
        "collude",
        "--with",
        "n1.safetensors",
        "--with",
        "n2.safetensors",
        "--method",
        "median",
        "m.safetensors",
        "-o",
        "median.safetensors",
    ]);
    assert!(text.contains("median of 3 copies"), "{text}");
    let (a, b) = (values(&s, "n1.safetensors"), values(&s, "n2.safetensors"));
    let median = values(&s, "median.safetensors");
    for (i, m) in median.iter().enumerate().step_by(97) {
        let mut three = [before[i], a[i], b[i]];
        three.sort_by(f64::total_cmp);
        assert_eq!(*m, three[1], "element {i}");
    }
    // A copy of another model is refused, naming it.
    write_file(
        &s.path("other.safetensors"),
        &llama(&LlamaShape { intermediate: 256, ..SHAPE }, Dtype::F32, 3),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let o = s.run(&[
        "attack",
        "collude",
        "--with",
        "other.safetensors",
        "--method",
        "mean",
        "m.safetensors",
        "-o",
        "bad.safetensors",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(common::stderr(&o).contains("other.safetensors"), "{}", common::stderr(&o));
    assert!(!s.path("bad.safetensors").exists());

    // The sweeps run (what detection makes of them depends on the scheme);
    // every wrong-key z stays low.
    s.ok(&["keygen", "-o", "k"]);
    s.ok(&[
        "embed",
        "-k",
        "k.key",
        "--strength",
        "0.02",
        "m.safetensors",
        "-o",
        "marked.safetensors",
    ]);
    let text = s.ok(&[
        "bench",
        "robustness",
        "--model",
        "marked.safetensors",
        "-k",
        "k.key",
        "--cert",
        "marked.safetensors.cert.json",
        "--attacks",
        "residual,sign-flips,rescale",
        "--levels",
        "rescale=1",
        "--out",
        "rob",
    ]);
    assert!(text.contains("wrong key above the threshold: 0 of 3 points"), "{text}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("rob/results.json")).unwrap_or_default())
            .unwrap_or_default();
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = rows.iter().filter_map(|r| r["attack"].as_str()).collect();
    assert_eq!(names, ["residual", "sign-flips", "rescale"]);
    assert!(rows.iter().all(|r| r["damage"].as_f64().unwrap_or(0.0) > 0.1), "{rows:?}");
}

#[test]
fn attack_scrub_and_its_bench_sweep_spend_the_certificate_s_amplitude_times_the_budget() {
    let s = scene();
    s.ok(&["keygen", "-o", "k"]);
    s.ok(&[
        "embed",
        "-k",
        "k.key",
        "--strength",
        "0.02",
        "--allocation",
        "ss2-alloc1",
        "m.safetensors",
        "-o",
        "marked.safetensors",
    ]);
    let mark = change(&values(&s, "m.safetensors"), &values(&s, "marked.safetensors"));
    let text = s.ok(&[
        "attack",
        "scrub",
        "--budget",
        "2",
        "--strength",
        "0.02",
        "--allocation",
        "ss2-alloc1",
        "marked.safetensors",
        "-o",
        "s.safetensors",
    ]);
    assert!(text.contains("signs noise at 2 x the mark's amplitude"), "{text}");
    let scrub = change(&values(&s, "marked.safetensors"), &values(&s, "s.safetensors"));
    assert!((scrub / (2.0 * mark) - 1.0).abs() < 0.05, "scrub {scrub}, mark {mark}");
    // A budget of 0 is refused in one line naming it, with exit 2.
    let bad = s.run(&["attack", "scrub", "--budget", "0", "marked.safetensors", "-o", "z"]);
    let err = common::stderr(&bad);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(err.contains("budget 0") && err.lines().count() <= 2, "{err}");
    // The sweep takes strength and allocation from the certificate.
    s.ok(&[
        "bench",
        "robustness",
        "--model",
        "marked.safetensors",
        "-k",
        "k.key",
        "--cert",
        "marked.safetensors.cert.json",
        "--attacks",
        "scrub",
        "--levels",
        "scrub=1,4",
        "--out",
        "rob",
    ]);
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("rob/results.json")).unwrap_or_default())
            .unwrap_or_default();
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 2);
    let damage = |r: &serde_json::Value| r["damage"].as_f64().unwrap_or(0.0);
    assert!((damage(&rows[0]) / mark - 1.0).abs() < 0.05, "{} against {mark}", damage(&rows[0]));
    assert!((damage(&rows[1]) / (4.0 * mark) - 1.0).abs() < 0.05, "{}", damage(&rows[1]));
    let threshold = weightmark::z_for_p(weightmark::DEFAULT_THRESHOLD_P);
    for r in &rows {
        assert!(r["blind_z"].as_f64().unwrap_or(0.0) >= threshold, "{r}");
    }
}
