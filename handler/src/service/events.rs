//! Recording IoT Hub's events: each batch is grouped by device; a device's events are merged
//! into its record in one etag-guarded write (re-read and re-merged if another writer got there
//! first), its history entries go in one transaction, and a change of its provisioning status
//! queues a notification. Merging is order- and repeat-independent (`domain::hub_report`), so the
//! host may deliver a batch twice or batches in any order.

use super::notify::now_ms;
use super::{Service, ServiceError};
use crate::domain::bounded;
use crate::domain::events::{Change, HubEvent, Stamp};
use crate::domain::journal::{DeadLetter, HistoryEntry, Notification};
use crate::domain::{DeviceRecord, Status};
use crate::storage::StoreError;
use crate::storage::Stored;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::Instrument;

/// Records kept in memory between batches, so that events that change nothing (most telemetry)
/// cost no storage call. Safe with several instances: merging only ever adds, so an event that
/// changes nothing in an older copy changes nothing in a newer one either; a write from a stale
/// copy is refused by its etag and retried from storage. Entries expire so that a record deleted
/// and enrolled again is read afresh; when full, the least used entries go first (moka's
/// TinyLFU), so a busy fleet keeps its active devices cached.
pub struct RecordCache {
    entries: moka::sync::Cache<String, Stored>,
}

/// How long a cached record is trusted.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Records kept (about 2 KiB each).
const CACHE_CAPACITY: u64 = 50_000;

impl Default for RecordCache {
    fn default() -> Self {
        RecordCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(CACHE_TTL)
                .build(),
        }
    }
}

impl RecordCache {
    fn get(&self, device_id: &str) -> Option<Stored> {
        self.entries.get(device_id)
    }

    fn put(&self, device_id: &str, stored: Stored) {
        self.entries.insert(device_id.to_owned(), stored);
    }

    /// Drops a device's copy (its record was written elsewhere).
    pub(super) fn forget(&self, device_id: &str) {
        self.entries.invalidate(device_id);
    }
}

/// Devices of one batch written at once.
const DEVICE_CONCURRENCY: usize = 16;
/// Attempts at a record's etag-guarded write before the batch fails (and is redelivered): for
/// writers racing on one record, never for a write storage refuses (see
/// [`Service::record_device_or_set_aside`]).
const WRITE_ATTEMPTS: usize = 8;
/// How long a status notification queued with a record write is held back until the write is
/// known to have succeeded (longer than any write takes).
const HOLD_MS: i64 = 60_000;

/// What a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Events received.
    pub events: usize,
    /// Devices whose records changed.
    pub changed: usize,
    /// Events for devices the registry does not know (not enrolled through it, or deleted).
    pub unknown: usize,
    /// Events set aside: malformed, or refused by storage for what they are.
    pub dead_lettered: usize,
    /// Notifications queued.
    pub notified: usize,
}

/// What one device's events did.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Unknown,
    Unchanged,
    Changed { notified: bool },
}

impl Outcome {
    /// What two parts of a device's events did together.
    fn or(self, other: Outcome) -> Outcome {
        match (self, other) {
            (Outcome::Changed { notified: a }, Outcome::Changed { notified: b }) => {
                Outcome::Changed { notified: a || b }
            }
            (changed @ Outcome::Changed { .. }, _) | (_, changed @ Outcome::Changed { .. }) => {
                changed
            }
            (Outcome::Unknown, _) | (_, Outcome::Unknown) => Outcome::Unknown,
            _ => Outcome::Unchanged,
        }
    }
}

/// A device's events recorded, and those set aside as never recordable.
struct Recorded {
    outcome: Outcome,
    set_aside: Vec<DeadLetter>,
}

/// A record's status and the provisioning status its device reported.
type ProvisioningStatus = (Status, Option<String>);

/// The provisioning status a notification reports: the registry's status and what the device
/// last reported.
fn provisioning_status(record: &DeviceRecord) -> ProvisioningStatus {
    (
        record.status(),
        record.live.reported_status().map(str::to_owned),
    )
}

/// Whether `event` reports a twin version other than the one the record keeps for its
/// properties: a report that is not a repeat, though it may be older than what is kept.
fn superseded_report(live: &crate::domain::hub_report::HubReport, event: &HubEvent) -> bool {
    let Change::Twin {
        reported: Some((values, version)),
        ..
    } = &event.change
    else {
        return false;
    };
    values.keys().any(|key| {
        live.reported
            .get(key)
            .is_some_and(|known| known.version != *version)
    })
}

/// History entries for the events that change a device's record, each read against the record
/// as the events before it left it (so a registration on a second hub reads as re-provisioning).
fn timeline(record: &DeviceRecord, events: &[HubEvent]) -> Vec<HistoryEntry> {
    let mut ordered: Vec<&HubEvent> = events.iter().collect();
    ordered.sort_by(|a, b| (&a.at, &a.key).cmp(&(&b.at, &b.key)));
    let mut live = record.live.clone();
    let mut entries = Vec::new();
    for event in ordered {
        // The hub the device was on before: the other hub whose identity changed last, whether
        // or not its removal has been recorded yet (streams of different hubs arrive in any
        // order, and DPS may remove the old identity before or after creating the new one).
        let previous_hub = live
            .identities
            .iter()
            .filter(|(hub, _)| **hub != event.hub)
            .max_by(|a, b| (&a.1.at, a.1.sequence).cmp(&(&b.1.at, b.1.sequence)))
            .map(|(hub, _)| hub.clone());
        // What changes the record makes history, and so does a report that arrives after a
        // newer one (streams are not ordered per device): it happened, though the record keeps
        // the newer value. A repeat makes none; history rows are keyed by their cause anyway.
        let late_report = superseded_report(&live, event);
        if !live.apply(event) && !late_report {
            continue;
        }
        let entry = |kind: &str, detail: Option<serde_json::Value>| HistoryEntry {
            at: event.at.clone(),
            kind: kind.to_owned(),
            hub: Some(event.hub.clone()),
            detail,
            cause: event.key.to_string(),
        };
        match &event.change {
            Change::Created { .. } => match previous_hub {
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
                entries.push(entry("reported", Some(report_detail(values, *version))))
            }
            Change::Twin { .. } | Change::Telemetry => {}
        }
    }
    entries
}

/// What a history entry keeps of a report: the kept properties cut as the record cuts them
/// (`domain::bounded`), and which were cut, with the size the device reported.
fn report_detail(values: &Map<String, Value>, version: u64) -> Value {
    let mut properties = Map::new();
    let mut truncated = Map::new();
    for (key, value) in values {
        let (kept, original) = bounded::reported(value);
        if let Some(size) = original {
            truncated.insert(key.clone(), Value::from(size));
        }
        properties.insert(key.clone(), kept);
    }
    let mut detail = json!({ "version": version });
    if let Some(status) = properties.get("provisioning").and_then(|p| p.get("status")) {
        detail["provisioningStatus"] = status.clone();
    }
    detail["properties"] = Value::Object(properties);
    if !truncated.is_empty() {
        detail["truncated"] = Value::Object(truncated);
    }
    detail
}

/// A dead letter's account of an event the registry could not record: where it sits, what it
/// is, and the kept properties it reported, cut as a record cuts them.
fn dead_letter_of(function: &str, event: &HubEvent, reason: &str) -> DeadLetter {
    let (kind, reported) = match &event.change {
        Change::Created { reported } => ("createDeviceIdentity", reported.as_ref()),
        Change::Deleted => ("deleteDeviceIdentity", None),
        Change::Twin { reported, .. } => ("updateTwin", reported.as_ref()),
        Change::Connected(_) => ("deviceConnected", None),
        Change::Disconnected(_) => ("deviceDisconnected", None),
        Change::Telemetry => ("telemetry", None),
    };
    let mut described = json!({
        "deviceId": event.device_id,
        "hub": event.hub,
        "kind": kind,
        "at": event.at,
        "enqueuedAt": event.enqueued,
    });
    if let Some((values, version)) = reported {
        described["reported"] = report_detail(values, *version);
    }
    DeadLetter {
        function: function.to_owned(),
        key: event.key.to_string(),
        device_id: Some(event.device_id.clone()),
        reason: reason.to_owned(),
        event: described.to_string(),
        at: Stamp::now(),
    }
}

/// Whether an error from recording a device's events will come back however often they are
/// delivered: storage refused the write (or cannot read the record) for what it is.
fn is_permanent(error: &ServiceError) -> bool {
    matches!(
        error,
        ServiceError::BadGateway {
            service: super::Upstream::Storage,
            ..
        }
    )
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
            tracing::warn!(
                function,
                event = %letter.key,
                reason = %letter.reason,
                "an event was set aside as malformed"
            );
            self.set_aside(function, letter).await?;
        }
        let mut by_device: BTreeMap<String, Vec<HubEvent>> = BTreeMap::new();
        for event in events {
            by_device
                .entry(event.device_id.clone())
                .or_default()
                .push(event);
        }
        let outcomes: Vec<(usize, Result<Recorded, ServiceError>)> = stream::iter(by_device)
            .map(|(device_id, events)| {
                let span = tracing::info_span!("device", device.id = %device_id);
                async move {
                    let recorded = self
                        .record_device_or_set_aside(function, &device_id, &events)
                        .await;
                    tracing::debug!(
                        events = events.len(),
                        recorded = recorded.is_ok(),
                        "applied a device's events"
                    );
                    (events.len(), recorded)
                }
                .instrument(span)
            })
            .buffer_unordered(DEVICE_CONCURRENCY)
            .collect()
            .await;
        let mut first_error = None;
        for (count, outcome) in outcomes {
            match outcome {
                Ok(Recorded { outcome, set_aside }) => {
                    for letter in &set_aside {
                        if let Err(error) = self.set_aside(function, letter).await {
                            first_error.get_or_insert(error);
                        }
                    }
                    report.dead_lettered += set_aside.len();
                    match outcome {
                        Outcome::Unknown => report.unknown += count,
                        Outcome::Unchanged => {}
                        Outcome::Changed { notified } => {
                            report.changed += 1;
                            report.notified += usize::from(notified);
                        }
                    }
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

    /// Writes a dead letter. A transient failure fails the batch (it comes again, and so does
    /// the letter); a letter refused for what it is is logged and dropped, since failing the
    /// batch for it would stall the partition as surely as the event it describes.
    async fn set_aside(&self, function: &str, letter: &DeadLetter) -> Result<(), ServiceError> {
        match self.dead_letters.dead_letter(letter).await {
            Ok(()) => Ok(()),
            Err(error) if error.is_permanent() => {
                tracing::error!(
                    function,
                    event = %letter.key,
                    reason = %letter.reason,
                    %error,
                    "an event set aside could not be kept in the dead-letter table; it is dropped"
                );
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Records a device's events; if storage refuses them for what they are, tries each event on
    /// its own (so one poison event does not take the device's others with it) and sets aside
    /// those refused alone, with the reason. Bounded: one attempt for the events together, one
    /// per event; transient failures fail the batch instead (it is delivered again).
    async fn record_device_or_set_aside(
        &self,
        function: &str,
        device_id: &str,
        events: &[HubEvent],
    ) -> Result<Recorded, ServiceError> {
        let first = match self.record_device(device_id, events).await {
            Ok(outcome) => {
                return Ok(Recorded {
                    outcome,
                    set_aside: Vec::new(),
                })
            }
            Err(error) if is_permanent(&error) => error,
            Err(error) => return Err(error),
        };
        let mut recorded = Recorded {
            outcome: Outcome::Unchanged,
            set_aside: Vec::new(),
        };
        for event in events {
            let alone = if events.len() == 1 {
                Err(first.clone())
            } else {
                self.record_device(device_id, std::slice::from_ref(event))
                    .await
            };
            match alone {
                Ok(outcome) => recorded.outcome = recorded.outcome.or(outcome),
                Err(error) if is_permanent(&error) => {
                    let detail = match &error {
                        ServiceError::BadGateway { detail, .. } => detail.clone(),
                        other => other.to_string(),
                    };
                    let reason = if detail.contains("unreadable") {
                        format!("the device's stored record cannot be read ({detail}); retrying cannot help")
                    } else {
                        format!("Table Storage refuses the device's record with this event applied ({detail}); retrying cannot help")
                    };
                    tracing::warn!(
                        function,
                        device.id = %device_id,
                        event = %event.key,
                        %reason,
                        "an event that cannot be recorded was set aside"
                    );
                    recorded
                        .set_aside
                        .push(dead_letter_of(function, event, &reason));
                }
                Err(error) => return Err(error),
            }
        }
        Ok(recorded)
    }

    async fn record_device(
        &self,
        device_id: &str,
        events: &[HubEvent],
    ) -> Result<Outcome, ServiceError> {
        let mut cached = self.events_cache.get(device_id);
        for _ in 0..WRITE_ATTEMPTS {
            let (stored, from_cache) = match cached.take() {
                Some(stored) => (stored, true),
                None => match self.store.get_by_device(device_id).await? {
                    Some(stored) => (stored, false),
                    None => return Ok(Outcome::Unknown),
                },
            };
            let mut record = stored.record.clone();
            let mut changed = false;
            for event in events {
                changed |= record.live.apply(event);
            }
            if !changed {
                // Late reports still belong in the history, which alone they change.
                let entries = timeline(&stored.record, events);
                if !entries.is_empty() {
                    self.store.add_history(device_id, &entries).await?;
                }
                self.events_cache.put(device_id, stored);
                return Ok(Outcome::Unchanged);
            }
            let before = provisioning_status(&stored.record);
            let after = provisioning_status(&record);
            if before != after && from_cache {
                // A notification must describe the stored record, not a copy that may be stale
                // (status changes are rare; one more read is cheap).
                continue;
            }
            let held = if before != after {
                self.hold_notification(&record, &before, &after, events)
                    .await?
            } else {
                None
            };
            record.updated_at = crate::domain::now();
            if !record.fit_storage() {
                tracing::warn!(
                    device.id = %device_id,
                    "a record is beyond Table Storage's limits even without its reported properties"
                );
            }
            let entries = timeline(&stored.record, events);
            let written = self
                .store
                .replace_with_history(&stored, &record, &entries)
                .await;
            if let (Some(notification), Err(StoreError::PreconditionFailed)) = (&held, &written) {
                self.outbox.delivered(&notification.id).await?;
            }
            match written {
                Ok(etag) => {
                    let notified = held.is_some();
                    self.after_write(Stored { record, etag }, events, held)
                        .await;
                    return Ok(Outcome::Changed { notified });
                }
                // Changed elsewhere (or the cached copy was stale, or the record is gone): read
                // it again.
                Err(StoreError::PreconditionFailed) => self.events_cache.forget(device_id),
                Err(e) => {
                    self.events_cache.forget(device_id);
                    return Err(e.into());
                }
            }
        }
        Err(ServiceError::Unavailable {
            service: super::Upstream::Storage,
            detail: format!(
                "the record of {device_id} kept changing during {WRITE_ATTEMPTS} attempts"
            ),
        })
    }

    /// Queues the notification of a status change before the record is written, held back
    /// until the write succeeds: a write that loses to a concurrent one (another partition's
    /// events for the same device) withdraws it, and the retry queues what the record really
    /// went through. A crash between the two leaves it held only for HOLD_MS, so a change is
    /// never left unannounced; the redelivered batch makes the same change and queues the same
    /// id again, which is a no-op. `None` when no webhook is set.
    async fn hold_notification(
        &self,
        record: &DeviceRecord,
        before: &ProvisioningStatus,
        after: &ProvisioningStatus,
        events: &[HubEvent],
    ) -> Result<Option<Notification>, ServiceError> {
        if !self.notifier.enabled() {
            return Ok(None);
        }
        let cause = events
            .iter()
            .map(|e| e.key.to_string())
            .max()
            .unwrap_or_default();
        let mut notification = status_notification(record, before, after, &cause);
        notification.next_attempt_ms = now_ms().saturating_add(HOLD_MS);
        self.outbox.enqueue(&notification).await?;
        Ok(Some(notification))
    }

    /// What follows a successful write of a device's record: a key rotation waiting on these
    /// events is moved on, the record is cached, and a held notification is released.
    async fn after_write(&self, stored: Stored, events: &[HubEvent], held: Option<Notification>) {
        // A key rotation waits on events: the device connecting (to hand it the key) or
        // reporting the rotation done (to retire the old key).
        let connected_now = stored.record.connection().is_some_and(|c| c.connected)
            && events
                .iter()
                .any(|e| matches!(e.change, Change::Connected(_)));
        self.follow_up_rotation(&stored.record, connected_now);
        let device_id = stored.record.device_id.to_string();
        self.events_cache.put(&device_id, stored);
        if let Some(mut notification) = held {
            // Due from now: passes send in order of this time, so a device's changes go out in
            // the order they were recorded.
            notification.next_attempt_ms = now_ms();
            if let Err(error) = self.outbox.reschedule(&notification).await {
                tracing::warn!(
                    notification.id = %notification.id,
                    %error,
                    "a status notification stays held until its hold ends"
                );
            }
        }
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
        if let Err(error) = self.store.add_history(device_id, &[entry]).await {
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
            .store
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
    before: &ProvisioningStatus,
    after: &ProvisioningStatus,
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
