//! `bench`: the emulator-side benchmarks of `make bench`, one command each.
//!
//! - `bench dps`: DPS registrations per second over HTTPS and MQTT, with references.
//! - `bench hub`: hub connections, messages per second and memory per connection, against the
//!   emulator or a reference broker.
//! - `bench event-latency`: from a device's report to the middleware showing it.
//! - `bench import`: a CRM export imported through the admin API next to DPS's bulk creates.
//! - `bench storm`: N devices powered on at once, provisioned by the device crate's own client.
//! - `bench soak`: a fleet kept busy while the servers' memory is sampled into a CSV (and drawn
//!   as an SVG); `bench plot-memory` redraws a CSV.
//!
//! Every command reads the emulator's endpoints.json; `handler-bench` is the handler's.

// A command-line tool: printing results is its job.
#![allow(clippy::print_stdout)]

mod dps;
mod hub;
mod import;
mod latency;
mod soak;
mod storm;

use clap::{Parser, Subcommand};
use emulator::fleet::clients::Emulator;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    version,
    about = "Measure the emulator and the middleware for `make bench`"
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
    /// A provisioning storm: N freshly enrolled devices power on at the same moment, register
    /// through DPS with the device client's backoff, connect to their hubs and report. Prints a
    /// results row: label, devices, transport, time until all are connected, peak
    /// registrations completed in one second, retries DPS asked for, devices that gave up.
    Storm {
        /// Devices.
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        /// How devices reach DPS.
        #[arg(long, value_enum, default_value = "https")]
        transport: device::provision::DpsTransport,
        /// Retries without jitter: every refused device waits exactly as long (synchronized).
        #[arg(long)]
        no_jitter: bool,
        /// A device gives up after this many seconds.
        #[arg(long, default_value_t = 1800)]
        deadline: u64,
        /// Label for the results row.
        #[arg(long, default_value = "storm")]
        label: String,
    },
    /// A soak: N devices kept connected for MINUTES, each sending telemetry, reporting a
    /// property and now and then registering again, while the named processes' resident memory
    /// is sampled into a CSV (seconds,process,rss_kib).
    Soak {
        /// How long, in minutes (fractions allowed).
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Devices.
        #[arg(long, default_value_t = 200)]
        devices: usize,
        /// Seconds between a device's telemetry messages.
        #[arg(long, default_value_t = 1.0)]
        telemetry_seconds: f64,
        /// Seconds between a device's reported-property patches.
        #[arg(long, default_value_t = 10.0)]
        report_seconds: f64,
        /// Seconds between a device's re-provisionings (turns spread over the fleet).
        #[arg(long, default_value_t = 120.0)]
        reprovision_seconds: f64,
        /// Seconds between memory samples.
        #[arg(long, default_value_t = 5.0)]
        sample_seconds: f64,
        /// A process to sample, NAME=PID (repeat: the emulator, the handler).
        #[arg(long = "process", value_name = "NAME=PID")]
        processes: Vec<String>,
        /// Where to write the samples.
        #[arg(long)]
        csv: PathBuf,
        /// Where to draw the memory-over-time chart (SVG).
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Draws a soak's CSV as an SVG chart of memory over time.
    PlotMemory {
        /// The samples (from `bench soak --csv`).
        #[arg(long)]
        csv: PathBuf,
        /// Where to write the chart.
        #[arg(long)]
        svg: PathBuf,
        /// The chart's title.
        #[arg(long, default_value = "Resident memory during the soak")]
        title: String,
    },
    /// Hub load: N connections each sending a burst of QoS 1 telemetry; reports messages per
    /// second and the server's memory per connection.
    Hub {
        /// Connections.
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Messages per connection.
        #[arg(long, default_value_t = 20)]
        messages: usize,
        /// Unacknowledged messages allowed per connection.
        #[arg(long, default_value_t = 10)]
        window: usize,
        /// The server process whose memory to read.
        #[arg(long)]
        server_pid: u32,
        /// Load a plain MQTT broker at this address instead of the emulator's hubs.
        #[arg(long)]
        broker: Option<std::net::SocketAddr>,
        /// Label for the results line.
        #[arg(long, default_value = "emulator")]
        label: String,
    },
    /// Latency from an event entering a hub to its effect being readable through the admin API:
    /// a device reports a property SAMPLES times; each time, the device record is read until it
    /// shows the value.
    EventLatency {
        /// Reports to time.
        #[arg(long, default_value_t = 200)]
        samples: usize,
    },
    /// Import ROWS rows of a CSV export through the admin API, BATCH rows a request, and the same
    /// number of DPS bulk creates alone (the ceiling of that path), and compare the rates.
    Import {
        /// Rows to import.
        #[arg(long, default_value_t = 10_000)]
        rows: usize,
        /// Rows a request (each request must finish within the host's 230 s).
        #[arg(long, default_value_t = 2_000)]
        batch: usize,
    },
    /// The DPS benchmark: registrations per second over HTTPS and MQTT, each next to a
    /// reference measured in the same run (bare requests, refused connections).
    Dps {
        /// Devices per transport.
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Registrations in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
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
    if let Command::PlotMemory { csv, svg, title } = &args.command {
        return soak::plot(csv, svg, title);
    }
    let emulator = Emulator::load(&args.endpoints)?;
    match args.command {
        Command::PlotMemory { .. } => Ok(()),
        Command::Dps {
            devices,
            concurrency,
        } => dps::run(&emulator, devices, concurrency).await,
        Command::Hub {
            devices,
            messages,
            window,
            server_pid,
            broker,
            label,
        } => {
            let args = hub::HubArgs {
                devices,
                messages,
                window,
                server_pid,
                broker,
                label: &label,
            };
            hub::run(&emulator, args).await
        }
        Command::EventLatency { samples } => latency::run(&emulator, samples).await,
        Command::Import { rows, batch } => import::run(&emulator, rows, batch).await,
        Command::Storm {
            devices,
            transport,
            no_jitter,
            deadline,
            label,
        } => {
            let deadline = std::time::Duration::from_secs(deadline);
            storm::run_storm(&emulator, devices, transport, !no_jitter, deadline, &label).await
        }
        Command::Soak {
            minutes,
            devices,
            telemetry_seconds,
            report_seconds,
            reprovision_seconds,
            sample_seconds,
            processes,
            csv,
            svg,
        } => {
            let args = soak::SoakArgs {
                minutes,
                devices,
                telemetry_seconds,
                report_seconds,
                reprovision_seconds,
                sample_seconds,
                processes: &processes,
                csv: &csv,
                svg: svg.as_deref(),
            };
            soak::run(&emulator, args).await
        }
    }
}
