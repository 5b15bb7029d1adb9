//! The eval commands end to end (built with `--features eval`): `eval ppl`,
//! `eval compare`, `attack finetune` and the fine-tuning attacks of `bench
//! robustness`, on a tiny synthetic Llama with a byte tokenizer and real text;
//! plus `eval compare` on MiniLM. Bad inputs exit 2 with one line naming the
//! file.

mod common;

use common::{json, license_text, real_model, stderr, stdout, write_llama_dir, Scene};
use weightmark::synth::LlamaShape;
use weightmark::Dtype;

fn tiny(s: &Scene, name: &str) -> String {
    write_llama_dir(&s.path(name), &LlamaShape::TINY, Dtype::F32, 11);
    name.to_string()
}

fn text() -> String {
    license_text().display().to_string()
}

/// The number after `label` in `line` (e.g. "perplexity 12.3 -> 4.5").
fn numbers_after(out: &str, label: &str) -> Vec<f64> {
    let line =
        out.lines().find(|l| l.contains(label)).unwrap_or_else(|| panic!("no '{label}' in {out}"));
    line[line.find(label).unwrap_or(0) + label.len()..]
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'))
        .filter_map(|w| w.parse::<f64>().ok())
        .collect()
}

#[test]
fn ppl_and_compare_of_a_model_with_itself() {
    if !common::has_license_text() {
        return;
    }
    let s = Scene::new();
    let m = tiny(&s, "tiny");
    let t = text();
    let o = s.run(&["eval", "ppl", &m, "--text", &t, "--seq", "64", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    let ppl = v["perplexity"].as_f64().unwrap_or(0.0);
    // A random model over 256 bytes is close to uniform.
    assert!(ppl > 100.0 && ppl < 400.0, "perplexity {ppl}");
    assert_eq!(v["seq"], 64);

    let o = s.run(&[
        "eval",
        "compare",
        &m,
        &m,
        "--text",
        &t,
        "--seq",
        "64",
        "--max-windows",
        "8",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["mean_kl"].as_f64(), Some(0.0));
    assert_eq!(v["top1_agreement"].as_f64(), Some(1.0));
    assert_eq!(v["perplexity_change"].as_f64(), Some(0.0));
    assert_eq!(v["positions"], 8 * 64);

    // A bare copy without config or tokenizer beside it borrows A's.
    std::fs::create_dir(s.path("bare")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(s.path("tiny/model.safetensors"), s.path("bare/copy.safetensors"))
        .unwrap_or_else(|e| panic!("{e}"));
    let o = s.run(&[
        "eval",
        "compare",
        &m,
        "bare/copy.safetensors",
        "--text",
        &t,
        "--seq",
        "64",
        "--max-windows",
        "2",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json(&o)["mean_kl"].as_f64(), Some(0.0));
}

#[test]
fn finetune_learns_keeps_the_layout_and_is_the_same_on_any_thread_count() {
    if !common::has_license_text() {
        return;
    }
    let s = Scene::new();
    let m = tiny(&s, "tiny");
    let t = text();
    let args = |out: &'static str| -> Vec<String> {
        [
            "attack", "finetune", "--steps", "12", "--lr", "3e-3", "--batch", "4", "--seq", "64",
            "--text", &t, &m, "-o", out,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let run = |out: &'static str, threads: &str| {
        let a = args(out);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = s.run_env(&refs, &[("RAYON_NUM_THREADS", threads)]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stdout(&o)
    };
    let out = run("tuned-1", "1");
    let ppl = numbers_after(&out, "held-out perplexity");
    assert!(ppl[1] < 0.7 * ppl[0], "held-out perplexity {} -> {}: {out}", ppl[0], ppl[1]);
    let change = numbers_after(&out, "relative RMS change of the marked weights:")[0];
    assert!(change > 0.0, "{out}");
    run("tuned-2", "2");
    let a = std::fs::read(s.path("tuned-1/model.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    let b = std::fs::read(s.path("tuned-2/model.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    assert!(a == b, "fine-tuning with 1 and 2 threads gave different bytes");
    // The side files travel with the model, so the output can be evaluated.
    assert!(s.path("tuned-1/config.json").is_file() && s.path("tuned-1/tokenizer.json").is_file());

    let o = s.run(&[
        "attack", "finetune", "--steps", "2", "--lora", "4", "--seq", "64", "--text", &t, &m, "-o",
        "lora",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("lora-r4 fine-tuning: 2 steps"), "{}", stdout(&o));
}

#[test]
fn the_mark_is_followed_through_fine_tuning_by_bench_robustness() {
    if !common::has_license_text() {
        return;
    }
    let s = Scene::new();
    let m = tiny(&s, "tiny");
    let key = s.keygen("owner");
    s.ok(&["embed", "-k", &key, "--strength", "0.05", "--label", "tiny", &m, "-o", "marked"]);
    let t = text();
    let o = s.run(&[
        "bench",
        "robustness",
        "--model",
        "marked",
        "-k",
        &key,
        "--cert",
        "marked.cert.json",
        "--original",
        &m,
        "--attacks",
        "finetune-full",
        "--levels",
        "finetune-full=0,4",
        "--text",
        &t,
        "--seq",
        "64",
        "--lr-full",
        "3e-3",
        "--out",
        "bench",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let results: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s.path("bench/results.json")).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let rows = results["rows"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = rows.iter().filter_map(|r| r["attack"].as_str()).collect();
    assert_eq!(
        names,
        ["finetune-full", "finetune-full", "drift-as-finetune-full", "drift-as-finetune-full"]
    );
    let (start, trained) = (&rows[0], &rows[1]);
    assert_eq!(start["damage"].as_f64(), Some(0.0), "step 0 is the marked model itself");
    assert!(trained["damage"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(trained["perplexity"].as_f64() < start["perplexity"].as_f64());
    // The matched drift has the same relative change (to rounding).
    let (d_ft, d_drift) =
        (trained["damage"].as_f64().unwrap_or(0.0), rows[3]["damage"].as_f64().unwrap_or(1.0));
    assert!((d_ft - d_drift).abs() < 0.05 * d_ft, "{d_ft} vs {d_drift}");
    for r in &rows {
        assert!(r["informed_z"].as_f64().unwrap_or(0.0) > 7.43, "{r}");
        assert!(r["wrong_key_informed_z"].as_f64().unwrap_or(99.0) < 6.44, "{r}");
    }
    assert!(s.path("bench/plot-finetune-full.svg").is_file());
    let md = std::fs::read_to_string(s.path("bench/results.md")).unwrap_or_default();
    assert!(
        md.contains("### finetune-full (level: training steps)")
            && md.contains("held-out perplexity"),
        "{md}"
    );
}

#[test]
fn minilm_compare_reports_embedding_cosine() {
    if !common::has_license_text() {
        return;
    }
    let s = Scene::new();
    let minilm = real_model!("minilm").display().to_string();
    let t = text();
    let o =
        s.run(&["eval", "compare", &minilm, &minilm, "--text", &t, "--max-windows", "8", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert!((v["mean_cosine"].as_f64().unwrap_or(0.0) - 1.0).abs() < 1e-6, "{v}");
    assert_eq!(v["texts"], 8);
    let o = s.run(&["eval", "ppl", &minilm, "--text", &t]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("BERT-layout encoder has no next-token perplexity"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_inputs_exit_2_naming_the_file() {
    if !common::has_license_text() {
        return;
    }
    let s = Scene::new();
    let m = tiny(&s, "tiny");
    std::fs::write(s.path("latin1.txt"), b"caf\xe9 au lait").unwrap_or_else(|e| panic!("{e}"));
    let o = s.run(&["eval", "ppl", &m, "--text", "latin1.txt"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("latin1.txt: not UTF-8 text (byte 3)") && err.lines().count() == 1,
        "{err}"
    );

    std::fs::remove_file(s.path("tiny/tokenizer.json")).unwrap_or_else(|e| panic!("{e}"));
    let t = text();
    let o = s.run(&["attack", "finetune", "--steps", "1", "--text", &t, &m, "-o", "out"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("tiny/tokenizer.json: no tokenizer.json"), "{}", stderr(&o));
    assert!(!s.path("out").exists());

    s.ok(&["attack", "gguf", "--type", "F32", &m, "-o", "tiny.gguf"]);
    let o = s.run(&["eval", "ppl", "tiny.gguf", "--text", &t]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("tiny.gguf: GGUF files carry no config.json"), "{}", stderr(&o));

    std::fs::write(s.path("tiny/config.json"), "{\"model_type\": \"gpt-j\"}")
        .unwrap_or_else(|e| panic!("{e}"));
    let o = s.run(&["eval", "ppl", &m, "--text", &t]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("tiny/config.json: model_type 'gpt-j' is not supported"),
        "{}",
        stderr(&o)
    );

    let o = s.run(&["eval", "ppl", "missing-model", "--text", &t]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing-model"), "{}", stderr(&o));
}

#[test]
fn attack_smooth_keeps_the_function_and_bench_robustness_measures_it() {
    if !common::has_license_text() {
        return;
    }
    let s = Scene::new();
    let m = tiny(&s, "tiny");
    let t = text();
    let smooth = |alpha: &str, out: &str| {
        s.run(&[
            "attack", "smooth", "--alpha", alpha, "--tokens", "256", "--seq", "64", "--text", &t,
            &m, "-o", out,
        ])
    };
    let o = smooth("0.5", "smoothed");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("alpha 0.5, activations of 256 calibration tokens"), "{out}");
    let ratios = numbers_after(&out, "factor groups (4 per layer): median");
    assert!(ratios[0] > 1.0 && ratios[1] >= ratios[0], "{out}");
    let change = numbers_after(&out, "weights changed by")[0];
    assert!(change > 1.0, "the weights barely moved: {out}");
    // The same function (f32 rounding only) from different weights.
    let o = s.run(&["eval", "compare", &m, "smoothed", "--text", &t, "--seq", "64", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert!(v["mean_kl"].as_f64().unwrap_or(1.0) < 1e-8, "{v}");
    assert!(v["top1_agreement"].as_f64().unwrap_or(0.0) > 0.99, "{v}");
    assert!(
        std::fs::read(s.path("tiny/model.safetensors")).ok()
            != std::fs::read(s.path("smoothed/model.safetensors")).ok()
    );

    let o = smooth("1.5", "never");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("alpha 1.5 must be between 0 and 1"), "{}", stderr(&o));
    assert!(!s.path("never").exists());

    let key = s.keygen("owner");
    s.ok(&["embed", "-k", &key, "--strength", "0.05", "--label", "tiny", &m, "-o", "marked"]);
    let o = s.run(&[
        "bench",
        "robustness",
        "--model",
        "marked",
        "-k",
        &key,
        "--cert",
        "marked.cert.json",
        "--original",
        &m,
        "--attacks",
        "smooth",
        "--levels",
        "smooth=0.5,1",
        "--text",
        &t,
        "--seq",
        "64",
        "--calibration-tokens",
        "256",
        "--out",
        "bench",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let results: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s.path("bench/results.json")).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let rows = results["rows"].as_array().cloned().unwrap_or_default();
    let levels: Vec<(&str, f64)> =
        rows.iter().filter_map(|r| Some((r["attack"].as_str()?, r["level"].as_f64()?))).collect();
    assert_eq!(levels, [("smooth", 0.5), ("smooth", 1.0)]);
    for r in &rows {
        assert!(r["damage"].as_f64().unwrap_or(0.0) > 0.01, "{r}");
        assert!(r["wrong_key_informed_z"].as_f64().unwrap_or(99.0) < 6.44, "{r}");
    }
    assert!(s.path("bench/plot-smooth.svg").is_file());
    let md = std::fs::read_to_string(s.path("bench/results.md")).unwrap_or_default();
    assert!(md.contains("### smooth (level: alpha)"), "{md}");
    // Smoothing needs its calibration text.
    let o = s.run(&[
        "bench",
        "robustness",
        "--model",
        "marked",
        "-k",
        &key,
        "--cert",
        "marked.cert.json",
        "--attacks",
        "smooth",
        "--out",
        "bench2",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("smooth needs --text FILE"), "{}", stderr(&o));
}
