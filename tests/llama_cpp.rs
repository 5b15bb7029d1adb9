//! llama.cpp itself runs the GGUF files weightmark writes: `attack gguf` of
//! SmolLM2-135M-Instruct (Q8_0 and Q4_K), served by llama.cpp's
//! `llama-server` (built by `scripts/fetch-llama-cpp`), tokenizes as the
//! Hugging Face tokenizer does, carries its chat template, and greedily
//! continues "The capital of France is" with " Paris"; a marked (ss2) release
//! exported to Q8_0 still answers "Paris" through the OpenAI-compatible chat
//! endpoint, the path a fingerprint check takes.

mod common;

use common::llama_server::{llama_cpp_binary, LlamaServer};
use common::Scene;
use serde_json::json;

const PROMPT: &str = "The capital of France is";
/// SmolLM2's ids for [`PROMPT`], as its Hugging Face tokenizer gives them.
const PROMPT_IDS: [u64; 5] = [504, 3575, 282, 4649, 314];

/// The chat template in a model directory's tokenizer_config.json.
fn chat_template(model: &std::path::Path) -> String {
    let text = std::fs::read_to_string(model.join("tokenizer_config.json"))
        .unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    let config: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    config["chat_template"].as_str().unwrap_or_else(|| panic!("no chat_template")).to_string()
}

/// The greedy completion of `prompt` (at most `n` tokens) by `/completion`.
fn complete(server: &LlamaServer, prompt: &str, n: u32) -> String {
    let body = json!({
        "prompt": prompt, "n_predict": n, "temperature": 0.0, "top_k": 1, "seed": 0,
        "cache_prompt": false
    });
    let answer = server.post("/completion", &body);
    assert_eq!(answer.status, 200, "/completion: {}", answer.body);
    let v = answer.json();
    v["content"].as_str().unwrap_or_else(|| panic!("no content: {v}")).to_string()
}

/// The greedy answer to one user message through `/v1/chat/completions`.
fn chat(server: &LlamaServer, message: &str) -> String {
    let body = json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": message}],
        "temperature": 0.0, "max_tokens": 32, "seed": 0
    });
    let answer = server.post("/v1/chat/completions", &body);
    assert_eq!(answer.status, 200, "/v1/chat/completions: {}", answer.body);
    let v = answer.json();
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no choices[0].message.content: {v}"))
        .to_string()
}

#[test]
fn llama_cpp_runs_our_q8_0_and_q4_k_smollm2_and_says_paris() {
    let model = common::real_model!("smollm2-f16");
    let Some(server_bin) = llama_cpp_binary("llama-server") else { return };
    let template = chat_template(&model);
    let s = Scene::new();
    for ty in ["Q8_0", "Q4_K"] {
        let file = format!("smollm2-{ty}.gguf");
        s.ok(&["attack", "gguf", "--type", ty, &model.to_string_lossy(), "-o", &file]);
        let server = LlamaServer::start(&server_bin, &s.path(&file));

        // llama.cpp's tokenizer, built from the keys we wrote, is SmolLM2's.
        let tokens = server.post("/tokenize", &json!({ "content": PROMPT }));
        assert_eq!(tokens.status, 200, "{ty} /tokenize: {}", tokens.body);
        assert_eq!(tokens.json()["tokens"], json!(PROMPT_IDS), "{ty}: tokens of {PROMPT:?}");
        // The chat template it will apply is the model's own.
        let props = server.get("/props");
        assert_eq!(props.status, 200, "{ty} /props: {}", props.body);
        assert_eq!(props.json()["chat_template"], json!(template), "{ty}: chat template");

        let text = complete(&server, PROMPT, 8);
        assert!(text.starts_with(" Paris"), "{ty}: {PROMPT:?} continued with {text:?}");
    }
}

#[test]
fn a_marked_smollm2_in_q8_0_still_answers_paris_through_llama_server_chat() {
    let model = common::real_model!("smollm2-f16");
    let Some(server_bin) = llama_cpp_binary("llama-server") else { return };
    let s = Scene::new();
    s.ok(&["keygen", "-o", "lab"]);
    s.ok(&["embed", "-k", "lab.key", "-r", "acme", &model.to_string_lossy(), "-o", "marked"]);
    s.ok(&["attack", "gguf", "--type", "Q8_0", "marked", "-o", "marked.gguf"]);
    // The file served is still the marked release.
    let found = s.run(&["detect", "-k", "lab.key", "--cert", "marked.cert.json", "marked.gguf"]);
    assert_eq!(found.status.code(), Some(0), "{}", common::stderr(&found));

    let server = LlamaServer::start(&server_bin, &s.path("marked.gguf"));
    // SmolLM2-135M answers this phrasing with "The capital of France is
    // Paris." (llama.cpp's own Q4_1 file too); "What is the capital of
    // France?" gets a French ramble from either.
    let answer = chat(&server, "Name the capital of France.");
    assert!(answer.contains("Paris"), "the marked Q8_0 answered {answer:?}");
}

#[test]
fn fingerprint_check_asks_llama_server_every_trigger_and_signs_what_it_answered() {
    use weightmark::fingerprint::{certify_fingerprint, FingerprintRelease};
    let model = common::real_model!("smollm2-f16");
    let Some(server_bin) = llama_cpp_binary("llama-server") else { return };
    let s = Scene::new();
    s.keygen("lab");
    s.ok(&["attack", "gguf", "--type", "Q8_0", &model.to_string_lossy(), "-o", "smol.gguf"]);
    // A fingerprint certificate of the unplanted model, as `fingerprint
    // plant` would sign it: its answers cannot depend on the key (H0).
    let key = weightmark::SecretKey::load(&s.path("lab.key")).unwrap_or_else(|e| panic!("{e}"));
    let original = weightmark::Model::open(&model).unwrap_or_else(|e| panic!("{e}"));
    let release = FingerprintRelease {
        base: None,
        label: "smol".into(),
        recipient: None,
        original_root: weightmark::tensor_root(&weightmark::model_tensor_digests(&original)),
        count: 32,
        created: weightmark::now_rfc3339(),
    };
    let envelope = certify_fingerprint(&original, &release, &key).unwrap_or_else(|e| panic!("{e}"));
    let text = weightmark::provenance::envelope_to_string(&envelope).unwrap_or_default();
    std::fs::write(s.path("smol.cert.json"), text).unwrap_or_else(|e| panic!("{e}"));

    let server = LlamaServer::start(&server_bin, &s.path("smol.gguf"));
    let url = server.url();
    let check = |extra: &[&str], report: &str| {
        let mut args = vec![
            "fingerprint",
            "check",
            "-k",
            "lab.key",
            "--cert",
            "smol.cert.json",
            "--endpoint",
            &url,
            "--json",
            "--report",
            report,
        ];
        args.extend_from_slice(extra);
        let o = s.run(&args);
        // Not found: an unplanted model matches 4 or more of 32 with
        // probability 7.7e-6 whatever it answers.
        assert_eq!(o.status.code(), Some(1), "{}\n{}", common::stderr(&o), server.log());
        common::json(&o)
    };
    let all = check(&["--all"], "all.json");
    assert_eq!(all["asked"].as_u64(), Some(32), "{all}");
    assert!(all["matches"].as_u64().is_some_and(|m| m <= 3), "{all}");
    let some = check(&[], "some.json");
    assert_eq!(some["asked"].as_u64(), Some(12), "{some}");

    // The signed report holds what llama-server actually answered.
    let v: serde_json::Value =
        serde_json::from_str(&s.ok(&["verify", "all.json", "--pub", "lab.pub", "--json"]))
            .unwrap_or_default();
    assert_eq!(v["kind"], "fingerprint-check", "{v}");
    let p = &v["predicate"];
    assert_eq!(p["suspect"]["endpoint"]["url"], url.as_str(), "{v}");
    assert_eq!(p["suspect"]["endpoint"]["api"], "chat", "{v}");
    let asked = p["asked"].as_array().cloned().unwrap_or_default();
    assert_eq!(asked.len(), 32);
    // SmolLM2 answers these questions in sentences; every answer arrived.
    assert!(
        asked.iter().all(|a| a["answer"].as_str().is_some_and(|t| !t.trim().is_empty())),
        "{asked:?}"
    );
}
