//! Rust errors as the package's exceptions (`gpt2c/_errors.py`): the message is the one the CLI
//! prints; the class says whose fault it is.

use gpt2c_compiler::ExportError;
use gpt2c_compiler::checkpoint::CheckpointError;
use gpt2c_compiler::hub::HubError;
use gpt2c_runtime::generate::GenerateError;
use gpt2c_runtime::text::TextError;
use gpt2c_runtime::{ModelError, RuntimeError};
use pyo3::prelude::*;

/// Which exception an error becomes.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// `SettingError`: an option or generation setting, named when the error names one.
    Setting(Option<String>),
    /// `ModelError`: the checkpoint, the export folder, a Hub id.
    Model,
    /// `BackendError`: ONNX Runtime's library, an execution provider, tract.
    Backend,
    /// `Error`: anything else (I/O, a failed write).
    Other,
}

impl Kind {
    fn class(&self) -> &'static str {
        match self {
            Kind::Setting(_) => "SettingError",
            Kind::Model => "ModelError",
            Kind::Backend => "BackendError",
            Kind::Other => "Error",
        }
    }
}

fn runtime_kind(e: &RuntimeError) -> Kind {
    match e {
        RuntimeError::Setting { field, .. } => Kind::Setting(Some((*field).to_string())),
        RuntimeError::Load { .. } => Kind::Model,
        RuntimeError::Input { name, .. } => Kind::Setting(Some(name.clone())),
        _ => Kind::Backend,
    }
}

fn generate_kind(e: &GenerateError) -> Kind {
    match (e, e.param()) {
        (GenerateError::Runtime(r), _) => runtime_kind(r),
        (_, Some(field)) => Kind::Setting(Some(field.to_string())),
        (_, None) => Kind::Model,
    }
}

fn model_kind(e: &ModelError) -> Kind {
    match e {
        ModelError::Runtime(r) => runtime_kind(r),
        _ => Kind::Model,
    }
}

/// The kind of the first error in the chain that says.
pub fn kind_of(err: &anyhow::Error) -> Kind {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<TextError>() {
            return match e {
                TextError::Model(m) => model_kind(m),
                TextError::Generate(g) => generate_kind(g),
                TextError::Tokenizer(_) => Kind::Setting(Some("prompt".into())),
            };
        }
        if let Some(e) = cause.downcast_ref::<GenerateError>() {
            return generate_kind(e);
        }
        if let Some(e) = cause.downcast_ref::<ModelError>() {
            return model_kind(e);
        }
        if let Some(e) = cause.downcast_ref::<RuntimeError>() {
            return runtime_kind(e);
        }
        if let Some(e) = cause.downcast_ref::<ExportError>() {
            return match e {
                ExportError::Checkpoint(_) | ExportError::BadJson { .. } => Kind::Model,
                ExportError::Write(_) | ExportError::Io { .. } => Kind::Other,
                ExportError::OutputIsFile(_) | ExportError::OutputNotEmpty(_) => Kind::Setting(Some("output".into())),
                _ => Kind::Setting(named_option(&e.to_string())),
            };
        }
        if cause.downcast_ref::<CheckpointError>().is_some() || cause.downcast_ref::<HubError>().is_some() {
            return Kind::Model;
        }
    }
    Kind::Other
}

/// The first `--option` a message names, as its Python keyword (`--kv-cache` → `kv_cache`).
pub fn named_option(message: &str) -> Option<String> {
    let start = message.find("--")? + 2;
    let name: String = message[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    (!name.is_empty()).then(|| name.replace('-', "_"))
}

/// The exception for `message` of `kind`.
pub fn exception(py: Python<'_>, kind: Kind, message: String) -> PyErr {
    let made = (|| -> PyResult<PyErr> {
        let class = py.import("gpt2c._errors")?.getattr(kind.class())?;
        let value = match kind {
            Kind::Setting(field) => class.call1((message.clone(), field))?,
            _ => class.call1((message.clone(),))?,
        };
        Ok(PyErr::from_value(value))
    })();
    made.unwrap_or_else(|e| e)
}

/// Argument `field` as a `T`; a value of another type is a `SettingError` naming the argument and
/// what it takes (rather than pyo3's `TypeError`), as every other refusal is.
pub fn argument<'py, T>(value: &Bound<'py, PyAny>, field: &str, expected: &str) -> PyResult<T>
where
    T: pyo3::conversion::FromPyObjectOwned<'py>,
{
    value.extract::<T>().map_err(|_| {
        let got = value.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "another type".into());
        let shown = value.repr().map(|r| r.to_string()).unwrap_or_default();
        let shown: String = shown.chars().take(80).collect();
        let message = format!("`{field}`: expected {expected}, got {got} {shown}");
        exception(value.py(), Kind::Setting(Some(field.to_string())), message)
    })
}

/// An error from the crates as its exception, with the CLI's message.
pub fn from_anyhow(py: Python<'_>, err: &anyhow::Error) -> PyErr {
    exception(py, kind_of(err), gpt2c_cli::describe(err))
}
