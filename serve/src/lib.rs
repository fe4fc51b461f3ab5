//! `gpt2c serve`: an OpenAI-compatible HTTP service over one export, with continuous batching.
//!
//! ```text
//! http (connections: cap, header and write deadlines, shutdown phases)
//!  ─► guard (Host, API key, Content-Type, Content-Length; request id and record)
//!  ─► completions: body under its deadline ─► validation (blocking pool) ─► queue (async permits)
//!  ─► infer (a blocking worker per admitted prompt: generate() over a batch member)
//!  ─► runtime::batch (one scheduler, one engine, prefix cache partitioned per caller)
//!  ─► response (JSON, or SSE chunks decoded incrementally)
//! ```
//!
//! Endpoints: `POST /v1/completions`, `GET /v1/models`, `GET /health` (503 until the model is
//! loaded and while draining), `GET /metrics` (Prometheus). SIGTERM or Ctrl-C: new requests get
//! 503, requests in flight get the grace period to finish, what is left ends with an error, and
//! the server exits 0 within a second of the grace period's end, whatever the clients do.

pub mod completions;
pub mod error;
pub mod guard;
pub mod http;
pub mod infer;
pub mod inflight;
pub mod metrics;
pub mod queue;
pub mod record;
pub mod response;
pub mod state;
pub mod validation;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gpt2c_runtime::batch::BatchOptions;
use gpt2c_runtime::text::BackendChoice;
use gpt2c_runtime::{BackendKind, ExportedModel, ModelError};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use error::ApiError;
use http::Phase;
pub use state::{Access, ServeOptions};
use state::{Loaded, Shared};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--{field}: {message}")]
    Setting { field: &'static str, message: String },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Server(String),
}

/// The most rows a batch may be given (the driver's own row limit).
pub const MAX_BATCH_ROWS: usize = gpt2c_runtime::generate::limits::MAX_ROWS;
/// The most prompts that may wait.
pub const MAX_QUEUE: usize = 1 << 16;
/// The most open connections.
pub const MAX_CONNECTIONS: usize = 1 << 20;
/// The longest any of the server's timeouts may be (a day).
pub const MAX_SECONDS: f64 = 86_400.0;
/// Bodies parsed and tokenized at once.
const PARSERS: usize = 4;
/// How long requests still running at the end of the grace period get to send their error.
const ABORT_WAIT: Duration = Duration::from_millis(250);

fn setting(field: &'static str, message: impl Into<String>) -> ServeError {
    ServeError::Setting { field, message: message.into() }
}

/// Checks the settings against each other and the model, before anything is loaded.
fn validate(o: &ServeOptions, model: &ExportedModel) -> Result<(), ServeError> {
    if !(1..=MAX_BATCH_ROWS).contains(&o.max_batch_rows) {
        return Err(setting(
            "max-batch-rows",
            format!("({}) must be between 1 and {MAX_BATCH_ROWS}", o.max_batch_rows),
        ));
    }
    if !(1..=MAX_QUEUE).contains(&o.max_queue) {
        return Err(setting("max-queue", format!("({}) must be between 1 and {MAX_QUEUE}", o.max_queue)));
    }
    if o.prefill_chunk == 0 {
        return Err(setting("prefill-chunk", "must be at least 1"));
    }
    if !(o.request_timeout_s > 0.0 && o.request_timeout_s.is_finite() && o.request_timeout_s <= MAX_SECONDS) {
        return Err(setting(
            "request-timeout-s",
            format!("({}) must be a positive number of seconds", o.request_timeout_s),
        ));
    }
    if o.max_body_bytes == 0 {
        return Err(setting("max-body-kib", "must be at least 1"));
    }
    for (field, value) in [
        ("header-timeout-s", o.header_timeout_s),
        ("write-timeout-s", o.write_timeout_s),
        ("shutdown-grace-s", o.shutdown_grace_s.unwrap_or(o.request_timeout_s)),
    ] {
        let ok = if field == "shutdown-grace-s" { value >= 0.0 } else { value > 0.0 };
        if !(ok && value.is_finite() && value <= MAX_SECONDS) {
            return Err(setting(field, format!("({value}) must be a number of seconds up to {MAX_SECONDS}")));
        }
    }
    if !(1..=MAX_CONNECTIONS).contains(&o.max_connections) {
        return Err(setting(
            "max-connections",
            format!("({}) must be between 1 and {MAX_CONNECTIONS}", o.max_connections),
        ));
    }
    guard::check_access(&o.access).map_err(|(field, message)| setting(field, message))?;
    let limit = gpt2c_runtime::generate::limits::byte_limit();
    let prefix = o.prefix_cache_mib.saturating_mul(1 << 20);
    if prefix > limit {
        return Err(setting(
            "prefix-cache-mib",
            format!("({} MiB) is more than the {} MiB this machine allows", o.prefix_cache_mib, limit >> 20),
        ));
    }
    // The batch cache at its largest, in the three buffer sets a step and a join may hold at once.
    let batch = [o.max_batch_rows as u64, model.config.n_positions as u64, model.cache_bytes_per_position(), 3]
        .into_iter()
        .fold(1u64, u64::saturating_mul);
    if batch.saturating_add(prefix) > limit {
        return Err(setting(
            "max-batch-rows",
            format!(
                "{} rows of {} positions need {} MiB of cache (with the prefix cache), more than the {} MiB this \
                 machine allows; lower --max-batch-rows or --prefix-cache-mib",
                o.max_batch_rows,
                model.config.n_positions,
                batch.saturating_add(prefix) >> 20,
                limit >> 20
            ),
        ));
    }
    Ok(())
}

fn backend_kind(choice: BackendChoice) -> BackendKind {
    match choice {
        BackendChoice::Ort => BackendKind::Ort,
        BackendChoice::Tract => BackendKind::Tract,
        BackendChoice::Auto => match gpt2c_runtime::backend::ort::library_path() {
            Ok(_) => BackendKind::Ort,
            Err(_) => BackendKind::Tract,
        },
    }
}

/// The options as the server runs them: a loopback server answers only to loopback names unless
/// told otherwise; a server reachable from other machines needs a key or a word that it does not.
fn settle(mut o: ServeOptions) -> Result<ServeOptions, ServeError> {
    let a = &mut o.access;
    if o.host.is_loopback() && a.allowed_hosts.is_empty() {
        a.allowed_hosts = guard::LOOPBACK_HOSTS.iter().map(|h| h.to_string()).collect();
    }
    if !o.host.is_loopback() && a.api_keys.is_empty() {
        if !o.allow_unauthenticated {
            return Err(setting(
                "host",
                format!(
                    "{} is reachable from other machines, and no API key is set: give --api-key (or \
                     --api-key-file, or GPT2C_API_KEY), or --allow-unauthenticated to serve anyone on purpose",
                    o.host
                ),
            ));
        }
        // On stderr, beside the request log: said once, at start.
        tracing::warn!(
            target: "gpt2c::serve",
            "serving on {} without an API key (--allow-unauthenticated): anyone who can reach it can use it",
            o.host
        );
    }
    Ok(o)
}

/// Runs the server until SIGTERM or Ctrl-C. `on_event` hears where it listens, then when the
/// model is loaded (what runs it), for the caller to print.
pub fn run(options: ServeOptions, on_event: impl Fn(&str) + Send + Sync + 'static) -> Result<(), ServeError> {
    let model = ExportedModel::open(&options.dir)?;
    model.check_generates()?;
    validate(&options, &model)?;
    let options = settle(options)?;
    let tokenizer = model.tokenizer()?;
    let name = options.model_name.clone().unwrap_or_else(|| {
        let dir = std::fs::canonicalize(&options.dir).unwrap_or_else(|_| options.dir.clone());
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("gpt2c").to_string()
    });
    // A blocking thread per running prompt (each holds at least a row), and the parsers.
    let threads = options.max_batch_rows + PARSERS + 8;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| ServeError::Server(format!("cannot start the async runtime: {e}")))?;
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let shared = Arc::new(Shared {
        queue: queue::Queue::new(options.max_batch_rows, options.max_queue),
        options,
        model_name: name,
        loaded: Default::default(),
        metrics: Default::default(),
        parsers: tokio::sync::Semaphore::new(PARSERS),
        in_flight: Default::default(),
        draining: AtomicBool::new(false),
        closing: AtomicBool::new(false),
        connections: AtomicUsize::new(0),
        started,
    });
    let on_event = Arc::new(on_event);
    let result = runtime.block_on(serve(shared, model, tokenizer, on_event.clone()));
    // Workers still running stop at their next step (their requests were stopped): do not wait
    // for them past a moment.
    runtime.shutdown_timeout(Duration::from_millis(100));
    if result.is_ok() {
        on_event("stopped");
    }
    result
}

/// The routes, behind the guard (and CORS when asked for).
fn routes(shared: &Arc<Shared>) -> Router {
    let app = Router::new()
        .route("/v1/completions", post(completions::route))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics_route))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard::guard))
        .with_state(shared.clone());
    match guard::cors(&shared.options.access) {
        Some(cors) => app.layer(cors),
        None => app,
    }
}

async fn serve(
    shared: Arc<Shared>,
    model: ExportedModel,
    tokenizer: gpt2c_runtime::TextTokenizer,
    on_event: Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<(), ServeError> {
    let addr = SocketAddr::new(shared.options.host, shared.options.port);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(|source| ServeError::Bind { addr, source })?;
    on_event(&format!("listening on http://{local} (model `{}`)", shared.model_name));

    // Load the engine while /health answers 503.
    let (failed_tx, mut failed_rx) = mpsc::channel::<String>(1);
    let loader = shared.clone();
    let loaded_event = on_event.clone();
    tokio::task::spawn_blocking(move || {
        let o = &loader.options;
        let batch = BatchOptions {
            max_rows: o.max_batch_rows,
            prefill_chunk: o.prefill_chunk,
            prefix_cache_bytes: o.prefix_cache_mib.saturating_mul(1 << 20),
            cache_bytes_per_position: model.cache_bytes_per_position(),
        };
        match model.batcher(backend_kind(o.backend), &o.runner, batch) {
            Ok((batcher, report)) => {
                for w in &report.warnings {
                    loaded_event(&format!("warning: {w}"));
                }
                let limits = model.config.limits();
                let loaded = Loaded {
                    batcher,
                    tokenizer,
                    limits,
                    defaults: model.generation_json.clone(),
                    description: report.description,
                };
                loaded_event(&format!("model loaded on {}; serving", loaded.description));
                let _ = loader.loaded.set(Arc::new(loaded));
            }
            Err(e) => {
                let _ = failed_tx.blocking_send(e.to_string());
            }
        }
    });

    let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
    let server = tokio::spawn(http::serve(listener, routes(&shared), shared.clone(), phase_rx));
    let failure = tokio::select! {
        () = signal() => None,
        Some(message) = failed_rx.recv() => Some(message),
    };
    shared.draining.store(true, Ordering::SeqCst);
    let _ = phase_tx.send(Phase::Draining);
    if failure.is_none() {
        let grace = shared.options.shutdown_grace();
        on_event(&format!(
            "draining: {} requests in flight get up to {} s",
            shared.in_flight.len(),
            grace.as_secs_f64()
        ));
        let _ = tokio::time::timeout(grace, wait_until(|| shared.in_flight.is_empty())).await;
        if !shared.in_flight.is_empty() {
            on_event(&format!("grace period over: stopping {} requests", shared.in_flight.len()));
            shared.closing.store(true, Ordering::SeqCst);
            shared.in_flight.cancel_all();
            let _ = tokio::time::timeout(ABORT_WAIT, wait_until(|| shared.in_flight.is_empty())).await;
        }
    }
    let _ = phase_tx.send(Phase::Closed);
    let _ = tokio::time::timeout(http::CLOSE_WAIT + Duration::from_millis(100), server).await;
    match failure {
        Some(message) => Err(ServeError::Server(format!("cannot load the model: {message}"))),
        None => Ok(()),
    }
}

async fn wait_until(done: impl Fn() -> bool) {
    while !done() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGTERM or Ctrl-C.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(None, format!("no route for {} {}", request.method(), request.uri().path()))
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let status = match shared.loaded.get() {
        _ if shared.draining.load(Ordering::Relaxed) => "draining",
        Some(l) if l.batcher.is_running() => "ok",
        Some(_) => "failed",
        None => "loading",
    };
    let code = if status == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(json!({"status": status}))).into_response()
}

async fn models(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(json!({"object": "list", "data": [{"id": shared.model_name, "object": "model",
        "created": shared.started, "owned_by": "gpt2c"}]}))
    .into_response()
}

async fn metrics_route(State(shared): State<Arc<Shared>>) -> Response {
    let loaded = shared.loaded.get();
    let gauges = metrics::Gauges {
        stats: loaded.map(|l| l.batcher.stats()),
        queued: shared.queue.waiting(),
        running: shared.in_flight.len(),
        loaded: loaded.is_some(),
        connections: shared.connections.load(Ordering::Relaxed),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], shared.metrics.render(&gauges))
        .into_response()
}
