//! Registration over MQTT (rumqttc, TLS): subscribe to `$dps/registrations/res/#`, publish the
//! register request, then ask for the operation's status until DPS has decided. Every request
//! carries a request id (`$rid`); answers to an earlier request are ignored.

use super::{registration_token, retry_after, Operation, ProvisionError, Provisioner};
use crate::assignment::Credentials;
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet, Publish, QoS, TlsConfiguration,
    Transport,
};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The device-side API version DPS expects in the MQTT user name.
const MQTT_API_VERSION: &str = "2019-03-31";
/// Where DPS answers.
const ANSWERS: &str = "$dps/registrations/res/";
/// The register request's topic, before its `$rid`.
const REGISTER: &str = "$dps/registrations/PUT/iotdps-register/?";

impl Provisioner {
    /// Registers over MQTT: connect, subscribe, register, poll the operation until DPS decides.
    pub(super) async fn over_mqtt(
        &self,
        credentials: &Credentials,
        started: Instant,
    ) -> Result<Operation, ProvisionError> {
        let (client, mut events) = AsyncClient::new(self.mqtt_options(credentials), 10);
        let mut registration = Registration {
            provisioner: self,
            client,
            register_body: serde_json::to_vec(&json!({
                "registrationId": credentials.registration_id,
                "payload": self.info.payload(),
            }))
            .unwrap_or_default(),
            last_rid: 0,
            pending: None,
            retry: 0,
            started,
        };
        let mut subscribed = false;
        loop {
            match events.poll().await.map_err(refused_or_unreachable)? {
                Event::Incoming(Packet::ConnAck(_)) => registration.subscribe().await?,
                Event::Incoming(Packet::SubAck(_)) if !subscribed => {
                    subscribed = true;
                    registration.register().await?;
                }
                Event::Incoming(Packet::Publish(publish)) => {
                    let Some(answer) = Answer::read(&publish) else {
                        continue;
                    };
                    if answer.rid != registration.pending {
                        continue;
                    }
                    if let Some(operation) = registration.on_answer(answer).await? {
                        let _ = registration.client.disconnect().await;
                        return Ok(operation);
                    }
                }
                _ => {}
            }
        }
    }

    /// The connection: the registration id as client id, and the registration's SAS token.
    fn mqtt_options(&self, credentials: &Credentials) -> MqttOptions {
        let host = credentials
            .endpoint
            .rsplit_once(':')
            .filter(|(_, p)| p.parse::<u16>().is_ok())
            .map_or(credentials.endpoint.as_str(), |(h, _)| h);
        let mut options =
            MqttOptions::new(credentials.registration_id.clone(), host, self.mqtt_port);
        let token = registration_token(credentials, Duration::from_secs(3600));
        options.set_credentials(
            format!(
                "{}/registrations/{}/api-version={MQTT_API_VERSION}",
                credentials.id_scope, credentials.registration_id
            ),
            token.expose(),
        );
        options.set_keep_alive(Duration::from_secs(60));
        options.set_clean_session(true);
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(self.tls.clone())));
        options
    }
}

/// A refused connection means refused credentials; anything else, that DPS cannot be reached.
fn refused_or_unreachable(error: ConnectionError) -> ProvisionError {
    match error {
        ConnectionError::ConnectionRefused(_) => ProvisionError::Unauthorized,
        other => ProvisionError::Unreachable(other.to_string()),
    }
}

/// One answer from DPS, read off its topic (`res/{status}/?$rid=…&retry-after=…`) and payload.
struct Answer {
    status: u16,
    rid: Option<String>,
    retry_after: Option<Duration>,
    body: Value,
}

impl Answer {
    /// The answer a publish carries, or `None` for a topic that is not an answer.
    fn read(publish: &Publish) -> Option<Self> {
        let rest = publish.topic.strip_prefix(ANSWERS)?;
        let (status, query) = rest.split_once("/?")?;
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_owned)
        };
        Some(Self {
            status: status.parse().unwrap_or(500),
            rid: param("$rid"),
            retry_after: param("retry-after").as_deref().and_then(retry_after),
            body: serde_json::from_slice(&publish.payload).unwrap_or(Value::Null),
        })
    }
}

/// One registration in progress: the session, and which request it awaits the answer to.
struct Registration<'a> {
    provisioner: &'a Provisioner,
    client: AsyncClient,
    register_body: Vec<u8>,
    /// The last request id used; each request takes the next.
    last_rid: u32,
    /// The request id whose answer counts.
    pending: Option<String>,
    /// Throttled or failed attempts so far, for the backoff.
    retry: u32,
    started: Instant,
}

impl Registration<'_> {
    /// Subscribes to DPS's answers (once connected).
    async fn subscribe(&self) -> Result<(), ProvisionError> {
        self.client
            .subscribe(format!("{ANSWERS}#"), QoS::AtLeastOnce)
            .await
            .map_err(|e| ProvisionError::Unreachable(e.to_string()))
    }

    /// Publishes the register request.
    async fn register(&mut self) -> Result<(), ProvisionError> {
        let body = self.register_body.clone();
        self.request(REGISTER, body).await
    }

    /// Publishes `topic` with the next request id, whose answer is then the one awaited.
    async fn request(&mut self, topic: &str, payload: Vec<u8>) -> Result<(), ProvisionError> {
        self.last_rid += 1;
        let rid = self.last_rid.to_string();
        self.client
            .publish(
                format!("{topic}$rid={rid}"),
                QoS::AtMostOnce,
                false,
                payload,
            )
            .await
            .map_err(|e| ProvisionError::Unreachable(e.to_string()))?;
        self.pending = Some(rid);
        Ok(())
    }

    /// Acts on the awaited answer: the decided operation, or `None` once the next request is out
    /// (a status poll while DPS assigns, the register request again after throttling).
    async fn on_answer(&mut self, answer: Answer) -> Result<Option<Operation>, ProvisionError> {
        let deadline = self.provisioner.deadline;
        match answer.status {
            200..=299 => {
                let operation: Operation = serde_json::from_value(answer.body)
                    .map_err(|e| ProvisionError::Refused(format!("an unreadable answer: {e}")))?;
                if operation.status != "assigning" && operation.status != "unassigned" {
                    return Ok(Some(operation));
                }
                let id = operation.operation_id.clone().unwrap_or_default();
                let wait = answer
                    .retry_after
                    .unwrap_or(Duration::from_secs(2))
                    .max(Duration::from_millis(50));
                if self.started.elapsed() + wait >= deadline {
                    return Err(ProvisionError::Service(
                        "DPS is still assigning at the deadline".into(),
                    ));
                }
                tokio::time::sleep(wait).await;
                let topic =
                    format!("$dps/registrations/GET/iotdps-get-operationstatus/?operationId={id}&");
                self.request(&topic, Vec::new()).await?;
                Ok(None)
            }
            401 | 403 => Err(ProvisionError::Unauthorized),
            404 => Err(ProvisionError::UnknownRegistration),
            429 | 500..=599 => {
                let wait = self
                    .provisioner
                    .backoff
                    .wait(self.retry, answer.retry_after);
                if self.started.elapsed() + wait >= deadline {
                    return Err(ProvisionError::Service(format!("status {}", answer.status)));
                }
                self.provisioner.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
                self.retry = self.retry.saturating_add(1);
                self.register().await?;
                Ok(None)
            }
            _ => Err(ProvisionError::Refused(
                answer.body["message"]
                    .as_str()
                    .unwrap_or("refused")
                    .chars()
                    .take(200)
                    .collect(),
            )),
        }
    }
}
