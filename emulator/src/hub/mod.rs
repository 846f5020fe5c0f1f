//! The emulated IoT hubs.
//!
//! [`Hub`] holds the operations, one file per concept:
//! - [`identities`]: device identities and their twins (service and device changes).
//! - [`messages`]: cloud-to-device messages and device telemetry.
//! - [`methods`]: direct methods.
//! - [`routing`]: the events each change emits (lifecycle, twin change, connection state), in
//!   IoT Hub's shapes.
//! - [`modules`]: module identities, module twins and module connections, kept apart from
//!   their devices.
//!
//! and the parts under them:
//! - [`registry`]: device identities, twins and queued cloud-to-device messages (durable).
//! - [`twin`]: merge-patch rules, limits, and the wire shapes of twins and devices.
//! - [`sessions`]: connected devices and modules.
//! - [`device_mqtt`]: the device endpoint (MQTT 3.1.1 over TLS).
//! - [`service_http`]: the service REST API.
//!
//! This file wires a [`Hub`] together: its settings, its errors, and what it knows of connected
//! devices beyond the registry (presence).

pub(crate) mod device_mqtt;
mod identities;
mod messages;
mod methods;
pub mod modules;
pub mod registry;
mod routing;
pub(crate) mod service_http;
pub mod sessions;
pub mod twin;

pub use identities::DeviceSpec;
pub use messages::{DEFAULT_MESSAGE_TTL, MAX_QUEUED_MESSAGES};

use crate::azure_format;
use crate::cloud_state::CloudState;
use crate::events::log::EventStream;
use crate::events::routing::Router;
use crate::journaled_store::{Store, StoreError};
use crate::net::mqtt_codec::{Packet, Publish, QoS};
use bytes::Bytes;
use iot_credentials::SharedAccessKey;
use sessions::{Session, Sessions};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use twin::{Presence, TwinError};

/// One hub's configuration.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Short name (`hub-1`), the `hubName` of its events.
    pub name: String,
    /// Host name devices and DPS use.
    pub host_name: String,
    /// Host names a service token may name (with and without the port).
    pub service_hosts: Vec<String>,
    /// The service policy name.
    pub service_policy: String,
    /// The service policy key.
    pub service_key: SharedAccessKey,
}

/// What went wrong in a hub operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The request is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// No such device.
    #[error("device {0} is not registered")]
    DeviceNotFound(String),
    /// The device exists already.
    #[error("a device with id {0} already exists")]
    DeviceAlreadyExists(String),
    /// No such module on the device.
    #[error("module {module_id} is not registered on device {device_id}")]
    ModuleNotFound {
        /// The device.
        device_id: String,
        /// The module.
        module_id: String,
    },
    /// The module exists already on the device.
    #[error("a module with id {module_id} already exists on device {device_id}")]
    ModuleAlreadyExists {
        /// The device.
        device_id: String,
        /// The module.
        module_id: String,
    },
    /// `If-Match` does not match.
    #[error("the etag does not match the current one; read the resource again")]
    PreconditionFailed,
    /// The twin change breaks IoT Hub's rules.
    #[error(transparent)]
    Twin(#[from] TwinError),
    /// The device is not connected (or not listening for methods).
    #[error("the device is not online")]
    DeviceNotOnline,
    /// The device did not answer in time.
    #[error("timed out waiting for the response from the device")]
    Timeout,
    /// Too many cloud-to-device messages are queued.
    #[error("the device already has {MAX_QUEUED_MESSAGES} cloud-to-device messages waiting")]
    QueueFull,
    /// State could not be saved.
    #[error("the hub cannot save its state right now")]
    Unavailable,
}

impl From<StoreError> for HubError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "hub state could not be saved");
        Self::Unavailable
    }
}

#[derive(Default, Clone)]
struct Seen {
    connection_state_updated: Option<String>,
    last_activity: Option<String>,
}

/// One emulated IoT hub.
pub struct Hub {
    settings: HubSettings,
    store: Arc<Store<CloudState>>,
    router: Router,
    /// Connected devices.
    pub sessions: Sessions,
    seen: Mutex<HashMap<String, Seen>>,
    sequence: Mutex<u128>,
}

/// The hubs by host name.
pub type Hubs = BTreeMap<String, Arc<Hub>>;

impl Hub {
    /// A hub over the shared state, emitting to `events`.
    pub fn new(settings: HubSettings, store: Arc<Store<CloudState>>, router: Router) -> Self {
        Self {
            settings,
            store,
            router,
            sessions: Sessions::default(),
            seen: Mutex::new(HashMap::new()),
            sequence: Mutex::new(0),
        }
    }

    /// The configuration.
    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// The event stream.
    pub fn events(&self) -> &Arc<EventStream> {
        self.router.built_in()
    }

    fn host(&self) -> &str {
        &self.settings.host_name
    }

    /// What the registry does not store: connection state, activity, queue length.
    pub fn presence(&self, device_id: &str) -> Presence {
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device_id)
            .cloned()
            .unwrap_or_default();
        Presence {
            connected: self.sessions.get(device_id).is_some(),
            connection_state_updated: seen.connection_state_updated,
            last_activity: seen.last_activity,
            cloud_to_device_message_count: self.pending_messages(device_id).len(),
        }
    }

    /// Records activity (any packet) of the device or module whose session key is `key`
    /// ([`sessions::session_key`]).
    pub fn touch(&self, key: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.entry(key.to_owned()).or_default().last_activity = Some(azure_format::now());
    }

    /// Closes a device's connection, if any.
    pub fn evict(&self, device_id: &str) {
        if let Some(session) = self.sessions.get(device_id) {
            session.evicted.notify_one();
        }
    }
}

/// Publishes to a session at `qos` (a packet id is taken for QoS 1).
pub(crate) fn publish(session: &Session, topic: String, qos: QoS, payload: Bytes) {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic,
        pkid: if qos == QoS::AtMostOnce {
            0
        } else {
            session.packet_id()
        },
        payload,
    });
    session.writer.send(packet);
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
