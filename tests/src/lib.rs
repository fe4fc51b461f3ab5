//! Support for gpt2c's end-to-end tests: where fixtures live, which backends
//! and tools are available, reference loading and comparisons.
//!
//! Environment:
//! - `GPT2C_CI=1` (set by `.ci/run`): every optional resource (ONNX Runtime,
//!   the Python `onnx` package, `../shared`) must be present; a test that would
//!   skip fails instead.
//! - `GPT2C_PYTHON`: the Python interpreter with `onnx` installed (default:
//!   `.venv/bin/python` in the repository).
//! - `GPT2C_SHARED`: the team's shared data folder (default: `../shared`).
//! - `ORT_DYLIB_PATH`: ONNX Runtime's library (else discovered as the runtime does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use gpt2c_compiler::{ExportOptions, export};
use gpt2c_runtime::{BackendKind, GraphRunner, HostTensor, RunnerOptions, load_runner};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `models/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("models").join(name)
}

/// Whether this run must not skip anything.
pub fn ci() -> bool {
    std::env::var("GPT2C_CI").is_ok_and(|v| v == "1")
}

/// Skips (returns `false` after printing why) or, under `GPT2C_CI=1`, fails.
pub fn available(what: &str, result: Result<(), String>) -> bool {
    match result {
        Ok(()) => true,
        Err(why) if ci() => panic!("{what} is required under GPT2C_CI=1 but unavailable: {why}"),
        Err(why) => {
            eprintln!("skipping: {what} unavailable: {why}");
            false
        }
    }
}

/// The team's shared data folder, if present.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("GPT2C_SHARED").map(PathBuf::from).unwrap_or_else(|| repo_root().join("../shared"));
    available("../shared", if dir.is_dir() { Ok(()) } else { Err(format!("{} not found", dir.display())) })
        .then_some(dir)
}

/// A Python interpreter with the `onnx` package, if present.
pub fn python_with_onnx() -> Option<PathBuf> {
    python_with("onnx")
}

/// The test Python (`GPT2C_PYTHON`, default `.venv/bin/python`) if it imports `module`.
pub fn python_with(module: &str) -> Option<PathBuf> {
    let python =
        std::env::var_os("GPT2C_PYTHON").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    let probe = Command::new(&python).args(["-c", &format!("import {module}")]).output();
    let ok = match probe {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("{}: {}", python.display(), String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => Err(format!("{}: {e}", python.display())),
    };
    available(&format!("Python with the {module} package"), ok).then_some(python)
}

/// The backends to run: tract always, ONNX Runtime when its library loads.
pub fn backends() -> Vec<BackendKind> {
    let mut kinds = Vec::new();
    let ort = gpt2c_runtime::backend::ort::library_path().map(|_| ()).map_err(|e| e.to_string());
    if available("ONNX Runtime", ort) {
        kinds.push(BackendKind::Ort);
    }
    kinds.push(BackendKind::Tract);
    kinds
}

/// Exports `models/<name>` into a fresh temporary folder.
pub fn export_fixture(name: &str, options: &ExportOptions) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path().join("export");
    export(&fixture(name), &out, options, &mut |_| {}).unwrap_or_else(|e| panic!("export of {name} failed: {e}"));
    (tmp, out)
}

/// Loads a runner for `model.onnx` in an export folder.
pub fn runner(kind: BackendKind, export_dir: &Path) -> Box<dyn GraphRunner> {
    load_runner(kind, &export_dir.join("model.onnx"), &RunnerOptions::default())
        .unwrap_or_else(|e| panic!("{} failed to load {}: {e}", kind.name(), export_dir.display()))
}

/// Reference tensors written by `models/make_fixtures.py`.
pub struct Reference {
    pub tensors: BTreeMap<String, HostTensor>,
}

impl Reference {
    pub fn load(path: &Path) -> Reference {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("reference safetensors");
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let data = view.data();
            let t = match view.dtype() {
                safetensors::Dtype::F32 => HostTensor::f32(
                    shape,
                    data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                ),
                safetensors::Dtype::I64 => HostTensor::i64(
                    shape,
                    data.chunks_exact(8)
                        .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                        .collect(),
                ),
                other => panic!("unexpected reference dtype {other:?} for {name}"),
            };
            tensors.insert(name.clone(), t.expect("reference shape matches data"));
        }
        Reference { tensors }
    }

    pub fn get(&self, name: &str) -> &HostTensor {
        self.tensors.get(name).unwrap_or_else(|| panic!("reference has no tensor {name}"))
    }
}

/// Decides whether an element (by its multi-index) takes part in a comparison.
pub type Keep<'a> = &'a dyn Fn(&[usize]) -> bool;

/// Largest |a - b| over the positions where `keep` is true (all when `None`).
pub fn max_abs_diff(a: &HostTensor, b: &HostTensor, keep: Option<Keep<'_>>) -> f32 {
    assert_eq!(a.shape, b.shape, "shapes differ");
    let (x, y) = (a.as_f32().expect("f32"), b.as_f32().expect("f32"));
    let mut index = vec![0usize; a.shape.len()];
    let mut worst = 0.0f32;
    for (u, v) in x.iter().zip(y) {
        if keep.is_none_or(|k| k(&index)) {
            let d = (u - v).abs();
            worst = if d.is_nan() { f32::INFINITY } else { worst.max(d) };
        }
        for axis in (0..index.len()).rev() {
            index[axis] += 1;
            if index[axis] < a.shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    worst
}

/// A zero-length past for every layer: `[batch, heads, 0, head_dim]`.
pub fn empty_past(n_layer: usize, batch: usize, heads: usize, head_dim: usize) -> Vec<(String, HostTensor)> {
    (0..n_layer)
        .flat_map(|i| {
            ["key", "value"].map(|kv| {
                let t = HostTensor::f32(vec![batch, heads, 0, head_dim], vec![]).expect("empty past");
                (format!("past_key_values.{i}.{kv}"), t)
            })
        })
        .collect()
}
