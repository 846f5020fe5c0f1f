//! What IoT Hub's events tell about a device, merged so that order and repetition do not matter:
//! every field keeps the value of the newest event by an order that every event carries (the
//! operation time and stream position for identities, the connection sequence number for
//! connections, the operation time and twin version for reported properties, the enqueued time
//! for last-seen). Applying a set of events in any order, any number of times, gives one result.

use super::events::{Change, ConnectionSequence, HubEvent, Stamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Whether the device has an identity on a hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    /// Created (true) or deleted (false).
    pub present: bool,
    /// When.
    pub at: Stamp,
    /// Position in the stream, to order events of the same instant.
    #[serde(default)]
    pub sequence: i64,
}

/// The device's connection to one hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionState {
    /// Connected or not.
    pub connected: bool,
    /// The event's sequence number (the order of connection events).
    pub sequence: ConnectionSequence,
    /// When the hub reported it.
    pub at: Stamp,
}

/// One kept reported property, with what orders it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedValue {
    /// The value (`null`: removed).
    pub value: Value,
    /// The reported version it came with.
    pub version: u64,
    /// When it changed.
    pub at: Stamp,
    /// On which hub.
    pub hub: String,
    /// Set when the device reported more than a record keeps of one property: the size it
    /// reported (bytes of JSON); `value` is then a cut of it (`super::bounded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated_from: Option<usize>,
}

impl ReportedValue {
    fn order(&self) -> (&Stamp, u64, &str) {
        (&self.at, self.version, &self.hub)
    }
}

/// What IoT Hub reports about a device, merged from its events (kept in the record as `live`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubReport {
    /// Identity per hub (host name).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub identities: BTreeMap<String, Presence>,
    /// Connection per hub.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub connections: BTreeMap<String, ConnectionState>,
    /// Kept reported properties.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reported: BTreeMap<String, ReportedValue>,
    /// The minute of the newest event of any kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Stamp>,
}

impl HubReport {
    /// Whether events have told anything yet.
    pub fn is_empty(&self) -> bool {
        *self == HubReport::default()
    }

    /// Applies one event; true if anything changed.
    pub fn apply(&mut self, event: &HubEvent) -> bool {
        let before = self.clone();
        // To the minute: enough to tell a live device from a silent one, and a busy device's
        // telemetry then changes its record once a minute rather than with every batch.
        let seen = event.enqueued.floor_minute();
        if self.last_seen.as_ref().is_none_or(|known| seen > *known) {
            self.last_seen = Some(seen);
        }
        match &event.change {
            Change::Created { reported } => {
                self.presence(event, true);
                if let Some((values, version)) = reported {
                    self.report(event, values, *version, true);
                }
            }
            Change::Deleted => self.presence(event, false),
            Change::Twin {
                reported: Some((values, version)),
                replaced,
            } => self.report(event, values, *version, *replaced),
            Change::Twin { reported: None, .. } | Change::Telemetry => {}
            Change::Connected(sequence) => self.connection(event, true, sequence),
            Change::Disconnected(sequence) => self.connection(event, false, sequence),
        }
        *self != before
    }

    fn presence(&mut self, event: &HubEvent, present: bool) {
        let newer = self
            .identities
            .get(&event.hub)
            .is_none_or(|known| (&event.at, event.key.sequence) > (&known.at, known.sequence));
        if newer {
            self.identities.insert(
                event.hub.clone(),
                Presence {
                    present,
                    at: event.at.clone(),
                    sequence: event.key.sequence,
                },
            );
        }
    }

    fn connection(&mut self, event: &HubEvent, connected: bool, sequence: &ConnectionSequence) {
        let newer = self
            .connections
            .get(&event.hub)
            .is_none_or(|known| *sequence > known.sequence);
        if newer {
            self.connections.insert(
                event.hub.clone(),
                ConnectionState {
                    connected,
                    sequence: sequence.clone(),
                    at: event.at.clone(),
                },
            );
        }
    }

    fn report(
        &mut self,
        event: &HubEvent,
        values: &Map<String, Value>,
        version: u64,
        replaced: bool,
    ) {
        let keys: Vec<&str> = if replaced {
            super::events::KEPT_REPORTED.to_vec()
        } else {
            values.keys().map(String::as_str).collect()
        };
        for key in keys {
            let (value, truncated_from) =
                super::bounded::reported(values.get(key).unwrap_or(&Value::Null));
            let candidate = ReportedValue {
                value,
                version,
                at: event.at.clone(),
                hub: event.hub.clone(),
                truncated_from,
            };
            let newer = self
                .reported
                .get(key)
                .is_none_or(|known| candidate.order() > known.order());
            if newer {
                self.reported.insert(key.to_owned(), candidate);
            }
        }
    }

    /// The hub the device is on: of the hubs holding an identity, the one created last.
    pub fn current_hub(&self) -> Option<&str> {
        self.identities
            .iter()
            .filter(|(_, p)| p.present)
            .max_by(|a, b| (&a.1.at, a.1.sequence, a.0).cmp(&(&b.1.at, b.1.sequence, b.0)))
            .map(|(hub, _)| hub.as_str())
    }

    /// The connection to the current hub.
    pub fn connection_now(&self) -> Option<&ConnectionState> {
        self.current_hub().and_then(|hub| self.connections.get(hub))
    }

    /// The kept reported properties, without removed ones.
    pub fn reported_properties(&self) -> Map<String, Value> {
        self.reported
            .iter()
            .filter(|(_, v)| !v.value.is_null())
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect()
    }

    /// The kept reported properties that were cut to fit, with the size the device reported.
    pub fn truncated(&self) -> Map<String, Value> {
        self.reported
            .iter()
            .filter_map(|(k, v)| v.truncated_from.map(|size| (k.clone(), Value::from(size))))
            .collect()
    }

    /// What the device last reported as its provisioning status (`provisioning.status`).
    pub fn reported_status(&self) -> Option<&str> {
        self.reported
            .get("provisioning")
            .and_then(|v| v.value.get("status"))
            .and_then(Value::as_str)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::events::EventKey;
    use serde_json::json;

    pub(crate) fn event(hub: &str, sequence: i64, second: u32, change: Change) -> HubEvent {
        let at = Stamp::parse(&format!("2026-11-26T10:00:{second:02}Z")).unwrap();
        HubEvent {
            key: EventKey {
                stream: hub.into(),
                partition: "0".into(),
                sequence,
            },
            device_id: "d1".into(),
            hub: hub.into(),
            at: at.clone(),
            enqueued: at,
            change,
        }
    }

    fn twin(status: &str, version: u64) -> Change {
        Change::Twin {
            reported: Some((
                json!({ "provisioning": { "status": status } })
                    .as_object()
                    .cloned()
                    .unwrap(),
                version,
            )),
            replaced: false,
        }
    }

    fn connected(n: u8) -> Change {
        Change::Connected(ConnectionSequence::parse(&format!("{n:064X}")).unwrap())
    }

    fn disconnected(n: u8) -> Change {
        Change::Disconnected(ConnectionSequence::parse(&format!("{n:064X}")).unwrap())
    }

    fn story() -> Vec<HubEvent> {
        vec![
            event("hub-1", 1, 1, Change::Created { reported: None }),
            event("hub-1", 2, 2, connected(1)),
            event("hub-1", 3, 3, twin("provisioned", 2)),
            event("hub-1", 4, 4, Change::Telemetry),
            event("hub-1", 5, 5, disconnected(2)),
            event(
                "hub-2",
                1,
                6,
                Change::Created {
                    reported: Some((
                        json!({ "provisioning": { "status": "provisioned" } })
                            .as_object()
                            .cloned()
                            .unwrap(),
                        1,
                    )),
                },
            ),
            event("hub-1", 6, 6, Change::Deleted),
            event("hub-2", 2, 7, connected(5)),
            event("hub-2", 3, 8, twin("reprovisioned", 2)),
        ]
    }

    #[test]
    fn the_story_of_a_reprovisioned_device_ends_on_its_new_hub() {
        let mut live = HubReport::default();
        for e in story() {
            live.apply(&e);
        }
        assert_eq!(live.current_hub(), Some("hub-2"));
        assert!(live.connection_now().unwrap().connected);
        assert_eq!(live.reported_status(), Some("reprovisioned"));
        assert_eq!(
            live.last_seen.as_ref().unwrap().as_str(),
            "2026-11-26T10:00:00Z"
        );
    }

    #[test]
    fn any_order_and_any_repetition_give_the_same_state() {
        let events = story();
        let mut expected = HubReport::default();
        for e in &events {
            expected.apply(e);
        }
        // Every rotation, reversed, and each event twice.
        for shift in 0..events.len() {
            let mut order: Vec<&HubEvent> = events
                .iter()
                .cycle()
                .skip(shift)
                .take(events.len())
                .collect();
            if shift % 2 == 1 {
                order.reverse();
            }
            let mut live = HubReport::default();
            for e in order.iter().chain(order.iter()) {
                live.apply(e);
            }
            assert_eq!(live, expected, "order starting at {shift}");
        }
        let mut again = expected.clone();
        assert!(!again.apply(&events[3]), "a repeated event changes nothing");
    }

    #[test]
    fn a_report_larger_than_a_record_keeps_is_cut_and_marked() {
        let huge = json!({ "log": "x".repeat(30_000), "state": "degraded" });
        let report = Change::Twin {
            reported: Some((
                json!({ "status": huge, "firmware": "1.2" })
                    .as_object()
                    .cloned()
                    .unwrap(),
                7,
            )),
            replaced: false,
        };
        let mut live = HubReport::default();
        assert!(live.apply(&event("hub-1", 1, 1, report.clone())));
        let kept = &live.reported["status"];
        assert!(super::super::bounded::json_len(&kept.value) <= 4096);
        assert_eq!(kept.value["state"], "degraded");
        assert_eq!(live.truncated().keys().collect::<Vec<_>>(), ["status"]);
        assert!(live.truncated()["status"].as_u64().unwrap() > 30_000);
        assert_eq!(live.reported["firmware"].truncated_from, None);
        assert!(
            !live.apply(&event("hub-1", 1, 1, report)),
            "the same report again changes nothing"
        );
    }

    #[test]
    fn a_stale_disconnect_does_not_undo_a_newer_connect() {
        let mut live = HubReport::default();
        live.apply(&event("hub-1", 1, 1, Change::Created { reported: None }));
        live.apply(&event("hub-1", 3, 9, connected(7)));
        live.apply(&event("hub-1", 2, 2, disconnected(6)));
        assert!(live.connection_now().unwrap().connected);
    }
}
