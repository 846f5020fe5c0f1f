//! `fleet provision`: N devices enrolled in bulk, then registered concurrently; prints the rate.

use anyhow::bail;
use emulator::fleet::clients::Emulator;
use emulator::fleet::load::{enroll, register_all, DpsTransport};

/// Enrolls `devices` devices named `{prefix}-000000` onwards and registers them, `concurrency`
/// at a time, over `transport`.
pub async fn run(
    emulator: &Emulator,
    devices: usize,
    concurrency: usize,
    transport: DpsTransport,
    prefix: &str,
) -> anyhow::Result<()> {
    let credentials = enroll(
        &emulator.service,
        prefix,
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
