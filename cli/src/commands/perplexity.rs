//! `gpt2c perplexity`: sliding-window perplexity of a text file.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use gpt2c_runtime::ExportedModel;
use gpt2c_runtime::backend::LogitsScope;
use gpt2c_runtime::perplexity::perplexity;
use gpt2c_runtime::text::TextGenerator;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::run_args::RunArgs;

/// Perplexity of an export on a text file, with sliding windows.
///
/// Tokenizes the file with the export's tokenizer and scores it in windows of --max-length tokens
/// that start every --stride tokens, as transformers' documentation ("Perplexity of fixed-length
/// models") does: each window counts only its tokens that no earlier window counted, so every
/// token is predicted once, with up to max_length - stride tokens of context. Use it to measure
/// what a quantization or fp16 export costs: run it on the fp32 export and on the other one.
#[derive(Debug, Args)]
pub struct PerplexityArgs {
    /// Export folder written by `gpt2c export`.
    pub model: PathBuf,
    /// The text to score (UTF-8).
    #[arg(long)]
    pub text: PathBuf,
    /// Tokens per window (default: the model's context, n_positions).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Tokens between window starts (default: half of max_length).
    #[arg(long)]
    pub stride: Option<usize>,
    /// Score only the first N tokens of the text.
    #[arg(long)]
    pub limit_tokens: Option<usize>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// No progress bar or notes.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: PerplexityArgs) -> anyhow::Result<()> {
    let choice = args.run.choice();
    let options = args.run.options(LogitsScope::All, None)?;
    let text = crate::output::read_text(&args.text, "text", 1 << 30)?;
    let model = ExportedModel::open(&args.model)?;
    let tokenizer = model.tokenizer()?;
    let mut ids = tokenizer.encode(&text).map_err(anyhow::Error::msg)?;
    if let Some(n) = args.limit_tokens {
        ids.truncate(n);
    }
    let n_positions = model.config.n_positions;
    let max_length = args.max_length.unwrap_or(n_positions);
    let stride = args.stride.unwrap_or((max_length / 2).max(1));
    let mut g = TextGenerator::from_parts(model, tokenizer, choice, &options)?;
    if !args.quiet {
        for n in &g.notices {
            crate::output::note(n);
        }
    }
    let bar = if args.quiet || args.json { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("scoring [{bar:30}] {pos}/{len} windows")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let result = perplexity(g.session_mut()?, &ids, max_length, stride, n_positions, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let mut out = crate::output::stdout();
    if args.json {
        writeln!(
            out,
            "{}",
            json!({
                "perplexity": result.perplexity, "mean_nll": result.mean_nll, "predicted_tokens": result.predicted,
                "text_tokens": ids.len(), "windows": result.windows, "max_length": result.max_length,
                "stride": result.stride, "backend": g.description, "seconds": seconds,
            })
        )?;
    } else {
        writeln!(
            out,
            "perplexity {:.4} (mean NLL {:.5} nats) over {} tokens, {} windows of {} every {}, on {} in {:.1} s",
            result.perplexity,
            result.mean_nll,
            result.predicted,
            result.windows,
            result.max_length,
            result.stride,
            g.description,
            seconds
        )?;
    }
    Ok(())
}
