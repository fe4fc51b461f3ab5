//! `gpt2c serve`: an OpenAI-compatible HTTP service over one export, with continuous batching.
//!
//! ```text
//! HTTP (axum) ─► request (OpenAI + transformers fields → GenerationConfig, checked)
//!             ─► completions (a blocking worker per prompt: generate() over a batch member)
//!             ─► runtime::batch (one scheduler, one engine, prefix cache) ─► events ─► JSON or SSE
//! ```
//!
//! Endpoints: `POST /v1/completions`, `GET /v1/models`, `GET /health` (503 until the model is
//! loaded and while draining), `GET /metrics` (Prometheus). SIGTERM or Ctrl-C: new requests get
//! 503, requests in flight finish, then the server exits.

pub mod completions;
pub mod error;
pub mod metrics;
pub mod request;
pub mod state;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gpt2c_runtime::batch::{BatchOptions, Interrupt};
use gpt2c_runtime::text::BackendChoice;
use gpt2c_runtime::{BackendKind, ExportedModel, ModelError};
use serde_json::json;
use tokio::sync::mpsc;

use completions::{CancelOnDrop, Event, Job, StreamedText};
use error::ApiError;
pub use state::ServeOptions;
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
    if !(o.request_timeout_s > 0.0 && o.request_timeout_s.is_finite()) {
        return Err(setting(
            "request-timeout-s",
            format!("({}) must be a positive number of seconds", o.request_timeout_s),
        ));
    }
    if o.max_body_bytes == 0 {
        return Err(setting("max-body-kib", "must be at least 1"));
    }
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

/// Runs the server until SIGTERM or Ctrl-C. `on_event` hears where it listens, then when the
/// model is loaded (what runs it), for the caller to print.
pub fn run(options: ServeOptions, on_event: impl Fn(&str) + Send + Sync + 'static) -> Result<(), ServeError> {
    let model = ExportedModel::open(&options.dir)?;
    model.check_generates()?;
    validate(&options, &model)?;
    let tokenizer = model.tokenizer()?;
    let name = options.model_name.clone().unwrap_or_else(|| {
        let dir = std::fs::canonicalize(&options.dir).unwrap_or_else(|_| options.dir.clone());
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("gpt2c").to_string()
    });
    let threads = options.max_batch_rows + options.max_queue + 16;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| ServeError::Server(format!("cannot start the async runtime: {e}")))?;
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let shared = Arc::new(Shared {
        options,
        model_name: name,
        loaded: Default::default(),
        metrics: Default::default(),
        queued: Default::default(),
        running: Default::default(),
        draining: AtomicBool::new(false),
        started,
    });
    let on_event = Arc::new(on_event);
    runtime.block_on(serve(shared, model, tokenizer, on_event))
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

    let app = Router::new()
        .route("/v1/completions", post(completions_route))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics_route))
        .fallback(not_found)
        .with_state(shared.clone());
    let failure: Arc<std::sync::Mutex<Option<String>>> = Default::default();
    let failure_in = failure.clone();
    let draining = shared.clone();
    let stop = async move {
        tokio::select! {
            () = signal() => {}
            Some(message) = failed_rx.recv() => {
                if let Ok(mut f) = failure_in.lock() {
                    *f = Some(message);
                }
            }
        }
        draining.draining.store(true, Ordering::SeqCst);
        // Requests in flight (and queued) finish; each is bounded by the request timeout.
        while draining.running.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .map_err(|e| ServeError::Server(format!("the HTTP server failed: {e}")))?;
    match failure.lock().ok().and_then(|mut f| f.take()) {
        Some(message) => Err(ServeError::Server(format!("cannot load the model: {message}"))),
        None => {
            on_event("stopped: every request finished");
            Ok(())
        }
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
        queued: shared.queued.load(Ordering::Relaxed),
        running: shared.running.load(Ordering::Relaxed),
        loaded: loaded.is_some(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], shared.metrics.render(&gauges))
        .into_response()
}

/// Counts a request as running until dropped.
struct Running(Arc<Shared>);

impl Running {
    fn new(shared: &Arc<Shared>) -> Running {
        shared.running.fetch_add(1, Ordering::SeqCst);
        Running(shared.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn completions_route(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let running = Running::new(&shared);
    match completion(shared.clone(), request, running).await {
        Ok(response) => response,
        Err(e) => {
            shared.metrics.count(e.outcome());
            e.into_response()
        }
    }
}

async fn completion(shared: Arc<Shared>, request: Request, running: Running) -> Result<Response, ApiError> {
    if shared.draining.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let loaded = shared.loaded.get().cloned().ok_or_else(|| ApiError::unavailable("the model is still loading"))?;
    if !loaded.batcher.is_running() {
        return Err(ApiError::internal("the scheduler has stopped; restart the server"));
    }
    let limit = shared.options.max_body_bytes;
    let body = axum::body::to_bytes(request.into_body(), limit).await.map_err(|_| ApiError::too_large(limit))?;
    let ctx = request::Context {
        model_name: &shared.model_name,
        defaults: &loaded.defaults,
        tokenizer: &loaded.tokenizer,
        limits: loaded.limits,
        max_rows: loaded.batcher.max_rows(),
    };
    let c = request::parse(&body, &ctx)?;
    let prompts = c.prompts.len();
    let before = shared.queued.fetch_add(prompts, Ordering::SeqCst);
    if before + prompts > shared.options.max_queue {
        shared.queued.fetch_sub(prompts, Ordering::SeqCst);
        return Err(ApiError::queue_full(shared.options.max_queue));
    }
    let prompt_tokens: usize = c.prompts.iter().map(|p| p.ids.len()).sum();
    shared.metrics.prompt_tokens.fetch_add(prompt_tokens as u64, Ordering::Relaxed);
    let cancel = Arc::new(AtomicBool::new(false));
    let timeout = Duration::try_from_secs_f64(shared.options.request_timeout_s).unwrap_or(Duration::MAX);
    let interrupt = Interrupt { cancelled: cancel.clone(), deadline: Instant::now().checked_add(timeout) };
    let job = Arc::new(Job::new(c, interrupt));
    let (tx, rx) = mpsc::unbounded_channel();
    for p in 0..prompts {
        let (shared, loaded, job, tx) = (shared.clone(), loaded.clone(), job.clone(), tx.clone());
        tokio::task::spawn_blocking(move || completions::run_prompt(shared, loaded, job, p, tx));
    }
    drop(tx);
    if job.completion.stream {
        let (sse_tx, sse_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
        tokio::spawn(stream(shared, loaded, job, rx, sse_tx, running, CancelOnDrop(cancel)));
        let body = Sse::new(tokio_stream::wrappers::ReceiverStream::new(sse_rx)).keep_alive(KeepAlive::default());
        return Ok(body.into_response());
    }
    let _cancel = CancelOnDrop(cancel);
    let mut rx = rx;
    let mut choices = Vec::new();
    let mut finished = 0;
    while finished < prompts {
        match rx.recv().await {
            Some(Event::Token { .. }) => {}
            Some(Event::Finished { result, .. }) => {
                finished += 1;
                choices.extend(result?);
            }
            None => return Err(ApiError::internal("a generation worker stopped without an answer")),
        }
    }
    shared.metrics.request_duration.observe(job.arrived.elapsed());
    shared.metrics.count("ok");
    let body = completions::response(&loaded, &shared.model_name, &job.completion, choices);
    drop(running);
    Ok(axum::Json(body).into_response())
}

fn chunk(id: &str, created: u64, model: &str, index: usize, text: &str, finish: Option<&str>) -> SseEvent {
    let body = json!({"id": id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": index, "text": text, "logprobs": null, "finish_reason": finish}]});
    SseEvent::default().data(body.to_string())
}

/// Turns a request's events into server-sent events; stops its workers when the client leaves.
async fn stream(
    shared: Arc<Shared>,
    loaded: Arc<Loaded>,
    job: Arc<Job>,
    mut rx: mpsc::UnboundedReceiver<Event>,
    out: mpsc::Sender<Result<SseEvent, Infallible>>,
    running: Running,
    _cancel: CancelOnDrop,
) {
    let c = &job.completion;
    let (id, created) = completions::stamp();
    let model = shared.model_name.as_str();
    let eos = c.config.eos();
    let choices = c.prompts.len() * c.n.max(1);
    let mut texts: Vec<StreamedText> = (0..choices).map(|_| StreamedText::default()).collect();
    let mut completion_tokens = 0;
    let send = |e: SseEvent| {
        let out = out.clone();
        async move { out.send(Ok(e)).await.is_ok() }
    };
    if c.echo {
        for i in 0..choices {
            let prompt = loaded.tokenizer.decode(&c.prompts[i / c.n.max(1)].ids).unwrap_or_default();
            if !send(chunk(&id, created, model, i, &prompt, None)).await {
                shared.metrics.count("cancelled");
                return;
            }
        }
    }
    let mut finished = 0;
    while finished < c.prompts.len() {
        let event = tokio::select! {
            e = rx.recv() => e,
            () = out.closed() => {
                shared.metrics.count("cancelled");
                return;
            }
        };
        let ok = match event {
            Some(Event::Token { choice, token }) => {
                match texts.get_mut(choice).and_then(|t| t.push(token, &loaded.tokenizer, &eos, &c.stop)) {
                    Some(piece) => send(chunk(&id, created, model, choice, &piece, None)).await,
                    None => true,
                }
            }
            Some(Event::Finished { result: Ok(done), .. }) => {
                finished += 1;
                let mut ok = true;
                for ch in done {
                    completion_tokens += ch.tokens.len();
                    let (text, cut) = completions::visible_text(&loaded.tokenizer, &ch.tokens, &eos, &c.stop);
                    let rest = texts.get_mut(ch.index).and_then(|t| t.finish(&text)).unwrap_or_default();
                    let reason = completions::finish_reason(ch.finish, cut);
                    ok &= send(chunk(&id, created, model, ch.index, &rest, Some(reason))).await;
                }
                ok
            }
            Some(Event::Finished { result: Err(e), .. }) => {
                shared.metrics.count(e.outcome());
                let _ = send(SseEvent::default().data(e.body().to_string())).await;
                let _ = send(SseEvent::default().data("[DONE]")).await;
                return;
            }
            None => {
                let e = ApiError::internal("a generation worker stopped without an answer");
                shared.metrics.count(e.outcome());
                let _ = send(SseEvent::default().data(e.body().to_string())).await;
                let _ = send(SseEvent::default().data("[DONE]")).await;
                return;
            }
        };
        if !ok {
            shared.metrics.count("cancelled");
            return;
        }
    }
    if c.include_usage {
        let prompt_tokens: usize = c.prompts.iter().map(|p| p.ids.len()).sum();
        let body = json!({"id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [], "usage": completions::usage(prompt_tokens, completion_tokens)});
        let _ = send(SseEvent::default().data(body.to_string())).await;
    }
    let _ = send(SseEvent::default().data("[DONE]")).await;
    shared.metrics.request_duration.observe(job.arrived.elapsed());
    shared.metrics.count("ok");
    drop(running);
}
