//! llama.cpp's `llama-server`, built by `scripts/fetch-llama-cpp`, serving a
//! GGUF file on a free loopback port for the length of a test: started,
//! waited for (`/health`, bounded), queried over plain HTTP/1.1, and killed
//! when dropped, whatever the test did.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a model may take to load before the server counts as failed.
const STARTUP: Duration = Duration::from_secs(120);
/// The longest one request may take (connect, generate, answer).
const REQUEST: Duration = Duration::from_secs(300);

/// Where `scripts/fetch-llama-cpp` keeps llama.cpp (`WEIGHTMARK_LLAMA_CPP`,
/// else `~/.cache/weightmark/llama.cpp`).
pub fn llama_cpp_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEIGHTMARK_LLAMA_CPP") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("weightmark").join("llama.cpp")
}

/// The path of one llama.cpp binary (`llama-server`, `llama-completion`), or
/// `None` (the test skips itself, with a message) when it is not built,
/// outside `scripts/test`, which builds it.
pub fn llama_cpp_binary(name: &str) -> Option<PathBuf> {
    let path = llama_cpp_dir().join("current").join("bin").join(name);
    if path.is_file() {
        return Some(path);
    }
    super::fixture_missing(
        &format!("llama.cpp's {}", path.display()),
        "run scripts/fetch-llama-cpp first, or set WEIGHTMARK_LLAMA_CPP",
    );
    None
}

/// A running `llama-server`; dropping it kills the process.
pub struct LlamaServer {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// One HTTP answer: status code and body.
pub struct Answer {
    /// The HTTP status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

impl Answer {
    /// The body as JSON; panics (naming the status and body) when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("HTTP {}: not JSON ({e}): {}", self.status, self.body))
    }
}

impl LlamaServer {
    /// Starts `server` on `gguf` (2 threads, a 1024-token context, one slot)
    /// on a free loopback port and waits until `/health` says ok. Panics with
    /// the server's log when it exits or is not ready within two minutes.
    pub fn start(server: &Path, gguf: &Path) -> LlamaServer {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = dir.path().join("llama-server.log");
        // A port the kernel just handed out and released; llama-server binds
        // it a moment later (another process taking it in between shows as
        // an exit below, with the log).
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("no free loopback port: {e}"));
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
        let err = out.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(server)
            .arg("--model")
            .arg(gguf)
            .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(["--threads", "2", "--ctx-size", "1024", "--parallel", "1", "--no-webui"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));
        let mut s = LlamaServer { child, addr, log, _dir: dir };
        s.wait_until_healthy();
        s
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything the server has printed so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_until_healthy(&mut self) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("llama-server exited ({status}) before it was ready:\n{}", self.log());
            }
            let health = request(self.addr, "GET", "/health", None, Duration::from_secs(5));
            if health.is_ok_and(|a| a.status == 200) {
                return;
            }
            assert!(
                start.elapsed() < STARTUP,
                "llama-server was not ready after {STARTUP:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// GET `path`; panics on a connection or protocol failure.
    pub fn get(&self, path: &str) -> Answer {
        request(self.addr, "GET", path, None, REQUEST)
            .unwrap_or_else(|e| panic!("GET {}{path}: {e}\n{}", self.url(), self.log()))
    }

    /// POST `body` as JSON to `path`; panics on a connection or protocol failure.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Answer {
        request(self.addr, "POST", path, Some(&body.to_string()), REQUEST)
            .unwrap_or_else(|e| panic!("POST {}{path}: {e}\n{}", self.url(), self.log()))
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`, read to the end.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("malformed HTTP response: {}", String::from_utf8_lossy(&raw)),
        )
    })
}

/// Status and body of a whole HTTP/1.1 response (chunked or not).
fn parse_response(raw: &[u8]) -> Option<Answer> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(raw.get(..split)?).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = raw.get(split + 4..)?.to_vec();
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = body.as_slice();
        loop {
            let line = rest.windows(2).position(|w| w == b"\r\n")?;
            let size = std::str::from_utf8(rest.get(..line)?).ok()?;
            let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            rest = rest.get(line + 2..)?;
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = out;
    }
    Some(Answer { status, body: String::from_utf8_lossy(&body).into_owned() })
}
