//! The events a hub routes: device lifecycle, twin changes and connection state, in the shapes
//! IoT Hub gives them, handed to the hub's [`Router`](crate::events::routing::Router).

use super::registry::DeviceIdentity;
use super::twin;
use super::Hub;
use crate::azure_format;
use crate::events::NewEvent;
use bytes::Bytes;
use serde_json::{json, Map, Value};

impl Hub {
    /// Records a connection change and emits `deviceConnected` or `deviceDisconnected`.
    pub fn connection_event(&self, device_id: &str, connected: bool) {
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.entry(device_id.to_owned())
                .or_default()
                .connection_state_updated = Some(azure_format::now());
        }
        let sequence = self.next_connection_sequence();
        let op = if connected {
            "deviceConnected"
        } else {
            "deviceDisconnected"
        };
        self.notification(
            device_id,
            "deviceConnectionStateEvents",
            "deviceConnectionStateNotification",
            op,
            json!({ "sequenceNumber": sequence }),
        );
    }

    /// The next connection-state sequence number: strictly increasing, as Azure's 256-bit
    /// sequence numbers are, and time-based so it keeps increasing across restarts. Devices and
    /// modules share one sequence.
    pub(super) fn next_connection_sequence(&self) -> String {
        let mut last = self.sequence.lock().unwrap_or_else(|p| p.into_inner());
        let now = time::OffsetDateTime::now_utc()
            .unix_timestamp_nanos()
            .max(0) as u128;
        *last = (*last + 1).max(now);
        format!("{:064X}", *last)
    }

    /// Emits a lifecycle event for a created or deleted identity.
    pub fn lifecycle_event(&self, device: &DeviceIdentity, op: &str) {
        self.notification(
            &device.device_id,
            "deviceLifecycleEvents",
            "deviceLifecycleNotification",
            op,
            twin_body(device),
        );
    }

    pub(super) fn twin_event(&self, device: &DeviceIdentity, op: &str, body: Value) {
        self.notification(
            &device.device_id,
            "twinChangeEvents",
            "twinChangeNotification",
            op,
            body,
        );
    }

    /// A device was removed (by the service or by DPS moving it): tell the stream, close it
    /// and its modules' connections (its modules went with it).
    pub fn device_deleted(&self, device: &DeviceIdentity) {
        self.lifecycle_event(device, "deleteDeviceIdentity");
        self.evict(&device.device_id);
        for session in self.sessions.modules_of(&device.device_id) {
            session.evicted.notify_one();
        }
    }

    /// DPS replaced a device's twin (reprovisioning with reset).
    pub fn twin_replaced(&self, device: &DeviceIdentity) {
        self.twin_event(device, "replaceTwin", twin_body(device));
    }

    fn notification(&self, device_id: &str, source: &str, schema: &str, op: &str, body: Value) {
        self.notify(device_id, None, source, schema, op, body);
    }

    /// Builds and records a non-telemetry event. A module's carries the application property
    /// `moduleId`, and for lifecycle and twin events the system property
    /// `iothub-connection-module-id` (MicrosoftDocs/azure-docs
    /// articles/iot-hub/iot-hub-non-telemetry-event-schema.md: the system property "is output only
    /// for module life cycle and twin events"; connection state events of a module carry
    /// `moduleId`).
    pub(super) fn notify(
        &self,
        device_id: &str,
        module: Option<&str>,
        source: &str,
        schema: &str,
        op: &str,
        body: Value,
    ) {
        let mut system = Map::new();
        system.insert("content-type".into(), json!("application/json"));
        system.insert("content-encoding".into(), json!("utf-8"));
        system.insert(
            "correlation-id".into(),
            json!(uuid::Uuid::new_v4().simple().to_string()[..11].to_owned()),
        );
        system.insert("user-id".into(), json!(self.settings.name));
        system.insert("iothub-connection-device-id".into(), json!(device_id));
        if let Some(module_id) = module.filter(|_| source != "deviceConnectionStateEvents") {
            system.insert("iothub-connection-module-id".into(), json!(module_id));
        }
        system.insert("iothub-message-source".into(), json!(source));
        let mut application = Map::new();
        application.insert("hubName".into(), json!(self.settings.name));
        application.insert("deviceId".into(), json!(device_id));
        if let Some(module_id) = module {
            application.insert("moduleId".into(), json!(module_id));
        }
        application.insert("opType".into(), json!(op));
        application.insert("iothub-message-schema".into(), json!(schema));
        application.insert("operationTimestamp".into(), json!(azure_format::now()));
        self.append(NewEvent {
            device_id: device_id.to_owned(),
            system_properties: system,
            properties: application,
            body: Bytes::from(body.to_string()),
        });
    }

    pub(super) fn append(&self, event: NewEvent) -> bool {
        match self.router.route(event) {
            Ok(_) => true,
            Err(error) => {
                tracing::error!(
                    hub = %self.settings.name,
                    %error,
                    "an event could not be recorded"
                );
                false
            }
        }
    }
}

/// A lifecycle or replace body: the device's twin.
pub(super) fn twin_body(device: &DeviceIdentity) -> Value {
    json!({
        "deviceId": device.device_id,
        "etag": device.twin.etag,
        "version": device.twin.version,
        "tags": device.twin.tags,
        "properties": {
            "desired": twin::service_section(&device.twin.desired, true),
            "reported": twin::service_section(&device.twin.reported, false),
        }
    })
}
