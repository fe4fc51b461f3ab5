//! What every handler shares: the options, the loaded model once it is there, counters.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use gpt2c_runtime::batch::Batcher;
use gpt2c_runtime::generate::ModelLimits;
use gpt2c_runtime::text::BackendChoice;
use gpt2c_runtime::{RunnerOptions, TextTokenizer};
use serde_json::{Map, Value};

use crate::metrics::Metrics;

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
        }
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
    pub loaded: OnceLock<std::sync::Arc<Loaded>>,
    pub metrics: Metrics,
    /// Prompts accepted whose prefill has not returned.
    pub queued: AtomicUsize,
    /// Completion requests being served.
    pub running: AtomicUsize,
    /// Set on SIGTERM: new requests get 503 while the others finish.
    pub draining: AtomicBool,
    /// Unix seconds the server started (`created` of `/v1/models`).
    pub started: u64,
}
