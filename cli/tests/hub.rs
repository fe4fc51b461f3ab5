//! `gpt2c export <model id>` against a Hub stand-in on 127.0.0.1 that serves fixture
//! repositories with the Hub's URL layout (`/{repo}/resolve/{revision}/{file}`, the
//! `etag` / `x-repo-commit` / `content-range` headers hf-hub reads, `x-error-code` on 404s,
//! 401 for a private repository without the right token, ranged requests for resumes).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

#[derive(Default)]
struct Hub {
    /// repo id → file name → bytes (revision "main" only).
    repos: HashMap<String, HashMap<String, Vec<u8>>>,
    /// Repositories that need `Authorization: Bearer secret`.
    private: Vec<String>,
    /// (repo, file) whose first full transfer is cut in half.
    flaky: Option<(String, String)>,
    /// Every request: "METHOD path range".
    log: Vec<String>,
}

fn folder(dir: &Path) -> HashMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().unwrap() != "reference.safetensors")
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

fn hex_hash(bytes: &[u8]) -> String {
    // FNV-1a, twice with different seeds: an etag only has to differ between contents.
    let h = |seed: u64| bytes.iter().fold(seed, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{:016x}{:016x}", h(0xcbf2_9ce4_8422_2325), h(0x8422_2325_cbf2_9ce4))
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8], declared: usize) {
    let mut head = format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: {declared}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn handle(mut stream: TcpStream, hub: Arc<Mutex<Hub>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let range = headers.get("range").cloned().unwrap_or_default();
    let mut hub = hub.lock().unwrap();
    hub.log.push(format!("{method} {path} {range}"));
    let error = |code: &str| vec![("x-error-code".to_string(), code.to_string())];
    let Some((repo, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return respond(&mut stream, "404 Not Found", &error("RepoNotFound"), b"", 0);
    };
    let (revision, file) = rest.split_once('/').unwrap_or((rest, ""));
    if hub.private.iter().any(|p| p == repo)
        && headers.get("authorization").map(String::as_str) != Some("Bearer secret")
    {
        return respond(&mut stream, "401 Unauthorized", &error("RepoNotFound"), b"", 0);
    }
    let Some(files) = hub.repos.get(repo) else {
        return respond(&mut stream, "404 Not Found", &error("RepoNotFound"), b"", 0);
    };
    if revision != "main" {
        return respond(&mut stream, "404 Not Found", &error("RevisionNotFound"), b"", 0);
    }
    let Some(data) = files.get(file).cloned() else {
        return respond(&mut stream, "404 Not Found", &error("EntryNotFound"), b"", 0);
    };
    let commit = hex_hash(repo.as_bytes())[..32].to_string() + "00000000";
    let mut h = vec![("etag".to_string(), format!("\"{}\"", hex_hash(&data))), ("x-repo-commit".to_string(), commit)];
    let start: usize =
        range.strip_prefix("bytes=").and_then(|r| r.split('-').next()).and_then(|s| s.parse().ok()).unwrap_or(0);
    let end = if range.ends_with("-0") && start == 0 { 1 } else { data.len() };
    h.push(("content-range".into(), format!("bytes {start}-{}/{}", end.max(1) - 1, data.len())));
    let body = &data[start.min(data.len())..end];
    let cut = hub.flaky.as_ref().is_some_and(|(r, f)| r == repo && f == file) && start == 0 && end == data.len();
    if cut {
        hub.flaky = None;
        drop(hub);
        return respond(&mut stream, "206 Partial Content", &h, &body[..body.len() / 2], body.len());
    }
    respond(&mut stream, "206 Partial Content", &h, body, body.len());
}

fn serve(hub: Hub) -> (String, Arc<Mutex<Hub>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let hub = Arc::new(Mutex::new(hub));
    let shared = hub.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let hub = shared.clone();
            std::thread::spawn(move || handle(stream, hub));
        }
    });
    (endpoint, hub)
}

fn fixture_hub() -> Hub {
    let mut hub = Hub::default();
    let tiny = folder(&models().join("tiny-default"));
    hub.repos.insert("team/tiny".into(), tiny.clone());
    hub.repos.insert("team/flaky".into(), tiny.clone());
    hub.repos.insert("team/private".into(), tiny.clone());
    hub.repos.insert("tiny-sharded".into(), folder(&models().join("tiny-default-sharded")));
    hub.repos
        .insert("team/no-weights".into(), HashMap::from([("config.json".to_string(), tiny["config.json"].clone())]));
    hub.private.push("team/private".into());
    hub.flaky = Some(("team/flaky".into(), "model.safetensors".into()));
    hub
}

fn export(endpoint: &str, home: &Path, out: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpt2c"));
    cmd.arg("export").args(args).arg("-o").arg(out).arg("--quiet");
    cmd.env("HF_ENDPOINT", endpoint).env("HF_HOME", home).env_remove("HF_TOKEN").env_remove("HF_HUB_OFFLINE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn local_export(dir: &Path) -> Vec<u8> {
    let out = dir.join("local");
    let o = Command::new(env!("CARGO_BIN_EXE_gpt2c"))
        .args(["export", models().join("tiny-default").to_str().unwrap(), "-q", "-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    std::fs::read(out.join("model.onnx")).unwrap()
}

#[test]
fn hub_download_cache_offline_and_errors() {
    let (endpoint, hub) = serve(fixture_hub());
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf-home");
    let want = local_export(tmp.path());
    let requests = |hub: &Arc<Mutex<Hub>>| hub.lock().unwrap().log.len();
    let ok = |o: &Output| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // A fresh download into HF_HOME/hub, the same graph as the local folder.
    let o = export(&endpoint, &home, &tmp.path().join("a"), &["team/tiny"], &[]);
    ok(&o);
    assert_eq!(std::fs::read(tmp.path().join("a/model.onnx")).unwrap(), want);
    assert!(home.join("hub/models--team--tiny/snapshots").is_dir(), "the Hub cache layout");
    assert!(tmp.path().join("a/tokenizer.json").is_file(), "tokenizer files fetched");
    assert!(requests(&hub) > 0);

    // Cached: no request at all (files the repository lacks are remembered too).
    let before = requests(&hub);
    ok(&export(&endpoint, &home, &tmp.path().join("b"), &["team/tiny"], &[]));
    assert_eq!(requests(&hub), before, "a cached run made requests: {:?}", &hub.lock().unwrap().log[before..]);

    // Offline: the cache serves; an uncached model is a clear error, with no request.
    ok(&export(&endpoint, &home, &tmp.path().join("c"), &["team/tiny"], &[("HF_HUB_OFFLINE", "1")]));
    let o = export(&endpoint, &home, &tmp.path().join("d"), &["team/other"], &[("HF_HUB_OFFLINE", "1")]);
    assert!(
        !o.status.success() && stderr(&o).contains("HF_HUB_OFFLINE=1") && stderr(&o).contains("team/other"),
        "{}",
        stderr(&o)
    );
    assert_eq!(requests(&hub), before);

    // 404 (repository and revision), 401 and a repository without weights.
    let o = export(&endpoint, &home, &tmp.path().join("e"), &["team/missing"], &[]);
    assert!(
        !o.status.success() && stderr(&o).contains("team/missing: not found") && stderr(&o).contains("404"),
        "{}",
        stderr(&o)
    );
    let o = export(&endpoint, &home, &tmp.path().join("e"), &["team/tiny", "--revision", "v9"], &[]);
    assert!(!o.status.success() && stderr(&o).contains("--revision v9"), "{}", stderr(&o));
    let o = export(&endpoint, &home, &tmp.path().join("f"), &["team/private"], &[]);
    assert!(
        !o.status.success() && stderr(&o).contains("HTTP 401") && stderr(&o).contains("HF_TOKEN"),
        "{}",
        stderr(&o)
    );
    ok(&export(&endpoint, &home, &tmp.path().join("g"), &["team/private"], &[("HF_TOKEN", "secret")]));
    let o = export(&endpoint, &home, &tmp.path().join("h"), &["team/no-weights"], &[]);
    assert!(!o.status.success() && stderr(&o).contains("no weights"), "{}", stderr(&o));
    assert!(!tmp.path().join("e").exists() && !tmp.path().join("h").exists(), "failed exports write nothing");

    // Sharded safetensors, and a transfer cut mid-file that resumes from its partial file.
    ok(&export(&endpoint, &home, &tmp.path().join("i"), &["tiny-sharded"], &[]));
    assert_eq!(std::fs::read(tmp.path().join("i/model.onnx")).unwrap(), want);
    ok(&export(&endpoint, &home, &tmp.path().join("j"), &["team/flaky"], &[]));
    assert_eq!(std::fs::read(tmp.path().join("j/model.onnx")).unwrap(), want);
    let log = hub.lock().unwrap().log.clone();
    let resumed = log.iter().any(|l| {
        l.contains("team/flaky")
            && l.contains("model.safetensors")
            && !l.ends_with("bytes=0-")
            && !l.ends_with("bytes=0-0")
    });
    assert!(resumed, "no ranged resume request: {log:?}");
}
