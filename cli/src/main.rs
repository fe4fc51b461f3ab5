//! The `gpt2c` executable: [`gpt2c_cli::main`] over the process's arguments.

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(gpt2c_cli::main(std::env::args_os()))
}
