//! `bench dps`: registrations per second over HTTPS and MQTT, each next to a reference measured
//! in the same run (bare requests, refused connections).

use anyhow::bail;
use bench::figures::{millis, table_header};
use emulator::fleet::clients::Emulator;
use emulator::fleet::device::DeviceCredentials;
use emulator::fleet::load::{
    enroll, one_connection_client, register_all, DpsTransport, Measurement,
};
use futures_util::StreamExt;
use iot_credentials::SharedAccessKey;
use std::time::Instant;

/// Registers `devices` fresh devices per transport, `concurrency` at a time, and prints the table.
pub async fn run(emulator: &Emulator, devices: usize, concurrency: usize) -> anyhow::Result<()> {
    let scope = &emulator.endpoints.dps.id_scope;
    let run = std::process::id();
    let target = emulator.registration_target();
    let bare_requests = bare_request_rate(emulator, devices, concurrency).await;

    let https_devices = enroll(
        &emulator.service,
        &format!("bench-https-{run}"),
        devices,
        scope,
    )
    .await?;
    let https = register_all(&https_devices, DpsTransport::Https, concurrency, &target).await;

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
    let refused = register_all(&unknown, DpsTransport::Mqtt, concurrency, &target).await;
    let refused_rate = refused.devices as f64 / refused.elapsed.as_secs_f64();

    let mqtt_devices = enroll(
        &emulator.service,
        &format!("bench-mqtt-{run}"),
        devices,
        scope,
    )
    .await?;
    let mqtt = register_all(&mqtt_devices, DpsTransport::Mqtt, concurrency, &target).await;

    println!(
        "{}",
        table_header(&[
            "transport",
            "devices",
            "registrations/s",
            "p50",
            "p99",
            "failed",
            "reference (same run)",
            "ratio"
        ])
    );
    println!(
        "{}",
        row(
            "HTTPS",
            &https,
            bare_requests,
            "connections/s with one bare request"
        )
    );
    println!(
        "{}",
        row(
            "MQTT",
            &mqtt,
            refused_rate,
            "refused connects/s (TLS + CONNECT)"
        )
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

/// Reference for HTTPS: each simulated device opens its own TLS connection and sends one request
/// the service answers without any DPS work (an unknown route). A registration is the same
/// connection plus a second request and the DPS logic; the ratio shows what that costs.
async fn bare_request_rate(emulator: &Emulator, devices: usize, concurrency: usize) -> f64 {
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
    devices as f64 / started.elapsed().as_secs_f64()
}

/// A results row: the transport's figures next to its reference rate.
fn row(transport: &str, result: &Measurement, reference: f64, reference_is: &str) -> String {
    format!(
        "| {transport} | {} | {:.0} | {:.1} ms | {:.1} ms | {} | {reference:.0} {reference_is} | \
            {:.2} |",
        result.devices,
        result.rate(),
        millis(result.latency(0.5)),
        millis(result.latency(0.99)),
        result.failures,
        result.rate() / reference
    )
}
