//! A soak: a fleet kept connected for a long time, sending telemetry, reporting properties and
//! re-provisioning now and then, while the resident memory of the processes serving it (the
//! emulator, the function app's handler) is sampled from /proc/<pid>/status. The samples go to a
//! CSV as they are taken (`memory_chart` reads them back and draws them).

use crate::memory;
use crate::memory_chart::{MemorySample, CSV_HEADER};
use device::assignment::Credentials;
use device::provision::Provisioner;
use emulator::fleet::hub_device::{DeviceConnection, Endpoint};
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a soak does and how often.
#[derive(Debug, Clone)]
pub struct SoakPlan {
    /// How long the fleet runs.
    pub duration: Duration,
    /// Each device sends one telemetry message this often.
    pub telemetry_interval: Duration,
    /// Each device reports a property this often.
    pub report_interval: Duration,
    /// Each device disconnects, registers with DPS again and reconnects this often (the
    /// devices' turns are spread evenly over the interval).
    pub reprovision_interval: Duration,
    /// Memory is sampled this often.
    pub sample_interval: Duration,
    /// The processes to sample, by name and pid.
    pub processes: Vec<(String, u32)>,
}

/// What a soak did.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// Every memory reading, in order.
    pub samples: Vec<MemorySample>,
    /// Telemetry messages the hubs acknowledged.
    pub messages: u64,
    /// Reported-property patches the hubs acknowledged.
    pub reports: u64,
    /// Completed re-provisionings.
    pub reprovisions: u64,
    /// Operations that failed (each followed by a reconnect).
    pub failures: u64,
    /// The first failure.
    pub first_error: Option<String>,
}

#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    reports: AtomicU64,
    reprovisions: AtomicU64,
    failures: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Counters {
    fn failed(&self, error: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(error);
    }
}

/// Runs the soak, writing each memory sample to `csv` as it is taken.
pub async fn run(
    devices: &[Credentials],
    provisioner: &Provisioner,
    hubs: &HashMap<String, Endpoint>,
    plan: &SoakPlan,
    mut csv: impl Write + Send + 'static,
) -> std::io::Result<SoakReport> {
    writeln!(csv, "{CSV_HEADER}")?;
    let started = Instant::now();
    let end = started + plan.duration;
    let counters = Arc::new(Counters::default());
    let hubs = Arc::new(hubs.clone());
    let count = devices.len().max(1) as u32;
    let tasks: Vec<_> = devices
        .iter()
        .cloned()
        .enumerate()
        .map(|(n, credentials)| {
            let provisioner = provisioner.clone();
            let hubs = hubs.clone();
            let counters = counters.clone();
            let plan = plan.clone();
            // Spread the devices' re-provisioning turns over the interval.
            let first_turn = started + plan.reprovision_interval / count * (n as u32 + 1);
            tokio::spawn(async move {
                live(
                    credentials,
                    provisioner,
                    &hubs,
                    &plan,
                    &counters,
                    first_turn,
                    end,
                )
                .await
            })
        })
        .collect();

    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(plan.sample_interval.max(Duration::from_millis(100)));
    loop {
        ticker.tick().await;
        let seconds = started.elapsed().as_secs_f64();
        for (process, pid) in &plan.processes {
            if let Some(rss_kib) = memory::read(*pid).map(|m| m.resident_kib) {
                writeln!(csv, "{seconds:.1},{process},{rss_kib}")?;
                samples.push(MemorySample {
                    seconds,
                    process: process.clone(),
                    rss_kib,
                });
            }
        }
        csv.flush()?;
        if Instant::now() >= end {
            break;
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    let first_error = counters
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(SoakReport {
        samples,
        messages: counters.messages.load(Ordering::Relaxed),
        reports: counters.reports.load(Ordering::Relaxed),
        reprovisions: counters.reprovisions.load(Ordering::Relaxed),
        failures: counters.failures.load(Ordering::Relaxed),
        first_error,
    })
}

/// Provisions and connects one device (registration through DPS, then the hub).
async fn join(
    credentials: &Credentials,
    provisioner: &Provisioner,
    hubs: &HashMap<String, Endpoint>,
) -> Result<DeviceConnection, String> {
    let assignment = provisioner
        .provision(credentials)
        .await
        .map_err(|e| format!("{}: {e}", credentials.registration_id))?;
    let endpoint = hubs
        .get(&assignment.hub)
        .ok_or_else(|| format!("DPS assigned an unknown hub {}", assignment.hub))?;
    let mut connection =
        DeviceConnection::connect_device(endpoint, &assignment.device_id, &credentials.key)
            .await
            .map_err(|e| format!("{}: {e}", credentials.registration_id))?;
    connection
        .report(&json!({ "provisioning": { "status": "provisioned", "hub": assignment.hub } }))
        .await
        .map_err(|e| format!("{}: {e}", credentials.registration_id))?;
    Ok(connection)
}

/// One device's life until `end`.
async fn live(
    credentials: Credentials,
    provisioner: Provisioner,
    hubs: &HashMap<String, Endpoint>,
    plan: &SoakPlan,
    counters: &Counters,
    mut next_turn: Instant,
    end: Instant,
) {
    let mut connection: Option<DeviceConnection> = None;
    let mut retry = 0;
    let mut sequence = 0u64;
    let mut next_report = Instant::now() + plan.report_interval;
    let mut ticker = tokio::time::interval(plan.telemetry_interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < end {
        let mut live = match connection.take() {
            Some(live) => live,
            None => match join(&credentials, &provisioner, hubs).await {
                Ok(live) => {
                    retry = 0;
                    live
                }
                Err(error) => {
                    counters.failed(error);
                    tokio::time::sleep(provisioner.backoff.wait(retry, None)).await;
                    retry += 1;
                    continue;
                }
            },
        };
        ticker.tick().await;
        let now = Instant::now();
        if now >= next_turn {
            next_turn += plan.reprovision_interval;
            live.close().await;
            match join(&credentials, &provisioner, hubs).await {
                Ok(again) => {
                    counters.reprovisions.fetch_add(1, Ordering::Relaxed);
                    connection = Some(again);
                }
                Err(error) => counters.failed(error),
            }
            continue;
        }
        sequence += 1;
        let reading =
            json!({ "temperature": 20.0 + (sequence % 10) as f64 / 2.0, "sequence": sequence });
        let sent = live
            .send_telemetry(
                reading.to_string().into(),
                &[("$.ct", "application/json"), ("$.ce", "utf-8")],
            )
            .await;
        if let Err(error) = sent {
            counters.failed(format!(
                "{}: telemetry: {error}",
                credentials.registration_id
            ));
            live.close().await;
            continue;
        }
        counters.messages.fetch_add(1, Ordering::Relaxed);
        if now >= next_report {
            next_report = now + plan.report_interval;
            match live
                .report(&json!({ "soak": { "sequence": sequence } }))
                .await
            {
                Ok(_) => {
                    counters.reports.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    counters.failed(format!("{}: report: {error}", credentials.registration_id));
                    live.close().await;
                    continue;
                }
            }
        }
        connection = Some(live);
    }
    if let Some(live) = connection {
        live.close().await;
    }
}
