//! What a request must show before any of its body is read: a `Host` this server answers to
//! (DNS rebinding), an API key (`Authorization: Bearer KEY`, compared in constant time), a JSON
//! `Content-Type` on POST (a web page's "simple request" is refused), and a `Content-Length`
//! within the limit. Every request gets an id (`x-request-id`, taken or made) and a record that
//! logs it once.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::ApiError;
use crate::record::{Record, RequestId};
use crate::state::{Access, Shared};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The names a server on a loopback address answers to by default.
pub const LOOPBACK_HOSTS: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// The caller, as the guard identified it: which key (its index), if keys are set.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub key: Option<usize>,
}

impl Caller {
    /// The prefix-cache partition of this caller's prompts: one per key (one in all without
    /// keys), split further by a request's `cache_salt`.
    pub fn partition(&self, salt: Option<&str>) -> u64 {
        if self.key.is_none() && salt.is_none() {
            return 0;
        }
        let mut h = std::hash::DefaultHasher::new();
        self.key.hash(&mut h);
        salt.hash(&mut h);
        h.finish() | 1
    }
}

/// Checks the options a server starts with.
pub fn check_access(a: &Access) -> Result<(), (&'static str, String)> {
    if let Some(k) = a.api_keys.iter().find(|k| k.is_empty() || k.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(("api-key", format!("a key of {} characters is empty or holds whitespace", k.chars().count())));
    }
    for o in &a.cors_allow_origins {
        let ok =
            o == "*" || ((o.starts_with("http://") || o.starts_with("https://")) && HeaderValue::from_str(o).is_ok());
        if !ok {
            return Err(("cors-allow-origin", format!("{o:?} must be `*` or an origin such as https://example.com")));
        }
    }
    if let Some(h) = a.allowed_hosts.iter().find(|h| h.is_empty() || h.contains(['/', ' ', '@'])) {
        return Err(("allowed-host", format!("{h:?} must be a host name or address, without a scheme or path")));
    }
    Ok(())
}

/// The CORS layer `--cors-allow-origin` asks for (answers preflights, adds the headers a page
/// needs to read answers and errors alike).
pub fn cors(a: &Access) -> Option<CorsLayer> {
    if a.cors_allow_origins.is_empty() {
        return None;
    }
    let origin = if a.cors_allow_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(a.cors_allow_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, REQUEST_ID])
            .expose_headers([REQUEST_ID])
            .max_age(Duration::from_secs(600)),
    )
}

/// The host name of a `Host` header, without its port, lower case.
fn host_name(value: &str) -> String {
    let v = value.trim();
    let name = if let Some(rest) = v.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        match v.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => v,
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn host_allowed(a: &Access, headers: &HeaderMap) -> bool {
    if a.allowed_hosts.is_empty() {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let name = host_name(host);
    a.allowed_hosts.iter().any(|h| host_name(h) == name || h.trim_matches(['[', ']']).eq_ignore_ascii_case(&name))
}

/// The index of the key the request shows, comparing against every key in constant time.
fn key_index(a: &Access, headers: &HeaderMap) -> Option<usize> {
    let given = headers.get(header::AUTHORIZATION)?.as_bytes();
    let token = given.strip_prefix(b"Bearer ").or_else(|| given.strip_prefix(b"bearer "))?;
    let mut found = None;
    for (i, key) in a.api_keys.iter().enumerate() {
        if bool::from(key.as_bytes().ct_eq(token)) {
            found = Some(i);
        }
    }
    found
}

/// An id from the client's `x-request-id` when it is short and printable, else a new one.
fn request_id(headers: &HeaderMap) -> RequestId {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let given = headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()));
    match given {
        Some(v) => RequestId(v.into()),
        None => {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let mut h = std::hash::DefaultHasher::new();
            (nanos.as_nanos(), std::process::id(), n).hash(&mut h);
            RequestId(format!("req-{:016x}", h.finish()).into())
        }
    }
}

/// Which checks a request passes, in order; the first that fails answers it.
fn check(shared: &Shared, request: &Request) -> Result<Caller, ApiError> {
    let a = &shared.options.access;
    let headers = request.headers();
    if !host_allowed(a, headers) {
        return Err(ApiError::forbidden_host(
            headers.get(header::HOST).map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()),
        ));
    }
    let path = request.uri().path();
    let open = path == "/health" || (path == "/metrics" && a.metrics_public);
    let key = key_index(a, headers);
    if !a.api_keys.is_empty() && !open && key.is_none() {
        return Err(ApiError::unauthorized(headers.contains_key(header::AUTHORIZATION)));
    }
    if request.method() == Method::POST {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::unsupported_media_type(
                headers.get(header::CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            ));
        }
        let limit = shared.options.max_body_bytes;
        let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        if announced.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::too_large(limit));
        }
    }
    Ok(Caller { key })
}

/// The middleware every route runs behind.
pub async fn guard(State(shared): State<Arc<Shared>>, mut request: Request, next: Next) -> Response {
    let id = request_id(request.headers());
    let path = request.uri().path().to_string();
    let counted = path == "/v1/completions";
    let quiet = path == "/health" || path == "/metrics";
    let record =
        Arc::new(Record::new(shared.metrics.clone(), id.clone(), request.method().as_str(), &path, counted, quiet));
    let mut response = match check(&shared, &request) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            request.extensions_mut().insert(record.clone());
            next.run(request).await
        }
        Err(e) => {
            record.finish(e.status.as_u16(), e.outcome());
            record.error(&e.message);
            // Answered before the body was read: the connection closes rather than read it.
            let mut r = e.into_response();
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
    };
    let status = response.status();
    if counted {
        record.status(status.as_u16());
    } else {
        let outcome = if status.is_success() { "ok" } else { ApiError::outcome_of(status) };
        record.finish(status.as_u16(), outcome);
    }
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port_and_case() {
        assert_eq!(host_name("LocalHost:8000"), "localhost");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8000"), "::1");
        assert_eq!(host_name("example.com."), "example.com");
        let a = Access { allowed_hosts: LOOPBACK_HOSTS.iter().map(|s| s.to_string()).collect(), ..Access::default() };
        let mut h = HeaderMap::new();
        for (host, ok) in [("localhost:1", true), ("[::1]:80", true), ("127.0.0.1:9", true), ("evil.example:80", false)]
        {
            h.insert(header::HOST, HeaderValue::from_static(host));
            assert_eq!(host_allowed(&a, &h), ok, "{host}");
        }
        h.remove(header::HOST);
        assert!(!host_allowed(&a, &h), "no Host header");
    }

    #[test]
    fn keys_partition_the_cache_and_salts_split_it_further() {
        let none = Caller { key: None };
        let (a, b) = (Caller { key: Some(0) }, Caller { key: Some(1) });
        assert_eq!(none.partition(None), 0);
        assert_ne!(a.partition(None), b.partition(None));
        assert_ne!(a.partition(None), a.partition(Some("x")));
        assert_eq!(a.partition(Some("x")), a.partition(Some("x")));
        assert_ne!(a.partition(Some("x")), b.partition(Some("x")));
        assert_ne!(none.partition(Some("x")), 0);
    }

    #[test]
    fn a_key_is_found_among_several_and_anything_else_is_not() {
        let a = Access { api_keys: vec!["k1".into(), "key-two".into()], ..Access::default() };
        let mut h = HeaderMap::new();
        for (value, want) in [("Bearer key-two", Some(1)), ("Bearer k1", Some(0)), ("Bearer k", None), ("k1", None)] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(key_index(&a, &h), want, "{value}");
        }
    }
}
