//! Backends that execute an exported ONNX graph, behind one small trait.
//!
//! A [`GraphRunner`] runs the graph once over named host tensors. The same
//! test suite runs against every implementation: ONNX Runtime ([`ort`],
//! feature `ort`) and tract ([`tract`], feature `tract`).

pub mod assemble;
pub mod engine;
#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "tract")]
pub mod tract;

use std::path::{Path, PathBuf};

use crate::tensor::{ElemType, HostTensor};

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime's library was not found. Looked in: (1) ORT_DYLIB_PATH ({env}); (2) the `onnxruntime` \
         Python package's capi/ folder ({python}); (3) the system library path ({system}). Install it with \
         `pip install onnxruntime==1.31.1` or set ORT_DYLIB_PATH to libonnxruntime.so, or use `--backend tract`, \
         which needs nothing installed"
    )]
    OrtNotFound { env: String, python: String, system: String },
    #[error("ONNX Runtime ({library}): {message}")]
    Ort { library: String, message: String },
    #[error("tract: {0}")]
    Tract(String),
    #[error("{path}: cannot load model: {message}")]
    Load { path: PathBuf, message: String },
    #[error("input `{name}`: {message}")]
    Input { name: String, message: String },
    #[error("this build of gpt2c has no {0} backend (enable the cargo feature `{0}`)")]
    Disabled(&'static str),
    #[error("execution provider `{name}`: {reason}")]
    ExecutionProvider { name: String, reason: String },
    #[error("setting `{field}`: {message}")]
    Setting { field: &'static str, message: String },
    /// A batched run stopped from outside: its caller cancelled it or its time ran out.
    #[error("{0}")]
    Interrupted(Interruption),
}

/// Why a batched run stopped before it finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Interruption {
    #[error("the request was cancelled")]
    Cancelled,
    #[error("the request ran out of time")]
    TimedOut,
}

/// Threads per available core a runner may be given: more only adds contention, and a count in
/// the thousands would spend its time creating threads.
pub const THREADS_PER_CORE: usize = 4;

/// The most intra-op threads a runner accepts here: [`THREADS_PER_CORE`] × the available cores.
pub fn max_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from).saturating_mul(THREADS_PER_CORE)
}

/// Which engine runs the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Ort,
    Tract,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Ort => "ort",
            BackendKind::Tract => "tract",
        }
    }
}

/// How much an engine may rewrite the graph before running it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GraphOptimization {
    /// Every optimization (ONNX Runtime's ORT_ENABLE_ALL), the default.
    #[default]
    All,
    /// Only rewrites that keep the graph's exact semantics (ORT_ENABLE_BASIC): ONNX Runtime's
    /// extended level, for example, turns a weight-only DequantizeLinear → MatMul into an 8-bit
    /// MatMulNBits that also quantizes activations.
    Basic,
}

/// Which positions `logits` covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogitsScope {
    /// Every position, as the export computes them (scoring, perplexity).
    #[default]
    All,
    /// Only the last position of each row: gpt2c exports are specialized on load so the LM head
    /// skips the other positions (generation). Other models load unchanged.
    Last,
}

/// Settings shared by the backends.
#[derive(Clone, Debug, Default)]
pub struct RunnerOptions {
    /// Positions whose logits are computed.
    pub logits: LogitsScope,
    /// Graph rewriting allowed (ONNX Runtime; tract's optimizations always keep semantics).
    pub optimization: GraphOptimization,
    /// Intra-op threads; `None` lets the engine choose.
    pub threads: Option<usize>,
    /// ONNX Runtime execution providers by name, in order of preference (`cuda`, `cpu`, ...).
    pub execution_providers: Vec<String>,
    /// Fail instead of warning when a requested execution provider cannot be used.
    pub ep_strict: bool,
    /// Intra-op threads sleep when a run ends instead of spinning for the next one (ONNX Runtime).
    /// For a session that takes turns with another on the same cores, as an assistant model with
    /// its target: spinning threads would hold the cores the other session's run needs (measured:
    /// a tiny-trained assistant for a gpt2-small-shaped target decodes 49 tok/s spinning, 84 not).
    pub sleep_when_idle: bool,
}

impl RunnerOptions {
    /// These options for an assistant model's session: it drafts from its last position only, and
    /// its threads sleep between runs since it takes turns with the target on the same cores.
    pub fn for_assistant(self) -> RunnerOptions {
        RunnerOptions { logits: LogitsScope::Last, sleep_when_idle: true, ..self }
    }

    /// Refuses settings no engine should be given (a thread count of 0, or past [`max_threads`]).
    pub fn validate(&self) -> Result<(), RuntimeError> {
        match self.threads {
            Some(0) => Err(RuntimeError::Setting { field: "threads", message: "must be at least 1".into() }),
            Some(n) if n > max_threads() => Err(RuntimeError::Setting {
                field: "threads",
                message: format!(
                    "({n}) is more than {THREADS_PER_CORE} × the {} cores available here ({})",
                    max_threads() / THREADS_PER_CORE,
                    max_threads()
                ),
            }),
            _ => Ok(()),
        }
    }
}

/// Runs one forward pass of a loaded graph.
pub trait GraphRunner {
    /// Names of the graph inputs, in declaration order.
    fn input_names(&self) -> Vec<String>;
    /// Names of the graph outputs, in declaration order.
    fn output_names(&self) -> Vec<String>;
    /// Element type of an input, when it is one the runtime exchanges.
    fn input_type(&self, name: &str) -> Option<ElemType>;
    /// Runs the graph; returns every output, in declaration order.
    fn run(&mut self, inputs: &[(&str, &HostTensor)]) -> Result<Vec<(String, HostTensor)>, RuntimeError>;
    /// What runs the graph, for people (`ort 1.31.1 (CUDAExecutionProvider, CPUExecutionProvider)`).
    fn describe(&self) -> String;
    /// Warnings from loading (e.g. an execution provider that was skipped).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether `logits` was specialized to the last position.
    fn last_logits_only(&self) -> bool {
        false
    }
}

/// The model's bytes with `edits` applied, when that applies.
pub(crate) fn specialized_bytes(
    model: &Path,
    edits: crate::specialize::Edits,
) -> Result<Option<Vec<u8>>, RuntimeError> {
    if edits == crate::specialize::Edits::default() {
        return Ok(None);
    }
    let io = |e: std::io::Error| RuntimeError::Load { path: model.into(), message: e.to_string() };
    let file = std::fs::File::open(model).map_err(io)?;
    // SAFETY: read-only map of the model file, only read while this function runs.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let name = model.file_name().and_then(|n| n.to_str()).unwrap_or("model.onnx");
    Ok(crate::specialize::specialize(&map, name, edits))
}

/// Loads `model` (a `.onnx` file) on the chosen backend.
pub fn load_runner(
    kind: BackendKind,
    model: &Path,
    options: &RunnerOptions,
) -> Result<Box<dyn GraphRunner>, RuntimeError> {
    options.validate()?;
    match kind {
        #[cfg(feature = "ort")]
        BackendKind::Ort => Ok(Box::new(ort::OrtRunner::load(model, options)?)),
        #[cfg(not(feature = "ort"))]
        BackendKind::Ort => Err(RuntimeError::Disabled("ort")),
        #[cfg(feature = "tract")]
        BackendKind::Tract => Ok(Box::new(tract::TractRunner::load(model, options)?)),
        #[cfg(not(feature = "tract"))]
        BackendKind::Tract => Err(RuntimeError::Disabled("tract")),
    }
}

/// Loads a model from `bytes` on the chosen backend; its external data is read beside `model`,
/// which also names it in messages. No load-time rewriting (`options.logits` is ignored).
pub fn load_runner_bytes(
    kind: BackendKind,
    model: &Path,
    bytes: Vec<u8>,
    options: &RunnerOptions,
) -> Result<Box<dyn GraphRunner>, RuntimeError> {
    options.validate()?;
    match kind {
        #[cfg(feature = "ort")]
        BackendKind::Ort => Ok(Box::new(ort::OrtRunner::load_bytes(model, bytes, options)?)),
        #[cfg(not(feature = "ort"))]
        BackendKind::Ort => {
            let _ = (model, bytes);
            Err(RuntimeError::Disabled("ort"))
        }
        #[cfg(feature = "tract")]
        BackendKind::Tract => Ok(Box::new(tract::TractRunner::load_bytes(model, bytes, options)?)),
        #[cfg(not(feature = "tract"))]
        BackendKind::Tract => {
            let _ = (model, bytes);
            Err(RuntimeError::Disabled("tract"))
        }
    }
}
