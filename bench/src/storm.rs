//! A provisioning storm: every device of a fleet powers on at the same moment (after an outage),
//! registers with DPS through the device crate's own client (its backoff and jitter, so what is
//! measured is what devices do), connects to the hub DPS assigned and reports that it is
//! provisioned. Measured: the time until the last device is connected, the peak number of
//! registrations completed in one second, the retries DPS asked for (429s), and who gave up.

use device::assignment::Credentials;
use device::provision::Provisioner;
use emulator::fleet::hub_device::{DeviceConnection, Endpoint};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a storm measured.
#[derive(Debug, Clone)]
pub struct StormReport {
    /// Devices powered on.
    pub devices: usize,
    /// Devices connected to their hub at the end.
    pub connected: usize,
    /// Devices that gave up (provisioning or connecting failed for good).
    pub gave_up: usize,
    /// The first reason a device gave up.
    pub first_error: Option<String>,
    /// From power-on until the last device was connected (None if some never were).
    pub all_connected_after: Option<Duration>,
    /// The most registrations completed within one second of the storm.
    pub peak_registrations_per_second: usize,
    /// Answers that asked a device to wait and retry (429 or 5xx), over all devices.
    pub retries: u64,
}

/// One device's storm: when it was registered and connected, or why it gave up.
struct Outcome {
    registered: Option<Duration>,
    connected: Result<(Duration, DeviceConnection), String>,
}

/// Powers every device on at once and waits until each is connected or has given up. The
/// `provisioner` is shared (its retry counter adds up over all devices); `hubs` maps a hub host
/// name, as DPS assigns it, to where its MQTT endpoint listens. Connections stay open until all
/// devices are done, as a fleet's would, and are then closed.
pub async fn power_on_all(
    devices: &[Credentials],
    provisioner: &Provisioner,
    hubs: &HashMap<String, Endpoint>,
) -> StormReport {
    let retries_before = provisioner.retries.load(Ordering::Relaxed);
    let hubs = Arc::new(hubs.clone());
    let started = Instant::now();
    let tasks: Vec<_> = devices
        .iter()
        .cloned()
        .map(|credentials| {
            let provisioner = provisioner.clone();
            let hubs = hubs.clone();
            tokio::spawn(async move { boot(credentials, provisioner, &hubs, started).await })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.unwrap_or_else(|e| Outcome {
            registered: None,
            connected: Err(format!("the device task failed: {e}")),
        }));
    }
    let mut per_second: HashMap<u64, usize> = HashMap::new();
    for registered in outcomes.iter().filter_map(|o| o.registered) {
        *per_second.entry(registered.as_secs()).or_default() += 1;
    }
    let mut last_connected = Duration::ZERO;
    let mut connections = Vec::new();
    let mut first_error = None;
    let mut gave_up = 0;
    for outcome in outcomes {
        match outcome.connected {
            Ok((at, connection)) => {
                last_connected = last_connected.max(at);
                connections.push(connection);
            }
            Err(error) => {
                gave_up += 1;
                first_error.get_or_insert(error);
            }
        }
    }
    let connected = connections.len();
    for connection in connections {
        connection.close().await;
    }
    StormReport {
        devices: devices.len(),
        connected,
        gave_up,
        first_error,
        all_connected_after: (gave_up == 0).then_some(last_connected),
        peak_registrations_per_second: per_second.values().copied().max().unwrap_or(0),
        retries: provisioner.retries.load(Ordering::Relaxed) - retries_before,
    }
}

/// One device powering on: provision, connect (retried with the same backoff while the hub
/// refuses or cannot be reached, within the provisioner's deadline), report.
async fn boot(
    credentials: Credentials,
    provisioner: Provisioner,
    hubs: &HashMap<String, Endpoint>,
    started: Instant,
) -> Outcome {
    let assignment = match provisioner.provision(&credentials).await {
        Ok(assignment) => assignment,
        Err(error) => {
            return Outcome {
                registered: None,
                connected: Err(format!("{}: {error}", credentials.registration_id)),
            }
        }
    };
    let registered = Some(started.elapsed());
    let Some(endpoint) = hubs.get(&assignment.hub) else {
        return Outcome {
            registered,
            connected: Err(format!(
                "{}: DPS assigned hub {}, which the fleet does not know",
                credentials.registration_id, assignment.hub
            )),
        };
    };
    let deadline = started + provisioner.deadline;
    let mut retry = 0;
    let connected = loop {
        let attempt = async {
            let mut connection =
                DeviceConnection::connect_device(endpoint, &assignment.device_id, &credentials.key)
                    .await?;
            connection
                .report(
                    &json!({ "provisioning": { "status": "provisioned", "hub": assignment.hub } }),
                )
                .await?;
            Ok::<_, emulator::fleet::ClientError>(connection)
        };
        match attempt.await {
            Ok(connection) => break Ok((started.elapsed(), connection)),
            Err(error) => {
                let wait = provisioner.backoff.wait(retry, None);
                if Instant::now() + wait >= deadline {
                    break Err(format!(
                        "{}: cannot connect to the hub: {error}",
                        credentials.registration_id
                    ));
                }
                tokio::time::sleep(wait).await;
                retry += 1;
            }
        }
    };
    Outcome {
        registered,
        connected,
    }
}
