//! `fleet`: drives the emulator the way devices and a backend do.
//!
//! - `fleet demo`: the whole flow through the admin API, narrated step by step for a newcomer.
//! - `fleet provision`: N devices enrolled in bulk, then registered concurrently; prints the rate.
//! - `fleet simulate`: N devices provisioned through DPS, connected to their hubs, sending
//!   telemetry at a rate.
//! - `fleet codes`: N devices enrolled directly in DPS, their provisioning codes printed.
//! - `fleet issue-certificate`: a server certificate from the emulator's CA (for the reference
//!   broker).
//!
//! Every subcommand reads the emulator's endpoints.json. The benchmarks of `make bench` are
//! the `bench` tool's (bench/).

// A command-line tool: printing to stdout is its job.
#![allow(clippy::print_stdout)]

mod certificate;
mod codes;
mod demo;
mod provision;
mod simulate;

use clap::{Parser, Subcommand};
use emulator::fleet::clients::Emulator;
use emulator::fleet::load::DpsTransport;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "Drive the local DPS and IoT hubs like a fleet of devices"
)]
struct Args {
    /// The emulator's endpoints.json.
    #[arg(long, env = "EMULATOR_ENDPOINTS")]
    endpoints: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll sample devices through the admin API, provision them, connect one to its hub and
    /// drive it from the backend, explaining each step.
    Demo {
        /// Receive the middleware's status notifications on this port (127.0.0.1), as a Logic
        /// App would; the function app's NOTIFY_WEBHOOK_URL must point here.
        #[arg(long)]
        webhook_port: Option<u16>,
        /// The secret the notifications are signed with (NOTIFY_WEBHOOK_SECRET).
        #[arg(long, env = "NOTIFY_WEBHOOK_SECRET", hide_env_values = true)]
        webhook_secret: Option<String>,
        /// The device's setup portal (`device portal`), where the code is entered.
        #[arg(long)]
        portal_url: Option<String>,
        /// The dpsctl binary: step 3 shows the code as an administrator gets it, with
        /// `dpsctl code` (its QR code drawn in the terminal).
        #[arg(long)]
        dpsctl: Option<std::path::PathBuf>,
    },
    /// Provision N devices through DPS, connect each to its hub, send telemetry at a rate.
    Simulate {
        /// Number of devices.
        #[arg(long, default_value_t = 10)]
        devices: usize,
        /// Messages per second per device.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// How long to send, in seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Registry id prefix.
        #[arg(long, default_value = "sim")]
        prefix: String,
    },
    /// Enroll N devices directly in DPS and print their provisioning codes, one per line (for
    /// benchmarks and scripts that skip the middleware).
    Codes {
        /// Number of devices.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Registration id prefix.
        #[arg(long, default_value = "bench-device")]
        prefix: String,
    },
    /// Write a server certificate for ADDRESS signed by the emulator's CA.
    IssueCertificate {
        /// The emulator's state directory (holds the CA).
        #[arg(long)]
        state_dir: PathBuf,
        /// Address the certificate names.
        #[arg(long)]
        address: std::net::IpAddr,
        /// Where to write the certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Where to write the private key (PEM).
        #[arg(long)]
        key: PathBuf,
    },
    /// Enroll N devices in bulk, then register them concurrently and report the rate.
    Provision {
        /// Number of devices.
        #[arg(long, default_value_t = 100)]
        devices: usize,
        /// Registrations in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// How devices reach DPS.
        #[arg(long, value_enum, default_value = "https")]
        transport: DpsTransport,
        /// Registration id prefix (ids are PREFIX-000000, PREFIX-000001, ...).
        #[arg(long, default_value = "fleet")]
        prefix: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Command::IssueCertificate {
        state_dir,
        address,
        cert,
        key,
    } = &args.command
    {
        return certificate::issue(state_dir, *address, cert, key);
    }
    let emulator = Emulator::load(&args.endpoints)?;
    match args.command {
        Command::IssueCertificate { .. } => Ok(()),
        Command::Codes { count, prefix } => codes::run(&emulator, count, &prefix).await,
        Command::Demo {
            webhook_port,
            webhook_secret,
            portal_url,
            dpsctl,
        } => {
            demo::run(
                &emulator,
                webhook_port.zip(webhook_secret),
                portal_url.as_deref(),
                dpsctl.as_deref(),
            )
            .await
        }
        Command::Simulate {
            devices,
            rate,
            duration,
            prefix,
        } => simulate::run(&emulator, devices, rate, duration, &prefix).await,
        Command::Provision {
            devices,
            concurrency,
            transport,
            prefix,
        } => provision::run(&emulator, devices, concurrency, transport, &prefix).await,
    }
}
