//! The emulated cloud's durable state: DPS records and each hub's identity registry.

use crate::dps::model::{DeviceRegistrationState, EnrollmentGroup, IndividualEnrollment};
use crate::hub::registry::{
    CloudMessage, CloudQueues, DeviceIdentity, ModuleIdentity, ModuleRegistry, Registry,
};
use crate::journaled_store::Model;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Everything that survives a restart. DPS maps are keyed by the lower-cased id, because DPS
/// ids are case-insensitive; hubs are keyed by host name and devices by their exact id.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CloudState {
    /// Individual enrollments.
    pub enrollments: BTreeMap<String, IndividualEnrollment>,
    /// Enrollment groups.
    pub groups: BTreeMap<String, EnrollmentGroup>,
    /// Registration records.
    pub registrations: BTreeMap<String, DeviceRegistrationState>,
    /// Device registries by hub host name.
    pub hubs: BTreeMap<String, Registry>,
    /// Cloud-to-device messages not yet acknowledged, by hub host name.
    #[serde(default)]
    pub cloud_messages: BTreeMap<String, CloudQueues>,
    /// Module identities by hub host name (kept apart from the devices they belong to).
    #[serde(default)]
    pub modules: BTreeMap<String, ModuleRegistry>,
}

/// One recorded change.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Change {
    /// Create or replace an individual enrollment.
    PutEnrollment(Box<IndividualEnrollment>),
    /// Delete an individual enrollment (lower-cased id).
    DeleteEnrollment(String),
    /// Create or replace an enrollment group.
    PutGroup(Box<EnrollmentGroup>),
    /// Delete an enrollment group (lower-cased id).
    DeleteGroup(String),
    /// Create or replace a registration record.
    PutRegistration(Box<DeviceRegistrationState>),
    /// Delete a registration record (lower-cased id).
    DeleteRegistration(String),
    /// Create or replace a device identity in a hub.
    PutDevice {
        /// Hub host name.
        hub: String,
        /// The identity.
        device: Box<DeviceIdentity>,
    },
    /// Create or replace a module identity in a hub.
    PutModule {
        /// Hub host name.
        hub: String,
        /// The identity.
        module: Box<ModuleIdentity>,
    },
    /// Delete a module identity.
    DeleteModule {
        /// Hub host name.
        hub: String,
        /// Device id.
        device_id: String,
        /// Module id.
        module_id: String,
    },
    /// Delete a device identity (and its queued messages and modules).
    DeleteDevice {
        /// Hub host name.
        hub: String,
        /// Device id.
        device_id: String,
    },
    /// Queue a cloud-to-device message.
    EnqueueCloudMessage {
        /// Hub host name.
        hub: String,
        /// Device id.
        device_id: String,
        /// The message.
        message: Box<CloudMessage>,
    },
    /// Remove a cloud-to-device message (acknowledged or expired).
    RemoveCloudMessage {
        /// Hub host name.
        hub: String,
        /// Device id.
        device_id: String,
        /// Its id.
        message_id: String,
    },
}

/// DPS ids compare case-insensitively; maps are keyed by this form.
pub fn id_key(id: &str) -> String {
    id.to_ascii_lowercase()
}

impl Model for CloudState {
    type Change = Change;

    fn apply(&mut self, change: Change) {
        match change {
            Change::PutEnrollment(e) => {
                self.enrollments.insert(id_key(&e.registration_id), *e);
            }
            Change::DeleteEnrollment(id) => {
                self.enrollments.remove(&id);
            }
            Change::PutGroup(g) => {
                self.groups.insert(id_key(&g.enrollment_group_id), *g);
            }
            Change::DeleteGroup(id) => {
                self.groups.remove(&id);
            }
            Change::PutRegistration(r) => {
                self.registrations.insert(id_key(&r.registration_id), *r);
            }
            Change::DeleteRegistration(id) => {
                self.registrations.remove(&id);
            }
            Change::PutDevice { hub, device } => {
                self.hubs
                    .entry(hub)
                    .or_default()
                    .insert(device.device_id.clone(), *device);
            }
            Change::DeleteDevice { hub, device_id } => {
                if let Some(registry) = self.hubs.get_mut(&hub) {
                    registry.remove(&device_id);
                }
                if let Some(queues) = self.cloud_messages.get_mut(&hub) {
                    queues.remove(&device_id);
                }
                if let Some(modules) = self.modules.get_mut(&hub) {
                    modules.remove(&device_id);
                }
            }
            Change::PutModule { hub, module } => {
                self.modules
                    .entry(hub)
                    .or_default()
                    .entry(module.device_id.clone())
                    .or_default()
                    .insert(module.module_id.clone(), *module);
            }
            Change::DeleteModule {
                hub,
                device_id,
                module_id,
            } => {
                if let Some(modules) = self.modules.get_mut(&hub) {
                    if let Some(of_device) = modules.get_mut(&device_id) {
                        of_device.remove(&module_id);
                        if of_device.is_empty() {
                            modules.remove(&device_id);
                        }
                    }
                }
            }
            Change::EnqueueCloudMessage {
                hub,
                device_id,
                message,
            } => {
                self.cloud_messages
                    .entry(hub)
                    .or_default()
                    .entry(device_id)
                    .or_default()
                    .push_back(*message);
            }
            Change::RemoveCloudMessage {
                hub,
                device_id,
                message_id,
            } => {
                if let Some(queue) = self
                    .cloud_messages
                    .get_mut(&hub)
                    .and_then(|q| q.get_mut(&device_id))
                {
                    queue.retain(|m| m.message_id != message_id);
                }
            }
        }
    }
}
