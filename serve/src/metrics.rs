//! `GET /metrics`: Prometheus' text format, every name under `gpt2c_`.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gpt2c_runtime::batch::Stats;

/// A latency histogram with fixed buckets (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self.bounds.iter().position(|&b| s <= b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Outcomes a request is counted under.
pub const OUTCOMES: &[&str] =
    &["ok", "invalid", "unauthorized", "rejected", "unavailable", "timeout", "cancelled", "error"];

/// The server's counters.
pub struct Metrics {
    requests: Mutex<Vec<u64>>,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub request_duration: Histogram,
    /// From a prompt's arrival to its admission to the batch.
    pub queue_time: Histogram,
    /// Connections refused past --max-connections.
    pub connections_refused: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(vec![0; OUTCOMES.len()]),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            time_to_first_token: Histogram::new(LATENCY_BUCKETS),
            inter_token_latency: Histogram::new(LATENCY_BUCKETS),
            request_duration: Histogram::new(LATENCY_BUCKETS),
            queue_time: Histogram::new(LATENCY_BUCKETS),
            connections_refused: AtomicU64::new(0),
        }
    }
}

/// Gauges read when metrics are rendered.
pub struct Gauges<'a> {
    pub stats: Option<&'a Stats>,
    pub queued: usize,
    pub running: usize,
    pub loaded: bool,
    pub connections: usize,
}

impl Metrics {
    pub fn count(&self, outcome: &str) {
        let i = OUTCOMES.iter().position(|&o| o == outcome).unwrap_or(OUTCOMES.len() - 1);
        if let Ok(mut r) = self.requests.lock() {
            r[i] += 1;
        }
    }

    pub fn render(&self, g: &Gauges<'_>) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        metric(
            "gpt2c_model_loaded",
            "gauge",
            "1 once the model is loaded and requests are served.",
            (g.loaded as u8).to_string(),
        );
        metric(
            "gpt2c_prompt_tokens_total",
            "counter",
            "Prompt tokens of accepted requests.",
            self.prompt_tokens.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "gpt2c_generated_tokens_total",
            "counter",
            "Tokens generated (every choice).",
            self.generated_tokens.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "gpt2c_queue_depth",
            "gauge",
            "Prompts accepted and waiting for rows in the batch.",
            g.queued.to_string(),
        );
        metric("gpt2c_requests_running", "gauge", "Requests being served.", g.running.to_string());
        metric("gpt2c_connections_open", "gauge", "Open HTTP connections.", g.connections.to_string());
        metric(
            "gpt2c_connections_refused_total",
            "counter",
            "Connections refused past --max-connections.",
            self.connections_refused.load(Ordering::Relaxed).to_string(),
        );
        type Read = fn(&Stats) -> u64;
        let scheduler: [(&str, &str, &str, Read); 7] = [
            ("gpt2c_batch_rows", "gauge", "Rows in the running decode batch.", |s| {
                s.batch_rows.load(Ordering::Relaxed) as u64
            }),
            ("gpt2c_decode_steps_total", "counter", "Batched decode steps run.", |s| {
                s.decode_steps.load(Ordering::Relaxed)
            }),
            ("gpt2c_prefill_chunks_total", "counter", "Prefill passes run (a long prompt takes several).", |s| {
                s.prefill_chunks.load(Ordering::Relaxed)
            }),
            ("gpt2c_prefix_cache_hits_total", "counter", "Prompts that reused cached prefix keys and values.", |s| {
                s.prefix_hits.load(Ordering::Relaxed)
            }),
            ("gpt2c_prefix_cache_misses_total", "counter", "Prompts that found no cached prefix.", |s| {
                s.prefix_misses.load(Ordering::Relaxed)
            }),
            (
                "gpt2c_prefix_cache_reused_tokens_total",
                "counter",
                "Prompt positions taken from the prefix cache.",
                |s| s.prefix_tokens_reused.load(Ordering::Relaxed),
            ),
            ("gpt2c_prefix_cache_bytes", "gauge", "Bytes of keys and values the prefix cache holds.", |s| {
                s.prefix_bytes.load(Ordering::Relaxed)
            }),
        ];
        for (name, kind, help, read) in scheduler {
            metric(name, kind, help, g.stats.map_or(0, read).to_string());
        }
        let _ = writeln!(
            out,
            "# HELP gpt2c_requests_total Completion requests by outcome.\n# TYPE gpt2c_requests_total counter"
        );
        if let Ok(r) = self.requests.lock() {
            for (o, n) in OUTCOMES.iter().zip(r.iter()) {
                let _ = writeln!(out, "gpt2c_requests_total{{outcome=\"{o}\"}} {n}");
            }
        }
        self.time_to_first_token.render(
            &mut out,
            "gpt2c_time_to_first_token_seconds",
            "From a request's arrival to its first generated token.",
        );
        self.inter_token_latency.render(
            &mut out,
            "gpt2c_inter_token_latency_seconds",
            "Between consecutive tokens of one choice.",
        );
        self.request_duration.render(&mut out, "gpt2c_request_duration_seconds", "From arrival to the last token.");
        self.queue_time.render(
            &mut out,
            "gpt2c_queue_time_seconds",
            "From a request's arrival to its prompt's admission to the batch.",
        );
        out
    }
}
