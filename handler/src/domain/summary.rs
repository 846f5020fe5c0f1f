//! What the fleet dashboard needs of one record, small enough to read for every device at once:
//! how far the device has come (enrolled → registered → connected → reporting), its hub, its
//! connection and what it last reported. Storage writes it beside the record in the same write
//! (`crate::storage::tables`), so a summary never disagrees with the record it summarises, and a
//! scan of summaries reads a few hundred bytes a device instead of the whole record.

use super::bounded;
use super::events::Stamp;
use super::ids::{DeviceId, RegistrationId};
use super::record::{Customer, DeviceRecord, Status};
use serde::{Deserialize, Serialize};

/// Bytes kept of a reported status or a DPS error message: enough to read, and a bound on what
/// a device can make every dashboard view carry.
const TEXT_KEPT: usize = 128;

/// How far a device has come. Each stage is a subset of the one before: a reporting device is
/// connected, a connected one registered, a registered one enrolled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// It has a record (whatever its registry status).
    Enrolled,
    /// DPS assigned it to a hub and the enrollment is enabled (status `assigned`).
    Registered,
    /// Registered, and connected to that hub now.
    Connected,
    /// Connected, and it has reported its provisioning status.
    Reporting,
}

impl Stage {
    /// Every stage, in order along the way.
    pub const ALL: [Stage; 4] = [
        Stage::Enrolled,
        Stage::Registered,
        Stage::Connected,
        Stage::Reporting,
    ];

    /// The name pages and tests use.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Enrolled => "enrolled",
            Stage::Registered => "registered",
            Stage::Connected => "connected",
            Stage::Reporting => "reporting",
        }
    }
}

/// The device's connection to its current hub, as connection events (or reconciliation) last
/// reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// Connected or not.
    pub connected: bool,
    /// Since when.
    pub since: Stamp,
}

/// One record, as the dashboard reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// DPS registration id.
    pub registration_id: RegistrationId,
    /// IoT Hub device id.
    pub device_id: DeviceId,
    /// Owner.
    pub customer: Customer,
    /// Registry status.
    pub status: Status,
    /// The hub it lives on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// Since when it has been on that hub (its identity there was created, or DPS assigned it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_hub_since: Option<Stamp>,
    /// Its connection to that hub; `None` if it never connected there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,
    /// What it last reported as its provisioning status (`provisioning.status`), cut to
    /// [`TEXT_KEPT`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_status: Option<String>,
    /// DPS's message for a failed registration, cut the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_error: Option<String>,
}

impl Summary {
    /// How far the device has come.
    pub fn stage(&self) -> Stage {
        if self.status != Status::Assigned {
            return Stage::Enrolled;
        }
        match &self.connection {
            Some(c) if c.connected && self.reported_status.is_some() => Stage::Reporting,
            Some(c) if c.connected => Stage::Connected,
            _ => Stage::Registered,
        }
    }

    /// Whether the device says its provisioning failed: the device crate reports
    /// `reprovisionFailed`, other firmware `failed` or `provisioningFailed`, so any status
    /// naming a failure counts.
    pub fn reports_failure(&self) -> bool {
        self.reported_status
            .as_deref()
            .is_some_and(|s| s.to_ascii_lowercase().contains("fail"))
    }
}

fn kept(text: &str) -> String {
    let cut = bounded::prefix(text, TEXT_KEPT);
    if cut.len() < text.len() {
        format!("{cut}…")
    } else {
        cut.to_owned()
    }
}

impl DeviceRecord {
    /// What the dashboard needs of this record.
    pub fn summary(&self) -> Summary {
        let hub = self.assigned_hub().map(str::to_owned);
        let on_hub_since = hub.as_deref().and_then(|hub| {
            self.live
                .identities
                .get(hub)
                .filter(|p| p.present)
                .map(|p| p.at.clone())
                .or_else(|| {
                    let registration = self.registration.as_ref()?;
                    registration
                        .last_updated
                        .as_deref()
                        .and_then(Stamp::parse)
                        .or_else(|| Stamp::parse(&registration.observed_at))
                })
        });
        Summary {
            registration_id: self.registration_id.clone(),
            device_id: self.device_id.clone(),
            customer: self.customer.clone(),
            status: self.status(),
            hub,
            on_hub_since,
            connection: self.connection().map(|c| Connection {
                connected: c.connected,
                since: c.at.clone(),
            }),
            reported_status: self.live.reported_status().map(kept),
            registration_error: self
                .registration
                .as_ref()
                .filter(|r| r.status == "failed")
                .and_then(|r| r.error_message.as_deref())
                .map(kept),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::{Change, ConnectionSequence};
    use crate::domain::hub_report::tests::event;
    use crate::domain::record::tests::sample;
    use serde_json::json;

    fn on_hub(id: &str) -> DeviceRecord {
        let mut record = sample(id);
        record
            .live
            .apply(&event("hub-1", 1, 1, Change::Created { reported: None }));
        record
    }

    #[test]
    fn a_device_moves_along_the_stages_as_its_events_arrive() {
        let mut record = sample("d1");
        assert_eq!(record.summary().stage(), Stage::Enrolled);
        record = on_hub("d1");
        let summary = record.summary();
        assert_eq!(summary.stage(), Stage::Registered);
        assert_eq!(summary.hub.as_deref(), Some("hub-1"));
        assert_eq!(
            summary.on_hub_since.as_ref().map(Stamp::as_str),
            Some("2026-11-26T10:00:01Z")
        );
        assert_eq!(summary.connection, None, "never connected");
        let sequence = |n: u8| ConnectionSequence::parse(&format!("{n:064X}")).unwrap();
        record
            .live
            .apply(&event("hub-1", 2, 2, Change::Connected(sequence(1))));
        assert_eq!(record.summary().stage(), Stage::Connected);
        let report = json!({ "provisioning": { "status": "provisioned" } });
        record.live.apply(&event(
            "hub-1",
            3,
            3,
            Change::Twin {
                reported: Some((report.as_object().cloned().unwrap(), 2)),
                replaced: false,
            },
        ));
        assert_eq!(record.summary().stage(), Stage::Reporting);
        record
            .live
            .apply(&event("hub-1", 4, 4, Change::Disconnected(sequence(2))));
        let summary = record.summary();
        assert_eq!(summary.stage(), Stage::Registered);
        assert_eq!(
            summary
                .connection
                .map(|c| (c.connected, c.since.to_string())),
            Some((false, "2026-11-26T10:00:04Z".to_owned()))
        );
        record.enabled = false;
        assert_eq!(
            record.summary().stage(),
            Stage::Enrolled,
            "a disabled device is not counted as registered"
        );
    }

    #[test]
    fn a_reported_failure_is_recognised_and_long_reports_are_cut() {
        let mut record = on_hub("d1");
        let report = json!({ "provisioning": { "status": format!("reprovisionFailed{}", "!".repeat(500)) } });
        record.live.apply(&event(
            "hub-1",
            2,
            2,
            Change::Twin {
                reported: Some((report.as_object().cloned().unwrap(), 2)),
                replaced: false,
            },
        ));
        let summary = record.summary();
        assert!(summary.reports_failure());
        let status = summary.reported_status.unwrap();
        assert!(status.len() <= TEXT_KEPT + "…".len() && status.ends_with('…'));
    }

    #[test]
    fn a_summary_reads_back_as_it_was_written() {
        let summary = on_hub("d1").summary();
        let text = serde_json::to_string(&summary).unwrap();
        assert_eq!(serde_json::from_str::<Summary>(&text).unwrap(), summary);
    }
}
