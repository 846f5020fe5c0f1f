//! DPS records in their wire shape (api-version 2021-10-01), as stored and as served.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `enabled` or `disabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum ProvisioningStatus {
    /// Devices may register.
    #[default]
    Enabled,
    /// Devices are refused.
    Disabled,
}

/// How DPS picks a hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AllocationPolicy {
    /// Weighted hash of the registration id over the candidate hubs.
    Hashed,
    /// Lowest latency; every emulated hub is equally near, so this hashes like `hashed`, as
    /// Azure does between hubs of equal latency.
    GeoLatency,
    /// The hub named in the enrollment.
    Static,
    /// A webhook decides.
    Custom,
}

/// `none`, `tpm`, `x509` or `symmetricKey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AttestationType {
    /// No attestation.
    None,
    /// TPM endorsement key.
    Tpm,
    /// X.509 certificates.
    X509,
    /// Symmetric keys (the only kind devices can register with here).
    SymmetricKey,
}

/// Primary and secondary symmetric keys (base64). `Debug` shows only whether each is set.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeyAttestation {
    /// Primary key; generated when left empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_key: Option<String>,
    /// Secondary key; generated when left empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<String>,
}

impl std::fmt::Debug for SymmetricKeyAttestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |key: &Option<String>| key.as_ref().map(|_| "<redacted>");
        f.debug_struct("SymmetricKeyAttestation")
            .field("primary_key", &shown(&self.primary_key))
            .field("secondary_key", &shown(&self.secondary_key))
            .finish()
    }
}

/// How devices of an enrollment prove who they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttestationMechanism {
    /// The mechanism.
    #[serde(rename = "type")]
    pub kind: AttestationType,
    /// TPM details, kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<Value>,
    /// X.509 details, kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<Value>,
    /// Symmetric keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeyAttestation>,
}

impl AttestationMechanism {
    /// The same mechanism without its keys, as GET and query show it: DPS leaves the
    /// `symmetricKey` member out entirely (`{"type": "symmetricKey"}`); the `attestationmechanism`
    /// operation exists to fetch the keys. Source: Azure/azure-sdk-for-python
    /// sdk/iothub/azure-iot-deviceprovisioning/tests/recordings/ (recorded live traffic).
    pub fn without_secrets(&self) -> Self {
        Self {
            symmetric_key: None,
            ..self.clone()
        }
    }
}

/// `{ "iotEdge": bool }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCapabilities {
    /// Whether the device is an IoT Edge device.
    #[serde(default)]
    pub iot_edge: bool,
}

/// What to do when a registered device registers again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReprovisionPolicy {
    /// Re-evaluate the hub assignment (default true).
    #[serde(default = "yes")]
    pub update_hub_assignment: bool,
    /// Carry the twin to the new hub (true) or reset it to the initial twin (false).
    #[serde(default = "yes")]
    pub migrate_device_data: bool,
}

fn yes() -> bool {
    true
}

impl Default for ReprovisionPolicy {
    fn default() -> Self {
        Self {
            update_hub_assignment: true,
            migrate_device_data: true,
        }
    }
}

/// The webhook of a custom allocation policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomAllocationDefinition {
    /// Where DPS posts the allocation request.
    pub webhook_url: String,
    /// API version of the records sent to the webhook.
    pub api_version: String,
}

/// The initial twin of an enrollment: tags and desired properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InitialTwin {
    /// Twin tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Map<String, Value>>,
    /// `{ "desired": {...} }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<InitialTwinProperties>,
}

/// The properties part of an initial twin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InitialTwinProperties {
    /// Desired properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Map<String, Value>>,
}

impl InitialTwin {
    /// The tags, or none.
    pub fn tags(&self) -> Map<String, Value> {
        self.tags.clone().unwrap_or_default()
    }

    /// The desired properties, or none.
    pub fn desired(&self) -> Map<String, Value> {
        self.properties
            .as_ref()
            .and_then(|p| p.desired.clone())
            .unwrap_or_default()
    }
}

/// Fields individual enrollments and enrollment groups share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentSettings {
    /// How devices attest.
    pub attestation: AttestationMechanism,
    /// Device capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<DeviceCapabilities>,
    /// The hub for the static policy (older form of `iotHubs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hub_host_name: Option<String>,
    /// The twin a newly assigned device starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<InitialTwin>,
    /// Changes on every write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Enabled or disabled; kept as given, so a client that sends `null` (or nothing) reads
    /// `null` back, as DPS answers (the member is always present). `null` means enabled.
    #[serde(default)]
    pub provisioning_status: Option<ProvisioningStatus>,
    /// Re-registration behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprovision_policy: Option<ReprovisionPolicy>,
    /// Set by the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// Set by the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// Overrides the service's default policy (hashed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_policy: Option<AllocationPolicy>,
    /// The hubs this enrollment's devices may be assigned to (all linked hubs when empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hubs: Option<Vec<String>>,
    /// The webhook for the custom policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_allocation_definition: Option<CustomAllocationDefinition>,
}

impl EnrollmentSettings {
    /// Whether devices are refused (`provisioningStatus` is `disabled`; `null` is enabled).
    pub fn is_disabled(&self) -> bool {
        self.provisioning_status == Some(ProvisioningStatus::Disabled)
    }
}

/// An individual enrollment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndividualEnrollment {
    /// The device's registration id (case-insensitive).
    pub registration_id: String,
    /// The device id to create in the hub (the registration id when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Free-form device information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional_device_information: Option<Value>,
    /// The current registration, filled in on reads only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<DeviceRegistrationState>,
    /// The shared settings.
    #[serde(flatten)]
    pub settings: EnrollmentSettings,
}

/// An enrollment group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentGroup {
    /// The group id.
    pub enrollment_group_id: String,
    /// The shared settings.
    #[serde(flatten)]
    pub settings: EnrollmentSettings,
}

/// The outcome of a device's registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RegistrationStatus {
    /// Not assigned.
    Unassigned,
    /// In progress.
    Assigning,
    /// Assigned to a hub.
    Assigned,
    /// Failed (see errorCode and errorMessage).
    Failed,
    /// The enrollment is disabled.
    Disabled,
}

/// Why the device was (re)assigned where it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AssignedSubstatus {
    /// First assignment.
    InitialAssignment,
    /// Moved to another hub with its twin.
    DeviceDataMigrated,
    /// Moved to another hub with the enrollment's initial twin.
    DeviceDataReset,
    /// Re-provisioned to the hub it already had.
    ReprovisionedToInitialAssignment,
}

/// Which enrollment group admitted a symmetric-key device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeyRegistrationResult {
    /// The group, for devices registered through one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
}

/// A registration record, as the service API (`DeviceRegistrationState`) and devices
/// (`DeviceRegistrationResult`) see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistrationState {
    /// The registration id.
    pub registration_id: String,
    /// When the device first registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date_time_utc: Option<String>,
    /// The hub host the device was assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    /// The device id in that hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The outcome.
    pub status: RegistrationStatus,
    /// Why the device is where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<AssignedSubstatus>,
    /// Set when the registration failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u32>,
    /// Set when the registration failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// When the record last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_date_time_utc: Option<String>,
    /// Changes on every write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Data a custom allocation webhook returned for the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// For symmetric-key devices: the group that admitted the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric_key: Option<SymmetricKeyRegistrationResult>,
}

impl DeviceRegistrationState {
    /// The record of a device that has not registered, as an enrollment GET shows it.
    pub fn unassigned(registration_id: &str) -> Self {
        Self {
            registration_id: registration_id.to_owned(),
            created_date_time_utc: None,
            assigned_hub: None,
            device_id: None,
            status: RegistrationStatus::Unassigned,
            substatus: None,
            error_code: None,
            error_message: None,
            last_updated_date_time_utc: None,
            etag: None,
            payload: None,
            symmetric_key: None,
        }
    }

    /// The record as the service API shows it: without the `symmetricKey` member that devices
    /// get in their registration result (service API GET and query per group answer
    /// `{registrationId, createdDateTimeUtc, assignedHub, deviceId, status, substatus,
    /// lastUpdatedDateTimeUtc, etag}`; Azure/azure-sdk-for-python
    /// sdk/iothub/azure-iot-deviceprovisioning/tests/recordings/
    /// test_device_registration.pyTestDeviceRegistrationtest_device_registration_lifecycle.json).
    pub fn for_service(&self) -> Self {
        Self {
            symmetric_key: None,
            ..self.clone()
        }
    }
}

/// What a device sends to register (or to look up its status).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRegistration {
    /// Must equal the registration id of the URL or MQTT client id.
    #[serde(default)]
    pub registration_id: Option<String>,
    /// TPM keys (not supported by the emulator's devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<Value>,
    /// Device data passed to a custom allocation webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// The answer to register and operation-status calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationOperationStatus {
    /// The operation to poll.
    pub operation_id: String,
    /// `assigning` until done.
    pub status: RegistrationStatus,
    /// The result, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_state: Option<DeviceRegistrationState>,
}

/// `{ "query": "*" }`.
#[derive(Debug, Clone, Deserialize)]
pub struct QuerySpecification {
    /// The query text.
    pub query: String,
}

/// Bulk operation modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BulkMode {
    /// Create; existing records are errors.
    Create,
    /// Create or replace.
    Update,
    /// Replace only when the item's etag matches.
    UpdateIfMatchETag,
    /// Delete.
    Delete,
}

/// One failed item of a bulk operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkItemError {
    /// The item's id (`registrationId` or `enrollmentGroupId` on the wire).
    #[serde(skip)]
    pub id: String,
    /// DPS error code.
    pub error_code: u32,
    /// Human-readable reason.
    pub error_status: String,
}
