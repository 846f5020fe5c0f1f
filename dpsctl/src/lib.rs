//! `dpsctl`, the administrator's command line over the middleware's admin API (docs/dpsctl.md).
//!
//! Layout:
//! - [`cli`]: the command line (clap), with examples per verb.
//! - [`config`]: which API and key: options, environment, or the local endpoints file.
//! - [`api`]: the HTTP client: the key header, errors in plain words, paged lists.
//! - [`commands`]: one module per group of verbs.
//! - [`import_file`]: an import file checked with the handler's own rules and cut into batches.
//! - [`records`], [`output`]: how records, lists and timelines are written (table, JSON, CSV).
//! - [`progress`], [`qr`]: the import's progress bar and QR codes in the terminal.
//! - [`error`]: what can fail, and the exit status of each.

pub mod api;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod import_file;
pub mod output;
pub mod progress;
pub mod qr;
pub mod records;

use clap::CommandFactory;
use cli::{Cli, Command};
use error::{Error, Result};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

/// What a command works with: the API, standard output, and which streams are terminals.
pub struct Context<'a> {
    /// The admin API.
    pub api: api::Api,
    /// Where results go (standard output).
    pub out: &'a mut dyn Write,
    /// Standard error is a terminal: progress is drawn as a bar.
    pub stderr_terminal: bool,
    /// Standard input is a terminal: `delete` may ask.
    pub stdin_terminal: bool,
}

/// Runs the command line and answers the process's exit status; errors go to standard error.
pub fn run(cli: Cli) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let outcome = execute(cli, &mut out);
    let _ = out.flush();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "dpsctl: {error}");
            error.exit_code()
        }
    }
}

fn execute(cli: Cli, out: &mut dyn Write) -> Result<()> {
    // Completions need no API.
    if let Command::Completions(args) = &cli.command {
        clap_complete::generate(args.shell, &mut Cli::command(), "dpsctl", out);
        return Ok(());
    }
    let cwd = std::env::current_dir().map_err(|source| Error::File {
        what: "reading the working directory".into(),
        source,
    })?;
    let target = config::Target::resolve(&cli.target, &cwd)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::File {
            what: "starting the runtime".into(),
            source,
        })?;
    let mut ctx = Context {
        api: api::Api::new(target)?,
        out,
        stderr_terminal: std::io::stderr().is_terminal(),
        stdin_terminal: std::io::stdin().is_terminal(),
    };
    runtime.block_on(dispatch(&mut ctx, cli.command))
}

async fn dispatch(ctx: &mut Context<'_>, command: Command) -> Result<()> {
    use commands::{code, devices, enrollments, import, list};
    match command {
        Command::Enroll(args) => enrollments::enroll(ctx, args).await,
        Command::Import(args) => import::import(ctx, args).await,
        Command::List(args) => list::list(ctx, args).await,
        Command::Show(args) => devices::show(ctx, args).await,
        Command::Code(args) => code::code(ctx, args).await,
        Command::Desired(args) => devices::desired(ctx, args).await,
        Command::Command(args) => devices::command(ctx, args).await,
        Command::Disable(args) => enrollments::set_enabled(ctx, args, false).await,
        Command::Enable(args) => enrollments::set_enabled(ctx, args, true).await,
        Command::RotateKey(args) => enrollments::rotate_key(ctx, args).await,
        Command::Delete(args) => enrollments::delete(ctx, args).await,
        Command::Completions(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent_and_every_verb_has_examples() {
        Cli::command().debug_assert();
        for verb in Cli::command().get_subcommands() {
            let help = verb
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.contains("dpsctl "),
                "{} has no examples",
                verb.get_name()
            );
        }
    }
}
