//! The dashboard's figures over in-memory storage, for a fleet whose devices stand at every
//! stage and fail in every way the page names.

use super::*;
use crate::cloud::fake::FakeHubs;
use crate::domain::events::{Change, ConnectionSequence, EventKey, HubEvent};
use crate::domain::journal::DeadLetter;
use crate::domain::{Registration, RegistrationId};
use crate::service::enrollments::NewEnrollment;
use crate::storage::memory::{MemoryDeadLetters, MemoryRegistry};
use crate::storage::{DeadLetters, Registry};
use serde_json::json;
use std::sync::Arc;
use time::OffsetDateTime;

struct World {
    service: Service,
    store: Arc<MemoryRegistry>,
    dead_letters: Arc<MemoryDeadLetters>,
}

fn world() -> World {
    let store = Arc::new(MemoryRegistry::default());
    let dead_letters = Arc::new(MemoryDeadLetters::default());
    let service = Service {
        store: store.clone(),
        dead_letters: dead_letters.clone(),
        hubs: Arc::new(FakeHubs::linked(&["hub-1.example", "hub-2.example"])),
        hub_names: [
            ("hub-1".to_owned(), "hub-1.example".to_owned()),
            ("hub-2".to_owned(), "hub-2.example".to_owned()),
            ("hub-3".to_owned(), "hub-3.example".to_owned()),
        ]
        .into(),
        ..Service::for_tests()
    };
    World {
        service,
        store,
        dead_letters,
    }
}

async fn enroll(w: &World, id: &str, customer_name: &str) {
    let request: NewEnrollment = serde_json::from_value(
        json!({ "registrationId": id, "customer": { "id": "contoso", "name": customer_name } }),
    )
    .unwrap();
    w.service.enroll(request).await.unwrap();
}

/// `minutes` ago.
fn ago(minutes: i64) -> Stamp {
    let at = OffsetDateTime::now_utc() - time::Duration::minutes(minutes);
    Stamp::parse(
        &at.format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
    )
    .unwrap()
}

/// An event of `device` on `hub` (host), `minutes` ago.
fn event(device: &str, hub: &str, sequence: i64, minutes: i64, change: Change) -> HubEvent {
    HubEvent {
        key: EventKey {
            stream: hub.into(),
            partition: "0".into(),
            sequence,
        },
        device_id: device.into(),
        hub: hub.into(),
        at: ago(minutes),
        enqueued: ago(minutes),
        change,
    }
}

fn connection(n: u64) -> ConnectionSequence {
    ConnectionSequence::parse(&format!("{n:064X}")).unwrap()
}

fn reported(status: &str) -> Change {
    Change::Twin {
        reported: Some((
            json!({ "provisioning": { "status": status } })
                .as_object()
                .cloned()
                .unwrap(),
            2,
        )),
        replaced: false,
    }
}

/// Registers `device` on `hub` `minutes` ago and applies `then` after it.
async fn live(w: &World, device: &str, hub: &str, minutes: i64, then: Vec<(i64, Change)>) {
    let mut events = vec![event(
        device,
        hub,
        1,
        minutes,
        Change::Created { reported: None },
    )];
    for (i, (minutes, change)) in then.into_iter().enumerate() {
        events.push(event(device, hub, i as i64 + 2, minutes, change));
    }
    w.service
        .record_events("OnHubEvents", events, Vec::new())
        .await
        .unwrap();
}

/// A fleet with a device at every stage and in every kind of trouble.
async fn fleet() -> World {
    let w = world();
    for id in [
        "enrolled-only",
        "never-connected",
        "reporting",
        "connected-silent",
        "gone-for-hours",
        "gone-briefly",
        "reports-failure",
        "dps-refused",
        "switched-off",
    ] {
        enroll(&w, id, "Contoso").await;
    }
    let (h1, h2) = ("hub-1.example", "hub-2.example");
    live(&w, "never-connected", h1, 300, vec![]).await;
    live(
        &w,
        "reporting",
        h1,
        30,
        vec![
            (29, Change::Connected(connection(1))),
            (28, reported("provisioned")),
        ],
    )
    .await;
    live(
        &w,
        "connected-silent",
        h2,
        30,
        vec![(29, Change::Connected(connection(1)))],
    )
    .await;
    live(
        &w,
        "gone-for-hours",
        h2,
        400,
        vec![
            (399, Change::Connected(connection(1))),
            (185, Change::Disconnected(connection(2))),
        ],
    )
    .await;
    live(
        &w,
        "gone-briefly",
        h1,
        400,
        vec![
            (399, Change::Connected(connection(1))),
            (10, Change::Disconnected(connection(2))),
        ],
    )
    .await;
    live(
        &w,
        "reports-failure",
        h1,
        20,
        vec![
            (19, Change::Connected(connection(1))),
            (18, reported("reprovisionFailed")),
        ],
    )
    .await;
    let refused = w
        .store
        .get(&RegistrationId::parse("dps-refused").unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut record = refused.record.clone();
    record.registration = Some(Registration {
        status: "failed".into(),
        assigned_hub: None,
        device_id: None,
        substatus: None,
        error_message: Some("the device's key does not match".into()),
        last_updated: None,
        observed_at: crate::domain::now(),
    });
    w.store.replace(&refused, &record).await.unwrap();
    let off = w
        .store
        .get(&RegistrationId::parse("switched-off").unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut record = off.record.clone();
    record.enabled = false;
    w.store.replace(&off, &record).await.unwrap();
    w.dead_letters
        .dead_letter(&DeadLetter {
            function: "OnHubEvents".into(),
            key: "hub-1~0~41".into(),
            device_id: Some("gone-briefly".into()),
            reason: "the connection event has no hex sequenceNumber".into(),
            event: "{}".into(),
            at: Stamp::now(),
        })
        .await
        .unwrap();
    w
}

fn ids(attention: &Attention) -> Vec<&str> {
    attention
        .items
        .iter()
        .map(|f| f.summary.device_id.as_str())
        .collect()
}

#[tokio::test]
async fn the_dashboard_counts_every_stage_hub_and_kind_of_trouble() {
    let w = fleet().await;
    let d = w
        .service
        .dashboard(DEFAULT_DISCONNECTED_MINUTES)
        .await
        .unwrap();
    let stages: Vec<usize> = Stage::ALL.iter().map(|s| d.count(*s)).collect();
    // 9 enrolled; 6 registered (not the enrolled-only, refused or switched-off ones); 3
    // connected now; 2 of them reporting.
    assert_eq!(stages, [9, 6, 3, 2]);
    let status = |s: Status| d.statuses.iter().find(|(k, _)| *k == s).unwrap().1;
    assert_eq!(
        (
            status(Status::Enrolled),
            status(Status::Assigned),
            status(Status::Failed),
            status(Status::Disabled)
        ),
        (1, 6, 1, 1)
    );
    let hubs: Vec<(&str, usize, usize)> = d
        .hubs
        .iter()
        .map(|h| (h.hub.as_str(), h.devices, h.connected))
        .collect();
    assert_eq!(
        hubs,
        [
            ("hub-1.example", 4, 2),
            ("hub-2.example", 2, 1),
            ("hub-3.example", 0, 0)
        ],
        "every linked hub is shown, an empty one too"
    );
    assert_eq!(ids(&d.never_connected), ["never-connected"]);
    assert_eq!(
        ids(&d.disconnected),
        ["gone-for-hours"],
        "10 minutes is under the hour"
    );
    assert_eq!(d.disconnected.items[0].reason, "disconnected for 3 h 5 min");
    assert_eq!(
        ids(&d.provisioning_failed),
        ["reports-failure", "dps-refused"]
    );
    assert_eq!(
        d.provisioning_failed.items[1].reason,
        "DPS refused the registration: the device's key does not match"
    );
    assert_eq!(
        d.provisioning_failed.items[0].reason,
        "the device reports reprovisionFailed"
    );
    assert_eq!(d.dead_letters.len(), 1);
    assert_eq!(d.dead_letters[0].device_id.as_deref(), Some("gone-briefly"));
    assert!(!d.more_dead_letters);

    let shorter = w.service.dashboard(5).await.unwrap();
    assert_eq!(
        ids(&shorter.disconnected),
        ["gone-for-hours", "gone-briefly"],
        "a shorter threshold finds both, the longest gone first"
    );
}

#[tokio::test]
async fn the_figures_equal_a_count_over_the_full_records() {
    let w = fleet().await;
    let d = w.service.dashboard(60).await.unwrap();
    let records = w.store.all();
    assert_eq!(d.count(Stage::Enrolled), records.len());
    let registered = records
        .iter()
        .filter(|s| s.record.status() == Status::Assigned)
        .count();
    let connected = records
        .iter()
        .filter(|s| {
            s.record.status() == Status::Assigned
                && s.record.connection().is_some_and(|c| c.connected)
        })
        .count();
    assert_eq!(
        (d.count(Stage::Registered), d.count(Stage::Connected)),
        (registered, connected)
    );
}

#[tokio::test]
async fn the_lists_name_the_longest_standing_devices_and_count_them_all() {
    let w = world();
    for i in 0..230 {
        let id = format!("d{i:03}");
        enroll(&w, &id, "Contoso").await;
        live(&w, &id, "hub-1.example", 1000 - i, vec![]).await;
    }
    let d = w.service.dashboard(60).await.unwrap();
    assert_eq!(d.never_connected.total, 230);
    assert_eq!(d.never_connected.items.len(), LISTED);
    assert_eq!(
        ids(&d.never_connected)[..3],
        ["d000", "d001", "d002"],
        "registered longest ago first"
    );
}

#[tokio::test]
async fn more_dead_letters_than_shown_are_announced() {
    let w = world();
    for i in 0..DEAD_LETTERS_SHOWN + 5 {
        w.dead_letters
            .dead_letter(&DeadLetter {
                function: "OnHubEvents".into(),
                key: format!("hub-1~0~{i}"),
                device_id: None,
                reason: "malformed".into(),
                event: "{}".into(),
                at: Stamp::now(),
            })
            .await
            .unwrap();
    }
    let d = w.service.dashboard(60).await.unwrap();
    assert_eq!(d.dead_letters.len(), DEAD_LETTERS_SHOWN);
    assert!(d.more_dead_letters);
    assert_eq!(d.count(Stage::Enrolled), 0);
}

#[tokio::test]
async fn storage_that_cannot_be_read_makes_the_dashboard_unavailable() {
    let w = fleet().await;
    w.store.fail("summaries", 1);
    let error = w.service.dashboard(60).await.unwrap_err();
    assert!(
        matches!(error, ServiceError::Unavailable { .. }),
        "{error:?}"
    );
}

#[test]
fn durations_read_as_a_person_says_them() {
    assert_eq!(duration_words(45), "45 min");
    assert_eq!(duration_words(60), "1 h");
    assert_eq!(duration_words(185), "3 h 5 min");
    assert_eq!(duration_words(24 * 60), "1 day");
    assert_eq!(duration_words(2 * 24 * 60 + 250), "2 days 4 h");
}
