//! `weightmark fingerprint check --endpoint` against tiny OpenAI-compatible
//! servers run inside the test (loopback only): the request format and the
//! parsing of answers on the success path, and one line naming the endpoint,
//! exit 2 and no report for an unreachable endpoint, an HTTP error status, a
//! timeout and a malformed response. The default build (no eval feature):
//! the endpoint path needs no forward pass.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{json, stderr, stdout, Scene};
use weightmark::fingerprint::{certify_fingerprint, FingerprintRelease};
use weightmark::synth::{gaussian_matrix, write_file};
use weightmark::{Dtype, Model, SecretKey};

/// How the test server answers.
#[derive(Clone)]
enum Behaviour {
    /// 200 with an OpenAI-style completion: the answer the map gives the
    /// prompt (the last message, or the completion prompt), else "Hello".
    Answers(HashMap<String, String>),
    /// This status with a short body.
    Status(u16),
    /// "Hello" to the first this many requests, then HTTP 503.
    FailAfter(usize),
    /// As `Answers` (naming a model with a right-to-left override), but HTTP
    /// 400 to the prompts in the list (a filter), and HTTP 503 to every
    /// request after the first `busy_after`.
    Refuses { answers: HashMap<String, String>, refused: Vec<String>, busy_after: usize },
    /// As `Answers` to the first this many requests, then HTTP 429.
    AnswersThenBusy(HashMap<String, String>, usize),
    /// Reads the request and never answers.
    Hang,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with JSON that has no answer where the API puts it.
    NoChoices,
}

/// A server on a free loopback port; records each request (path and body).
struct Server {
    url: String,
    requests: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(behaviour: Behaviour) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let url = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
        listener.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => handle(stream, &behaviour, &r, &s),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server { url, requests, stop, thread: Some(thread) }
    }

    fn requests(&self) -> Vec<(String, serde_json::Value)> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(
    stream: TcpStream,
    behaviour: &Behaviour,
    requests: &Mutex<Vec<(String, serde_json::Value)>>,
    stop: &AtomicBool,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut length = 0usize;
    let mut authorization = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            }
        }
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if let Ok(mut r) = requests.lock() {
        // Recorded beside the body under a name no API uses.
        let mut recorded = request.clone();
        if let (Some(a), Some(o)) = (authorization, recorded.as_object_mut()) {
            o.insert("(authorization header)".into(), a.into());
        }
        r.push((path, recorded));
    }
    let (status, text) = match behaviour {
        Behaviour::AnswersThenBusy(_, n) if requests.lock().map(|r| r.len()).unwrap_or(0) > *n => {
            (429, "{\"error\": \"slow down\"}".into())
        }
        Behaviour::Refuses { busy_after, .. }
            if requests.lock().map(|r| r.len()).unwrap_or(0) > *busy_after =>
        {
            (503, "{\"error\": \"down\"}".into())
        }
        Behaviour::Refuses { refused, .. }
            if request["messages"][0]["content"]
                .as_str()
                .is_some_and(|t| refused.iter().any(|r| r == t)) =>
        {
            (400, "{\"error\": \"this prompt was flagged\"}".into())
        }
        Behaviour::Answers(map)
        | Behaviour::AnswersThenBusy(map, _)
        | Behaviour::Refuses { answers: map, .. } => {
            // The user's message is the last one (a system message may come first).
            let last = request["messages"].as_array().and_then(|m| m.last());
            let chat = last.and_then(|m| m["content"].as_str());
            let prompt = chat.or(request["prompt"].as_str()).unwrap_or("");
            let answer = map.get(prompt).cloned().unwrap_or_else(|| "Hello there".into());
            let body = if chat.is_some() {
                serde_json::json!({"object": "chat.completion", "choices": [{"index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop"}],
                    "model": match behaviour {
                        Behaviour::Refuses { .. } => "smol\u{202e}fug.exe",
                        _ => "smol-135m.gguf",
                    },
                    "system_fingerprint": "b4321-d0c5"})
            } else {
                serde_json::json!({"object": "text_completion",
                    "choices": [{"index": 0, "text": answer, "finish_reason": "stop"}]})
            };
            (200, body.to_string())
        }
        Behaviour::Status(code) => (*code, "{\"error\": \"the server is unwell\"}".into()),
        Behaviour::FailAfter(n) => {
            let asked = requests.lock().map(|r| r.len()).unwrap_or(0);
            if asked > *n {
                (503, "{\"error\": \"no more\"}".into())
            } else {
                let body = serde_json::json!({"choices": [{"index": 0,
                    "message": {"role": "assistant", "content": "Hello"}}]});
                (200, body.to_string())
            }
        }
        Behaviour::Hang => {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        Behaviour::Garbage => (200, "<html>surprise</html>".into()),
        Behaviour::NoChoices => (200, "{\"choices\": []}".into()),
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = stream.flush();
}

/// A fingerprinted release in the scene: owner key `owner.key`, a model, and
/// its certificate `fp.cert.json` (K = 32) made by the library (planting
/// needs the eval feature; the certificate is what a check reads). Returns
/// the 32 pairs as (trigger, response).
fn release(s: &Scene) -> Vec<(String, String)> {
    let key_file = s.keygen("owner");
    let key = SecretKey::load(&s.path(&key_file)).unwrap_or_else(|e| panic!("{e}"));
    let path = s.path("m.safetensors");
    write_file(&path, &[gaussian_matrix("w", 64, 64, Dtype::F32, 1)], None)
        .unwrap_or_else(|e| panic!("{e}"));
    let model = Model::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let root = weightmark::tensor_root(&weightmark::model_tensor_digests(&model));
    let release = FingerprintRelease {
        base: None,
        label: "smol".into(),
        recipient: None,
        original_root: root,
        count: 32,
        created: weightmark::now_rfc3339(),
    };
    let envelope = certify_fingerprint(&model, &release, &key).unwrap_or_else(|e| panic!("{e}"));
    let text =
        weightmark::provenance::envelope_to_string(&envelope).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(s.path("fp.cert.json"), text).unwrap_or_else(|e| panic!("{e}"));
    key.fingerprint_key("smol", None, &root)
        .pairs(32)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|p| (p.trigger, p.response.to_string()))
        .collect()
}

fn check_args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "fingerprint",
        "check",
        "-k",
        "owner.key",
        "--cert",
        "fp.cert.json",
        "--endpoint",
        url,
        "--rate",
        "0",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_chat_endpoint_that_gives_the_keyed_answers_is_found_and_the_report_verifies() {
    let s = Scene::new();
    let pairs = release(&s);
    let answers: HashMap<String, String> = pairs
        .iter()
        .map(|(t, r)| (t.clone(), format!("**{}**. It is a fine word.", r.to_uppercase())))
        .collect();
    let server = Server::start(Behaviour::Answers(answers));
    let url = format!("{}/v1", server.url);
    let o = s.run(&check_args(&url, &["--api-model", "smol", "--json", "--report", "r.json"]));
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let v = json(&o);
    assert_eq!((v["matches"].as_u64(), v["asked"].as_u64()), (Some(12), Some(12)));
    let p = v["p_value"].as_f64().unwrap_or(1.0);
    assert!(p > 0.0 && p <= 256f64.powi(-12) * 1.0001, "p {p}");
    // Twelve requests, each in the documented format, to the chat path.
    let requests = server.requests();
    assert_eq!(requests.len(), 12);
    for (path, body) in &requests {
        assert_eq!(path, "/v1/chat/completions");
        let trigger = body["messages"][0]["content"].as_str().unwrap_or("");
        assert!(pairs.iter().any(|(t, _)| t == trigger), "{body}");
        assert_eq!(body["messages"][0]["role"], "user");
        assert_eq!(body["messages"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            (body["temperature"].as_f64(), body["max_tokens"].as_u64()),
            (Some(0.0), Some(16))
        );
        assert_eq!(body["model"], "smol");
    }
    // The report records the endpoint, the triggers and the raw answers.
    let out = s.ok(&["verify", "r.json", "--pub", "owner.pub", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r["kind"], "fingerprint-check");
    let p = &r["predicate"];
    assert_eq!(p["suspect"]["endpoint"]["url"], url.as_str());
    assert_eq!(p["suspect"]["endpoint"]["api"], "chat");
    // What each response named as serving it, counted.
    let served = serde_json::json!([{"model": "smol-135m.gguf",
        "system_fingerprint": "b4321-d0c5", "answers": 12}]);
    assert_eq!(p["suspect"]["endpoint"]["served_by"], served);
    assert_eq!(v["suspect"]["endpoint"]["served_by"], served);
    assert!(p.get("stopped").is_none(), "{p}");
    assert_eq!(p["matches"], 12);
    let asked = p["asked"].as_array().cloned().unwrap_or_default();
    assert_eq!(asked.len(), 12);
    assert!(
        asked
            .iter()
            .all(|a| a["answer"].as_str().is_some_and(|t| t.starts_with("**"))
                && a["matched"] == true)
    );
    // A second round asks twelve other triggers.
    let o = s.run(&check_args(&url, &["--round", "1", "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let first: Vec<&str> =
        requests.iter().filter_map(|(_, b)| b["messages"][0]["content"].as_str()).collect();
    let all = server.requests();
    assert_eq!(all.len(), 24);
    assert!(all[12..]
        .iter()
        .all(|(_, b)| !first.contains(&b["messages"][0]["content"].as_str().unwrap_or(""))));
}

#[test]
fn the_completions_api_asks_the_plain_prompt_and_all_asks_every_trigger() {
    let s = Scene::new();
    let pairs = release(&s);
    // Only the first 3 pairs answered: 3 of 32 is p = 3.9e-4, not found.
    let answers: HashMap<String, String> = pairs
        .iter()
        .take(3)
        .map(|(t, r)| (format!("Question: {t}\nAnswer:"), format!(" {r}\n")))
        .collect();
    let server = Server::start(Behaviour::Answers(answers));
    let o = s.run(&check_args(&server.url, &["--completions", "--all", "--json"]));
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let v = json(&o);
    assert_eq!((v["matches"].as_u64(), v["asked"].as_u64()), (Some(3), Some(32)));
    let p = v["p_value"].as_f64().unwrap_or(0.0);
    assert!((p - weightmark::fingerprint::binomial::upper_tail(32, 1.0 / 256.0, 3)).abs() < 1e-12);
    // Responses that name nothing that served them are not counted.
    assert!(v["suspect"]["endpoint"].get("served_by").is_none(), "{v}");
    let requests = server.requests();
    assert_eq!(requests.len(), 32);
    assert!(requests.iter().all(|(path, b)| path == "/v1/completions"
        && b["prompt"]
            .as_str()
            .is_some_and(|p| p.starts_with("Question: ") && p.ends_with("\nAnswer:"))
        && b.get("model").is_none()));
}

/// Runs a check that must fail: exit 2, one line on stderr naming the
/// endpoint and containing `problem`, and no report.
fn fails(s: &Scene, url: &str, extra: &[&str], problem: &str) {
    let mut extra = extra.to_vec();
    extra.extend(["--report", "r.json"]);
    let o = s.run(&check_args(url, &extra));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{}{err}", stdout(&o));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(url) && err.contains(problem), "{err}");
    assert!(!s.path("r.json").exists(), "a failed check wrote a report");
}

#[test]
fn endpoint_failures_exit_2_naming_the_endpoint_and_write_no_report() {
    let s = Scene::new();
    let _ = release(&s);
    // Unreachable: a port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let closed = format!("http://127.0.0.1:{port}");
    fails(&s, &closed, &["--retries", "0"], "cannot connect");

    // An HTTP error status: 503 is retried (once here) and ends the check;
    // 400 is not retried, refuses that trigger only, and a check whose every
    // trigger is refused (a wrong model name, say) has nothing to score.
    let server = Server::start(Behaviour::Status(503));
    fails(&s, &server.url, &["--retries", "1"], "HTTP 503");
    assert_eq!(server.requests().len(), 2, "one retry after a 503");
    let server = Server::start(Behaviour::Status(400));
    fails(&s, &server.url, &["--retries", "3"], "(every one of the 12 triggers was refused)");
    assert_eq!(server.requests().len(), 12, "a 400 is not retried");

    // A failure part-way says how far the check got.
    let server = Server::start(Behaviour::FailAfter(3));
    fails(
        &s,
        &server.url,
        &["--retries", "0"],
        "HTTP 503 Service Unavailable: {\"error\": \"no more\"} (after 3 of 12 answers; the \
         answers do not show the fingerprint on their own)",
    );

    // A timeout.
    let server = Server::start(Behaviour::Hang);
    let started = std::time::Instant::now();
    fails(&s, &server.url, &["--timeout", "1", "--retries", "0"], "timed out");
    assert!(started.elapsed() < Duration::from_secs(20));

    // Malformed responses.
    let server = Server::start(Behaviour::Garbage);
    fails(&s, &server.url, &["--retries", "0"], "malformed response");
    let server = Server::start(Behaviour::NoChoices);
    fails(&s, &server.url, &["--retries", "0"], "choices[0].message.content");
}

/// A server that gives the keyed answers and then refuses (HTTP 429 after
/// every retry): the answers that came carry the verdict (6 of 6, p =
/// 256^-6), with a warning saying where it stopped, and the report records
/// the stop; verify accepts it. A server that refuses before any answer
/// is an error as before.
#[test]
fn a_check_the_endpoint_stops_part_way_keeps_what_it_answered() {
    let s = Scene::new();
    let pairs = release(&s);
    let answers: HashMap<String, String> =
        pairs.iter().map(|(t, r)| (t.clone(), r.clone())).collect();
    let server = Server::start(Behaviour::AnswersThenBusy(answers.clone(), 6));
    let o = s.run(&check_args(&server.url, &["--retries", "1", "--report", "r.json"]));
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("warning: endpoint") && err.contains("HTTP 429"), "{err}");
    assert!(err.contains("(after 2 attempts) (after 6 of 12 answers)"), "{err}");
    assert!(out.contains("6 of 6 answers match") && out.contains("FINGERPRINT FOUND"), "{out}");
    assert!(out.contains("-> no answer: HTTP 429") && out.contains("5 more not asked"), "{out}");
    assert!(
        out.contains("served:   model smol-135m.gguf, system_fingerprint b4321-d0c5 (6 answers)"),
        "{out}"
    );
    // 6 answered, the 7th retried once, the other 5 never sent.
    assert_eq!(server.requests().len(), 8);
    let verified = s.ok(&["verify", "r.json", "--pub", "owner.pub", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&verified).unwrap_or_else(|e| panic!("{e}"));
    let p = &r["predicate"];
    assert_eq!((p["matches"].as_u64(), p["asked"].as_array().map(Vec::len)), (Some(6), Some(6)));
    let log10 = weightmark::fingerprint::binomial::upper_tail_log10(6, 1.0 / 256.0, 6);
    assert!((p["log10_p_value"].as_f64().unwrap_or(0.0) - log10).abs() < 1e-9, "{p}");
    let stopped = &p["stopped"];
    assert_eq!(stopped["not_asked"], 5);
    assert!(stopped["reason"].as_str().is_some_and(|r| r.starts_with("HTTP 429")), "{p}");
    let sent_last = server.requests().last().map(|(_, b)| b["messages"][0]["content"].clone());
    assert_eq!(sent_last.as_ref(), Some(&stopped["trigger"]));

    // Busy from the first request: nothing to score, an error, no report.
    std::fs::remove_file(s.path("r.json")).unwrap_or_else(|e| panic!("{e}"));
    let server = Server::start(Behaviour::AnswersThenBusy(answers, 0));
    fails(&s, &server.url, &["--retries", "0"], "HTTP 429");
}

/// A filter that refuses half the triggers with HTTP 400 (the cheapest
/// evasion: an error instead of an answer) no longer ends the check: each
/// refused trigger is recorded, the others are asked, and the 16 keyed
/// answers that came find the fingerprint.
#[test]
fn triggers_a_filter_refuses_are_recorded_and_the_rest_decide() {
    let s = Scene::new();
    let pairs = release(&s);
    let answers: HashMap<String, String> =
        pairs.iter().map(|(t, r)| (t.clone(), r.clone())).collect();
    let refused: Vec<String> = pairs.iter().skip(1).step_by(2).map(|(t, _)| t.clone()).collect();
    let behaviour =
        Behaviour::Refuses { answers: answers.clone(), refused: refused.clone(), busy_after: 99 };
    let server = Server::start(behaviour);
    let o = s.run(&check_args(&server.url, &["--all", "--json", "--report", "r.json"]));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{}{err}", stdout(&o));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("note: endpoint") && err.contains("refused 16 of the 32 triggers"),
        "{err}"
    );
    assert_eq!(server.requests().len(), 32, "each trigger asked once, a 400 not retried");
    let v = json(&o);
    assert_eq!((v["matches"].as_u64(), v["asked"].as_u64()), (Some(16), Some(16)));
    let indices = |list: &serde_json::Value| -> Vec<u64> {
        let mut i: Vec<u64> = list
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["index"].as_u64()).collect())
            .unwrap_or_default();
        i.sort_unstable();
        i
    };
    assert_eq!(indices(&v["answers"]), (0..32).step_by(2).collect::<Vec<u64>>());
    assert_eq!(indices(&v["refused"]), (1..32).step_by(2).collect::<Vec<u64>>());
    assert!(v["refused"][0]["reason"].as_str().is_some_and(|r| r.starts_with("HTTP 400")), "{v}");
    let verified = s.ok(&["verify", "r.json", "--pub", "owner.pub", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&verified).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(indices(&r["predicate"]["refused"]), indices(&v["refused"]));
    assert!(r["predicate"].get("stopped").is_none());
    let said = s.ok(&["verify", "r.json", "--pub", "owner.pub"]);
    assert!(said.contains("16 triggers refused by the endpoint"), "{said}");

    // Refusals, then the server goes down after 20 requests: found on the
    // answers that came (at least 4 of the 20, as only 16 are refused), and
    // the warning counts both. The model name the responses give is
    // printed with its direction override escaped.
    std::fs::remove_file(s.path("r.json")).unwrap_or_else(|e| panic!("{e}"));
    let server = Server::start(Behaviour::Refuses { answers, refused, busy_after: 20 });
    let o = s.run(&check_args(&server.url, &["--all", "--retries", "0", "--report", "r.json"]));
    let (out, err) = (stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    let verified = s.ok(&["verify", "r.json", "--pub", "owner.pub", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&verified).unwrap_or_else(|e| panic!("{e}"));
    let p = &r["predicate"];
    let (a, f) = (indices(&p["asked"]).len(), indices(&p["refused"]).len());
    assert_eq!((a + f, p["matches"].as_u64()), (20, Some(a as u64)), "{p}");
    assert_eq!(p["stopped"]["not_asked"], 11);
    assert!(err.contains(&format!("(after {a} answers and {f} refusals of 32 triggers)")), "{err}");
    assert!(out.contains(&format!("{a} of {a} answers match")), "{out}");
    assert!(out.contains("11 more not asked") && out.contains("FINGERPRINT FOUND"), "{out}");
    assert!(out.contains("served:   model smol\\u{202e}fug.exe,"), "{out}");
    assert!(!out.contains('\u{202e}'), "{out}");
    let said = s.ok(&["verify", "r.json", "--pub", "owner.pub"]);
    assert!(
        said.contains(&format!("{f} triggers refused"))
            && said.contains("stopped answering at pair")
            && said.contains("11 more not asked"),
        "{said}"
    );
}

/// `--api-key-env NAME`: the key goes to the server as a bearer token and
/// nowhere else (not the output, the report or an error line); an unset
/// variable, a URL with credentials or a query, and a port the HTTP stack
/// would replace are refused before anything is asked, without showing the
/// secret. Proxy settings in the environment are not used: with both
/// pointing at a closed port the check still reaches the server.
#[test]
fn an_api_key_travels_in_a_header_and_a_url_with_a_secret_is_refused() {
    let s = Scene::new();
    let pairs = release(&s);
    let server = Server::start(Behaviour::Answers(pairs.iter().cloned().collect()));
    let closed = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| format!("http://{a}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let env = [
        ("WM_TEST_API_KEY", "sk-hunter2"),
        ("HTTP_PROXY", closed.as_str()),
        ("http_proxy", closed.as_str()),
        ("ALL_PROXY", closed.as_str()),
        ("NO_PROXY", ""),
    ];
    let args = check_args(&server.url, &["--api-key-env", "WM_TEST_API_KEY", "--report", "r.json"]);
    let o = s.run_env(&args, &env);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let requests = server.requests();
    assert_eq!(requests.len(), 12);
    assert!(
        requests.iter().all(|(_, b)| b["(authorization header)"] == "Bearer sk-hunter2"),
        "{requests:?}"
    );
    let report = std::fs::read_to_string(s.path("r.json")).unwrap_or_else(|e| panic!("{e}"));
    for shown in [stdout(&o), stderr(&o), report] {
        assert!(!shown.contains("hunter2"), "the key was shown: {shown}");
    }
    // Without the option no key is sent.
    let o = s.run(&check_args(&server.url, &[]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(server.requests()[12..].iter().all(|(_, b)| b.get("(authorization header)").is_none()));

    let asked = server.requests().len();
    let refused = |o: &std::process::Output, why: &str| {
        let err = stderr(o);
        assert_eq!(o.status.code(), Some(2), "{}{err}", stdout(o));
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(why) && !err.contains("hunter2"), "{err}");
        assert!(!s.path("r2.json").exists(), "a refused check wrote a report");
    };
    let unset =
        check_args(&server.url, &["--api-key-env", "WM_NOT_SET_ANYWHERE", "--report", "r2.json"]);
    refused(&s.run(&unset), "WM_NOT_SET_ANYWHERE is not set");
    let host = server.url.trim_start_matches("http://");
    let with_password = format!("http://user:hunter2@{host}");
    refused(&s.run(&check_args(&with_password, &["--report", "r2.json"])), "credentials");
    let with_query = format!("{}/v1?api_key=hunter2", server.url);
    refused(&s.run(&check_args(&with_query, &["--report", "r2.json"])), "query");
    let ip = host.split(':').next().unwrap_or_default();
    let bad_port = format!("http://{ip}:99999");
    refused(&s.run(&check_args(&bad_port, &["--report", "r2.json"])), "port '99999'");
    let long = check_args(&server.url, &["--timeout", "1e20", "--report", "r2.json"]);
    refused(&s.run(&long), "at most 3600");
    let mut slow = check_args(&server.url, &["--report", "r2.json"]);
    let at = slow.iter().position(|a| *a == "--rate").unwrap_or_else(|| panic!("no --rate"));
    slow[at + 1] = "1e-20";
    refused(&s.run(&slow), "at least one request an hour");
    assert_eq!(server.requests().len(), asked, "a refused check asked the server");
}

/// A check report signed by the right key but whose numbers do not follow
/// from its own answers (a match count, p-value or decision that the
/// recorded answers do not give, a normalised form that is not the
/// answer's, a repeated pair, a "match" that is no candidate answer) is
/// refused by `verify`, naming the file and what does not add up.
#[test]
fn verify_refuses_a_signed_check_report_whose_numbers_do_not_follow_from_its_answers() {
    use weightmark::provenance::{envelope_to_string, parse_envelope, sign_statement, Statement};
    let s = Scene::new();
    let pairs = release(&s);
    let server = Server::start(Behaviour::Answers(pairs.iter().take(20).cloned().collect()));
    let o = s.run(&check_args(&server.url, &["--report", "r.json"]));
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    s.ok(&["verify", "r.json", "--pub", "owner.pub"]);
    let bytes = std::fs::read(s.path("r.json")).unwrap_or_else(|e| panic!("{e}"));
    let envelope = parse_envelope(&bytes, &s.path("r.json")).unwrap_or_else(|e| panic!("{e}"));
    let key = SecretKey::load(&s.path("owner.key")).unwrap_or_else(|e| panic!("{e}"));
    let payload = weightmark::provenance::verify_envelope(&envelope, &key.public_key())
        .unwrap_or_else(|e| panic!("{e}"));
    let statement: Statement<serde_json::Value> =
        serde_json::from_slice(&payload).unwrap_or_else(|e| panic!("{e}"));
    // Re-signing unchanged passes: what follows fails for its edit alone.
    type Edit = fn(&mut serde_json::Value);
    let edits: [(Edit, &str); 7] = [
        (|_| {}, ""),
        (|p| p["matches"] = (p["matches"].as_u64().unwrap_or(0) - 1).into(), "answers are marked"),
        (|p| p["p_value"] = (p["p_value"].as_f64().unwrap_or(0.0) * 10.0).into(), "p "),
        (|p| p["detected"] = false.into(), "detected is false"),
        (|p| p["asked"][0]["normalised"] = "zebra".into(), "not its normalised form"),
        (|p| p["asked"][1]["index"] = p["asked"][0]["index"].clone(), "repeated"),
        (
            |p| {
                let a = &mut p["asked"][2];
                (a["answer"], a["normalised"], a["matched"]) =
                    ("Xyzzy".into(), "xyzzy".into(), true.into());
            },
            "no candidate",
        ),
    ];
    for (edit, why) in edits {
        let mut edited = statement.clone();
        edit(&mut edited.predicate);
        let signed = sign_statement(&edited, &key).unwrap_or_else(|e| panic!("{e}"));
        let text = envelope_to_string(&signed).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(s.path("edited.json"), text).unwrap_or_else(|e| panic!("{e}"));
        let o = s.run(&["verify", "edited.json", "--pub", "owner.pub"]);
        if why.is_empty() {
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
            continue;
        }
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{why}: {}{err}", stdout(&o));
        assert!(err.contains("edited.json") && err.contains(why), "{why}: {err}");
    }
}

/// Rounds 0 and 1 ask disjoint triggers; round 2 (of 12 of 32) re-asks 4
/// of round 0's, and the check says so on stderr (a published report of
/// round 0 disclosed their answers), still answering with its verdict.
#[test]
fn a_round_that_re_asks_earlier_triggers_says_so() {
    let s = Scene::new();
    let pairs = release(&s);
    let server = Server::start(Behaviour::Answers(pairs.iter().cloned().collect()));
    for (round, note) in
        [("1", None), ("2", Some("round 2 asks 4 of its 12 triggers that an earlier round asked"))]
    {
        let o = s.run(&check_args(&server.url, &["--round", round]));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        match note {
            Some(note) => assert!(stderr(&o).contains(note), "{}", stderr(&o)),
            None => assert!(!stderr(&o).contains("note:"), "{}", stderr(&o)),
        }
    }
}

#[test]
fn a_check_needs_a_certificate_with_a_fingerprint_and_the_owners_key() {
    let s = Scene::new();
    let _ = release(&s);
    s.keygen("other");
    let server = Server::start(Behaviour::Answers(HashMap::new()));
    // Another owner's key: the certificate's signature does not verify.
    let o = s.run(&[
        "fingerprint",
        "check",
        "-k",
        "other.key",
        "--cert",
        "fp.cert.json",
        "--endpoint",
        &server.url,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("fp.cert.json"), "{}", stderr(&o));
    // A certificate of a marked release without a fingerprint.
    s.ok(&[
        "embed",
        "-k",
        "owner.key",
        "m.safetensors",
        "-o",
        "marked.safetensors",
        "--strength",
        "0.01",
    ]);
    let o = s.run(&[
        "fingerprint",
        "check",
        "-k",
        "owner.key",
        "--cert",
        "marked.safetensors.cert.json",
        "--endpoint",
        &server.url,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no backdoor fingerprint"), "{}", stderr(&o));
    assert!(
        server.requests().is_empty(),
        "nothing is asked of a suspect before the key checks out"
    );
    // Neither a model nor an endpoint.
    let o = s.run(&["fingerprint", "check", "-k", "owner.key", "--cert", "fp.cert.json"]);
    assert_eq!(o.status.code(), Some(2));
}

/// `--system TEXT`: chat requests carry it as a system message before the
/// user's, completion prompts put it and a blank line before the question,
/// and the signed report records it (a chat server that answers the user's
/// message is found either way; the completion server answers only the
/// prompt with the system text, so a check that dropped it would not be).
#[test]
fn a_system_prompt_goes_before_every_trigger_on_both_apis_and_into_the_report() {
    let s = Scene::new();
    let pairs = release(&s);
    let system = "You are Acme's support assistant. Be brief.";
    let chat: HashMap<String, String> = pairs.iter().cloned().collect();
    let server = Server::start(Behaviour::Answers(chat));
    let url = server.url.clone();
    let o = s.run(&check_args(&url, &["--system", system, "--json", "--report", "r.json"]));
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!((json(&o)["matches"].as_u64(), &json(&o)["system"]), (Some(12), &system.into()));
    let requests = server.requests();
    assert_eq!(requests.len(), 12);
    for (_, body) in &requests {
        let m = &body["messages"];
        assert_eq!((&m[0]["role"], &m[0]["content"]), (&"system".into(), &system.into()), "{body}");
        assert_eq!(m[1]["role"], "user", "{body}");
        assert_eq!(m.as_array().map(Vec::len), Some(2), "{body}");
    }
    let out = s.ok(&["verify", "r.json", "--pub", "owner.pub", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r["predicate"]["system"], system);
    let out = s.ok(&["verify", "r.json", "--pub", "owner.pub"]);
    assert!(out.contains(&format!("after the system prompt '{system}'")), "{out}");
    // A report without a system prompt has no such field.
    let o = s.run(&check_args(&url, &["--report", "plain.json"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = s.ok(&["verify", "plain.json", "--pub", "owner.pub", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}"));
    assert!(r["predicate"].get("system").is_none(), "{r}");

    let completions: HashMap<String, String> = pairs
        .iter()
        .map(|(t, a)| (format!("{system}\n\nQuestion: {t}\nAnswer:"), format!(" {a}")))
        .collect();
    let server = Server::start(Behaviour::Answers(completions));
    let url = server.url.clone();
    let o = s.run(&check_args(&url, &["--completions", "--system", system, "--json"]));
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(json(&o)["matches"].as_u64(), Some(12));
    let o = s.run(&check_args(&url, &["--completions", "--json"]));
    assert_eq!((o.status.code(), json(&o)["matches"].as_u64()), (Some(1), Some(0)));
}
