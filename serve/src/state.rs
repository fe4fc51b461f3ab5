//! What every handler shares: the options, the loaded model once it is there, counters.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gpt2c_runtime::batch::Batcher;
use gpt2c_runtime::generate::ModelLimits;
use gpt2c_runtime::text::BackendChoice;
use gpt2c_runtime::{RunnerOptions, TextTokenizer};
use serde_json::{Map, Value};

use crate::inflight::InFlight;
use crate::metrics::Metrics;
use crate::queue::Queue;

/// Who may call, and from where.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Accepted API keys; empty: no key is asked for.
    pub api_keys: Vec<String>,
    /// `/metrics` without a key.
    pub metrics_public: bool,
    /// Origins whose pages may call (`*`: any); empty: CORS off.
    pub cors_allow_origins: Vec<String>,
    /// `Host` names accepted (any port); empty: any.
    pub allowed_hosts: Vec<String>,
}

/// `gpt2c serve`'s settings.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The export folder.
    pub dir: PathBuf,
    pub host: IpAddr,
    /// 0 picks a free port (the address is printed).
    pub port: u16,
    pub backend: BackendChoice,
    pub runner: RunnerOptions,
    /// The name requests give as `model`; default the export folder's name.
    pub model_name: Option<String>,
    pub max_batch_rows: usize,
    /// Prompts that may wait for rows before requests are refused with 429.
    pub max_queue: usize,
    pub prefix_cache_mib: u64,
    pub prefill_chunk: usize,
    pub request_timeout_s: f64,
    pub max_body_bytes: usize,
    /// Seconds a client has to send a request's headers, and then its body.
    pub header_timeout_s: f64,
    /// Seconds a response may make no progress on the socket (a client that stopped reading)
    /// before its request is cancelled and the connection closed.
    pub write_timeout_s: f64,
    /// Open connections at most; past that, new ones are answered 503 and closed.
    pub max_connections: usize,
    /// Seconds requests in flight get to finish after SIGTERM (default: the request timeout).
    pub shutdown_grace_s: Option<f64>,
    /// Who may call, and from where.
    pub access: Access,
    /// Serve a non-loopback address without an API key, on purpose.
    pub allow_unauthenticated: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            dir: PathBuf::new(),
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8000,
            backend: BackendChoice::Auto,
            runner: RunnerOptions::default(),
            model_name: None,
            max_batch_rows: 32,
            max_queue: 256,
            prefix_cache_mib: 256,
            prefill_chunk: 256,
            request_timeout_s: 120.0,
            max_body_bytes: 1 << 20,
            header_timeout_s: 10.0,
            write_timeout_s: 30.0,
            max_connections: 1024,
            shutdown_grace_s: None,
            access: Access::default(),
            allow_unauthenticated: false,
        }
    }
}

impl ServeOptions {
    pub fn header_timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.header_timeout_s).unwrap_or(Duration::MAX)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.write_timeout_s).unwrap_or(Duration::MAX)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.request_timeout_s).unwrap_or(Duration::MAX)
    }

    /// How long SIGTERM waits for requests in flight.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::try_from_secs_f64(self.shutdown_grace_s.unwrap_or(self.request_timeout_s)).unwrap_or(Duration::MAX)
    }
}

/// The model once loaded.
pub struct Loaded {
    pub batcher: Batcher,
    pub tokenizer: TextTokenizer,
    pub limits: ModelLimits,
    pub defaults: Map<String, Value>,
    /// What runs the graph, for people.
    pub description: String,
}

/// Shared by every handler.
pub struct Shared {
    pub options: ServeOptions,
    pub model_name: String,
    pub loaded: OnceLock<Arc<Loaded>>,
    pub metrics: Arc<Metrics>,
    /// Prompts waiting for rows, and the rows themselves.
    pub queue: Queue,
    /// Bodies being parsed and tokenized at once (on the blocking pool).
    pub parsers: tokio::sync::Semaphore,
    /// Completion requests being served, each with the flag that stops it.
    pub in_flight: InFlight,
    /// Set on SIGTERM: new requests get 503 while the others finish.
    pub draining: AtomicBool,
    /// Set once the grace period is over: what is still running is stopped with an error.
    pub closing: AtomicBool,
    /// Open connections.
    pub connections: AtomicUsize,
    /// Unix seconds the server started (`created` of `/v1/models`).
    pub started: u64,
}
