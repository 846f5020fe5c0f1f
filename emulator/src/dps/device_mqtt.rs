//! The device side of DPS over MQTT 3.1.1 (articles/iot-dps/iot-dps-mqtt-support.md):
//! client id = registration id, user name `{idScope}/registrations/{registrationId}/api-version=…`,
//! password = SAS; requests published to `$dps/registrations/PUT/iotdps-register/?$rid=…` and
//! `$dps/registrations/GET/iotdps-get-operationstatus/?$rid=…&operationId=…`, answers on
//! `$dps/registrations/res/{status}/?$rid=…[&retry-after=…]`.

use super::error::DpsError;
use super::model::{DeviceRegistration, RegistrationStatus};
use super::provisioning::Admission;
use super::Dps;
use crate::net::mqtt::{Accepted, PacketWriter};
use crate::net::mqtt_codec::{ConnectReturnCode, Packet, Publish, QoS};
use bytes::Bytes;
use serde::Serialize;
use std::sync::Arc;

/// Largest MQTT packet a DPS client may send.
pub const MAX_PACKET_SIZE: usize = 64 * 1024;
const RESPONSE_FILTER: &str = "$dps/registrations/res/#";
const REGISTER_PREFIX: &str = "$dps/registrations/PUT/iotdps-register/?";
const STATUS_PREFIX: &str = "$dps/registrations/GET/iotdps-get-operationstatus/?";

/// Runs one DPS MQTT session.
pub async fn session(dps: Arc<Dps>, accepted: Accepted) {
    let Accepted {
        connect,
        mut reader,
        writer,
        peer,
    } = accepted;
    let refuse = |code| Packet::ConnAck {
        session_present: false,
        code,
    };
    if connect.protocol_name != "MQTT" || connect.protocol_level != 4 {
        writer.send(refuse(ConnectReturnCode::BadProtocolVersion));
        return writer.close();
    }
    let registration_id = connect.client_id.clone();
    let Some(scope) = scope_from_username(connect.username.as_deref(), &registration_id) else {
        tracing::debug!(%peer, "DPS MQTT user name does not name this registration");
        writer.send(refuse(ConnectReturnCode::BadUsernameOrPassword));
        return writer.close();
    };
    let password = connect
        .password
        .as_ref()
        .and_then(|p| std::str::from_utf8(p).ok());
    let admission = match dps.authenticate(&scope, &registration_id, password) {
        Ok(admission) => admission,
        Err(error) => {
            tracing::info!(
                %peer,
                registration.id = %registration_id,
                %error,
                "DPS MQTT connection refused"
            );
            writer.send(refuse(ConnectReturnCode::NotAuthorized));
            return writer.close();
        }
    };
    reader.set_keep_alive(connect.keep_alive);
    writer.send(Packet::ConnAck {
        session_present: false,
        code: ConnectReturnCode::Accepted,
    });
    let mut state = Session {
        dps: &dps,
        writer: &writer,
        registration_id,
        admission,
        response_qos: None,
        next_pkid: 0,
    };
    loop {
        let packet = match reader.next().await {
            Ok(packet) => packet,
            Err(error) => {
                tracing::debug!(%peer, %error, "DPS MQTT connection ended");
                break;
            }
        };
        if !state.on_packet(packet).await {
            break;
        }
    }
    writer.close();
}

/// The ID scope from `{idScope}/registrations/{registrationId}/api-version=…[&…]`, if the user
/// name has that shape and names `registration_id`. SDKs append parameters differently, so only
/// the fixed prefix is checked.
fn scope_from_username(username: Option<&str>, registration_id: &str) -> Option<String> {
    let mut parts = username?.splitn(4, '/');
    let scope = parts.next()?;
    let registrations = parts.next()?;
    let id = parts.next()?;
    let rest = parts.next()?;
    let ok = registrations == "registrations"
        && id.eq_ignore_ascii_case(registration_id)
        && rest.starts_with("api-version=")
        && !scope.is_empty();
    ok.then(|| scope.to_owned())
}

struct Session<'a> {
    dps: &'a Dps,
    writer: &'a PacketWriter,
    registration_id: String,
    admission: Admission,
    response_qos: Option<QoS>,
    next_pkid: u16,
}

impl Session<'_> {
    /// Handles one packet; false ends the connection.
    async fn on_packet(&mut self, packet: Packet) -> bool {
        match packet {
            Packet::Subscribe { pkid, filters } => {
                let codes = filters
                    .iter()
                    .map(|(filter, qos)| {
                        if filter == RESPONSE_FILTER {
                            // DPS grants at most QoS 1.
                            let granted = (*qos).min(QoS::AtLeastOnce);
                            self.response_qos = Some(granted);
                            granted as u8
                        } else {
                            0x80
                        }
                    })
                    .collect();
                self.writer.send(Packet::SubAck { pkid, codes })
            }
            Packet::Unsubscribe { pkid, filters } => {
                if filters.iter().any(|f| f == RESPONSE_FILTER) {
                    self.response_qos = None;
                }
                self.writer.send(Packet::UnsubAck(pkid))
            }
            Packet::Publish(publish) => self.on_publish(publish).await,
            Packet::PingReq => self.writer.send(Packet::PingResp),
            Packet::PubAck(_) => true,
            Packet::Disconnect => false,
            // QoS 2 and anything a client must not send end the connection, as on Azure.
            _ => false,
        }
    }

    async fn on_publish(&mut self, publish: Publish) -> bool {
        if publish.qos == QoS::ExactlyOnce {
            return false;
        }
        if publish.qos == QoS::AtLeastOnce && !self.writer.send(Packet::PubAck(publish.pkid)) {
            return false;
        }
        let (request, params) = if let Some(params) = publish.topic.strip_prefix(REGISTER_PREFIX) {
            (Request::Register, params)
        } else if let Some(params) = publish.topic.strip_prefix(STATUS_PREFIX) {
            (Request::Status, params)
        } else {
            tracing::debug!(
                topic = %publish.topic,
                "DPS MQTT publish to an unknown topic; closing"
            );
            return false;
        };
        let param = |name: &str| {
            params
                .split('&')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_owned)
        };
        let Some(rid) = param("$rid") else {
            return false;
        };
        if let Err(DpsError::Throttled(seconds)) = self.dps.check_throttle() {
            let error = DpsError::Throttled(seconds);
            let body = Bytes::from(error.body());
            return self.respond_after(&rid, 429, body, seconds).await;
        }
        let outcome = match request {
            Request::Register => self.register(&publish.payload).await,
            Request::Status => match param("operationId") {
                Some(operation_id) => self
                    .dps
                    .operation_status(&self.registration_id, &operation_id)
                    .map(|status| {
                        let code = if status.status == RegistrationStatus::Assigning {
                            202
                        } else {
                            200
                        };
                        (code, to_json(&status))
                    }),
                None => Err(DpsError::BadRequest(
                    "operationId is missing from the topic".into(),
                )),
            },
        };
        match outcome {
            Ok((status, body)) => self.respond(&rid, status, body, status == 202).await,
            // The rate limit: 429 with how long to wait, as for the manual throttle above.
            Err(error @ DpsError::Throttled(seconds)) => {
                let body = Bytes::from(error.body());
                self.respond_after(&rid, 429, body, seconds).await
            }
            Err(error) => {
                let status = error.status().as_u16();
                self.respond(&rid, status, Bytes::from(error.body()), false)
                    .await
            }
        }
    }

    async fn register(&self, payload: &[u8]) -> Result<(u16, Bytes), DpsError> {
        let request: DeviceRegistration = if payload.is_empty() {
            DeviceRegistration::default()
        } else {
            serde_json::from_slice(payload).map_err(|e| {
                DpsError::BadRequest(format!("the registration request is not valid JSON: {e}"))
            })?
        };
        let answer = self
            .dps
            .register(&self.registration_id, self.admission.clone(), request)
            .await?;
        Ok((202, to_json(&answer)))
    }

    async fn respond(&mut self, rid: &str, status: u16, body: Bytes, retry: bool) -> bool {
        let after = retry.then(|| self.dps.settings().retry_after.as_secs());
        self.answer(rid, status, body, after).await
    }

    /// A 429 with how long to wait.
    async fn respond_after(&mut self, rid: &str, status: u16, body: Bytes, seconds: u64) -> bool {
        self.answer(rid, status, body, Some(seconds)).await
    }

    async fn answer(
        &mut self,
        rid: &str,
        status: u16,
        body: Bytes,
        retry_after: Option<u64>,
    ) -> bool {
        let Some(qos) = self.response_qos else {
            // Not subscribed: Azure delivers nothing.
            return true;
        };
        let mut topic = format!("$dps/registrations/res/{status}/?$rid={rid}");
        if let Some(seconds) = retry_after {
            topic.push_str(&format!("&retry-after={seconds}"));
        }
        let pkid = if qos == QoS::AtMostOnce {
            0
        } else {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            self.next_pkid
        };
        self.writer.send(Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic,
            pkid,
            payload: body,
        }))
    }
}

enum Request {
    Register,
    Status,
}

fn to_json<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_of_every_sdk_are_understood() {
        let documented = "0ne00000A0A/registrations/dev-1/api-version=2019-03-31";
        let python = "0ne00000A0A/registrations/dev-1/api-version=2019-03-31&ClientVersion=azure-iot-device%2F2.14.0";
        for name in [documented, python] {
            assert_eq!(
                scope_from_username(Some(name), "dev-1").as_deref(),
                Some("0ne00000A0A")
            );
        }
        assert_eq!(scope_from_username(Some(documented), "dev-2"), None);
        assert_eq!(
            scope_from_username(Some("0ne/registrations/dev-1"), "dev-1"),
            None
        );
        assert_eq!(scope_from_username(None, "dev-1"), None);
    }
}
