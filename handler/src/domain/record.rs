//! The registry's record of one device: who owns it, what it is, how it is enrolled, where it
//! registered. Stored as one row; the API shows it in two views (enrollment and device).

use super::bounded;
use super::hub_report::HubReport;
use super::ids::{CustomerId, DeviceId, HubName, RegistrationId};
use super::rotation::{CompletedRotation, KeyRotation, KeySlot};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The current time as RFC 3339 UTC, how records stamp their changes.
pub fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Seconds from an RFC 3339 stamp to now (`None` if unreadable).
pub fn age_seconds(stamp: &str) -> Option<i64> {
    let then = OffsetDateTime::parse(stamp, &Rfc3339).ok()?;
    Some((OffsetDateTime::now_utc() - then).whole_seconds())
}

// The enrolled parts of a record are what the client sent, checked: the shared types.
pub use enrollment_input::{Asset, Customer, InitialTwin};

/// Whether DPS agrees with the record. A pending state is an intent written before DPS was
/// changed; it is completed (or undone) by the next request that touches the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DpsSync {
    /// DPS holds what the record says.
    Complete,
    /// The DPS enrollment is being created.
    PendingCreate,
    /// The DPS enrollment is being updated to match.
    PendingUpdate,
    /// The device is being removed from DPS and its hub.
    PendingDelete,
}

/// The device's registration with DPS, as last learned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    /// `assigned`, `failed`, `disabled`, `assigning`, `unassigned`.
    pub status: String,
    /// The hub the device was assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_hub: Option<String>,
    /// Its device id there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Why it is where it is (`initialAssignment`, `deviceDataMigrated`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<String>,
    /// DPS's message when the registration failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// When DPS last changed the registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<String>,
    /// When the registry learned it.
    pub observed_at: String,
}

/// Where a device stands, for filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Status {
    /// Being created.
    Pending,
    /// Enrolled, not registered yet.
    Enrolled,
    /// Registered and assigned to a hub.
    Assigned,
    /// Its registration failed.
    Failed,
    /// Its enrollment is disabled.
    Disabled,
    /// Being deleted.
    Deleting,
}

impl Status {
    /// Every status, for parsing filters.
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Enrolled,
        Status::Assigned,
        Status::Failed,
        Status::Disabled,
        Status::Deleting,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Enrolled => "enrolled",
            Status::Assigned => "assigned",
            Status::Failed => "failed",
            Status::Disabled => "disabled",
            Status::Deleting => "deleting",
        }
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text))
    }
}

/// The stored record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRecord {
    /// DPS registration id.
    pub registration_id: RegistrationId,
    /// IoT Hub device id (the registration id unless chosen).
    pub device_id: DeviceId,
    /// Owner.
    pub customer: Customer,
    /// What the device is.
    #[serde(default)]
    pub asset: Asset,
    /// The twin it starts with.
    #[serde(default)]
    pub initial_twin: InitialTwin,
    /// Whether the enrollment lets the device register.
    pub enabled: bool,
    /// A fixed hub, if chosen (static allocation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hub: Option<HubName>,
    /// Agreement with DPS.
    pub sync: DpsSync,
    /// The last known registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Registration>,
    /// When DPS was last asked about the registration (reads refresh a stale, unassigned one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_checked_at: Option<String>,
    /// What IoT Hub's events told: hub identities, connection, reported properties, last seen.
    #[serde(default, skip_serializing_if = "HubReport::is_empty")]
    pub live: HubReport,
    /// The enrollment key slot the device holds (primary until a rotation moves it).
    #[serde(default, skip_serializing_if = "KeySlot::is_primary")]
    pub key_slot: KeySlot,
    /// A key rotation in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_rotation: Option<KeyRotation>,
    /// The last key rotation that finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_key_rotation: Option<CompletedRotation>,
    /// When enrolled.
    pub created_at: String,
    /// When last changed.
    pub updated_at: String,
}

impl DeviceRecord {
    /// Where the device stands.
    pub fn status(&self) -> Status {
        match self.sync {
            DpsSync::PendingDelete => return Status::Deleting,
            DpsSync::PendingCreate => return Status::Pending,
            _ => {}
        }
        if !self.enabled {
            return Status::Disabled;
        }
        if self.assigned_hub().is_some() {
            return Status::Assigned;
        }
        match self.registration.as_ref().map(|r| r.status.as_str()) {
            Some("failed") => Status::Failed,
            _ => Status::Enrolled,
        }
    }

    /// The hub the device lives on, if any. Once the hubs' lifecycle events have said where its
    /// identity is, they decide (they follow re-provisioning and deletions); until then DPS's
    /// last known assignment does.
    pub fn assigned_hub(&self) -> Option<&str> {
        if !self.live.identities.is_empty() {
            return self.live.current_hub();
        }
        self.registration
            .as_ref()
            .filter(|r| r.status == "assigned")
            .and_then(|r| r.assigned_hub.as_deref())
    }

    /// The connection to the hub the device is on, as connection events reported it.
    pub fn connection(&self) -> Option<&super::hub_report::ConnectionState> {
        self.assigned_hub()
            .and_then(|hub| self.live.connections.get(hub))
    }

    /// Cuts the largest kept reported values until the record fits [`bounded::RECORD_BYTES`];
    /// false if it still does not (its enrolled parts alone are too large: storage will refuse
    /// it, and the events that would change it are set aside). Enrollment limits keep that from
    /// happening, so the cut depends on the whole record only in a record near the limit.
    pub fn fit_storage(&mut self) -> bool {
        // Each round halves one value; values of a few bytes stop it, so it ends.
        for _ in 0..64 {
            let size = serde_json::to_string(self).map_or(usize::MAX, |t| t.len());
            if size <= bounded::RECORD_BYTES {
                return true;
            }
            let largest = self
                .live
                .reported
                .values_mut()
                .map(|v| (bounded::json_len(&v.value), v))
                .max_by_key(|(size, _)| *size);
            let Some((size, value)) = largest else {
                return false;
            };
            let Some(cut) = bounded::shrink(&value.value, size / 2).filter(|_| size >= 16) else {
                return false;
            };
            value.truncated_from = value.truncated_from.or(Some(size));
            value.value = cut;
        }
        false
    }

    /// The secondary index entries the record belongs to: `(kind, value)`.
    pub fn index_entries(&self) -> Vec<(IndexKind, String)> {
        let mut entries = vec![
            (IndexKind::Customer, self.customer.id.as_str().to_owned()),
            (IndexKind::Status, self.status().as_str().to_owned()),
        ];
        if let Some(hub) = self.assigned_hub() {
            entries.push((IndexKind::Hub, hub.to_ascii_lowercase()));
        }
        if self.has_unfinished_work() {
            entries.push((IndexKind::Sync, "pending".to_owned()));
        }
        entries
    }

    /// Whether a DPS change or a key rotation is unfinished: what a repair pass looks for.
    pub fn has_unfinished_work(&self) -> bool {
        self.sync != DpsSync::Complete || self.key_rotation.is_some()
    }
}

/// The secondary indexes: the list filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexKind {
    /// By customer id.
    Customer,
    /// By assigned hub.
    Hub,
    /// By status.
    Status,
    /// Records whose DPS change or key rotation is unfinished: what a repair pass reads.
    Sync,
}

impl IndexKind {
    /// The prefix of its partition keys.
    pub fn prefix(self) -> &'static str {
        match self {
            IndexKind::Customer => "customer",
            IndexKind::Hub => "hub",
            IndexKind::Status => "status",
            IndexKind::Sync => "sync",
        }
    }
}

/// A list filter: every given field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Customer id.
    pub customer: Option<CustomerId>,
    /// Assigned hub.
    pub hub: Option<HubName>,
    /// Status.
    pub status: Option<Status>,
    /// Only records whose DPS change or key rotation is unfinished.
    pub sync_pending: bool,
}

impl Filter {
    /// Records with unfinished DPS changes.
    pub fn unsynced() -> Self {
        Self {
            sync_pending: true,
            ..Self::default()
        }
    }

    /// Whether a record passes.
    pub fn matches(&self, record: &DeviceRecord) -> bool {
        self.customer
            .as_ref()
            .is_none_or(|c| *c == record.customer.id)
            && self.hub.as_ref().is_none_or(|h| {
                record
                    .assigned_hub()
                    .is_some_and(|a| a.eq_ignore_ascii_case(h.as_str()))
            })
            && self.status.is_none_or(|s| s == record.status())
            && (!self.sync_pending || record.has_unfinished_work())
    }

    /// The index to scan (the first filter given), if any.
    pub fn index(&self) -> Option<(IndexKind, String)> {
        if self.sync_pending {
            return Some((IndexKind::Sync, "pending".to_owned()));
        }
        if let Some(customer) = &self.customer {
            return Some((IndexKind::Customer, customer.as_str().to_owned()));
        }
        if let Some(hub) = &self.hub {
            return Some((IndexKind::Hub, hub.as_str().to_owned()));
        }
        self.status
            .map(|s| (IndexKind::Status, s.as_str().to_owned()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{Map, Value};
    use std::collections::BTreeMap;

    /// A complete, enrolled record for tests.
    pub(crate) fn sample(id: &str) -> DeviceRecord {
        let mut tags = Map::new();
        tags.insert("customer".into(), Value::String("contoso".into()));
        DeviceRecord {
            registration_id: RegistrationId::parse(id).unwrap(),
            device_id: DeviceId::parse(id).unwrap(),
            customer: Customer {
                id: CustomerId::parse("contoso").unwrap(),
                name: Some("Contoso".into()),
            },
            asset: Asset {
                serial_number: Some("SN-1".into()),
                model: Some("T-100".into()),
                attributes: BTreeMap::new(),
            },
            initial_twin: InitialTwin {
                tags,
                desired_properties: Map::new(),
            },
            enabled: true,
            iot_hub: None,
            sync: DpsSync::Complete,
            registration: None,
            registration_checked_at: None,
            live: HubReport::default(),
            key_slot: KeySlot::Primary,
            key_rotation: None,
            last_key_rotation: None,
            created_at: now(),
            updated_at: now(),
        }
    }

    fn assigned(mut record: DeviceRecord, hub: &str) -> DeviceRecord {
        record.registration = Some(Registration {
            status: "assigned".into(),
            assigned_hub: Some(hub.into()),
            device_id: Some(record.device_id.to_string()),
            substatus: None,
            error_message: None,
            last_updated: None,
            observed_at: now(),
        });
        record
    }

    #[test]
    fn status_follows_sync_then_enablement_then_registration() {
        let mut record = sample("d1");
        assert_eq!(record.status(), Status::Enrolled);
        record = assigned(record, "Hub-1.example");
        assert_eq!(record.status(), Status::Assigned);
        assert_eq!(record.assigned_hub(), Some("Hub-1.example"));
        record.enabled = false;
        assert_eq!(record.status(), Status::Disabled);
        record.sync = DpsSync::PendingDelete;
        assert_eq!(record.status(), Status::Deleting);
    }

    #[test]
    fn a_record_near_the_limit_cuts_its_reported_values_to_fit() {
        use crate::domain::events::Stamp;
        use crate::domain::hub_report::ReportedValue;
        let mut record = sample("d1");
        record
            .asset
            .attributes
            .insert("notes".into(), "n".repeat(26 * 1024));
        for key in ["status", "provisioning"] {
            record.live.reported.insert(
                key.into(),
                ReportedValue {
                    value: serde_json::json!({ "detail": "v".repeat(4000) }),
                    version: 1,
                    at: Stamp::now(),
                    hub: "hub-1".into(),
                    truncated_from: None,
                },
            );
        }
        assert!(record.fit_storage());
        assert!(serde_json::to_string(&record).unwrap().len() <= bounded::RECORD_BYTES);
        assert!(!record.live.truncated().is_empty(), "the cut is marked");
        // Enrolled data alone beyond the limit cannot be fitted.
        record
            .asset
            .attributes
            .insert("more".into(), "m".repeat(8 * 1024));
        assert!(!record.fit_storage());
    }

    #[test]
    fn index_entries_cover_every_filter_and_pending_work() {
        let mut record = assigned(sample("d1"), "Hub-1.example");
        record.sync = DpsSync::PendingUpdate;
        let entries = record.index_entries();
        assert!(entries.contains(&(IndexKind::Customer, "contoso".into())));
        assert!(entries.contains(&(IndexKind::Hub, "hub-1.example".into())));
        assert!(entries.contains(&(IndexKind::Status, "assigned".into())));
        assert!(entries.contains(&(IndexKind::Sync, "pending".into())));
        assert!(Filter::unsynced().matches(&record));
        let filter = Filter {
            hub: Some(HubName::parse("HUB-1.example").unwrap()),
            ..Filter::default()
        };
        assert!(filter.matches(&record));
        assert_eq!(
            filter.index(),
            Some((IndexKind::Hub, "hub-1.example".into()))
        );
    }
}
