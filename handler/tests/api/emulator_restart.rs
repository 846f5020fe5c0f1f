//! The emulator (DPS, the hubs and their event streams, the Functions host and the handler it
//! runs) stopped and started again over its state while devices send telemetry through the
//! device crate's own sender: the senders reconnect, every hub event reaches the registry once
//! the host is back (its checkpoints survive the restart), and the records end as those of a
//! fault-free run beside it, with nothing dead-lettered.

use crate::faults::{assert_dps_agrees, assert_same_records, records, refresh_registrations};
use crate::helpers::{spawn_app, spawn_restartable_app, ProvisionedDevice, TestApp};
use device::sender::{run, Stats};
use device::telemetry::Source;
use handler::storage::DeadLetters;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::sync::watch;

const DEVICES: usize = 4;
const CUSTOMER: &str = "restart";

/// A device of the test: its state folder and its running sender.
struct Device {
    id: String,
    _state: TempDir,
    stop: watch::Sender<bool>,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

impl Device {
    /// Stops the sender (a clean MQTT disconnect, which the hub reports as an event).
    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
    }
}

/// Enrolls, provisions (from the provisioning code, as the portal does) and starts the sender of
/// each device.
async fn start_fleet(app: &TestApp) -> Vec<Device> {
    let mut fleet = Vec::new();
    for n in 0..DEVICES {
        let id = format!("{CUSTOMER}-{n:02}");
        let answer = app
            .post(
                "/enrollments",
                &json!({ "registrationId": id, "customer": { "id": CUSTOMER } }),
            )
            .await;
        assert_eq!(answer.status, 201, "{}", answer.text);
        let ProvisionedDevice {
            dir, mut config, ..
        } = app.provision_device(&id).await;
        config.interval = Duration::from_millis(50);
        config.outbox_capacity = 10_000;
        let (stop, stopped) = watch::channel(false);
        let stats = Arc::new(Stats::default());
        let counters = stats.clone();
        let task = tokio::spawn(async move {
            run(config, Source::simulated(), counters, stopped)
                .await
                .unwrap()
        });
        fleet.push(Device {
            id,
            _state: dir,
            stop,
            stats,
            task,
        });
    }
    fleet
}

/// Waits (bounded) until every device's record passes `check`.
async fn until_records(
    app: &TestApp,
    fleet: &[Device],
    what: &str,
    check: impl Fn(&Value) -> bool,
) {
    for device in fleet {
        until_id(app, &device.id, what, &check).await;
    }
}

/// Changes every device's desired telemetry interval through the API; each sender applies it
/// and acknowledges it in a reported property, which reaches the record through the hub's events.
async fn change_interval(app: &TestApp, fleet: &[Device]) {
    for device in fleet {
        let answer = app
            .patch(
                &format!("/devices/{}/desired", device.id),
                &json!({ "telemetryIntervalSeconds": 0.1 }),
                None,
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
}

fn reporting(record: &Value) -> bool {
    record["reported"]["provisioningStatus"] == "provisioned"
        && record["connection"]["state"] == "connected"
}

/// The desired version a record shows the device acknowledged.
fn acknowledged(record: &Value) -> Option<u64> {
    record["reported"]["properties"]["acknowledgedDesiredVersion"].as_u64()
}

#[tokio::test]
async fn an_emulator_restart_during_telemetry_leaves_the_records_a_fault_free_run_has() {
    let (clean, faulty) = tokio::join!(spawn_app(), spawn_restartable_app());
    let (quiet, troubled) = tokio::join!(start_fleet(&clean), start_fleet(&faulty));
    tokio::join!(
        until_records(&clean, &quiet, "the first report", reporting),
        until_records(&faulty, &troubled, "the first report", reporting)
    );
    let before: Vec<u64> = troubled
        .iter()
        .map(|d| d.stats.connections.load(Ordering::Relaxed))
        .collect();

    // A desired change on every device, and the emulator stopped at once: the acknowledgements
    // are reported while it goes down or after it is back, and their events are delivered by the
    // restarted host from its checkpoints.
    tokio::join!(
        change_interval(&clean, &quiet),
        change_interval(&faulty, &troubled)
    );
    let faulty = faulty.restart_emulator().await;
    for (device, before) in troubled.iter().zip(before) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while device.stats.connections.load(Ordering::Relaxed) <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not reconnect after the restart",
                device.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let acknowledged_change = |record: &Value| reporting(record) && acknowledged(record) >= Some(2);
    tokio::join!(
        until_records(
            &clean,
            &quiet,
            "the acknowledged change",
            acknowledged_change
        ),
        until_records(
            &faulty,
            &troubled,
            "the acknowledged change",
            acknowledged_change
        )
    );
    for device in &troubled {
        let telemetry = device.stats.acknowledged.load(Ordering::Relaxed);
        assert!(telemetry > 0, "{} sent telemetry", device.id);
    }

    // Every sender stops; the records show the devices disconnected.
    let mut connections = Vec::new();
    for (app, fleet) in [(&clean, quiet), (&faulty, troubled)] {
        for device in fleet {
            connections.push(device.stats.connections.load(Ordering::Relaxed));
            let id = device.id.clone();
            device.stop().await;
            until_id(app, &id, "the disconnection", |record| {
                record["connection"]["state"] == "disconnected"
            })
            .await;
        }
    }

    // Nothing was lost: each history has every connection the sender made and every reported
    // version the twin went through, once each…
    let mut connections = connections.into_iter();
    for app in [&clean, &faulty] {
        for (id, record) in records(app, CUSTOMER).await {
            let history = history(app, &id).await;
            let connected = history.iter().filter(|e| e["kind"] == "connected").count() as u64;
            assert_eq!(
                Some(connected),
                connections.next(),
                "{id}: every connection is in the history: {history:?}"
            );
            let hub = record["hub"].as_str().unwrap();
            let twin = app.emulator.hub(hub).unwrap().hub.device(&id).unwrap().twin;
            let mut versions: Vec<u64> = history
                .iter()
                .filter(|e| e["kind"] == "reported")
                .filter_map(|e| e["detail"]["version"].as_u64())
                .collect();
            versions.sort_unstable();
            // Version 1 is the empty set the twin starts with.
            let every: Vec<u64> = (2..=twin.reported.version).collect();
            assert_eq!(
                versions, every,
                "{id}: every report is in the history once: {history:?}"
            );
        }
    }
    // …and the records equal the quiet run's. The reported version is left out: it counts the
    // device's reports, and a device that reconnects reports its state once more.
    let without_version = |mut all: std::collections::BTreeMap<String, Value>| {
        for record in all.values_mut() {
            record["reported"]
                .as_object_mut()
                .map(|reported| reported.remove("version"));
        }
        all
    };
    for app in [&clean, &faulty] {
        refresh_registrations(app, (0..DEVICES).map(|n| format!("{CUSTOMER}-{n:02}"))).await;
    }
    let (expected, got) = (
        without_version(records(&clean, CUSTOMER).await),
        without_version(records(&faulty, CUSTOMER).await),
    );
    assert_same_records(&expected, &got);
    assert_dps_agrees(&faulty, CUSTOMER).await;
    let letters = crate::poison::registry(&faulty)
        .dead_letters(10)
        .await
        .unwrap();
    assert!(letters.is_empty(), "nothing is dead-lettered: {letters:?}");
}

/// The device's history, newest first.
async fn history(app: &TestApp, id: &str) -> Vec<Value> {
    let answer = app
        .get(&format!("/devices/{id}/history?pageSize=100"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(
        answer.body["continuationToken"].is_null(),
        "one page holds it"
    );
    answer.body["items"].as_array().unwrap().clone()
}

/// Waits until the device's record passes `check`; panics with the record that did not, after
/// two minutes (the event function's retry policy backs off up to 30 s after a failed delivery).
async fn until_id(app: &TestApp, id: &str, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let record = app.get(&format!("/devices/{id}")).await.body;
        if check(&record) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id}: {what} did not happen; record {record}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
