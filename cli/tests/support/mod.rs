//! What the serve tests share: the binary started on an ephemeral loopback port and spoken to
//! over real HTTP (raw sockets, so malformed and partial requests can be sent too).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn ci() -> bool {
    std::env::var("GPT2C_CI").is_ok_and(|v| v == "1")
}

pub fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("GPT2C_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    let ok = dir.join("models/tiny-trained/model.safetensors").is_file();
    if !ok && ci() {
        panic!("{}: the shared models are required under GPT2C_CI=1", dir.display());
    }
    if !ok {
        eprintln!("skipping: no shared models at {} (set GPT2C_SHARED)", dir.display());
    }
    ok.then_some(dir)
}

pub fn ort_available() -> bool {
    let ok = std::env::var_os("ORT_DYLIB_PATH").is_some_and(|p| Path::new(&p).is_file());
    if !ok && ci() {
        panic!("ORT_DYLIB_PATH must point to ONNX Runtime under GPT2C_CI=1");
    }
    ok
}

/// One server at a time: each test's timing (a queued request, a stream cut mid-way) assumes
/// the machine is not shared with other servers of this file.
pub static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn gpt2c() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gpt2c"))
}

/// tiny-trained exported into a temporary folder (named `tiny-trained`: the served model name).
pub fn export() -> Option<(tempfile::TempDir, String)> {
    export_with(&[])
}

/// tiny-trained exported with extra `gpt2c export` options.
pub fn export_with(options: &[&str]) -> Option<(tempfile::TempDir, String)> {
    let ckpt = shared()?.join("models/tiny-trained");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny-trained");
    let o = gpt2c()
        .args(["export", ckpt.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q"])
        .args(options)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Some((tmp, out.to_str().unwrap().to_string()))
}

/// A running `gpt2c serve`, killed when dropped.
/// Speaks to a server by its address (a handle threads can own).
#[derive(Clone, Debug)]
pub struct Client {
    pub addr: String,
}

pub struct Server {
    pub child: Child,
    pub client: Client,
    pub lines: std::sync::Mutex<mpsc::Receiver<String>>,
    /// The request log (stderr): lines still to read, and those read (JSON).
    pub log: std::sync::Mutex<(mpsc::Receiver<String>, Vec<Value>)>,
}

impl Server {
    pub fn start(dir: &str, backend: &str, args: &[&str]) -> Server {
        Server::start_with_env(dir, backend, args, &[])
    }

    /// Starts the server with extra environment variables; the request log is JSON lines.
    pub fn start_with_env(dir: &str, backend: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let threads: &[&str] = if args.contains(&"--threads") { &[] } else { &["--threads", "2"] };
        let mut child = gpt2c()
            .args(["serve", dir, "--port", "0", "--backend", backend, "--log-format", "json"])
            .args(threads)
            .args(args)
            .env_remove("GPT2C_API_KEY")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Also shown, for a failing test's output.
                eprintln!("{line}");
                let _ = tx.send(line);
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(60)).expect("serve prints where it listens");
        let addr = first.split("http://").nth(1).and_then(|s| s.split_whitespace().next()).unwrap().to_string();
        let server = Server {
            child,
            client: Client { addr },
            lines: std::sync::Mutex::new(lines),
            log: std::sync::Mutex::new((log, Vec::new())),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while server.get("/health").0 != 200 {
            assert!(Instant::now() < deadline, "the model did not load");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// The request log's lines for `request_id` (waits up to `wait` for the first).
    pub fn log_of(&self, request_id: &str, wait: Duration) -> Vec<Value> {
        let deadline = Instant::now() + wait;
        let mut log = self.log.lock().unwrap();
        let (rx, seen) = &mut *log;
        let mine =
            |seen: &[Value]| -> Vec<Value> { seen.iter().filter(|v| v["request_id"] == request_id).cloned().collect() };
        loop {
            while let Ok(line) = rx.try_recv() {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    seen.push(v);
                }
            }
            let found = mine(seen);
            if !found.is_empty() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, with the shell's own `kill`.
    pub fn terminate(&self) {
        let kill = Command::new("sh").args(["-c", &format!("kill -TERM {}", self.child.id())]).status().unwrap();
        assert!(kill.success());
    }

    /// Waits for the process to exit; how long it took from `since`.
    pub fn wait_exit(&mut self, since: Instant, limit: Duration) -> (ExitStatus, Duration) {
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (s, since.elapsed());
            }
            assert!(since.elapsed() < limit, "the server did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl std::ops::Deref for Server {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Client {
    /// Sends raw bytes on a new connection; returns the connection.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s
    }

    /// A request with the headers given (Host and Content-Length added); status, head, body.
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String, String) {
        let mut s = self.connect();
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
        if let Err(e) = s.write_all(head.as_bytes()).and_then(|()| s.write_all(body.as_bytes())) {
            // The server answered early and closed (401, 413, ...): what it said, if anything.
            eprintln!("{method} {path}: the request could not be sent whole: {e}");
        }
        read_response(s)
    }

    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, String, String) {
        self.request_with(method, path, &[("Content-Type", "application/json")], body)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let (status, _, body) = self.request("GET", path, "");
        (status, body)
    }

    pub fn post(&self, body: &Value) -> (u16, Value) {
        let (status, _, text) = self.request("POST", "/v1/completions", &body.to_string());
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
    }

    /// A metric's value (the first sample whose line starts with `name`).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        metric_in(&text, name)
    }

    /// Opens a streamed request; returns the connection, positioned at the first event.
    pub fn open_stream(&self, body: &Value) -> BufReader<TcpStream> {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let body = body.to_string();
        write!(
            s,
            "POST /v1/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains(" 200 "), "{line}");
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
        }
        r
    }

    /// Every `data:` payload of a stream, to `[DONE]` included.
    pub fn stream(&self, body: &Value) -> Vec<String> {
        let r = self.open_stream(body);
        let mut events = Vec::new();
        for line in r.lines().map_while(Result::ok) {
            if let Some(data) = line.strip_prefix("data: ") {
                events.push(data.to_string());
                if data == "[DONE]" {
                    break;
                }
            }
        }
        events
    }

    /// A POST with an `x-request-id`.
    pub fn post_with_id(&self, body: &Value, id: &str) -> (u16, Value) {
        let headers = [("Content-Type", "application/json"), ("x-request-id", id)];
        let (status, _, text) = self.request_with("POST", "/v1/completions", &headers, &body.to_string());
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
    }

    /// A metric's value read with an API key.
    pub fn metric_with(&self, name: &str, key: &str) -> f64 {
        let (_, _, text) = self.request_with("GET", "/metrics", &[("Authorization", &format!("Bearer {key}"))], "");
        metric_in(&text, name)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Next `data:` payload of an open stream.
pub fn next_event(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            return Some(data.to_string());
        }
    }
}

/// A metric's value (the first sample whose line starts with `name`) in Prometheus' text.
pub fn metric_in(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// Reads a whole response (the server closes the connection): status, head, body.
pub fn read_response(mut s: TcpStream) -> (u16, String, String) {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response head in {text:?}"));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    (status, head.to_string(), body)
}

/// A response header's value (case-insensitive name).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A chunked HTTP body (SSE over hyper) as one string.
pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}
