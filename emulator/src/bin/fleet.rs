//! `fleet`: drives the emulator the way devices and a backend do.
//!
//! - `fleet demo`: one enrollment and registration, narrated step by step for a newcomer.
//! - `fleet provision`: N devices enrolled in bulk, then registered concurrently; prints the rate.
//! - `fleet bench-dps`: the DPS benchmark of `make bench` (HTTPS and MQTT, with references).
//!
//! Every subcommand reads the emulator's endpoints.json.

// A command-line tool: printing to stdout is its job.
#![allow(clippy::print_stdout)]

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use emulator::endpoints::Endpoints;
use emulator::fleet::device::{finished, register_mqtt, DeviceCredentials, HttpsRegistrar};
use emulator::fleet::hub::HubService;
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
    /// Enroll and provision sample devices, explaining each step.
    Demo,
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
    ca: String,
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
            ca,
        })
    }

    fn device(&self, registration_id: &str, key: SharedAccessKey) -> DeviceCredentials {
        DeviceCredentials {
            id_scope: self.endpoints.dps.id_scope.clone(),
            registration_id: registration_id.to_owned(),
            key,
        }
    }

    fn hub_name(&self, host: &str) -> String {
        self.endpoints
            .hubs
            .iter()
            .find(|h| h.host_name == host)
            .map_or_else(|| host.to_owned(), |h| format!("{} ({host})", h.name))
    }

    fn hub(&self, host: &str) -> anyhow::Result<HubService> {
        let hub = self
            .endpoints
            .hubs
            .iter()
            .find(|h| h.host_name == host)
            .context("DPS assigned a hub that endpoints.json does not list")?;
        Ok(HubService::new(
            ServiceConnectionString::parse(&hub.connection_string)?,
            &self.ca,
        )?)
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
    let emulator = Emulator::load(&args.endpoints)?;
    match args.command {
        Command::Demo => demo(&emulator).await,
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

async fn demo(emulator: &Emulator) -> anyhow::Result<()> {
    let dps = &emulator.endpoints.dps;
    println!("Local Azure is running:");
    println!(
        "  Device Provisioning Service at {} (ID scope {})",
        dps.device_endpoint, dps.id_scope
    );
    for hub in &emulator.endpoints.hubs {
        println!("  IoT hub {} at {}", hub.name, hub.host_name);
    }
    println!();

    let id = format!("demo-thermostat-{}", std::process::id());
    println!("1. The CRM administrator enrolls device {id:?} (serial SN-0001, model TX-100,");
    println!("   sold to Contoso) as an individual enrollment with symmetric-key attestation.");
    let created = emulator
        .service
        .put_enrollment(&json!({
            "registrationId": id,
            "attestation": { "type": "symmetricKey" },
            "optionalDeviceInformation": { "serialNumber": "SN-0001", "model": "TX-100" },
            "initialTwin": {
                "tags": { "customer": "Contoso", "serialNumber": "SN-0001", "model": "TX-100" },
                "properties": { "desired": { "telemetryIntervalSeconds": 30 } }
            },
        }))
        .await?;
    println!(
        "   -> DPS stored the enrollment (etag {}) and generated the device's keys.",
        created["etag"].as_str().unwrap_or("?")
    );

    println!(
        "2. The device's key is read through the attestation-mechanism call (plain reads never"
    );
    println!("   return keys). It is what the customer's provisioning code carries; it is not shown here.");
    let key = emulator.service.primary_key(&id).await?;

    println!("3. The device registers with DPS over HTTPS, signing a SAS token with its key.");
    let device = emulator.device(&id, key);
    let mut step = emulator
        .registrar
        .start(&device, Some(json!({ "model": "TX-100" })))
        .await?;
    println!(
        "   -> DPS answered {} (operation {}) and asked the device to poll again in {} s.",
        json!(step.status.status),
        step.status.operation_id,
        step.retry_after.as_secs()
    );
    let state = loop {
        if let Some(state) = finished(&step)? {
            break state;
        }
        tokio::time::sleep(step.retry_after).await;
        step = emulator
            .registrar
            .poll(&device, &step.status.operation_id)
            .await?;
        println!(
            "   -> Polling the operation: {}.",
            json!(step.status.status)
        );
    };
    let hub_host = state
        .assigned_hub
        .clone()
        .context("assigned without a hub")?;
    println!(
        "4. Assigned to IoT hub {} as device {:?} (substatus {}).",
        emulator.hub_name(&hub_host),
        state.device_id.clone().unwrap_or_default(),
        state.substatus.map(|s| json!(s)).unwrap_or_default()
    );

    let hub = emulator.hub(&hub_host)?;
    let twin = hub
        .get(&format!(
            "twins/{}",
            state.device_id.clone().unwrap_or_default()
        ))
        .await?
        .context("the hub does not know the device")?;
    println!("5. The hub's registry now holds the device, its twin started from the enrollment:");
    println!("   tags {}", twin["tags"]);
    println!("   desired properties {}", twin["properties"]["desired"]);

    let second = format!("demo-sensor-{}", std::process::id());
    emulator
        .service
        .put_enrollment(
            &json!({ "registrationId": second, "attestation": { "type": "symmetricKey" } }),
        )
        .await?;
    let second_key = emulator.service.primary_key(&second).await?;
    println!("6. A second device, {second:?}, registers over MQTT instead of HTTPS.");
    let started = Instant::now();
    let second_state = register_mqtt(
        &dps.mqtt_host,
        dps.mqtt_port,
        emulator.tls.clone(),
        &emulator.device(&second, second_key),
        None,
    )
    .await?;
    println!(
        "   -> Assigned to IoT hub {} in {} ms.",
        emulator.hub_name(second_state.assigned_hub.as_deref().unwrap_or("?")),
        started.elapsed().as_millis()
    );

    println!("7. Someone tries to register {id:?} with a key of their own.");
    match emulator
        .registrar
        .register(&emulator.device(&id, SharedAccessKey::generate(64)), None)
        .await
    {
        Err(error) => println!("   -> Refused: {error}. No hub was assigned."),
        Ok(_) => bail!("a wrong key was accepted"),
    }
    println!();
    println!(
        "Done: two devices enrolled, authenticated and assigned to hubs, all on this machine."
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
