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
        let specialized = super::specialized_bytes(model, options.logits)?;
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
