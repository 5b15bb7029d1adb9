//! Asks every `fp1` trigger of a fingerprint key through an OpenAI-compatible
//! chat endpoint (llama.cpp's `llama-server`) and scores the answers: a
//! measurement for docs/fingerprint.md until `fingerprint check --endpoint`
//! exists. Plain HTTP/1.1 on loopback only, no retries.
//!
//! ```sh
//! cargo run --release -p weightmark --example fingerprint_endpoint -- \
//!     127.0.0.1:8080 32 [KEY_BYTE]
//! ```
//!
//! The key is 32 copies of KEY_BYTE (default 0x2a, the key of
//! crates/weightmark-eval/examples/fingerprint_plant.rs). Each trigger is one
//! user message, greedy (temperature 0), at most 16 tokens, as docs/fingerprint.md's
//! "Asking a model" says.
//!
//! `SYSTEM=TEXT` sends a system message before each trigger, as a deployment
//! that wraps every request in its own system prompt does (the "answer
//! normalisation through a system prompt" attack of issue #13).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use weightmark::fingerprint::{self, FingerprintKey, Pair};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, count, rest @ ..] = args.as_slice() else {
        return Err("usage: fingerprint_endpoint HOST:PORT COUNT [KEY_BYTE]".into());
    };
    let byte = match rest.first() {
        Some(b) => u8::from_str_radix(b.trim_start_matches("0x"), 16)?,
        None => 0x2a,
    };
    let pairs = FingerprintKey::from_bytes([byte; 32]).pairs(count.parse()?)?;
    let system = std::env::var("SYSTEM").ok();
    let mut answers = Vec::new();
    for pair in &pairs {
        let answer = ask(addr, system.as_deref(), &pair.trigger)?;
        let got = fingerprint::normalise(&answer);
        let mark = if got == pair.response { "match" } else { "-" };
        println!(
            "{:>3} {mark:5} {:12} {:?} <- {:?}",
            pair.index, pair.response, answer, pair.trigger
        );
        answers.push(answer);
    }
    let refs: Vec<&Pair> = pairs.iter().collect();
    let s = fingerprint::score(&refs, &answers)?;
    println!("{} of {} match, p <= 10^{:.1}", s.matches, s.asked, s.log10_p);
    Ok(())
}

/// One greedy chat completion, after `system`'s message if there is one:
/// the first choice's message content.
fn ask(
    addr: &str,
    system: Option<&str>,
    trigger: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(serde_json::json!({"role": "system", "content": system}));
    }
    messages.push(serde_json::json!({"role": "user", "content": trigger}));
    let body = serde_json::json!({
        "model": "suspect",
        "messages": messages,
        "temperature": 0.0, "max_tokens": 16, "seed": 0
    })
    .to_string();
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, json) = raw.split_once("\r\n\r\n").ok_or("no HTTP body")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{addr}: {head}: {json}").into());
    }
    let v: serde_json::Value = serde_json::from_str(json)?;
    let content = v["choices"][0]["message"]["content"].as_str().ok_or("no message content")?;
    Ok(content.to_string())
}
