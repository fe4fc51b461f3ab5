//! `gpt2c serve`: an OpenAI-compatible completion server over one export folder.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use gpt2c_runtime::backend::LogitsScope;
use gpt2c_serve::{Access, ServeOptions};

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
/// /health as the readiness probe. SIGTERM (or Ctrl-C) answers new requests with 503, gives the
/// requests in flight --shutdown-grace-s to finish, ends the rest with an error, and exits 0
/// within a second of the grace period's end, whatever the clients do.
///
/// Security: with --api-key (or --api-key-file, or GPT2C_API_KEY) every route but /health asks
/// for `Authorization: Bearer KEY` (401 otherwise; /metrics too unless --metrics-public). A
/// non-loopback --host without a key is refused unless --allow-unauthenticated says so. POST
/// bodies must be `Content-Type: application/json` (415), so a web page cannot post to the
/// server as a form; CORS is off unless --cors-allow-origin; on a loopback address only
/// loopback `Host` names are answered (403 otherwise: DNS rebinding), see --allowed-host. Cached
/// prompt prefixes are shared only between requests of the same key (and `cache_salt`).
///
/// Every request is logged once, when it ends, on stderr (--log-format; RUST_LOG filters, e.g.
/// RUST_LOG=gpt2c=debug also logs probes and scrapes), with its x-request-id.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  \
    gpt2c serve out/gpt2 --port 8000\n  \
    curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\\n    \
    -d '{\"model\": \"gpt2\", \"prompt\": \"Hello, my name is\", \"max_tokens\": 20}'")]
pub struct ServeArgs {
    /// Export folder written by `gpt2c export` (model.onnx, config.json, tokenizer.json, ...).
    pub model: PathBuf,

    /// Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface, which
    /// needs --api-key or --allow-unauthenticated).
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

    /// Largest request body, in KiB (larger ones get 413, before any of the body is read when
    /// Content-Length announces it).
    #[arg(long, default_value_t = 1024)]
    pub max_body_kib: usize,

    /// Seconds a client has to send a request's headers, and then again its body (408); also how
    /// long an idle keep-alive connection stays open.
    #[arg(long, default_value_t = 10.0, allow_negative_numbers = true)]
    pub header_timeout_s: f64,

    /// Seconds a response may make no progress on the socket (a client that stopped reading a
    /// stream) before the request is cancelled, its rows freed and the connection closed.
    #[arg(long, default_value_t = 30.0, allow_negative_numbers = true)]
    pub write_timeout_s: f64,

    /// Open connections at most; past that, new ones get 503 and are closed at once.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,

    /// Seconds requests in flight get to finish after SIGTERM before they end with an error
    /// (default: --request-timeout-s).
    #[arg(long, allow_negative_numbers = true)]
    pub shutdown_grace_s: Option<f64>,

    /// An API key clients must give as `Authorization: Bearer KEY` (repeatable).
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_keys: Vec<String>,

    /// A file of API keys, one a line (blank lines and lines starting with # are skipped).
    /// GPT2C_API_KEY adds one more.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Serve /metrics without a key.
    #[arg(long)]
    pub metrics_public: bool,

    /// Listen on a non-loopback --host without an API key: anyone who reaches it may use it.
    #[arg(long)]
    pub allow_unauthenticated: bool,

    /// An origin whose web pages may call the server (repeatable; `*` for any). Without it,
    /// CORS is off and browsers keep other origins' pages out.
    #[arg(long = "cors-allow-origin", value_name = "ORIGIN")]
    pub cors_allow_origins: Vec<String>,

    /// A `Host` name the server answers to (repeatable; any port); others get 403. Default: the
    /// loopback names (localhost, 127.0.0.1, ::1) on a loopback --host, any name otherwise.
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,

    /// The request log's format on stderr: text or json (one object a line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The keys of --api-key, --api-key-file and GPT2C_API_KEY.
fn api_keys(args: &ServeArgs) -> anyhow::Result<Vec<String>> {
    let mut keys = args.api_keys.clone();
    if let Some(path) = &args.api_key_file {
        let meta = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("--api-key-file {}: {e}", path.display()))?;
        anyhow::ensure!(
            meta.is_file() && meta.len() <= 1 << 20,
            "--api-key-file {}: expected a text file of at most 1 MiB, one key a line",
            path.display()
        );
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("--api-key-file {}: {e} (expected UTF-8 text, one key a line)", path.display())
        })?;
        keys.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string));
        anyhow::ensure!(keys.len() > args.api_keys.len(), "--api-key-file {}: holds no key", path.display());
    }
    if let Ok(key) = std::env::var("GPT2C_API_KEY") {
        let key = key.trim();
        anyhow::ensure!(!key.is_empty(), "GPT2C_API_KEY is set but empty");
        keys.push(key.to_string());
    }
    Ok(keys)
}

/// The request log on stderr: one line per request, filtered by RUST_LOG (default: info).
fn init_log(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let access = Access {
        api_keys: api_keys(&args)?,
        metrics_public: args.metrics_public,
        cors_allow_origins: args.cors_allow_origins.clone(),
        allowed_hosts: args.allowed_hosts.clone(),
    };
    init_log(args.log_format);
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
        header_timeout_s: args.header_timeout_s,
        write_timeout_s: args.write_timeout_s,
        max_connections: args.max_connections,
        shutdown_grace_s: args.shutdown_grace_s,
        access,
        allow_unauthenticated: args.allow_unauthenticated,
    };
    gpt2c_serve::run(options, |line| {
        // Tests and scripts read the address from the first line.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "gpt2c serve: {line}");
        let _ = out.flush();
    })?;
    Ok(())
}
