//! `dpsctl`: parses the command line and runs it; everything else is in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    dpsctl::run(dpsctl::cli::Cli::parse())
}
