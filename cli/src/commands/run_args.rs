//! The arguments every command that runs a model shares (generate, bench, perplexity): which
//! backend, which ONNX Runtime execution providers, how many threads.

use clap::{Args, ValueEnum};
use gpt2c_runtime::backend::LogitsScope;
use gpt2c_runtime::text::BackendChoice;
use gpt2c_runtime::{BackendKind, RunnerOptions};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// `ort` (ONNX Runtime), `tract` (pure Rust, nothing to install), or `auto`: ONNX Runtime when its
    /// library is found (ORT_DYLIB_PATH, the Python onnxruntime package, the system path), else tract.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,

    /// ONNX Runtime execution providers in order of preference, e.g. `cuda,cpu` (also tensorrt,
    /// openvino, rocm, migraphx, onednn, xnnpack, coreml, directml, qnn, webgpu). One that is not
    /// available is skipped with a warning; CPU is always the last resort.
    #[arg(long, value_delimiter = ',')]
    pub ep: Vec<String>,

    /// Fail instead of warning when an execution provider given with --ep is unavailable.
    #[arg(long)]
    pub ep_strict: bool,

    /// Threads per operator (ONNX Runtime intra-op threads; tract's thread pool), from 1 to 4 × the
    /// available cores. Default: the engine's choice (bench: 2).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Auto,
    Ort,
    Tract,
}

/// One backend by name (`gpt2c verify --backends ort,tract`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendName {
    Ort,
    Tract,
}

impl From<BackendName> for BackendKind {
    fn from(b: BackendName) -> BackendKind {
        match b {
            BackendName::Ort => BackendKind::Ort,
            BackendName::Tract => BackendKind::Tract,
        }
    }
}

impl RunArgs {
    /// The runner options, checked (a thread count out of range is refused before loading).
    pub fn options(&self, logits: LogitsScope, default_threads: Option<usize>) -> anyhow::Result<RunnerOptions> {
        let options = RunnerOptions {
            threads: self.threads.or(default_threads),
            execution_providers: self.ep.clone(),
            ep_strict: self.ep_strict,
            logits,
            ..Default::default()
        };
        options.validate()?;
        Ok(options)
    }

    pub fn choice(&self) -> BackendChoice {
        match self.backend {
            Backend::Auto => BackendChoice::Auto,
            Backend::Ort => BackendChoice::Ort,
            Backend::Tract => BackendChoice::Tract,
        }
    }

    /// The backend `auto` resolves to here: ONNX Runtime when its library is found.
    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Ort => BackendKind::Ort,
            Backend::Tract => BackendKind::Tract,
            Backend::Auto => match gpt2c_runtime::backend::ort::library_path() {
                Ok(_) => BackendKind::Ort,
                Err(_) => BackendKind::Tract,
            },
        }
    }
}
