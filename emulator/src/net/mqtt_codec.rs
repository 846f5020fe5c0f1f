//! MQTT 3.1.1 packets as a server reads and writes them (OASIS MQTT 3.1.1, chapters 2 and 3).
//!
//! Decoding is strict: anything the specification calls malformed is an error, and the caller
//! closes that one connection. Nothing here panics on input.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Quality of service levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QoS {
    /// At most once.
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once (Azure refuses it).
    ExactlyOnce = 2,
}

impl QoS {
    fn from_bits(bits: u8) -> Result<Self, CodecError> {
        match bits {
            0 => Ok(Self::AtMostOnce),
            1 => Ok(Self::AtLeastOnce),
            2 => Ok(Self::ExactlyOnce),
            _ => Err(CodecError::Malformed("QoS 3 does not exist")),
        }
    }
}

/// The CONNECT packet. `Debug` leaves the password (a SAS token) out.
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol name (`MQTT` for 3.1.1).
    pub protocol_name: String,
    /// Protocol level (4 for 3.1.1).
    pub protocol_level: u8,
    /// Client identifier.
    pub client_id: String,
    /// Clean-session flag.
    pub clean_session: bool,
    /// Keep-alive in seconds (0 = none).
    pub keep_alive: u16,
    /// User name.
    pub username: Option<String>,
    /// Password (a SAS token for Azure). Never logged.
    pub password: Option<Bytes>,
    /// Will message, if any.
    pub will: Option<Will>,
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("protocol_name", &self.protocol_name)
            .field("protocol_level", &self.protocol_level)
            .field("client_id", &self.client_id)
            .field("clean_session", &self.clean_session)
            .field("keep_alive", &self.keep_alive)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("will", &self.will)
            .finish()
    }
}

/// A last-will message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
}

/// A PUBLISH packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Redelivery flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Topic name (no wildcards).
    pub topic: String,
    /// Packet id; 0 for QoS 0.
    pub pkid: u16,
    /// Payload.
    pub payload: Bytes,
}

/// Every MQTT 3.1.1 control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Client asks to connect.
    Connect(Box<Connect>),
    /// Server answers a CONNECT.
    ConnAck {
        /// Whether a stored session was resumed.
        session_present: bool,
        /// 0 accepted; 1-5 refusals.
        code: ConnectReturnCode,
    },
    /// A message.
    Publish(Publish),
    /// QoS 1 acknowledgement.
    PubAck(u16),
    /// QoS 2, part 1.
    PubRec(u16),
    /// QoS 2, part 2.
    PubRel(u16),
    /// QoS 2, part 3.
    PubComp(u16),
    /// Subscribe to topic filters.
    Subscribe {
        /// Packet id.
        pkid: u16,
        /// Filters with requested QoS.
        filters: Vec<(String, QoS)>,
    },
    /// Answer to SUBSCRIBE: granted QoS per filter, or 0x80 for failure.
    SubAck {
        /// Packet id.
        pkid: u16,
        /// Return codes.
        codes: Vec<u8>,
    },
    /// Unsubscribe.
    Unsubscribe {
        /// Packet id.
        pkid: u16,
        /// Filters.
        filters: Vec<String>,
    },
    /// Answer to UNSUBSCRIBE.
    UnsubAck(u16),
    /// Keep-alive ping.
    PingReq,
    /// Keep-alive answer.
    PingResp,
    /// Orderly disconnect.
    Disconnect,
}

/// CONNACK return codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectReturnCode {
    /// Connection accepted.
    Accepted = 0,
    /// Unacceptable protocol version.
    BadProtocolVersion = 1,
    /// Client identifier rejected.
    IdentifierRejected = 2,
    /// Server unavailable.
    ServerUnavailable = 3,
    /// Bad user name or password.
    BadUsernameOrPassword = 4,
    /// Not authorized.
    NotAuthorized = 5,
}

/// Why a byte stream is not MQTT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The specification calls this malformed.
    #[error("malformed MQTT packet: {0}")]
    Malformed(&'static str),
    /// The packet exceeds the server's limit.
    #[error("MQTT packet of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Takes one packet off the front of `buf` if it is complete. `Ok(None)` means "read more".
pub fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Packet>, CodecError> {
    let Some((header_len, remaining)) = read_fixed_header(buf)? else {
        return Ok(None);
    };
    if remaining > max_packet_size {
        return Err(CodecError::TooLarge(remaining));
    }
    if buf.len() < header_len + remaining {
        buf.reserve(header_len + remaining - buf.len());
        return Ok(None);
    }
    let first = buf[0];
    buf.advance(header_len);
    let body = buf.split_to(remaining).freeze();
    decode_body(first >> 4, first & 0x0f, body).map(Some)
}

fn read_fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, CodecError> {
    let mut value = 0usize;
    let mut shift = 0;
    for i in 1..=4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        value |= ((byte & 0x7f) as usize) << shift;
        if byte & 0x80 == 0 {
            return Ok(Some((i + 1, value)));
        }
        shift += 7;
    }
    Err(CodecError::Malformed(
        "remaining length longer than four bytes",
    ))
}

fn decode_body(kind: u8, flags: u8, mut body: Bytes) -> Result<Packet, CodecError> {
    let expect_flags = |wanted: u8| {
        if flags == wanted {
            Ok(())
        } else {
            Err(CodecError::Malformed(
                "reserved fixed-header flags are wrong",
            ))
        }
    };
    let packet = match kind {
        1 => {
            expect_flags(0)?;
            Packet::Connect(Box::new(decode_connect(&mut body)?))
        }
        2 => {
            expect_flags(0)?;
            let ack = u8_of(&mut body)?;
            let code = match u8_of(&mut body)? {
                0 => ConnectReturnCode::Accepted,
                1 => ConnectReturnCode::BadProtocolVersion,
                2 => ConnectReturnCode::IdentifierRejected,
                3 => ConnectReturnCode::ServerUnavailable,
                4 => ConnectReturnCode::BadUsernameOrPassword,
                5 => ConnectReturnCode::NotAuthorized,
                _ => return Err(CodecError::Malformed("unknown CONNACK return code")),
            };
            Packet::ConnAck {
                session_present: ack & 1 == 1,
                code,
            }
        }
        3 => {
            let qos = QoS::from_bits((flags >> 1) & 3)?;
            let dup = flags & 8 != 0;
            if qos == QoS::AtMostOnce && dup {
                return Err(CodecError::Malformed("DUP set on a QoS 0 PUBLISH"));
            }
            let topic = string_of(&mut body)?;
            if topic.is_empty() || topic.contains(['+', '#']) {
                return Err(CodecError::Malformed(
                    "PUBLISH topic is empty or has wildcards",
                ));
            }
            let pkid = if qos == QoS::AtMostOnce {
                0
            } else {
                nonzero_pkid(&mut body)?
            };
            Packet::Publish(Publish {
                dup,
                qos,
                retain: flags & 1 != 0,
                topic,
                pkid,
                payload: body.split_off(0),
            })
        }
        4 => {
            expect_flags(0)?;
            Packet::PubAck(nonzero_pkid(&mut body)?)
        }
        5 => {
            expect_flags(0)?;
            Packet::PubRec(nonzero_pkid(&mut body)?)
        }
        6 => {
            expect_flags(2)?;
            Packet::PubRel(nonzero_pkid(&mut body)?)
        }
        7 => {
            expect_flags(0)?;
            Packet::PubComp(nonzero_pkid(&mut body)?)
        }
        8 => {
            expect_flags(2)?;
            let pkid = nonzero_pkid(&mut body)?;
            let mut filters = Vec::new();
            while body.has_remaining() {
                let filter = filter_of(&mut body)?;
                let requested = u8_of(&mut body)?;
                if requested & 0xfc != 0 {
                    return Err(CodecError::Malformed(
                        "reserved bits set in a requested QoS",
                    ));
                }
                filters.push((filter, QoS::from_bits(requested)?));
            }
            if filters.is_empty() {
                return Err(CodecError::Malformed("SUBSCRIBE without topic filters"));
            }
            return Ok(Packet::Subscribe { pkid, filters });
        }
        9 => {
            expect_flags(0)?;
            let pkid = nonzero_pkid(&mut body)?;
            let codes = body.split_off(0).to_vec();
            return Ok(Packet::SubAck { pkid, codes });
        }
        10 => {
            expect_flags(2)?;
            let pkid = nonzero_pkid(&mut body)?;
            let mut filters = Vec::new();
            while body.has_remaining() {
                filters.push(filter_of(&mut body)?);
            }
            if filters.is_empty() {
                return Err(CodecError::Malformed("UNSUBSCRIBE without topic filters"));
            }
            return Ok(Packet::Unsubscribe { pkid, filters });
        }
        11 => {
            expect_flags(0)?;
            Packet::UnsubAck(nonzero_pkid(&mut body)?)
        }
        12 => {
            expect_flags(0)?;
            Packet::PingReq
        }
        13 => {
            expect_flags(0)?;
            Packet::PingResp
        }
        14 => {
            expect_flags(0)?;
            Packet::Disconnect
        }
        _ => return Err(CodecError::Malformed("reserved packet type")),
    };
    if body.has_remaining() {
        return Err(CodecError::Malformed("packet has trailing bytes"));
    }
    Ok(packet)
}

fn decode_connect(body: &mut Bytes) -> Result<Connect, CodecError> {
    let protocol_name = string_of(body)?;
    let protocol_level = u8_of(body)?;
    let flags = u8_of(body)?;
    if flags & 1 != 0 {
        return Err(CodecError::Malformed("reserved CONNECT flag set"));
    }
    let keep_alive = u16_of(body)?;
    let client_id = string_of(body)?;
    let will = if flags & 0x04 != 0 {
        let topic = string_of(body)?;
        let payload = binary_of(body)?;
        Some(Will {
            topic,
            payload,
            qos: QoS::from_bits((flags >> 3) & 3)?,
            retain: flags & 0x20 != 0,
        })
    } else {
        if flags & 0x38 != 0 {
            return Err(CodecError::Malformed(
                "will QoS or retain set without a will",
            ));
        }
        None
    };
    let username = if flags & 0x80 != 0 {
        Some(string_of(body)?)
    } else {
        None
    };
    let password = if flags & 0x40 != 0 {
        if username.is_none() {
            return Err(CodecError::Malformed("password without a user name"));
        }
        Some(binary_of(body)?)
    } else {
        None
    };
    Ok(Connect {
        protocol_name,
        protocol_level,
        client_id,
        clean_session: flags & 0x02 != 0,
        keep_alive,
        username,
        password,
        will,
    })
}

fn u8_of(body: &mut Bytes) -> Result<u8, CodecError> {
    if body.remaining() < 1 {
        return Err(CodecError::Malformed("packet ends early"));
    }
    Ok(body.get_u8())
}

fn u16_of(body: &mut Bytes) -> Result<u16, CodecError> {
    if body.remaining() < 2 {
        return Err(CodecError::Malformed("packet ends early"));
    }
    Ok(body.get_u16())
}

fn nonzero_pkid(body: &mut Bytes) -> Result<u16, CodecError> {
    match u16_of(body)? {
        0 => Err(CodecError::Malformed("packet identifier 0")),
        id => Ok(id),
    }
}

fn binary_of(body: &mut Bytes) -> Result<Bytes, CodecError> {
    let len = u16_of(body)? as usize;
    if body.remaining() < len {
        return Err(CodecError::Malformed("field longer than the packet"));
    }
    Ok(body.split_to(len))
}

fn string_of(body: &mut Bytes) -> Result<String, CodecError> {
    let bytes = binary_of(body)?;
    let text =
        std::str::from_utf8(&bytes).map_err(|_| CodecError::Malformed("string is not UTF-8"))?;
    if text.contains('\0') {
        return Err(CodecError::Malformed("string contains U+0000"));
    }
    Ok(text.to_owned())
}

fn filter_of(body: &mut Bytes) -> Result<String, CodecError> {
    let filter = string_of(body)?;
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    let valid = !filter.is_empty()
        && levels.iter().enumerate().all(|(i, level)| {
            (*level == "#" && i == last) || *level == "+" || !level.contains(['+', '#'])
        });
    if !valid {
        return Err(CodecError::Malformed("invalid topic filter"));
    }
    Ok(filter)
}

/// Appends `packet` to `out`.
pub fn encode(packet: &Packet, out: &mut BytesMut) {
    let mut body = BytesMut::new();
    let first: u8 = match packet {
        Packet::Connect(connect) => {
            put_str(&mut body, &connect.protocol_name);
            body.put_u8(connect.protocol_level);
            let mut flags = 0u8;
            if connect.clean_session {
                flags |= 0x02;
            }
            if let Some(will) = &connect.will {
                flags |= 0x04 | ((will.qos as u8) << 3);
                if will.retain {
                    flags |= 0x20;
                }
            }
            if connect.username.is_some() {
                flags |= 0x80;
            }
            if connect.password.is_some() {
                flags |= 0x40;
            }
            body.put_u8(flags);
            body.put_u16(connect.keep_alive);
            put_str(&mut body, &connect.client_id);
            if let Some(will) = &connect.will {
                put_str(&mut body, &will.topic);
                put_bytes(&mut body, &will.payload);
            }
            if let Some(username) = &connect.username {
                put_str(&mut body, username);
            }
            if let Some(password) = &connect.password {
                put_bytes(&mut body, password);
            }
            0x10
        }
        Packet::ConnAck {
            session_present,
            code,
        } => {
            body.put_u8(u8::from(*session_present));
            body.put_u8(*code as u8);
            0x20
        }
        Packet::Publish(publish) => {
            put_str(&mut body, &publish.topic);
            if publish.qos != QoS::AtMostOnce {
                body.put_u16(publish.pkid);
            }
            body.put_slice(&publish.payload);
            0x30 | (u8::from(publish.dup) << 3)
                | ((publish.qos as u8) << 1)
                | u8::from(publish.retain)
        }
        Packet::PubAck(id) => {
            body.put_u16(*id);
            0x40
        }
        Packet::PubRec(id) => {
            body.put_u16(*id);
            0x50
        }
        Packet::PubRel(id) => {
            body.put_u16(*id);
            0x62
        }
        Packet::PubComp(id) => {
            body.put_u16(*id);
            0x70
        }
        Packet::Subscribe { pkid, filters } => {
            body.put_u16(*pkid);
            for (filter, qos) in filters {
                put_str(&mut body, filter);
                body.put_u8(*qos as u8);
            }
            0x82
        }
        Packet::SubAck { pkid, codes } => {
            body.put_u16(*pkid);
            body.put_slice(codes);
            0x90
        }
        Packet::Unsubscribe { pkid, filters } => {
            body.put_u16(*pkid);
            for filter in filters {
                put_str(&mut body, filter);
            }
            0xa2
        }
        Packet::UnsubAck(id) => {
            body.put_u16(*id);
            0xb0
        }
        Packet::PingReq => 0xc0,
        Packet::PingResp => 0xd0,
        Packet::Disconnect => 0xe0,
    };
    out.put_u8(first);
    let mut len = body.len().min(MAX_REMAINING_LENGTH);
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
    out.put_slice(&body);
}

fn put_str(out: &mut BytesMut, text: &str) {
    put_bytes(out, text.as_bytes());
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    let len = bytes.len().min(u16::MAX as usize);
    out.put_u16(len as u16);
    out.put_slice(&bytes[..len]);
}

/// Whether `topic` matches the subscription `filter` (`+` one level, `#` the rest).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            exact => {
                if topic_levels.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        use super::super::*;
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
}
