//! Symmetric key rotation with device rollover: which of the enrollment's two key slots the
//! device holds, and a rotation in progress with the step it has reached.
//!
//! DPS gives an individual enrollment two keys, and a device may attest with either
//! (MicrosoftDocs/azure-docs articles/iot-dps/concepts-symmetric-key-attestation.md: "the
//! symmetric key (primary or secondary)"). A rotation puts a new key into the slot the device is
//! not using, hands it to the device, and only when the device reports that it re-provisioned
//! with it is the old slot given a fresh random key nobody holds, in DPS and in the hub identity.
//! The registry never stores a key: the new key lives in DPS until the device has it.

use super::events::Stamp;
use super::hub_report::HubReport;
use serde::{Deserialize, Serialize};

/// The reported property a device answers a rotation with (`{"id", "status", "at"}`).
pub const REPORTED_PROPERTY: &str = "keyRotation";

/// One of the enrollment's two symmetric keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KeySlot {
    /// `primaryKey`: the one provisioning codes carry until a rotation moves the device.
    #[default]
    Primary,
    /// `secondaryKey`.
    Secondary,
}

impl KeySlot {
    /// The other slot.
    pub fn other(self) -> Self {
        match self {
            KeySlot::Primary => KeySlot::Secondary,
            KeySlot::Secondary => KeySlot::Primary,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySlot::Primary => "primary",
            KeySlot::Secondary => "secondary",
        }
    }

    /// Whether this is the primary slot (serde's skip test: records written before rotation
    /// existed read as primary).
    pub fn is_primary(&self) -> bool {
        *self == KeySlot::Primary
    }
}

/// How far a rotation has come. Each step is written to the record before the change it names is
/// made (the intent), so an interrupted rotation is finished from where it stood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RotationStep {
    /// A new key is being put into the free slot in DPS.
    Staging,
    /// DPS holds the new key; it waits to be handed to the device (offline devices stay here).
    Staged,
    /// The device accepted the key; it re-provisions with it and reports when done.
    Delivered,
    /// The device reported; the old slot is being replaced with a key nobody holds.
    Retiring,
}

impl RotationStep {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RotationStep::Staging => "staging",
            RotationStep::Staged => "staged",
            RotationStep::Delivered => "delivered",
            RotationStep::Retiring => "retiring",
        }
    }
}

/// A rotation in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRotation {
    /// Names this rotation to the device and in its report.
    pub id: String,
    /// The slot the new key goes into (the one the device is not using).
    pub slot: KeySlot,
    /// Where it stands.
    pub step: RotationStep,
    /// When it was asked for.
    pub requested_at: Stamp,
    /// When it last moved or was tried.
    pub updated_at: Stamp,
    /// Attempts to hand the key to the device.
    #[serde(default)]
    pub deliveries: u32,
    /// Why the last attempt did not get through (the device offline, a timeout), if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl KeyRotation {
    /// A rotation into `slot`, about to be staged.
    pub fn start(slot: KeySlot) -> Self {
        let now = Stamp::now();
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            slot,
            step: RotationStep::Staging,
            requested_at: now.clone(),
            updated_at: now,
            deliveries: 0,
            last_error: None,
        }
    }

    /// Whether the device has reported this rotation done (its `keyRotation` reported property
    /// names this id with status `completed`).
    pub fn reported_done(&self, live: &HubReport) -> bool {
        live.reported.get(REPORTED_PROPERTY).is_some_and(|kept| {
            kept.value["id"].as_str() == Some(self.id.as_str())
                && kept.value["status"].as_str() == Some("completed")
        })
    }
}

/// The last rotation that finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletedRotation {
    /// Its id.
    pub id: String,
    /// The slot the device moved to.
    pub slot: KeySlot,
    /// When the old key was retired.
    pub completed_at: Stamp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::hub_report::ReportedValue;
    use serde_json::json;

    #[test]
    fn a_rotation_is_done_only_when_the_device_reports_its_own_id_completed() {
        let rotation = KeyRotation::start(KeySlot::Secondary);
        let mut live = HubReport::default();
        assert!(!rotation.reported_done(&live));
        let report = |value| ReportedValue {
            value,
            version: 3,
            at: Stamp::now(),
            hub: "hub-1".into(),
            truncated_from: None,
        };
        live.reported.insert(
            REPORTED_PROPERTY.into(),
            report(json!({ "id": "an-older-rotation", "status": "completed" })),
        );
        assert!(!rotation.reported_done(&live));
        live.reported.insert(
            REPORTED_PROPERTY.into(),
            report(json!({ "id": rotation.id, "status": "failed" })),
        );
        assert!(!rotation.reported_done(&live));
        live.reported.insert(
            REPORTED_PROPERTY.into(),
            report(json!({ "id": rotation.id, "status": "completed" })),
        );
        assert!(rotation.reported_done(&live));
        assert_eq!(KeySlot::Primary.other(), KeySlot::Secondary);
    }
}
