//! Test harness: an emulator on free loopback ports with clients that trust its CA.
// A panic in the harness is a test failure with a message, which is what the tests want.
#![allow(dead_code, clippy::unwrap_used)]

use emulator::config::EmulatorConfig;
use emulator::dps::model::DeviceRegistrationState;
use emulator::fleet::device::{register_mqtt, DeviceCredentials, HttpsRegistrar};
use emulator::fleet::service::DpsService;
use emulator::fleet::{client_tls, https_client, ClientError};
use emulator::RunningEmulator;
use iot_credentials::sas::unix_now;
use iot_credentials::{ServiceConnectionString, SharedAccessKey};
use serde_json::Value;
use std::sync::Arc;
use tempfile::TempDir;

pub struct TestEmulator {
    pub running: RunningEmulator,
    pub state_dir: TempDir,
    pub service: DpsService,
    pub http: reqwest::Client,
    pub registrar: HttpsRegistrar,
    pub tls: Arc<rustls::ClientConfig>,
}

/// A response as the tests look at it.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl TestEmulator {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut EmulatorConfig)) -> Self {
        let state_dir = tempfile::tempdir().expect("temp dir");
        let mut config = EmulatorConfig::for_tests(state_dir.path());
        adjust(&mut config);
        Self::start_in(config, state_dir).await
    }

    pub async fn start_in(config: EmulatorConfig, state_dir: TempDir) -> Self {
        let running = emulator::start(config).await.expect("the emulator starts");
        let ca = running.ca_certificate_pem().to_owned();
        let connection =
            ServiceConnectionString::parse(&running.endpoints().dps.service_connection_string)
                .expect("published connection string parses");
        let http = https_client(&ca).expect("client TLS");
        Self {
            service: DpsService::new(connection, &ca).expect("service client"),
            registrar: HttpsRegistrar::new(http.clone(), &running.endpoints().dps.device_endpoint),
            tls: Arc::new(client_tls(&ca).expect("client TLS")),
            http,
            running,
            state_dir,
        }
    }

    pub fn id_scope(&self) -> String {
        self.running.endpoints().dps.id_scope.clone()
    }

    pub fn hub_host(&self, index: usize) -> String {
        self.running.endpoints().hubs[index].host_name.clone()
    }

    pub fn dps_url(&self, path_and_query: &str) -> String {
        format!(
            "https://{}/{path_and_query}",
            self.running.endpoints().dps.device_endpoint
        )
    }

    /// A valid service token.
    pub fn service_token(&self) -> String {
        ServiceConnectionString::parse(&self.running.endpoints().dps.service_connection_string)
            .unwrap()
            .sas_token(unix_now() + 600)
            .expose()
            .to_owned()
    }

    /// Sends a raw request to the DPS listener.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        authorization: Option<&str>,
        body: Option<(&str, &str)>,
    ) -> Answer {
        let mut request = self.http.request(method, self.dps_url(path_and_query));
        if let Some(auth) = authorization {
            request = request.header("Authorization", auth);
        }
        if let Some((content_type, text)) = body {
            request = request
                .header("Content-Type", content_type)
                .body(text.to_owned());
        }
        let response = request.send().await.expect("the request is answered");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A service API call with a valid token and a JSON body.
    pub async fn service_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Answer {
        let token = self.service_token();
        let text = body.map(|b| b.to_string());
        let path = if path.contains('?') {
            path.to_owned()
        } else {
            format!("{path}?api-version=2021-10-01")
        };
        self.send(
            method,
            &path,
            Some(&token),
            text.as_deref().map(|t| ("application/json", t)),
        )
        .await
    }

    /// Enrolls `registration_id` (symmetric key, keys generated) with extra fields merged in,
    /// and returns the device's credentials.
    pub async fn enroll(&self, registration_id: &str, extra: Value) -> DeviceCredentials {
        let mut enrollment = serde_json::json!({
            "registrationId": registration_id,
            "attestation": { "type": "symmetricKey" },
        });
        merge(&mut enrollment, extra);
        self.service
            .put_enrollment(&enrollment)
            .await
            .expect("enrollment is created");
        DeviceCredentials {
            id_scope: self.id_scope(),
            registration_id: registration_id.to_owned(),
            key: self
                .service
                .primary_key(registration_id)
                .await
                .expect("keys are readable"),
        }
    }

    pub fn device(&self, registration_id: &str, key: SharedAccessKey) -> DeviceCredentials {
        DeviceCredentials {
            id_scope: self.id_scope(),
            registration_id: registration_id.to_owned(),
            key,
        }
    }

    pub async fn register(
        &self,
        device: &DeviceCredentials,
    ) -> Result<DeviceRegistrationState, ClientError> {
        self.registrar.register(device, None).await
    }

    pub async fn register_mqtt(
        &self,
        device: &DeviceCredentials,
        payload: Option<Value>,
    ) -> Result<DeviceRegistrationState, ClientError> {
        let address = self.running.dps_mqtt_address();
        register_mqtt(
            &address.ip().to_string(),
            address.port(),
            self.tls.clone(),
            device,
            payload,
        )
        .await
    }

    /// GET on a hub's service API (`devices/{id}`, `twins/{id}`); None on 404.
    pub async fn hub_get(&self, hub_host: &str, path: &str) -> Option<Value> {
        let index = self
            .running
            .endpoints()
            .hubs
            .iter()
            .position(|h| h.host_name == hub_host)
            .expect("a configured hub");
        let hub = &self.running.endpoints().hubs[index];
        let connection = ServiceConnectionString::parse(&hub.connection_string).unwrap();
        let address = self.running.hub_https_addresses()[index];
        let response = self
            .http
            .get(format!("https://{address}/{path}?api-version=2021-04-12"))
            .header(
                "Authorization",
                connection.sas_token(unix_now() + 600).expose(),
            )
            .send()
            .await
            .expect("hub answers");
        match response.status().as_u16() {
            200 => Some(response.json().await.expect("JSON")),
            404 => None,
            other => panic!("hub answered {other} for {path}"),
        }
    }
}

/// Shallow-merges the members of `extra` into `target`.
pub fn merge(target: &mut Value, extra: Value) {
    if let (Some(target), Value::Object(extra)) = (target.as_object_mut(), extra) {
        for (k, v) in extra {
            target.insert(k, v);
        }
    }
}

/// A custom allocation webhook: records every request body and answers with `reply`.
pub struct WebhookStub {
    pub url: String,
    pub received: Arc<std::sync::Mutex<Vec<Value>>>,
}

impl WebhookStub {
    pub async fn start(status: u16, reply: Value) -> Self {
        use http_body_util::{BodyExt, Full};
        use hyper::server::conn::http1;
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/api/allocate?code=secret-function-key",
            listener.local_addr().unwrap()
        );
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                let reply = reply.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let log = log.clone();
                            let reply = reply.clone();
                            async move {
                                let body = request.into_body().collect().await.unwrap().to_bytes();
                                log.lock()
                                    .unwrap()
                                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                                let mut response = hyper::Response::new(Full::new(
                                    bytes::Bytes::from(reply.to_string()),
                                ));
                                *response.status_mut() =
                                    hyper::StatusCode::from_u16(status).unwrap();
                                response
                                    .headers_mut()
                                    .insert("content-type", "application/json".parse().unwrap());
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self { url, received }
    }

    pub fn requests(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }
}

/// A raw TLS connection to an emulator listener, for speaking malformed or forbidden protocol.
pub struct RawConnection {
    pub stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: bytes::BytesMut,
}

impl RawConnection {
    pub async fn open(emu: &TestEmulator, address: std::net::SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .expect("connects");
        let connector = tokio_rustls::TlsConnector::from(emu.tls.clone());
        let name = rustls_pki_types::ServerName::IpAddress(address.ip().into());
        let stream = connector.connect(name, tcp).await.expect("TLS handshake");
        Self {
            stream,
            buf: bytes::BytesMut::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        // The server may already have closed; the read side tells the test what happened.
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    pub async fn send(&mut self, packet: &emulator::net::mqtt_codec::Packet) {
        let mut out = bytes::BytesMut::new();
        emulator::net::mqtt_codec::encode(packet, &mut out);
        self.write(&out).await;
    }

    /// The next packet, or None once the server closed the connection (within 5 s).
    pub async fn next(&mut self) -> Option<emulator::net::mqtt_codec::Packet> {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Ok(Some(packet)) = emulator::net::mqtt_codec::decode(&mut self.buf, 1 << 20) {
                return Some(packet);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => panic!("the server neither answered nor closed within 5 s"),
            }
        }
    }

    /// True when the server closes the connection (ignoring packets sent before closing).
    pub async fn is_closed_by_server(&mut self) -> bool {
        for _ in 0..16 {
            if self.next().await.is_none() {
                return true;
            }
        }
        false
    }
}

/// A CONNECT packet as a DPS device sends it.
pub fn dps_connect(
    device: &emulator::fleet::device::DeviceCredentials,
) -> emulator::net::mqtt_codec::Packet {
    emulator::net::mqtt_codec::Packet::Connect(Box::new(emulator::net::mqtt_codec::Connect {
        protocol_name: "MQTT".into(),
        protocol_level: 4,
        client_id: device.registration_id.clone(),
        clean_session: true,
        keep_alive: 30,
        username: Some(format!(
            "{}/registrations/{}/api-version=2019-03-31",
            device.id_scope, device.registration_id
        )),
        password: Some(bytes::Bytes::from(device.token().expose().to_owned())),
        will: None,
    }))
}

/// A device identity made through a hub's service API, and a raw MQTT connection for it.
pub struct HubDevice {
    pub hub_host: String,
    pub device_id: String,
    pub key: SharedAccessKey,
}

impl TestEmulator {
    /// Service API call on hub `index` with a valid token.
    pub async fn hub_call(
        &self,
        index: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Answer {
        let hub = &self.running.endpoints().hubs[index];
        let connection = ServiceConnectionString::parse(&hub.connection_string).unwrap();
        let address = self.running.hub_https_addresses()[index];
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut request = self
            .http
            .request(
                method,
                format!("https://{address}/{path}{separator}api-version=2021-04-12"),
            )
            .header(
                "Authorization",
                connection.sas_token(unix_now() + 600).expose(),
            );
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(etag) = if_match {
            request = request.header("If-Match", etag);
        }
        let response = request.send().await.expect("hub answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Creates a device on hub `index` through the service API.
    pub async fn hub_device(&self, index: usize, device_id: &str) -> HubDevice {
        let created = self
            .hub_call(
                index,
                reqwest::Method::PUT,
                &format!("devices/{device_id}"),
                Some(&serde_json::json!({ "deviceId": device_id })),
                None,
            )
            .await;
        assert_eq!(created.status, 200, "{}", created.body);
        let key = created.body["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap();
        HubDevice {
            hub_host: self.hub_host(index),
            device_id: device_id.to_owned(),
            key: SharedAccessKey::from_base64(key).unwrap(),
        }
    }

    /// A raw MQTT connection to a hub's device endpoint, CONNECT sent with a token valid for
    /// `ttl` seconds; returns the connection and the CONNACK.
    pub async fn hub_connect(
        &self,
        device: &HubDevice,
        ttl: u64,
    ) -> (RawConnection, Option<emulator::net::mqtt_codec::Packet>) {
        let token = iot_credentials::SasToken::sign(
            &format!("{}/devices/{}", device.hub_host, device.device_id),
            &device.key,
            None,
            unix_now() + ttl,
        );
        self.hub_connect_with(device, token.expose()).await
    }

    /// Like [`hub_connect`] with a given password.
    pub async fn hub_connect_with(
        &self,
        device: &HubDevice,
        password: &str,
    ) -> (RawConnection, Option<emulator::net::mqtt_codec::Packet>) {
        let hub = self.running.hub(&device.hub_host).expect("hub");
        let mut connection = RawConnection::open(self, hub.mqtt).await;
        connection
            .send(&emulator::net::mqtt_codec::Packet::Connect(Box::new(
                emulator::net::mqtt_codec::Connect {
                    protocol_name: "MQTT".into(),
                    protocol_level: 4,
                    client_id: device.device_id.clone(),
                    clean_session: true,
                    keep_alive: 60,
                    username: Some(format!(
                        "{}/{}/?api-version=2021-04-12",
                        device.hub_host, device.device_id
                    )),
                    password: Some(bytes::Bytes::from(password.to_owned())),
                    will: None,
                },
            )))
            .await;
        let connack = connection.next().await;
        (connection, connack)
    }

    /// Every event about `device_id` on the hub's stream so far, in order.
    pub async fn events_of(
        &self,
        hub_host: &str,
        device_id: &str,
    ) -> Vec<Arc<emulator::events::Event>> {
        let stream = self.running.hub(hub_host).unwrap().hub.events().clone();
        let partition = stream.partition_of(device_id);
        if stream.ends()[partition] == 0 {
            return Vec::new();
        }
        stream
            .read(partition, 0, usize::MAX)
            .await
            .events
            .into_iter()
            .filter(|e| e.device_id() == Some(device_id))
            .collect()
    }

    /// Waits (bounded) until `device_id` has an event matching `found`.
    pub async fn wait_for_event(
        &self,
        hub_host: &str,
        device_id: &str,
        found: impl Fn(&emulator::events::Event) -> bool,
    ) -> Arc<emulator::events::Event> {
        let stream = self.running.hub(hub_host).unwrap().hub.events().clone();
        let partition = stream.partition_of(device_id);
        let mut from = 0;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let batch = tokio::time::timeout_at(deadline, stream.read(partition, from, 1000))
                .await
                .expect("the expected event arrives within 10 s");
            for event in &batch.events {
                if event.device_id() == Some(device_id) && found(event) {
                    return event.clone();
                }
            }
            from = batch.events.last().map_or(from, |e| e.sequence_number + 1);
        }
    }
}

impl RawConnection {
    pub async fn subscribe(&mut self, filters: &[&str]) -> Vec<u8> {
        self.send(&emulator::net::mqtt_codec::Packet::Subscribe {
            pkid: 1,
            filters: filters
                .iter()
                .map(|f| (f.to_string(), emulator::net::mqtt_codec::QoS::AtLeastOnce))
                .collect(),
        })
        .await;
        match self.next().await {
            Some(emulator::net::mqtt_codec::Packet::SubAck { codes, .. }) => codes,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub async fn publish(
        &mut self,
        topic: &str,
        qos: emulator::net::mqtt_codec::QoS,
        pkid: u16,
        payload: &[u8],
    ) {
        self.send(&emulator::net::mqtt_codec::Packet::Publish(
            emulator::net::mqtt_codec::Publish {
                dup: false,
                qos,
                retain: false,
                topic: topic.to_owned(),
                pkid,
                payload: bytes::Bytes::copy_from_slice(payload),
            },
        ))
        .await;
    }

    /// The next PUBLISH from the server (other packets are skipped), within 5 s.
    pub async fn next_publish(&mut self) -> Option<emulator::net::mqtt_codec::Publish> {
        loop {
            match self.next().await? {
                emulator::net::mqtt_codec::Packet::Publish(p) => return Some(p),
                _ => continue,
            }
        }
    }
}
