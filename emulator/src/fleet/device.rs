//! DPS registration as a device performs it, over HTTPS or MQTT: sign a SAS token with the device
//! key (`skn=registration`), register, then poll the operation honouring `Retry-After`.
//!
//! A second copy of the device crate's `device::provision::Provisioner`, kept on purpose: it is
//! an independent client to check the emulator against (the tests read the whole registration
//! state and every refusal, which the device client turns into its own errors), and its HTTPS
//! registrar lets many simulated devices share one connection pool in one process. The storms and
//! soaks (bench/) use the device crate's client instead, as what they measure is the device's
//! behaviour.

use super::{error_message, ClientError};
use crate::dps::model::{DeviceRegistrationState, RegistrationOperationStatus, RegistrationStatus};
use iot_credentials::sas::unix_now;
use iot_credentials::{SasToken, SharedAccessKey};
use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS, TlsConfiguration, Transport,
};
use rustls::ClientConfig;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// api-version used by the device clients.
pub const DEVICE_API_VERSION: &str = "2021-06-01";
/// The whole registration must finish within this time.
pub const REGISTRATION_DEADLINE: Duration = Duration::from_secs(60);

/// Who is registering.
#[derive(Clone)]
pub struct DeviceCredentials {
    /// ID scope of the DPS instance.
    pub id_scope: String,
    /// The device's registration id.
    pub registration_id: String,
    /// The device key (individual enrollment key, or derived from the group key).
    pub key: SharedAccessKey,
}

impl DeviceCredentials {
    /// A registration token valid for an hour.
    pub fn token(&self) -> SasToken {
        SasToken::sign(
            &format!("{}/registrations/{}", self.id_scope, self.registration_id),
            &self.key,
            Some("registration"),
            unix_now() + 3600,
        )
    }
}

/// One step of a registration, for callers that want to narrate it.
#[derive(Debug, Clone)]
pub struct Step {
    /// The operation status DPS answered.
    pub status: RegistrationOperationStatus,
    /// How long DPS asked the device to wait before polling.
    pub retry_after: Duration,
}

/// DPS device registration over HTTPS.
pub struct HttpsRegistrar {
    http: reqwest::Client,
    endpoint: String,
}

impl HttpsRegistrar {
    /// A registrar for the DPS device endpoint `host[:port]`.
    pub fn new(http: reqwest::Client, endpoint: &str) -> Self {
        Self {
            http,
            endpoint: endpoint.to_owned(),
        }
    }

    fn url(&self, device: &DeviceCredentials, tail: &str) -> String {
        format!(
            "https://{}/{}/registrations/{}{tail}?api-version={DEVICE_API_VERSION}",
            self.endpoint, device.id_scope, device.registration_id
        )
    }

    /// Sends the register request.
    pub async fn start(
        &self,
        device: &DeviceCredentials,
        payload: Option<Value>,
    ) -> Result<Step, ClientError> {
        let mut body = json!({ "registrationId": device.registration_id });
        if let Some(payload) = payload {
            body["payload"] = payload;
        }
        let request = self.http.put(self.url(device, "/register")).json(&body);
        self.send(device, request).await
    }

    /// Polls an operation once.
    pub async fn poll(
        &self,
        device: &DeviceCredentials,
        operation_id: &str,
    ) -> Result<Step, ClientError> {
        let request = self
            .http
            .get(self.url(device, &format!("/operations/{operation_id}")));
        self.send(device, request).await
    }

    async fn send(
        &self,
        device: &DeviceCredentials,
        request: reqwest::RequestBuilder,
    ) -> Result<Step, ClientError> {
        let response = request
            .header("Authorization", device.token().expose())
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(Duration::from_secs(2), Duration::from_secs);
        let text = response
            .text()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        parse_step(status, &text, retry_after)
    }

    /// Registers and polls until DPS decides, within [`REGISTRATION_DEADLINE`].
    pub async fn register(
        &self,
        device: &DeviceCredentials,
        payload: Option<Value>,
    ) -> Result<DeviceRegistrationState, ClientError> {
        tokio::time::timeout(REGISTRATION_DEADLINE, async {
            let mut step = self.start(device, payload).await?;
            loop {
                if let Some(done) = finished(&step)? {
                    return Ok(done);
                }
                tokio::time::sleep(step.retry_after).await;
                step = self.poll(device, &step.status.operation_id).await?;
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(REGISTRATION_DEADLINE))?
    }
}

fn parse_step(status: u16, text: &str, retry_after: Duration) -> Result<Step, ClientError> {
    match status {
        200..=299 => serde_json::from_str(text)
            .map(|status| Step {
                status,
                retry_after,
            })
            .map_err(|e| ClientError::Transport(format!("unreadable answer: {e}"))),
        401 => Err(ClientError::Unauthorized(error_message(text))),
        status => Err(ClientError::Refused {
            status,
            message: error_message(text),
        }),
    }
}

/// The final registration state, None while still assigning.
pub fn finished(step: &Step) -> Result<Option<DeviceRegistrationState>, ClientError> {
    let status = &step.status;
    match status.status {
        RegistrationStatus::Assigning | RegistrationStatus::Unassigned => Ok(None),
        RegistrationStatus::Assigned => {
            status.registration_state.clone().map(Some).ok_or_else(|| {
                ClientError::Transport("assigned without a registration state".into())
            })
        }
        other => Err(ClientError::NotAssigned {
            status: format!("{other:?}").to_lowercase(),
            message: status
                .registration_state
                .as_ref()
                .and_then(|s| s.error_message.clone())
                .unwrap_or_default(),
        }),
    }
}

/// DPS device registration over MQTT (TLS, MQTT 3.1.1): one connection per registration.
pub async fn register_mqtt(
    host: &str,
    port: u16,
    tls: Arc<ClientConfig>,
    device: &DeviceCredentials,
    payload: Option<Value>,
) -> Result<DeviceRegistrationState, ClientError> {
    let mut options = MqttOptions::new(device.registration_id.clone(), host, port);
    options
        .set_credentials(
            format!(
                "{}/registrations/{}/api-version=2019-03-31",
                device.id_scope, device.registration_id
            ),
            device.token().expose(),
        )
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (client, mut events) = AsyncClient::new(options, 10);
    let outcome = tokio::time::timeout(REGISTRATION_DEADLINE, async {
        client
            .subscribe("$dps/registrations/res/#", QoS::AtLeastOnce)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let mut body = json!({ "registrationId": device.registration_id });
        if let Some(payload) = payload {
            body["payload"] = payload;
        }
        let mut rid = 1u32;
        client
            .publish(
                format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}"),
                QoS::AtLeastOnce,
                false,
                body.to_string(),
            )
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        loop {
            let step = next_answer(&mut events, rid).await?;
            if let Some(done) = finished(&step)? {
                return Ok(done);
            }
            tokio::time::sleep(step.retry_after).await;
            rid += 1;
            client
                .publish(
                    format!(
                        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={}",
                        step.status.operation_id
                    ),
                    QoS::AtLeastOnce,
                    false,
                    Vec::new(),
                )
                .await
                .map_err(|e| ClientError::Transport(e.to_string()))?;
        }
    })
    .await
    .map_err(|_| ClientError::Timeout(REGISTRATION_DEADLINE))
    .and_then(|r| r);
    let _ = client.disconnect().await;
    // Drive the event loop briefly so DISCONNECT is actually sent.
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    outcome
}

async fn next_answer(events: &mut EventLoop, rid: u32) -> Result<Step, ClientError> {
    loop {
        let event = events.poll().await.map_err(|e| match e {
            rumqttc::ConnectionError::ConnectionRefused(code) => {
                ClientError::Unauthorized(format!("DPS refused the MQTT connection: {code:?}"))
            }
            other => ClientError::Transport(other.to_string()),
        })?;
        let Event::Incoming(Incoming::Publish(publish)) = event else {
            continue;
        };
        // $dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]
        let Some(rest) = publish.topic.strip_prefix("$dps/registrations/res/") else {
            continue;
        };
        let Some((status, params)) = rest.split_once("/?") else {
            continue;
        };
        let param = |name: &str| {
            params
                .split('&')
                .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
        };
        if param("$rid") != Some(&rid.to_string()) {
            continue;
        }
        let retry_after = param("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(Duration::from_secs(2), Duration::from_secs);
        let status: u16 = status
            .parse()
            .map_err(|_| ClientError::Transport(format!("unexpected topic {}", publish.topic)))?;
        let text = String::from_utf8_lossy(&publish.payload);
        return parse_step(status, &text, retry_after);
    }
}
