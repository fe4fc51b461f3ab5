//! `gpt2c._native`: the Python package's native module. It converts arguments and calls the
//! crates; the work and every check stay in the crates.
//!
//! - [`main`]: the command line itself (the `gpt2c` console script, `python -m gpt2c`);
//! - [`export`], [`verify`]: keyword arguments parsed by the CLI's own definitions ([`args`]);
//! - [`model::Model`]: an export loaded for generation, with transformers' keywords;
//! - errors become the package's exceptions ([`errors`]).

mod args;
mod errors;
mod model;

use std::ffi::OsString;
use std::path::PathBuf;

use gpt2c_cli::commands::{self, Command};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{Kind, argument, exception, from_anyhow};

/// Runs the command line `argv` (the program name first) and returns its exit status.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<OsString>) -> u8 {
    py.detach(|| gpt2c_cli::main(argv))
}

/// Exports a checkpoint (a folder or a Hub id) to an export folder; see `help(gpt2c.export)`.
#[pyfunction]
#[pyo3(signature = (model, output, options = None))]
fn export(
    py: Python<'_>,
    model: &Bound<'_, PyAny>,
    output: &Bound<'_, PyAny>,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<Py<PyAny>> {
    let model: Option<PathBuf> = argument(model, "model", "a checkpoint folder, a Hub model id or None")?;
    let output: PathBuf = argument(output, "output", "a folder path")?;
    // Quiet unless asked: a library call prints nothing.
    let kwargs = match options {
        Some(o) => o.copy()?,
        None => PyDict::new(py),
    };
    if !kwargs.contains("quiet")? {
        kwargs.set_item("quiet", true)?;
    }
    let positional: Vec<OsString> = model.map(PathBuf::into_os_string).into_iter().collect();
    let given = [("output", output.into_os_string())];
    let argv = args::argv(py, "export", &given, Some(&kwargs), &positional)?;
    let Command::Export(args) = args::parse(py, argv)? else {
        return Err(exception(py, Kind::Other, "export arguments parsed as another command".into()));
    };
    let summary = py.detach(|| commands::export::execute(&args)).map_err(|e| from_anyhow(py, &e))?;
    let value = serde_json::json!({
        "out_dir": summary.out_dir,
        "parameters": summary.parameters,
        "n_layer": summary.n_layer,
        "task": summary.task.name(),
        "total_bytes": summary.total_bytes,
        "files": summary.files,
        "external_data": summary.external_data,
        "seconds": summary.seconds,
        "warnings": summary.warnings,
    });
    Ok(pythonize::pythonize(py, &value)?.unbind())
}

/// Verifies an export folder; returns the JSON report (schema gpt2c.verify/1) as a dict.
#[pyfunction]
#[pyo3(signature = (export, options = None))]
fn verify(py: Python<'_>, export: &Bound<'_, PyAny>, options: Option<&Bound<'_, PyDict>>) -> PyResult<Py<PyAny>> {
    let export: PathBuf = argument(export, "export", "an export folder or .onnx file")?;
    let argv = args::argv(py, "verify", &[], options, &[export.into_os_string()])?;
    let Command::Verify(args) = args::parse(py, argv)? else {
        return Err(exception(py, Kind::Other, "verify arguments parsed as another command".into()));
    };
    let report = py.detach(|| commands::verify::report(&args)).map_err(|e| from_anyhow(py, &e))?;
    let value = serde_json::to_value(&report).map_err(|e| exception(py, Kind::Other, e.to_string()))?;
    Ok(pythonize::pythonize(py, &value)?.unbind())
}

/// A command's long help, as `gpt2c COMMAND --help` prints it.
#[pyfunction]
fn help(command: &str) -> String {
    args::command(command).render_long_help().to_string()
}

/// A command's options as keywords, with their one-line help.
#[pyfunction]
fn keywords(command: &str) -> Vec<(String, String)> {
    args::keywords(command)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(export, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(help, m)?)?;
    m.add_function(wrap_pyfunction!(keywords, m)?)?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::Stream>()?;
    Ok(())
}
