//! Recording IoT Hub's events: each batch is grouped by device; a device's events are merged
//! into its record in one etag-guarded write (re-read and re-merged if another writer got there
//! first), its history entries go in one transaction, and a change of its provisioning status
//! queues a notification. Merging is order- and repeat-independent (`domain::live`), so the
//! host may deliver a batch twice or batches in any order.

use super::{Service, ServiceError};
use crate::domain::events::{Change, HubEvent, Stamp};
use crate::domain::journal::{DeadLetter, HistoryEntry, Notification};
use crate::domain::{DeviceRecord, Status};
use crate::storage::StoreError;
use futures_util::stream::{self, StreamExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Devices of one batch written at once.
const DEVICE_CONCURRENCY: usize = 16;
/// Attempts at a record's etag-guarded write before the batch fails (and is redelivered).
const WRITE_ATTEMPTS: usize = 8;

/// What a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Events received.
    pub events: usize,
    /// Devices whose records changed.
    pub changed: usize,
    /// Events for devices the registry does not know (not enrolled through it, or deleted).
    pub unknown: usize,
    /// Events set aside as malformed.
    pub dead_lettered: usize,
    /// Notifications queued.
    pub notified: usize,
}

/// What one device's events did.
enum Outcome {
    Unknown,
    Unchanged,
    Changed { notified: bool },
}

/// The provisioning status a notification reports: the registry's status and what the device
/// last reported.
fn provisioning_status(record: &DeviceRecord) -> (Status, Option<String>) {
    (
        record.status(),
        record.live.reported_status().map(str::to_owned),
    )
}

/// History entries for a device's events, read against the record as each is applied (so a
/// registration on a second hub reads as re-provisioning).
fn timeline(record: &DeviceRecord, events: &[HubEvent]) -> Vec<HistoryEntry> {
    let mut ordered: Vec<&HubEvent> = events.iter().collect();
    ordered.sort_by(|a, b| (&a.at, &a.key).cmp(&(&b.at, &b.key)));
    let mut live = record.live.clone();
    let mut entries = Vec::new();
    for event in ordered {
        let previous_hub = live.current_hub().map(str::to_owned);
        let entry = |kind: &str, detail: Option<serde_json::Value>| HistoryEntry {
            at: event.at.clone(),
            kind: kind.to_owned(),
            hub: Some(event.hub.clone()),
            detail,
            cause: event.key.to_string(),
        };
        match &event.change {
            Change::Created { .. } => match previous_hub.filter(|h| *h != event.hub) {
                Some(from) => entries.push(entry("reprovisioned", Some(json!({ "from": from })))),
                None => entries.push(entry("registered", None)),
            },
            Change::Deleted => entries.push(entry("removedFromHub", None)),
            Change::Connected(_) => entries.push(entry("connected", None)),
            Change::Disconnected(_) => entries.push(entry("disconnected", None)),
            Change::Twin {
                reported: Some((values, version)),
                ..
            } if !values.is_empty() => {
                let mut detail = json!({ "version": version, "properties": values });
                if let Some(status) = values.get("provisioning").and_then(|p| p.get("status")) {
                    detail["provisioningStatus"] = status.clone();
                }
                entries.push(entry("reported", Some(detail)));
            }
            Change::Twin { .. } | Change::Telemetry => {}
        }
        live.apply(event);
    }
    entries
}

impl Service {
    /// Records one batch of events (malformed ones go to the dead-letter table). An error means
    /// nothing is known to be lost but the batch must be delivered again.
    pub async fn record_events(
        &self,
        function: &str,
        events: Vec<HubEvent>,
        malformed: Vec<DeadLetter>,
    ) -> Result<BatchReport, ServiceError> {
        let mut report = BatchReport {
            events: events.len() + malformed.len(),
            dead_lettered: malformed.len(),
            ..BatchReport::default()
        };
        for letter in &malformed {
            tracing::warn!(function, event = %letter.key, reason = %letter.reason, "an event was set aside as malformed");
            self.journal.dead_letter(letter).await?;
        }
        let mut by_device: BTreeMap<String, Vec<HubEvent>> = BTreeMap::new();
        for event in events {
            by_device
                .entry(event.device_id.clone())
                .or_default()
                .push(event);
        }
        let outcomes: Vec<(usize, Result<Outcome, ServiceError>)> = stream::iter(by_device)
            .map(|(device_id, events)| async move {
                (events.len(), self.record_device(&device_id, &events).await)
            })
            .buffer_unordered(DEVICE_CONCURRENCY)
            .collect()
            .await;
        let mut first_error = None;
        for (count, outcome) in outcomes {
            match outcome {
                Ok(Outcome::Unknown) => report.unknown += count,
                Ok(Outcome::Unchanged) => {}
                Ok(Outcome::Changed { notified }) => {
                    report.changed += 1;
                    report.notified += usize::from(notified);
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        if report.notified > 0 {
            self.notifier.wake();
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }

    async fn record_device(
        &self,
        device_id: &str,
        events: &[HubEvent],
    ) -> Result<Outcome, ServiceError> {
        let mut history_written = false;
        for _ in 0..WRITE_ATTEMPTS {
            let Some(stored) = self.store.get_by_device(device_id).await? else {
                return Ok(Outcome::Unknown);
            };
            if !history_written {
                let entries = timeline(&stored.record, events);
                if !entries.is_empty() {
                    self.journal.add_history(device_id, &entries).await?;
                }
                history_written = true;
            }
            let mut record = stored.record.clone();
            let mut changed = false;
            for event in events {
                changed |= record.live.apply(event);
            }
            if !changed {
                return Ok(Outcome::Unchanged);
            }
            let before = provisioning_status(&stored.record);
            let after = provisioning_status(&record);
            let mut notified = false;
            if before != after && self.notifier.enabled() {
                // Queued before the record is written: if the write fails, the redelivered
                // batch makes the same change and queues the same id again, which is a no-op.
                let cause = events
                    .iter()
                    .map(|e| e.key.to_string())
                    .max()
                    .unwrap_or_default();
                self.journal
                    .enqueue(&status_notification(&record, &before, &after, &cause))
                    .await?;
                notified = true;
            }
            record.updated_at = crate::domain::now();
            match self.store.replace(&stored, &record).await {
                Ok(_) => return Ok(Outcome::Changed { notified }),
                Err(StoreError::PreconditionFailed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Unavailable {
            service: super::Upstream::Storage,
            detail: format!(
                "the record of {device_id} kept changing during {WRITE_ATTEMPTS} attempts"
            ),
        })
    }

    /// Adds an entry made by the API (enrolled, deleted) to a device's history. Failures are
    /// logged, not returned: the history must not make the request itself fail.
    pub(super) async fn note(
        &self,
        device_id: &str,
        kind: &str,
        detail: Option<serde_json::Value>,
    ) {
        let entry = HistoryEntry {
            at: Stamp::now(),
            kind: kind.to_owned(),
            hub: None,
            detail,
            cause: format!("api~{}", uuid::Uuid::new_v4().simple()),
        };
        if let Err(error) = self.journal.add_history(device_id, &[entry]).await {
            tracing::warn!(device.id = %device_id, %error, "a history entry could not be written");
        }
    }

    /// `GET /api/devices/{deviceId}/history`: newest first. Answers entries even for a device
    /// that has since been deleted; `NotFound` only when there is neither history nor record.
    pub async fn history(
        &self,
        device_id: &str,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<(Vec<HistoryEntry>, Option<String>), ServiceError> {
        let (entries, next) = self
            .journal
            .history(device_id, page_size, continuation)
            .await?;
        if entries.is_empty()
            && continuation.is_none()
            && self.store.get_by_device(device_id).await?.is_none()
        {
            return Err(ServiceError::NotFound(format!(
                "no device {device_id:?} in the registry"
            )));
        }
        Ok((entries, next))
    }
}

/// The notification of a status change. Its id is a digest of the device, the new status and
/// the event that caused it, so recording the same events again gives the same id.
fn status_notification(
    record: &DeviceRecord,
    before: &(Status, Option<String>),
    after: &(Status, Option<String>),
    cause: &str,
) -> Notification {
    let digest = Sha256::digest(format!(
        "{}|{}|{}|{cause}",
        record.device_id,
        after.0.as_str(),
        after.1.as_deref().unwrap_or("")
    ));
    let id: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let document = json!({
        "id": id,
        "type": "deviceProvisioningStatusChanged",
        "deviceId": record.device_id,
        "registrationId": record.registration_id,
        "customerId": record.customer.id,
        "status": after.0.as_str(),
        "previousStatus": before.0.as_str(),
        "reportedStatus": after.1,
        "previousReportedStatus": before.1,
        "hub": record.assigned_hub(),
        "at": crate::domain::now(),
    });
    Notification {
        id,
        document,
        attempts: 0,
        next_attempt_ms: 0,
    }
}

#[cfg(test)]
mod tests;
