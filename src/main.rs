//! The `rbdelta` command: parses arguments, loads the config, runs one
//! subcommand and maps its outcome to an exit code. All logic lives in the
//! library; see `cli/` for the per-command shells.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
