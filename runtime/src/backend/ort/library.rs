//! Finding and loading ONNX Runtime's shared library, once per process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::backend::RuntimeError;

/// File name of the library on this platform.
#[cfg(target_os = "windows")]
const LIBRARY: &str = "onnxruntime.dll";
#[cfg(target_os = "macos")]
const LIBRARY: &str = "libonnxruntime.dylib";
#[cfg(not(any(target_os = "windows", target_os = "macos")))]
const LIBRARY: &str = "libonnxruntime.so";

/// The loaded library and its environment, shared by every session of the process.
pub(super) struct Loaded {
    pub(super) library: PathBuf,
    pub(super) environment: ort::environment::Environment,
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
    // SAFETY: loading ONNX Runtime runs its initialisers, which have no preconditions; the
    // handle is dropped at once (only whether it loads matters here).
    match unsafe { libloading::Library::new(LIBRARY) } {
        Ok(_) => Ok(PathBuf::from(LIBRARY)),
        Err(e) => Err(RuntimeError::OrtNotFound { env, python, system: format!("{LIBRARY}: {e}") }),
    }
}

pub(super) fn loaded() -> Result<&'static Loaded, RuntimeError> {
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
