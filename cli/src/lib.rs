//! The `gpt2c` command line as a library: the executable (`src/main.rs`) and the Python package's
//! console script (`python/`) run the same [`main`]; the Python functions parse their keyword
//! arguments with the same clap definitions ([`commands`]) so every option keeps its CLI name.

mod choice;
pub mod commands;
mod output;

use std::ffi::OsString;
use std::io::Write;

use clap::Parser;

/// Runs the command line `args` (the program name first) and returns the exit status: 0 success,
/// 1 a failure the command reported (verify), 2 usage and I/O errors.
pub fn main(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> u8 {
    let args = match commands::Cli::try_parse_from(args) {
        Ok(args) => args,
        Err(err) => {
            // --help and --version print to stdout and succeed; usage errors go to stderr.
            let _ = err.print();
            return u8::try_from(err.exit_code()).unwrap_or(2);
        }
    };
    match commands::run(args) {
        Ok(()) => 0,
        Err(err) => {
            // A closed pipe (`gpt2c ... | head`) is not a failure.
            if err
                .chain()
                .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
            {
                return 0;
            }
            if err.downcast_ref::<commands::Failed>().is_some() {
                return 1;
            }
            let _ = writeln!(std::io::stderr().lock(), "error: {}", describe(&err));
            2
        }
    }
}

/// An error and its causes as the command line prints them (after `error: `).
pub fn describe(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        text.push_str(&format!("\n  caused by: {cause}"));
    }
    text
}
