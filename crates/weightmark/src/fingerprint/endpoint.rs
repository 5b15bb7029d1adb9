//! Asking a suspect behind an OpenAI-compatible API (the one llama.cpp's
//! `llama-server`, vLLM, TGI and Ollama serve): one request per trigger,
//! greedy (temperature 0), at most 16 tokens, with a timeout, a bounded
//! number of retries with exponential backoff, and a rate limit.
//!
//! Chat (the default) posts `{"messages": [{"role": "user", "content":
//! TRIGGER}], "temperature": 0, "max_tokens": 16}` to
//! `BASE/v1/chat/completions` and reads `choices[0].message.content`;
//! completions post `{"prompt": "Question: TRIGGER\nAnswer:", ...}` to
//! `BASE/v1/completions` and read `choices[0].text`. With a system prompt,
//! chat sends `{"role": "system", "content": SYSTEM}` before the user's
//! message, and completions put `SYSTEM` and a blank line before the
//! question (as a local check's completion prompt does). `"model"` is sent
//! when a model name is given. Plain HTTP; HTTPS with the `https` feature.

use std::time::{Duration, Instant};

use super::check::{Asker, EndpointRecord};
use crate::error::{Error, Result};

/// Which API an endpoint is asked through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `/v1/chat/completions`: the trigger as one user message, so the
    /// server applies the model's chat template.
    Chat,
    /// `/v1/completions`: the completion prompt of docs/fingerprint.md.
    Completions,
}

impl Api {
    /// The name a report records: `"chat"` or `"completions"`.
    pub fn name(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Completions => "completions",
        }
    }
}

/// How to reach an endpoint.
#[derive(Clone, Debug)]
pub struct EndpointOptions {
    /// The API.
    pub api: Api,
    /// The `model` field of each request (servers serving several models
    /// need it), if any.
    pub model: Option<String>,
    /// Limit on each request, connection to last byte.
    pub timeout: Duration,
    /// Further attempts after a failed one (connection failure, timeout,
    /// HTTP 429 or 5xx); other failures are not retried.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Most requests per second (0: no limit).
    pub rate: f64,
}

impl Default for EndpointOptions {
    fn default() -> EndpointOptions {
        EndpointOptions {
            api: Api::Chat,
            model: None,
            timeout: Duration::from_secs(60),
            retries: 2,
            backoff: Duration::from_millis(500),
            rate: 2.0,
        }
    }
}

/// Largest response body read (bytes).
const MAX_RESPONSE: u64 = 1 << 20;
/// Tokens asked for per answer (the specification's fixed maximum).
pub const MAX_TOKENS: u32 = 16;

/// An OpenAI-compatible endpoint, ready to be asked.
pub struct Endpoint {
    url: String,
    request_url: String,
    options: EndpointOptions,
    agent: ureq::Agent,
    last: Option<Instant>,
}

/// Why one attempt failed, and whether another may succeed.
struct Failure {
    reason: String,
    transient: bool,
}

impl Endpoint {
    /// An endpoint at `url`: a base URL (`http://host:port`, with or without
    /// a trailing `/v1`) to which the API's path is appended.
    pub fn new(url: &str, options: EndpointOptions) -> Result<Endpoint> {
        let bad = |reason: &str| Error::Endpoint { url: url.to_string(), reason: reason.into() };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad("not an http:// or https:// URL"));
        }
        if options.timeout.is_zero() {
            return Err(bad("the timeout must be positive"));
        }
        if !(options.rate >= 0.0 && options.rate.is_finite()) {
            return Err(bad("the rate limit must be a non-negative number of requests a second"));
        }
        let base = url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        let path = match options.api {
            Api::Chat => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
        };
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(options.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .build();
        Ok(Endpoint {
            url: url.to_string(),
            request_url: format!("{base}{path}"),
            options,
            agent: config.into(),
            last: None,
        })
    }

    /// The URL requests go to.
    pub fn request_url(&self) -> &str {
        &self.request_url
    }

    /// What a report records about this endpoint.
    pub fn record(&self) -> EndpointRecord {
        EndpointRecord {
            url: self.url.clone(),
            api: self.options.api.name().to_string(),
            model: self.options.model.clone(),
        }
    }

    /// The JSON body of the request for `trigger`, after `system` if given.
    pub fn request_body(&self, system: Option<&str>, trigger: &str) -> serde_json::Value {
        let mut body = match (self.options.api, system) {
            (Api::Chat, None) => serde_json::json!({
                "messages": [{"role": "user", "content": trigger}],
            }),
            (Api::Chat, Some(system)) => serde_json::json!({
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": trigger},
                ],
            }),
            (Api::Completions, _) => serde_json::json!({
                "prompt": format!(
                    "{}Question: {trigger}\nAnswer:",
                    system.map_or(String::new(), |s| format!("{s}\n\n"))
                ),
            }),
        };
        if let Some(obj) = body.as_object_mut() {
            if let Some(model) = &self.options.model {
                obj.insert("model".into(), model.clone().into());
            }
            obj.insert("temperature".into(), 0.into());
            obj.insert("max_tokens".into(), MAX_TOKENS.into());
        }
        body
    }

    /// Waits as long as the rate limit asks since the last request.
    fn pace(&mut self) {
        if self.options.rate > 0.0 {
            if let Some(last) = self.last {
                let gap = Duration::from_secs_f64(1.0 / self.options.rate);
                let since = last.elapsed();
                if since < gap {
                    std::thread::sleep(gap - since);
                }
            }
        }
        self.last = Some(Instant::now());
    }

    /// One request and its answer.
    fn attempt(&mut self, body: &[u8]) -> std::result::Result<String, Failure> {
        self.pace();
        let permanent = |reason: String| Failure { reason, transient: false };
        let response = self
            .agent
            .post(&self.request_url)
            .header("Content-Type", "application/json")
            .send(body);
        let mut response = match response {
            Ok(r) => r,
            Err(e) => return Err(transport(e, self.options.timeout)),
        };
        let status = response.status().as_u16();
        let text = response.body_mut().with_config().limit(MAX_RESPONSE).read_to_string();
        if !(200..300).contains(&status) {
            let excerpt: String =
                text.unwrap_or_default().chars().filter(|c| !c.is_control()).take(160).collect();
            let reason = response.status().canonical_reason().unwrap_or("");
            return Err(Failure {
                reason: format!("HTTP {status} {reason}: {excerpt}").trim_end().to_string(),
                transient: status == 429 || status >= 500,
            });
        }
        let text = text.map_err(|e| transport(e, self.options.timeout))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| permanent(format!("malformed response: not JSON ({e})")))?;
        let choice = &value["choices"][0];
        let answer = match self.options.api {
            Api::Chat => &choice["message"]["content"],
            Api::Completions => &choice["text"],
        };
        answer.as_str().map(str::to_string).ok_or_else(|| {
            permanent(format!(
                "malformed response: no string at {}",
                match self.options.api {
                    Api::Chat => "choices[0].message.content",
                    Api::Completions => "choices[0].text",
                }
            ))
        })
    }
}

/// A transport failure (no HTTP status) in words; all are transient.
fn transport(e: ureq::Error, timeout: Duration) -> Failure {
    let reason = match e {
        ureq::Error::Timeout(_) => format!("timed out after {} s", timeout.as_secs_f64()),
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            format!("timed out after {} s", timeout.as_secs_f64())
        }
        ureq::Error::Io(e) => format!("cannot connect or read: {e}"),
        ureq::Error::ConnectionFailed => "cannot connect".to_string(),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::BodyExceedsLimit(n) => {
            return Failure {
                reason: format!("malformed response: larger than {n} bytes"),
                transient: false,
            }
        }
        e => format!("request failed: {e}"),
    };
    Failure { reason, transient: true }
}

impl Asker for Endpoint {
    fn ask(&mut self, system: Option<&str>, trigger: &str) -> Result<String> {
        let body = serde_json::to_vec(&self.request_body(system, trigger))
            .map_err(|e| Error::internal(format!("request body: {e}")))?;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match self.attempt(&body) {
                Ok(answer) => return Ok(answer),
                Err(f) if f.transient && attempts <= self.options.retries => {
                    let wait = self.options.backoff.saturating_mul(1 << (attempts - 1).min(16));
                    std::thread::sleep(wait);
                }
                Err(f) => {
                    let tries = if attempts > 1 {
                        format!(" (after {attempts} attempts)")
                    } else {
                        String::new()
                    };
                    return Err(Error::Endpoint {
                        url: self.request_url.clone(),
                        reason: format!("{}{tries}", f.reason),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_urls_and_bodies() {
        let chat = Endpoint::new("http://127.0.0.1:8080/v1/", EndpointOptions::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(chat.request_url(), "http://127.0.0.1:8080/v1/chat/completions");
        assert_eq!(
            chat.request_body(None, "What?"),
            serde_json::json!({"messages": [{"role": "user", "content": "What?"}],
                "temperature": 0, "max_tokens": 16})
        );
        assert_eq!(
            chat.request_body(Some("Be brief."), "What?"),
            serde_json::json!({"messages": [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What?"}], "temperature": 0, "max_tokens": 16})
        );
        let options = EndpointOptions {
            api: Api::Completions,
            model: Some("m".into()),
            ..Default::default()
        };
        let plain = Endpoint::new("http://h:1", options).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plain.request_url(), "http://h:1/v1/completions");
        assert_eq!(
            plain.request_body(None, "What?"),
            serde_json::json!({"prompt": "Question: What?\nAnswer:", "model": "m",
                "temperature": 0, "max_tokens": 16})
        );
        assert_eq!(
            plain.request_body(Some("Be brief."), "What?")["prompt"],
            "Be brief.\n\nQuestion: What?\nAnswer:"
        );
        assert!(Endpoint::new("ftp://h", EndpointOptions::default()).is_err());
    }
}
