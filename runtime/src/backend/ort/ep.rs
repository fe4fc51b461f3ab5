//! ONNX Runtime execution providers, chosen by name (`--ep cuda,cpu`).
//!
//! Each provider's registration code is behind a cargo feature of the same
//! name (`cuda`, `tensorrt`, `openvino`, `rocm`, `migraphx`, `onednn`,
//! `xnnpack`, `coreml`, `directml`, `qnn`, `webgpu`); whether it actually runs
//! depends on the ONNX Runtime library that was loaded (the PyPI wheel
//! `onnxruntime` has only the CPU provider; `onnxruntime-gpu` adds CUDA and
//! TensorRT). A provider that cannot be used is skipped with a warning, or is
//! an error when the caller asks for strictness. The CPU provider is always
//! last in line.

use ort::ep::{ExecutionProvider, ExecutionProviderDispatch};
use ort::session::builder::SessionBuilder;

use crate::backend::RuntimeError;

/// Names accepted for `--ep`, with ONNX Runtime's provider names.
pub const PROVIDERS: [(&str, &str); 12] = [
    ("cpu", "CPUExecutionProvider"),
    ("cuda", "CUDAExecutionProvider"),
    ("tensorrt", "TensorrtExecutionProvider"),
    ("openvino", "OpenVINOExecutionProvider"),
    ("rocm", "ROCMExecutionProvider"),
    ("migraphx", "MIGraphXExecutionProvider"),
    ("onednn", "DnnlExecutionProvider"),
    ("xnnpack", "XnnpackExecutionProvider"),
    ("coreml", "CoreMLExecutionProvider"),
    ("directml", "DmlExecutionProvider"),
    ("qnn", "QNNExecutionProvider"),
    ("webgpu", "WebGpuExecutionProvider"),
];

#[cfg_attr(
    not(any(
        feature = "cuda",
        feature = "tensorrt",
        feature = "openvino",
        feature = "rocm",
        feature = "migraphx",
        feature = "onednn",
        feature = "xnnpack",
        feature = "coreml",
        feature = "directml",
        feature = "qnn",
        feature = "webgpu"
    )),
    allow(dead_code)
)]
fn check<E: ExecutionProvider>(
    ep: E,
    build: impl FnOnce(E) -> ExecutionProviderDispatch,
) -> Result<ExecutionProviderDispatch, String> {
    match E::is_available() {
        Ok(true) => Ok(build(ep)),
        Ok(false) => Err("the loaded ONNX Runtime library was not built with it".into()),
        Err(e) => Err(format!("cannot query the loaded library's providers: {e}")),
    }
}

/// The provider for `name` when this build includes it and the loaded library offers it.
fn dispatch(name: &str) -> Result<ExecutionProviderDispatch, String> {
    let not_built = || Err(format!("this build of gpt2c has no `{name}` support (cargo feature `{name}`)"));
    match name {
        #[cfg(feature = "cuda")]
        "cuda" => check(ort::ep::CUDA::default(), |e| e.build()),
        #[cfg(feature = "tensorrt")]
        "tensorrt" => check(ort::ep::TensorRT::default(), |e| e.build()),
        #[cfg(feature = "openvino")]
        "openvino" => check(ort::ep::OpenVINO::default(), |e| e.build()),
        #[cfg(feature = "rocm")]
        "rocm" => check(ort::ep::ROCm::default(), |e| e.build()),
        #[cfg(feature = "migraphx")]
        "migraphx" => check(ort::ep::MIGraphX::default(), |e| e.build()),
        #[cfg(feature = "onednn")]
        "onednn" => check(ort::ep::OneDNN::default(), |e| e.build()),
        #[cfg(feature = "xnnpack")]
        "xnnpack" => check(ort::ep::XNNPACK::default(), |e| e.build()),
        #[cfg(feature = "coreml")]
        "coreml" => check(ort::ep::CoreML::default(), |e| e.build()),
        #[cfg(feature = "directml")]
        "directml" => check(ort::ep::DirectML::default(), |e| e.build()),
        #[cfg(feature = "qnn")]
        "qnn" => check(ort::ep::QNN::default(), |e| e.build()),
        #[cfg(feature = "webgpu")]
        "webgpu" => check(ort::ep::WebGPU::default(), |e| e.build()),
        _ => not_built(),
    }
}

/// Checks names before anything is loaded: unknown names are an error.
pub fn parse(names: &[String]) -> Result<Vec<String>, RuntimeError> {
    names
        .iter()
        .map(|n| {
            let n = n.trim().to_ascii_lowercase();
            let n = match n.as_str() {
                "dnnl" => "onednn".to_string(),
                "dml" => "directml".to_string(),
                "trt" => "tensorrt".to_string(),
                _ => n,
            };
            if PROVIDERS.iter().any(|(p, _)| *p == n) {
                Ok(n)
            } else {
                let known: Vec<&str> = PROVIDERS.iter().map(|(p, _)| *p).collect();
                Err(RuntimeError::ExecutionProvider {
                    name: n,
                    reason: format!("unknown; choose from {}", known.join(", ")),
                })
            }
        })
        .collect()
}

/// Registers the requested providers in order. Returns the builder, the
/// providers in use (ONNX Runtime names, CPU last) and warnings about skipped ones.
pub fn register(
    mut builder: SessionBuilder,
    names: &[String],
    strict: bool,
) -> Result<(SessionBuilder, Vec<String>, Vec<String>), RuntimeError> {
    let mut used = Vec::new();
    let mut warnings = Vec::new();
    for name in parse(names)? {
        if name == "cpu" || used.iter().any(|u: &String| u == &name) {
            continue;
        }
        let reason = match dispatch(&name) {
            Ok(ep) => match builder.with_execution_providers([ep.error_on_failure()]) {
                Ok(b) => {
                    builder = b;
                    used.push(name);
                    continue;
                }
                Err(e) => {
                    let reason = e.to_string();
                    builder = e.recover();
                    reason
                }
            },
            Err(reason) => reason,
        };
        if strict {
            return Err(RuntimeError::ExecutionProvider { name, reason });
        }
        warnings.push(format!("execution provider `{name}` is unavailable ({reason}); continuing without it"));
    }
    let mut providers: Vec<String> =
        used.iter().filter_map(|n| PROVIDERS.iter().find(|(p, _)| p == n).map(|(_, c)| c.to_string())).collect();
    providers.push("CPUExecutionProvider".to_string());
    Ok((builder, providers, warnings))
}
