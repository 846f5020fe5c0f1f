//! The hubs' event streams: what IoT Hub routes to its Event Hub-compatible endpoint.
//!
//! - [`log`]: a partitioned, append-only stream per hub, durable when the emulator is.
//! - [`checkpoints`]: how far each consumer has processed each partition.
//! - [`routing`]: which endpoints (built-in, or event hubs of the [`namespace`]) an event goes to.
//! - [`Event`]: one event with Azure's system and application properties.

pub(crate) mod checkpoints;
pub mod log;
pub(crate) mod namespace;
pub mod routing;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One event as an Event Hubs consumer receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Position in its partition, from 0, strictly increasing.
    pub sequence_number: u64,
    /// When the stream accepted the event, milliseconds since the Unix epoch.
    pub enqueued_time_ms: i64,
    /// System properties (`iothub-connection-device-id`, `iothub-message-source`, …).
    pub system_properties: Map<String, Value>,
    /// Application properties (`opType`, `hubName`, `deviceId`, … or a device's own).
    pub properties: Map<String, Value>,
    /// The body.
    #[serde(with = "crate::base64_bytes")]
    pub body: Bytes,
}

impl Event {
    /// The offset Event Hubs would report; here the sequence number, which grows the same way.
    pub fn offset(&self) -> String {
        self.sequence_number.to_string()
    }

    /// The device the event is about.
    pub fn device_id(&self) -> Option<&str> {
        self.system_properties
            .get("iothub-connection-device-id")
            .and_then(Value::as_str)
    }
}

/// An event before the stream numbers it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The device it concerns (decides the partition, so per-device order is kept).
    pub device_id: String,
    /// System properties.
    pub system_properties: Map<String, Value>,
    /// Application properties.
    pub properties: Map<String, Value>,
    /// The body.
    pub body: Bytes,
}
