//! The JSON the API answers with. Records are shown in two views: the enrollment (what the CRM
//! manages) and the device (what the backend asks about). Neither ever holds a key.

use crate::domain::{DeviceRecord, DpsSync};
use crate::service::import::{Outcome, RowResult};
use crate::storage::{Page, Stored};
use serde_json::{json, Value};

/// Where the device's key stands: the slot it holds, a rotation in progress, the last one done.
fn key_rotation(record: &DeviceRecord) -> Value {
    json!({
        "slot": record.key_slot.as_str(),
        "pending": record.key_rotation.as_ref().map(|r| json!({
            "id": r.id,
            "step": r.step.as_str(),
            "slot": r.slot.as_str(),
            "requestedAt": r.requested_at,
            "updatedAt": r.updated_at,
            "deliveries": r.deliveries,
            "lastError": r.last_error,
        })),
        "last": record.last_key_rotation.as_ref().map(|r| json!({
            "id": r.id,
            "slot": r.slot.as_str(),
            "completedAt": r.completed_at,
        })),
    })
}

fn pending_change(record: &DeviceRecord) -> Value {
    match record.sync {
        DpsSync::Complete => Value::Null,
        DpsSync::PendingCreate => json!("create"),
        DpsSync::PendingUpdate => json!("update"),
        DpsSync::PendingDelete => json!("delete"),
    }
}

/// An enrollment.
pub fn enrollment(stored: &Stored) -> Value {
    let r = &stored.record;
    json!({
        "registrationId": r.registration_id,
        "deviceId": r.device_id,
        "customer": r.customer,
        "asset": r.asset,
        "initialTwin": r.initial_twin,
        "enabled": r.enabled,
        "iotHub": r.iot_hub,
        "status": r.status().as_str(),
        "pendingChange": pending_change(r),
        "registration": r.registration,
        "key": key_rotation(r),
        "createdAt": r.created_at,
        "updatedAt": r.updated_at,
        "etag": stored.etag,
    })
}

/// A device.
pub fn device(stored: &Stored) -> Value {
    let r = &stored.record;
    json!({
        "deviceId": r.device_id,
        "registrationId": r.registration_id,
        "customer": r.customer,
        "asset": r.asset,
        "status": r.status().as_str(),
        "enabled": r.enabled,
        "hub": r.assigned_hub(),
        "registration": r.registration,
        "connection": r.connection().map(|c| json!({
            "state": if c.connected { "connected" } else { "disconnected" },
            "since": c.at,
        })),
        "lastSeen": r.live.last_seen,
        "reported": reported(r),
        "key": key_rotation(r),
        "updatedAt": r.updated_at,
        "etag": stored.etag,
    })
}

/// The kept reported properties, with the newest change among them (how fresh they are).
fn reported(r: &DeviceRecord) -> Value {
    if r.live.reported.is_empty() {
        return Value::Null;
    }
    let newest = r.live.reported.values().max_by(|a, b| a.at.cmp(&b.at));
    let mut view = json!({
        "provisioningStatus": r.live.reported_status(),
        "properties": r.live.reported_properties(),
        "version": newest.map(|v| v.version),
        "updatedAt": newest.map(|v| &v.at),
    });
    let truncated = r.live.truncated();
    if !truncated.is_empty() {
        view["truncated"] = Value::Object(truncated);
    }
    view
}

/// A page of either view.
pub fn page(page: &Page, view: fn(&Stored) -> Value) -> Value {
    json!({
        "items": page.items.iter().map(view).collect::<Vec<_>>(),
        "continuationToken": page.continuation,
    })
}

/// An import's results, with counts first so a script need not count.
pub fn import(results: &[RowResult]) -> Value {
    let count = |outcome: Outcome| results.iter().filter(|r| r.outcome == outcome).count();
    json!({
        "summary": {
            "rows": results.len(),
            "created": count(Outcome::Created),
            "exists": count(Outcome::Exists),
            "invalid": count(Outcome::Invalid),
            "failed": count(Outcome::Failed),
        },
        // `{row, registrationId, result, message}`, as enrollment-input defines it for dpsctl too.
        "results": results,
    })
}
