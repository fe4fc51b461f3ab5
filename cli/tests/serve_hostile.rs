//! `gpt2c serve` probed as a hostile or careless client would: stalled bodies and readers, slow
//! headers, oversized announcements, floods of connections, missing keys, browsers' requests,
//! foreign `Host` names, and SIGTERM while all of that is going on. Every test starts its own
//! server on an ephemeral loopback port (bounded requests, bounded time) over the shared
//! tiny-trained model.
//!
//! Under GPT2C_CI=1 nothing here skips.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const M: &str = "tiny-trained";

/// A stream that keeps 16 rows busy for a while (the whole context, EOS forbidden).
fn wide_stream() -> Value {
    json!({"model": M, "prompt": "Once", "max_tokens": 500, "min_new_tokens": 500, "n": 16,
           "temperature": 1.0, "seed": 1, "stream": true})
}

/// Headers of a POST announcing `length` bytes of body; nothing of the body.
fn post_head(server: &Server, length: usize, extra: &str) -> String {
    format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{extra}Content-Length: {length}\r\n\r\n",
        server.addr
    )
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads until the peer closes, errs, or says nothing for `limit`: what came, and whether the
/// read timed out.
fn read_for(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, false),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                return (got, true);
            }
            Err(_) => return (got, false),
        }
    }
}

/// Reads until the peer closes (or errors); how long that took.
fn until_closed(mut s: TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let (got, timed_out) = read_for(&mut s, limit);
    assert!(!timed_out, "the server kept the connection open past {limit:?}");
    (got, start.elapsed())
}

#[test]
fn sigterm_ends_within_the_grace_period_whatever_the_clients_do() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_tmp, dir)) = export() else { return };
    let grace = 3.0;
    let mut server = Server::start(
        &dir,
        "tract",
        &["--threads", "1", "--max-batch-rows", "17", "--shutdown-grace-s", "3", "--header-timeout-s", "60"],
    );
    // A stream of 16 greedy prompts (16 rows, cheap steps) that would run for a long while.
    let sixteen = json!({"model": M, "prompt": vec!["Once"; 16], "max_tokens": 500, "min_new_tokens": 500,
                         "temperature": 0, "stream": true});
    let mut stream = server.open_stream(&sixteen);
    assert!(next_event(&mut stream).is_some());
    // A short request on the 17th row, which finishes within the grace period.
    let addr = server.addr.clone();
    let short = std::thread::spawn({
        let s = Client { addr: addr.clone() };
        move || s.post(&json!({"model": M, "prompt": "The little dog", "max_tokens": 12, "temperature": 0}))
    });
    // Admitted (the stream's 16 prompts and this one have left the queue).
    wait_for("the short request admitted", Duration::from_secs(30), || {
        server.metric("gpt2c_queue_time_seconds_count") >= 17.0
    });
    // A request that cannot get its 16 rows: it waits in the queue.
    let queued = std::thread::spawn({
        let s = Client { addr: addr.clone() };
        move || s.post(&json!({"model": M, "prompt": "Hi", "max_tokens": 3, "n": 16, "temperature": 1.0}))
    });
    wait_for("the wide request queued", Duration::from_secs(30), || server.metric("gpt2c_queue_depth") >= 1.0);
    // A client that sends its headers and part of its body, then nothing.
    let mut stalled = server.connect();
    stalled.write_all(post_head(&server, 100, "").as_bytes()).unwrap();
    stalled.write_all(b"{\"model\": ").unwrap();
    // The stream, the short and the queued request and the stalled body are all in flight.
    wait_for("four requests in flight", Duration::from_secs(10), || server.metric("gpt2c_requests_running") >= 4.0);
    let sent = Instant::now();
    server.terminate();
    wait_for("new requests refused", Duration::from_secs(5), || {
        server.post(&json!({"model": M, "prompt": "Hi", "max_tokens": 2})).0 == 503
    });
    let (short_status, short_body) = short.join().unwrap();
    assert_eq!(short_status, 200, "the request in flight was answered: {short_body}");
    assert_eq!(short_body["choices"][0]["finish_reason"], "length");
    // The stream ends with an error event and [DONE]; the queued request with 503.
    let mut events = Vec::new();
    while let Some(e) = next_event(&mut stream) {
        events.push(e);
        if events.last().is_some_and(|e| e == "[DONE]") {
            break;
        }
    }
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(error["error"]["type"], "server_error", "{error}");
    let (queued_status, queued_body) = queued.join().unwrap();
    assert_eq!(queued_status, 503, "{queued_body}");
    // The stalled client is hung up on; the process exits 0 within the grace period and a second.
    let (_, _) = until_closed(stalled, Duration::from_secs(10));
    let (status, took) = server.wait_exit(sent, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    assert!(took.as_secs_f64() < grace + 1.0, "exited {took:?} after SIGTERM; the grace period is {grace} s");
    eprintln!("shutdown with a stalled body, a stream and a queued request: exit {took:?} after SIGTERM");
}

#[test]
fn sigterm_with_nothing_in_flight_exits_at_once_even_with_a_stalled_body() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_tmp, dir)) = export() else { return };
    let mut server = Server::start(&dir, "tract", &["--shutdown-grace-s", "2", "--header-timeout-s", "60"]);
    let mut stalled = server.connect();
    stalled.write_all(post_head(&server, 100, "").as_bytes()).unwrap();
    stalled.write_all(b"{\"mo").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let sent = Instant::now();
    server.terminate();
    let (status, took) = server.wait_exit(sent, Duration::from_secs(30));
    assert!(status.success(), "{status}");
    // The stalled body counts as in flight: it holds shutdown for the grace period, no longer.
    assert!(took.as_secs_f64() < 3.0, "exited {took:?} after SIGTERM; the grace period is 2 s");
    eprintln!("shutdown with only a stalled body: exit {took:?} after SIGTERM");
}

#[test]
fn a_stalled_stream_reader_is_cancelled_and_its_rows_freed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_tmp, dir)) = export() else { return };
    let server = Server::start(&dir, "tract", &["--threads", "1", "--write-timeout-s", "0.5"]);
    // A socket whose receive buffer is small, so a reader that stops reading blocks the server's
    // writes quickly.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut s: TcpStream = socket.into();
    let body = wide_stream().to_string();
    s.write_all(format!("{}{body}", post_head(&server, body.len(), "")).as_bytes()).unwrap();
    // Read nothing. The server cancels the request once its writes make no progress.
    wait_for("the stalled stream was cancelled", Duration::from_secs(60), || {
        server.metric("gpt2c_requests_total{outcome=\"cancelled\"}") >= 1.0
    });
    wait_for("its rows were freed", Duration::from_secs(10), || {
        server.metric("gpt2c_batch_rows") == 0.0 && server.metric("gpt2c_requests_running") == 0.0
    });
    let generated = server.metric("gpt2c_generated_tokens_total");
    assert!(generated < 16.0 * 500.0, "the stalled stream stopped early: {generated} tokens");
    // The server serves on.
    let (status, _) = server.post(&json!({"model": M, "prompt": "Hi", "max_tokens": 3}));
    assert_eq!(status, 200);
    drop(s);
}

#[test]
fn slow_headers_and_slow_bodies_are_cut() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_tmp, dir)) = export() else { return };
    let server = Server::start(&dir, "tract", &["--header-timeout-s", "1"]);
    // Half a request line, then nothing: the connection is closed.
    let mut slow = server.connect();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n").unwrap();
    let (_, took) = until_closed(slow, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "slow headers were cut after {took:?}");
    // An idle connection is closed too.
    let (_, took) = until_closed(server.connect(), Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "an idle connection was closed after {took:?}");
    // Whole headers, part of the body: 408 once the same clock runs out.
    let mut partial = server.connect();
    partial.write_all(post_head(&server, 100, "").as_bytes()).unwrap();
    partial.write_all(b"{\"model\":").unwrap();
    let start = Instant::now();
    let (status, _, body) = read_response(partial);
    assert_eq!(status, 408, "{body}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], "timeout");
    let (status, _) = server.post(&json!({"model": M, "prompt": "Hi", "max_tokens": 3}));
    assert_eq!(status, 200);
}

#[test]
fn an_announced_oversize_body_gets_413_before_it_is_sent() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_tmp, dir)) = export() else { return };
    let server = Server::start(&dir, "tract", &[]);
    let mut s = server.connect();
    s.write_all(post_head(&server, 64 << 20, "").as_bytes()).unwrap();
    let start = Instant::now();
    let (status, head, body) = read_response(s);
    assert_eq!(status, 413, "{head}\n{body}");
    assert!(start.elapsed() < Duration::from_secs(5), "answered after {:?}", start.elapsed());
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("1048576"), "{v}");
}

#[test]
fn connections_past_the_cap_are_refused_at_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_tmp, dir)) = export() else { return };
    let server = Server::start(&dir, "tract", &["--max-connections", "4", "--header-timeout-s", "30"]);
    // Four idle connections fill the cap (the server has seen them once a fifth is refused).
    let idle: Vec<TcpStream> = (0..4).map(|_| server.connect()).collect();
    wait_for("four connections open", Duration::from_secs(10), || refused_at_once(&server.addr).is_some());
    let start = Instant::now();
    let (status, body) = refused_at_once(&server.addr).expect("a fifth connection is refused");
    assert_eq!(status, 503, "{body}");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], "too_many_connections");
    drop(idle);
    wait_for("connections closed", Duration::from_secs(10), || refused_at_once(&server.addr).is_none());
    assert_eq!(server.get("/health").0, 200);
    assert!(server.metric("gpt2c_connections_refused_total") >= 1.0);
}

/// Connects and, without sending anything, reads what the server says at once: a refused
/// connection's status and body, or `None` when the server waits for a request.
fn refused_at_once(addr: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    let (got, _) = read_for(&mut s, Duration::from_millis(500));
    if got.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

#[test]
fn a_flood_of_malformed_and_abandoned_requests_leaves_it_serving() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_tmp, dir)) = export() else { return };
    let server = Server::start(&dir, "tract", &["--header-timeout-s", "2"]);
    let long_header = format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    let garbage: Vec<String> = vec![
        "\x00\x01\x02\x03 binary garbage\r\n\r\n".into(),
        "GET / HTTP/9.9\r\n\r\n".into(),
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n".into(),
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".into(),
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{\"a\":".into(),
        long_header,
    ];
    std::thread::scope(|scope| {
        for t in 0..8 {
            let (server, garbage) = (&server, &garbage);
            scope.spawn(move || {
                for i in 0..25 {
                    let Ok(mut s) = TcpStream::connect(&server.addr) else { continue };
                    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                    let _ = s.write_all(garbage[(t + i) % garbage.len()].as_bytes());
                    // Half the clients hang up without reading.
                    if i % 2 == 0 {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                        let mut sink = Vec::new();
                        let _ = s.read_to_end(&mut sink);
                    }
                }
            });
        }
    });
    wait_for("the flood's connections closed", Duration::from_secs(15), || {
        server.metric("gpt2c_connections_open") <= 1.0
    });
    let (status, body) = server.post(&json!({"model": M, "prompt": "Hi", "max_tokens": 3}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.metric("gpt2c_requests_running"), 0.0);
}

#[test]
fn keys_hosts_content_types_and_cors_are_enforced_before_the_body() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_tmp, dir)) = export() else { return };
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), "# the team's keys\nk-file\n\n").unwrap();
    let server = Server::start_with_env(
        &dir,
        "tract",
        &[
            "--api-key",
            "k-flag",
            "--api-key-file",
            keys.path().to_str().unwrap(),
            "--cors-allow-origin",
            "https://app.example",
        ],
        &[("GPT2C_API_KEY", "k-env")],
    );
    let json_type = ("Content-Type", "application/json");
    let body = json!({"model": M, "prompt": "Hi", "max_tokens": 2}).to_string();
    // No key, a wrong key: 401 as OpenAI answers it.
    for auth in [None, Some("Bearer nope"), Some("k-flag")] {
        let mut headers = vec![json_type];
        headers.extend(auth.map(|a| ("Authorization", a)));
        let (status, head, text) = server.request_with("POST", "/v1/completions", &headers, &body);
        assert_eq!(status, 401, "{auth:?}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert!(header(&head, "www-authenticate").is_some_and(|h| h.starts_with("Bearer")), "{head}");
    }
    // Each key's source works.
    for key in ["k-flag", "k-file", "k-env"] {
        let bearer = format!("Bearer {key}");
        let (status, _, text) =
            server.request_with("POST", "/v1/completions", &[json_type, ("Authorization", &bearer)], &body);
        assert_eq!(status, 200, "{key}: {text}");
        assert_eq!(server.request_with("GET", "/v1/models", &[("Authorization", &bearer)], "").0, 200);
    }
    // 401 comes before the body is read: headers announcing a body that never comes.
    let mut s = server.connect();
    s.write_all(post_head(&server, 100, "").as_bytes()).unwrap();
    let start = Instant::now();
    let (status, _, _) = read_response(s);
    assert_eq!(status, 401);
    assert!(start.elapsed() < Duration::from_secs(5));
    // Probes stay open; metrics are behind the key.
    assert_eq!(server.request_with("GET", "/health", &[], "").0, 200);
    assert_eq!(server.request_with("GET", "/metrics", &[], "").0, 401);
    assert_eq!(server.request_with("GET", "/metrics", &[("Authorization", "Bearer k-env")], "").0, 200);
    // A web page's "simple request" (text/plain) is refused, naming the header.
    let auth = ("Authorization", "Bearer k-flag");
    for content_type in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let mut headers = vec![auth];
        headers.extend(content_type.map(|t| ("Content-Type", t)));
        let (status, _, text) = server.request_with("POST", "/v1/completions", &headers, &body);
        assert_eq!(status, 415, "{content_type:?}: {text}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"]["param"], "Content-Type");
    }
    let charset = ("Content-Type", "application/json; charset=utf-8");
    assert_eq!(server.request_with("POST", "/v1/completions", &[auth, charset], &body).0, 200);
    // DNS rebinding: a loopback server answers only to loopback names.
    for (host, want) in [("evil.example", 403), ("evil.example:8000", 403), ("localhost:1234", 200)] {
        let (status, _, text) = server.request_with("GET", "/health", &[("Host", host)], "");
        assert_eq!(status, want, "{host}: {text}");
    }
    // CORS: the allowed origin's preflight is answered; another origin's is not allowed.
    let preflight = |origin: &str| {
        server.request_with(
            "OPTIONS",
            "/v1/completions",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "authorization, content-type"),
            ],
            "",
        )
    };
    let (status, head, _) = preflight("https://app.example");
    assert!((200..300).contains(&status), "{head}");
    assert_eq!(header(&head, "access-control-allow-origin"), Some("https://app.example"), "{head}");
    let methods = header(&head, "access-control-allow-methods").unwrap_or_default().to_ascii_uppercase();
    assert!(methods.contains("POST"), "{head}");
    let allowed = header(&head, "access-control-allow-headers").unwrap_or_default().to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{head}");
    let (_, head, _) = preflight("https://evil.example");
    assert_eq!(header(&head, "access-control-allow-origin"), None, "{head}");
    // The request id is taken from the request, echoed, and on the request's log line.
    let (status, head, _) =
        server.request_with("POST", "/v1/completions", &[auth, json_type, ("x-request-id", "hostile-test-1")], &body);
    assert_eq!(status, 200);
    assert_eq!(header(&head, "x-request-id"), Some("hostile-test-1"));
    let lines = server.log_of("hostile-test-1", Duration::from_secs(10));
    assert_eq!(lines.len(), 1, "one line per request: {lines:?}");
    let line = &lines[0];
    assert_eq!((&line["status"], &line["outcome"], &line["model"]), (&json!(200), &json!("ok"), &json!(M)), "{line}");
    assert_eq!(line["generated_tokens"], 2, "{line}");
    for field in ["prompt_tokens", "queue_ms", "first_token_ms", "total_ms"] {
        assert!(line[field].is_number(), "{field} in {line}");
    }
    let (_, head, _) = server.request_with("GET", "/health", &[], "");
    assert!(header(&head, "x-request-id").is_some_and(|id| id.starts_with("req-")), "{head}");
    assert_eq!(server.metric_with("gpt2c_requests_total{outcome=\"unauthorized\"}", "k-env"), 4.0);

    // The official client: the key works, a wrong one raises AuthenticationError.
    let python = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/openai_auth.py");
    let base = format!("http://{}/v1", server.addr);
    let o = Command::new(python).args([script.to_str().unwrap(), &base, M, "k-file", "wrong"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let client: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(client["text"].as_str().is_some_and(|t| !t.is_empty()), "{client}");
    assert_eq!(
        client["refused"],
        json!({"class": "AuthenticationError", "status": 401, "code": "invalid_api_key", "type": "invalid_request_error"})
    );
}

fn python() -> PathBuf {
    std::env::var_os("GPT2C_PYTHON").map(PathBuf::from).filter(|p| p.is_file()).unwrap_or_else(|| {
        assert!(!ci(), "GPT2C_PYTHON must name a Python with `openai` under GPT2C_CI=1");
        PathBuf::from("python3")
    })
}

#[test]
fn a_reachable_address_without_a_key_is_refused_unless_said_on_purpose() {
    let Some((_tmp, dir)) = export() else { return };
    // Refused before anything binds: nothing listens on another interface.
    let o =
        gpt2c().args(["serve", &dir, "--host", "0.0.0.0", "--port", "0"]).env_remove("GPT2C_API_KEY").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--host") && err.contains("--api-key") && err.contains("--allow-unauthenticated"), "{err}");
    for (args, field) in [
        (vec!["--api-key", ""], "--api-key"),
        (vec!["--cors-allow-origin", "example.com"], "--cors-allow-origin"),
        (vec!["--header-timeout-s", "0"], "--header-timeout-s"),
        (vec!["--write-timeout-s", "nan"], "--write-timeout-s"),
        (vec!["--max-connections", "0"], "--max-connections"),
        (vec!["--shutdown-grace-s", "-1"], "--shutdown-grace-s"),
        (vec!["--api-key-file", "/nonexistent/keys"], "--api-key-file"),
    ] {
        let o = gpt2c().args(["serve", &dir, "--port", "0"]).args(&args).env_remove("GPT2C_API_KEY").output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(field), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one readable line: {err}");
    }
}

#[test]
fn the_prefix_cache_is_partitioned_per_key_and_salt() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_tmp, dir)) = export() else { return };
    let server = Server::start(&dir, "tract", &["--api-key", "alice", "--api-key", "bob", "--metrics-public"]);
    // --metrics-public: scrapes need no key; completions still do.
    assert_eq!(server.get("/metrics").0, 200);
    assert_eq!(server.post(&json!({"model": M, "prompt": "Hi", "max_tokens": 2})).0, 401);
    let prompt = "You are a careful storyteller. Every story you tell is short, kind and simple, with a \
        beginning, a middle and an end. Here is the next story. A boy found a";
    let ask = |key: &str, extra: Value| {
        let mut body = json!({"model": M, "prompt": prompt, "max_tokens": 2});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, _, text) = server.request_with(
            "POST",
            "/v1/completions",
            &[("Content-Type", "application/json"), ("Authorization", &format!("Bearer {key}"))],
            &body.to_string(),
        );
        assert_eq!(status, 200, "{text}");
        (
            server.metric_with("gpt2c_prefix_cache_hits_total", "alice"),
            server.metric_with("gpt2c_prefix_cache_reused_tokens_total", "alice"),
        )
    };
    let (hits0, _) = ask("alice", json!({}));
    assert_eq!(hits0, 0.0);
    let (hits, reused) = ask("bob", json!({}));
    assert_eq!((hits, reused), (0.0, 0.0), "another key's prefix is not reused");
    let (hits, reused) = ask("alice", json!({}));
    assert_eq!(hits, 1.0, "the same key reuses its own prefix");
    assert!(reused >= 30.0, "{reused} tokens reused");
    let (hits, _) = ask("alice", json!({"cache_salt": "tenant-7"}));
    assert_eq!(hits, 1.0, "a salt partitions further");
    let (hits, _) = ask("alice", json!({"cache_salt": "tenant-7"}));
    assert_eq!(hits, 2.0, "the same salt reuses its own prefix");
}

#[test]
fn a_non_streamed_request_whose_client_leaves_is_cancelled_and_counted() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some((_tmp, dir)) = export() else { return };
    let server = Server::start(&dir, "tract", &["--threads", "1"]);
    let mut body = wide_stream();
    body["stream"] = json!(false);
    let body = body.to_string();
    let mut s = server.connect();
    s.write_all(format!("{}{body}", post_head(&server, body.len(), "x-request-id: leaves-early\r\n")).as_bytes())
        .unwrap();
    wait_for("generation started", Duration::from_secs(30), || server.metric("gpt2c_batch_rows") > 0.0);
    drop(s);
    wait_for("the request was cancelled", Duration::from_secs(30), || {
        server.metric("gpt2c_requests_total{outcome=\"cancelled\"}") == 1.0
    });
    wait_for("its rows were freed", Duration::from_secs(10), || {
        server.metric("gpt2c_batch_rows") == 0.0 && server.metric("gpt2c_requests_running") == 0.0
    });
    assert!(server.metric("gpt2c_generated_tokens_total") < 16.0 * 500.0);
    let lines = server.log_of("leaves-early", Duration::from_secs(10));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["outcome"], "cancelled");
    assert_eq!(lines[0]["status"], 499);
}
