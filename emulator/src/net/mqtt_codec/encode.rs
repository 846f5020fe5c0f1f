//! Encoding: a packet's body, then the fixed header with its remaining length.

use super::{Connect, Packet, QoS, MAX_REMAINING_LENGTH};
use bytes::{BufMut, BytesMut};

/// Appends `packet` to `out`.
pub fn encode(packet: &Packet, out: &mut BytesMut) {
    let mut body = BytesMut::new();
    let first: u8 = match packet {
        Packet::Connect(connect) => {
            encode_connect(connect, &mut body);
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
    put_remaining_length(out, body.len());
    out.put_slice(&body);
}

/// A CONNECT's variable header (protocol, flags, keep-alive) and payload (client id, will,
/// username, password).
fn encode_connect(connect: &Connect, body: &mut BytesMut) {
    put_str(body, &connect.protocol_name);
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
    put_str(body, &connect.client_id);
    if let Some(will) = &connect.will {
        put_str(body, &will.topic);
        put_bytes(body, &will.payload);
    }
    if let Some(username) = &connect.username {
        put_str(body, username);
    }
    if let Some(password) = &connect.password {
        put_bytes(body, password);
    }
}

/// The fixed header's remaining length: seven bits a byte, low first, high bit "more follows".
fn put_remaining_length(out: &mut BytesMut, len: usize) {
    let mut len = len.min(MAX_REMAINING_LENGTH);
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
}

fn put_str(out: &mut BytesMut, text: &str) {
    put_bytes(out, text.as_bytes());
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    let len = bytes.len().min(u16::MAX as usize);
    out.put_u16(len as u16);
    out.put_slice(&bytes[..len]);
}
