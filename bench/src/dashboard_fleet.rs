//! The fleet the dashboard benchmark reads: devices in every state, written straight to the
//! registry's tables through the handler's own storage code, as its event functions would have
//! left them.

use crate::drive::drive;
use crate::figures::Figures;
use anyhow::Context;
use handler::domain::events::{Change, ConnectionSequence, EventKey, HubEvent, Stamp};
use handler::domain::journal::HistoryEntry;
use handler::domain::{
    Asset, Customer, CustomerId, DeviceId, DeviceRecord, DpsSync, RegistrationId,
};
use handler::storage::tables::TableRegistry;
use handler::storage::{Registry, Stored};
use iot_credentials::StorageConnectionString;
use serde_json::json;

/// Device `i` of the dashboard's fleet, as its events would have left it, with the history
/// entries they would have written: by `i % 100`, 10 enrolled only, 10 registered and never
/// connected, 5 disconnected 3 hours ago, 5 disconnected 10 minutes ago, 1 connected and
/// reporting a failure, 9 connected without a report yet, 60 connected and reporting; spread
/// over the hubs.
pub fn fleet_device(
    i: usize,
    hubs: &[String],
) -> anyhow::Result<(DeviceRecord, Vec<HistoryEntry>)> {
    let now = time::OffsetDateTime::now_utc();
    let record = enrolled(i, now)?;
    let state = i % 100;
    if state < 10 {
        return Ok((record, Vec::new()));
    }
    let mut life = Life {
        id: format!("fleet-{i:06}"),
        hub: hubs[i % hubs.len()].clone(),
        now,
        record,
        history: Vec::new(),
        sequence: 0,
    };
    life.happen(500, "registered", Change::Created { reported: None })?;
    if state < 20 {
        return Ok(life.end());
    }
    life.happen(499, "connected", Change::Connected(connection(1)?))?;
    let status = match state {
        20..=29 => {
            let gone = if state < 25 { 180 } else { 10 };
            life.happen(gone, "disconnected", Change::Disconnected(connection(2)?))?;
            return Ok(life.end());
        }
        30 => "reprovisionFailed",
        31..=39 => return Ok(life.end()),
        _ => "provisioned",
    };
    let reported = json!({ "provisioning": { "status": status }, "firmware": "1.0.0" });
    life.happen(
        498,
        "reported",
        Change::Twin {
            reported: Some((reported.as_object().cloned().unwrap_or_default(), 2)),
            replaced: false,
        },
    )?;
    Ok(life.end())
}

/// `minutes_ago` before `now`, as the handler stamps events.
fn stamp(now: time::OffsetDateTime, minutes_ago: i64) -> anyhow::Result<Stamp> {
    Stamp::parse(
        &(now - time::Duration::minutes(minutes_ago))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    )
    .context("a stamp")
}

/// A device connection sequence number as the hub writes it (64 hex digits).
fn connection(n: u8) -> anyhow::Result<ConnectionSequence> {
    ConnectionSequence::parse(&format!("{n:064X}")).context("a sequence")
}

/// Device `i` as enrolled, before any event: `fleet-{i}`, one of 50 customers.
fn enrolled(i: usize, now: time::OffsetDateTime) -> anyhow::Result<DeviceRecord> {
    let id = format!("fleet-{i:06}");
    Ok(DeviceRecord {
        registration_id: RegistrationId::parse(&id)?,
        device_id: DeviceId::parse(&id)?,
        customer: Customer {
            id: CustomerId::parse(&format!("customer-{}", i % 50))?,
            name: Some(format!("Customer {}", i % 50)),
        },
        asset: Asset {
            serial_number: Some(format!("SN{i}")),
            model: Some("B-1".into()),
            attributes: Default::default(),
        },
        initial_twin: Default::default(),
        enabled: true,
        iot_hub: None,
        sync: DpsSync::Complete,
        registration: None,
        registration_checked_at: None,
        live: Default::default(),
        key_slot: Default::default(),
        key_rotation: None,
        last_key_rotation: None,
        created_at: stamp(now, 600)?.to_string(),
        updated_at: stamp(now, 1)?.to_string(),
    })
}

/// A device's events replayed onto its record, each leaving its history entry.
struct Life {
    id: String,
    hub: String,
    now: time::OffsetDateTime,
    record: DeviceRecord,
    history: Vec<HistoryEntry>,
    sequence: i64,
}

impl Life {
    /// The event `change`, `minutes_ago`, applied as the event functions apply it.
    fn happen(&mut self, minutes_ago: i64, kind: &str, change: Change) -> anyhow::Result<()> {
        self.sequence += 1;
        let at = stamp(self.now, minutes_ago)?;
        self.record.live.apply(&HubEvent {
            key: EventKey {
                stream: "bench".into(),
                partition: "0".into(),
                sequence: self.sequence,
            },
            device_id: self.id.clone(),
            hub: self.hub.clone(),
            at: at.clone(),
            enqueued: at.clone(),
            change,
        });
        self.history.push(HistoryEntry {
            at,
            kind: kind.into(),
            hub: Some(self.hub.clone()),
            detail: None,
            cause: format!("bench~{}", self.sequence),
        });
        Ok(())
    }

    fn end(self) -> (DeviceRecord, Vec<HistoryEntry>) {
        (self.record, self.history)
    }
}

/// Writes the dashboard's fleet under table prefix `prefix`, as the handler's own writes would
/// have: each record with its index rows, then its history in the record's transaction.
/// Answers how long the writes took and how many failed.
pub async fn write_fleet(
    storage: &StorageConnectionString,
    hubs: &[String],
    prefix: &str,
    devices: usize,
) -> anyhow::Result<Figures> {
    let registry = TableRegistry::new(storage, prefix, handler::storage::tables::http_client());
    registry
        .ensure_tables()
        .await
        .map_err(|e| anyhow::anyhow!("the fleet's tables: {e}"))?;
    anyhow::ensure!(!hubs.is_empty(), "the emulator has no hubs");
    Ok(drive(32, devices, None, |i| {
        let device = fleet_device(i, hubs);
        let registry = &registry;
        async move {
            let Ok((record, history)) = device else {
                return false;
            };
            let Ok(etag) = registry.insert(&record).await else {
                return false;
            };
            history.is_empty()
                || registry
                    .replace_with_history(
                        &Stored {
                            record: record.clone(),
                            etag,
                        },
                        &record,
                        &history,
                    )
                    .await
                    .is_ok()
        }
    })
    .await)
}
