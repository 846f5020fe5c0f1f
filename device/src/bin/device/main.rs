//! `device`: the device's one program, with two roles that run as two processes sharing a state
//! directory: `device portal` (the setup page) and `device sender` (the hub connection).
//!
//! One binary rather than two: each role would otherwise carry its own copy of tokio, rustls,
//! ring and the HTTP stack, doubling what a small device must store. Called through a link named
//! `device-portal` or `telemetry-sender` (the programs' former names), it takes that role and
//! that role's flags directly, as busybox does.

use clap::Parser;
use std::ffi::OsString;
use std::path::Path;

mod dps;
mod portal;
mod sender;

/// The role to run, with its own flags.
#[derive(Parser)]
#[command(version, about = "The device's setup portal and telemetry sender")]
enum Role {
    /// Serve the device's setup portal.
    Portal(portal::Args),
    /// Send a provisioned device's telemetry to its IoT hub.
    Sender(sender::Args),
}

impl Role {
    /// Reads the role from the name the binary was called by, else from the first argument.
    fn from_command_line() -> Self {
        let args: Vec<OsString> = std::env::args_os().collect();
        let called_as = args
            .first()
            .and_then(|program| Path::new(program).file_stem())
            .and_then(|stem| stem.to_str());
        match called_as {
            Some("device-portal") => Role::Portal(portal::Args::parse_from(args)),
            Some("telemetry-sender") => Role::Sender(sender::Args::parse_from(args)),
            _ => Role::parse_from(args),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let role = Role::from_command_line();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match role {
        Role::Portal(args) => portal::run(args).await,
        Role::Sender(args) => sender::run(args).await,
    }
}
