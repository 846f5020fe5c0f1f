//! The device endpoint of an IoT hub: MQTT 3.1.1 over TLS
//! (articles/iot/iot-mqtt-connect-to-iot-hub.md).
//!
//! Client id = device id; user name `{hub}/{deviceId}/?api-version=…` (SDKs append parameters);
//! password = SAS for `{hub}/devices/{deviceId}`, signed with a device key or a hub policy key.
//! The connection closes when the token expires, when another connection for the same device
//! opens, when the device is disabled or deleted, or when the device breaks Azure's rules
//! (QoS 2, other devices' topics, unknown topics).
//!
//! Modules connect the same way with client id `{deviceId}/{moduleId}`, user name
//! `{hub}/{deviceId}/{moduleId}/?api-version=…` and a SAS for
//! `{hub}/devices/{deviceId}/modules/{moduleId}` signed with a module key; they publish telemetry
//! on `devices/{deviceId}/modules/{moduleId}/messages/events/` and use the devices' `$iothub/twin`
//! and `$iothub/methods` topics (articles/iot/iot-mqtt-connect-to-iot-hub.md, "as a module"; the
//! npm azure-iot-device-mqtt 1.16.4 `Mqtt._getBaseTransportConfig` and azure-iot-device
//! `SharedAccessKeyAuthenticationProvider` send exactly these). A module's connection and its
//! device's are independent sessions.

use super::registry::DeviceStatus;
use super::sessions::{session_key, MethodReply, Session};
use super::{publish, twin, Hub, HubError};
use crate::net::mqtt::{Accepted, PacketWriter};
use crate::net::mqtt_codec::{ConnectReturnCode, Packet, Publish, QoS};
use bytes::Bytes;
use iot_credentials::sas::unix_now;
use iot_credentials::{SharedAccessKey, SignedSas};
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Largest packet a device may send: IoT Hub's 256 KB message limit plus room for the topic.
pub const MAX_PACKET_SIZE: usize = 256 * 1024 + 8 * 1024;

/// Runs one device session.
pub async fn session(hub: Arc<Hub>, accepted: Accepted) {
    let Accepted {
        connect,
        mut reader,
        writer,
        peer,
    } = accepted;
    let refuse = |code| {
        writer.send(Packet::ConnAck {
            session_present: false,
            code,
        });
        writer.close();
    };
    if connect.protocol_name != "MQTT" || connect.protocol_level != 4 {
        return refuse(ConnectReturnCode::BadProtocolVersion);
    }
    let Some((device_id, module_id)) = client_identity(&connect.client_id) else {
        return refuse(ConnectReturnCode::IdentifierRejected);
    };
    let key = session_key(&device_id, module_id.as_deref());
    let expected = format!("{}/{key}/", hub.settings().host_name);
    let username_ok = connect
        .username
        .as_deref()
        .and_then(|u| u.get(..expected.len()))
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(&expected));
    if !username_ok {
        tracing::debug!(
            %peer,
            device.id = %device_id,
            "IoT Hub MQTT user name does not name this hub and device"
        );
        return refuse(ConnectReturnCode::BadUsernameOrPassword);
    }
    let password = connect
        .password
        .as_ref()
        .and_then(|p| std::str::from_utf8(p).ok());
    let authenticated = match &module_id {
        Some(module_id) => authenticate_module(&hub, &device_id, module_id, password),
        None => authenticate(&hub, &device_id, password),
    };
    let expiry = match authenticated {
        Ok(expiry) => expiry,
        Err(reason) => {
            tracing::info!(
                %peer,
                device.id = %device_id,
                module.id = ?module_id,
                %reason,
                "IoT Hub MQTT connection refused"
            );
            return refuse(ConnectReturnCode::NotAuthorized);
        }
    };
    writer.send(Packet::ConnAck {
        session_present: false,
        code: ConnectReturnCode::Accepted,
    });
    reader.set_keep_alive(connect.keep_alive);
    let (session, replaced) = hub
        .sessions
        .open(&device_id, module_id.as_deref(), writer.clone());
    let announce = |connected: bool| match &module_id {
        Some(module_id) => hub.module_connection_event(&device_id, module_id, connected),
        None => hub.connection_event(&device_id, connected),
    };
    if let Some(old) = replaced {
        // One connection per device (or module): the newer wins, as on Azure.
        old.evicted.notify_one();
        announce(false);
    }
    announce(true);
    hub.touch(&key);
    tracing::debug!(%peer, device.id = %device_id, module.id = ?module_id, "device connected");

    let token_lifetime =
        Duration::from_secs(expiry.saturating_sub(unix_now()).min(365 * 24 * 3600));
    let token_expired = tokio::time::sleep(token_lifetime);
    tokio::pin!(token_expired);
    let mut device = Device {
        hub: &hub,
        session: &session,
        writer: &writer,
    };
    let reason = loop {
        tokio::select! {
            packet = reader.next() => match packet {
                Ok(packet) => {
                    hub.touch(&key);
                    if let Err(reason) = device.on_packet(packet).await {
                        break reason;
                    }
                }
                Err(error) => break error.to_string(),
            },
            _ = session.evicted.notified() => break "replaced, disabled or deleted".into(),
            _ = &mut token_expired => break "the SAS token expired".into(),
        }
    };
    tracing::debug!(
        %peer,
        device.id = %device_id,
        module.id = ?module_id,
        %reason,
        "device disconnected"
    );
    writer.close();
    if hub.sessions.close(&session) {
        announce(false);
    }
}

/// Splits a client id into the device id and, for `{deviceId}/{moduleId}`, the module id;
/// None when either part is empty or there are more parts.
fn client_identity(client_id: &str) -> Option<(String, Option<String>)> {
    match client_id.split_once('/') {
        None if !client_id.is_empty() => Some((client_id.to_owned(), None)),
        Some((device, module))
            if !device.is_empty() && !module.is_empty() && !module.contains('/') =>
        {
            Some((device.to_owned(), Some(module.to_owned())))
        }
        _ => None,
    }
}

/// Checks a module's SAS token (a module key, or a hub policy key); returns its expiry.
fn authenticate_module(
    hub: &Hub,
    device_id: &str,
    module_id: &str,
    password: Option<&str>,
) -> Result<u64, String> {
    let token = SignedSas::parse(password.ok_or("no password")?).map_err(|e| e.to_string())?;
    let resource = format!(
        "{}/devices/{device_id}/modules/{module_id}",
        hub.settings().host_name
    );
    if !token.grants(&resource) {
        return Err("the token was issued for another module, device or hub".into());
    }
    if !hub.module_device_enabled(device_id) {
        return Err("the module's device is not registered or is disabled".into());
    }
    let module = hub
        .module(device_id, module_id)
        .ok_or("the module is not registered")?;
    let keys: Vec<SharedAccessKey> = match token.key_name() {
        // Signed with a module key, the token must name the module itself, not its device or
        // hub (a policy token may name the hub).
        None if token.grants(&format!("{}/devices/{device_id}", hub.settings().host_name)) => {
            return Err("a token signed with a module key must be issued for the module".into())
        }
        None => [&module.primary_key, &module.secondary_key]
            .into_iter()
            .filter_map(|k| SharedAccessKey::from_base64(k).ok())
            .collect(),
        Some(policy) if policy.eq_ignore_ascii_case(&hub.settings().service_policy) => {
            vec![hub.settings().service_key.clone()]
        }
        Some(policy) => return Err(format!("unknown shared access policy {policy:?}")),
    };
    let refs: Vec<&SharedAccessKey> = keys.iter().collect();
    token.verify(&refs, unix_now()).map_err(|e| e.to_string())?;
    Ok(token.expiry())
}

/// Checks the SAS token; returns its expiry.
fn authenticate(hub: &Hub, device_id: &str, password: Option<&str>) -> Result<u64, String> {
    let token = SignedSas::parse(password.ok_or("no password")?).map_err(|e| e.to_string())?;
    let resource = format!("{}/devices/{device_id}", hub.settings().host_name);
    if !token.grants(&resource) {
        return Err("the token was issued for another device or hub".into());
    }
    let device = hub
        .device(device_id)
        .ok_or("the device is not registered")?;
    if device.status == DeviceStatus::Disabled {
        return Err("the device is disabled".into());
    }
    let keys: Vec<SharedAccessKey> = match token.key_name() {
        None => [&device.primary_key, &device.secondary_key]
            .into_iter()
            .filter_map(|k| SharedAccessKey::from_base64(k).ok())
            .collect(),
        Some(policy) if policy.eq_ignore_ascii_case(&hub.settings().service_policy) => {
            vec![hub.settings().service_key.clone()]
        }
        Some(policy) => return Err(format!("unknown shared access policy {policy:?}")),
    };
    let refs: Vec<&SharedAccessKey> = keys.iter().collect();
    token.verify(&refs, unix_now()).map_err(|e| e.to_string())?;
    Ok(token.expiry())
}

struct Device<'a> {
    hub: &'a Hub,
    session: &'a Arc<Session>,
    writer: &'a PacketWriter,
}

impl Device<'_> {
    fn id(&self) -> &str {
        &self.session.device_id
    }

    fn module_id(&self) -> Option<&str> {
        self.session.module_id.as_deref()
    }

    /// `devices/{deviceId}/` or `devices/{deviceId}/modules/{moduleId}/`: where this client's
    /// own topics start.
    fn own_topics(&self) -> String {
        match self.module_id() {
            Some(module_id) => format!("devices/{}/modules/{module_id}/", self.id()),
            None => format!("devices/{}/", self.id()),
        }
    }

    /// The twin's desired and reported sections as the client reads them.
    fn twin_document(&self) -> Option<Value> {
        let twin = match self.module_id() {
            Some(module_id) => self.hub.module(self.id(), module_id)?.twin,
            None => self.hub.device(self.id())?.twin,
        };
        Some(json!({
            "desired": twin::device_section(&twin.desired),
            "reported": twin::device_section(&twin.reported),
        }))
    }

    /// Handles one packet; an error ends the connection with that reason.
    async fn on_packet(&mut self, packet: Packet) -> Result<(), String> {
        match packet {
            Packet::Subscribe { pkid, filters } => {
                let mut codes = Vec::with_capacity(filters.len());
                let mut wants_messages = false;
                for (filter, qos) in &filters {
                    let granted = (*qos).min(QoS::AtLeastOnce);
                    let own_messages = format!("devices/{}/messages/devicebound/#", self.id());
                    let code = if self.module_id().is_none() && *filter == own_messages {
                        wants_messages = true;
                        self.session.subscribe(|s| s.cloud_messages = Some(granted));
                        granted as u8
                    } else if filter == "$iothub/twin/res/#" {
                        self.session.subscribe(|s| s.twin_responses = Some(granted));
                        granted as u8
                    } else if filter == "$iothub/twin/PATCH/properties/desired/#" {
                        self.session.subscribe(|s| s.desired = Some(granted));
                        granted as u8
                    } else if filter == "$iothub/methods/POST/#" {
                        self.session.subscribe(|s| s.methods = Some(granted));
                        granted as u8
                    } else if self.module_id().is_some() && filter.starts_with(&self.own_topics()) {
                        // A module's own topics (`inputs/#` of the Node ModuleClient, or `#`):
                        // granted; IoT Hub routes nothing to module inputs (only IoT Edge does).
                        granted as u8
                    } else if filter.starts_with("devices/") {
                        return Err(format!(
                            "subscription to a topic of another device: {filter}"
                        ));
                    } else {
                        0x80
                    };
                    codes.push(code);
                }
                self.writer.send(Packet::SubAck { pkid, codes });
                if self.session.subscriptions().methods.is_some() {
                    self.hub.sessions.changed.notify_waiters();
                }
                if wants_messages {
                    self.hub.deliver_messages(self.session);
                }
                Ok(())
            }
            Packet::Unsubscribe { pkid, filters } => {
                for filter in &filters {
                    self.session.subscribe(|s| match filter.as_str() {
                        "$iothub/twin/res/#" => s.twin_responses = None,
                        "$iothub/twin/PATCH/properties/desired/#" => s.desired = None,
                        "$iothub/methods/POST/#" => s.methods = None,
                        other if other.ends_with("/messages/devicebound/#") => {
                            s.cloud_messages = None
                        }
                        _ => {}
                    });
                }
                self.writer.send(Packet::UnsubAck(pkid));
                Ok(())
            }
            Packet::Publish(publish) => self.on_publish(publish).await,
            Packet::PubAck(pkid) => {
                if let Some(message_id) = self.session.acknowledge(pkid) {
                    self.hub
                        .complete_message(self.id(), message_id)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            Packet::PingReq => {
                self.writer.send(Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect => Err("the device disconnected".into()),
            other => Err(format!("a client may not send {other:?}")),
        }
    }

    async fn on_publish(&mut self, publish: Publish) -> Result<(), String> {
        if publish.qos == QoS::ExactlyOnce {
            return Err("QoS 2 is not supported by IoT Hub".into());
        }
        let telemetry_prefix = format!("{}messages/events", self.own_topics());
        if let Some(rest) = publish.topic.strip_prefix(&telemetry_prefix) {
            let bag = match rest {
                "" | "/" => "",
                rest => rest.strip_prefix('/').ok_or("malformed telemetry topic")?,
            };
            let bag = decode_bag(bag);
            let recorded = match self.module_id() {
                Some(module_id) => {
                    let module = self
                        .hub
                        .module(self.id(), module_id)
                        .ok_or("the module was deleted")?;
                    self.hub
                        .module_telemetry(&module, bag, publish.payload.clone())
                }
                None => {
                    let device = self.hub.device(self.id()).ok_or("the device was deleted")?;
                    self.hub.telemetry(&device, bag, publish.payload.clone())
                }
            };
            if !recorded {
                return Err("the hub could not record the message".into());
            }
            return self.ack(&publish);
        }
        if publish.topic.starts_with("devices/") {
            return Err(format!(
                "publish to a topic of another device: {}",
                publish.topic
            ));
        }
        let (path, query) = publish
            .topic
            .split_once('?')
            .unwrap_or((publish.topic.as_str(), ""));
        let rid = query_value(query, "$rid");
        self.ack(&publish)?;
        match path {
            "$iothub/twin/GET/" => {
                let rid = rid.ok_or("twin request without $rid")?;
                let body = self
                    .twin_document()
                    .ok_or("the device or module was deleted")?;
                self.respond("twin", 200, &rid, None, Bytes::from(body.to_string()));
                Ok(())
            }
            "$iothub/twin/PATCH/properties/reported/" => {
                let rid = rid.ok_or("twin request without $rid")?;
                let outcome = match serde_json::from_slice::<Value>(&publish.payload) {
                    Ok(patch) => match self.module_id() {
                        Some(module_id) => {
                            self.hub.report_module(self.id(), module_id, &patch).await
                        }
                        None => self.hub.report(self.id(), &patch).await,
                    },
                    Err(e) => Err(HubError::BadRequest(format!("the patch is not JSON: {e}"))),
                };
                match outcome {
                    Ok(version) => self.respond("twin", 204, &rid, Some(version), Bytes::new()),
                    Err(error) => {
                        let status = match error {
                            HubError::Unavailable => 503,
                            HubError::DeviceNotFound(_) | HubError::ModuleNotFound { .. } => 404,
                            _ => 400,
                        };
                        let body = json!({ "message": error.to_string() });
                        self.respond("twin", status, &rid, None, Bytes::from(body.to_string()));
                    }
                }
                Ok(())
            }
            path if path.starts_with("$iothub/methods/res/") => {
                let status = path
                    .trim_start_matches("$iothub/methods/res/")
                    .trim_end_matches('/')
                    .parse::<i64>()
                    .map_err(|_| "method response without a status")?;
                let rid = rid.ok_or("method response without $rid")?;
                let payload = serde_json::from_slice(&publish.payload).unwrap_or(Value::Null);
                self.session
                    .finish_method(&rid, MethodReply { status, payload });
                Ok(())
            }
            _ => Err(format!("publish to an unknown topic: {}", publish.topic)),
        }
    }

    fn ack(&self, publish: &Publish) -> Result<(), String> {
        if publish.qos == QoS::AtLeastOnce && !self.writer.send(Packet::PubAck(publish.pkid)) {
            return Err("the connection is closed".into());
        }
        Ok(())
    }

    /// Answers on `$iothub/{kind}/res/{status}/?$rid=…`, if the device listens for answers.
    fn respond(&self, kind: &str, status: u16, rid: &str, version: Option<u64>, body: Bytes) {
        let Some(qos) = self.session.subscriptions().twin_responses else {
            return;
        };
        let mut topic = format!("$iothub/{kind}/res/{status}/?$rid={rid}");
        if let Some(version) = version {
            topic.push_str(&format!("&$version={version}"));
        }
        publish(self.session, topic, qos, body);
    }
}

/// The value of `name` in a `k=v&k=v` query.
fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| value.to_owned())
    })
}

/// Decodes a topic property bag: `k=v&k2=v2`, URL-encoded; a key without `=` has an empty value.
pub fn decode_bag(bag: &str) -> Vec<(String, String)> {
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    bag.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_bags_decode_system_and_application_properties() {
        let bag =
            decode_bag("%24.ct=application%2Fjson&%24.ce=utf-8&temperature%20alert=true&flag");
        assert_eq!(
            bag,
            vec![
                ("$.ct".into(), "application/json".into()),
                ("$.ce".into(), "utf-8".into()),
                ("temperature alert".into(), "true".into()),
                ("flag".into(), String::new()),
            ]
        );
        assert!(decode_bag("").is_empty());
    }
}
