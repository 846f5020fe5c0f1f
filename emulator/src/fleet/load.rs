//! The load generator: enroll many devices, then register them concurrently and measure.

use super::device::{register_mqtt, DeviceCredentials, HttpsRegistrar};
use super::service::DpsService;
use super::ClientError;
use futures_util::stream::{self, StreamExt};
use rustls::ClientConfig;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How registrations travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DpsTransport {
    /// HTTPS (one keep-alive connection pool shared by all devices).
    Https,
    /// MQTT over TLS (one connection per device, as devices do).
    Mqtt,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Devices registered.
    pub devices: usize,
    /// Registrations that failed.
    pub failures: usize,
    /// The first failure's message.
    pub first_error: Option<String>,
    /// Wall time of the registration phase.
    pub elapsed: Duration,
    /// Per-registration latencies, sorted.
    pub latencies: Vec<Duration>,
}

impl Measurement {
    /// Successful registrations per second.
    pub fn rate(&self) -> f64 {
        (self.devices - self.failures) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q` (0..=1).
    pub fn latency(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[index.min(self.latencies.len() - 1)]
    }
}

/// Enrolls `count` devices named `{prefix}-{n}` with keys the generator chooses, 10 per bulk call.
pub async fn enroll(
    service: &DpsService,
    prefix: &str,
    count: usize,
    id_scope: &str,
) -> Result<Vec<DeviceCredentials>, ClientError> {
    let devices: Vec<DeviceCredentials> = (0..count)
        .map(|n| DeviceCredentials {
            id_scope: id_scope.to_owned(),
            registration_id: format!("{prefix}-{n:06}"),
            key: iot_credentials::SharedAccessKey::generate(32),
        })
        .collect();
    for chunk in devices.chunks(crate::dps::enrollments::BULK_LIMIT) {
        let enrollments = chunk
            .iter()
            .map(|d| {
                json!({
                    "registrationId": d.registration_id,
                    "attestation": { "type": "symmetricKey", "symmetricKey": {
                        "primaryKey": d.key.expose_base64(),
                        "secondaryKey": d.key.expose_base64(),
                    }},
                })
            })
            .collect();
        service.bulk_create(enrollments).await?;
    }
    Ok(devices)
}

/// Where the devices register.
#[derive(Clone)]
pub struct Target {
    /// DPS device endpoint for HTTPS (`host[:port]`).
    pub https_endpoint: String,
    /// DPS MQTT host.
    pub mqtt_host: String,
    /// DPS MQTT port.
    pub mqtt_port: u16,
    /// TLS settings trusting the emulator.
    pub tls: Arc<ClientConfig>,
}

/// Registers every device, `concurrency` at a time, and measures. Each device uses its own
/// connection, as separate devices do.
pub async fn register_all(
    devices: &[DeviceCredentials],
    transport: DpsTransport,
    concurrency: usize,
    target: &Target,
) -> Measurement {
    let started = Instant::now();
    let results: Vec<(Duration, Result<(), String>)> = stream::iter(devices.iter().cloned())
        .map(|device| async move {
            let t0 = Instant::now();
            let outcome = match transport {
                DpsTransport::Https => match one_connection_client(&target.tls) {
                    Ok(http) => {
                        HttpsRegistrar::new(http, &target.https_endpoint)
                            .register(&device, None)
                            .await
                    }
                    Err(error) => Err(error),
                },
                DpsTransport::Mqtt => {
                    register_mqtt(
                        &target.mqtt_host,
                        target.mqtt_port,
                        target.tls.clone(),
                        &device,
                        None,
                    )
                    .await
                }
            };
            (t0.elapsed(), outcome.map(|_| ()).map_err(|e| e.to_string()))
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    let first_error = results.iter().find_map(|(_, r)| r.clone().err());
    let failures = results.iter().filter(|(_, r)| r.is_err()).count();
    let mut latencies: Vec<Duration> = results.into_iter().map(|(d, _)| d).collect();
    latencies.sort();
    Measurement {
        devices: devices.len(),
        failures,
        first_error,
        elapsed,
        latencies,
    }
}

/// An HTTPS client of its own, so the device opens its own TLS connection.
pub fn one_connection_client(tls: &Arc<ClientConfig>) -> Result<reqwest::Client, ClientError> {
    reqwest::Client::builder()
        .use_preconfigured_tls((**tls).clone())
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| ClientError::Transport(e.to_string()))
}
