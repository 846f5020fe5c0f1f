//! Device identities and their twins: creating, updating and deleting devices, and the service's
//! and the device's twin changes. A twin lives inside its identity in the registry, as a module's
//! twin lives inside the module (see [`super::modules`]).

use super::registry::{DeviceIdentity, DeviceStatus, PropertySet, Twin};
use super::routing::twin_body;
use super::twin::{self, TwinError};
use super::{publish, Hub, HubError};
use crate::azure_format;
use crate::cloud_state::{Change, CloudState};
use bytes::Bytes;
use iot_credentials::SharedAccessKey;
use serde_json::{json, Map, Value};

/// A device as the service API creates or updates it. `Debug` shows whether keys are set, not
/// their values.
#[derive(Clone, Default)]
pub struct DeviceSpec {
    /// Enabled or disabled.
    pub status: Option<DeviceStatus>,
    /// Why disabled.
    pub status_reason: Option<String>,
    /// Primary key (generated when missing).
    pub primary_key: Option<String>,
    /// Secondary key (generated when missing).
    pub secondary_key: Option<String>,
    /// IoT Edge capability.
    pub iot_edge: Option<bool>,
}

impl std::fmt::Debug for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSpec")
            .field("status", &self.status)
            .field("status_reason", &self.status_reason)
            .field("primary_key_set", &self.primary_key.is_some())
            .field("secondary_key_set", &self.secondary_key.is_some())
            .field("iot_edge", &self.iot_edge)
            .finish()
    }
}

/// The device `device_id` of hub `host`, or DeviceNotFound.
fn existing<'a>(
    state: &'a CloudState,
    host: &str,
    device_id: &str,
) -> Result<&'a DeviceIdentity, HubError> {
    state
        .hubs
        .get(host)
        .and_then(|r| r.get(device_id))
        .ok_or_else(|| HubError::DeviceNotFound(device_id.to_owned()))
}

pub(super) fn new_key() -> String {
    SharedAccessKey::generate(32).expose_base64().to_owned()
}

pub(super) fn fresh_twin(tags: Map<String, Value>, desired: Map<String, Value>) -> Twin {
    Twin {
        tags,
        desired: PropertySet::new(desired),
        reported: PropertySet::new(Map::new()),
        version: 1,
        etag: azure_format::hub_etag(),
    }
}

impl Hub {
    /// A device identity.
    pub fn device(&self, device_id: &str) -> Option<DeviceIdentity> {
        self.store.read(|state| {
            state
                .hubs
                .get(self.host())
                .and_then(|r| r.get(device_id))
                .cloned()
        })
    }

    /// Every device identity, ordered by id.
    pub fn devices(&self) -> Vec<DeviceIdentity> {
        self.store
            .read(|state| {
                state
                    .hubs
                    .get(self.host())
                    .map(|r| r.values().cloned().collect())
            })
            .unwrap_or_default()
    }

    /// Creates a device (service `PUT /devices/{id}` without `If-Match`).
    pub async fn create_device(
        &self,
        device_id: &str,
        spec: DeviceSpec,
    ) -> Result<DeviceIdentity, HubError> {
        let host = self.host().to_owned();
        let created = self
            .store
            .transact(|state| {
                if state
                    .hubs
                    .get(&host)
                    .is_some_and(|r| r.contains_key(device_id))
                {
                    return Err(HubError::DeviceAlreadyExists(device_id.to_owned()));
                }
                let device = DeviceIdentity {
                    device_id: device_id.to_owned(),
                    generation_id: uuid::Uuid::new_v4().simple().to_string(),
                    etag: azure_format::hub_etag(),
                    status: spec.status.unwrap_or_default(),
                    status_reason: spec.status_reason,
                    primary_key: spec.primary_key.unwrap_or_else(new_key),
                    secondary_key: spec.secondary_key.unwrap_or_else(new_key),
                    iot_edge: spec.iot_edge.unwrap_or(false),
                    twin: fresh_twin(Map::new(), Map::new()),
                    last_updated: azure_format::now(),
                };
                Ok((
                    device.clone(),
                    vec![Change::PutDevice {
                        hub: host.clone(),
                        device: Box::new(device),
                    }],
                ))
            })
            .await?;
        self.lifecycle_event(&created, "createDeviceIdentity");
        Ok(created)
    }

    /// Updates a device (service `PUT /devices/{id}` with `If-Match`).
    pub async fn update_device(
        &self,
        device_id: &str,
        if_match: &str,
        spec: DeviceSpec,
    ) -> Result<DeviceIdentity, HubError> {
        let host = self.host().to_owned();
        let updated = self
            .store
            .transact(|state| {
                let current = existing(state, &host, device_id)?;
                if !azure_format::etag_matches(if_match, &current.etag) {
                    return Err(HubError::PreconditionFailed);
                }
                let mut device = current.clone();
                device.status = spec.status.unwrap_or(device.status);
                device.status_reason = spec.status_reason.or(device.status_reason);
                device.primary_key = spec.primary_key.unwrap_or(device.primary_key);
                device.secondary_key = spec.secondary_key.unwrap_or(device.secondary_key);
                device.iot_edge = spec.iot_edge.unwrap_or(device.iot_edge);
                device.etag = azure_format::hub_etag();
                device.last_updated = azure_format::now();
                Ok((
                    device.clone(),
                    vec![Change::PutDevice {
                        hub: host.clone(),
                        device: Box::new(device),
                    }],
                ))
            })
            .await?;
        if updated.status == DeviceStatus::Disabled {
            self.evict(device_id);
        }
        Ok(updated)
    }

    /// Deletes a device, its queue, and its connection.
    pub async fn delete_device(
        &self,
        device_id: &str,
        if_match: Option<&str>,
    ) -> Result<(), HubError> {
        let host = self.host().to_owned();
        let deleted = self
            .store
            .transact(|state| {
                let current = existing(state, &host, device_id)?;
                if if_match.is_some_and(|m| !azure_format::etag_matches(m, &current.etag)) {
                    return Err(HubError::PreconditionFailed);
                }
                Ok((
                    current.clone(),
                    vec![Change::DeleteDevice {
                        hub: host.clone(),
                        device_id: device_id.to_owned(),
                    }],
                ))
            })
            .await?;
        self.device_deleted(&deleted);
        Ok(())
    }

    /// Service twin patch: tags and desired properties, with `If-Match` (`*` or the twin etag).
    pub async fn patch_twin(
        &self,
        device_id: &str,
        if_match: Option<&str>,
        tags: Option<Map<String, Value>>,
        desired: Option<Map<String, Value>>,
    ) -> Result<DeviceIdentity, HubError> {
        self.change_twin(device_id, if_match, |twin| {
            if let Some(tags) = &tags {
                let mut merged = twin.tags.clone();
                twin::merge(&mut merged, tags);
                twin.tags = merged;
            }
            if let Some(desired) = &desired {
                twin::apply_to_set(&mut twin.desired, desired)?;
            }
            Ok(())
        })
        .await
        .map(|(device, _)| {
            let mut body = Map::new();
            body.insert("version".into(), json!(device.twin.version));
            if let Some(tags) = tags {
                body.insert("tags".into(), Value::Object(tags));
            }
            if let Some(desired) = desired {
                let mut section = desired.clone();
                section.insert("$version".into(), json!(device.twin.desired.version));
                body.insert("properties".into(), json!({ "desired": section }));
                self.push_desired(&device, desired);
            }
            self.twin_event(&device, "updateTwin", Value::Object(body));
            device
        })
    }

    /// Service twin replace: tags and desired properties become exactly what is given.
    pub async fn replace_twin(
        &self,
        device_id: &str,
        if_match: Option<&str>,
        tags: Map<String, Value>,
        desired: Map<String, Value>,
    ) -> Result<DeviceIdentity, HubError> {
        let (device, old_desired) = self
            .change_twin(device_id, if_match, |twin| {
                let old = twin.desired.values.clone();
                twin.tags = tags.clone();
                let mut patch: Map<String, Value> =
                    old.keys().map(|k| (k.clone(), Value::Null)).collect();
                patch.extend(desired.clone());
                twin::apply_to_set(&mut twin.desired, &patch)?;
                Ok(())
            })
            .await?;
        // Devices learn the replacement as a patch: removed properties arrive as null.
        let mut patch: Map<String, Value> = old_desired
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .map(|k| (k.clone(), Value::Null))
            .collect();
        patch.extend(desired);
        self.push_desired(&device, patch);
        self.twin_event(&device, "replaceTwin", twin_body(&device));
        Ok(device)
    }

    /// A device's reported-properties patch; returns the new reported version.
    pub async fn report(&self, device_id: &str, patch: &Value) -> Result<u64, HubError> {
        let patch = twin::validated_patch(patch)?;
        let (device, _) = self
            .change_twin(device_id, None, |twin| {
                twin::apply_to_set(&mut twin.reported, &patch)
            })
            .await?;
        let mut section = patch.clone();
        section.insert("$version".into(), json!(device.twin.reported.version));
        self.twin_event(
            &device,
            "updateTwin",
            json!({ "version": device.twin.version, "properties": { "reported": section } }),
        );
        Ok(device.twin.reported.version)
    }

    /// Applies `edit` to a twin under `If-Match`; returns the device and the desired values
    /// before the change.
    async fn change_twin(
        &self,
        device_id: &str,
        if_match: Option<&str>,
        edit: impl FnOnce(&mut Twin) -> Result<(), TwinError>,
    ) -> Result<(DeviceIdentity, Map<String, Value>), HubError> {
        let host = self.host().to_owned();
        self.store
            .transact(|state| {
                let current = existing(state, &host, device_id)?;
                if if_match.is_some_and(|m| !azure_format::etag_matches(m, &current.twin.etag)) {
                    return Err(HubError::PreconditionFailed);
                }
                let old_desired = current.twin.desired.values.clone();
                let mut device = current.clone();
                edit(&mut device.twin)?;
                device.twin.version += 1;
                device.twin.etag = azure_format::hub_etag();
                Ok((
                    (device.clone(), old_desired),
                    vec![Change::PutDevice {
                        hub: host.clone(),
                        device: Box::new(device),
                    }],
                ))
            })
            .await
    }

    fn push_desired(&self, device: &DeviceIdentity, mut patch: Map<String, Value>) {
        let Some(session) = self.sessions.get(&device.device_id) else {
            return;
        };
        let Some(qos) = session.subscriptions().desired else {
            return;
        };
        let version = device.twin.desired.version;
        patch.insert("$version".into(), json!(version));
        publish(
            &session,
            format!("$iothub/twin/PATCH/properties/desired/?$version={version}"),
            qos,
            Bytes::from(Value::Object(patch).to_string()),
        );
    }
}
