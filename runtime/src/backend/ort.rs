//! ONNX Runtime through the `ort` crate, with the library loaded at run time.
//!
//! The shared library is found, in order, at `ORT_DYLIB_PATH`; in the
//! `capi/` folder of the `onnxruntime` Python package that `python3` imports;
//! on the system library path. When none works, one error names all three
//! places and the tract alternative.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor, TensorElementType, TensorRef, TensorRefMut, ValueType};

use super::{GraphRunner, RunnerOptions, RuntimeError};
use crate::tensor::{ElemType, HostData, HostTensor};

/// File name of the library on this platform.
#[cfg(target_os = "windows")]
const LIBRARY: &str = "onnxruntime.dll";
#[cfg(target_os = "macos")]
const LIBRARY: &str = "libonnxruntime.dylib";
#[cfg(not(any(target_os = "windows", target_os = "macos")))]
const LIBRARY: &str = "libonnxruntime.so";

/// The loaded library and its environment, shared by every session of the process.
struct Loaded {
    library: PathBuf,
    environment: ort::environment::Environment,
}

static LOADED: OnceLock<Result<Loaded, RuntimeError>> = OnceLock::new();

/// The library file inside a folder: the exact name, else a versioned one (`libonnxruntime.so.1.31.1`).
fn library_in(dir: &Path) -> Option<PathBuf> {
    let exact = dir.join(LIBRARY);
    if exact.is_file() {
        return Some(exact);
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(LIBRARY)))
        .collect();
    versioned.sort();
    versioned.pop()
}

/// Asks `python3` (then `python`) where the `onnxruntime` package lives.
fn python_capi_dir() -> Result<PathBuf, String> {
    let script = "import os, onnxruntime; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))";
    let mut tried = Vec::new();
    for python in ["python3", "python"] {
        match Command::new(python).args(["-c", script]).output() {
            Ok(out) if out.status.success() => {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                return Ok(dir);
            }
            Ok(_) => tried.push(format!("{python} has no onnxruntime package")),
            Err(_) => tried.push(format!("no {python} on PATH")),
        }
    }
    Err(tried.join(", "))
}

/// Finds ONNX Runtime's shared library; the error lists every place looked at.
pub fn find_library() -> Result<PathBuf, RuntimeError> {
    let env = match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if Path::new(&p).is_file() => return Ok(PathBuf::from(p)),
        Some(p) => format!("set to {}, which is not a file", Path::new(&p).display()),
        None => "not set".to_string(),
    };
    let python = match python_capi_dir() {
        Ok(dir) => match library_in(&dir) {
            Some(lib) => return Ok(lib),
            None => format!("{} has no {LIBRARY}", dir.display()),
        },
        Err(why) => why,
    };
    // Last, let the dynamic loader search the system path by bare name.
    match unsafe { libloading::Library::new(LIBRARY) } {
        Ok(_) => Ok(PathBuf::from(LIBRARY)),
        Err(e) => Err(RuntimeError::OrtNotFound { env, python, system: format!("{LIBRARY}: {e}") }),
    }
}

fn loaded() -> Result<&'static Loaded, RuntimeError> {
    let result = LOADED.get_or_init(|| {
        let library = find_library()?;
        let ort_err = |e: &dyn std::fmt::Display| RuntimeError::Ort {
            library: library.display().to_string(),
            message: e.to_string(),
        };
        let builder = ort::init_from(&library).map_err(|e| ort_err(&e))?;
        let environment = builder.with_name("gpt2c").build().map_err(|e| ort_err(&e))?;
        Ok(Loaded { library, environment })
    });
    result.as_ref().map_err(|e| match e {
        RuntimeError::OrtNotFound { env, python, system } => {
            RuntimeError::OrtNotFound { env: env.clone(), python: python.clone(), system: system.clone() }
        }
        other => RuntimeError::Ort { library: String::new(), message: other.to_string() },
    })
}

/// The path of the ONNX Runtime library this process uses (loading it if needed).
pub fn library_path() -> Result<PathBuf, RuntimeError> {
    Ok(loaded()?.library.clone())
}

/// An ONNX Runtime session over one model file.
pub struct OrtRunner {
    session: Session,
    library: String,
    providers: Vec<String>,
    warnings: Vec<String>,
    last_only: bool,
}

impl OrtRunner {
    pub fn load(model: &Path, options: &RunnerOptions) -> Result<OrtRunner, RuntimeError> {
        options.validate()?;
        let lib = loaded()?;
        let library = lib.library.display().to_string();
        let fail = |e: &dyn std::fmt::Display| RuntimeError::Load { path: model.into(), message: e.to_string() };
        let mut builder = Session::builder(&lib.environment).map_err(|e| fail(&e))?;
        let level = match options.optimization {
            super::GraphOptimization::All => GraphOptimizationLevel::All,
            super::GraphOptimization::Basic => GraphOptimizationLevel::Level1,
        };
        builder = builder.with_optimization_level(level).map_err(|e| fail(&e))?;
        if let Some(n) = options.threads {
            builder = builder.with_intra_threads(n).map_err(|e| fail(&e))?;
        }
        let (mut builder, providers, warnings) =
            super::ort_ep::register(builder, &options.execution_providers, options.ep_strict)?;
        // Weight-only int8 means float compute on int8-stored weights: let ONNX Runtime fold the
        // dequantization once at load, instead of rewriting it into an 8-bit matmul that also
        // quantizes activations (measured 4.5 times slower on gpt2-small, and inexact).
        if crate::specialize::gpt2c_precision(model).is_some_and(|p| p.starts_with("int8 weights")) {
            builder = builder.with_config_entry("session.disable_quant_qdq", "1").map_err(|e| fail(&e))?;
        }
        let edits = crate::specialize::Edits {
            last_position_logits: options.logits == super::LogitsScope::Last,
            pretransposed_head: false,
        };
        let specialized = super::specialized_bytes(model, edits)?;
        let session = match &specialized {
            Some(bytes) => {
                // External data (model.onnx_data) is found next to the original file.
                let dir = model.parent().unwrap_or(Path::new(".")).to_string_lossy().into_owned();
                builder = builder
                    .with_config_entry("session.model_external_initializers_file_folder_path", dir)
                    .map_err(|e| fail(&e))?;
                builder.commit_from_memory(bytes).map_err(|e| fail(&e))?
            }
            None => builder.commit_from_file(model).map_err(|e| fail(&e))?,
        };
        Ok(OrtRunner { session, library, providers, warnings, last_only: specialized.is_some() })
    }
}

fn to_value(t: &HostTensor) -> Result<DynValue, ort::Error> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Ok(match &t.data {
        HostData::F32(v) => Tensor::from_array((shape, v.clone()))?.into_dyn(),
        HostData::F16(v) => Tensor::from_array((shape, v.clone()))?.into_dyn(),
        HostData::I64(v) => Tensor::from_array((shape, v.clone()))?.into_dyn(),
    })
}

impl GraphRunner for OrtRunner {
    fn describe(&self) -> String {
        format!("ONNX Runtime {} ({})", self.library, self.providers.join(", "))
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    fn last_logits_only(&self) -> bool {
        self.last_only
    }

    fn input_names(&self) -> Vec<String> {
        self.session.inputs().iter().map(|i| i.name().to_string()).collect()
    }

    fn output_names(&self) -> Vec<String> {
        self.session.outputs().iter().map(|o| o.name().to_string()).collect()
    }

    fn input_type(&self, name: &str) -> Option<ElemType> {
        let input = self.session.inputs().iter().find(|i| i.name() == name)?;
        match input.dtype() {
            ValueType::Tensor { ty: TensorElementType::Float32, .. } => Some(ElemType::F32),
            ValueType::Tensor { ty: TensorElementType::Float16, .. } => Some(ElemType::F16),
            ValueType::Tensor { ty: TensorElementType::Int64, .. } => Some(ElemType::I64),
            _ => None,
        }
    }

    fn run(&mut self, inputs: &[(&str, &HostTensor)]) -> Result<Vec<(String, HostTensor)>, RuntimeError> {
        let values = inputs
            .iter()
            .map(|(name, t)| {
                let v =
                    to_value(t).map_err(|e| RuntimeError::Input { name: name.to_string(), message: e.to_string() })?;
                Ok((name.to_string(), v))
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        let names = self.output_names();
        let library = self.library.clone();
        let err = |e: &dyn std::fmt::Display| RuntimeError::Ort { library: library.clone(), message: e.to_string() };
        let outputs = self.session.run(values).map_err(|e| err(&e))?;
        let mut result = Vec::with_capacity(names.len());
        for name in names {
            let value = outputs.get(&name).ok_or_else(|| err(&format!("output {name} missing")))?;
            let host = match value.dtype() {
                ValueType::Tensor { ty: TensorElementType::Float32, .. } => {
                    let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| err(&e))?;
                    HostTensor {
                        shape: shape.iter().map(|&d| d as usize).collect(),
                        data: HostData::F32(data.to_vec()),
                    }
                }
                ValueType::Tensor { ty: TensorElementType::Float16, .. } => {
                    let (shape, data) = value.try_extract_tensor::<half::f16>().map_err(|e| err(&e))?;
                    HostTensor {
                        shape: shape.iter().map(|&d| d as usize).collect(),
                        data: HostData::F16(data.to_vec()),
                    }
                }
                ValueType::Tensor { ty: TensorElementType::Int64, .. } => {
                    let (shape, data) = value.try_extract_tensor::<i64>().map_err(|e| err(&e))?;
                    HostTensor {
                        shape: shape.iter().map(|&d| d as usize).collect(),
                        data: HostData::I64(data.to_vec()),
                    }
                }
                other => {
                    return Err(err(&format!("output {name} has unsupported type {other:?}")));
                }
            };
            result.push((name, host));
        }
        Ok(result)
    }
}

/// The ONNX Runtime engine of a decoding session, with every cache buffer
/// allocated once and reused (IoBinding): two buffer sets, one per cache
/// tensor each, alternate as past (input views) and present (output views),
/// so no step allocates, and beam reordering is one gather pass into the
/// other set. Logits are written into a buffer kept across steps too.
pub struct OrtEngine {
    runner: OrtRunner,
    past_names: Vec<String>,
    present_names: Vec<String>,
    cache_type: ElemType,
    n_head: usize,
    head_dim: usize,
    vocab: usize,
    buffers: Buffers,
    /// Rows and cached positions of the live buffer set.
    rows: usize,
    past: usize,
}

/// The two buffer sets and the logits buffer, in the graph's float type.
enum Buffers {
    F32(Sets<f32>),
    F16(Sets<half::f16>),
}

struct Sets<T> {
    /// `[set][tensor]`: set `live` holds the cache.
    sets: [Vec<Vec<T>>; 2],
    live: usize,
    logits: Vec<T>,
}

impl<T: Copy + Default> Sets<T> {
    fn new(tensors: usize) -> Self {
        Sets { sets: [vec![Vec::new(); tensors], vec![Vec::new(); tensors]], live: 0, logits: Vec::new() }
    }

    /// Grows every buffer of the spare set to hold `len` elements (never shrinks).
    fn reserve_spare(&mut self, len: usize) {
        for b in &mut self.sets[1 - self.live] {
            if b.len() < len {
                b.resize(len, T::default());
            }
        }
    }

    /// (live set, spare set), borrowed apart.
    fn split(&mut self) -> (&Vec<Vec<T>>, &mut Vec<Vec<T>>) {
        let [a, b] = &mut self.sets;
        if self.live == 0 { (a, b) } else { (b, a) }
    }
}

impl OrtEngine {
    pub fn new(runner: OrtRunner, config: &crate::model::ModelConfig) -> OrtEngine {
        let (past_names, present_names) = crate::session::cache_names(config.n_layer);
        let cache_type = past_names.first().and_then(|k| runner.input_type(k)).unwrap_or(ElemType::F32);
        let tensors = past_names.len();
        let buffers = match cache_type {
            ElemType::F16 => Buffers::F16(Sets::new(tensors)),
            _ => Buffers::F32(Sets::new(tensors)),
        };
        OrtEngine {
            runner,
            past_names,
            present_names,
            cache_type,
            n_head: config.n_head,
            head_dim: config.head_dim(),
            vocab: config.vocab_size,
            buffers,
            rows: 0,
            past: 0,
        }
    }

    pub fn runner(&self) -> &OrtRunner {
        &self.runner
    }

    fn err(&self, e: impl std::fmt::Display) -> RuntimeError {
        RuntimeError::Ort { library: self.runner.library.clone(), message: e.to_string() }
    }
}

fn i64_value(shape: [usize; 2], data: &[i64]) -> Result<DynValue, ort::Error> {
    Ok(Tensor::from_array(([shape[0] as i64, shape[1] as i64], data.to_vec()))?.into_dyn())
}

/// One step over buffer sets of element type `T`.
#[allow(clippy::too_many_arguments)]
fn step_with<T>(
    session: &mut Session,
    sets: &mut Sets<T>,
    names: (&[String], &[String]),
    inputs: [&DynValue; 3],
    cache_shape: [usize; 4],
    seq: usize,
    logits_shape: [usize; 3],
) -> Result<Vec<f32>, String>
where
    T: Copy + Default + ort::value::PrimitiveTensorElementType + std::fmt::Debug + ToF32 + 'static,
{
    let [rows, heads, past, dim] = cache_shape;
    let (past_len, present_len) = (rows * heads * past * dim, rows * heads * (past + seq) * dim);
    sets.reserve_spare(present_len);
    let logits_len: usize = logits_shape.iter().product();
    if sets.logits.len() < logits_len {
        sets.logits.resize(logits_len, T::default());
    }
    let shape = |t: usize| vec![rows as i64, heads as i64, t as i64, dim as i64];
    let mut logits_buf = std::mem::take(&mut sets.logits);
    let result = {
        let (live, spare) = sets.split();
        let mut binding = session.create_binding().map_err(|e| e.to_string())?;
        for (name, value) in ["input_ids", "attention_mask", "position_ids"].iter().zip(inputs) {
            super::ort_binding::bind_input(&mut binding, name, value)?;
        }
        let past_views = live
            .iter()
            .map(|b| TensorRef::from_array_view((shape(past), &b[..past_len])))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        for (name, view) in names.0.iter().zip(&past_views) {
            super::ort_binding::bind_input(&mut binding, name, &**view)?;
        }
        let present_views = spare
            .iter_mut()
            .map(|b| TensorRefMut::from_array_view_mut((shape(past + seq), &mut b[..present_len])))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        for (name, view) in names.1.iter().zip(&present_views) {
            super::ort_binding::bind_output(&mut binding, name, &**view)?;
        }
        let logits_dims: Vec<i64> = logits_shape.iter().map(|&d| d as i64).collect();
        let logits_view = TensorRefMut::from_array_view_mut((logits_dims, &mut logits_buf[..logits_len]))
            .map_err(|e| e.to_string())?;
        super::ort_binding::bind_output(&mut binding, "logits", &*logits_view)?;
        super::ort_binding::run(session, &binding)
    };
    let logits: Vec<f32> = logits_buf[..logits_len].iter().map(|&x| x.to_f32()).collect();
    sets.logits = logits_buf;
    result?;
    sets.live = 1 - sets.live;
    Ok(logits)
}

/// The float types a cache or logits buffer holds.
trait ToF32 {
    fn to_f32(self) -> f32;
}

impl ToF32 for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}

impl ToF32 for half::f16 {
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

/// Copies rows of the live set's tensors (`[rows, ...]`, `per_row` elements each) into the spare set.
fn gather_with<T: Copy + Default>(sets: &mut Sets<T>, per_row: usize, rows: &[usize]) {
    sets.reserve_spare(per_row * rows.len());
    let (live, spare) = sets.split();
    for (src, dst) in live.iter().zip(spare.iter_mut()) {
        for (i, &r) in rows.iter().enumerate() {
            dst[i * per_row..(i + 1) * per_row].copy_from_slice(&src[r * per_row..(r + 1) * per_row]);
        }
    }
    sets.live = 1 - sets.live;
}

/// The cache lives in the engine's buffers; the session's cache entries only mark its presence.
#[derive(Clone, Copy, Debug)]
pub struct InBuffers;

impl crate::session::Engine for OrtEngine {
    type Value = InBuffers;

    fn cache_type(&self) -> ElemType {
        self.cache_type
    }

    fn empty(&self, shape: &[usize]) -> Result<InBuffers, RuntimeError> {
        if shape.get(2) != Some(&0) {
            return Err(self.err("an empty cache has 0 positions"));
        }
        Ok(InBuffers)
    }

    fn step(
        &mut self,
        t: &crate::session::TokenInputs<'_>,
        cache: &[InBuffers],
    ) -> Result<(crate::session::AllLogits, Vec<InBuffers>), RuntimeError> {
        if cache.len() != self.past_names.len() {
            return Err(self.err("cache size mismatch"));
        }
        let past = t.total - t.seq;
        if past == 0 {
            self.rows = t.rows;
        }
        if t.rows != self.rows || past != self.past && past != 0 {
            return Err(self.err(format!("the cache holds {} rows × {} positions", self.rows, self.past)));
        }
        let ids = i64_value([t.rows, t.seq], t.input_ids).map_err(|e| self.err(e))?;
        let mask = i64_value([t.rows, t.total], t.attention_mask).map_err(|e| self.err(e))?;
        let positions = i64_value([t.rows, t.seq], t.position_ids).map_err(|e| self.err(e))?;
        let logit_positions = if self.runner.last_only { 1 } else { t.seq };
        let cache_shape = [t.rows, self.n_head, past, self.head_dim];
        let logits_shape = [t.rows, logit_positions, self.vocab];
        let names = (self.past_names.as_slice(), self.present_names.as_slice());
        let inputs = [&ids, &mask, &positions];
        let session = &mut self.runner.session;
        let data = match &mut self.buffers {
            Buffers::F32(sets) => step_with(session, sets, names, inputs, cache_shape, t.seq, logits_shape),
            Buffers::F16(sets) => step_with(session, sets, names, inputs, cache_shape, t.seq, logits_shape),
        }
        .map_err(|e| RuntimeError::Ort { library: self.runner.library.clone(), message: e })?;
        self.past = t.total;
        let logits = crate::session::AllLogits { rows: t.rows, positions: logit_positions, vocab: self.vocab, data };
        Ok((logits, vec![InBuffers; self.present_names.len()]))
    }

    fn select_rows(&mut self, cache: &[InBuffers], rows: &[usize]) -> Result<Vec<InBuffers>, RuntimeError> {
        if let Some(&r) = rows.iter().find(|&&r| r >= self.rows) {
            return Err(self.err(format!("row {r} out of range ({} rows)", self.rows)));
        }
        let per_row = self.n_head * self.past * self.head_dim;
        match &mut self.buffers {
            Buffers::F32(sets) => gather_with(sets, per_row, rows),
            Buffers::F16(sets) => gather_with(sets, per_row, rows),
        }
        self.rows = rows.len();
        Ok(cache.to_vec())
    }

    fn last_logits_only(&self) -> bool {
        self.runner.last_only
    }

    fn reset(&mut self) {
        self.rows = 0;
        self.past = 0;
    }
}
