//! Module identities: IoT Edge modules and other module twins of a device.
//!
//! A module has its own keys, twin and connection, filed beside its device and never inside it:
//! nothing a module does changes the device's identity, twin, connection state or activity. Its
//! events carry the device's `deviceId` plus `moduleId` and stay in the device's partition, so a
//! consumer sees a device and its modules in order but must look at `moduleId` to tell them
//! apart. Deleting a device deletes its modules (and closes their connections).
//!
//! Sources: the `Module` and `Twin` definitions and the `devices/{id}/modules/{mid}`,
//! `twins/{id}/modules/{mid}` and `twins/{id}/modules/{mid}/methods` operations of the IoT Hub
//! service REST API 2021-04-12 (Azure/azure-rest-api-specs, as generated into npm azure-iothub
//! 1.16.6 `dist/pl/models/index.d.ts` and `dist/pl/operations/modules.js`); module id rules in
//! MicrosoftDocs/azure-docs articles/iot-hub/iot-hub-devguide-identity-registry.md; events in
//! articles/iot-hub/iot-hub-non-telemetry-event-schema.md.

use super::identities::{fresh_twin, new_key};
use super::registry::{DeviceStatus, ModuleIdentity, Twin};
use super::sessions::{session_key, MethodReply};
use super::twin::{self, Presence, TwinError};
use super::{publish, Hub, HubError};
use crate::azure_format;
use crate::cloud_state::{Change, CloudState};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// A module as the service API creates or updates it. `Debug` shows whether keys are set, not
/// their values.
#[derive(Clone, Default)]
pub struct ModuleSpec {
    /// Who manages the module (`managedBy`).
    pub managed_by: Option<String>,
    /// Primary key (generated when missing).
    pub primary_key: Option<String>,
    /// Secondary key (generated when missing).
    pub secondary_key: Option<String>,
}

impl std::fmt::Debug for ModuleSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleSpec")
            .field("managed_by", &self.managed_by)
            .field("primary_key_set", &self.primary_key.is_some())
            .field("secondary_key_set", &self.secondary_key.is_some())
            .finish()
    }
}

/// Checks a module id: the device id rules of [`iot_credentials::ids::is_device_id`] (up to 128
/// ASCII characters; the docs list the same set for both, and `/`, `+` and `#` would break MQTT
/// topics).
pub fn validate_module_id(module_id: &str) -> Result<(), HubError> {
    if iot_credentials::ids::is_device_id(module_id) {
        Ok(())
    } else {
        Err(HubError::BadRequest(format!(
            "invalid moduleId {:?}: use 1 to 128 letters, digits or - . % _ * ? ! ( ) , : = @ $ '",
            module_id.chars().take(140).collect::<String>()
        )))
    }
}

/// The module, or DeviceNotFound / ModuleNotFound.
fn existing<'a>(
    state: &'a CloudState,
    host: &str,
    device_id: &str,
    module_id: &str,
) -> Result<&'a ModuleIdentity, HubError> {
    if !state
        .hubs
        .get(host)
        .is_some_and(|r| r.contains_key(device_id))
    {
        return Err(HubError::DeviceNotFound(device_id.to_owned()));
    }
    state
        .modules
        .get(host)
        .and_then(|m| m.get(device_id))
        .and_then(|m| m.get(module_id))
        .ok_or_else(|| HubError::ModuleNotFound {
            device_id: device_id.to_owned(),
            module_id: module_id.to_owned(),
        })
}

fn put(host: &str, module: &ModuleIdentity) -> Change {
    Change::PutModule {
        hub: host.to_owned(),
        module: Box::new(module.clone()),
    }
}

impl Hub {
    /// A module identity.
    pub fn module(&self, device_id: &str, module_id: &str) -> Option<ModuleIdentity> {
        self.store.read(|state| {
            state
                .modules
                .get(self.host())
                .and_then(|m| m.get(device_id))
                .and_then(|m| m.get(module_id))
                .cloned()
        })
    }

    /// The modules of a device, ordered by id; DeviceNotFound if there is no such device.
    pub fn modules_of(&self, device_id: &str) -> Result<Vec<ModuleIdentity>, HubError> {
        self.store.read(|state| {
            if !state
                .hubs
                .get(self.host())
                .is_some_and(|r| r.contains_key(device_id))
            {
                return Err(HubError::DeviceNotFound(device_id.to_owned()));
            }
            Ok(state
                .modules
                .get(self.host())
                .and_then(|m| m.get(device_id))
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default())
        })
    }

    /// A module's connection state and activity (IoT Hub sends no cloud-to-module messages, so
    /// the queue is always empty).
    pub fn module_presence(&self, device_id: &str, module_id: &str) -> Presence {
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&session_key(device_id, Some(module_id)))
            .cloned()
            .unwrap_or_default();
        Presence {
            connected: self.sessions.get_module(device_id, module_id).is_some(),
            connection_state_updated: seen.connection_state_updated,
            last_activity: seen.last_activity,
            cloud_to_device_message_count: 0,
        }
    }

    /// Creates a module (service `PUT /devices/{id}/modules/{mid}` without `If-Match`).
    pub async fn create_module(
        &self,
        device_id: &str,
        module_id: &str,
        spec: ModuleSpec,
    ) -> Result<ModuleIdentity, HubError> {
        let host = self.host().to_owned();
        let created = self
            .store
            .transact(|state| {
                match existing(state, &host, device_id, module_id) {
                    Ok(_) => {
                        return Err(HubError::ModuleAlreadyExists {
                            device_id: device_id.to_owned(),
                            module_id: module_id.to_owned(),
                        })
                    }
                    Err(HubError::ModuleNotFound { .. }) => {}
                    Err(other) => return Err(other),
                }
                let module = ModuleIdentity {
                    device_id: device_id.to_owned(),
                    module_id: module_id.to_owned(),
                    managed_by: spec.managed_by,
                    generation_id: uuid::Uuid::new_v4().simple().to_string(),
                    etag: azure_format::hub_etag(),
                    primary_key: spec.primary_key.unwrap_or_else(new_key),
                    secondary_key: spec.secondary_key.unwrap_or_else(new_key),
                    twin: fresh_twin(Map::new(), Map::new()),
                    last_updated: azure_format::now(),
                };
                Ok((module.clone(), vec![put(&host, &module)]))
            })
            .await?;
        self.module_lifecycle_event(&created, "createDeviceIdentity");
        Ok(created)
    }

    /// Updates a module (service `PUT /devices/{id}/modules/{mid}` with `If-Match`).
    pub async fn update_module(
        &self,
        device_id: &str,
        module_id: &str,
        if_match: &str,
        spec: ModuleSpec,
    ) -> Result<ModuleIdentity, HubError> {
        let host = self.host().to_owned();
        self.store
            .transact(|state| {
                let current = existing(state, &host, device_id, module_id)?;
                if !azure_format::etag_matches(if_match, &current.etag) {
                    return Err(HubError::PreconditionFailed);
                }
                let mut module = current.clone();
                module.managed_by = spec.managed_by.or(module.managed_by);
                module.primary_key = spec.primary_key.unwrap_or(module.primary_key);
                module.secondary_key = spec.secondary_key.unwrap_or(module.secondary_key);
                module.etag = azure_format::hub_etag();
                module.last_updated = azure_format::now();
                Ok((module.clone(), vec![put(&host, &module)]))
            })
            .await
    }

    /// Deletes a module and closes its connection; the device is untouched.
    pub async fn delete_module(
        &self,
        device_id: &str,
        module_id: &str,
        if_match: Option<&str>,
    ) -> Result<(), HubError> {
        let host = self.host().to_owned();
        let deleted = self
            .store
            .transact(|state| {
                let current = existing(state, &host, device_id, module_id)?;
                if if_match.is_some_and(|m| !azure_format::etag_matches(m, &current.etag)) {
                    return Err(HubError::PreconditionFailed);
                }
                Ok((
                    current.clone(),
                    vec![Change::DeleteModule {
                        hub: host.clone(),
                        device_id: device_id.to_owned(),
                        module_id: module_id.to_owned(),
                    }],
                ))
            })
            .await?;
        self.module_lifecycle_event(&deleted, "deleteDeviceIdentity");
        if let Some(session) = self.sessions.get_module(device_id, module_id) {
            session.evicted.notify_one();
        }
        Ok(())
    }

    // ----- module twins -----

    /// Service module-twin patch: tags and desired properties, `If-Match` optional.
    pub async fn patch_module_twin(
        &self,
        device_id: &str,
        module_id: &str,
        if_match: Option<&str>,
        tags: Option<Map<String, Value>>,
        desired: Option<Map<String, Value>>,
    ) -> Result<ModuleIdentity, HubError> {
        let (module, _) = self
            .change_module_twin(device_id, module_id, if_match, |twin| {
                if let Some(tags) = &tags {
                    twin::merge(&mut twin.tags, tags);
                }
                if let Some(desired) = &desired {
                    twin::apply_to_set(&mut twin.desired, desired)?;
                }
                Ok(())
            })
            .await?;
        let mut body = Map::new();
        body.insert("version".into(), json!(module.twin.version));
        if let Some(tags) = tags {
            body.insert("tags".into(), Value::Object(tags));
        }
        if let Some(desired) = desired {
            let mut section = desired.clone();
            section.insert("$version".into(), json!(module.twin.desired.version));
            body.insert("properties".into(), json!({ "desired": section }));
            self.push_module_desired(&module, desired);
        }
        self.module_twin_event(&module, "updateTwin", Value::Object(body));
        Ok(module)
    }

    /// Service module-twin replace: tags and desired properties become exactly what is given.
    pub async fn replace_module_twin(
        &self,
        device_id: &str,
        module_id: &str,
        if_match: Option<&str>,
        tags: Map<String, Value>,
        desired: Map<String, Value>,
    ) -> Result<ModuleIdentity, HubError> {
        let (module, old_desired) = self
            .change_module_twin(device_id, module_id, if_match, |twin| {
                twin.tags = tags.clone();
                let mut patch: Map<String, Value> = twin
                    .desired
                    .values
                    .keys()
                    .map(|k| (k.clone(), Value::Null))
                    .collect();
                patch.extend(desired.clone());
                twin::apply_to_set(&mut twin.desired, &patch)
            })
            .await?;
        // The module learns the replacement as a patch: removed properties arrive as null.
        let mut patch: Map<String, Value> = old_desired
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .map(|k| (k.clone(), Value::Null))
            .collect();
        patch.extend(desired);
        self.push_module_desired(&module, patch);
        self.module_twin_event(&module, "replaceTwin", module_twin_body(&module));
        Ok(module)
    }

    /// A module's reported-properties patch; returns the new reported version.
    pub async fn report_module(
        &self,
        device_id: &str,
        module_id: &str,
        patch: &Value,
    ) -> Result<u64, HubError> {
        let patch = twin::validated_patch(patch)?;
        let (module, _) = self
            .change_module_twin(device_id, module_id, None, |twin| {
                twin::apply_to_set(&mut twin.reported, &patch)
            })
            .await?;
        let mut section = patch.clone();
        section.insert("$version".into(), json!(module.twin.reported.version));
        self.module_twin_event(
            &module,
            "updateTwin",
            json!({ "version": module.twin.version, "properties": { "reported": section } }),
        );
        Ok(module.twin.reported.version)
    }

    /// Applies `edit` to a module twin under `If-Match`; returns the module and the desired
    /// values before the change. Nothing is saved when `edit` fails.
    async fn change_module_twin(
        &self,
        device_id: &str,
        module_id: &str,
        if_match: Option<&str>,
        edit: impl FnOnce(&mut Twin) -> Result<(), TwinError>,
    ) -> Result<(ModuleIdentity, Map<String, Value>), HubError> {
        let host = self.host().to_owned();
        self.store
            .transact(|state| {
                let current = existing(state, &host, device_id, module_id)?;
                if if_match.is_some_and(|m| !azure_format::etag_matches(m, &current.twin.etag)) {
                    return Err(HubError::PreconditionFailed);
                }
                let old_desired = current.twin.desired.values.clone();
                let mut module = current.clone();
                edit(&mut module.twin)?;
                module.twin.version += 1;
                module.twin.etag = azure_format::hub_etag();
                Ok(((module.clone(), old_desired), vec![put(&host, &module)]))
            })
            .await
    }

    fn push_module_desired(&self, module: &ModuleIdentity, mut patch: Map<String, Value>) {
        let Some(session) = self
            .sessions
            .get_module(&module.device_id, &module.module_id)
        else {
            return;
        };
        let Some(qos) = session.subscriptions().desired else {
            return;
        };
        let version = module.twin.desired.version;
        patch.insert("$version".into(), json!(version));
        publish(
            &session,
            format!("$iothub/twin/PATCH/properties/desired/?$version={version}"),
            qos,
            Bytes::from(Value::Object(patch).to_string()),
        );
    }

    // ----- direct methods, connections, telemetry -----

    /// Invokes a direct method on a module (`POST /twins/{id}/modules/{mid}/methods`).
    pub async fn invoke_module_method(
        &self,
        device_id: &str,
        module_id: &str,
        method: &str,
        payload: &Value,
        response_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<MethodReply, HubError> {
        self.store
            .read(|state| existing(state, self.host(), device_id, module_id).map(|_| ()))?;
        self.call_session(
            &session_key(device_id, Some(module_id)),
            method,
            payload,
            response_timeout,
            connect_timeout,
        )
        .await
    }

    /// Records a module's connection change and emits `deviceConnected` or
    /// `deviceDisconnected` with `moduleId`.
    pub fn module_connection_event(&self, device_id: &str, module_id: &str, connected: bool) {
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.entry(session_key(device_id, Some(module_id)))
                .or_default()
                .connection_state_updated = Some(azure_format::now());
        }
        let op = if connected {
            "deviceConnected"
        } else {
            "deviceDisconnected"
        };
        self.notify(
            device_id,
            Some(module_id),
            "deviceConnectionStateEvents",
            "deviceConnectionStateNotification",
            op,
            json!({ "sequenceNumber": self.next_connection_sequence() }),
        );
    }

    /// Records module telemetry (`devices/{id}/modules/{mid}/messages/events/`).
    pub fn module_telemetry(
        &self,
        module: &ModuleIdentity,
        bag: Vec<(String, String)>,
        body: Bytes,
    ) -> bool {
        self.record_telemetry(
            &module.device_id,
            Some(&module.module_id),
            &module.generation_id,
            bag,
            body,
        )
    }

    /// Whether the module's device may connect (exists and is enabled).
    pub fn module_device_enabled(&self, device_id: &str) -> bool {
        self.device(device_id)
            .is_some_and(|d| d.status == DeviceStatus::Enabled)
    }

    fn module_lifecycle_event(&self, module: &ModuleIdentity, op: &str) {
        self.notify(
            &module.device_id,
            Some(&module.module_id),
            "deviceLifecycleEvents",
            "deviceLifecycleNotification",
            op,
            module_twin_body(module),
        );
    }

    fn module_twin_event(&self, module: &ModuleIdentity, op: &str, body: Value) {
        self.notify(
            &module.device_id,
            Some(&module.module_id),
            "twinChangeEvents",
            "twinChangeNotification",
            op,
            body,
        );
    }
}

/// A lifecycle or replace body: the module's twin, with `deviceId` and `moduleId`.
fn module_twin_body(module: &ModuleIdentity) -> Value {
    json!({
        "deviceId": module.device_id,
        "moduleId": module.module_id,
        "etag": module.twin.etag,
        "version": module.twin.version,
        "tags": module.twin.tags,
        "properties": {
            "desired": twin::service_section(&module.twin.desired, true),
            "reported": twin::service_section(&module.twin.reported, false),
        }
    })
}

const NEVER: &str = "0001-01-01T00:00:00Z";

fn connection_state(presence: &Presence) -> &'static str {
    if presence.connected {
        "Connected"
    } else {
        "Disconnected"
    }
}

/// A module identity in the registry's shape (`Module`: keys included, as IoT Hub returns them
/// to a registry-read policy).
pub fn module_json(module: &ModuleIdentity, presence: &Presence) -> Value {
    json!({
        "moduleId": module.module_id,
        "managedBy": module.managed_by,
        "deviceId": module.device_id,
        "generationId": module.generation_id,
        "etag": module.etag,
        "connectionState": connection_state(presence),
        "connectionStateUpdatedTime": presence.connection_state_updated.as_deref().unwrap_or(NEVER),
        "lastActivityTime": presence.last_activity.as_deref().unwrap_or(NEVER),
        "cloudToDeviceMessageCount": presence.cloud_to_device_message_count,
        "authentication": {
            "symmetricKey": { "primaryKey": module.primary_key, "secondaryKey": module.secondary_key },
            "x509Thumbprint": { "primaryThumbprint": null, "secondaryThumbprint": null },
            "type": "sas"
        }
    })
}

/// A module twin in the service's shape (`Twin` with `moduleId`).
pub fn module_twin_json(module: &ModuleIdentity, presence: &Presence) -> Value {
    let twin = &module.twin;
    json!({
        "deviceId": module.device_id,
        "moduleId": module.module_id,
        "etag": twin.etag,
        "deviceEtag": module.etag,
        "connectionState": connection_state(presence),
        "lastActivityTime": presence.last_activity.as_deref().unwrap_or(NEVER),
        "cloudToDeviceMessageCount": presence.cloud_to_device_message_count,
        "authenticationType": "sas",
        "x509Thumbprint": { "primaryThumbprint": null, "secondaryThumbprint": null },
        "modelId": "",
        "version": twin.version,
        "tags": twin.tags,
        "properties": {
            "desired": twin::service_section(&twin.desired, true),
            "reported": twin::service_section(&twin.reported, false),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_ids_follow_the_device_id_rules() {
        for ok in ["$edgeAgent", "temp-sensor_1", &"m".repeat(128)] {
            assert!(validate_module_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a#b", "a+b", "has space", &"m".repeat(129)] {
            assert!(
                matches!(validate_module_id(bad), Err(HubError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }
}
