//! Module identities in the emulated IoT hub: the service API creates, lists and deletes them,
//! a module connects over MQTT as the official SDKs do, and everything it does (twin, telemetry,
//! connection) reaches the event stream with `moduleId` while the device's own identity, twin
//! and connection stay as they were.
// In a test crate a panic, with the failing call's message, is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use emulator::events::Event;
use emulator::net::mqtt_codec::{Connect, ConnectReturnCode, Packet};
use iot_credentials::sas::unix_now;
use iot_credentials::{SasToken, SharedAccessKey};
use reqwest::Method;
use rumqttc::{AsyncClient, Incoming, MqttOptions, QoS, TlsConfiguration, Transport};
use serde_json::{json, Value};
use std::time::Duration;
use support::{RawConnection, TestEmulator};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn application(event: &Event, name: &str) -> Option<String> {
    event
        .properties
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn system(event: &Event, name: &str) -> Option<String> {
    event
        .system_properties
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn body(event: &Event) -> Value {
    serde_json::from_slice(&event.body).unwrap_or(Value::Null)
}

/// Creates module `module_id` on `device_id` (hub 0) and returns its primary key.
async fn create_module(emu: &TestEmulator, device_id: &str, module_id: &str) -> SharedAccessKey {
    let created = emu
        .hub_call(
            0,
            Method::PUT,
            &format!("devices/{device_id}/modules/{module_id}"),
            Some(&json!({ "deviceId": device_id, "moduleId": module_id })),
            None,
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    SharedAccessKey::from_base64(
        created.body["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap(),
    )
    .unwrap()
}

fn module_token(host: &str, device_id: &str, module_id: &str, key: &SharedAccessKey) -> String {
    SasToken::sign(
        &format!("{host}/devices/{device_id}/modules/{module_id}"),
        key,
        None,
        unix_now() + 600,
    )
    .expose()
    .to_owned()
}

/// A raw MQTT connection for a module, CONNECT sent with `password`; returns it and the CONNACK.
async fn raw_module_connect(
    emu: &TestEmulator,
    device_id: &str,
    module_id: &str,
    password: &str,
) -> (RawConnection, Option<Packet>) {
    let host = emu.hub_host(0);
    let mut connection = RawConnection::open(emu, emu.running.hub(&host).unwrap().mqtt).await;
    connection
        .send(&Packet::Connect(Box::new(Connect {
            protocol_name: "MQTT".into(),
            protocol_level: 4,
            client_id: format!("{device_id}/{module_id}"),
            clean_session: true,
            keep_alive: 60,
            username: Some(format!(
                "{host}/{device_id}/{module_id}/?api-version=2021-04-12"
            )),
            password: Some(bytes::Bytes::from(password.to_owned())),
            will: None,
        })))
        .await;
    let connack = connection.next().await;
    (connection, connack)
}

fn connack(code: ConnectReturnCode) -> Option<Packet> {
    Some(Packet::ConnAck {
        session_present: false,
        code,
    })
}

/// A module connected with rumqttc, the way the official SDKs connect one: what it receives
/// arrives on `incoming`.
struct ModuleClient {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<rumqttc::Publish>,
}

impl ModuleClient {
    async fn connect(
        emu: &TestEmulator,
        device_id: &str,
        module_id: &str,
        key: &SharedAccessKey,
    ) -> Self {
        let host = emu.hub_host(0);
        let address = emu.running.hub(&host).unwrap().mqtt;
        let mut options = MqttOptions::new(
            format!("{device_id}/{module_id}"),
            address.ip().to_string(),
            address.port(),
        );
        options
            .set_credentials(
                // What azure-iot-device-mqtt sends for a module: parameters after the version.
                format!(
                    "{host}/{device_id}/{module_id}/?api-version=2021-04-12&DeviceClientType=rust-test"
                ),
                module_token(&host, device_id, module_id, key),
            )
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                emu.tls.clone(),
            )));
        let (client, mut events) = AsyncClient::new(options, 10);
        let (connected_tx, mut connected_rx) = mpsc::unbounded_channel();
        let (publish_tx, incoming) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(Incoming::ConnAck(ack))) => {
                        let _ = connected_tx.send(ack.code);
                    }
                    Ok(rumqttc::Event::Incoming(Incoming::Publish(publish))) => {
                        let _ = publish_tx.send(publish);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let code = tokio::time::timeout(WAIT, connected_rx.recv())
            .await
            .expect("CONNACK within 10 s")
            .expect("the connection stays up until CONNACK");
        assert_eq!(code, rumqttc::ConnectReturnCode::Success);
        Self { client, incoming }
    }

    async fn next_publish(&mut self) -> rumqttc::Publish {
        tokio::time::timeout(WAIT, self.incoming.recv())
            .await
            .expect("a message within 10 s")
            .expect("the connection is open")
    }

    async fn publish(&self, topic: &str, payload: &[u8]) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .unwrap();
    }
}

/// Every event of `device_id` (its modules' included) on hub 0 so far.
async fn events(emu: &TestEmulator, device_id: &str) -> Vec<std::sync::Arc<Event>> {
    emu.events_of(&emu.hub_host(0), device_id).await
}

#[tokio::test]
async fn a_module_reports_sends_and_disconnects_without_touching_its_device() {
    let emu = TestEmulator::start().await;
    let host = emu.hub_host(0);
    let device = emu.hub_device(0, "edge-1").await;
    let (mut device_connection, device_ack) = emu.hub_connect(&device, 600).await;
    assert_eq!(device_ack, connack(ConnectReturnCode::Accepted));
    let device_before = emu
        .hub_call(0, Method::GET, "devices/edge-1", None, None)
        .await
        .body;
    let twin_before = emu
        .hub_call(0, Method::GET, "twins/edge-1", None, None)
        .await
        .body;

    // The registry: create, refuse a second create, list, read.
    let key = create_module(&emu, "edge-1", "sensor").await;
    let module = emu
        .hub_call(0, Method::GET, "devices/edge-1/modules/sensor", None, None)
        .await;
    assert_eq!(module.status, 200);
    assert_eq!(module.body["moduleId"], "sensor");
    assert_eq!(module.body["deviceId"], "edge-1");
    assert_eq!(module.body["connectionState"], "Disconnected");
    assert_eq!(module.body["authentication"]["type"], "sas");
    assert!(module.body["generationId"]
        .as_str()
        .is_some_and(|g| !g.is_empty()));
    let again = emu
        .hub_call(
            0,
            Method::PUT,
            "devices/edge-1/modules/sensor",
            Some(&json!({ "moduleId": "sensor" })),
            None,
        )
        .await;
    assert_eq!(again.status, 409);
    let listed = emu
        .hub_call(0, Method::GET, "devices/edge-1/modules", None, None)
        .await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body.as_array().map(Vec::len), Some(1));
    assert_eq!(listed.body[0]["moduleId"], "sensor");

    // The module connects, reports, sends telemetry, gets a desired change and a method call.
    let mut client = ModuleClient::connect(&emu, "edge-1", "sensor", &key).await;
    for topic in [
        "$iothub/twin/res/#",
        "$iothub/twin/PATCH/properties/desired/#",
        "$iothub/methods/POST/#",
        "devices/edge-1/modules/sensor/inputs/#",
    ] {
        client
            .client
            .subscribe(topic, QoS::AtLeastOnce)
            .await
            .unwrap();
    }
    client
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=1",
            br#"{"firmware":"2.1"}"#,
        )
        .await;
    let answer = client.next_publish().await;
    assert_eq!(answer.topic, "$iothub/twin/res/204/?$rid=1&$version=2");
    client.publish("$iothub/twin/GET/?$rid=2", b"").await;
    let twin = client.next_publish().await;
    assert_eq!(twin.topic, "$iothub/twin/res/200/?$rid=2");
    let twin: Value = serde_json::from_slice(&twin.payload).unwrap();
    assert_eq!(twin["reported"]["firmware"], "2.1");
    client
        .publish(
            "devices/edge-1/modules/sensor/messages/events/%24.ct=application%2Fjson",
            br#"{"temperature":21}"#,
        )
        .await;

    let patched = emu
        .hub_call(
            0,
            Method::PATCH,
            "twins/edge-1/modules/sensor",
            Some(
                &json!({ "tags": { "role": "probe" }, "properties": { "desired": { "rate": 5 } } }),
            ),
            None,
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.body["moduleId"], "sensor");
    assert_eq!(patched.body["tags"]["role"], "probe");
    let pushed = client.next_publish().await;
    assert_eq!(
        pushed.topic,
        "$iothub/twin/PATCH/properties/desired/?$version=2"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&pushed.payload).unwrap(),
        json!({ "rate": 5, "$version": 2 })
    );

    let method_call = json!({ "methodName": "calibrate", "payload": { "offset": 1 }, "responseTimeoutInSeconds": 10 });
    let call = emu.hub_call(
        0,
        Method::POST,
        "twins/edge-1/modules/sensor/methods",
        Some(&method_call),
        None,
    );
    let module_side = async {
        let request = client.next_publish().await;
        assert!(
            request
                .topic
                .starts_with("$iothub/methods/POST/calibrate/?$rid="),
            "{}",
            request.topic
        );
        let rid = request.topic.rsplit("$rid=").next().unwrap().to_owned();
        client
            .publish(
                &format!("$iothub/methods/res/200/?$rid={rid}"),
                br#"{"calibrated":true}"#,
            )
            .await;
    };
    let (answer, ()) = tokio::join!(call, module_side);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({ "status": 200, "payload": { "calibrated": true } })
    );
    let connected = emu
        .hub_call(0, Method::GET, "devices/edge-1/modules/sensor", None, None)
        .await;
    assert_eq!(connected.body["connectionState"], "Connected");

    // The module leaves; the device's connection is still there.
    client.client.disconnect().await.unwrap();
    let disconnected = emu
        .wait_for_event(&host, "edge-1", |e| {
            application(e, "opType").as_deref() == Some("deviceDisconnected")
                && application(e, "moduleId").is_some()
        })
        .await;
    assert_eq!(
        application(&disconnected, "moduleId").as_deref(),
        Some("sensor")
    );
    device_connection.send(&Packet::PingReq).await;
    assert_eq!(device_connection.next().await, Some(Packet::PingResp));

    let deleted = emu
        .hub_call(
            0,
            Method::DELETE,
            "devices/edge-1/modules/sensor",
            None,
            Some("*"),
        )
        .await;
    assert_eq!(deleted.status, 204);
    let gone = emu
        .hub_call(0, Method::GET, "devices/edge-1/modules/sensor", None, None)
        .await;
    assert_eq!(gone.status, 404);
    assert!(gone.body["Message"]
        .as_str()
        .unwrap()
        .contains("ModuleNotFound"));

    // The device's own identity, twin and connection are as they were.
    let device_after = emu
        .hub_call(0, Method::GET, "devices/edge-1", None, None)
        .await
        .body;
    assert_eq!(device_after["etag"], device_before["etag"]);
    assert_eq!(device_after["generationId"], device_before["generationId"]);
    assert_eq!(device_after["connectionState"], "Connected");
    let twin_after = emu
        .hub_call(0, Method::GET, "twins/edge-1", None, None)
        .await
        .body;
    assert_eq!(twin_after["version"], twin_before["version"]);
    assert_eq!(twin_after["etag"], twin_before["etag"]);
    assert_eq!(
        twin_after["properties"]["reported"],
        twin_before["properties"]["reported"]
    );
    assert_eq!(twin_after["tags"], json!({}));

    // The stream: the module's events carry moduleId; the device's own are only its own.
    let all = events(&emu, "edge-1").await;
    let module_ops: Vec<(String, String)> = all
        .iter()
        .filter(|e| application(e, "moduleId").as_deref() == Some("sensor"))
        .map(|e| {
            (
                system(e, "iothub-message-source").unwrap(),
                application(e, "opType").unwrap(),
            )
        })
        .collect();
    let expected = [
        ("deviceLifecycleEvents", "createDeviceIdentity"),
        ("deviceConnectionStateEvents", "deviceConnected"),
        ("twinChangeEvents", "updateTwin"),
        ("twinChangeEvents", "updateTwin"),
        ("deviceConnectionStateEvents", "deviceDisconnected"),
        ("deviceLifecycleEvents", "deleteDeviceIdentity"),
    ]
    .map(|(s, o)| (s.to_owned(), o.to_owned()));
    assert_eq!(module_ops, expected);
    let device_ops: Vec<String> = all
        .iter()
        .filter(|e| application(e, "opType").is_some() && application(e, "moduleId").is_none())
        .map(|e| application(e, "opType").unwrap())
        .collect();
    assert_eq!(device_ops, ["createDeviceIdentity", "deviceConnected"]);
    for event in all.iter().filter(|e| application(e, "moduleId").is_some()) {
        assert_eq!(application(event, "deviceId").as_deref(), Some("edge-1"));
        assert_eq!(
            system(event, "iothub-connection-device-id").as_deref(),
            Some("edge-1")
        );
        let expected_module_id = match system(event, "iothub-message-source").as_deref() {
            // The schema lists the system property for lifecycle and twin events only.
            Some("deviceConnectionStateEvents") => None,
            _ => Some("sensor".to_owned()),
        };
        assert_eq!(
            system(event, "iothub-connection-module-id"),
            expected_module_id
        );
    }
    let created = all
        .iter()
        .find(|e| {
            application(e, "opType").as_deref() == Some("createDeviceIdentity")
                && application(e, "moduleId").is_some()
        })
        .unwrap();
    assert_eq!(body(created)["moduleId"], "sensor");
    assert_eq!(body(created)["deviceId"], "edge-1");
    let reported = all
        .iter()
        .find(|e| body(e)["properties"]["reported"]["firmware"] == "2.1")
        .expect("the reported patch is an updateTwin event");
    assert_eq!(application(reported, "moduleId").as_deref(), Some("sensor"));
    let telemetry = all
        .iter()
        .find(|e| system(e, "iothub-message-source").as_deref() == Some("Telemetry"))
        .expect("the module's telemetry is on the stream");
    assert_eq!(telemetry.body.as_ref(), br#"{"temperature":21}"#);
    assert_eq!(
        system(telemetry, "iothub-connection-module-id").as_deref(),
        Some("sensor")
    );
    assert_eq!(
        system(telemetry, "iothub-connection-device-id").as_deref(),
        Some("edge-1")
    );
    assert_eq!(
        system(telemetry, "content-type").as_deref(),
        Some("application/json")
    );
}

#[tokio::test]
async fn module_credentials_are_the_modules_own_and_bad_requests_are_refused() {
    let emu = TestEmulator::start().await;
    let host = emu.hub_host(0);
    let device = emu.hub_device(0, "edge-2").await;
    let key = create_module(&emu, "edge-2", "m1").await;

    let device_key_token = module_token(&host, "edge-2", "m1", &device.key);
    let (_, ack) = raw_module_connect(&emu, "edge-2", "m1", &device_key_token).await;
    assert_eq!(
        ack,
        connack(ConnectReturnCode::NotAuthorized),
        "a device key is not a module key"
    );
    let device_resource = SasToken::sign(
        &format!("{host}/devices/edge-2"),
        &key,
        None,
        unix_now() + 600,
    );
    let (_, ack) = raw_module_connect(&emu, "edge-2", "m1", device_resource.expose()).await;
    assert_eq!(
        ack,
        connack(ConnectReturnCode::NotAuthorized),
        "a token for the device"
    );
    let (_, ack) = raw_module_connect(
        &emu,
        "edge-2",
        "nope",
        &module_token(&host, "edge-2", "nope", &key),
    )
    .await;
    assert_eq!(
        ack,
        connack(ConnectReturnCode::NotAuthorized),
        "an unknown module"
    );

    for (path, body, status) in [
        ("devices/ghost/modules/m1", json!({}), 404),
        ("devices/edge-2/modules/a%23b", json!({}), 400),
        (
            "devices/edge-2/modules/m2",
            json!({ "moduleId": "other" }),
            400,
        ),
        (
            "devices/edge-2/modules/m2",
            json!({ "authentication": { "type": "sas", "symmetricKey": { "primaryKey": "short" } } }),
            400,
        ),
    ] {
        let answer = emu.hub_call(0, Method::PUT, path, Some(&body), None).await;
        assert_eq!(answer.status, status, "{path} {body}: {}", answer.body);
    }
    let stale = emu
        .hub_call(
            0,
            Method::PATCH,
            "twins/edge-2/modules/m1",
            Some(&json!({ "tags": { "a": 1 } })),
            Some("\"not-the-etag\""),
        )
        .await;
    assert_eq!(stale.status, 412);
    let offline = emu
        .hub_call(
            0,
            Method::POST,
            "twins/edge-2/modules/m1/methods",
            Some(&json!({ "methodName": "ping" })),
            None,
        )
        .await;
    assert_eq!(offline.status, 404);
    assert!(offline.body["Message"]
        .as_str()
        .unwrap()
        .contains("DeviceNotOnline"));
    assert_eq!(
        emu.hub_call(0, Method::GET, "devices/edge-2/modules", None, None)
            .await
            .body
            .as_array()
            .map(Vec::len),
        Some(1),
        "refused requests created nothing"
    );
}

#[tokio::test]
async fn device_and_module_connections_are_independent_and_deleting_the_device_takes_its_modules() {
    let emu = TestEmulator::start().await;
    let host = emu.hub_host(0);
    let device = emu.hub_device(0, "edge-3").await;
    let key = create_module(&emu, "edge-3", "m1").await;
    let token = module_token(&host, "edge-3", "m1", &key);

    let (mut module_connection, ack) = raw_module_connect(&emu, "edge-3", "m1", &token).await;
    assert_eq!(ack, connack(ConnectReturnCode::Accepted));
    let (mut device_connection, ack) = emu.hub_connect(&device, 600).await;
    assert_eq!(ack, connack(ConnectReturnCode::Accepted));
    module_connection.send(&Packet::PingReq).await;
    assert_eq!(
        module_connection.next().await,
        Some(Packet::PingResp),
        "the device connecting leaves the module connected"
    );
    // A second connection of the module replaces the first; the device stays.
    let (mut second, ack) = raw_module_connect(&emu, "edge-3", "m1", &token).await;
    assert_eq!(ack, connack(ConnectReturnCode::Accepted));
    assert!(module_connection.is_closed_by_server().await);
    device_connection.send(&Packet::PingReq).await;
    assert_eq!(device_connection.next().await, Some(Packet::PingResp));
    // A module may not publish as its device.
    second
        .publish(
            "devices/edge-3/messages/events/",
            emulator::net::mqtt_codec::QoS::AtMostOnce,
            0,
            b"posing",
        )
        .await;
    assert!(second.is_closed_by_server().await);
    let (mut module_connection, _) = raw_module_connect(&emu, "edge-3", "m1", &token).await;

    let deleted = emu
        .hub_call(0, Method::DELETE, "devices/edge-3", None, None)
        .await;
    assert_eq!(deleted.status, 204);
    assert!(
        module_connection.is_closed_by_server().await,
        "the module's connection closes"
    );
    assert!(device_connection.is_closed_by_server().await);
    assert_eq!(
        emu.hub_call(0, Method::GET, "devices/edge-3/modules", None, None)
            .await
            .status,
        404
    );
    emu.hub_device(0, "edge-3").await;
    let listed = emu
        .hub_call(0, Method::GET, "devices/edge-3/modules", None, None)
        .await;
    assert_eq!(
        listed.body,
        json!([]),
        "a re-created device starts without modules"
    );
    assert!(events(&emu, "edge-3")
        .await
        .iter()
        .all(|e| e.body.as_ref() != b"posing"));
}
