//! The identity registry of an emulated IoT hub: devices, their keys, twins and queued
//! cloud-to-device messages. DPS creates identities here when it assigns a device; the hub's
//! device and service endpoints read and change them.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};

/// `enabled` or `disabled`: whether the device may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum DeviceStatus {
    /// May connect.
    #[default]
    Enabled,
    /// Refused at connect.
    Disabled,
}

/// A versioned property set (desired or reported).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PropertySet {
    /// The properties, without `$version` or `$metadata`.
    pub values: Map<String, Value>,
    /// Starts at 1 and grows with every change.
    pub version: u64,
    /// When the set last changed (ISO 8601).
    #[serde(default)]
    pub last_updated: String,
}

impl PropertySet {
    /// A fresh set at version 1.
    pub fn new(values: Map<String, Value>) -> Self {
        Self {
            values,
            version: 1,
            last_updated: crate::azure_format::now(),
        }
    }
}

/// A device twin's mutable parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Twin {
    /// Tags (service-only).
    pub tags: Map<String, Value>,
    /// Desired properties.
    pub desired: PropertySet,
    /// Reported properties.
    pub reported: PropertySet,
    /// Twin version, grows with every twin change.
    pub version: u64,
    /// Changes with every twin change.
    #[serde(default)]
    pub etag: String,
}

/// One device identity.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceIdentity {
    /// The device id (case-sensitive, as in IoT Hub).
    pub device_id: String,
    /// Distinguishes re-creations of the same id.
    pub generation_id: String,
    /// Changes on every identity write.
    pub etag: String,
    /// Whether the device may connect.
    pub status: DeviceStatus,
    /// Why the device is disabled, if it is.
    #[serde(default)]
    pub status_reason: Option<String>,
    /// Primary symmetric key (base64).
    pub primary_key: String,
    /// Secondary symmetric key (base64).
    pub secondary_key: String,
    /// IoT Edge capability.
    pub iot_edge: bool,
    /// The twin.
    pub twin: Twin,
    /// When the identity was created or last changed (ISO 8601).
    pub last_updated: String,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("device_id", &self.device_id)
            .field("generation_id", &self.generation_id)
            .field("status", &self.status)
            .field("iot_edge", &self.iot_edge)
            .field("twin", &self.twin)
            .finish_non_exhaustive()
    }
}

/// One module identity of a device (IoT Edge modules, module twins). It lives beside its
/// device, never inside it: a module's changes leave the device's own identity and twin alone.
/// Shape: the `Module` definition of the IoT Hub service REST API (api-version 2021-04-12).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleIdentity {
    /// The device the module belongs to.
    pub device_id: String,
    /// The module id (case-sensitive).
    pub module_id: String,
    /// Who manages the module (`IotEdge` for the edge runtime's own), if anyone.
    #[serde(default)]
    pub managed_by: Option<String>,
    /// Distinguishes re-creations of the same module id.
    pub generation_id: String,
    /// Changes on every identity write.
    pub etag: String,
    /// Primary symmetric key (base64).
    pub primary_key: String,
    /// Secondary symmetric key (base64).
    pub secondary_key: String,
    /// The module twin.
    pub twin: Twin,
    /// When the identity was created or last changed (ISO 8601).
    pub last_updated: String,
}

impl std::fmt::Debug for ModuleIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleIdentity")
            .field("device_id", &self.device_id)
            .field("module_id", &self.module_id)
            .field("generation_id", &self.generation_id)
            .field("twin", &self.twin)
            .finish_non_exhaustive()
    }
}

/// A cloud-to-device message waiting for the device to acknowledge it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudMessage {
    /// Unique per message.
    pub message_id: String,
    /// Optional correlation id.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// Content type (`$.ct`).
    #[serde(default)]
    pub content_type: Option<String>,
    /// Content encoding (`$.ce`).
    #[serde(default)]
    pub content_encoding: Option<String>,
    /// Application properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Expiry, milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
    /// The payload.
    #[serde(with = "crate::base64_bytes")]
    pub body: Bytes,
}

/// The devices of one hub, keyed by device id.
pub type Registry = BTreeMap<String, DeviceIdentity>;

/// The modules of one hub: by device id, then by module id.
pub type ModuleRegistry = BTreeMap<String, BTreeMap<String, ModuleIdentity>>;

/// Queued cloud-to-device messages of one hub, by device id, oldest first.
pub type CloudQueues = BTreeMap<String, VecDeque<CloudMessage>>;
