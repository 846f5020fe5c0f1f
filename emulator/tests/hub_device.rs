//! The IoT Hub device endpoint: authentication, Azure's connection rules, telemetry, twins,
//! direct methods and cloud-to-device messages, and the events each produces.
// In a test crate a panic, with the failing call's message, is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use emulator::net::mqtt_codec::{ConnectReturnCode, Packet, QoS};
use iot_credentials::sas::unix_now;
use iot_credentials::{SasToken, SharedAccessKey};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use support::TestEmulator;

fn accepted(connack: &Option<Packet>) -> bool {
    matches!(
        connack,
        Some(Packet::ConnAck {
            code: ConnectReturnCode::Accepted,
            ..
        })
    )
}

fn application(event: &emulator::events::Event, name: &str) -> Option<String> {
    event
        .properties
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn system(event: &emulator::events::Event, name: &str) -> Option<String> {
    event
        .system_properties
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[tokio::test]
async fn forged_expired_or_misdirected_tokens_get_not_authorized() {
    let emu = TestEmulator::start().await;
    let device = emu.hub_device(0, "locked-out").await;
    let resource = format!("{}/devices/locked-out", device.hub_host);
    let forged = SasToken::sign(
        &resource,
        &SharedAccessKey::generate(32),
        None,
        unix_now() + 600,
    );
    let expired = SasToken::sign(&resource, &device.key, None, unix_now() - 60);
    let other_device = SasToken::sign(
        &format!("{}/devices/someone-else", device.hub_host),
        &device.key,
        None,
        unix_now() + 600,
    );
    for (case, token) in [
        ("forged", forged),
        ("expired", expired),
        ("other device", other_device),
    ] {
        let (mut connection, connack) = emu.hub_connect_with(&device, token.expose()).await;
        assert_eq!(
            connack,
            Some(Packet::ConnAck {
                session_present: false,
                code: ConnectReturnCode::NotAuthorized
            }),
            "{case}"
        );
        assert!(connection.is_closed_by_server().await, "{case}");
    }
    let unknown = support::HubDevice {
        hub_host: device.hub_host.clone(),
        device_id: "never-created".into(),
        key: device.key.clone(),
    };
    assert!(!accepted(&emu.hub_connect(&unknown, 600).await.1));
}

#[tokio::test]
async fn the_connection_closes_when_its_token_expires() {
    let emu = TestEmulator::start().await;
    let device = emu.hub_device(0, "short-lived").await;
    let (mut connection, connack) = emu.hub_connect(&device, 2).await;
    assert!(accepted(&connack));
    let started = std::time::Instant::now();
    assert!(connection.is_closed_by_server().await);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "closed at expiry, not much later"
    );
    let disconnected = emu
        .wait_for_event(&device.hub_host, "short-lived", |e| {
            application(e, "opType").as_deref() == Some("deviceDisconnected")
        })
        .await;
    assert_eq!(
        system(&disconnected, "iothub-message-source").as_deref(),
        Some("deviceConnectionStateEvents")
    );
}

#[tokio::test]
async fn a_new_connection_for_the_same_device_drops_the_old_one() {
    let emu = TestEmulator::start().await;
    let device = emu.hub_device(0, "twice").await;
    let (mut first, connack) = emu.hub_connect(&device, 600).await;
    assert!(accepted(&connack));
    let (mut second, connack) = emu.hub_connect(&device, 600).await;
    assert!(accepted(&connack));
    assert!(first.is_closed_by_server().await);
    second.send(&Packet::PingReq).await;
    assert_eq!(
        second.next().await,
        Some(Packet::PingResp),
        "the newer connection stays"
    );
    let state = emu
        .hub_call(0, Method::GET, "devices/twice", None, None)
        .await;
    assert_eq!(state.body["connectionState"], "Connected");
    let ops: Vec<String> = emu
        .events_of(&device.hub_host, "twice")
        .await
        .iter()
        .filter_map(|e| application(e, "opType"))
        .collect();
    assert_eq!(
        ops,
        [
            "createDeviceIdentity",
            "deviceConnected",
            "deviceDisconnected",
            "deviceConnected"
        ]
    );
    // Connection-state sequence numbers only grow, so consumers can order them.
    let sequences: Vec<String> = emu
        .events_of(&device.hub_host, "twice")
        .await
        .iter()
        .filter(|e| {
            system(e, "iothub-message-source").as_deref() == Some("deviceConnectionStateEvents")
        })
        .map(|e| {
            serde_json::from_slice::<Value>(&e.body).unwrap()["sequenceNumber"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
}

#[tokio::test]
async fn a_device_may_only_use_its_own_topics() {
    let emu = TestEmulator::start().await;
    let alice = emu.hub_device(0, "alice").await;
    let bob = emu.hub_device(0, "bob").await;
    let (mut bob_connection, connack) = emu.hub_connect(&bob, 600).await;
    assert!(accepted(&connack));

    let (mut alice_connection, _) = emu.hub_connect(&alice, 600).await;
    alice_connection
        .publish(
            "devices/bob/messages/events/",
            QoS::AtMostOnce,
            0,
            b"spoofed",
        )
        .await;
    assert!(
        alice_connection.is_closed_by_server().await,
        "publishing as another device closes the connection"
    );

    let (mut alice_connection, _) = emu.hub_connect(&alice, 600).await;
    alice_connection
        .send(&Packet::Subscribe {
            pkid: 1,
            filters: vec![(
                "devices/bob/messages/devicebound/#".into(),
                QoS::AtLeastOnce,
            )],
        })
        .await;
    assert!(
        alice_connection.is_closed_by_server().await,
        "listening to another device closes the connection"
    );

    assert!(emu
        .events_of(&bob.hub_host, "bob")
        .await
        .iter()
        .all(|e| e.body.as_ref() != b"spoofed"));
    bob_connection.send(&Packet::PingReq).await;
    assert_eq!(
        bob_connection.next().await,
        Some(Packet::PingResp),
        "bob is unaffected"
    );
}

#[tokio::test]
async fn qos2_and_malformed_packets_close_only_that_connection() {
    let emu = TestEmulator::start().await;
    let device = emu.hub_device(0, "rule-breaker").await;
    let bystander = emu.hub_device(0, "bystander").await;
    let (mut keeper, _) = emu.hub_connect(&bystander, 600).await;

    let (mut connection, _) = emu.hub_connect(&device, 600).await;
    connection
        .publish(
            "devices/rule-breaker/messages/events/",
            QoS::ExactlyOnce,
            1,
            b"{}",
        )
        .await;
    assert!(connection.is_closed_by_server().await);

    let (mut connection, _) = emu.hub_connect(&device, 600).await;
    connection.write(&[0x62, 0x02, 0x00, 0x00]).await; // PUBREL with packet id 0
    assert!(connection.is_closed_by_server().await);

    let (mut connection, _) = emu.hub_connect(&device, 600).await;
    connection
        .publish("$iothub/unknown/topic", QoS::AtMostOnce, 0, b"{}")
        .await;
    assert!(connection.is_closed_by_server().await);

    keeper.send(&Packet::PingReq).await;
    assert_eq!(keeper.next().await, Some(Packet::PingResp));
}

#[tokio::test]
async fn telemetry_reaches_the_stream_with_azures_properties() {
    let emu = TestEmulator::start().await;
    let device = emu.hub_device(1, "thermo").await;
    let (mut connection, _) = emu.hub_connect(&device, 600).await;
    connection
        .publish(
            "devices/thermo/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8&%24.mid=m-1&alert=high%20temp",
            QoS::AtLeastOnce,
            9,
            br#"{"temperature":42}"#,
        )
        .await;
    assert_eq!(connection.next().await, Some(Packet::PubAck(9)));
    connection
        .publish(
            "devices/thermo/messages/events/",
            QoS::AtMostOnce,
            0,
            b"plain",
        )
        .await;
    let event = emu
        .wait_for_event(&device.hub_host, "thermo", |e| {
            e.body.as_ref() == br#"{"temperature":42}"#
        })
        .await;
    assert_eq!(
        system(&event, "iothub-message-source").as_deref(),
        Some("Telemetry")
    );
    assert_eq!(
        system(&event, "content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(system(&event, "content-encoding").as_deref(), Some("utf-8"));
    assert_eq!(system(&event, "message-id").as_deref(), Some("m-1"));
    assert_eq!(
        system(&event, "iothub-connection-device-id").as_deref(),
        Some("thermo")
    );
    assert!(system(&event, "iothub-enqueuedtime").is_some());
    assert_eq!(application(&event, "alert").as_deref(), Some("high temp"));
    emu.wait_for_event(&device.hub_host, "thermo", |e| e.body.as_ref() == b"plain")
        .await;
    let state = emu
        .hub_call(1, Method::GET, "devices/thermo", None, None)
        .await;
    assert_ne!(state.body["lastActivityTime"], "0001-01-01T00:00:00Z");
}

#[tokio::test]
async fn twins_read_report_and_receive_desired_changes() {
    let emu = TestEmulator::start().await;
    let device = emu.hub_device(0, "twinned").await;
    let (mut connection, _) = emu.hub_connect(&device, 600).await;
    let codes = connection
        .subscribe(&[
            "$iothub/twin/res/#",
            "$iothub/twin/PATCH/properties/desired/#",
            "not/a/real/topic",
        ])
        .await;
    assert_eq!(codes, [1, 1, 0x80]);

    connection
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=1",
            QoS::AtMostOnce,
            0,
            br#"{"fw":"1.0","cfg":{"a":1,"b":2}}"#,
        )
        .await;
    let answer = connection.next_publish().await.unwrap();
    assert_eq!(answer.topic, "$iothub/twin/res/204/?$rid=1&$version=2");
    connection
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=2",
            QoS::AtMostOnce,
            0,
            br#"{"cfg":{"a":null}}"#,
        )
        .await;
    assert_eq!(
        connection.next_publish().await.unwrap().topic,
        "$iothub/twin/res/204/?$rid=2&$version=3"
    );
    connection
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=3",
            QoS::AtMostOnce,
            0,
            b"not json",
        )
        .await;
    assert!(connection
        .next_publish()
        .await
        .unwrap()
        .topic
        .starts_with("$iothub/twin/res/400/?$rid=3"));

    connection
        .publish("$iothub/twin/GET/?$rid=4", QoS::AtMostOnce, 0, b"")
        .await;
    let twin = connection.next_publish().await.unwrap();
    assert_eq!(twin.topic, "$iothub/twin/res/200/?$rid=4");
    let twin: Value = serde_json::from_slice(&twin.payload).unwrap();
    assert_eq!(
        twin["reported"],
        json!({ "fw": "1.0", "cfg": { "b": 2 }, "$version": 3 })
    );

    let service_twin = emu
        .hub_call(0, Method::GET, "twins/twinned", None, None)
        .await
        .body;
    let etag = service_twin["etag"].as_str().unwrap().to_owned();
    let patched = emu
        .hub_call(
            0,
            Method::PATCH,
            "twins/twinned",
            Some(
                &json!({ "tags": { "site": "A" }, "properties": { "desired": { "interval": 5 } } }),
            ),
            Some(&etag),
        )
        .await;
    assert_eq!(patched.status, 200);
    let pushed = connection.next_publish().await.unwrap();
    assert_eq!(
        pushed.topic,
        "$iothub/twin/PATCH/properties/desired/?$version=2"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&pushed.payload).unwrap(),
        json!({ "interval": 5, "$version": 2 })
    );

    let stale = emu
        .hub_call(
            0,
            Method::PATCH,
            "twins/twinned",
            Some(&json!({ "tags": { "site": "B" } })),
            Some(&etag),
        )
        .await;
    assert_eq!(stale.status, 412);
    let reported_by_service = emu
        .hub_call(
            0,
            Method::PATCH,
            "twins/twinned",
            Some(&json!({ "properties": { "reported": { "x": 1 } } })),
            None,
        )
        .await;
    assert_eq!(reported_by_service.status, 400);

    let twin_events: Vec<Value> = emu
        .events_of(&device.hub_host, "twinned")
        .await
        .iter()
        .filter(|e| application(e, "opType").as_deref() == Some("updateTwin"))
        .map(|e| serde_json::from_slice(&e.body).unwrap())
        .collect();
    assert_eq!(
        twin_events.len(),
        3,
        "two reported patches and one service patch: {twin_events:?}"
    );
    assert_eq!(twin_events[0]["properties"]["reported"]["fw"], "1.0");
    assert_eq!(twin_events[2]["properties"]["desired"]["interval"], 5);
    assert!(twin_events
        .windows(2)
        .all(|w| w[0]["version"].as_u64() < w[1]["version"].as_u64()));
}

#[tokio::test]
async fn direct_methods_relay_the_reply_or_time_out_as_azure_does() {
    let emu = TestEmulator::start().await;
    let device = emu.hub_device(0, "callable").await;
    let offline = emu
        .hub_call(
            0,
            Method::POST,
            "twins/callable/methods",
            Some(&json!({ "methodName": "reboot", "payload": {} })),
            None,
        )
        .await;
    assert_eq!(offline.status, 404);
    assert!(offline.body["Message"]
        .as_str()
        .unwrap()
        .contains("DeviceNotOnline"));

    let (mut connection, _) = emu.hub_connect(&device, 600).await;
    connection.subscribe(&["$iothub/methods/POST/#"]).await;
    let call = {
        let emu = &emu;
        async move {
            emu.hub_call(0, Method::POST, "twins/callable/methods", Some(&json!({ "methodName": "reboot", "payload": { "delay": 3 }, "responseTimeoutInSeconds": 5 })), None)
                .await
        }
    };
    let device_side = async {
        let request = connection.next_publish().await.unwrap();
        assert!(
            request
                .topic
                .starts_with("$iothub/methods/POST/reboot/?$rid="),
            "{}",
            request.topic
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&request.payload).unwrap(),
            json!({ "delay": 3 })
        );
        let rid = request.topic.rsplit("$rid=").next().unwrap().to_owned();
        connection
            .publish(
                &format!("$iothub/methods/res/202/?$rid={rid}"),
                QoS::AtMostOnce,
                0,
                br#"{"accepted":true}"#,
            )
            .await;
        connection
    };
    let (answer, mut connection) = tokio::join!(call, device_side);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({ "status": 202, "payload": { "accepted": true } })
    );

    // A device that never answers: the caller gets 504 after responseTimeoutInSeconds.
    let started = std::time::Instant::now();
    let hang = json!({ "methodName": "hang", "responseTimeoutInSeconds": 5 });
    let (silent, _) = tokio::join!(
        emu.hub_call(0, Method::POST, "twins/callable/methods", Some(&hang), None),
        connection.next_publish()
    );
    assert_eq!(silent.status, 504);
    assert!(started.elapsed() >= Duration::from_secs(5));
    let bad = emu
        .hub_call(
            0,
            Method::POST,
            "twins/callable/methods",
            Some(&json!({ "methodName": "x", "responseTimeoutInSeconds": 1 })),
            None,
        )
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn cloud_messages_are_redelivered_until_acknowledged_even_across_reconnects() {
    let emu = TestEmulator::start().await;
    let device = emu.hub_device(0, "mailbox").await;
    let sent = emu
        .http
        .post(format!(
            "https://{}/devices/mailbox/messages/devicebound?api-version=2021-04-12",
            emu.running.hub_https_addresses()[0]
        ))
        .header(
            "Authorization",
            iot_credentials::ServiceConnectionString::parse(
                &emu.running.endpoints().hubs[0].connection_string,
            )
            .unwrap()
            .sas_token(unix_now() + 600)
            .expose(),
        )
        .header("iothub-messageid", "msg-1")
        .header("iothub-app-priority", "high")
        .header("content-type", "application/json")
        .body(r#"{"command":"wake"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 204);
    assert_eq!(
        emu.hub_call(0, Method::GET, "devices/mailbox", None, None)
            .await
            .body["cloudToDeviceMessageCount"],
        1
    );

    let (mut connection, _) = emu.hub_connect(&device, 600).await;
    connection
        .subscribe(&["devices/mailbox/messages/devicebound/#"])
        .await;
    let first = connection.next_publish().await.unwrap();
    assert_eq!(first.qos, QoS::AtLeastOnce);
    assert!(
        first
            .topic
            .starts_with("devices/mailbox/messages/devicebound/"),
        "{}",
        first.topic
    );
    assert!(
        first.topic.contains("%24.mid=msg-1") && first.topic.contains("priority=high"),
        "{}",
        first.topic
    );
    assert_eq!(first.payload.as_ref(), br#"{"command":"wake"}"#);
    drop(connection); // gone without acknowledging

    let (mut connection, _) = emu.hub_connect(&device, 600).await;
    connection
        .subscribe(&["devices/mailbox/messages/devicebound/#"])
        .await;
    let again = connection.next_publish().await.unwrap();
    assert_eq!(
        again.payload, first.payload,
        "an unacknowledged message comes back"
    );
    connection.send(&Packet::PubAck(again.pkid)).await;
    connection.send(&Packet::PingReq).await;
    assert_eq!(connection.next().await, Some(Packet::PingResp));
    assert_eq!(
        emu.hub_call(0, Method::GET, "devices/mailbox", None, None)
            .await
            .body["cloudToDeviceMessageCount"],
        0
    );
}

#[tokio::test]
async fn the_registry_api_creates_updates_and_deletes_with_etags_and_events() {
    let emu = TestEmulator::start().await;
    let created = emu
        .hub_call(
            0,
            Method::PUT,
            "devices/reg-1",
            Some(&json!({ "deviceId": "reg-1" })),
            None,
        )
        .await;
    assert_eq!(created.status, 200);
    assert_eq!(created.body["status"], "enabled");
    assert_eq!(created.body["connectionState"], "Disconnected");
    let again = emu
        .hub_call(
            0,
            Method::PUT,
            "devices/reg-1",
            Some(&json!({ "deviceId": "reg-1" })),
            None,
        )
        .await;
    assert_eq!(again.status, 409);
    let etag = created.body["etag"].as_str().unwrap().to_owned();
    let disabled = emu
        .hub_call(
            0,
            Method::PUT,
            "devices/reg-1",
            Some(&json!({ "deviceId": "reg-1", "status": "disabled" })),
            Some(&etag),
        )
        .await;
    assert_eq!(disabled.body["status"], "disabled");
    let stale = emu
        .hub_call(
            0,
            Method::PUT,
            "devices/reg-1",
            Some(&json!({ "deviceId": "reg-1" })),
            Some(&etag),
        )
        .await;
    assert_eq!(stale.status, 412);
    let device = support::HubDevice {
        hub_host: emu.hub_host(0),
        device_id: "reg-1".into(),
        key: SharedAccessKey::from_base64(
            created.body["authentication"]["symmetricKey"]["primaryKey"]
                .as_str()
                .unwrap(),
        )
        .unwrap(),
    };
    assert!(
        !accepted(&emu.hub_connect(&device, 600).await.1),
        "a disabled device cannot connect"
    );
    assert_eq!(
        emu.hub_call(0, Method::DELETE, "devices/reg-1", None, Some("*"))
            .await
            .status,
        204
    );
    assert_eq!(
        emu.hub_call(0, Method::GET, "devices/reg-1", None, None)
            .await
            .status,
        404
    );
    let ops: Vec<String> = emu
        .events_of(&emu.hub_host(0), "reg-1")
        .await
        .iter()
        .filter_map(|e| application(e, "opType"))
        .collect();
    assert_eq!(ops, ["createDeviceIdentity", "deleteDeviceIdentity"]);
    let bad = emu
        .hub_call(0, Method::PUT, "devices/bad%20id", Some(&json!({})), None)
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn dps_assignment_creates_the_identity_and_its_lifecycle_event() {
    let emu = TestEmulator::start().await;
    let device = emu
        .enroll(
            "via-dps",
            json!({ "allocationPolicy": "static", "iotHubs": [emu.hub_host(1)] }),
        )
        .await;
    emu.register(&device).await.unwrap();
    let created = emu
        .wait_for_event(&emu.hub_host(1), "via-dps", |e| {
            application(e, "opType").as_deref() == Some("createDeviceIdentity")
        })
        .await;
    assert_eq!(application(&created, "hubName").as_deref(), Some("hub-2"));
    assert_eq!(
        system(&created, "iothub-message-source").as_deref(),
        Some("deviceLifecycleEvents")
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&created.body).unwrap()["deviceId"],
        "via-dps"
    );
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_one_and_a_half_keep_alives() {
    let emu = TestEmulator::start().await;
    let device = emu.hub_device(0, "sleepy").await;
    let hub = emu.running.hub(&device.hub_host).unwrap();
    let mut connection = support::RawConnection::open(&emu, hub.mqtt).await;
    let token = SasToken::sign(
        &format!("{}/devices/sleepy", device.hub_host),
        &device.key,
        None,
        unix_now() + 600,
    );
    connection
        .send(&Packet::Connect(Box::new(
            emulator::net::mqtt_codec::Connect {
                protocol_name: "MQTT".into(),
                protocol_level: 4,
                client_id: "sleepy".into(),
                clean_session: true,
                keep_alive: 2,
                username: Some(format!(
                    "{}/sleepy/?api-version=2021-04-12",
                    device.hub_host
                )),
                password: Some(bytes::Bytes::from(token.expose().to_owned())),
                will: None,
            },
        )))
        .await;
    assert!(accepted(&connection.next().await));
    let started = std::time::Instant::now();
    assert!(connection.is_closed_by_server().await);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}
