//! How the API's records read on screen: an enrollment or a device as `name: value` lines, lists
//! as rows with a fixed set of columns (the same for the table and CSV), and a device's history
//! as a timeline, oldest first.

use crate::error::Result;
use crate::output::{cell, fields, line, Rows};
use serde_json::Value;
use std::io::Write;

/// The customer as `id (name)`.
fn customer(record: &Value) -> String {
    match (
        record["customer"]["id"].as_str(),
        record["customer"]["name"].as_str(),
    ) {
        (Some(id), Some(name)) => format!("{id} ({name})"),
        (Some(id), None) => id.to_owned(),
        _ => String::new(),
    }
}

/// Serial, model and the other attributes on one line.
fn asset(record: &Value) -> String {
    let asset = &record["asset"];
    let mut parts = Vec::new();
    if let Some(serial) = asset["serialNumber"].as_str() {
        parts.push(format!("serial {serial}"));
    }
    if let Some(model) = asset["model"].as_str() {
        parts.push(format!("model {model}"));
    }
    if let Some(attributes) = asset["attributes"].as_object() {
        parts.extend(attributes.iter().map(|(k, v)| format!("{k}={}", cell(v))));
    }
    parts.join(", ")
}

fn connection(record: &Value) -> String {
    match (
        record["connection"]["state"].as_str(),
        record["connection"]["since"].as_str(),
    ) {
        (Some(state), Some(since)) => format!("{state} since {since}"),
        (Some(state), None) => state.to_owned(),
        _ => String::new(),
    }
}

fn object(value: &Value) -> String {
    match value.as_object() {
        Some(map) if !map.is_empty() => value.to_string(),
        _ => String::new(),
    }
}

/// An enrollment as `name: value` lines.
pub fn enrollment(out: &mut dyn Write, record: &Value) -> Result<()> {
    fields(
        out,
        &[
            ("Registration id", cell(&record["registrationId"])),
            ("Device id", cell(&record["deviceId"])),
            ("Customer", customer(record)),
            ("Asset", asset(record)),
            ("Status", cell(&record["status"])),
            ("Enabled", cell(&record["enabled"])),
            ("Pinned hub", cell(&record["iotHub"])),
            ("Assigned hub", cell(&record["registration"]["assignedHub"])),
            ("Pending change", cell(&record["pendingChange"])),
            ("Tags", object(&record["initialTwin"]["tags"])),
            (
                "Desired",
                object(&record["initialTwin"]["desiredProperties"]),
            ),
            ("Created", cell(&record["createdAt"])),
            ("Updated", cell(&record["updatedAt"])),
        ],
    )
}

/// A device record as `name: value` lines.
pub fn device(out: &mut dyn Write, record: &Value) -> Result<()> {
    let reported = &record["reported"];
    fields(
        out,
        &[
            ("Device id", cell(&record["deviceId"])),
            ("Registration id", cell(&record["registrationId"])),
            ("Customer", customer(record)),
            ("Asset", asset(record)),
            ("Status", cell(&record["status"])),
            ("Enabled", cell(&record["enabled"])),
            ("Hub", cell(&record["hub"])),
            ("Registration", registration(&record["registration"])),
            ("Connection", connection(record)),
            ("Last seen", cell(&record["lastSeen"])),
            ("Provisioning", cell(&reported["provisioningStatus"])),
            ("Reported", object(&reported["properties"])),
            ("Reported at", cell(&reported["updatedAt"])),
            ("Updated", cell(&record["updatedAt"])),
        ],
    )
}

fn registration(registration: &Value) -> String {
    let mut parts = Vec::new();
    for (name, key) in [
        ("", "status"),
        ("", "substatus"),
        ("error: ", "errorMessage"),
    ] {
        if let Some(text) = registration[key].as_str() {
            parts.push(format!("{name}{text}"));
        }
    }
    if let Some(at) = registration["observedAt"].as_str() {
        parts.push(format!("(seen {at})"));
    }
    parts.join(" ")
}

/// The columns of `dpsctl list enrollments`.
pub fn enrollment_rows(items: &[Value]) -> Rows {
    let mut rows = Rows::new(vec![
        "REGISTRATION ID",
        "DEVICE ID",
        "CUSTOMER",
        "STATUS",
        "ENABLED",
        "HUB",
        "SERIAL",
        "MODEL",
    ]);
    for item in items {
        let hub = match item["registration"]["assignedHub"].as_str() {
            Some(hub) => hub.to_owned(),
            None => cell(&item["iotHub"]),
        };
        rows.rows.push(vec![
            cell(&item["registrationId"]),
            cell(&item["deviceId"]),
            cell(&item["customer"]["id"]),
            cell(&item["status"]),
            cell(&item["enabled"]),
            hub,
            cell(&item["asset"]["serialNumber"]),
            cell(&item["asset"]["model"]),
        ]);
    }
    rows
}

/// The columns of `dpsctl list devices`.
pub fn device_rows(items: &[Value]) -> Rows {
    let mut rows = Rows::new(vec![
        "DEVICE ID",
        "REGISTRATION ID",
        "CUSTOMER",
        "STATUS",
        "HUB",
        "CONNECTION",
        "LAST SEEN",
        "PROVISIONING",
    ]);
    for item in items {
        rows.rows.push(vec![
            cell(&item["deviceId"]),
            cell(&item["registrationId"]),
            cell(&item["customer"]["id"]),
            cell(&item["status"]),
            cell(&item["hub"]),
            cell(&item["connection"]["state"]),
            cell(&item["lastSeen"]),
            cell(&item["reported"]["provisioningStatus"]),
        ]);
    }
    rows
}

/// The history, oldest first: time, what happened, where, and the detail.
pub fn timeline(out: &mut dyn Write, newest_first: &[Value]) -> Result<()> {
    if newest_first.is_empty() {
        return line(out, "  (no history)");
    }
    let mut rows = Rows::new(vec!["  WHEN", "WHAT", "HUB", "DETAIL"]);
    for entry in newest_first.iter().rev() {
        rows.rows.push(vec![
            format!("  {}", cell(&entry["at"])),
            cell(&entry["kind"]),
            cell(&entry["hub"]),
            detail(entry),
        ]);
    }
    rows.write_table(out, "")
}

/// An entry's detail: a reprovisioning's origin, the reported properties, or the rest compactly.
fn detail(entry: &Value) -> String {
    let detail = &entry["detail"];
    match entry["kind"].as_str() {
        Some("reprovisioned") if detail["from"].is_string() => {
            format!("from {}", cell(&detail["from"]))
        }
        Some("reported") if !detail["properties"].is_null() => detail["properties"].to_string(),
        _ => object(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_timeline_reads_oldest_first_with_the_hub_and_what_was_reported() {
        let history = vec![
            json!({ "at": "2030-01-01T00:02:00Z", "kind": "reported", "hub": "hub-1", "detail": { "properties": { "provisioning": "provisioned" } } }),
            json!({ "at": "2030-01-01T00:01:00Z", "kind": "connected", "hub": "hub-1" }),
            json!({ "at": "2030-01-01T00:00:00Z", "kind": "enrolled", "detail": { "customerId": "contoso" } }),
        ];
        let mut out = Vec::new();
        timeline(&mut out, &history).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].contains("enrolled") && lines[1].contains("contoso"),
            "{text}"
        );
        assert!(
            lines[2].contains("connected") && lines[2].contains("hub-1"),
            "{text}"
        );
        assert!(
            lines[3].contains(r#"{"provisioning":"provisioned"}"#),
            "{text}"
        );
    }
}
