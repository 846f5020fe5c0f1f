//! Device registration over MQTT, and the MQTT listener's behaviour under bad clients.
// In a test crate a panic, with the failing call's message, is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use emulator::dps::model::RegistrationStatus;
use emulator::fleet::ClientError;
use emulator::net::mqtt_codec::{ConnectReturnCode, Packet, Publish, QoS};
use iot_credentials::{derive_device_key, SharedAccessKey};
use reqwest::Method;
use serde_json::json;
use support::{dps_connect, RawConnection, TestEmulator, WebhookStub};

#[tokio::test]
async fn a_device_registers_over_mqtt_with_its_payload_passed_through() {
    let emu = TestEmulator::start().await;
    let hub = emu.hub_host(0);
    let webhook = WebhookStub::start(
        200,
        json!({ "iotHubHostName": hub, "payload": { "ack": 1 } }),
    )
    .await;
    let device = emu
        .enroll("mqtt-1", json!({
            "allocationPolicy": "custom",
            "customAllocationDefinition": { "webhookUrl": webhook.url, "apiVersion": "2021-10-01" },
        }))
        .await;
    let state = emu
        .register_mqtt(&device, Some(json!({ "fw": "1.0" })))
        .await
        .expect("registers over MQTT");
    assert_eq!(state.status, RegistrationStatus::Assigned);
    assert_eq!(state.assigned_hub.as_deref(), Some(hub.as_str()));
    assert_eq!(
        state.payload,
        Some(json!({ "ack": 1 })),
        "the webhook's payload reaches the device"
    );
    assert_eq!(
        webhook.requests()[0]["deviceRuntimeContext"]["payload"],
        json!({ "fw": "1.0" })
    );
    assert!(emu.hub_get(&hub, "devices/mqtt-1").await.is_some());
}

#[tokio::test]
async fn group_devices_register_over_mqtt_with_derived_keys() {
    let emu = TestEmulator::start().await;
    let group_key = SharedAccessKey::generate(64);
    emu.service_call(Method::PUT, "enrollmentGroups/mqtt-group", Some(&json!({
        "enrollmentGroupId": "mqtt-group",
        "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": group_key.expose_base64() } },
    })))
    .await;
    let device = emu.device("mqtt-g-7", derive_device_key(&group_key, "mqtt-g-7"));
    assert!(emu.register_mqtt(&device, None).await.is_ok());
}

#[tokio::test]
async fn a_wrong_key_is_refused_at_connect() {
    let emu = TestEmulator::start().await;
    emu.enroll("mqtt-victim", json!({})).await;
    let impostor = emu.device("mqtt-victim", SharedAccessKey::generate(64));
    let result = emu.register_mqtt(&impostor, None).await;
    assert!(
        matches!(result, Err(ClientError::Unauthorized(_))),
        "{result:?}"
    );

    let mut raw = RawConnection::open(&emu, emu.running.dps_mqtt_address()).await;
    raw.send(&dps_connect(&impostor)).await;
    assert_eq!(
        raw.next().await,
        Some(Packet::ConnAck {
            session_present: false,
            code: ConnectReturnCode::NotAuthorized
        })
    );
    assert!(raw.is_closed_by_server().await);
}

#[tokio::test]
async fn a_disabled_enrollment_is_answered_disabled_over_mqtt() {
    let emu = TestEmulator::start().await;
    let device = emu
        .enroll("mqtt-off", json!({ "provisioningStatus": "disabled" }))
        .await;
    let result = emu.register_mqtt(&device, None).await;
    assert!(
        matches!(result, Err(ClientError::NotAssigned { ref status, .. }) if status == "disabled"),
        "{result:?}"
    );
}

#[tokio::test]
async fn garbage_closes_only_that_connection() {
    let emu = TestEmulator::start().await;
    let device = emu.enroll("survivor", json!({})).await;
    let address = emu.running.dps_mqtt_address();

    // Not TLS at all.
    let mut plain = tokio::net::TcpStream::connect(address).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut sink),
    )
    .await;
    assert!(read.is_ok(), "the server closes a non-TLS connection");

    // TLS, then bytes that are not MQTT.
    let mut garbage = RawConnection::open(&emu, address).await;
    garbage.write(&[0xff; 64]).await;
    assert!(garbage.is_closed_by_server().await);

    // A CONNECT whose remaining length runs past the end, then silence... then a packet that lies.
    let mut truncated = RawConnection::open(&emu, address).await;
    truncated.write(&[0x10, 0x7f, 0x00, 0x04, b'M', b'Q']).await;
    truncated.write(&[0x30; 200]).await;
    assert!(truncated.is_closed_by_server().await);

    // Meanwhile a well-behaved device registers.
    let mut good = RawConnection::open(&emu, address).await;
    good.send(&dps_connect(&device)).await;
    assert_eq!(
        good.next().await,
        Some(Packet::ConnAck {
            session_present: false,
            code: ConnectReturnCode::Accepted
        })
    );
    assert!(emu.register_mqtt(&device, None).await.is_ok());
}

#[tokio::test]
async fn qos2_and_foreign_topics_close_the_connection() {
    let emu = TestEmulator::start().await;
    let device = emu.enroll("rule-breaker", json!({})).await;
    let address = emu.running.dps_mqtt_address();
    let publish = |topic: &str, qos: QoS| {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.to_owned(),
            pkid: if qos == QoS::AtMostOnce { 0 } else { 1 },
            payload: bytes::Bytes::from_static(b"{}"),
        })
    };
    for packet in [
        publish(
            "$dps/registrations/PUT/iotdps-register/?$rid=1",
            QoS::ExactlyOnce,
        ),
        publish("devices/rule-breaker/messages/events/", QoS::AtMostOnce),
    ] {
        let mut raw = RawConnection::open(&emu, address).await;
        raw.send(&dps_connect(&device)).await;
        assert!(matches!(
            raw.next().await,
            Some(Packet::ConnAck {
                code: ConnectReturnCode::Accepted,
                ..
            })
        ));
        raw.send(&packet).await;
        assert!(raw.is_closed_by_server().await, "{packet:?}");
    }
}

#[tokio::test]
async fn unknown_protocol_versions_are_refused() {
    let emu = TestEmulator::start().await;
    let device = emu.enroll("mqtt5-client", json!({})).await;
    let mut connect = dps_connect(&device);
    if let Packet::Connect(c) = &mut connect {
        c.protocol_level = 5;
    }
    let mut raw = RawConnection::open(&emu, emu.running.dps_mqtt_address()).await;
    raw.send(&connect).await;
    assert_eq!(
        raw.next().await,
        Some(Packet::ConnAck {
            session_present: false,
            code: ConnectReturnCode::BadProtocolVersion
        })
    );
}

#[tokio::test]
async fn beyond_the_registration_rate_the_answer_topic_is_429_with_retry_after() {
    let emu = TestEmulator::start_with(|config| {
        config.registration_rate = Some(emulator::dps::rate_limit::Rate {
            per_minute: 6,
            burst: 1,
        });
    })
    .await;
    let first = emu.enroll("mqtt-rate-1", json!({})).await;
    let second = emu.enroll("mqtt-rate-2", json!({})).await;
    assert!(emu.register_mqtt(&first, None).await.is_ok());

    let mut raw = RawConnection::open(&emu, emu.running.dps_mqtt_address()).await;
    raw.send(&dps_connect(&second)).await;
    assert!(matches!(
        raw.next().await,
        Some(Packet::ConnAck {
            code: ConnectReturnCode::Accepted,
            ..
        })
    ));
    raw.send(&Packet::Subscribe {
        pkid: 1,
        filters: vec![("$dps/registrations/res/#".into(), QoS::AtLeastOnce)],
    })
    .await;
    assert!(matches!(raw.next().await, Some(Packet::SubAck { .. })));
    raw.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "$dps/registrations/PUT/iotdps-register/?$rid=7".into(),
        pkid: 0,
        payload: bytes::Bytes::from(json!({ "registrationId": "mqtt-rate-2" }).to_string()),
    }))
    .await;
    let Some(Packet::Publish(answer)) = raw.next().await else {
        panic!("no answer to the register request");
    };
    // Six a minute: the next registration is ten seconds away.
    assert_eq!(
        answer.topic,
        "$dps/registrations/res/429/?$rid=7&retry-after=10"
    );
    let body: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(body["errorCode"], 429001);
    assert_eq!(emu.running.dps().registration_counts().throttled, 1);
}
