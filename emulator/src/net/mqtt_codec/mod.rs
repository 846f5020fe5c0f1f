//! MQTT 3.1.1 packets as a server reads and writes them (OASIS MQTT 3.1.1, chapters 2 and 3).
//!
//! Decoding is strict: anything the specification calls malformed is an error, and the caller
//! closes that one connection. Nothing here panics on input.
//!
//! - this file: the packets, their parts and the codec's errors; topic filter matching.
//! - [`decode`]: bytes to packets, one packet type at a time.
//! - [`encode`]: packets to bytes.

mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub use decode::decode;
pub use encode::encode;

use bytes::Bytes;

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

/// The largest remaining length the fixed header can express (four bytes of seven bits).
const MAX_REMAINING_LENGTH: usize = 268_435_455;

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
