//! The codec's tests: every packet type round-trips, malformed and partial input, limits,
//! topic filters, and any bytes decoding without a panic.

use super::*;
use bytes::{Bytes, BytesMut};

fn round_trip(packet: Packet) {
    let mut buf = BytesMut::new();
    encode(&packet, &mut buf);
    let decoded = decode(&mut buf, 1 << 20).unwrap().unwrap();
    assert_eq!(decoded, packet);
    assert!(buf.is_empty());
}

#[test]
fn every_packet_type_round_trips() {
    round_trip(Packet::Connect(Box::new(Connect {
        protocol_name: "MQTT".into(),
        protocol_level: 4,
        client_id: "dev-1".into(),
        clean_session: true,
        keep_alive: 60,
        username: Some("scope/registrations/dev-1/api-version=2019-03-31".into()),
        password: Some(Bytes::from_static(b"SharedAccessSignature sr=x")),
        will: Some(Will {
            topic: "w".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: false,
        }),
    })));
    round_trip(Packet::ConnAck {
        session_present: false,
        code: ConnectReturnCode::NotAuthorized,
    });
    round_trip(Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "devices/d/messages/events/".into(),
        pkid: 7,
        payload: Bytes::from(vec![0u8; 300]),
    }));
    round_trip(Packet::PubAck(7));
    round_trip(Packet::PubRel(3));
    round_trip(Packet::Subscribe {
        pkid: 1,
        filters: vec![("$dps/registrations/res/#".into(), QoS::AtLeastOnce)],
    });
    round_trip(Packet::SubAck {
        pkid: 1,
        codes: vec![1, 0x80],
    });
    round_trip(Packet::Unsubscribe {
        pkid: 2,
        filters: vec!["a/+/b".into()],
    });
    round_trip(Packet::UnsubAck(2));
    round_trip(Packet::PingReq);
    round_trip(Packet::PingResp);
    round_trip(Packet::Disconnect);
}

#[test]
fn debug_output_hides_the_password() {
    let connect = Connect {
        protocol_name: "MQTT".into(),
        protocol_level: 4,
        client_id: "d".into(),
        clean_session: true,
        keep_alive: 0,
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"SharedAccessSignature sig=secret")),
        will: None,
    };
    assert!(!format!("{connect:?}").contains("secret"));
}

#[test]
fn partial_input_asks_for_more_bytes() {
    let mut full = BytesMut::new();
    encode(&Packet::PubAck(9), &mut full);
    let mut partial = BytesMut::from(&full[..2]);
    assert_eq!(decode(&mut partial, 1024).unwrap(), None);
    partial.extend_from_slice(&full[2..]);
    assert_eq!(decode(&mut partial, 1024).unwrap(), Some(Packet::PubAck(9)));
}

#[test]
fn malformed_packets_are_errors_not_panics() {
    let cases: &[&[u8]] = &[
        &[0x00, 0x00],                         // reserved type 0
        &[0xf0, 0x00],                         // reserved type 15
        &[0x82, 0x02, 0x00, 0x01],             // SUBSCRIBE without filters
        &[0x80, 0x02, 0x00, 0x01],             // SUBSCRIBE with wrong flags
        &[0x36, 0x03, 0x00, 0x01, b'a'],       // PUBLISH QoS 3
        &[0x40, 0x02, 0x00, 0x00],             // PUBACK with packet id 0
        &[0x30, 0x03, 0x00, 0x01, b'#'],       // PUBLISH to a wildcard
        &[0xc0, 0x01, 0x00],                   // PINGREQ with a body
        &[0x10, 0x03, 0x00, 0x09, b'M'],       // CONNECT ending early
        &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], // five-byte remaining length
    ];
    for case in cases {
        let mut buf = BytesMut::from(*case);
        assert!(
            decode(&mut buf, 1 << 20).is_err(),
            "{case:02x?} should be refused"
        );
    }
}

#[test]
fn oversized_packets_are_refused_before_they_are_buffered() {
    let mut buf = BytesMut::from(&[0x30u8, 0xff, 0xff, 0x03][..]);
    assert_eq!(decode(&mut buf, 1024), Err(CodecError::TooLarge(65535)));
}

#[test]
fn topic_filters_match_as_the_specification_says() {
    assert!(topic_matches(
        "$dps/registrations/res/#",
        "$dps/registrations/res/202/?$rid=1"
    ));
    assert!(topic_matches(
        "devices/+/messages/events/",
        "devices/d1/messages/events/"
    ));
    assert!(!topic_matches("devices/+/x", "devices/d1/y"));
    assert!(!topic_matches("a/b", "a/b/c"));
    assert!(topic_matches("a/#", "a"));
}

mod properties {
    //! Any bytes decode without a panic; every packet this server can send or receive
    //! round-trips, whole or in pieces. A fixed seed keeps every run the same.
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    fn config() -> Config {
        Config {
            cases: 256,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(0x5eed_0012),
            ..Config::default()
        }
    }

    fn qos() -> impl Strategy<Value = QoS> {
        prop_oneof![
            Just(QoS::AtMostOnce),
            Just(QoS::AtLeastOnce),
            Just(QoS::ExactlyOnce)
        ]
    }

    fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    /// A topic name: no wildcards, no U+0000, not empty.
    fn topic() -> impl Strategy<Value = String> {
        "[^+#\u{0}]{1,40}"
    }

    /// A topic filter: levels of text, `+`, or a final `#`.
    fn filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof!["[^+#/\u{0}]{0,10}", Just("+".to_owned())], 1..5),
            any::<bool>(),
        )
            .prop_map(|(mut levels, hash)| {
                if hash {
                    levels.push("#".into());
                }
                levels.join("/")
            })
            .prop_filter("not empty", |f| !f.is_empty())
    }

    fn packet() -> impl Strategy<Value = Packet> {
        let pkid = 1u16..;
        let connect = (
            (
                "[^\u{0}]{0,10}",
                any::<u8>(),
                "[^\u{0}]{0,30}",
                any::<bool>(),
                any::<u16>(),
            ),
            prop::option::of(("[^\u{0}]{0,30}", prop::option::of(bytes(40)))),
            prop::option::of((topic(), bytes(40), qos(), any::<bool>())),
        )
            .prop_map(
                |((name, level, client_id, clean, keep_alive), user, will)| {
                    let (username, password) = match user {
                        Some((u, p)) => (Some(u), p),
                        None => (None, None),
                    };
                    Packet::Connect(Box::new(Connect {
                        protocol_name: name,
                        protocol_level: level,
                        client_id,
                        clean_session: clean,
                        keep_alive,
                        username,
                        password,
                        will: will.map(|(topic, payload, qos, retain)| Will {
                            topic,
                            payload,
                            qos,
                            retain,
                        }),
                    }))
                },
            );
        let publish = (
            any::<bool>(),
            qos(),
            any::<bool>(),
            topic(),
            pkid.clone(),
            bytes(300),
        )
            .prop_map(|(dup, qos, retain, topic, pkid, payload)| {
                let at_most_once = qos == QoS::AtMostOnce;
                Packet::Publish(Publish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic,
                    pkid: if at_most_once { 0 } else { pkid },
                    payload,
                })
            });
        let code = prop_oneof![
            Just(ConnectReturnCode::Accepted),
            Just(ConnectReturnCode::BadProtocolVersion),
            Just(ConnectReturnCode::IdentifierRejected),
            Just(ConnectReturnCode::ServerUnavailable),
            Just(ConnectReturnCode::BadUsernameOrPassword),
            Just(ConnectReturnCode::NotAuthorized),
        ];
        prop_oneof![
            connect,
            (any::<bool>(), code).prop_map(|(session_present, code)| Packet::ConnAck {
                session_present,
                code
            }),
            publish,
            pkid.clone().prop_map(Packet::PubAck),
            pkid.clone().prop_map(Packet::PubRec),
            pkid.clone().prop_map(Packet::PubRel),
            pkid.clone().prop_map(Packet::PubComp),
            (pkid.clone(), prop::collection::vec((filter(), qos()), 1..5))
                .prop_map(|(pkid, filters)| Packet::Subscribe { pkid, filters }),
            (pkid.clone(), prop::collection::vec(any::<u8>(), 0..5))
                .prop_map(|(pkid, codes)| Packet::SubAck { pkid, codes }),
            (pkid.clone(), prop::collection::vec(filter(), 1..5))
                .prop_map(|(pkid, filters)| Packet::Unsubscribe { pkid, filters }),
            pkid.prop_map(Packet::UnsubAck),
            Just(Packet::PingReq),
            Just(Packet::PingResp),
            Just(Packet::Disconnect),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn any_bytes_decode_to_packets_or_errors_without_a_panic(
            data in prop::collection::vec(any::<u8>(), 0..600),
            limit in 0usize..1024,
        ) {
            let mut buf = BytesMut::from(&data[..]);
            // Decoding stops at the first error or at "read more"; each packet consumes
            // bytes, so this ends.
            while let Ok(Some(_)) = decode(&mut buf, limit) {}
        }

        #[test]
        fn every_packet_round_trips_whole_and_in_pieces(
            packets in prop::collection::vec(packet(), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut wire = BytesMut::new();
            for packet in &packets {
                encode(packet, &mut wire);
            }
            let wire = wire.freeze();
            // The bytes arrive in two reads split anywhere: the first read's packets, then
            // "read more", then the rest.
            let at = cut.index(wire.len() + 1);
            let mut buf = BytesMut::from(&wire[..at]);
            let mut decoded = Vec::new();
            while let Some(packet) = decode(&mut buf, 1 << 20).unwrap() {
                decoded.push(packet);
            }
            buf.extend_from_slice(&wire[at..]);
            while let Some(packet) = decode(&mut buf, 1 << 20).unwrap() {
                decoded.push(packet);
            }
            prop_assert_eq!(decoded, packets);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn a_packet_over_the_limit_is_refused_before_it_is_read(
            payload in bytes(400),
            limit in 0usize..200,
        ) {
            // The topic's length prefix and its one byte, then the payload.
            let remaining = 3 + payload.len();
            let packet = Packet::Publish(Publish {
                dup: false, qos: QoS::AtMostOnce, retain: false,
                topic: "t".into(), pkid: 0, payload,
            });
            let mut wire = BytesMut::new();
            encode(&packet, &mut wire);
            // Only the fixed header has arrived.
            let mut head = BytesMut::from(&wire[..4.min(wire.len())]);
            let answer = decode(&mut head, limit);
            if remaining > limit {
                prop_assert_eq!(answer, Err(CodecError::TooLarge(remaining)));
            } else {
                prop_assert!(answer.is_ok());
            }
        }
    }
}
