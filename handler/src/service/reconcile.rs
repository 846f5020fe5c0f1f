//! Reconciliation: what a timer function runs to catch what events missed. Every record is
//! compared with DPS (enrollment, registration state) and with the hubs (identity, connection,
//! reported properties); differences are repaired in the record, interrupted DPS changes are
//! finished, and enrollments DPS holds without a record are reported (not removed: that is an
//! operator's decision).

use super::{Service, ServiceError};
use crate::cloud::hub::HubDevice;
use crate::cloud::CloudError;
use crate::domain::events::{
    reported_section, Change, ConnectionSequence, EventKey, HubEvent, Stamp,
};
use crate::domain::hub_report::{ConnectionState, Presence};
use crate::domain::{DpsSync, Filter};
use crate::storage::{StoreError, Stored};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Records checked at once.
const CONCURRENCY: usize = 8;
/// Ids listed per kind of finding (the counts are complete).
const LISTED: usize = 50;

/// One record's repairs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Repair {
    /// The device.
    pub device_id: String,
    /// What was wrong: `registration`, `hubIdentity`, `connection`, `reported`.
    pub fixed: Vec<&'static str>,
}

/// What a pass found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileReport {
    /// Records compared.
    pub checked: usize,
    /// Records repaired, with what was fixed (first 50).
    pub repaired: Vec<Repair>,
    /// How many records were repaired.
    pub repaired_count: usize,
    /// Records that could not be checked now (a dependency failed); the next pass retries.
    pub failed: usize,
    /// Enrollments in DPS with no record (first 50).
    pub enrollments_without_record: Vec<String>,
    /// Records whose DPS enrollment is gone (first 50).
    pub records_without_enrollment: Vec<String>,
}

/// A synthetic event for something reconciliation observed now: newer than anything the
/// streams reported before, older than anything they report after.
fn observed(device_id: &str, hub: &str, at: Stamp, change: Change) -> HubEvent {
    HubEvent {
        key: EventKey {
            stream: "reconciliation".into(),
            partition: "0".into(),
            sequence: i64::MAX,
        },
        device_id: device_id.to_owned(),
        hub: hub.to_owned(),
        enqueued: at.clone(),
        at,
        change,
    }
}

impl Service {
    /// Compares every record with DPS and the hubs and repairs what differs.
    pub async fn reconcile(&self) -> Result<ReconcileReport, ServiceError> {
        let mut report = ReconcileReport::default();
        // Interrupted DPS changes first, found cheaply through their index.
        let pending = self.repair_pending(usize::MAX).await?;
        report.repaired_count += pending.repaired;
        report.failed += pending.failed;
        let enrolled: BTreeSet<String> = self
            .dps
            .enrollment_ids()
            .await
            .map_err(ServiceError::dps)?
            .into_iter()
            .map(|id| id.to_ascii_lowercase())
            .collect();
        let mut recorded = BTreeSet::new();
        let mut continuation = None;
        loop {
            let page = self
                .store
                .list(&Filter::default(), 100, continuation.as_deref())
                .await?;
            for stored in &page.items {
                recorded.insert(stored.record.registration_id.key());
                if stored.record.sync == DpsSync::Complete
                    && !enrolled.contains(&stored.record.registration_id.key())
                {
                    report
                        .records_without_enrollment
                        .push(stored.record.registration_id.to_string());
                }
            }
            let checked: Vec<Result<Option<Repair>, ServiceError>> = stream::iter(page.items)
                .map(|stored| self.reconcile_one(stored))
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            for outcome in checked {
                report.checked += 1;
                match outcome {
                    Ok(Some(repair)) => {
                        report.repaired_count += 1;
                        if report.repaired.len() < LISTED {
                            report.repaired.push(repair);
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        report.failed += 1;
                        tracing::warn!(%error, "a record could not be reconciled now");
                    }
                }
            }
            continuation = page.continuation;
            if continuation.is_none() {
                break;
            }
        }
        report.enrollments_without_record = enrolled
            .difference(&recorded)
            .take(LISTED)
            .cloned()
            .collect();
        report.records_without_enrollment.truncate(LISTED);
        tracing::info!(
            checked = report.checked,
            repaired = report.repaired_count,
            failed = report.failed,
            "reconciled the registry"
        );
        Ok(report)
    }

    async fn reconcile_one(&self, stored: Stored) -> Result<Option<Repair>, ServiceError> {
        let device_id = stored.record.device_id.to_string();
        if stored.record.sync != DpsSync::Complete {
            // The repair pass at the start of `reconcile` just tried it; the next pass tries again.
            return Err(ServiceError::Unavailable {
                service: super::Upstream::Dps,
                detail: format!("{device_id} still has an unfinished DPS change"),
            });
        }
        let mut check = Check {
            record: stored.record.clone(),
            now: Stamp::now(),
            fixed: Vec::new(),
        };
        let registration = self
            .dps
            .registration(check.record.registration_id.as_str())
            .await
            .map_err(ServiceError::dps)?;
        check.registration(registration.as_ref());
        for hub in check.hubs_to_ask(registration.as_ref()) {
            if !self.hubs.knows(&hub) {
                continue;
            }
            let on_hub = match self.hubs.device(&hub, &device_id).await {
                Ok(found) => found,
                Err(CloudError::NotFound(_)) => None,
                Err(e) => return Err(ServiceError::hub(e)),
            };
            check.identity(&hub, on_hub.is_some());
            if let Some(on_hub) = on_hub {
                check.connection(&hub, &on_hub);
                check.reported(&device_id, &hub, &on_hub);
            }
        }
        self.write_repair(&stored, check).await
    }

    /// Writes a record the check changed (nothing when only the check time would change).
    async fn write_repair(
        &self,
        stored: &Stored,
        check: Check,
    ) -> Result<Option<Repair>, ServiceError> {
        let Check {
            mut record,
            mut fixed,
            ..
        } = check;
        if fixed.is_empty() {
            // Only the check time changed; not worth a write per record per pass.
            return Ok(None);
        }
        // The hub's reported properties are bounded as events bound them; a record near the
        // limit may need them cut further.
        record.fit_storage();
        match self.store.replace(stored, &record).await {
            Ok(_) => {}
            // Events changed it meanwhile; the next pass looks again.
            Err(StoreError::PreconditionFailed) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        fixed.dedup();
        let device_id = record.device_id.to_string();
        tracing::info!(device.id = %device_id, fixed = ?fixed, "reconciliation repaired a record");
        Ok(Some(Repair { device_id, fixed }))
    }
}

/// One record being compared with DPS and the hubs: the record as repaired so far and what
/// was repaired.
struct Check {
    record: crate::domain::DeviceRecord,
    now: Stamp,
    fixed: Vec<&'static str>,
}

impl Check {
    /// Takes DPS's registration state where it differs in status, hub or device id.
    fn registration(&mut self, registration: Option<&crate::domain::Registration>) {
        let key = |r: Option<&crate::domain::Registration>| {
            r.map(|r| {
                (
                    r.status.clone(),
                    r.assigned_hub.clone(),
                    r.device_id.clone(),
                )
            })
        };
        if registration.is_some() && key(registration) != key(self.record.registration.as_ref()) {
            self.record.registration = registration.cloned();
            self.fixed.push("registration");
        }
        self.record.registration_checked_at = Some(crate::domain::now());
    }

    /// The hubs to ask about the device: every hub the record knows an identity in, and the hub
    /// DPS assigned it to.
    fn hubs_to_ask(&self, registration: Option<&crate::domain::Registration>) -> BTreeSet<String> {
        let mut hubs: BTreeSet<String> = self.record.live.identities.keys().cloned().collect();
        if let Some(hub) = registration
            .filter(|r| r.status == "assigned")
            .and_then(|r| r.assigned_hub.clone())
        {
            hubs.insert(hub);
        }
        hubs
    }

    /// Whether the hub holds the device's identity, as the record says.
    fn identity(&mut self, hub: &str, present: bool) {
        let recorded = self
            .record
            .live
            .identities
            .get(hub)
            .is_some_and(|p| p.present);
        if present != recorded {
            self.record.live.identities.insert(
                hub.to_owned(),
                Presence {
                    present,
                    at: self.now.clone(),
                    sequence: i64::MAX,
                },
            );
            self.fixed.push("hubIdentity");
        }
    }

    /// The device's connection state on the hub, as the record says.
    fn connection(&mut self, hub: &str, on_hub: &HubDevice) {
        let connections = &self.record.live.connections;
        if connections.get(hub).map(|c| c.connected) == Some(on_hub.connected) {
            return;
        }
        // One past the last sequence seen: any later real event still wins.
        let sequence = connections
            .get(hub)
            .map_or_else(ConnectionSequence::zero, |c| c.sequence.successor());
        let at = on_hub
            .connection_state_updated
            .as_deref()
            .and_then(Stamp::parse)
            .unwrap_or_else(|| self.now.clone());
        self.record.live.connections.insert(
            hub.to_owned(),
            ConnectionState {
                connected: on_hub.connected,
                sequence,
                at,
            },
        );
        self.fixed.push("connection");
    }

    /// The device's reported properties on the hub, merged as a twin event would merge them.
    fn reported(&mut self, device_id: &str, hub: &str, on_hub: &HubDevice) {
        let twin = json!({ "properties": { "reported": Value::Object(on_hub.reported.clone()) } });
        let Some(section) = reported_section(&twin) else {
            return;
        };
        let at = on_hub
            .reported
            .get("$metadata")
            .and_then(|m| m.get("$lastUpdated"))
            .and_then(Value::as_str)
            .and_then(Stamp::parse)
            .unwrap_or_else(|| self.now.clone());
        // Only a different value is worth a repair; the section's version and time differ from
        // the per-property ones events left even when nothing is missing.
        let mut candidate = self.record.live.clone();
        candidate.apply(&observed(
            device_id,
            hub,
            at,
            Change::Twin {
                reported: Some(section),
                replaced: true,
            },
        ));
        if candidate.reported_properties() != self.record.live.reported_properties() {
            self.record.live = candidate;
            self.fixed.push("reported");
        }
    }
}
