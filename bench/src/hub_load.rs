//! Hub load: open many device connections and send pipelined telemetry bursts, the same way to
//! the emulator's hubs and to a reference broker.

use bytes::Bytes;
use emulator::fleet::hub_device::{DeviceConnection, Endpoint};
use emulator::fleet::ClientError;
use futures_util::stream::{self, StreamExt};
use iot_credentials::SharedAccessKey;
use std::time::{Duration, Instant};

/// How a simulated device logs in.
#[derive(Clone)]
pub enum Login {
    /// As an IoT Hub device with its key.
    Device(SharedAccessKey),
    /// Anonymously (a plain broker).
    Anonymous,
}

/// One simulated device.
#[derive(Clone)]
pub struct SimulatedDevice {
    /// Where it connects.
    pub endpoint: Endpoint,
    /// Its id (the MQTT client id).
    pub device_id: String,
    /// How it logs in.
    pub login: Login,
}

/// Opens every connection, `concurrency` handshakes at a time.
pub async fn connect_all(
    devices: &[SimulatedDevice],
    concurrency: usize,
) -> (Vec<DeviceConnection>, Vec<ClientError>, Duration) {
    let started = Instant::now();
    let outcomes: Vec<Result<DeviceConnection, ClientError>> =
        stream::iter(devices.iter().cloned())
            .map(|device| async move {
                match &device.login {
                    Login::Device(key) => {
                        DeviceConnection::connect_device(&device.endpoint, &device.device_id, key)
                            .await
                    }
                    Login::Anonymous => {
                        DeviceConnection::connect(&device.endpoint, &device.device_id, None, None)
                            .await
                    }
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    let mut connections = Vec::new();
    let mut errors = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(connection) => connections.push(connection),
            Err(error) => errors.push(error),
        }
    }
    (connections, errors, started.elapsed())
}

/// What a burst measured.
#[derive(Debug, Clone)]
pub struct Burst {
    /// Messages acknowledged.
    pub acknowledged: usize,
    /// Connections whose burst failed.
    pub failed_connections: usize,
    /// Wall time from the first send to the last acknowledgement.
    pub elapsed: Duration,
}

impl Burst {
    /// Acknowledged messages per second.
    pub fn rate(&self) -> f64 {
        self.acknowledged as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Every connection sends `per_connection` QoS 1 messages of `payload` with up to `window`
/// unacknowledged, all connections at once.
pub async fn burst_all(
    connections: &mut [DeviceConnection],
    per_connection: usize,
    window: usize,
    payload: Bytes,
) -> Burst {
    let started = Instant::now();
    let outcomes: Vec<bool> = stream::iter(connections.iter_mut())
        .map(|connection| {
            let payload = payload.clone();
            async move {
                let topic =
                    connection.telemetry_topic(&[("$.ct", "application/json"), ("$.ce", "utf-8")]);
                connection
                    .send_burst(&topic, payload, per_connection, window)
                    .await
                    .is_ok()
            }
        })
        .buffer_unordered(usize::MAX)
        .collect()
        .await;
    let succeeded = outcomes.iter().filter(|ok| **ok).count();
    Burst {
        acknowledged: succeeded * per_connection,
        failed_connections: outcomes.len() - succeeded,
        elapsed: started.elapsed(),
    }
}
