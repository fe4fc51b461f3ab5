//! What the commands print. Results go to stdout through [`stdout`], whose every write is
//! checked: an error, a closed pipe (`gpt2c inspect m.onnx | head -1`) included, is returned, and
//! `main` ends a command whose reader went away as a success. Notes and warnings go to stderr and
//! are dropped when it cannot be written: telling the user is never worth a failure.

use std::fmt::Display;
use std::io::Write;

/// Standard output, locked, for `writeln!(out, …)?`.
pub fn stdout() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

/// `note: …` on stderr.
#[cfg(feature = "run")]
pub fn note(message: impl Display) {
    let _ = writeln!(std::io::stderr(), "note: {message}");
}

/// `warning: …` on stderr.
pub fn warning(message: impl Display) {
    let _ = writeln!(std::io::stderr(), "warning: {message}");
}

#[cfg(feature = "run")]
/// Reads a text file the user named, refusing one over `limit` bytes before reading it (a text of
/// gigabytes is a wrong path, not an input) and naming `what` it is for.
pub fn read_text(path: &std::path::Path, what: &str, limit: u64) -> anyhow::Result<String> {
    use anyhow::Context;
    let size = std::fs::metadata(path).with_context(|| format!("{}: cannot read the {what}", path.display()))?.len();
    if size > limit {
        anyhow::bail!("{}: the {what} is {size} bytes; at most {limit} are read", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the {what}", path.display()))
}
