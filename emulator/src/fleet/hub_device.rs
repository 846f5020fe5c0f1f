//! A simulated device on an IoT hub: MQTT 3.1.1 over TLS with the emulator's own codec, light
//! enough that one process can hold ten thousand connections for a benchmark. It speaks the
//! device side of IoT Hub's protocol: telemetry with property bags, reported properties, and
//! twin reads; against a plain broker (the benchmark's reference) it only publishes.
//!
//! A second copy of the device crate's hub client (the telemetry sender, `device::sender`, on
//! rumqttc), kept on purpose: it is an independent client to check the emulator's hubs against,
//! built on the emulator's own strict codec, and it is light enough for the benchmarks to hold
//! ten thousand connections in one process, where a rumqttc event loop per device is not.

use super::ClientError;
use crate::net::mqtt_codec::{self, Connect, ConnectReturnCode, Packet, Publish, QoS};
use bytes::{Bytes, BytesMut};
use iot_credentials::sas::{encode_component, unix_now};
use iot_credentials::{SasToken, SharedAccessKey};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long any single answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how to connect.
#[derive(Clone)]
pub struct Endpoint {
    /// Socket address of the MQTT listener.
    pub address: SocketAddr,
    /// Host name the device uses (and TLS checks).
    pub host: String,
    /// TLS settings.
    pub tls: Arc<ClientConfig>,
}

/// One open device connection.
pub struct DeviceConnection {
    device_id: String,
    reader: ReadHalf<TlsStream<TcpStream>>,
    writer: WriteHalf<TlsStream<TcpStream>>,
    buf: BytesMut,
    out: BytesMut,
    next_packet_id: u16,
    next_request: u64,
    subscribed_to_twin: bool,
}

fn transport(error: impl std::fmt::Display) -> ClientError {
    ClientError::Transport(error.to_string())
}

impl DeviceConnection {
    /// Connects as an IoT Hub device, signing a one-hour SAS token with its key.
    pub async fn connect_device(
        endpoint: &Endpoint,
        device_id: &str,
        key: &SharedAccessKey,
    ) -> Result<Self, ClientError> {
        let token = SasToken::sign(
            &format!("{}/devices/{device_id}", endpoint.host),
            key,
            None,
            unix_now() + 3600,
        );
        let username = format!("{}/{device_id}/?api-version=2021-04-12", endpoint.host);
        Self::connect(
            endpoint,
            device_id,
            Some(username),
            Some(token.expose().to_owned()),
        )
        .await
    }

    /// Connects with any credentials (a plain broker accepts anonymous clients).
    pub async fn connect(
        endpoint: &Endpoint,
        client_id: &str,
        username: Option<String>,
        password: Option<String>,
    ) -> Result<Self, ClientError> {
        let tcp = TcpStream::connect(endpoint.address)
            .await
            .map_err(transport)?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(endpoint.host.clone()).map_err(transport)?;
        let stream = TlsConnector::from(endpoint.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(transport)?;
        let (reader, writer) = tokio::io::split(stream);
        let mut connection = Self {
            device_id: client_id.to_owned(),
            reader,
            writer,
            buf: BytesMut::with_capacity(512),
            out: BytesMut::with_capacity(512),
            next_packet_id: 0,
            next_request: 0,
            subscribed_to_twin: false,
        };
        connection
            .send(&Packet::Connect(Box::new(Connect {
                protocol_name: "MQTT".into(),
                protocol_level: 4,
                client_id: client_id.to_owned(),
                clean_session: true,
                keep_alive: 300,
                username,
                password: password.map(Bytes::from),
                will: None,
            })))
            .await?;
        match connection.next().await? {
            Packet::ConnAck {
                code: ConnectReturnCode::Accepted,
                ..
            } => Ok(connection),
            Packet::ConnAck { code, .. } => Err(ClientError::Unauthorized(format!(
                "the hub refused the connection: {code:?}"
            ))),
            other => Err(transport(format!("expected CONNACK, got {other:?}"))),
        }
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        self.out.clear();
        mqtt_codec::encode(packet, &mut self.out);
        self.writer.write_all(&self.out).await.map_err(transport)?;
        // TLS may hold encrypted bytes back when the socket is momentarily full; flush so the
        // packet is really on its way.
        self.writer.flush().await.map_err(transport)
    }

    /// The next packet from the server.
    pub async fn next(&mut self) -> Result<Packet, ClientError> {
        tokio::time::timeout(ANSWER_TIMEOUT, async {
            loop {
                if let Some(packet) =
                    mqtt_codec::decode(&mut self.buf, 1 << 20).map_err(transport)?
                {
                    return Ok(packet);
                }
                if self
                    .reader
                    .read_buf(&mut self.buf)
                    .await
                    .map_err(transport)?
                    == 0
                {
                    return Err(transport("the server closed the connection"));
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(ANSWER_TIMEOUT))?
    }

    fn packet_id(&mut self) -> u16 {
        self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
        self.next_packet_id
    }

    /// The telemetry topic with a property bag (`$.ct`, `$.ce`, application properties).
    pub fn telemetry_topic(&self, properties: &[(&str, &str)]) -> String {
        let bag: Vec<String> = properties
            .iter()
            .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
            .collect();
        format!(
            "devices/{}/messages/events/{}",
            self.device_id,
            bag.join("&")
        )
    }

    /// Publishes at QoS 1 without waiting; returns the packet id to expect in PUBACK.
    pub async fn publish(&mut self, topic: &str, payload: Bytes) -> Result<u16, ClientError> {
        let pkid = self.packet_id();
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.to_owned(),
            pkid,
            payload,
        }))
        .await?;
        Ok(pkid)
    }

    /// Sends one telemetry message and waits for the hub to acknowledge it.
    pub async fn send_telemetry(
        &mut self,
        payload: Bytes,
        properties: &[(&str, &str)],
    ) -> Result<(), ClientError> {
        let topic = self.telemetry_topic(properties);
        let pkid = self.publish(&topic, payload).await?;
        loop {
            if let Packet::PubAck(acked) = self.next().await? {
                if acked == pkid {
                    return Ok(());
                }
            }
        }
    }

    /// Sends `count` messages to `topic` keeping up to `window` unacknowledged, and waits for every
    /// acknowledgement.
    pub async fn send_burst(
        &mut self,
        topic: &str,
        payload: Bytes,
        count: usize,
        window: usize,
    ) -> Result<(), ClientError> {
        let (mut sent, mut acked) = (0, 0);
        while acked < count {
            while sent < count && sent - acked < window.max(1) {
                self.publish(topic, payload.clone()).await?;
                sent += 1;
            }
            if let Packet::PubAck(_) = self.next().await? {
                acked += 1;
            }
        }
        Ok(())
    }

    async fn twin_request(
        &mut self,
        topic: String,
        payload: Bytes,
    ) -> Result<(u16, String, Bytes), ClientError> {
        if !self.subscribed_to_twin {
            let pkid = self.packet_id();
            self.send(&Packet::Subscribe {
                pkid,
                filters: vec![("$iothub/twin/res/#".into(), QoS::AtMostOnce)],
            })
            .await?;
            loop {
                if let Packet::SubAck { .. } = self.next().await? {
                    break;
                }
            }
            self.subscribed_to_twin = true;
        }
        self.next_request += 1;
        let rid = self.next_request.to_string();
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: format!("{topic}?$rid={rid}"),
            pkid: 0,
            payload,
        }))
        .await?;
        let prefix = "$iothub/twin/res/";
        loop {
            if let Packet::Publish(answer) = self.next().await? {
                let Some(rest) = answer.topic.strip_prefix(prefix) else {
                    continue;
                };
                let Some((status, query)) = rest.split_once("/?") else {
                    continue;
                };
                if query.split('&').any(|p| p == format!("$rid={rid}")) {
                    let status = status.parse().map_err(transport)?;
                    return Ok((status, query.to_owned(), answer.payload));
                }
            }
        }
    }

    /// Reports properties; returns the new reported version.
    pub async fn report(&mut self, patch: &Value) -> Result<u64, ClientError> {
        let (status, query, body) = self
            .twin_request(
                "$iothub/twin/PATCH/properties/reported/".into(),
                Bytes::from(patch.to_string()),
            )
            .await?;
        if status != 204 {
            return Err(ClientError::Refused {
                status,
                message: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        query
            .split('&')
            .find_map(|p| p.strip_prefix("$version="))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| transport("the answer has no $version"))
    }

    /// Reads the twin (`{"desired": …, "reported": …}`).
    pub async fn get_twin(&mut self) -> Result<Value, ClientError> {
        let (status, _, body) = self
            .twin_request("$iothub/twin/GET/".into(), Bytes::new())
            .await?;
        if status != 200 {
            return Err(ClientError::Refused {
                status,
                message: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        serde_json::from_slice(&body).map_err(transport)
    }

    /// Subscribes to direct-method requests.
    pub async fn subscribe_methods(&mut self) -> Result<(), ClientError> {
        let pkid = self.packet_id();
        self.send(&Packet::Subscribe {
            pkid,
            filters: vec![("$iothub/methods/POST/#".into(), QoS::AtMostOnce)],
        })
        .await?;
        loop {
            if let Packet::SubAck { .. } = self.next().await? {
                return Ok(());
            }
        }
    }

    /// Waits for the next direct-method request: (method name, request id, payload).
    pub async fn next_method(&mut self) -> Result<(String, String, Bytes), ClientError> {
        loop {
            if let Packet::Publish(request) = self.next().await? {
                let Some(rest) = request.topic.strip_prefix("$iothub/methods/POST/") else {
                    continue;
                };
                let Some((name, query)) = rest.split_once("/?") else {
                    continue;
                };
                let rid = query.split('&').find_map(|p| p.strip_prefix("$rid="));
                if let Some(rid) = rid {
                    return Ok((name.to_owned(), rid.to_owned(), request.payload));
                }
            }
        }
    }

    /// Answers a direct-method request.
    pub async fn answer_method(
        &mut self,
        rid: &str,
        status: u16,
        payload: &Value,
    ) -> Result<(), ClientError> {
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: format!("$iothub/methods/res/{status}/?$rid={rid}"),
            pkid: 0,
            payload: Bytes::from(payload.to_string()),
        }))
        .await
    }

    /// Disconnects cleanly.
    pub async fn close(mut self) {
        let _ = self.send(&Packet::Disconnect).await;
        let _ = self.writer.shutdown().await;
    }
}
