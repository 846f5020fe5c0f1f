//! `bench event-latency`: how long after a device's report the middleware shows it. The
//! clock starts when the hub acknowledges the reported-properties patch (the twin-change event
//! is then in the hub's stream) and stops when `GET /api/devices/{id}` returns the value.

use anyhow::Context;
use bench::figures::{millis, quantile};
use emulator::fleet::admin::AdminApi;
use emulator::fleet::clients::Emulator;
use emulator::fleet::device::DeviceCredentials;
use emulator::fleet::hub_device::DeviceConnection;
use serde_json::json;
use std::time::{Duration, Instant};

/// Times `samples` reports of one device and prints p50, p99 and the slowest.
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
    let at = |p: f64| millis(quantile(&latencies, p));
    println!(
        "Event to readable record ({samples} reported-property changes, through the hub's event \
            stream, the Functions host stand-in and the handler): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    );
    Ok(())
}
