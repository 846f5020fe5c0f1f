//! `fleet bench-event-latency`: how long after a device's report the middleware shows it. The
//! clock starts when the hub acknowledges the reported-properties patch (the twin-change event
//! is then in the hub's stream) and stops when `GET /api/devices/{id}` returns the value.

use super::admin::AdminApi;
use super::Emulator;
use anyhow::Context;
use emulator::fleet::device::DeviceCredentials;
use emulator::fleet::hub_device::DeviceConnection;
use serde_json::json;
use std::time::{Duration, Instant};

pub async fn run(emulator: &Emulator, samples: usize) -> anyhow::Result<()> {
    let functions = emulator
        .endpoints
        .functions
        .clone()
        .context("the emulator runs no function app")?;
    let api = AdminApi::new(&functions);
    let id = format!("latency-{}", std::process::id());
    api.enroll(json!({ "registrationId": id, "customer": { "id": "bench" } }))
        .await?;
    let code = api.code(&id).await?;
    let device = DeviceCredentials {
        id_scope: code.id_scope.clone(),
        registration_id: code.registration_id.clone(),
        key: code.device_key.clone(),
    };
    let state = emulator.registrar.register(&device, None).await?;
    let hub = state.assigned_hub.context("assigned without a hub")?;
    let device_id = state.device_id.unwrap_or_else(|| id.clone());
    let mut connection =
        DeviceConnection::connect_device(&emulator.hub_endpoint(&hub)?, &device_id, &device.key)
            .await?;
    let path = format!("/devices/{device_id}");
    let mut latencies = Vec::with_capacity(samples);
    for n in 0..samples {
        let value = format!("latency-{n}");
        connection.report(&json!({ "firmware": value })).await?;
        let reported = Instant::now();
        let deadline = reported + Duration::from_secs(10);
        loop {
            let record = api.call(reqwest::Method::GET, &path, None).await?;
            if record["reported"]["properties"]["firmware"] == value.as_str() {
                latencies.push(reported.elapsed());
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "report {n} was not readable within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    connection.close().await;
    latencies.sort_unstable();
    let at = |p: f64| {
        latencies[((latencies.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
    };
    println!(
        "Event to readable record ({samples} reported-property changes, through the hub's event stream, the Functions host stand-in and the handler): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    );
    Ok(())
}
