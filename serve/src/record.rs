//! What one request did, written as one log line and counted under one outcome when the last
//! part of the server holding it lets go: the handler for a plain response, the stream for a
//! streamed one. A request whose client left before its answer is counted as `cancelled`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// The request's id (`x-request-id`), shared by its log line, its response header and its record.
#[derive(Clone, Debug)]
pub struct RequestId(pub Arc<str>);

#[derive(Default)]
struct Outcome {
    status: Option<u16>,
    outcome: Option<&'static str>,
    model: Option<String>,
    queue: Option<Duration>,
    first_token: Option<Duration>,
    /// Why it failed, for the log.
    error: Option<String>,
}

pub struct Record {
    metrics: Arc<Metrics>,
    pub id: RequestId,
    method: String,
    path: String,
    /// Whether it counts under `gpt2c_requests_total` (a completion request).
    pub counted: bool,
    /// Probes and scrapes (`/health`, `/metrics`) are logged at debug level.
    quiet: bool,
    pub arrived: Instant,
    pub prompt_tokens: AtomicUsize,
    pub generated_tokens: AtomicUsize,
    /// The most rows of any decode step the request took part in (its own included).
    pub peak_rows: Arc<AtomicUsize>,
    first_token_nanos: AtomicU64,
    inner: Mutex<Outcome>,
}

/// The status a request whose client left is logged with (nginx's "client closed request").
const CLIENT_LEFT: u16 = 499;

impl Record {
    pub fn new(metrics: Arc<Metrics>, id: RequestId, method: &str, path: &str, counted: bool, quiet: bool) -> Record {
        Record {
            metrics,
            id,
            method: method.to_string(),
            path: path.chars().take(256).collect(),
            counted,
            quiet,
            arrived: Instant::now(),
            prompt_tokens: AtomicUsize::new(0),
            generated_tokens: AtomicUsize::new(0),
            peak_rows: Arc::default(),
            first_token_nanos: AtomicU64::new(0),
            inner: Mutex::default(),
        }
    }

    fn with(&self, f: impl FnOnce(&mut Outcome)) {
        if let Ok(mut o) = self.inner.lock() {
            f(&mut o);
        }
    }

    /// The request ended with `status` under `outcome` (the first call wins), counted now: before
    /// its client has the answer in hand.
    pub fn finish(&self, status: u16, outcome: &'static str) {
        let mut first = false;
        self.with(|o| {
            if o.outcome.is_none() {
                o.status = Some(status);
                o.outcome = Some(outcome);
                first = true;
            }
        });
        if first {
            self.count(outcome);
        }
    }

    fn count(&self, outcome: &str) {
        if self.counted {
            self.metrics.count(outcome);
            if outcome == "ok" {
                self.metrics.request_duration.observe(self.arrived.elapsed());
            }
        }
    }

    /// The response's status, before the request has ended (a stream's 200).
    pub fn status(&self, status: u16) {
        self.with(|o| o.status = o.status.or(Some(status)));
    }

    pub fn error(&self, message: &str) {
        self.with(|o| o.error = Some(message.chars().take(300).collect()));
    }

    pub fn model(&self, model: &str) {
        self.with(|o| o.model = Some(model.chars().take(128).collect()));
    }

    /// A prompt was admitted to the batch after `waited`; the request's queue time is its first.
    pub fn admitted(&self, waited: Duration) {
        self.metrics.queue_time.observe(waited);
        self.with(|o| o.queue = o.queue.or(Some(waited)));
    }

    /// A token was chosen; the first one sets the time to first token. True for the first.
    pub fn token(&self) -> bool {
        let since = u64::try_from(self.arrived.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1);
        let first = self.first_token_nanos.compare_exchange(0, since, Ordering::Relaxed, Ordering::Relaxed).is_ok();
        if first {
            self.metrics.time_to_first_token.observe(Duration::from_nanos(since));
            self.with(|o| o.first_token = Some(Duration::from_nanos(since)));
        }
        first
    }
}

fn millis(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 1e4).round() / 10.0)
}

impl Drop for Record {
    fn drop(&mut self) {
        let o = self.inner.get_mut().map(std::mem::take).unwrap_or_default();
        let outcome = o.outcome.unwrap_or("cancelled");
        let status = if o.outcome.is_some() { o.status.unwrap_or(200) } else { CLIENT_LEFT };
        let total = self.arrived.elapsed();
        if o.outcome.is_none() {
            // Nobody finished it: its client left first.
            self.count(outcome);
        }
        let peak = self.peak_rows.load(Ordering::Relaxed);
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    target: "gpt2c::request",
                    $level,
                    request_id = %self.id.0,
                    method = %self.method,
                    path = %self.path,
                    status,
                    outcome,
                    model = o.model.as_deref(),
                    prompt_tokens = self.prompt_tokens.load(Ordering::Relaxed),
                    generated_tokens = self.generated_tokens.load(Ordering::Relaxed),
                    queue_ms = millis(o.queue),
                    first_token_ms = millis(o.first_token),
                    total_ms = millis(Some(total)),
                    batch_rows_peak = (peak > 0).then_some(peak),
                    error = o.error.as_deref(),
                    "request"
                )
            };
        }
        if self.quiet {
            line!(tracing::Level::DEBUG);
        } else {
            line!(tracing::Level::INFO);
        }
    }
}
