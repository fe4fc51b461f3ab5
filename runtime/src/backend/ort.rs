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
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

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

/// The ONNX Runtime engine of a decoding session: the cache stays in ONNX
/// Runtime values; each step's `present.*` outputs are fed back as the next
/// step's `past_key_values.*` inputs without a host copy.
pub struct OrtEngine {
    runner: OrtRunner,
    past_names: Vec<String>,
    present_names: Vec<String>,
    cache_type: ElemType,
}

impl OrtEngine {
    pub fn new(runner: OrtRunner, n_layer: usize) -> OrtEngine {
        let (past_names, present_names) = crate::session::cache_names(n_layer);
        let cache_type = past_names.first().and_then(|k| runner.input_type(k)).unwrap_or(ElemType::F32);
        OrtEngine { runner, past_names, present_names, cache_type }
    }

    pub fn runner(&self) -> &OrtRunner {
        &self.runner
    }
}

fn i64_value(shape: [usize; 2], data: &[i64]) -> Result<DynValue, ort::Error> {
    Ok(Tensor::from_array(([shape[0] as i64, shape[1] as i64], data.to_vec()))?.into_dyn())
}

/// Copies rows of a `[rows, ...]` tensor value into a new value.
fn gather<T: Clone + ort::value::PrimitiveTensorElementType + std::fmt::Debug + 'static>(
    value: &DynValue,
    rows: &[usize],
) -> Result<DynValue, ort::Error> {
    let (shape, data) = value.try_extract_tensor::<T>()?;
    let per: usize = shape.iter().skip(1).map(|&d| d as usize).product();
    let mut out = Vec::with_capacity(per * rows.len());
    for &r in rows {
        out.extend_from_slice(&data[r * per..(r + 1) * per]);
    }
    let mut new_shape: Vec<i64> = shape.to_vec();
    new_shape[0] = rows.len() as i64;
    Ok(Tensor::from_array((new_shape, out))?.into_dyn())
}

impl crate::session::Engine for OrtEngine {
    type Value = DynValue;

    fn cache_type(&self) -> ElemType {
        self.cache_type
    }

    fn empty(&self, shape: &[usize]) -> Result<DynValue, RuntimeError> {
        let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let value = match self.cache_type {
            ElemType::F16 => Tensor::from_array((shape, Vec::<half::f16>::new())).map(|t| t.into_dyn()),
            _ => Tensor::from_array((shape, Vec::<f32>::new())).map(|t| t.into_dyn()),
        };
        value.map_err(|e| RuntimeError::Ort { library: self.runner.library.clone(), message: e.to_string() })
    }

    fn step(
        &mut self,
        t: &crate::session::TokenInputs<'_>,
        cache: &[DynValue],
    ) -> Result<(crate::session::AllLogits, Vec<DynValue>), RuntimeError> {
        let library = self.runner.library.clone();
        let err = |e: &dyn std::fmt::Display| RuntimeError::Ort { library: library.clone(), message: e.to_string() };
        let ids = i64_value([t.rows, t.seq], t.input_ids).map_err(|e| err(&e))?;
        let mask = i64_value([t.rows, t.total], t.attention_mask).map_err(|e| err(&e))?;
        let positions = i64_value([t.rows, t.seq], t.position_ids).map_err(|e| err(&e))?;
        let mut inputs: Vec<(std::borrow::Cow<'_, str>, ort::session::SessionInputValue<'_>)> = vec![
            ("input_ids".into(), ids.into()),
            ("attention_mask".into(), mask.into()),
            ("position_ids".into(), positions.into()),
        ];
        for (name, value) in self.past_names.iter().zip(cache) {
            inputs.push((name.as_str().into(), value.into()));
        }
        let mut outputs = self.runner.session.run(inputs).map_err(|e| err(&e))?;
        let logits = outputs.get("logits").ok_or_else(|| err(&"the model has no `logits` output"))?;
        let (shape, data): (Vec<usize>, Vec<f32>) = match logits.dtype() {
            ValueType::Tensor { ty: TensorElementType::Float16, .. } => {
                let (s, d) = logits.try_extract_tensor::<half::f16>().map_err(|e| err(&e))?;
                (s.iter().map(|&x| x as usize).collect(), d.iter().map(|x| x.to_f32()).collect())
            }
            _ => {
                let (s, d) = logits.try_extract_tensor::<f32>().map_err(|e| err(&e))?;
                (s.iter().map(|&x| x as usize).collect(), d.to_vec())
            }
        };
        let [rows, positions, vocab] = shape[..] else {
            return Err(err(&format!("logits have shape {shape:?}, expected rank 3")));
        };
        let presents = self
            .present_names
            .iter()
            .map(|n| outputs.remove(n).ok_or_else(|| err(&format!("the model has no `{n}` output"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((crate::session::AllLogits { rows, positions, vocab, data }, presents))
    }

    fn gather_rows(&self, value: &DynValue, rows: &[usize]) -> Result<DynValue, RuntimeError> {
        let result = match self.cache_type {
            ElemType::F16 => gather::<half::f16>(value, rows),
            _ => gather::<f32>(value, rows),
        };
        result.map_err(|e| RuntimeError::Ort { library: self.runner.library.clone(), message: e.to_string() })
    }

    fn last_logits_only(&self) -> bool {
        self.runner.last_only
    }
}
