//! Messages between a device and the cloud: the cloud-to-device queue (send, deliver, complete)
//! and device-to-cloud telemetry, which goes to the hub's event routes.

use super::registry::{CloudMessage, DeviceIdentity};
use super::sessions::Session;
use super::{now_ms, Hub, HubError};
use crate::cloud_state::Change;
use crate::events::NewEvent;
use crate::net::mqtt_codec::{Packet, Publish, QoS};
use bytes::Bytes;
use serde_json::{json, Map};
use std::time::Duration;

/// IoT Hub's limit on queued cloud-to-device messages per device.
pub const MAX_QUEUED_MESSAGES: usize = 50;
/// Default lifetime of a cloud-to-device message.
pub const DEFAULT_MESSAGE_TTL: Duration = Duration::from_secs(3600);

impl Hub {
    /// Messages waiting for the device, oldest first, expired ones left out.
    pub fn pending_messages(&self, device_id: &str) -> Vec<CloudMessage> {
        let now = now_ms();
        self.store.read(|state| {
            state
                .cloud_messages
                .get(self.host())
                .and_then(|q| q.get(device_id))
                .map(|queue| {
                    queue
                        .iter()
                        .filter(|m| m.expires_at_ms > now)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// Queues a message for a device and sends it at once if the device listens.
    pub async fn send_message(
        &self,
        device_id: &str,
        message: CloudMessage,
    ) -> Result<(), HubError> {
        let host = self.host().to_owned();
        let now = now_ms();
        self.store
            .transact(|state| {
                if !state
                    .hubs
                    .get(&host)
                    .is_some_and(|r| r.contains_key(device_id))
                {
                    return Err(HubError::DeviceNotFound(device_id.to_owned()));
                }
                let queue = state
                    .cloud_messages
                    .get(&host)
                    .and_then(|q| q.get(device_id));
                let mut changes: Vec<Change> = queue
                    .into_iter()
                    .flatten()
                    .filter(|m| m.expires_at_ms <= now)
                    .map(|m| Change::RemoveCloudMessage {
                        hub: host.clone(),
                        device_id: device_id.to_owned(),
                        message_id: m.message_id.clone(),
                    })
                    .collect();
                let live = queue.map_or(0, |q| q.len()) - changes.len();
                if live >= MAX_QUEUED_MESSAGES {
                    return Err(HubError::QueueFull);
                }
                changes.push(Change::EnqueueCloudMessage {
                    hub: host.clone(),
                    device_id: device_id.to_owned(),
                    message: Box::new(message),
                });
                Ok(((), changes))
            })
            .await?;
        if let Some(session) = self.sessions.get(device_id) {
            self.deliver_messages(&session);
        }
        Ok(())
    }

    /// Sends every pending message the session does not already have in flight.
    pub fn deliver_messages(&self, session: &Session) {
        let Some(qos) = session.subscriptions().cloud_messages else {
            return;
        };
        for message in self.pending_messages(&session.device_id) {
            if session.is_in_flight(&message.message_id) {
                continue;
            }
            let topic = format!(
                "devices/{}/messages/devicebound/{}",
                session.device_id,
                message_bag(&session.device_id, &message)
            );
            let packet_id = session.packet_id();
            session.track_message(packet_id, message.message_id.clone());
            let packet = Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic,
                pkid: if qos == QoS::AtMostOnce { 0 } else { packet_id },
                payload: message.body.clone(),
            });
            session.writer.send(packet);
            if qos == QoS::AtMostOnce {
                // Nothing will acknowledge a QoS 0 delivery; it is complete once sent.
                let _ = session.acknowledge(packet_id);
            }
        }
    }

    /// A device acknowledged a message: it leaves the queue.
    pub async fn complete_message(
        &self,
        device_id: &str,
        message_id: String,
    ) -> Result<(), HubError> {
        let host = self.host().to_owned();
        self.store
            .transact(|_| {
                Ok::<_, HubError>((
                    (),
                    vec![Change::RemoveCloudMessage {
                        hub: host.clone(),
                        device_id: device_id.to_owned(),
                        message_id,
                    }],
                ))
            })
            .await
    }

    /// Records device telemetry; `bag` holds the topic's property bag, already decoded.
    pub fn telemetry(
        &self,
        device: &DeviceIdentity,
        bag: Vec<(String, String)>,
        body: Bytes,
    ) -> bool {
        self.record_telemetry(&device.device_id, None, &device.generation_id, bag, body)
    }

    /// Records telemetry of a device or (with `module_id`) of one of its modules, whose
    /// messages also carry `iothub-connection-module-id`.
    pub(super) fn record_telemetry(
        &self,
        device_id: &str,
        module_id: Option<&str>,
        generation_id: &str,
        bag: Vec<(String, String)>,
        body: Bytes,
    ) -> bool {
        let mut system = Map::new();
        system.insert("iothub-connection-device-id".into(), json!(device_id));
        if let Some(module_id) = module_id {
            system.insert("iothub-connection-module-id".into(), json!(module_id));
        }
        let scope = if module_id.is_some() {
            "module"
        } else {
            "device"
        };
        system.insert(
            "iothub-connection-auth-method".into(),
            json!(format!(
                r#"{{"scope":"{scope}","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}}"#
            )),
        );
        system.insert(
            "iothub-connection-auth-generation-id".into(),
            json!(generation_id),
        );
        system.insert("iothub-message-source".into(), json!("Telemetry"));
        let mut application = Map::new();
        for (name, value) in bag {
            let system_name = match name.as_str() {
                "$.mid" => Some("message-id"),
                "$.cid" => Some("correlation-id"),
                "$.uid" => Some("user-id"),
                "$.to" => Some("to"),
                "$.ct" => Some("content-type"),
                "$.ce" => Some("content-encoding"),
                "$.exp" => Some("absolute-expiry-time"),
                "$.ifid" => Some("dt-dataschema"),
                "$.sub" => Some("dt-subject"),
                _ => None,
            };
            match system_name {
                Some(system_name) => {
                    system.insert(system_name.into(), json!(value));
                }
                None => {
                    application.insert(name, json!(value));
                }
            }
        }
        self.append(NewEvent {
            device_id: device_id.to_owned(),
            system_properties: system,
            properties: application,
            body,
        })
    }
}

/// The property bag of a cloud-to-device message topic, URL-encoded.
fn message_bag(device_id: &str, message: &CloudMessage) -> String {
    let encode = iot_credentials::sas::encode_component;
    let mut pairs = vec![
        ("$.mid".to_owned(), message.message_id.clone()),
        (
            "$.to".to_owned(),
            format!("/devices/{device_id}/messages/deviceBound"),
        ),
    ];
    if let Some(cid) = &message.correlation_id {
        pairs.push(("$.cid".into(), cid.clone()));
    }
    if let Some(ct) = &message.content_type {
        pairs.push(("$.ct".into(), ct.clone()));
    }
    if let Some(ce) = &message.content_encoding {
        pairs.push(("$.ce".into(), ce.clone()));
    }
    pairs.extend(
        message
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}
