//! `gpt2c verify`: the CI gate for an export folder.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use gpt2c_runtime::BackendKind;
use gpt2c_verify::{self as verify, VerifyOptions, numeric::Tolerance};

use super::run_args::BackendName;

/// Check that an export is well-formed, keeps the I/O contract, and computes what its checkpoint
/// computes.
///
/// Structural checks need nothing but the export: the protobuf decodes; ir_version and the opset
/// imports agree; value names are unique; nodes are in topological order and every input is
/// produced before use; initializers hold the bytes their element type and dims declare, inline or
/// in external files that stay inside the model's folder and within the file's size; every
/// operator is known at its imported opset; inputs and outputs keep the contract for the export's
/// task (names, element types, dimension names); element types and shapes inferred node by node
/// agree with the declared ones.
///
/// With --reference, an eager GPT-2 forward computed straight from the checkpoint's weights (not
/// through the graph builder) is compared with the export on each backend, for a random prompt, a
/// left-padded batch and, with a cache, a decode step fed the batch's cache.
///
/// Exit status: 0 when everything passes, 1 when verification fails, 2 on usage or I/O errors.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The export folder (or one .onnx file in it).
    pub export: PathBuf,
    /// The Hugging Face checkpoint folder the export came from: compare outputs with it.
    #[arg(long, value_name = "CHECKPOINT_DIR")]
    pub reference: Option<PathBuf>,
    /// Backends that run the export against the reference, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ort,tract")]
    pub backends: Vec<BackendName>,
    /// Allowed error as `ABS` or `ABS,REL`: an output passes when its max abs error <= ABS + REL × its
    /// largest reference magnitude. Default by precision: fp32 1e-4,1e-4; fp16 1e-3,0.02;
    /// int8 0.01,0.15; int4 0.01,0.5.
    #[arg(long, value_name = "ABS[,REL]", value_parser = parse_tolerance)]
    pub tolerance: Option<Tolerance>,
    /// Seed of the random prompts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Intra-op threads for the backends (default: the engine's choice).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the report as JSON (schema gpt2c.verify/1, see the README).
    #[arg(long)]
    pub json: bool,
}

fn parse_tolerance(s: &str) -> Result<Tolerance, String> {
    let number = |t: &str| -> Result<f32, String> {
        t.trim()
            .parse::<f32>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("`{t}` is not a non-negative number"))
    };
    match s.split_once(',') {
        Some((abs, rel)) => Ok(Tolerance { abs: number(abs)?, rel: number(rel)? }),
        None => Ok(Tolerance { abs: number(s)?, rel: 0.0 }),
    }
}

pub fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let report = report(&args)?;
    let mut out = crate::output::stdout();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", report.to_text())?;
    }
    if report.passed { Ok(()) } else { Err(super::Failed.into()) }
}

/// Runs the checks the arguments ask for; a failed check is in the report, not an error.
pub fn report(args: &VerifyArgs) -> anyhow::Result<verify::Report> {
    // A thread count out of range is a usage error, not a backend that fails to load.
    gpt2c_runtime::RunnerOptions { threads: args.threads, ..Default::default() }.validate()?;
    let backends = args.backends.iter().map(|&b| BackendKind::from(b)).collect();
    let options = VerifyOptions {
        reference: args.reference.clone(),
        backends,
        tolerance: args.tolerance,
        seed: args.seed,
        threads: args.threads,
    };
    verify::verify(&args.export, &options).context("gpt2c verify")
}
