//! `bench hub`: N connections each sending a burst of QoS 1 telemetry, against the emulator's
//! hubs or a reference broker; reports messages per second and the server's memory per
//! connection.

use anyhow::{bail, Context};
use bench::hub_load::{burst_all, connect_all, Login, SimulatedDevice};
use bench::memory::{self, Memory};
use emulator::fleet::clients::Emulator;
use emulator::fleet::hub_device::Endpoint;
use emulator::fleet::load::{enroll, register_all, DpsTransport};
use std::net::SocketAddr;

/// What `bench hub` is told.
pub struct HubArgs<'a> {
    /// Connections.
    pub devices: usize,
    /// Messages per connection.
    pub messages: usize,
    /// Unacknowledged messages allowed per connection.
    pub window: usize,
    /// The server process whose memory to read.
    pub server_pid: u32,
    /// A plain MQTT broker to load instead of the emulator's hubs.
    pub broker: Option<SocketAddr>,
    /// Label for the results line.
    pub label: &'a str,
}

/// Connects, bursts, and prints one results row.
pub async fn run(emulator: &Emulator, args: HubArgs<'_>) -> anyhow::Result<()> {
    let simulated = match args.broker {
        Some(address) => broker_devices(emulator, address, args.devices),
        None => provisioned_devices(emulator, args.devices).await?,
    };
    let server = || memory::read(args.server_pid).context("cannot read the server's memory");
    let before = server()?;
    let (mut connections, errors, connect_time) = connect_all(&simulated, 64).await;
    if let Some(error) = errors.first() {
        bail!("{} connections failed; the first: {error}", errors.len());
    }
    // Give the server a moment to finish per-connection work (events, bookkeeping) before the
    // memory reading: there is no signal for "idle".
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let connected = server()?;
    let payload = bytes::Bytes::from_static(br#"{"temperature":21.5,"humidity":40,"unit":"C"}"#);
    let burst = burst_all(&mut connections, args.messages, args.window, payload).await;
    let Memory { peak_kib: peak, .. } = server()?;
    for connection in connections {
        connection.close().await;
    }
    if burst.failed_connections > 0 {
        bail!(
            "{} connections failed during the burst",
            burst.failed_connections
        );
    }
    let per_connection =
        connected.resident_kib.saturating_sub(before.resident_kib) as f64 / args.devices as f64;
    println!(
        "| {} | {} | {:.1} s | {per_connection:.1} KiB | {:.0} | {} | {peak} KiB |",
        args.label,
        args.devices,
        connect_time.as_secs_f64(),
        burst.rate(),
        burst.acknowledged,
    );
    Ok(())
}

/// Anonymous clients of a plain broker.
fn broker_devices(
    emulator: &Emulator,
    address: SocketAddr,
    devices: usize,
) -> Vec<SimulatedDevice> {
    let run = std::process::id();
    (0..devices)
        .map(|n| SimulatedDevice {
            endpoint: Endpoint {
                address,
                host: address.ip().to_string(),
                tls: emulator.tls.clone(),
            },
            device_id: format!("bench-{run}-{n:06}"),
            login: Login::Anonymous,
        })
        .collect()
}

/// Devices provisioned the real way: enrolled in bulk, registered through DPS, each logging in
/// to the hub DPS assigned it.
async fn provisioned_devices(
    emulator: &Emulator,
    devices: usize,
) -> anyhow::Result<Vec<SimulatedDevice>> {
    let credentials = enroll(
        &emulator.service,
        &format!("bench-hub-{}", std::process::id()),
        devices,
        &emulator.endpoints.dps.id_scope,
    )
    .await?;
    let target = emulator.registration_target();
    let registered = register_all(&credentials, DpsTransport::Https, 64, &target).await;
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
    Ok(simulated)
}
