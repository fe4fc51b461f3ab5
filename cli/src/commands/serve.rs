//! `gpt2c serve`: an OpenAI-compatible completion server over one export folder.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use gpt2c_runtime::backend::LogitsScope;
use gpt2c_serve::ServeOptions;

use super::run_args::RunArgs;

/// Serve an export folder over HTTP with OpenAI's completions API, on ONNX Runtime or tract.
///
/// Endpoints: POST /v1/completions (OpenAI's fields — model, prompt, max_tokens, temperature,
/// top_p, n, stop, seed, logprobs, echo, stream, stream_options, logit_bias — plus every
/// transformers generation option under its own name: top_k, repetition_penalty, num_beams, ...);
/// GET /v1/models; GET /health (200 once the model is loaded, 503 while loading or draining);
/// GET /metrics (Prometheus, names under gpt2c_).
///
/// Every decode step runs the rows of every request in flight together (continuous batching):
/// requests join as soon as their prompt is prefilled, in chunks of --prefill-chunk tokens
/// between decode steps, and leave when they finish. Each request keeps its own settings, and its
/// tokens are those it would get alone (`gpt2c generate` with the same settings). Prompts sharing
/// their first tokens with an earlier one reuse its cached keys and values (--prefix-cache-mib).
/// Defaults come from the folder's generation_config.json; without a length there, max_tokens is
/// 16 as in OpenAI's API.
///
/// The server is stateless apart from its caches: run replicas behind any load balancer, with
/// /health as the readiness probe. SIGTERM (or Ctrl-C) stops accepting (503), finishes the
/// requests in flight and queued, then exits 0.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  \
    gpt2c serve out/gpt2 --port 8000\n  \
    curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\\n    \
    -d '{\"model\": \"gpt2\", \"prompt\": \"Hello, my name is\", \"max_tokens\": 20}'")]
pub struct ServeArgs {
    /// Export folder written by `gpt2c export` (model.onnx, config.json, tokenizer.json, ...).
    pub model: PathBuf,

    /// Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,

    #[command(flatten)]
    pub run: RunArgs,

    /// The name clients give as `model` (default: the export folder's name).
    #[arg(long)]
    pub model_name: Option<String>,

    /// Rows the running batch holds at most (a request holds n rows, or num_beams with beam search).
    #[arg(long, default_value_t = 32)]
    pub max_batch_rows: usize,

    /// Prompts that may wait for rows; past that, requests get 429 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,

    /// Memory for cached prompt prefixes' keys and values, in MiB (0 turns the prefix cache off).
    #[arg(long, default_value_t = 256)]
    pub prefix_cache_mib: u64,

    /// Prompt tokens one prefill pass computes before the running rows take their next step.
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,

    /// Seconds a request may take, waiting included; a stream that runs out ends with an error event.
    #[arg(long, default_value_t = 120.0)]
    pub request_timeout_s: f64,

    /// Largest request body, in KiB (larger ones get 413).
    #[arg(long, default_value_t = 1024)]
    pub max_body_kib: usize,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let options = ServeOptions {
        dir: args.model,
        host: args.host,
        port: args.port,
        backend: args.run.choice(),
        runner: args.run.options(LogitsScope::Last, None)?,
        model_name: args.model_name,
        max_batch_rows: args.max_batch_rows,
        max_queue: args.max_queue,
        prefix_cache_mib: args.prefix_cache_mib,
        prefill_chunk: args.prefill_chunk,
        request_timeout_s: args.request_timeout_s,
        max_body_bytes: args.max_body_kib.saturating_mul(1024),
    };
    gpt2c_serve::run(options, |line| {
        // Tests and scripts read the address from the first line.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "gpt2c serve: {line}");
        let _ = out.flush();
    })?;
    Ok(())
}
