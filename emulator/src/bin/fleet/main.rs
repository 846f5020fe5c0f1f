//! `fleet`: drives the emulator the way devices and a backend do.
//!
//! - `fleet demo`: the whole flow through the admin API, narrated step by step for a newcomer.
//! - `fleet provision`: N devices enrolled in bulk, then registered concurrently; prints the rate.
//! - `fleet simulate`: N devices provisioned through DPS, connected to their hubs, sending
//!   telemetry at a rate.
//! - `fleet bench-dps`: the DPS benchmark of `make bench` (HTTPS and MQTT, with references).
//! - `fleet bench-hub`: the hub benchmark of `make bench` (connections, messages per second, memory
//!   per connection), against the emulator or a reference broker.
//! - `fleet storm`: N devices powered on at once, provisioned by the device crate's own client
//!   (with jitter or without); time until all are connected, peak registration rate, 429s.
//! - `fleet soak`: a fleet kept connected, reporting and re-provisioning while the servers'
//!   memory is sampled into a CSV (and drawn as an SVG); `fleet plot-memory` redraws a CSV.
//! - `fleet bench-import`: a CRM export imported through the admin API next to DPS's bulk
//!   creates alone, the ceiling of that path.
//! - `fleet issue-certificate`: a server certificate from the emulator's CA (for the reference
//!   broker).
//!
//! Every subcommand reads the emulator's endpoints.json.

// A command-line tool: printing to stdout is its job.
#![allow(clippy::print_stdout)]

mod admin;
mod demo;
mod import;
mod latency;
mod storm;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use emulator::endpoints::Endpoints;
use emulator::fleet::device::{DeviceCredentials, HttpsRegistrar};
use emulator::fleet::hub_device::{DeviceConnection, Endpoint};
use emulator::fleet::hub_load::{burst_all, connect_all, memory_kib, Login, SimulatedDevice};
use emulator::fleet::load::{
    enroll, one_connection_client, register_all, DpsTransport, Measurement, Target,
};
use emulator::fleet::service::DpsService;
use emulator::fleet::{client_tls, https_client};
use futures_util::StreamExt;
use iot_credentials::{ServiceConnectionString, SharedAccessKey};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
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
        /// The samples (from `fleet soak --csv`).
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
    BenchHub {
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
    BenchEventLatency {
        /// Reports to time.
        #[arg(long, default_value_t = 200)]
        samples: usize,
    },
    /// Import ROWS rows of a CSV export through the admin API, BATCH rows a request, and the same
    /// number of DPS bulk creates alone (the ceiling of that path), and compare the rates.
    BenchImport {
        /// Rows to import.
        #[arg(long, default_value_t = 10_000)]
        rows: usize,
        /// Rows a request (each request must finish within the host's 230 s).
        #[arg(long, default_value_t = 2_000)]
        batch: usize,
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
    /// The DPS benchmark: registrations per second over HTTPS and MQTT, each next to a
    /// reference measured in the same run (bare requests, refused connections).
    BenchDps {
        /// Devices per transport.
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Registrations in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
}

struct Emulator {
    endpoints: Endpoints,
    service: DpsService,
    registrar: HttpsRegistrar,
    tls: Arc<rustls::ClientConfig>,
}

impl Emulator {
    fn load(path: &PathBuf) -> anyhow::Result<Self> {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let endpoints: Endpoints = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not an emulator endpoints.json", path.display()))?;
        let ca = std::fs::read_to_string(&endpoints.ca_certificate_path).with_context(|| {
            format!(
                "reading the CA at {}",
                endpoints.ca_certificate_path.display()
            )
        })?;
        let connection = ServiceConnectionString::parse(&endpoints.dps.service_connection_string)?;
        let http = https_client(&ca)?;
        Ok(Self {
            service: DpsService::new(connection, &ca)?,
            registrar: HttpsRegistrar::new(http, &endpoints.dps.device_endpoint),
            tls: Arc::new(client_tls(&ca)?),
            endpoints,
        })
    }

    fn device(&self, registration_id: &str, key: SharedAccessKey) -> DeviceCredentials {
        DeviceCredentials {
            id_scope: self.endpoints.dps.id_scope.clone(),
            registration_id: registration_id.to_owned(),
            key,
        }
    }

    /// The hub with this host name, as endpoints.json lists it.
    fn hub_entry(&self, host: &str) -> anyhow::Result<&emulator::endpoints::HubEndpoints> {
        self.endpoints
            .hubs
            .iter()
            .find(|h| h.host_name == host)
            .context("DPS assigned a hub that endpoints.json does not list")
    }

    fn hub_name(&self, host: &str) -> String {
        self.hub_entry(host)
            .map_or_else(|_| host.to_owned(), |h| format!("{} ({host})", h.name))
    }

    fn hub_endpoint(&self, host: &str) -> anyhow::Result<Endpoint> {
        let hub = self.hub_entry(host)?;
        Ok(Endpoint {
            address: std::net::SocketAddr::new(host.parse()?, hub.mqtt_port),
            host: host.to_owned(),
            tls: self.tls.clone(),
        })
    }
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
    if let Command::PlotMemory { csv, svg, title } = &args.command {
        return storm::plot(csv, svg, title);
    }
    let emulator = Emulator::load(&args.endpoints)?;
    match args.command {
        Command::IssueCertificate { .. } | Command::PlotMemory { .. } => Ok(()),
        Command::Storm {
            devices,
            transport,
            no_jitter,
            deadline,
            label,
        } => {
            storm::run_storm(
                &emulator,
                devices,
                transport,
                !no_jitter,
                std::time::Duration::from_secs(deadline),
                &label,
            )
            .await
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
            storm::run_soak(
                &emulator,
                storm::SoakArgs {
                    minutes,
                    devices,
                    telemetry_seconds,
                    report_seconds,
                    reprovision_seconds,
                    sample_seconds,
                    processes: &processes,
                    csv: &csv,
                    svg: svg.as_deref(),
                },
            )
            .await
        }
        Command::BenchEventLatency { samples } => latency::run(&emulator, samples).await,
        Command::BenchImport { rows, batch } => import::run(&emulator, rows, batch).await,
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
        Command::BenchHub {
            devices,
            messages,
            window,
            server_pid,
            broker,
            label,
        } => {
            bench_hub(
                &emulator, devices, messages, window, server_pid, broker, &label,
            )
            .await
        }
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
            let result = measure(&emulator, &credentials, transport, concurrency).await;
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
        Command::BenchDps {
            devices,
            concurrency,
        } => bench_dps(&emulator, devices, concurrency).await,
    }
}

async fn measure(
    emulator: &Emulator,
    devices: &[DeviceCredentials],
    transport: DpsTransport,
    concurrency: usize,
) -> Measurement {
    let target = Target {
        https_endpoint: emulator.endpoints.dps.device_endpoint.clone(),
        mqtt_host: emulator.endpoints.dps.mqtt_host.clone(),
        mqtt_port: emulator.endpoints.dps.mqtt_port,
        tls: emulator.tls.clone(),
    };
    register_all(devices, transport, concurrency, &target).await
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
                let reading = json!({ "temperature": 20.0 + (n % 10) as f64 / 2.0, "sequence": count, "at": emulator::azure_format::now() });
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

async fn bench_hub(
    emulator: &Emulator,
    devices: usize,
    messages: usize,
    window: usize,
    server_pid: u32,
    broker: Option<std::net::SocketAddr>,
    label: &str,
) -> anyhow::Result<()> {
    let run = std::process::id();
    let simulated: Vec<SimulatedDevice> = match broker {
        Some(address) => (0..devices)
            .map(|n| SimulatedDevice {
                endpoint: Endpoint {
                    address,
                    host: address.ip().to_string(),
                    tls: emulator.tls.clone(),
                },
                device_id: format!("bench-{run}-{n:06}"),
                login: Login::Anonymous,
            })
            .collect(),
        None => {
            // Devices are provisioned the real way: enrolled in bulk, registered through DPS.
            let credentials = enroll(
                &emulator.service,
                &format!("bench-hub-{run}"),
                devices,
                &emulator.endpoints.dps.id_scope,
            )
            .await?;
            let registered = measure(emulator, &credentials, DpsTransport::Https, 64).await;
            if let Some(error) = registered.first_error {
                bail!(
                    "{} registrations failed; the first: {error}",
                    registered.failures
                );
            }
            let mut simulated = Vec::new();
            for device in &credentials {
                let state = emulator
                    .service
                    .registration(&device.registration_id)
                    .await?;
                let hub = state.assigned_hub.context("assigned without a hub")?;
                simulated.push(SimulatedDevice {
                    endpoint: emulator.hub_endpoint(&hub)?,
                    device_id: device.registration_id.clone(),
                    login: Login::Device(device.key.clone()),
                });
            }
            simulated
        }
    };
    let (before, _) = memory_kib(server_pid).context("cannot read the server's memory")?;
    let (mut connections, errors, connect_time) = connect_all(&simulated, 64).await;
    if let Some(error) = errors.first() {
        bail!("{} connections failed; the first: {error}", errors.len());
    }
    // Give the server a moment to finish per-connection work (events, bookkeeping) before the
    // memory reading: there is no signal for "idle".
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (connected, _) = memory_kib(server_pid).context("cannot read the server's memory")?;
    let payload = bytes::Bytes::from_static(br#"{"temperature":21.5,"humidity":40,"unit":"C"}"#);
    let burst = burst_all(&mut connections, messages, window, payload).await;
    let (_, peak) = memory_kib(server_pid).context("cannot read the server's memory")?;
    for connection in connections {
        connection.close().await;
    }
    if burst.failed_connections > 0 {
        bail!(
            "{} connections failed during the burst",
            burst.failed_connections
        );
    }
    let per_connection = connected.saturating_sub(before) as f64 / devices as f64;
    println!(
        "| {label} | {devices} | {:.1} s | {per_connection:.1} KiB | {:.0} | {} | {peak} KiB |",
        connect_time.as_secs_f64(),
        burst.rate(),
        burst.acknowledged,
    );
    Ok(())
}

async fn bench_dps(emulator: &Emulator, devices: usize, concurrency: usize) -> anyhow::Result<()> {
    let scope = &emulator.endpoints.dps.id_scope;
    let run = std::process::id();

    // Reference for HTTPS: each simulated device opens its own TLS connection and sends one
    // request the service answers without any DPS work (an unknown route). A registration is the
    // same connection plus a second request and the DPS logic; the ratio shows what that costs.
    let url = format!(
        "https://{}/reference-probe?api-version=2021-06-01",
        emulator.endpoints.dps.device_endpoint
    );
    let started = Instant::now();
    futures_util::stream::iter(0..devices)
        .map(|_| {
            let url = url.clone();
            async move {
                if let Ok(http) = one_connection_client(&emulator.tls) {
                    let _ = http.get(&url).send().await.map(|r| r.status());
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let bare_requests = devices as f64 / started.elapsed().as_secs_f64();

    let https_devices = enroll(
        &emulator.service,
        &format!("bench-https-{run}"),
        devices,
        scope,
    )
    .await?;
    let https = measure(emulator, &https_devices, DpsTransport::Https, concurrency).await;

    // Reference for MQTT: connections refused right after CONNECT (unknown registration): the
    // TLS handshake and one round trip, without registration.
    let unknown: Vec<DeviceCredentials> = (0..devices)
        .map(|n| {
            emulator.device(
                &format!("bench-unknown-{run}-{n}"),
                SharedAccessKey::generate(32),
            )
        })
        .collect();
    let refused = measure(emulator, &unknown, DpsTransport::Mqtt, concurrency).await;
    let refused_rate = refused.devices as f64 / refused.elapsed.as_secs_f64();

    let mqtt_devices = enroll(
        &emulator.service,
        &format!("bench-mqtt-{run}"),
        devices,
        scope,
    )
    .await?;
    let mqtt = measure(emulator, &mqtt_devices, DpsTransport::Mqtt, concurrency).await;

    println!("| transport | devices | registrations/s | p50 | p99 | failed | reference (same run) | ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| HTTPS | {} | {:.0} | {:.1} ms | {:.1} ms | {} | {:.0} connections/s with one bare request | {:.2} |",
        https.devices,
        https.rate(),
        https.latency(0.5).as_secs_f64() * 1000.0,
        https.latency(0.99).as_secs_f64() * 1000.0,
        https.failures,
        bare_requests,
        https.rate() / bare_requests
    );
    println!(
        "| MQTT | {} | {:.0} | {:.1} ms | {:.1} ms | {} | {:.0} refused connects/s (TLS + CONNECT) | {:.2} |",
        mqtt.devices,
        mqtt.rate(),
        mqtt.latency(0.5).as_secs_f64() * 1000.0,
        mqtt.latency(0.99).as_secs_f64() * 1000.0,
        mqtt.failures,
        refused_rate,
        mqtt.rate() / refused_rate
    );
    for (name, result) in [("HTTPS", &https), ("MQTT", &mqtt)] {
        if let Some(error) = &result.first_error {
            bail!(
                "{} {name} registrations failed; the first: {error}",
                result.failures
            );
        }
    }
    Ok(())
}
