//! What the device tells its hub about itself: the reported properties it sends on connecting,
//! the acknowledgement of desired properties, and the `GetDiagnostics` answer.

use super::{SenderConfig, Shared};
use crate::assignment::Assignment;
use crate::rotation;
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;

/// The time now, as reports carry it (RFC 3339).
pub(super) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Applies desired properties; answers the reported patch that acknowledges them.
pub(super) fn apply_desired(shared: &Shared, desired: &Map<String, Value>) -> Value {
    let version = desired.get("$version").and_then(Value::as_u64);
    let mut ack = Map::new();
    if let Some(value) = desired.get("telemetryIntervalSeconds") {
        let (status, description) = match value.as_f64() {
            Some(seconds) if (0.05..=3600.0).contains(&seconds) => {
                shared
                    .interval_ms
                    .store((seconds * 1000.0) as u64, Ordering::Relaxed);
                (200, "applied")
            }
            _ => (
                400,
                "telemetryIntervalSeconds must be a number from 0.05 to 3600",
            ),
        };
        ack.insert(
            "telemetryIntervalSeconds".into(),
            json!({ "value": value, "ac": status, "av": version, "ad": description }),
        );
    }
    if let Some(version) = version {
        ack.insert("acknowledgedDesiredVersion".into(), json!(version));
        shared.stats.desired_applied.fetch_add(1, Ordering::Relaxed);
    }
    Value::Object(ack)
}

/// What the device reports when it connects.
pub(super) fn connect_report(
    config: &SenderConfig,
    assignment: &Assignment,
    shared: &Shared,
    desired_ack: Value,
) -> Value {
    let (queued, dropped) = {
        let outbox = shared.outbox.lock().unwrap_or_else(|p| p.into_inner());
        (outbox.len(), outbox.dropped())
    };
    let mut report = json!({
        "provisioning": {
            "status": "provisioned",
            "hub": assignment.hub,
            "deviceId": assignment.device_id,
            "substatus": assignment.substatus,
            "at": assignment.assigned_at,
        },
        "deviceInfo": { "model": config.info.model, "serialNumber": config.info.serial_number },
        "firmware": config.info.firmware,
        "status": { "state": "online", "since": now() },
        "telemetry": {
            "queued": queued,
            "dropped": dropped,
            "intervalMs": shared.interval_ms.load(Ordering::Relaxed),
        },
    });
    if let Some(rotation) = rotation::completed_report(assignment) {
        // Every connection says it again: the backend retires the old key on seeing it, and a
        // report lost in a disconnection is sent by the next connection.
        report["keyRotation"] = rotation;
    }
    if let (Some(report), Value::Object(ack)) = (report.as_object_mut(), desired_ack) {
        report.extend(ack);
    }
    report
}

/// The `GetDiagnostics` answer: counters and the outbox, as the device sees them now.
pub(super) fn diagnostics(assignment: &Assignment, shared: &Shared) -> Value {
    let stats = &shared.stats;
    let (queued, dropped) = {
        let outbox = shared.outbox.lock().unwrap_or_else(|p| p.into_inner());
        (outbox.len(), outbox.dropped())
    };
    json!({
        "hub": assignment.hub,
        "deviceId": assignment.device_id,
        "uptimeSeconds": shared.started.elapsed().as_secs(),
        "accepted": stats.accepted.load(Ordering::Relaxed),
        "acknowledged": stats.acknowledged.load(Ordering::Relaxed),
        "queued": queued,
        "dropped": dropped,
        "connections": stats.connections.load(Ordering::Relaxed),
        "tokenRenewals": stats.renewals.load(Ordering::Relaxed),
        "tokenRenewalsCutShort": stats.renewals_cut_short.load(Ordering::Relaxed),
        "cloudMessages": stats.cloud_messages.load(Ordering::Relaxed),
        "intervalMs": shared.interval_ms.load(Ordering::Relaxed),
    })
}
