//! `fleet simulate`: N devices provisioned through DPS, connected to their hubs, sending
//! telemetry at a rate.

use anyhow::Context;
use emulator::fleet::clients::Emulator;
use emulator::fleet::hub_device::DeviceConnection;
use emulator::fleet::load::enroll;
use futures_util::StreamExt;
use serde_json::json;
use std::time::Instant;

/// Provisions `devices` devices, connects each, sends `rate` messages a second each for
/// `duration` seconds, and prints how many were acknowledged.
pub async fn run(
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
