//! ONNX Runtime through the `ort` crate, with the library loaded at run time.
//!
//! The shared library is found, in order, at `ORT_DYLIB_PATH`; in the
//! `capi/` folder of the `onnxruntime` Python package that `python3` imports;
//! on the system library path. When none works, one error names all three
//! places and the tract alternative.

use std::path::Path;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use crate::backend::{GraphRunner, RunnerOptions, RuntimeError};
use crate::tensor::{ElemType, HostData, HostTensor};

mod binding;
mod engine;
pub mod ep;
mod library;

pub use engine::OrtEngine;
use library::loaded;
pub use library::{find_library, library_path};

/// An ONNX Runtime session over one model file.
pub struct OrtRunner {
    session: Session,
    library: String,
    providers: Vec<String>,
    warnings: Vec<String>,
    last_only: bool,
    /// The export appends into its past buffer (`gpt2c.kv_cache` = `shared`).
    shared_cache: bool,
}

impl OrtRunner {
    pub fn load(model: &Path, options: &RunnerOptions) -> Result<OrtRunner, RuntimeError> {
        Self::load_with(model, None, options)
    }

    /// Loads `bytes`, a model whose external data lives beside `model` (named in messages).
    pub fn load_bytes(model: &Path, bytes: Vec<u8>, options: &RunnerOptions) -> Result<OrtRunner, RuntimeError> {
        Self::load_with(model, Some(bytes), options)
    }

    fn load_with(model: &Path, given: Option<Vec<u8>>, options: &RunnerOptions) -> Result<OrtRunner, RuntimeError> {
        options.validate()?;
        let lib = loaded()?;
        let library = lib.library.display().to_string();
        let fail = |e: &dyn std::fmt::Display| RuntimeError::Load { path: model.into(), message: e.to_string() };
        let mut builder = Session::builder(&lib.environment).map_err(|e| fail(&e))?;
        let level = match options.optimization {
            crate::backend::GraphOptimization::All => GraphOptimizationLevel::All,
            crate::backend::GraphOptimization::Basic => GraphOptimizationLevel::Level1,
        };
        builder = builder.with_optimization_level(level).map_err(|e| fail(&e))?;
        if let Some(n) = options.threads {
            builder = builder.with_intra_threads(n).map_err(|e| fail(&e))?;
        }
        if options.sleep_when_idle {
            builder = builder.with_config_entry("session.intra_op.allow_spinning", "0").map_err(|e| fail(&e))?;
        }
        let (mut builder, providers, mut warnings) =
            ep::register(builder, &options.execution_providers, options.ep_strict)?;
        if let Some(w) = fp16_on_x86_cpu(model, &providers) {
            warnings.push(w);
        }
        // Weight-only int8 means float compute on int8-stored weights: let ONNX Runtime fold the
        // dequantization once at load, instead of rewriting it into an 8-bit matmul that also
        // quantizes activations (measured 4.5 times slower on gpt2-small, and inexact).
        if crate::specialize::gpt2c_quantize(model).is_some_and(|q| q == "int8-weights") {
            builder = builder.with_config_entry("session.disable_quant_qdq", "1").map_err(|e| fail(&e))?;
        }
        let edits = crate::specialize::Edits {
            last_position_logits: options.logits == crate::backend::LogitsScope::Last,
            pretransposed_head: false,
        };
        let given_bytes = given.is_some();
        let specialized = match given {
            Some(bytes) => Some(bytes),
            None => crate::backend::specialized_bytes(model, edits)?,
        };
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
        let shared_cache = crate::specialize::gpt2c_kv_cache(model).as_deref() == Some("shared");
        let last_only = specialized.is_some() && !given_bytes;
        Ok(OrtRunner { session, library, providers, warnings, last_only, shared_cache })
    }
}

/// The CPU provider has fp16 matrix kernels on ARM64 only: elsewhere it widens an fp16 export's
/// weights to fp32 once at load (`tests/bench/fp16_cpu_graph.py` shows the graph it runs), so the
/// export runs at fp32's speed and memory. Said once, with what reads fewer bytes instead.
fn fp16_on_x86_cpu(model: &Path, providers: &[String]) -> Option<String> {
    let cpu_only = providers.iter().all(|p| p == "CPUExecutionProvider");
    let fp16 = crate::specialize::gpt2c_dtype(model).as_deref() == Some("fp16");
    (cfg!(not(target_arch = "aarch64")) && cpu_only && fp16).then(|| {
        "this fp16 export runs in fp32 on ONNX Runtime's CPU provider (it has fp16 matrix kernels on ARM64 \
         only; the weights are widened at load): expect fp32's speed and memory. --quantize int8 or int4 \
         read 4 to 5 times fewer bytes per token"
            .to_string()
    })
}

fn to_value(t: &HostTensor) -> Result<DynValue, ort::Error> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Ok(match &t.data {
        HostData::F32(v) => Tensor::from_array((shape, v.clone()))?.into_dyn(),
        HostData::F16(v) => Tensor::from_array((shape, v.clone()))?.into_dyn(),
        HostData::I64(v) => Tensor::from_array((shape, v.clone()))?.into_dyn(),
        HostData::I32(v) => Tensor::from_array((shape, v.clone()))?.into_dyn(),
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
            ValueType::Tensor { ty: TensorElementType::Int32, .. } => Some(ElemType::I32),
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
                ValueType::Tensor { ty: TensorElementType::Int32, .. } => {
                    let (shape, data) = value.try_extract_tensor::<i32>().map_err(|e| err(&e))?;
                    HostTensor {
                        shape: shape.iter().map(|&d| d as usize).collect(),
                        data: HostData::I32(data.to_vec()),
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
