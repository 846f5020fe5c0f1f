//! Recording events over in-memory storage: the order- and repeat-independence the registry
//! promises, dead letters, retries after storage failures, history and notifications.

use super::super::notify::{Notifier, Webhook, WebhookSecret};
use super::super::Service;
use crate::cloud::fake::FakeHubs;
use crate::domain::events::{Change, ConnectionSequence, EventKey, HubEvent, Stamp};
use crate::domain::journal::DeadLetter;
use crate::domain::Status;
use crate::service::enrollments::NewEnrollment;
use crate::storage::memory::{MemoryDeadLetters, MemoryOutbox, MemoryRegistry};
use crate::storage::{DeadLetters, Registry};
use serde_json::json;
use std::sync::Arc;

struct World {
    service: Service,
    store: Arc<MemoryRegistry>,
    dead_letters: Arc<MemoryDeadLetters>,
    outbox: Arc<MemoryOutbox>,
}

fn world() -> World {
    let store = Arc::new(MemoryRegistry::default());
    let dead_letters = Arc::new(MemoryDeadLetters::default());
    let outbox = Arc::new(MemoryOutbox::default());
    let webhook = Webhook {
        url: "http://127.0.0.1:9/notify".into(),
        secret: WebhookSecret::new("a-secret-of-enough-length".into()).unwrap(),
    };
    let service = Service {
        store: store.clone(),
        dead_letters: dead_letters.clone(),
        outbox: outbox.clone(),
        hubs: Arc::new(FakeHubs::linked(&["hub-1.example", "hub-2.example"])),
        notifier: Arc::new(Notifier::new(Some(webhook), reqwest::Client::new())),
        hub_names: [
            ("hub-1".to_owned(), "hub-1.example".to_owned()),
            ("hub-2".to_owned(), "hub-2.example".to_owned()),
        ]
        .into(),
        ..Service::for_tests()
    };
    World {
        service,
        store,
        dead_letters,
        outbox,
    }
}

async fn enroll(w: &World, id: &str) {
    let request: NewEnrollment =
        serde_json::from_value(json!({ "registrationId": id, "customer": { "id": "c" } })).unwrap();
    w.service.enroll(request).await.unwrap();
}

/// A small deterministic generator (xorshift), so shuffles are reproducible.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn at(second: u64) -> Stamp {
    // After any real clock reading in the test run, so entries the API makes sort before them.
    Stamp::parse(&format!(
        "2030-01-01T{:02}:{:02}:{:02}Z",
        second / 3600,
        second / 60 % 60,
        second % 60
    ))
    .unwrap()
}

/// One device's life as its hubs tell it: registered on hub 1, connects, reports, sends
/// telemetry, disconnects, is re-provisioned to hub 2, reports again. Events come from two
/// streams, each with its own sequence numbers.
fn life(device: &str, start: u64) -> Vec<HubEvent> {
    let mut seq = [0_i64; 2];
    let mut events = Vec::new();
    let mut push = |hub: usize, second: u64, change: Change| {
        seq[hub] += 1;
        events.push(HubEvent {
            key: EventKey {
                stream: format!("hub-{}", hub + 1),
                partition: "0".into(),
                sequence: seq[hub] + start as i64 * 100,
            },
            device_id: device.to_owned(),
            hub: format!("hub-{}.example", hub + 1),
            at: at(start + second),
            enqueued: at(start + second),
            change,
        });
    };
    let connection = |n: u64| ConnectionSequence::parse(&format!("{:064X}", n)).unwrap();
    let reported = |status: &str, version: u64| Change::Twin {
        reported: Some((
            json!({ "provisioning": { "status": status }, "firmware": format!("1.{version}") })
                .as_object()
                .cloned()
                .unwrap(),
            version,
        )),
        replaced: false,
    };
    push(0, 1, Change::Created { reported: None });
    push(0, 2, Change::Connected(connection(start * 10 + 1)));
    push(0, 3, reported("provisioned", 2));
    for s in 4..16 {
        push(0, s, Change::Telemetry);
    }
    push(0, 16, Change::Disconnected(connection(start * 10 + 2)));
    push(
        1,
        17,
        Change::Created {
            reported: Some((
                json!({ "provisioning": { "status": "provisioned" } })
                    .as_object()
                    .cloned()
                    .unwrap(),
                1,
            )),
        },
    );
    push(0, 18, Change::Deleted);
    push(1, 19, Change::Connected(connection(start * 10 + 3)));
    push(1, 20, reported("reprovisioned", 2));
    push(1, 21, Change::Telemetry);
    events
}

#[tokio::test]
async fn a_devices_life_ends_with_the_right_record_and_history() {
    let w = world();
    enroll(&w, "d1").await;
    let report = w
        .service
        .record_events("OnHubEvents", life("d1", 0), Vec::new())
        .await
        .unwrap();
    assert_eq!((report.changed, report.unknown), (1, 0));
    let record = w.store.get_by_device("d1").await.unwrap().unwrap().record;
    assert_eq!(record.status(), Status::Assigned);
    assert_eq!(record.assigned_hub(), Some("hub-2.example"));
    assert!(record.live.connection_now().unwrap().connected);
    assert_eq!(record.live.reported_status(), Some("reprovisioned"));
    assert_eq!(
        record.live.last_seen.as_ref().unwrap(),
        &at(0),
        "to the minute"
    );
    let (history, _) = w.service.history("d1", 100, None).await.unwrap();
    let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "reported",
            "connected",
            "removedFromHub",
            "reprovisioned",
            "disconnected",
            "reported",
            "connected",
            "registered",
            "enrolled"
        ],
        "newest first"
    );
    assert_eq!(history[3].detail.as_ref().unwrap()["from"], "hub-1.example");
}

#[tokio::test]
async fn duplicated_and_shuffled_delivery_gives_identical_records() {
    let ordered = world();
    let shuffled = world();
    let mut all = Vec::new();
    for d in 0..50 {
        let id = format!("dev-{d:02}");
        enroll(&ordered, &id).await;
        enroll(&shuffled, &id).await;
        all.extend(life(&id, d * 20));
    }
    assert!(all.len() >= 1000, "{} events", all.len());
    for batch in all.chunks(100) {
        ordered
            .service
            .record_events("f", batch.to_vec(), Vec::new())
            .await
            .unwrap();
    }
    // Every event twice, shuffled, in batches of random size.
    let mut rng = Seeded(0x5eed_1234_abcd_ef01);
    let mut twice: Vec<HubEvent> = all.iter().chain(all.iter()).cloned().collect();
    for i in (1..twice.len()).rev() {
        twice.swap(i, rng.below(i + 1));
    }
    let mut rest = twice.as_slice();
    while !rest.is_empty() {
        let size = 1 + rng.below(64).min(rest.len() - 1);
        shuffled
            .service
            .record_events("f", rest[..size].to_vec(), Vec::new())
            .await
            .unwrap();
        rest = &rest[size..];
    }
    for (a, b) in ordered.store.all().iter().zip(shuffled.store.all().iter()) {
        assert_eq!(a.record.device_id, b.record.device_id);
        assert_eq!(a.record.live, b.record.live, "{}", a.record.device_id);
        assert_eq!(a.record.status(), b.record.status());
    }
}

#[tokio::test]
async fn malformed_events_are_set_aside_and_the_rest_applied() {
    let w = world();
    enroll(&w, "d1").await;
    let letter = DeadLetter {
        function: "f".into(),
        key: "hub-1~0~7".into(),
        device_id: None,
        reason: "no device".into(),
        event: "{}".into(),
        at: Stamp::now(),
    };
    let report = w
        .service
        .record_events("f", life("d1", 0)[..2].to_vec(), vec![letter])
        .await
        .unwrap();
    assert_eq!((report.dead_lettered, report.changed), (1, 1));
    assert_eq!(
        w.dead_letters.dead_letters(10).await.unwrap()[0].reason,
        "no device"
    );
}

#[tokio::test]
async fn a_storage_failure_fails_the_batch_and_redelivery_completes_it() {
    let w = world();
    enroll(&w, "d1").await;
    let events = life("d1", 0);
    w.store.fail("replace", 1);
    assert!(w
        .service
        .record_events("f", events.clone(), Vec::new())
        .await
        .is_err());
    w.service
        .record_events("f", events.clone(), Vec::new())
        .await
        .unwrap();
    let once = w
        .store
        .get_by_device("d1")
        .await
        .unwrap()
        .unwrap()
        .record
        .live;
    w.service
        .record_events("f", events, Vec::new())
        .await
        .unwrap();
    assert_eq!(
        w.store
            .get_by_device("d1")
            .await
            .unwrap()
            .unwrap()
            .record
            .live,
        once
    );
    let (history, _) = w.service.history("d1", 100, None).await.unwrap();
    assert_eq!(history.len(), 9, "history entries are not repeated");
}

#[tokio::test]
async fn each_status_change_queues_one_notification_however_often_it_is_delivered() {
    let w = world();
    enroll(&w, "d1").await;
    let events = life("d1", 0);
    for _ in 0..3 {
        w.service
            .record_events("f", events[..3].to_vec(), Vec::new())
            .await
            .unwrap();
    }
    let queued = w.outbox.queued();
    // enrolled -> assigned (and reported "provisioned" in the same batch): one change.
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].document["status"], "assigned");
    assert_eq!(queued[0].document["reportedStatus"], "provisioned");
    assert_eq!(queued[0].document["previousStatus"], "enrolled");
    w.service
        .record_events("f", events[19..].to_vec(), Vec::new())
        .await
        .unwrap();
    assert_eq!(
        w.outbox.queued().len(),
        2,
        "reprovisioned is a new reported status"
    );
}

#[tokio::test]
async fn events_of_devices_the_registry_does_not_know_are_counted_not_failed() {
    let w = world();
    let report = w
        .service
        .record_events("f", life("stranger", 0), Vec::new())
        .await
        .unwrap();
    assert_eq!(report.unknown, 21);
    assert!(w.service.history("stranger", 10, None).await.is_err());
}

/// Pads `id`'s record with an asset attribute until its JSON takes `size` bytes: a record that
/// only just fits Table Storage, which any event pushes over (the API refuses assets this large;
/// a record from before that limit, or written by another tool, could be so).
async fn pad_record(w: &World, id: &str, size: usize) {
    let stored = w.store.get_by_device(id).await.unwrap().unwrap();
    let mut record = stored.record.clone();
    record.asset.attributes.insert("pad".into(), String::new());
    let base = serde_json::to_string(&record).unwrap().len();
    record
        .asset
        .attributes
        .insert("pad".into(), "p".repeat(size - base));
    assert_eq!(serde_json::to_string(&record).unwrap().len(), size);
    w.store.replace(&stored, &record).await.unwrap();
}

#[tokio::test]
async fn events_storage_refuses_are_set_aside_with_the_reason_and_the_batch_goes_on() {
    let w = world();
    enroll(&w, "d1").await;
    enroll(&w, "d2").await;
    pad_record(&w, "d1", 32_740).await;
    let before = w.store.get_by_device("d1").await.unwrap().unwrap();
    let mut batch = life("d1", 0)[..3].to_vec();
    batch.extend(life("d2", 100)[..3].to_vec());
    for delivery in 0..2 {
        let report = w
            .service
            .record_events("OnHubEvents", batch.clone(), Vec::new())
            .await
            .unwrap_or_else(|e| panic!("delivery {delivery} fails: {e}"));
        assert_eq!(report.dead_lettered, 3, "{report:?}");
    }
    let d2 = w.store.get_by_device("d2").await.unwrap().unwrap().record;
    assert_eq!(
        d2.live.reported_status(),
        Some("provisioned"),
        "the other device is recorded"
    );
    assert_eq!(
        w.store.get_by_device("d1").await.unwrap().unwrap(),
        before,
        "the refused record is left as it was"
    );
    let letters = w.dead_letters.dead_letters(10).await.unwrap();
    let keys: Vec<&str> = letters.iter().take(3).map(|l| l.key.as_str()).collect();
    for event in &batch[..3] {
        assert!(keys.contains(&event.key.to_string().as_str()), "{keys:?}");
    }
    assert!(
        letters[0].reason.contains("PropertyValueTooLarge"),
        "{}",
        letters[0].reason
    );
    let described: serde_json::Value = serde_json::from_str(&letters[0].event).unwrap();
    assert_eq!(described["deviceId"], "d1");
}

#[tokio::test]
async fn a_large_report_on_a_record_near_the_limit_is_cut_further_rather_than_refused() {
    let w = world();
    enroll(&w, "d1").await;
    // Leaves room for the device's ordinary events but not for a 4 KiB status on top.
    pad_record(&w, "d1", 29_000).await;
    let mut events = life("d1", 0)[..2].to_vec();
    let mut poison = events[1].clone();
    poison.key.sequence = 99;
    poison.change = Change::Twin {
        reported: Some((
            json!({ "status": { "log": "x".repeat(30_000), "state": "degraded" } })
                .as_object()
                .cloned()
                .unwrap(),
            5,
        )),
        replaced: false,
    };
    events.push(poison);
    let report = w
        .service
        .record_events("OnHubEvents", events, Vec::new())
        .await
        .unwrap();
    assert_eq!(report.dead_lettered, 0, "{report:?}");
    let record = w.store.get_by_device("d1").await.unwrap().unwrap().record;
    assert!(record.live.connection_now().unwrap().connected);
    assert!(record.live.truncated().contains_key("status"));
    assert_eq!(record.live.reported["status"].value["state"], "degraded");
    assert!(serde_json::to_string(&record).unwrap().len() <= 30 * 1024);
}

#[tokio::test]
async fn an_event_refused_alone_is_set_aside_and_the_devices_other_events_are_recorded() {
    let w = world();
    enroll(&w, "d1").await;
    let events = life("d1", 0)[..3].to_vec();
    // The events together are refused, and so is the first alone; the others are not.
    w.store.fail_with(
        "replace",
        2,
        crate::storage::StoreError::Refused("HTTP 400 EntityTooLarge".into()),
    );
    let report = w
        .service
        .record_events("OnHubEvents", events.clone(), Vec::new())
        .await
        .unwrap();
    assert_eq!((report.dead_lettered, report.changed), (1, 1), "{report:?}");
    let letter = &w.dead_letters.dead_letters(1).await.unwrap()[0];
    assert_eq!(letter.key, events[0].key.to_string());
    assert!(
        letter.reason.contains("EntityTooLarge"),
        "{}",
        letter.reason
    );
    let record = w.store.get_by_device("d1").await.unwrap().unwrap().record;
    assert!(
        record.live.identities.is_empty(),
        "the set-aside event is not applied"
    );
    assert!(record.live.connections["hub-1.example"].connected);
    assert_eq!(record.live.reported_status(), Some("provisioned"));
}

#[tokio::test]
async fn a_transient_storage_failure_still_fails_the_batch_so_it_is_delivered_again() {
    let w = world();
    enroll(&w, "d1").await;
    w.store.fail("replace", 1);
    let error = w
        .service
        .record_events("OnHubEvents", life("d1", 0), Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(error, crate::service::ServiceError::Unavailable { .. }),
        "{error:?}"
    );
    assert!(
        w.dead_letters.dead_letters(10).await.unwrap().is_empty(),
        "nothing set aside"
    );
}

#[tokio::test]
async fn a_dead_letter_that_cannot_be_written_yet_fails_the_batch_and_one_refused_does_not() {
    let w = world();
    let letter = DeadLetter {
        function: "f".into(),
        key: "hub-1~0~7".into(),
        device_id: None,
        reason: "no device".into(),
        event: "{}".into(),
        at: Stamp::now(),
    };
    w.dead_letters.fail("dead_letter", 1);
    assert!(w
        .service
        .record_events("f", Vec::new(), vec![letter.clone()])
        .await
        .is_err());
    w.dead_letters.fail_with(
        "dead_letter",
        1,
        crate::storage::StoreError::Refused("HTTP 400 EntityTooLarge".into()),
    );
    let report = w
        .service
        .record_events("f", Vec::new(), vec![letter])
        .await
        .unwrap();
    assert_eq!(report.dead_lettered, 1);
    assert!(w.dead_letters.dead_letters(10).await.unwrap().is_empty());
}
