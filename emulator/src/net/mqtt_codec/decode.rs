//! Decoding: the fixed header, then the body of each packet type, strictly (anything the
//! specification calls malformed is an error).

use super::{CodecError, Connect, ConnectReturnCode, Packet, Publish, QoS, Will};
use bytes::{Buf, Bytes, BytesMut};

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
            decode_connack(&mut body)?
        }
        3 => Packet::Publish(decode_publish(flags, &mut body)?),
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
            // The filters run to the end of the body, so no trailing bytes can be left.
            return decode_subscribe(&mut body);
        }
        9 => {
            expect_flags(0)?;
            let pkid = nonzero_pkid(&mut body)?;
            let codes = body.split_off(0).to_vec();
            return Ok(Packet::SubAck { pkid, codes });
        }
        10 => {
            expect_flags(2)?;
            return decode_unsubscribe(&mut body);
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

/// A CONNACK's body: the session-present flag and a known return code.
fn decode_connack(body: &mut Bytes) -> Result<Packet, CodecError> {
    let ack = u8_of(body)?;
    let code = match u8_of(body)? {
        0 => ConnectReturnCode::Accepted,
        1 => ConnectReturnCode::BadProtocolVersion,
        2 => ConnectReturnCode::IdentifierRejected,
        3 => ConnectReturnCode::ServerUnavailable,
        4 => ConnectReturnCode::BadUsernameOrPassword,
        5 => ConnectReturnCode::NotAuthorized,
        _ => return Err(CodecError::Malformed("unknown CONNACK return code")),
    };
    Ok(Packet::ConnAck {
        session_present: ack & 1 == 1,
        code,
    })
}

/// A PUBLISH: QoS, DUP and RETAIN from the fixed header's `flags`, a topic without wildcards,
/// a packet id unless QoS 0, and the rest of the body as payload.
fn decode_publish(flags: u8, body: &mut Bytes) -> Result<Publish, CodecError> {
    let qos = QoS::from_bits((flags >> 1) & 3)?;
    let dup = flags & 8 != 0;
    if qos == QoS::AtMostOnce && dup {
        return Err(CodecError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = string_of(body)?;
    if topic.is_empty() || topic.contains(['+', '#']) {
        return Err(CodecError::Malformed(
            "PUBLISH topic is empty or has wildcards",
        ));
    }
    let pkid = if qos == QoS::AtMostOnce {
        0
    } else {
        nonzero_pkid(body)?
    };
    Ok(Publish {
        dup,
        qos,
        retain: flags & 1 != 0,
        topic,
        pkid,
        payload: body.split_off(0),
    })
}

/// A SUBSCRIBE: a packet id and at least one filter, each with a requested QoS.
fn decode_subscribe(body: &mut Bytes) -> Result<Packet, CodecError> {
    let pkid = nonzero_pkid(body)?;
    let mut filters = Vec::new();
    while body.has_remaining() {
        let filter = filter_of(body)?;
        let requested = u8_of(body)?;
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
    Ok(Packet::Subscribe { pkid, filters })
}

/// An UNSUBSCRIBE: a packet id and at least one filter.
fn decode_unsubscribe(body: &mut Bytes) -> Result<Packet, CodecError> {
    let pkid = nonzero_pkid(body)?;
    let mut filters = Vec::new();
    while body.has_remaining() {
        filters.push(filter_of(body)?);
    }
    if filters.is_empty() {
        return Err(CodecError::Malformed("UNSUBSCRIBE without topic filters"));
    }
    Ok(Packet::Unsubscribe { pkid, filters })
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
