//! `POST /v1/completions`: the body read under its deadline, parsed and tokenized on the
//! blocking pool, each prompt admitted to the batch as rows free up (an async wait, no thread),
//! then run by [`crate::infer`]; tokens come back as events, assembled into one JSON response
//! or streamed as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::{Request, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use gpt2c_runtime::GenerateError;
use gpt2c_runtime::batch::Interrupt;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::guard::Caller;
use crate::infer::{self, Event, Job};
use crate::inflight::Entry;
use crate::queue::Tickets;
use crate::record::Record;
use crate::response::{self, Stamp, StreamedText};
use crate::state::{Loaded, Shared};
use crate::validation;

/// How often a prompt waiting for rows looks at its request's deadline and stop flag.
const ADMISSION_POLL: Duration = Duration::from_millis(25);

pub async fn route(
    State(shared): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Extension(record): Extension<Arc<Record>>,
    request: Request,
) -> Response {
    let entry = shared.in_flight.enter(shared.closing.load(Ordering::SeqCst));
    match completion(shared, caller, record.clone(), request, entry).await {
        Ok(response) => response,
        Err(e) => {
            record.finish(e.status.as_u16(), e.outcome());
            record.error(&e.message);
            e.into_response()
        }
    }
}

async fn completion(
    shared: Arc<Shared>,
    caller: Caller,
    record: Arc<Record>,
    request: Request,
    entry: Entry,
) -> Result<Response, ApiError> {
    if shared.draining.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let loaded = shared.loaded.get().cloned().ok_or_else(|| ApiError::unavailable("the model is still loading"))?;
    if !loaded.batcher.is_running() {
        return Err(ApiError::internal("the scheduler has stopped; restart the server"));
    }
    let limit = shared.options.max_body_bytes;
    let read = axum::body::to_bytes(request.into_body(), limit);
    let body = match tokio::time::timeout(shared.options.header_timeout(), read).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => return Err(ApiError::too_large(limit)),
        Err(_) => return Err(ApiError::body_timeout(shared.options.header_timeout_s)),
    };
    // Parsing and tokenizing a large body is CPU work: on the blocking pool, a few at a time.
    let completion = {
        let _slot = shared.parsers.acquire().await.map_err(|_| ApiError::unavailable("the server is shutting down"))?;
        let (shared, loaded) = (shared.clone(), loaded.clone());
        tokio::task::spawn_blocking(move || {
            let ctx = validation::Context {
                model_name: &shared.model_name,
                defaults: &loaded.defaults,
                tokenizer: &loaded.tokenizer,
                limits: loaded.limits,
                max_rows: loaded.batcher.max_rows(),
            };
            validation::parse(&body, &ctx)
        })
        .await
        .map_err(|_| ApiError::internal("the request could not be parsed"))??
    };
    record.model(&shared.model_name);
    let prompts = completion.prompts.len();
    let tickets = Arc::new(shared.queue.enter(prompts)?);
    let prompt_tokens = completion.prompt_tokens();
    record.prompt_tokens.store(prompt_tokens, Ordering::Relaxed);
    shared.metrics.prompt_tokens.fetch_add(prompt_tokens as u64, Ordering::Relaxed);
    let interrupt = Interrupt {
        cancelled: entry.cancel.clone(),
        deadline: Instant::now().checked_add(shared.options.request_timeout()),
    };
    let partition = caller.partition(completion.cache_salt.as_deref());
    let job = Arc::new(Job { completion, interrupt, partition, record: record.clone() });
    let (tx, rx) = mpsc::unbounded_channel();
    for p in 0..prompts {
        tokio::spawn(admit(shared.clone(), loaded.clone(), job.clone(), p, tickets.clone(), tx.clone()));
    }
    drop((tx, tickets));
    if job.completion.stream {
        let (sse_tx, sse_rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
        tokio::spawn(stream(shared, loaded, job, rx, sse_tx, entry));
        let body = Sse::new(tokio_stream::wrappers::ReceiverStream::new(sse_rx)).keep_alive(KeepAlive::default());
        return Ok(body.into_response());
    }
    let choices = collect(rx, prompts).await?;
    let body = response::completion(&loaded.tokenizer, &shared.model_name, &job.completion, choices);
    record.finish(200, "ok");
    drop(entry);
    Ok(axum::Json(body).into_response())
}

/// Every prompt's choices, or the first error.
async fn collect(mut rx: mpsc::UnboundedReceiver<Event>, prompts: usize) -> Result<Vec<infer::Choice>, ApiError> {
    let mut choices = Vec::new();
    let mut finished = 0;
    while finished < prompts {
        match rx.recv().await {
            Some(Event::Token { .. }) => {}
            Some(Event::Finished { result }) => {
                finished += 1;
                choices.extend(result?);
            }
            None => return Err(ApiError::internal("a generation worker stopped without an answer")),
        }
    }
    Ok(choices)
}

/// Waits, without a thread, for prompt `p`'s rows (first come, first served), then runs it on
/// the blocking pool. A request that ends, times out or is stopped stops waiting.
async fn admit(
    shared: Arc<Shared>,
    loaded: Arc<Loaded>,
    job: Arc<Job>,
    p: usize,
    tickets: Arc<Tickets>,
    tx: mpsc::UnboundedSender<Event>,
) {
    let rows = job.completion.rows_per_prompt();
    let permit = {
        let admission = tickets.admit(rows);
        tokio::pin!(admission);
        let mut poll = tokio::time::interval(ADMISSION_POLL);
        loop {
            tokio::select! {
                permit = &mut admission => break permit,
                () = tx.closed() => return,
                _ = poll.tick() => {
                    if let Err(e) = job.interrupt.check() {
                        let e = infer::api_error(&GenerateError::Runtime(e), &shared);
                        let _ = tx.send(Event::Finished { result: Err(e) });
                        return;
                    }
                }
            }
        }
    };
    drop(tickets);
    let permit = match permit {
        Ok(permit) => permit,
        Err(e) => {
            let _ = tx.send(Event::Finished { result: Err(e) });
            return;
        }
    };
    job.record.admitted(job.record.arrived.elapsed());
    tokio::task::spawn_blocking(move || infer::run_prompt(loaded, shared, job, p, permit, tx));
}

/// Turns a request's events into server-sent events. A client that leaves (or stops reading
/// for --write-timeout-s, which closes its connection) drops the receiver: its rows stop.
async fn stream(
    shared: Arc<Shared>,
    loaded: Arc<Loaded>,
    job: Arc<Job>,
    mut rx: mpsc::UnboundedReceiver<Event>,
    out: mpsc::Sender<Result<SseEvent, Infallible>>,
    entry: Entry,
) {
    let c = &job.completion;
    let record = &job.record;
    record.status(200);
    let stamp = Stamp::now();
    let model = shared.model_name.as_str();
    let eos = c.config.eos();
    let choices = c.prompts.len() * c.n.max(1);
    let mut texts: Vec<StreamedText<'_>> = (0..choices).map(|_| StreamedText::new(&loaded.tokenizer)).collect();
    let mut completion_tokens = 0;
    let send = |e: SseEvent| {
        let out = out.clone();
        async move { out.send(Ok(e)).await.is_ok() }
    };
    let left = || record.finish(200, "cancelled");
    if c.echo {
        for i in 0..choices {
            if !send(response::chunk(&stamp, model, i, &response::prompt_text(&loaded.tokenizer, c, i), None)).await {
                return left();
            }
        }
    }
    let mut finished = 0;
    while finished < c.prompts.len() {
        let event = tokio::select! {
            e = rx.recv() => e,
            () = out.closed() => return left(),
        };
        let ok = match event {
            Some(Event::Token { choice, token }) => {
                match texts.get_mut(choice).and_then(|t| t.push(token, &eos, &c.stop)) {
                    Some(piece) => send(response::chunk(&stamp, model, choice, &piece, None)).await,
                    None => true,
                }
            }
            Some(Event::Finished { result: Ok(done) }) => {
                finished += 1;
                let mut ok = true;
                for ch in done {
                    completion_tokens += ch.tokens.len();
                    let (text, cut) = response::visible_text(&loaded.tokenizer, &ch.tokens, &eos, &c.stop);
                    let rest = texts.get_mut(ch.index).and_then(|t| t.finish(&text)).unwrap_or_default();
                    let reason = response::finish_reason(ch.finish, cut);
                    ok &= send(response::chunk(&stamp, model, ch.index, &rest, Some(reason))).await;
                }
                ok
            }
            Some(Event::Finished { result: Err(e) }) => return fail(&e, record, &send).await,
            None => {
                let e = ApiError::internal("a generation worker stopped without an answer");
                return fail(&e, record, &send).await;
            }
        };
        if !ok {
            return left();
        }
    }
    if c.include_usage {
        let _ = send(response::usage_chunk(&stamp, model, c.prompt_tokens(), completion_tokens)).await;
    }
    record.finish(200, "ok");
    let _ = send(response::done_event()).await;
    drop(entry);
}

/// Ends a stream with an error event, then `[DONE]`.
async fn fail<F, Fut>(e: &ApiError, record: &Record, send: &F)
where
    F: Fn(SseEvent) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    record.finish(e.status.as_u16(), e.outcome());
    record.error(&e.message);
    if send(response::error_event(e)).await {
        let _ = send(response::done_event()).await;
    }
}
