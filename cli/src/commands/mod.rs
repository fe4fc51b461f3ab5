//! Command-line arguments (clap derive; doc comments are the help text) and dispatch.

#[cfg(feature = "run")]
mod bench;
pub mod export;
#[cfg(feature = "run")]
mod generate;
mod inspect;
#[cfg(feature = "run")]
mod perplexity;
#[cfg(feature = "run")]
mod run_args;
#[cfg(feature = "run")]
mod serve;
#[cfg(feature = "run")]
pub mod verify;

use clap::{Parser, Subcommand};

/// gpt2c compiles Hugging Face GPT-2 checkpoints into ONNX and runs them.
///
/// `gpt2c export` reads a checkpoint folder (config.json, model.safetensors or a sharded
/// model.safetensors.index.json, tokenizer files) and writes an export folder whose model.onnx
/// computes what transformers' GPT2LMHeadModel computes, with a key/value cache for incremental
/// decoding. The graph is built from the weights: no Python, no PyTorch, no tracing.
#[derive(Debug, Parser)]
#[command(name = "gpt2c", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Export(export::ExportArgs),
    #[cfg(feature = "run")]
    Generate(Box<generate::GenerateArgs>),
    #[cfg(feature = "run")]
    Bench(bench::BenchArgs),
    #[cfg(feature = "run")]
    Perplexity(perplexity::PerplexityArgs),
    Inspect(inspect::InspectArgs),
    #[cfg(feature = "run")]
    Verify(verify::VerifyArgs),
    #[cfg(feature = "run")]
    Serve(Box<serve::ServeArgs>),
}

/// A command that ran and reported a failure it already printed (exit status 1).
#[derive(Debug)]
pub struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed")
    }
}

impl std::error::Error for Failed {}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Export(args) => export::run(args),
        #[cfg(feature = "run")]
        Command::Generate(args) => generate::run(*args),
        #[cfg(feature = "run")]
        Command::Bench(args) => bench::run(args),
        #[cfg(feature = "run")]
        Command::Perplexity(args) => perplexity::run(args),
        Command::Inspect(args) => inspect::run(args),
        #[cfg(feature = "run")]
        Command::Verify(args) => verify::run(args),
        #[cfg(feature = "run")]
        Command::Serve(args) => serve::run(*args),
    }
}
