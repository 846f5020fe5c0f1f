//! `bench storm`: a fleet's devices, provisioned by the device crate's own client, all powered
//! on at once.

use anyhow::bail;
use bench::storm;
use device::assignment::Credentials;
use device::provision::{DpsTransport, Provisioner};
use emulator::fleet::clients::Emulator;
use emulator::fleet::load::enroll;
use std::time::Duration;

/// Enrolls `count` devices (for the storm and the soak) and answers their credentials as the device crate holds them.
pub async fn enrolled(
    emulator: &Emulator,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<Credentials>> {
    let dps = &emulator.endpoints.dps;
    let devices = enroll(&emulator.service, prefix, count, &dps.id_scope).await?;
    Ok(devices
        .into_iter()
        .map(|d| Credentials {
            id_scope: d.id_scope,
            registration_id: d.registration_id,
            key: d.key,
            endpoint: dps.device_endpoint.clone(),
        })
        .collect())
}

/// The device crate's provisioner, trusting the emulator's CA.
pub fn provisioner(
    emulator: &Emulator,
    transport: DpsTransport,
    jitter: bool,
    deadline: Duration,
) -> anyhow::Result<Provisioner> {
    let ca = std::fs::read_to_string(&emulator.endpoints.ca_certificate_path)?;
    let mut provisioner = Provisioner::new(Some(&ca)).map_err(anyhow::Error::msg)?;
    provisioner.transport = transport;
    provisioner.mqtt_port = emulator.endpoints.dps.mqtt_port;
    provisioner.deadline = deadline;
    provisioner.backoff.jitter = jitter;
    Ok(provisioner)
}

/// Powers `devices` fresh devices on at once; prints one results row.
pub async fn run_storm(
    emulator: &Emulator,
    devices: usize,
    transport: DpsTransport,
    jitter: bool,
    deadline: Duration,
    label: &str,
) -> anyhow::Result<()> {
    let prefix = format!("storm-{}", std::process::id());
    eprintln!("Enrolling {devices} devices...");
    let credentials = enrolled(emulator, &prefix, devices).await?;
    let provisioner = provisioner(emulator, transport, jitter, deadline)?;
    eprintln!(
        "Powering on {devices} devices at once (jitter {})...",
        if jitter { "on" } else { "off" }
    );
    let report = storm::power_on_all(&credentials, &provisioner, &emulator.hub_endpoints()?).await;
    let all = report.all_connected_after.map_or_else(
        || "never".to_owned(),
        |d| format!("{:.1} s", d.as_secs_f64()),
    );
    println!(
        "| {label} | {} | {transport:?} | {all} | {} | {} | {} |",
        report.devices, report.peak_registrations_per_second, report.retries, report.gave_up
    );
    if let Some(error) = report.first_error {
        bail!("{} devices gave up; the first: {error}", report.gave_up);
    }
    Ok(())
}
