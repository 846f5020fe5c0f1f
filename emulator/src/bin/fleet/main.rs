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

mod demo;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use emulator::fleet::clients::Emulator;
use emulator::fleet::hub_device::DeviceConnection;
use emulator::fleet::load::{enroll, register_all, DpsTransport};
use futures_util::StreamExt;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

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
        /// The device's setup portal (device-portal), where the code is entered.
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
        let ca = emulator::tls::LocalCa::load_or_create(state_dir)?;
        ca.write_server_certificate(&[*address], cert, key)?;
        return Ok(());
    }
    let emulator = Emulator::load(&args.endpoints)?;
    match args.command {
        Command::IssueCertificate { .. } => Ok(()),
        Command::Codes { count, prefix } => {
            for n in 0..count {
                let id = format!("{prefix}-{n}-{}", std::process::id());
                emulator
                    .service
                    .put_enrollment(
                        &json!({ "registrationId": id, "attestation": { "type": "symmetricKey" } }),
                    )
                    .await?;
                let code = iot_credentials::ProvisioningCode {
                    id_scope: emulator.endpoints.dps.id_scope.clone(),
                    registration_id: id.clone(),
                    device_key: emulator.service.primary_key(&id).await?,
                    endpoint: emulator.endpoints.dps.device_endpoint.clone(),
                };
                println!("{}", code.expose());
            }
            Ok(())
        }
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
        } => simulate(&emulator, devices, rate, duration, &prefix).await,
        Command::Provision {
            devices,
            concurrency,
            transport,
            prefix,
        } => {
            let credentials = enroll(
                &emulator.service,
                &prefix,
                devices,
                &emulator.endpoints.dps.id_scope,
            )
            .await?;
            let result = register_all(
                &credentials,
                transport,
                concurrency,
                &emulator.registration_target(),
            )
            .await;
            println!(
                "{} devices over {:?}: {:.0} registrations/s, p50 {:?}, p99 {:?}, {} failed",
                result.devices,
                transport,
                result.rate(),
                result.latency(0.5),
                result.latency(0.99),
                result.failures
            );
            if let Some(error) = result.first_error {
                bail!(
                    "{} registrations failed; the first: {error}",
                    result.failures
                );
            }
            Ok(())
        }
    }
}

async fn simulate(
    emulator: &Emulator,
    devices: usize,
    rate: f64,
    duration: u64,
    prefix: &str,
) -> anyhow::Result<()> {
    let prefix = format!("{prefix}-{}", std::process::id());
    println!("Enrolling {devices} devices and provisioning them through DPS...");
    let credentials = enroll(
        &emulator.service,
        &prefix,
        devices,
        &emulator.endpoints.dps.id_scope,
    )
    .await?;
    let mut connections = Vec::new();
    for device in &credentials {
        let state = emulator
            .registrar
            .register(device, Some(json!({ "model": "simulator" })))
            .await?;
        let hub = state.assigned_hub.context("assigned without a hub")?;
        let endpoint = emulator.hub_endpoint(&hub)?;
        let mut connection =
            DeviceConnection::connect_device(&endpoint, &device.registration_id, &device.key)
                .await?;
        connection
            .report(&json!({ "provisioning": { "status": "provisioned", "hub": hub } }))
            .await?;
        connections.push(connection);
    }
    println!(
        "{} devices connected; sending {rate} message(s) per second each for {duration} s...",
        connections.len()
    );
    let interval = std::time::Duration::from_secs_f64(1.0 / rate.max(0.001));
    let started = Instant::now();
    let sent: Vec<usize> = futures_util::stream::iter(connections.into_iter().enumerate())
        .map(|(n, mut connection)| async move {
            let mut ticker = tokio::time::interval(interval);
            let mut count = 0;
            while started.elapsed() < std::time::Duration::from_secs(duration) {
                ticker.tick().await;
                let reading = json!({ "temperature": 20.0 + (n % 10) as f64 / 2.0, "sequence": count, "at": emulator::stamps::now() });
                if connection
                    .send_telemetry(reading.to_string().into(), &[("$.ct", "application/json"), ("$.ce", "utf-8")])
                    .await
                    .is_err()
                {
                    break;
                }
                count += 1;
            }
            connection.close().await;
            count
        })
        .buffer_unordered(usize::MAX)
        .collect()
        .await;
    let total: usize = sent.iter().sum();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{total} messages acknowledged in {elapsed:.1} s ({:.0}/s).",
        total as f64 / elapsed
    );
    Ok(())
}
