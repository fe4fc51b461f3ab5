//! Keyword arguments as command-line arguments: `gpt2c.export(m, o, quantize="int8")` is parsed
//! by the same clap definitions as `gpt2c export m -o o --quantize int8`, so both accept and
//! refuse the same things with the same messages.

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue};
use clap::{ArgAction, CommandFactory, Parser};
use gpt2c_cli::commands::{Cli, Command};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList, PyTuple};

use crate::errors::{Kind, exception};

/// The subcommand's clap definition.
pub fn command(name: &str) -> clap::Command {
    Cli::command().find_subcommand(name).cloned().unwrap_or_else(|| clap::Command::new("unknown"))
}

/// The options a subcommand takes, as keywords (`--kv-cache` → `kv_cache`), with their help.
pub fn keywords(name: &str) -> Vec<(String, String)> {
    command(name)
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            Some((long.replace('-', "_"), help))
        })
        .filter(|(k, _)| k != "help" && k != "version")
        .collect()
}

/// `subcommand`'s arguments: the options from `kwargs`, then `--`, then the positional values.
pub fn argv(
    py: Python<'_>,
    subcommand: &str,
    options: &[(&str, OsString)],
    kwargs: Option<&Bound<'_, PyDict>>,
    positional: &[OsString],
) -> PyResult<Vec<OsString>> {
    let cmd = command(subcommand);
    let mut out: Vec<OsString> = vec!["gpt2c".into(), subcommand.into()];
    for (flag, value) in options {
        out.push(format!("--{flag}").into());
        out.push(value.clone());
    }
    if let Some(kwargs) = kwargs {
        for (key, value) in kwargs.iter() {
            let key: String = key.extract()?;
            let long = key.replace('_', "-");
            let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(long.as_str())) else {
                let message = format!("gpt2c.{subcommand}() has no option `{key}` (see help(gpt2c.{subcommand}))");
                return Err(exception(py, Kind::Setting(Some(key)), message));
            };
            if value.is_none() {
                continue;
            }
            let flag = OsString::from(format!("--{long}"));
            let takes_value = arg.get_action().takes_values();
            if !takes_value {
                // A switch (`quiet=True`): set when true, absent when false.
                if !value.is_instance_of::<PyBool>() {
                    let message = format!("`{key}` is a switch: pass True or False");
                    return Err(exception(py, Kind::Setting(Some(key)), message));
                }
                if value.extract::<bool>()? {
                    out.push(flag);
                }
                continue;
            }
            let values: Vec<Bound<'_, PyAny>> = if value.is_instance_of::<PyList>() || value.is_instance_of::<PyTuple>()
            {
                value.try_iter()?.collect::<PyResult<_>>()?
            } else {
                vec![value]
            };
            let texts = values.iter().map(text).collect::<PyResult<Vec<OsString>>>()?;
            match (arg.get_value_delimiter(), matches!(arg.get_action(), ArgAction::Append)) {
                // A list option with a delimiter takes one joined value.
                (Some(d), _) => {
                    let mut joined = OsString::new();
                    for (i, t) in texts.iter().enumerate() {
                        if i > 0 {
                            joined.push(d.to_string());
                        }
                        joined.push(t);
                    }
                    out.push(flag);
                    out.push(joined);
                }
                // A repeatable option takes the flag once per value.
                (None, true) => {
                    for t in texts {
                        out.push(flag.clone());
                        out.push(t);
                    }
                }
                (None, false) if texts.len() == 1 => {
                    out.push(flag);
                    out.extend(texts);
                }
                (None, false) => {
                    let message = format!("`{key}` takes one value, not a list");
                    return Err(exception(py, Kind::Setting(Some(key)), message));
                }
            }
        }
    }
    out.push("--".into());
    out.extend(positional.iter().cloned());
    Ok(out)
}

/// A value as the text the command line would get: booleans as `true`/`false`, paths as paths.
fn text(value: &Bound<'_, PyAny>) -> PyResult<OsString> {
    if value.is_instance_of::<PyBool>() {
        return Ok(if value.extract::<bool>()? { "true" } else { "false" }.into());
    }
    if let Ok(path) = value.extract::<std::path::PathBuf>() {
        return Ok(path.into_os_string());
    }
    Ok(value.str()?.to_string().into())
}

/// Parses `argv` into the subcommand's arguments; a refusal is a `SettingError` naming the option.
pub fn parse(py: Python<'_>, argv: Vec<OsString>) -> PyResult<Command> {
    match Cli::try_parse_from(argv) {
        Ok(cli) => Ok(cli.command),
        Err(err) => {
            let field = match err.get(ContextKind::InvalidArg) {
                Some(ContextValue::String(arg)) => keyword_of(arg),
                _ => None,
            };
            // clap's message without its usage lines and tips.
            let rendered = err.render().to_string();
            let message = rendered
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.trim_start().starts_with("tip:"))
                .map(str::trim_end)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("\n");
            let message = message.strip_prefix("error: ").unwrap_or(&message).to_string();
            Err(exception(py, Kind::Setting(field), message))
        }
    }
}

/// `--quantize <QUANTIZE>` → `quantize`; `<MODEL>` → `model`.
fn keyword_of(arg: &str) -> Option<String> {
    let arg = arg.trim();
    let name = if let Some(long) = arg.strip_prefix("--") {
        long.split([' ', '=', '<']).next().unwrap_or_default().to_string()
    } else {
        arg.trim_start_matches('<').split('>').next().unwrap_or_default().to_ascii_lowercase()
    };
    (!name.is_empty()).then(|| name.replace('-', "_"))
}
