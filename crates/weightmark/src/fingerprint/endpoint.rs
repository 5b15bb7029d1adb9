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
//!
//! What a signed report records about the endpoint is its URL, so a URL
//! that carries a secret (`user:password@`, a `?api_key=` query) is refused:
//! an API key goes in an `Authorization: Bearer` header instead
//! ([`EndpointOptions::api_key`]), which is neither recorded nor printed.
//! Proxy settings in the environment (`HTTP_PROXY`, `ALL_PROXY`, ...) are
//! not used: the answers recorded are the endpoint's own, not a
//! middlebox's.

use std::time::{Duration, Instant};

use super::check::{Asker, EndpointRecord, ServedBy};
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
    /// HTTP 408, 425, 429 or 5xx); other failures are not retried.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Most requests per second (0: no limit).
    pub rate: f64,
    /// Sent as `Authorization: Bearer KEY` with every request; never
    /// recorded in a report or printed.
    pub api_key: Option<ApiKey>,
}

/// An endpoint's API key: visible ASCII (no spaces or control characters,
/// so it cannot split a header), at most [`MAX_API_KEY`] bytes, wiped from
/// memory when dropped, and shown as `ApiKey(…)` by `Debug`.
#[derive(Clone)]
pub struct ApiKey(zeroize::Zeroizing<String>);

/// Longest API key accepted (bytes).
pub const MAX_API_KEY: usize = 4096;

impl ApiKey {
    /// `key`, if it can go in a header; the error does not show it.
    pub fn new(key: String) -> std::result::Result<ApiKey, String> {
        let key = zeroize::Zeroizing::new(key);
        if key.is_empty() {
            return Err("the API key is empty".into());
        }
        if key.len() > MAX_API_KEY {
            return Err(format!("the API key is longer than {MAX_API_KEY} bytes"));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the API key holds a space, a control or a non-ASCII character".into());
        }
        Ok(ApiKey(key))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(…)")
    }
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
            api_key: None,
        }
    }
}

/// Longest time allowed for one request.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Smallest non-zero rate limit: one request an hour.
pub const MIN_RATE: f64 = 1.0 / 3600.0;

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
    served_by: Vec<ServedBy>,
}

/// Longest `model` or `system_fingerprint` of a response kept for the
/// report (bytes; longer ones are cut at a character boundary and end
/// with `…`).
pub const MAX_SERVED_BY: usize = 256;

/// Why one attempt failed, and whether another may succeed.
struct Failure {
    reason: String,
    transient: bool,
    /// An HTTP 4xx status other than 429: this request refused, not the
    /// endpoint gone.
    refused: bool,
}

impl Endpoint {
    /// An endpoint at `url`: a base URL (`http://host:port`, with or without
    /// a trailing `/v1`) to which the API's path is appended.
    pub fn new(url: &str, options: EndpointOptions) -> Result<Endpoint> {
        check_url(url)?;
        let bad = |reason: &str| Error::Endpoint { url: url.to_string(), reason: reason.into() };
        if options.timeout.is_zero() || options.timeout > MAX_TIMEOUT {
            return Err(bad("the timeout must be more than 0 and at most 3600 seconds"));
        }
        if !(options.rate == 0.0 || (options.rate >= MIN_RATE && options.rate.is_finite())) {
            return Err(bad(
                "the rate limit must be 0 (none) or at least one request an hour (1/3600 a second)",
            ));
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
            .proxy(None)
            .build();
        Ok(Endpoint {
            url: url.to_string(),
            request_url: format!("{base}{path}"),
            options,
            agent: config.into(),
            last: None,
            served_by: Vec::new(),
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
            served_by: self.served_by.clone(),
        }
    }

    /// Counts one answer under what its response named as serving it.
    fn served(&mut self, model: Option<String>, system_fingerprint: Option<String>) {
        if model.is_none() && system_fingerprint.is_none() {
            return;
        }
        match self
            .served_by
            .iter_mut()
            .find(|s| s.model == model && s.system_fingerprint == system_fingerprint)
        {
            Some(s) => s.answers += 1,
            None => self.served_by.push(ServedBy { model, system_fingerprint, answers: 1 }),
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
                let gap = Duration::try_from_secs_f64(1.0 / self.options.rate)
                    .unwrap_or(Duration::from_secs(3600));
                let since = last.elapsed();
                if since < gap {
                    std::thread::sleep(gap - since);
                }
            }
        }
        self.last = Some(Instant::now());
    }

    /// One request and its answer, with the response's `model` and
    /// `system_fingerprint` (each cut to [`MAX_SERVED_BY`] bytes).
    fn attempt(&mut self, body: &[u8]) -> std::result::Result<Reply, Failure> {
        self.pace();
        let permanent = |reason: String| Failure { reason, transient: false, refused: false };
        let mut request =
            self.agent.post(&self.request_url).header("Content-Type", "application/json");
        if let Some(key) = &self.options.api_key {
            request = request.header("Authorization", format!("Bearer {}", key.0.as_str()));
        }
        let response = request.send(body);
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
                transient: matches!(status, 408 | 425 | 429) || status >= 500,
                refused: refuses(status),
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
        let answer = answer.as_str().map(str::to_string).ok_or_else(|| {
            permanent(format!(
                "malformed response: no string at {}",
                match self.options.api {
                    Api::Chat => "choices[0].message.content",
                    Api::Completions => "choices[0].text",
                }
            ))
        })?;
        let field = |name: &str| value[name].as_str().map(cut);
        Ok(Reply { answer, model: field("model"), system_fingerprint: field("system_fingerprint") })
    }
}

/// Whether HTTP `status` refuses one request rather than saying the
/// endpoint cannot be asked: a 4xx other than those of a wrong key, path or
/// method (401, 403, 404, 405, 407: every request would get them) and those
/// retried (408, 425, 429).
fn refuses(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 401 | 403 | 404 | 405 | 407 | 408 | 425 | 429)
}

/// An answer and what its response said served it.
struct Reply {
    answer: String,
    model: Option<String>,
    system_fingerprint: Option<String>,
}

/// `text` cut to at most [`MAX_SERVED_BY`] bytes at a character boundary,
/// ending with `…` where it was cut.
fn cut(text: &str) -> String {
    if text.len() <= MAX_SERVED_BY {
        return text.to_string();
    }
    let mut end = MAX_SERVED_BY - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A transport failure (no HTTP status) in words. A timeout, a failed
/// connection or read and an unknown host may pass; a response that breaks
/// HTTP or is not text, and a request that cannot be made, are not retried.
fn transport(e: ureq::Error, timeout: Duration) -> Failure {
    let transient = |reason: String| Failure { reason, transient: true, refused: false };
    let permanent = |reason: String| Failure { reason, transient: false, refused: false };
    match e {
        ureq::Error::Timeout(_) => {
            transient(format!("timed out after {} s", timeout.as_secs_f64()))
        }
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            transient(format!("timed out after {} s", timeout.as_secs_f64()))
        }
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            permanent(format!("malformed response: {e}"))
        }
        ureq::Error::Io(e) => transient(format!("cannot connect or read: {e}")),
        ureq::Error::ConnectionFailed => transient("cannot connect".to_string()),
        ureq::Error::HostNotFound => transient("host not found".to_string()),
        ureq::Error::BodyExceedsLimit(n) => {
            permanent(format!("malformed response: larger than {n} bytes"))
        }
        ureq::Error::Protocol(e) => permanent(format!("malformed response: {e}")),
        e => permanent(format!("request failed: {e}")),
    }
}

/// Refuses a URL that is not `http(s)://HOST[:PORT][/PATH]`: one with
/// credentials, a query or a fragment (a secret there would go into the
/// signed report, and the API's path cannot follow them), a port that is
/// not 1 to 65535 (which the HTTP stack would silently replace by 80),
/// spaces or control characters, or `https://` in a build without TLS. The
/// error shows the URL without its credentials.
fn check_url(url: &str) -> Result<()> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    let authority = rest.map(|r| r.split('/').next().unwrap_or(r));
    // Shown without what may be secret: credentials, a query, a fragment.
    let mut shown = match (rest, authority.and_then(|a| a.rfind('@'))) {
        (Some(r), Some(at)) => format!("{}…@{}", &url[..url.len() - r.len()], &r[at + 1..]),
        _ => url.to_string(),
    };
    if let Some(cut) = shown.find(['?', '#']) {
        shown.replace_range(cut + 1.., "…");
    }
    let bad = |reason: &str| Error::Endpoint { url: shown.clone(), reason: reason.into() };
    let (Some(_), Some(authority)) = (rest, authority) else {
        return Err(bad("not an http:// or https:// URL"));
    };
    if authority.contains('@') {
        return Err(bad(
            "a URL with credentials would put them in the signed report: give the API key in an \
             environment variable (--api-key-env NAME) instead",
        ));
    }
    if url.contains('?') || url.contains('#') {
        return Err(bad(
            "a URL with a query or fragment: give the server's base URL (http://host:port, with \
             or without /v1), and an API key through --api-key-env NAME",
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("a URL with a space or control character"));
    }
    let port = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((_, "")) => None,
            Some((_, tail)) => match tail.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(bad("not a host and port")),
            },
            None => return Err(bad("an IPv6 address without its closing ']'")),
        },
        None => authority.split_once(':').map(|(_, port)| port),
    };
    let host = authority.split(':').next().unwrap_or_default();
    if host.is_empty() && !authority.starts_with('[') {
        return Err(bad("no host"));
    }
    if let Some(port) = port {
        let ok =
            port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0);
        if !ok {
            return Err(bad(&format!("port '{port}' is not a number from 1 to 65535")));
        }
    }
    if url.starts_with("https://") && !cfg!(feature = "https") {
        return Err(bad(
            "this build speaks plain HTTP only: build weightmark with the `https` feature to \
             check an https:// endpoint",
        ));
    }
    Ok(())
}

impl Asker for Endpoint {
    fn ask(&mut self, system: Option<&str>, trigger: &str) -> Result<String> {
        let body = serde_json::to_vec(&self.request_body(system, trigger))
            .map_err(|e| Error::internal(format!("request body: {e}")))?;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match self.attempt(&body) {
                Ok(reply) => {
                    self.served(reply.model, reply.system_fingerprint);
                    return Ok(reply.answer);
                }
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
                    let (url, reason) = (self.request_url.clone(), format!("{}{tries}", f.reason));
                    return Err(match f.refused {
                        true => Error::Refused { url, reason },
                        false => Error::Endpoint { url, reason },
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

    /// URLs that would leak a secret into a report, or that the HTTP stack
    /// would read otherwise than written, are refused; the error line never
    /// shows the credentials.
    #[test]
    fn urls_with_secrets_or_odd_ports_are_refused() {
        let refused = |url: &str, why: &str| {
            let e = Endpoint::new(url, EndpointOptions::default()).err().map(|e| e.to_string());
            let e = e.unwrap_or_else(|| panic!("{url} was accepted"));
            assert!(e.contains(why), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{url}: the error shows the password: {e}");
        };
        refused("http://user:hunter2@h:8080/v1", "credentials");
        refused("http://hunter2@h", "credentials");
        refused("http://h:8080/v1?api_key=hunter2", "query or fragment");
        refused("http://h:8080/#hunter2", "query or fragment");
        refused("http://h:99999", "port '99999'");
        refused("http://h:0", "port '0'");
        refused("http://h:80a", "port '80a'");
        refused("http://h:", "port ''");
        refused("http://:8080", "no host");
        refused("http://[::1", "closing ']'");
        refused("http://h /v1", "space");
        let ok = |url: &str| {
            Endpoint::new(url, EndpointOptions::default()).unwrap_or_else(|e| panic!("{url}: {e}"))
        };
        assert_eq!(
            ok("http://[::1]:8080/v1").request_url(),
            "http://[::1]:8080/v1/chat/completions"
        );
        assert_eq!(ok("http://[::1]").request_url(), "http://[::1]/v1/chat/completions");
        assert_eq!(ok("http://h:65535").request_url(), "http://h:65535/v1/chat/completions");
        if !cfg!(feature = "https") {
            refused("https://h", "plain HTTP only");
        }
        // Limits that would panic or wait for ever.
        for (timeout, rate) in [(0.0, 2.0), (3601.0, 2.0), (60.0, 1e-20), (60.0, f64::NAN)] {
            let options = EndpointOptions {
                timeout: Duration::from_secs_f64(timeout),
                rate,
                ..Default::default()
            };
            assert!(Endpoint::new("http://h:1", options).is_err(), "{timeout} s, rate {rate}");
        }
    }

    #[test]
    fn api_keys_are_header_safe_and_never_shown() {
        assert!(ApiKey::new(String::new()).is_err());
        assert!(ApiKey::new("sk-1 2".into()).is_err());
        assert!(ApiKey::new("sk-1\r\nX-Evil: 1".into()).is_err());
        assert!(ApiKey::new("k".repeat(MAX_API_KEY + 1)).is_err());
        let key = ApiKey::new("sk-hunter2".into()).unwrap_or_else(|e| panic!("{e}"));
        let options = EndpointOptions { api_key: Some(key), ..Default::default() };
        assert!(!format!("{options:?}").contains("hunter2"));
    }

    #[test]
    fn statuses_that_refuse_one_trigger_and_those_that_end_a_check() {
        for status in [400, 409, 413, 422, 451, 499] {
            assert!(refuses(status), "{status}");
        }
        for status in [200, 301, 401, 403, 404, 405, 407, 408, 425, 429, 500, 503] {
            assert!(!refuses(status), "{status}");
        }
    }

    #[test]
    fn what_served_an_answer_is_cut_at_a_character_boundary() {
        assert_eq!(cut("b4321-abc"), "b4321-abc");
        let exact = "x".repeat(MAX_SERVED_BY);
        assert_eq!(cut(&exact), exact);
        for long in ["y".repeat(1000), "é".repeat(300), format!("a{}", "€".repeat(100))] {
            let c = cut(&long);
            assert!(c.len() <= MAX_SERVED_BY && c.ends_with('…'), "{} bytes", c.len());
            assert!(long.starts_with(c.trim_end_matches('…')));
        }
    }
}
