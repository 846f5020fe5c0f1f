//! In-memory DPS and hubs for unit tests, with failures injected per operation.

use super::dps::{BulkOutcome, EnrollmentKeys, Provisioning};
use super::hub::{DeviceHubs, MethodAnswer, MethodCall};
use super::CloudError;
use crate::domain::rotation::KeySlot;
use crate::domain::{now, DeviceRecord, Registration};
use async_trait::async_trait;
use iot_credentials::SharedAccessKey;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Mutex;

/// Failures to inject: operation name → (calls left to fail, the error they fail with).
#[derive(Default)]
pub struct Faults(Mutex<HashMap<&'static str, (u32, CloudError)>>);

impl Faults {
    /// Makes the next `times` calls of `operation` fail as unavailable.
    pub fn fail(&self, operation: &'static str, times: u32) {
        self.fail_with(
            operation,
            times,
            CloudError::Unavailable(format!("injected failure of {operation}")),
        );
    }

    /// Makes the next `times` calls of `operation` fail with `error`.
    pub fn fail_with(&self, operation: &'static str, times: u32, error: CloudError) {
        self.0.lock().unwrap().insert(operation, (times, error));
    }

    fn check(&self, operation: &'static str) -> Result<(), CloudError> {
        let mut faults = self.0.lock().unwrap();
        match faults.get_mut(operation) {
            Some((left, error)) if *left > 0 => {
                *left -= 1;
                Err(error.clone())
            }
            _ => Ok(()),
        }
    }
}

/// What the fake DPS holds for one enrollment.
#[derive(Debug, Clone)]
pub struct FakeEnrollment {
    /// The record it was last written from.
    pub record: DeviceRecord,
    /// Its primary key.
    pub key: SharedAccessKey,
    /// Its secondary key.
    pub secondary: SharedAccessKey,
}

impl FakeEnrollment {
    /// Both keys.
    pub fn keys(&self) -> EnrollmentKeys {
        EnrollmentKeys {
            primary: self.key.clone(),
            secondary: self.secondary.clone(),
        }
    }
}

/// A DPS in memory.
#[derive(Default)]
pub struct FakeDps {
    /// Enrollments by lower-case registration id.
    pub enrollments: Mutex<HashMap<String, FakeEnrollment>>,
    /// Registration states by lower-case registration id.
    pub registrations: Mutex<HashMap<String, Registration>>,
    /// Injected failures.
    pub faults: Faults,
}

impl FakeDps {
    /// Whether an enrollment exists.
    pub fn has(&self, id: &str) -> bool {
        self.enrollments
            .lock()
            .unwrap()
            .contains_key(&id.to_ascii_lowercase())
    }

    /// The enrollment, if any.
    pub fn enrollment(&self, id: &str) -> Option<FakeEnrollment> {
        self.enrollments
            .lock()
            .unwrap()
            .get(&id.to_ascii_lowercase())
            .cloned()
    }

    /// Registers a device as if it had connected, assigned to `hub`.
    pub fn register(&self, id: &str, hub: &str) {
        let device_id = self
            .enrollment(id)
            .map(|e| e.record.device_id.to_string())
            .unwrap_or_else(|| id.to_owned());
        self.registrations.lock().unwrap().insert(
            id.to_ascii_lowercase(),
            Registration {
                status: "assigned".into(),
                assigned_hub: Some(hub.into()),
                device_id: Some(device_id),
                substatus: Some("initialAssignment".into()),
                error_message: None,
                last_updated: Some(now()),
                observed_at: now(),
            },
        );
    }

    fn put(&self, record: &DeviceRecord) {
        let key = record.registration_id.key();
        let mut enrollments = self.enrollments.lock().unwrap();
        let (primary, secondary) = enrollments.get(&key).map_or_else(
            || (SharedAccessKey::generate(32), SharedAccessKey::generate(32)),
            |e| (e.key.clone(), e.secondary.clone()),
        );
        enrollments.insert(
            key,
            FakeEnrollment {
                record: record.clone(),
                key: primary,
                secondary,
            },
        );
    }
}

#[async_trait]
impl Provisioning for FakeDps {
    async fn create(&self, record: &DeviceRecord) -> Result<(), CloudError> {
        self.faults.check("create")?;
        if self.has(record.registration_id.as_str()) {
            return Err(CloudError::Conflict("exists".into()));
        }
        self.put(record);
        Ok(())
    }

    async fn create_many(&self, records: &[&DeviceRecord]) -> Result<Vec<BulkOutcome>, CloudError> {
        self.faults.check("create_many")?;
        assert!(
            records.len() <= super::dps::BULK_LIMIT,
            "DPS takes at most 10 enrollments a call"
        );
        Ok(records
            .iter()
            .map(|record| {
                if record.initial_twin.tags.contains_key("refuse") {
                    BulkOutcome::Refused("the enrollment is refused".into())
                } else if self.has(record.registration_id.as_str()) {
                    BulkOutcome::Exists
                } else {
                    self.put(record);
                    BulkOutcome::Created
                }
            })
            .collect())
    }

    async fn update(&self, record: &DeviceRecord) -> Result<(), CloudError> {
        self.faults.check("update")?;
        self.put(record);
        Ok(())
    }

    async fn replace_key(
        &self,
        record: &DeviceRecord,
        slot: KeySlot,
        key: &SharedAccessKey,
    ) -> Result<(), CloudError> {
        self.faults.check("replace_key")?;
        let mut enrollments = self.enrollments.lock().unwrap();
        let enrollment = enrollments
            .get_mut(&record.registration_id.key())
            .ok_or_else(|| CloudError::NotFound(record.registration_id.to_string()))?;
        enrollment.record = record.clone();
        match slot {
            KeySlot::Primary => enrollment.key = key.clone(),
            KeySlot::Secondary => enrollment.secondary = key.clone(),
        }
        Ok(())
    }

    async fn delete(&self, registration_id: &str) -> Result<(), CloudError> {
        self.faults.check("delete")?;
        self.enrollments
            .lock()
            .unwrap()
            .remove(&registration_id.to_ascii_lowercase());
        Ok(())
    }

    async fn keys(&self, registration_id: &str) -> Result<EnrollmentKeys, CloudError> {
        self.faults.check("keys")?;
        self.enrollment(registration_id)
            .map(|e| e.keys())
            .ok_or_else(|| CloudError::NotFound(registration_id.into()))
    }

    async fn registration(
        &self,
        registration_id: &str,
    ) -> Result<Option<Registration>, CloudError> {
        self.faults.check("registration")?;
        Ok(self
            .registrations
            .lock()
            .unwrap()
            .get(&registration_id.to_ascii_lowercase())
            .cloned())
    }

    async fn delete_registration(&self, registration_id: &str) -> Result<(), CloudError> {
        self.faults.check("delete_registration")?;
        self.registrations
            .lock()
            .unwrap()
            .remove(&registration_id.to_ascii_lowercase());
        Ok(())
    }
    async fn enrollment_ids(&self) -> Result<Vec<String>, CloudError> {
        self.faults.check("enrollment_ids")?;
        Ok(self
            .enrollments
            .lock()
            .unwrap()
            .values()
            .map(|e| e.record.registration_id.to_string())
            .collect())
    }
}

/// Linked hubs in memory: device identities, desired properties, and which devices are online.
#[derive(Default)]
pub struct FakeHubs {
    /// Host names of the linked hubs.
    pub linked: Vec<String>,
    /// Device identities: (hub, device id) → desired properties.
    pub devices: Mutex<HashMap<(String, String), Map<String, Value>>>,
    /// Devices that answer methods: (hub, device id).
    pub online: Mutex<Vec<(String, String)>>,
    /// Device identities' keys as last set: (hub, device id) → (primary, secondary).
    pub keys: Mutex<HashMap<(String, String), (SharedAccessKey, SharedAccessKey)>>,
    /// Methods called, in order: (hub, device id, call).
    pub calls: Mutex<Vec<(String, String, MethodCall)>>,
    /// Injected failures.
    pub faults: Faults,
}

impl FakeHubs {
    /// Hubs with the given host names.
    pub fn linked(hosts: &[&str]) -> Self {
        Self {
            linked: hosts.iter().map(|h| (*h).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// Adds a device identity.
    pub fn add_device(&self, hub: &str, device_id: &str, online: bool) {
        self.devices
            .lock()
            .unwrap()
            .insert((hub.into(), device_id.into()), Map::new());
        if online {
            self.online
                .lock()
                .unwrap()
                .push((hub.into(), device_id.into()));
        }
    }

    /// Whether the identity exists.
    pub fn has_device(&self, hub: &str, device_id: &str) -> bool {
        self.devices
            .lock()
            .unwrap()
            .contains_key(&(hub.into(), device_id.into()))
    }
}

#[async_trait]
impl DeviceHubs for FakeHubs {
    fn knows(&self, hub: &str) -> bool {
        self.linked.iter().any(|h| h.eq_ignore_ascii_case(hub))
    }

    async fn device(
        &self,
        hub: &str,
        device_id: &str,
    ) -> Result<Option<super::hub::HubDevice>, CloudError> {
        self.faults.check("device")?;
        if !self.has_device(hub, device_id) {
            return Ok(None);
        }
        let connected = self
            .online
            .lock()
            .unwrap()
            .contains(&(hub.into(), device_id.into()));
        Ok(Some(super::hub::HubDevice {
            connected,
            connection_state_updated: Some(now()),
            reported: Map::new(),
        }))
    }

    async fn delete_device(&self, hub: &str, device_id: &str) -> Result<(), CloudError> {
        self.faults.check("delete_device")?;
        self.devices
            .lock()
            .unwrap()
            .remove(&(hub.into(), device_id.into()));
        Ok(())
    }

    async fn set_device_keys(
        &self,
        hub: &str,
        device_id: &str,
        primary: &SharedAccessKey,
        secondary: &SharedAccessKey,
    ) -> Result<(), CloudError> {
        self.faults.check("set_device_keys")?;
        if !self.has_device(hub, device_id) {
            return Err(CloudError::NotFound(device_id.into()));
        }
        self.keys.lock().unwrap().insert(
            (hub.into(), device_id.into()),
            (primary.clone(), secondary.clone()),
        );
        Ok(())
    }

    async fn update_desired(
        &self,
        hub: &str,
        device_id: &str,
        desired: &Map<String, Value>,
        _if_match: Option<&str>,
    ) -> Result<Value, CloudError> {
        self.faults.check("update_desired")?;
        let mut devices = self.devices.lock().unwrap();
        let twin = devices
            .get_mut(&(hub.into(), device_id.into()))
            .ok_or_else(|| CloudError::NotFound(device_id.into()))?;
        for (k, v) in desired {
            twin.insert(k.clone(), v.clone());
        }
        Ok(json!({ "deviceId": device_id, "etag": "AAAA", "properties": { "desired": twin } }))
    }

    async fn invoke(
        &self,
        hub: &str,
        device_id: &str,
        call: &MethodCall,
    ) -> Result<MethodAnswer, CloudError> {
        self.faults.check("invoke")?;
        self.calls
            .lock()
            .unwrap()
            .push((hub.into(), device_id.into(), call.clone()));
        if !self
            .online
            .lock()
            .unwrap()
            .contains(&(hub.into(), device_id.into()))
        {
            return Err(CloudError::DeviceOffline);
        }
        if call.name == "hang" {
            return Err(CloudError::Timeout);
        }
        Ok(MethodAnswer {
            status: 200,
            payload: json!({ "echo": call.payload }),
        })
    }
}
