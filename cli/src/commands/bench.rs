//! `gpt2c bench`: prefill and decode speed of an export folder.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use gpt2c_runtime::ExportedModel;
use gpt2c_runtime::backend::LogitsScope;
use gpt2c_runtime::generate::{Assistant, GenerationConfig, generate, generate_assisted};
use gpt2c_runtime::session::Observed;
use serde_json::json;

use super::run_args::RunArgs;

/// Measure prefill time and decode speed of an export folder.
///
/// Runs greedy decoding (or beam search with --num-beams) over a fixed prompt for a fixed number
/// of new tokens (EOS cannot end it early), --repeat times after --warmup runs, and reports the
/// median run: prefill ms (prompt forward to the first new token), decode tokens/s per sequence
/// and for the whole batch, per-token latency percentiles and the process's peak memory.
/// Prefill and decode are timed through the full generation driver, as a user sees them.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Export folder written by `gpt2c export`.
    pub model: PathBuf,
    #[command(flatten)]
    pub run: RunArgs,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Beams per prompt (1 = greedy).
    #[arg(long, default_value_t = 1)]
    pub num_beams: usize,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// New tokens per sequence.
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Measured runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Unmeasured runs first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// A JSON array of prompt token ids to use instead of the built-in pseudo-random prompt.
    #[arg(long)]
    pub prompt_ids: Option<PathBuf>,
    /// Compute logits for every prompt position, as the export's contract does (generation normally
    /// specializes the graph to the last position).
    #[arg(long)]
    pub all_logits: bool,
    /// Prompt lookup decoding with up to N drafted tokens per pass (greedy, --batch 1): decode speed
    /// then depends on how much the output repeats the prompt (give one with --prompt-ids).
    #[arg(long, value_name = "N")]
    pub prompt_lookup_num_tokens: Option<usize>,
    /// Assisted generation: a smaller export with the same tokenizer drafts --num-assistant-tokens
    /// tokens per pass (greedy, --batch 1).
    #[arg(long, value_name = "DIR")]
    pub assistant_model: Option<PathBuf>,
    /// Assisted generation: tokens the assistant drafts per pass (default 20).
    #[arg(long, value_name = "N")]
    pub num_assistant_tokens: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Warm-up and measured runs together.
const MAX_RUNS: usize = 1000;

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A deterministic pseudo-random prompt (an LCG; the content does not matter for speed).
fn builtin_prompt(len: usize, vocab: usize) -> Vec<u32> {
    let mut x: u64 = 1234;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) % (vocab as u64).saturating_sub(1).max(1)) as u32
        })
        .collect()
}

/// The `p` quantile of sorted values (`None` for none: a report never says NaN).
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let i = (last as f64 * p).round() as usize;
    sorted.get(i.min(last)).copied()
}

struct Run {
    prefill_ms: f64,
    decode_seconds: f64,
    latencies_ms: Vec<f64>,
    first_tokens: Vec<u32>,
    /// Forward passes of the model (fewer than tokens when speculative decoding kept drafts).
    passes: usize,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.num_beams == 0 || args.repeat == 0 || args.new_tokens < 2 || args.prompt_tokens == 0 {
        bail!("--batch, --num-beams, --repeat and --prompt-tokens must be at least 1, --new-tokens at least 2");
    }
    // Runs are counted before anything is loaded: a count in the billions is a typo, not a benchmark.
    if args.repeat.saturating_add(args.warmup) > MAX_RUNS {
        bail!("--repeat + --warmup is {}; at most {MAX_RUNS} runs", args.repeat.saturating_add(args.warmup));
    }

    let all = args.all_logits || args.prompt_lookup_num_tokens.is_some() || args.assistant_model.is_some();
    let logits = if all { LogitsScope::All } else { LogitsScope::Last };
    let options = args.run.options(logits, Some(2))?;
    let model = ExportedModel::open(&args.model)?;
    let vocab = model.config.vocab_size;
    let prompt = match &args.prompt_ids {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
            serde_json::from_str::<Vec<u32>>(&text)
                .with_context(|| format!("{}: expected a JSON array of token ids", path.display()))?
        }
        None if args.prompt_tokens > model.config.n_positions => bail!(
            "--prompt-tokens ({}) is more than the model's context of {} positions (n_positions)",
            args.prompt_tokens,
            model.config.n_positions
        ),
        None => builtin_prompt(args.prompt_tokens, vocab),
    };
    let prompts = vec![prompt.clone(); args.batch];
    let overrides = json!({
        "max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "num_beams": args.num_beams,
        "do_sample": false, "early_stopping": true, "prompt_lookup_num_tokens": args.prompt_lookup_num_tokens,
        "num_assistant_tokens": args.num_assistant_tokens,
    });
    let config =
        GenerationConfig::from_json(&model.generation_json, overrides.as_object().unwrap_or(&Default::default()))?;
    let limits = model.config.limits();
    gpt2c_runtime::generate::check(limits, &prompts, &config, None)?;

    let backend = args.run.kind();
    let t_load = Instant::now();
    let loaded = model.session_with_report(backend, &options)?;
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let mut session = loaded.session;

    // Beam search streams no tokens, so its prefill is timed by runs that stop after the first token,
    // and its decode is the rest of a full run.
    let beam_prefill_s = if args.num_beams > 1 {
        let mut one = overrides.clone();
        one["max_new_tokens"] = json!(1);
        one["min_new_tokens"] = json!(1);
        let first_only =
            GenerationConfig::from_json(&model.generation_json, one.as_object().unwrap_or(&Default::default()))?;
        let mut times = Vec::new();
        for _ in 0..args.warmup + args.repeat {
            let start = Instant::now();
            generate(session.as_mut(), limits, &prompts, &first_only, None, &mut |_, _| {})?;
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        percentile(&times, 0.5)
    } else {
        None
    };
    // The assistant runs on the same backend and reads its last position only.
    let mut assistant = match &args.assistant_model {
        Some(dir) => {
            let model = ExportedModel::open(dir).with_context(|| format!("--assistant-model {}", dir.display()))?;
            let session = model.session(backend, &args.run.options(LogitsScope::Last, Some(2))?.for_assistant())?;
            Some((session, model.config.limits()))
        }
        None => None,
    };
    let mut runs = Vec::new();
    for i in 0..args.warmup + args.repeat {
        let mut stamps: Vec<Instant> = Vec::new();
        // When each forward pass returns: beam search chooses no token through the callback until
        // it ends, so per-step latency is timed on the session.
        let mut returns: Vec<Instant> = Vec::new();
        let mut timed = Observed { inner: session.as_mut(), on_forward: &mut |_| returns.push(Instant::now()) };
        let start = Instant::now();
        let mut on_token = |row: usize, _| {
            if row == 0 {
                stamps.push(Instant::now());
            }
        };
        let out = match assistant.as_mut() {
            Some((session, limits_a)) => {
                let helper = Assistant { session: session.as_mut(), limits: *limits_a };
                generate_assisted(&mut timed, helper, limits, &prompts, &config, None, &mut on_token)?
            }
            None => generate(&mut timed, limits, &prompts, &config, None, &mut on_token)?,
        };
        let passes = returns.len();
        let end = Instant::now();
        let first = stamps.first().copied().unwrap_or(end);
        // One latency per decode step: between consecutive forward passes' returns.
        let mut latencies: Vec<f64> = returns.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1e3).collect();
        latencies.sort_by(f64::total_cmp);
        let (prefill, decode) = if let Some(prefill) = beam_prefill_s {
            (prefill, ((end - start).as_secs_f64() - prefill).max(f64::MIN_POSITIVE))
        } else {
            ((first - start).as_secs_f64(), (end - first).as_secs_f64())
        };
        if i >= args.warmup {
            let first_tokens =
                out.results.first().map(|r| r.tokens.iter().take(16).copied().collect()).unwrap_or_default();
            runs.push(Run {
                prefill_ms: prefill * 1e3,
                decode_seconds: decode,
                latencies_ms: latencies,
                first_tokens,
                passes,
            });
        }
    }
    runs.sort_by(|a, b| a.decode_seconds.total_cmp(&b.decode_seconds));
    let Some(median) = runs.get(runs.len() / 2) else { bail!("no measured run") };
    let mut prefills: Vec<f64> = runs.iter().map(|r| r.prefill_ms).collect();
    prefills.sort_by(f64::total_cmp);
    let steps = (args.new_tokens - 1) as f64;
    let per_sequence = steps / median.decode_seconds;
    let report = json!({
        "backend": loaded.description,
        "threads": options.threads,
        "batch": args.batch,
        "num_beams": args.num_beams,
        "prompt_tokens": prompt.len(),
        "new_tokens": args.new_tokens,
        "load_ms": (load_ms * 10.0).round() / 10.0,
        "prefill_ms": percentile(&prefills, 0.5).map(|p| (p * 10.0).round() / 10.0),
        "decode_tok_s": (per_sequence * 100.0).round() / 100.0,
        "decode_tok_s_batch": (per_sequence * args.batch as f64 * 100.0).round() / 100.0,
        "token_ms_p50": percentile(&median.latencies_ms, 0.5),
        "token_ms_p90": percentile(&median.latencies_ms, 0.9),
        "token_ms_p99": percentile(&median.latencies_ms, 0.99),
        "peak_rss_mib": peak_rss_mib().map(|m| m.round()),
        "tokens": median.first_tokens,
        "forward_passes": median.passes,
    });
    let mut out = crate::output::stdout();
    if args.json {
        writeln!(out, "{report}")?;
    } else {
        let ms = |key: &str| report[key].as_f64().map_or("n/a".to_string(), |v| format!("{v:.2} ms"));
        writeln!(
            out,
            "{}: prefill {}, decode {:.2} tokens/s per sequence ({:.2} for the batch of {}), step p50 {} p90 {}, peak {} MiB",
            report["backend"].as_str().unwrap_or(""),
            report["prefill_ms"].as_f64().map_or("n/a".to_string(), |v| format!("{v:.1} ms")),
            per_sequence,
            per_sequence * args.batch as f64,
            args.batch,
            ms("token_ms_p50"),
            ms("token_ms_p90"),
            report["peak_rss_mib"],
        )?;
    }
    Ok(())
}
