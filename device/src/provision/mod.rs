//! Registering with the Device Provisioning Service, as a device does: sign a SAS token with the
//! device key (`skn=registration`), ask DPS to register, then poll the operation until DPS has
//! decided, honouring `Retry-After`. Throttling (429) and service errors (5xx) are retried with
//! exponential backoff and jitter until an overall deadline; what cannot be retried becomes an
//! error that says what to do.
//!
//! HTTPS (`https`: `PUT {scope}/registrations/{id}/register`, `GET …/operations/{operationId}`)
//! is the default; MQTT (`mqtt`: `$dps/registrations/…` topics, rumqttc) is the alternative.

mod https;
mod mqtt;

use crate::assignment::{Assignment, Credentials};
pub use crate::backoff::Backoff;
use iot_credentials::sas::unix_now;
use iot_credentials::SasToken;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest `Retry-After` taken as given: a larger value (up to u64::MAX seconds from a broken
/// or hostile server) would overflow time arithmetic; the provisioning deadline ends the wait
/// long before this anyway.
const MAX_RETRY_AFTER_SECONDS: u64 = 24 * 3600;

/// A `Retry-After` value in seconds, bounded.
fn retry_after(seconds: &str) -> Option<Duration> {
    let seconds = seconds.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(seconds.min(MAX_RETRY_AFTER_SECONDS)))
}

/// How far apart two clocks may be before a refusal is blamed on the device's clock.
const CLOCK_SKEW_LIMIT: Duration = Duration::from_secs(300);

/// How the device talks to DPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DpsTransport {
    /// HTTPS (port 443, or the endpoint's port).
    #[default]
    Https,
    /// MQTT over TLS (port 8883).
    Mqtt,
}

/// Why provisioning failed, in terms a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionError {
    /// DPS refused the credentials.
    #[error(
        "DPS refused the device's credentials: the device key is wrong, or the registration \
        id is not enrolled; check the provisioning code with whoever issued it"
    )]
    Unauthorized,
    /// The device's clock is off, so its tokens look expired or not yet valid.
    #[error(
        "DPS refused the device's credentials and the device's clock is {0} s away from \
        DPS's; set the clock and try again"
    )]
    ClockSkew(i64),
    /// The enrollment is disabled.
    #[error("the device's enrollment is disabled; ask the administrator to enable it")]
    Disabled,
    /// DPS knows no such registration.
    #[error("DPS does not know this registration id; check the provisioning code")]
    UnknownRegistration,
    /// DPS could not assign the device.
    #[error("DPS could not assign the device: {0}")]
    Failed(String),
    /// DPS cannot be reached.
    #[error("DPS cannot be reached ({0}); check the network and try again")]
    Unreachable(String),
    /// DPS kept answering "too many requests" or errors until the deadline.
    #[error("DPS is busy or failing ({0}); try again later")]
    Service(String),
    /// The request was malformed (a bug or an incompatible service).
    #[error("DPS refused the request: {0}")]
    Refused(String),
    /// No decision within the deadline.
    #[error("DPS did not finish within {0:?}; try again")]
    Timeout(Duration),
}

/// What the device tells DPS about itself (passed through to allocation webhooks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Model.
    pub model: Option<String>,
    /// Serial number.
    pub serial_number: Option<String>,
    /// Firmware version.
    pub firmware: Option<String>,
}

impl DeviceInfo {
    fn payload(&self) -> Value {
        json!({
            "model": self.model,
            "serialNumber": self.serial_number,
            "firmware": self.firmware,
        })
    }
}

/// How to provision.
#[derive(Clone)]
pub struct Provisioner {
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
    /// HTTPS or MQTT.
    pub transport: DpsTransport,
    /// The MQTT port (8883 on Azure).
    pub mqtt_port: u16,
    /// The overall deadline.
    pub deadline: Duration,
    /// What the device says about itself.
    pub info: DeviceInfo,
    /// How throttled and failed calls are retried.
    pub backoff: Backoff,
    /// Answers that asked the device to wait and retry (429 and 5xx), counted across clones.
    pub retries: Arc<AtomicU64>,
}

/// DPS's registration state, as far as the device reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegistrationState {
    status: Option<String>,
    assigned_hub: Option<String>,
    device_id: Option<String>,
    substatus: Option<String>,
    error_message: Option<String>,
}

/// An operation's status.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Operation {
    operation_id: Option<String>,
    status: String,
    registration_state: Option<RegistrationState>,
}

/// TLS settings trusting the public roots and, if given, an extra CA (the emulator's).
pub(crate) fn tls_config(extra_ca_pem: Option<&str>) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots());
    if let Some(pem) = extra_ca_pem {
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
}

/// The public roots (Mozilla's, as webpki-roots ships them): what Azure's certificates chain to.
fn webpki_roots() -> Vec<rustls_pki_types::TrustAnchor<'static>> {
    webpki_roots::TLS_SERVER_ROOTS.to_vec()
}

/// How long the device waits for DPS: to connect, and for a whole call.
const DPS_TIMEOUTS: iot_io::https::Timeouts = iot_io::https::Timeouts {
    connect: Duration::from_secs(10),
    request: Duration::from_secs(30),
};

/// An HTTPS client trusting the public roots and the extra CA.
pub(crate) fn https_client(extra_ca_pem: Option<&str>) -> Result<reqwest::Client, String> {
    iot_io::https::client_builder(extra_ca_pem, DPS_TIMEOUTS)?
        .build()
        .map_err(|e| e.to_string())
}

/// The registration SAS token (resource `{scope}/registrations/{id}`, key name `registration`).
pub(crate) fn registration_token(credentials: &Credentials, lifetime: Duration) -> SasToken {
    SasToken::sign(
        &format!(
            "{}/registrations/{}",
            credentials.id_scope, credentials.registration_id
        ),
        &credentials.key,
        Some("registration"),
        unix_now() + lifetime.as_secs(),
    )
}

impl Provisioner {
    /// A provisioner trusting the public roots and `extra_ca_pem`.
    pub fn new(extra_ca_pem: Option<&str>) -> Result<Self, String> {
        Ok(Self {
            http: https_client(extra_ca_pem)?,
            tls: Arc::new(tls_config(extra_ca_pem)?),
            transport: DpsTransport::Https,
            mqtt_port: 8883,
            deadline: Duration::from_secs(120),
            info: DeviceInfo::default(),
            backoff: Backoff::default(),
            retries: Arc::default(),
        })
    }

    /// Registers the device and answers its assignment. A DPS that cannot be reached (down,
    /// restarting, refusing connections in a storm) is tried again with the same backoff until
    /// the deadline, as the Azure IoT SDKs retry network errors; only then is it reported.
    pub async fn provision(&self, credentials: &Credentials) -> Result<Assignment, ProvisionError> {
        let started = Instant::now();
        let mut retry = 0u32;
        loop {
            let attempt =
                tokio::time::timeout(self.deadline.saturating_sub(started.elapsed()), async {
                    match self.transport {
                        DpsTransport::Https => self.over_https(credentials, started).await,
                        DpsTransport::Mqtt => self.over_mqtt(credentials, started).await,
                    }
                })
                .await
                .map_err(|_| ProvisionError::Timeout(self.deadline))?;
            match attempt {
                Err(ProvisionError::Unreachable(reason)) => {
                    let wait = self.backoff.wait(retry, None);
                    if started.elapsed() + wait >= self.deadline {
                        return Err(ProvisionError::Unreachable(reason));
                    }
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        %reason,
                        wait_ms = wait.as_millis() as u64,
                        "DPS cannot be reached; retrying"
                    );
                    tokio::time::sleep(wait).await;
                    retry = retry.saturating_add(1);
                }
                outcome => return decide(credentials, outcome?),
            }
        }
    }
}

/// A 401: blame the clock if DPS's clock (the `Date` header) is far from ours.
fn clock_or_credentials(server_date: Option<&str>) -> ProvisionError {
    let skew = server_date
        .and_then(|d| {
            time::OffsetDateTime::parse(d, &time::format_description::well_known::Rfc2822).ok()
        })
        .map(|server| (time::OffsetDateTime::now_utc() - server).whole_seconds());
    match skew {
        Some(seconds) if seconds.unsigned_abs() > CLOCK_SKEW_LIMIT.as_secs() => {
            ProvisionError::ClockSkew(seconds)
        }
        _ => ProvisionError::Unauthorized,
    }
}

/// What DPS decided, as an assignment or an error.
fn decide(credentials: &Credentials, operation: Operation) -> Result<Assignment, ProvisionError> {
    let state = operation
        .registration_state
        .ok_or_else(|| ProvisionError::Refused("no registration state in the answer".into()))?;
    match state.status.as_deref().unwrap_or(&operation.status) {
        "assigned" => Ok(Assignment {
            credentials: credentials.clone(),
            hub: state
                .assigned_hub
                .ok_or_else(|| ProvisionError::Refused("assigned without a hub".into()))?,
            device_id: state
                .device_id
                .unwrap_or_else(|| credentials.registration_id.clone()),
            substatus: state.substatus,
            assigned_at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            pending_key: None,
            last_rotation: None,
        }),
        "disabled" => Err(ProvisionError::Disabled),
        "failed" => Err(ProvisionError::Failed(
            state
                .error_message
                .unwrap_or_else(|| "no reason given".into()),
        )),
        other => Err(ProvisionError::Refused(format!(
            "unexpected status {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_blamed_on_the_clock_only_when_the_clocks_disagree() {
        let now = time::OffsetDateTime::now_utc();
        let rfc2822 = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc2822)
                .unwrap()
        };
        assert_eq!(
            clock_or_credentials(Some(&rfc2822(now))),
            ProvisionError::Unauthorized
        );
        assert!(
            matches!(clock_or_credentials(Some(&rfc2822(now - time::Duration::hours(2)))), ProvisionError::ClockSkew(s) if s > 7000)
        );
        assert_eq!(clock_or_credentials(None), ProvisionError::Unauthorized);
    }

    #[test]
    fn a_retry_after_near_u64_max_is_bounded_instead_of_overflowing() {
        let huge = retry_after(&u64::MAX.to_string()).unwrap();
        assert_eq!(huge, Duration::from_secs(MAX_RETRY_AFTER_SECONDS));
        // The deadline arithmetic the client does with it must not panic.
        let _ = Instant::now().elapsed() + huge;
        assert_eq!(retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(retry_after("-1"), None);
        assert_eq!(retry_after("soon"), None);
    }
}
