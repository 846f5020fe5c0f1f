//! Device registration: who the device is (SAS against its enrollment's keys, or the key derived
//! from a group's), where it goes (allocation and the reprovisioning policy), and what that does
//! to the hubs (the device identity is created, moved, migrated or reset).
//!
//! Registration completes while the register call is answered; the answer still says
//! `assigning` with a `Retry-After`, as Azure's does, and the first poll returns the result.

use super::allocation::Allocation;
use super::error::DpsError;
use super::model::{
    AssignedSubstatus, AttestationType, DeviceRegistration, DeviceRegistrationState,
    EnrollmentGroup, EnrollmentSettings, IndividualEnrollment, InitialTwin,
    RegistrationOperationStatus, RegistrationStatus, SymmetricKeyRegistrationResult,
};
use super::{validate, Dps};
use crate::azure_format;
use crate::cloud_state::{id_key, Change, CloudState};
use crate::hub::registry::{DeviceIdentity, DeviceStatus, PropertySet, Twin};
use iot_credentials::sas::unix_now;
use iot_credentials::{derive_device_key, SasError, SharedAccessKey, SignedSas};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Error code of a registration whose allocation failed (emulator-assigned, Azure's pattern).
pub const ALLOCATION_FAILED: u32 = 400209;
/// How long a finished operation can still be polled.
const OPERATION_TTL: Duration = Duration::from_secs(600);

/// The enrollment that admitted a device.
#[derive(Debug, Clone)]
pub enum Admission {
    /// An individual enrollment.
    Individual(Box<IndividualEnrollment>),
    /// An enrollment group (the device signed with the key derived from the group key).
    Group(Box<EnrollmentGroup>),
}

impl Admission {
    /// The enrollment's settings.
    pub fn settings(&self) -> &EnrollmentSettings {
        match self {
            Self::Individual(e) => &e.settings,
            Self::Group(g) => &g.settings,
        }
    }

    fn group_id(&self) -> Option<String> {
        match self {
            Self::Individual(_) => None,
            Self::Group(g) => Some(g.enrollment_group_id.clone()),
        }
    }

    fn device_id(&self, registration_id: &str) -> String {
        match self {
            Self::Individual(e) => e
                .device_id
                .clone()
                .unwrap_or_else(|| registration_id.to_owned()),
            Self::Group(_) => registration_id.to_owned(),
        }
    }

    /// The device's own keys: the enrollment's, or derived from the group's.
    fn device_keys(&self, registration_id: &str) -> Vec<SharedAccessKey> {
        let keys = self.settings().attestation.symmetric_key.as_ref();
        let parsed = keys
            .into_iter()
            .flat_map(|k| [k.primary_key.as_deref(), k.secondary_key.as_deref()])
            .flatten()
            .filter_map(|k| SharedAccessKey::from_base64(k).ok());
        match self {
            Self::Individual(_) => parsed.collect(),
            Self::Group(_) => parsed
                .map(|group_key| derive_device_key(&group_key, registration_id))
                .collect(),
        }
    }

    fn disabled(&self) -> bool {
        self.settings().is_disabled()
    }
}

/// Finished registration operations, kept for polling for [`OPERATION_TTL`].
#[derive(Default)]
pub struct Operations {
    finished: Mutex<HashMap<String, (String, Instant, RegistrationOperationStatus)>>,
    last_sweep: Mutex<Option<Instant>>,
}

impl Operations {
    fn insert(&self, registration_key: String, status: RegistrationOperationStatus) {
        let now = Instant::now();
        let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        let mut last_sweep = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
        if last_sweep.is_none_or(|t| now.duration_since(t) > Duration::from_secs(60)) {
            finished.retain(|_, (_, at, _)| now.duration_since(*at) < OPERATION_TTL);
            *last_sweep = Some(now);
        }
        finished.insert(status.operation_id.clone(), (registration_key, now, status));
    }

    fn get(
        &self,
        registration_key: &str,
        operation_id: &str,
    ) -> Option<RegistrationOperationStatus> {
        let finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        finished
            .get(operation_id)
            .filter(|(key, at, _)| key == registration_key && at.elapsed() < OPERATION_TTL)
            .map(|(_, _, status)| status.clone())
    }
}

fn unauthorized(error: SasError) -> DpsError {
    DpsError::Unauthorized(error.to_string())
}

impl Dps {
    /// Authenticates a device by the SAS token it presents (HTTP `Authorization` or MQTT
    /// password). A disabled individual enrollment shadows every group, as in Azure: the device is
    /// admitted only to be told it is disabled.
    pub fn authenticate(
        &self,
        id_scope: &str,
        registration_id: &str,
        credential: Option<&str>,
    ) -> Result<Admission, DpsError> {
        if !id_scope.eq_ignore_ascii_case(&self.settings.id_scope) {
            return Err(DpsError::Unauthorized(format!(
                "unknown ID scope {id_scope:?}"
            )));
        }
        validate::registration_id(registration_id)?;
        let credential = credential.ok_or_else(|| {
            DpsError::Unauthorized("no SharedAccessSignature was presented".into())
        })?;
        let token = SignedSas::parse(credential).map_err(unauthorized)?;
        let resource = format!("{id_scope}/registrations/{registration_id}");
        if !token.grants(&resource) {
            return Err(DpsError::Unauthorized(
                "the SharedAccessSignature was issued for another registration".into(),
            ));
        }
        let now = unix_now();
        let individual = self
            .store
            .read(|state| state.enrollments.get(&id_key(registration_id)).cloned());
        let verify = |admission: &Admission| {
            let keys = admission.device_keys(registration_id);
            let refs: Vec<&SharedAccessKey> = keys.iter().collect();
            token.verify(&refs, now)
        };
        // Groups are consulted only when the individual enrollment does not settle the matter.
        let group_match = || {
            let groups: Vec<EnrollmentGroup> = self.store.read(|state| {
                state
                    .groups
                    .values()
                    .filter(|g| g.settings.attestation.kind == AttestationType::SymmetricKey)
                    .cloned()
                    .collect()
            });
            let mut last = SasError::SignatureMismatch;
            for group in groups {
                let admission = Admission::Group(Box::new(group));
                match verify(&admission) {
                    Ok(()) => return Ok(admission),
                    Err(e @ SasError::Expired { .. }) => last = e,
                    Err(_) => {}
                }
            }
            Err(last)
        };
        match individual {
            Some(enrollment)
                if enrollment.settings.attestation.kind != AttestationType::SymmetricKey =>
            {
                Err(DpsError::Unauthorized(
                    "the enrollment does not use symmetric-key attestation; emulated devices \
                        register with symmetric keys"
                        .into(),
                ))
            }
            Some(enrollment) => {
                let admission = Admission::Individual(Box::new(enrollment));
                match verify(&admission) {
                    Ok(()) => Ok(admission),
                    Err(error) if admission.disabled() => group_match()
                        .map(|_| admission)
                        .map_err(|_| unauthorized(error)),
                    Err(error) => Err(unauthorized(error)),
                }
            }
            None => group_match().map_err(|error| match error {
                SasError::SignatureMismatch => DpsError::Unauthorized(format!(
                    "no enrollment admits registration id {registration_id:?} with this key"
                )),
                other => unauthorized(other),
            }),
        }
    }

    /// Registers an authenticated device. Returns the `assigning` answer; the outcome is
    /// available to [`Dps::operation_status`].
    pub async fn register(
        &self,
        registration_id: &str,
        admission: Admission,
        request: DeviceRegistration,
    ) -> Result<RegistrationOperationStatus, DpsError> {
        if let Some(body_id) = &request.registration_id {
            if !body_id.eq_ignore_ascii_case(registration_id) {
                return Err(DpsError::BadRequest(
                    "registrationId in the body must equal the one in the URL or MQTT client id"
                        .into(),
                ));
            }
        }
        // Counted once the request is known to be valid, as a billable registration would be.
        self.admit_registration()?;
        let outcome = self
            .assign(registration_id, &admission, request.payload)
            .await?;
        let operation_id = format!("4.{}", uuid::Uuid::new_v4());
        self.operations.insert(
            id_key(registration_id),
            RegistrationOperationStatus {
                operation_id: operation_id.clone(),
                status: outcome.status,
                registration_state: Some(outcome),
            },
        );
        Ok(RegistrationOperationStatus {
            operation_id,
            status: RegistrationStatus::Assigning,
            registration_state: None,
        })
    }

    /// The state of a registration operation started by this device.
    pub fn operation_status(
        &self,
        registration_id: &str,
        operation_id: &str,
    ) -> Result<RegistrationOperationStatus, DpsError> {
        self.operations
            .get(&id_key(registration_id), operation_id)
            .ok_or_else(|| {
                DpsError::RegistrationNotFound(format!(
                    "no registration operation {operation_id:?} for {registration_id:?}"
                ))
            })
    }

    async fn assign(
        &self,
        registration_id: &str,
        admission: &Admission,
        payload: Option<Value>,
    ) -> Result<DeviceRegistrationState, DpsError> {
        let key = id_key(registration_id);
        let previous = self
            .store
            .read(|state| state.registrations.get(&key).cloned());
        let current = previous
            .as_ref()
            .filter(|p| p.status == RegistrationStatus::Assigned && p.assigned_hub.is_some());
        let decision = if admission.disabled() {
            Err(None)
        } else {
            let policy = admission.settings().reprovision_policy.unwrap_or_default();
            match current.and_then(|c| c.assigned_hub.as_deref()) {
                Some(hub) if !policy.update_hub_assignment && self.linked_hub(hub).is_some() => {
                    Ok(Allocation {
                        hub: hub.to_owned(),
                        initial_twin: None,
                        payload: None,
                    })
                }
                _ => self
                    .allocate(registration_id, admission, payload, current)
                    .await
                    .map_err(Some),
            }
        };
        let group_id = admission.group_id();
        let (record, notices) = self
            .store
            .transact(|state| {
                let previous = state.registrations.get(&key);
                let (record, mut changes) = match decision {
                    Ok(allocation) => {
                        assignment(state, registration_id, admission, allocation, previous)
                    }
                    Err(reason) => (unassigned(registration_id, previous, reason), Vec::new()),
                };
                let record = DeviceRegistrationState {
                    symmetric_key: Some(SymmetricKeyRegistrationResult {
                        enrollment_group_id: group_id,
                    }),
                    ..record
                };
                changes.push(Change::PutRegistration(Box::new(record.clone())));
                let notices = hub_notices(state, &changes);
                Ok::<_, DpsError>(((record, notices), changes))
            })
            .await?;
        for notice in notices {
            let Some(hub) = self.hubs.get(notice.hub()) else {
                continue;
            };
            match notice {
                HubNotice::Created(_, device) => {
                    hub.lifecycle_event(&device, "createDeviceIdentity")
                }
                HubNotice::Replaced(_, device) => hub.twin_replaced(&device),
                HubNotice::Deleted(_, device) => hub.device_deleted(&device),
            }
        }
        Ok(record)
    }

    /// A device's current registration record (the device-side status lookup).
    pub fn device_registration_status(
        &self,
        registration_id: &str,
    ) -> Result<DeviceRegistrationState, DpsError> {
        self.get_registration(registration_id)
    }
}

/// What the hubs must announce after an assignment (IoT Hub emits these events itself).
enum HubNotice {
    Created(String, DeviceIdentity),
    Replaced(String, DeviceIdentity),
    Deleted(String, DeviceIdentity),
}

impl HubNotice {
    fn hub(&self) -> &str {
        match self {
            Self::Created(hub, _) | Self::Replaced(hub, _) | Self::Deleted(hub, _) => hub,
        }
    }
}

/// Compares device changes with the state they will change.
fn hub_notices(state: &CloudState, changes: &[Change]) -> Vec<HubNotice> {
    let existing = |hub: &str, id: &str| state.hubs.get(hub).and_then(|r| r.get(id));
    changes
        .iter()
        .filter_map(|change| match change {
            Change::PutDevice { hub, device } => match existing(hub, &device.device_id) {
                None => Some(HubNotice::Created(hub.clone(), (**device).clone())),
                Some(old) if old.generation_id != device.generation_id => {
                    Some(HubNotice::Replaced(hub.clone(), (**device).clone()))
                }
                Some(_) => None,
            },
            Change::DeleteDevice { hub, device_id } => {
                existing(hub, device_id).map(|old| HubNotice::Deleted(hub.clone(), old.clone()))
            }
            _ => None,
        })
        .collect()
}

/// The record and hub changes of a successful assignment.
fn assignment(
    state: &CloudState,
    registration_id: &str,
    admission: &Admission,
    allocation: Allocation,
    previous: Option<&DeviceRegistrationState>,
) -> (DeviceRegistrationState, Vec<Change>) {
    let now = azure_format::now();
    let settings = admission.settings();
    let migrate = settings
        .reprovision_policy
        .unwrap_or_default()
        .migrate_device_data;
    let device_id = admission.device_id(registration_id);
    let hub = allocation.hub;
    let before = previous
        .filter(|p| p.status == RegistrationStatus::Assigned)
        .and_then(|p| Some((p.assigned_hub.clone()?, p.device_id.clone()?)));
    let substatus = assigned_substatus(before.as_ref(), &hub, migrate);
    let initial_twin = allocation
        .initial_twin
        .or_else(|| settings.initial_twin.clone())
        .unwrap_or_default();
    let device_in = |hub: &str, id: &str| state.hubs.get(hub).and_then(|r| r.get(id));
    let existing = device_in(&hub, &device_id);
    let old = before.as_ref().and_then(|(h, d)| device_in(h, d));
    let (twin, keep_identity) = assigned_twin(substatus, migrate, existing, old, &initial_twin);
    let keys = admission.device_keys(registration_id);
    let key_text = |i: usize| {
        keys.get(i)
            .map(|k| k.expose_base64().to_owned())
            .unwrap_or_default()
    };
    let identity = DeviceIdentity {
        device_id: device_id.clone(),
        generation_id: existing
            .filter(|_| keep_identity)
            .map(|d| d.generation_id.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
        etag: azure_format::hub_etag(),
        status: existing.map_or(DeviceStatus::Enabled, |d| d.status),
        status_reason: existing.and_then(|d| d.status_reason.clone()),
        primary_key: key_text(0),
        secondary_key: key_text(1),
        iot_edge: settings.capabilities.as_ref().is_some_and(|c| c.iot_edge),
        twin,
        last_updated: now.clone(),
    };
    let mut changes = vec![Change::PutDevice {
        hub: hub.clone(),
        device: Box::new(identity),
    }];
    if let Some((old_hub, old_device)) = &before {
        let same = old_hub.eq_ignore_ascii_case(&hub) && *old_device == device_id;
        if !same && device_in(old_hub, old_device).is_some() {
            // Moving hubs (or device ids) removes the old identity, as Azure does.
            changes.push(Change::DeleteDevice {
                hub: old_hub.clone(),
                device_id: old_device.clone(),
            });
        }
    }
    let record = DeviceRegistrationState {
        registration_id: registration_id.to_owned(),
        created_date_time_utc: previous
            .and_then(|p| p.created_date_time_utc.clone())
            .or_else(|| Some(now.clone())),
        assigned_hub: Some(hub),
        device_id: Some(device_id),
        status: RegistrationStatus::Assigned,
        substatus: Some(substatus),
        error_code: None,
        error_message: None,
        last_updated_date_time_utc: Some(now),
        etag: Some(azure_format::etag()),
        payload: allocation.payload,
        symmetric_key: None,
    };
    (record, changes)
}

/// How an assignment relates to the device's last one (`before`: its hub and device id): first,
/// back to the same hub, or to another hub with its data migrated or reset.
fn assigned_substatus(
    before: Option<&(String, String)>,
    hub: &str,
    migrate: bool,
) -> AssignedSubstatus {
    match before {
        None => AssignedSubstatus::InitialAssignment,
        Some((old_hub, _)) if old_hub.eq_ignore_ascii_case(hub) => {
            AssignedSubstatus::ReprovisionedToInitialAssignment
        }
        Some(_) if migrate => AssignedSubstatus::DeviceDataMigrated,
        Some(_) => AssignedSubstatus::DeviceDataReset,
    }
}

/// The twin the assigned identity gets, and whether the identity keeps its generation: the
/// identity already in the hub, the one migrated from the old hub, or a fresh twin from the
/// enrollment's initial twin when the data is reset (or there is nothing to keep).
fn assigned_twin(
    substatus: AssignedSubstatus,
    migrate: bool,
    existing: Option<&DeviceIdentity>,
    old: Option<&DeviceIdentity>,
    initial_twin: &InitialTwin,
) -> (Twin, bool) {
    let fresh_twin = || Twin {
        tags: initial_twin.tags(),
        desired: PropertySet::new(initial_twin.desired()),
        reported: PropertySet::new(Default::default()),
        version: 1,
        etag: azure_format::hub_etag(),
    };
    match substatus {
        AssignedSubstatus::InitialAssignment => (
            existing.map(|d| d.twin.clone()).unwrap_or_else(fresh_twin),
            true,
        ),
        AssignedSubstatus::ReprovisionedToInitialAssignment if migrate => (
            existing
                .or(old)
                .map(|d| d.twin.clone())
                .unwrap_or_else(fresh_twin),
            true,
        ),
        AssignedSubstatus::DeviceDataMigrated => (
            old.map(|d| d.twin.clone()).unwrap_or_else(fresh_twin),
            false,
        ),
        // Reset (same hub or another): the device starts over from the enrollment's twin.
        _ => (fresh_twin(), false),
    }
}

/// The record of a registration that did not assign: disabled (no reason) or failed. The last
/// assignment stays visible, since the device is still there.
fn unassigned(
    registration_id: &str,
    previous: Option<&DeviceRegistrationState>,
    failure: Option<String>,
) -> DeviceRegistrationState {
    let now = azure_format::now();
    let (status, error_code) = match &failure {
        Some(_) => (RegistrationStatus::Failed, Some(ALLOCATION_FAILED)),
        None => (RegistrationStatus::Disabled, None),
    };
    DeviceRegistrationState {
        registration_id: registration_id.to_owned(),
        created_date_time_utc: previous
            .and_then(|p| p.created_date_time_utc.clone())
            .or_else(|| Some(now.clone())),
        assigned_hub: previous.and_then(|p| p.assigned_hub.clone()),
        device_id: previous.and_then(|p| p.device_id.clone()),
        status,
        substatus: None,
        error_code,
        error_message: failure,
        last_updated_date_time_utc: Some(now),
        etag: Some(azure_format::etag()),
        payload: None,
        symmetric_key: None,
    }
}
