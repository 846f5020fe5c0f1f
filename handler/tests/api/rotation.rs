//! Key rotation with device rollover, through the real device program: the telemetry sender
//! (`device::sender::run`, what `device sender` runs) takes the new key over its
//! hub connection, stores it, re-provisions with it and reports; the handler, behind the
//! Functions host stand-in, retires the old key only then. Online, offline during the rotation,
//! and killed between storing the key and re-provisioning; the old key is refused by DPS and the
//! hub at the end, and no key value is in any log line or API answer.

use crate::helpers::{eventually, spawn_app_with, Answer, ProvisionedDevice, TestApp};
use crate::logs::{find_secrets, LogCapture};
use device::sender::{run, Stats};
use device::telemetry::Source;
use emulator::dps::enrollments::Individual;
use emulator::fleet::client_tls;
use emulator::fleet::device::{DeviceCredentials, HttpsRegistrar};
use emulator::fleet::hub_device::{DeviceConnection, Endpoint};
use emulator::fleet::ClientError;
use iot_credentials::SharedAccessKey;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A provisioned device (the harness's): its state directory and how its sender runs.
type Device = ProvisionedDevice;

/// A sender running on the test's runtime (its log lines are captured with the test's).
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops it the way SIGTERM does: the outbox is flushed and the connection closed.
    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
    }
}

/// A sender in a runtime of its own, on its own threads: killing it drops every task it
/// started at once (its re-provisioning too), where they stood, as SIGKILL ends a process.
struct Process {
    runtime: tokio::runtime::Runtime,
}

impl Process {
    /// Drops every task of the process where it stands, and returns once they are gone (a
    /// runtime cannot be shut down from inside another, hence the thread).
    fn kill(self) {
        let runtime = self.runtime;
        std::thread::spawn(move || runtime.shutdown_timeout(Duration::from_secs(10)))
            .join()
            .unwrap();
    }
}

/// Enrolls `id` and provisions it, ready for the sender.
async fn provisioned(app: &TestApp, id: &str) -> Device {
    app.enroll(id, "contoso").await;
    app.provision_device(id).await
}

impl Device {
    fn start(&self) -> Running {
        let (stop, stopped) = watch::channel(false);
        let config = self.config.clone();
        let task = tokio::spawn(async move {
            run(
                config,
                Source::simulated(),
                Arc::new(Stats::default()),
                stopped,
            )
            .await
            .unwrap()
        });
        Running { stop, task }
    }

    fn start_process(&self) -> Process {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let config = self.config.clone();
        let (_stop, stopped) = watch::channel(false);
        runtime.spawn(async move {
            // The flag is never set: the process ends by being killed.
            let _keep = _stop;
            let _ = run(
                config,
                Source::simulated(),
                Arc::new(Stats::default()),
                stopped,
            )
            .await;
        });
        Process { runtime }
    }

    /// The key the device authenticates with now.
    fn key(&self) -> SharedAccessKey {
        self.state.load().unwrap().unwrap().credentials.key
    }

    fn hub(&self) -> String {
        self.state.load().unwrap().unwrap().hub
    }
}

/// The device's record once it is connected and has reported (so its sender has subscribed to
/// methods: it reports after reading its twin, which it asks for after subscribing).
async fn online(app: &TestApp, id: &str) -> Value {
    eventually("the device connected and reporting", || async {
        let device = app.get(&format!("/devices/{id}")).await.body;
        (device["connection"]["state"] == "connected"
            && device["reported"]["provisioningStatus"] == "provisioned")
            .then_some(device)
    })
    .await
}

/// The enrollment once its key rotation `rotation` has finished.
async fn rotated(app: &TestApp, id: &str, rotation: &str) -> Value {
    eventually("the rotation to finish", || async {
        let enrollment = app.get(&format!("/enrollments/{id}")).await.body;
        (enrollment["key"]["pending"].is_null() && enrollment["key"]["last"]["id"] == rotation)
            .then_some(enrollment)
    })
    .await
}

async fn rotate(app: &TestApp, id: &str) -> Answer {
    app.post(&format!("/enrollments/{id}/rotate-key"), &json!({}))
        .await
}

/// DPS's keys for the enrollment, read inside the emulator (the API never answers them).
fn dps_keys(app: &TestApp, id: &str) -> (SharedAccessKey, SharedAccessKey) {
    let attestation = app
        .emulator
        .dps()
        .get_attestation::<Individual>(id)
        .unwrap();
    let keys = attestation.symmetric_key.unwrap();
    let parse = |k: Option<String>| SharedAccessKey::from_base64(&k.unwrap()).unwrap();
    (parse(keys.primary_key), parse(keys.secondary_key))
}

/// Registers with DPS as the device would, with `key`.
async fn register_with(app: &TestApp, id: &str, key: &SharedAccessKey) -> Result<(), ClientError> {
    let endpoints = app.emulator.endpoints();
    HttpsRegistrar::new(app.device_http.clone(), &endpoints.dps.device_endpoint)
        .register(
            &DeviceCredentials {
                id_scope: endpoints.dps.id_scope.clone(),
                registration_id: id.to_owned(),
                key: key.clone(),
            },
            None,
        )
        .await
        .map(drop)
}

/// Connects to `hub` as the device, with `key`.
async fn connect_with(
    app: &TestApp,
    hub: &str,
    id: &str,
    key: &SharedAccessKey,
) -> Result<DeviceConnection, ClientError> {
    let endpoints = app.emulator.endpoints();
    let hub = endpoints.hubs.iter().find(|h| h.host_name == hub).unwrap();
    let endpoint = Endpoint {
        address: format!("{}:{}", hub.host_name, hub.mqtt_port)
            .parse()
            .unwrap(),
        host: hub.host_name.clone(),
        tls: Arc::new(client_tls(app.emulator.ca_certificate_pem()).unwrap()),
    };
    DeviceConnection::connect_device(&endpoint, id, key).await
}

/// The old key is refused by DPS and by the hub; the device's key is the one in the slot the
/// record names, and the hub identity holds exactly DPS's two keys.
async fn old_key_is_refused(app: &TestApp, device: &Device, old: &SharedAccessKey) {
    let (primary, secondary) = dps_keys(app, &device.id);
    assert!(
        primary != *old && secondary != *old,
        "DPS no longer holds the old key"
    );
    let enrollment = app.get(&format!("/enrollments/{}", device.id)).await.body;
    let held = match enrollment["key"]["slot"].as_str().unwrap() {
        "primary" => &primary,
        _ => &secondary,
    };
    assert_eq!(device.key(), *held, "the device holds the key of its slot");
    let hub = device.hub();
    let identity = app
        .emulator
        .hub(&hub)
        .unwrap()
        .hub
        .device(&device.id)
        .unwrap();
    assert_eq!(
        (
            identity.primary_key.as_str(),
            identity.secondary_key.as_str()
        ),
        (primary.expose_base64(), secondary.expose_base64()),
        "the hub identity holds DPS's keys"
    );
    let refused = register_with(app, &device.id, old).await;
    assert!(
        matches!(refused, Err(ClientError::Unauthorized(_))),
        "DPS refuses the old key: {refused:?}"
    );
    let refused = connect_with(app, &hub, &device.id, old).await;
    assert!(
        matches!(refused, Err(ClientError::Unauthorized(_))),
        "the hub refuses the old key"
    );
}

fn history_kinds(history: &Value) -> Vec<String> {
    history["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn an_online_device_rolls_over_to_a_rotated_key_and_its_old_key_is_refused_by_dps_and_the_hub(
) {
    let logs = LogCapture::default();
    let _capture = logs.install();
    let app = spawn_app_with(&[("RUST_LOG", "trace")]).await;
    let device = provisioned(&app, "rotate-1").await;
    let sender = device.start();
    online(&app, "rotate-1").await;
    let old = device.key();
    let (_, staged_before) = dps_keys(&app, "rotate-1");

    let answer = rotate(&app, "rotate-1").await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let pending = &answer.body["key"]["pending"];
    assert_eq!(pending["step"], "delivered", "{}", answer.text);
    assert_eq!(pending["slot"], "secondary");
    assert_eq!(answer.body["key"]["slot"], "primary", "not moved yet");
    let rotation = pending["id"].as_str().unwrap().to_owned();
    let (_, new) = dps_keys(&app, "rotate-1");
    assert_ne!(new, staged_before, "a new key in the free slot");

    let enrollment = rotated(&app, "rotate-1", &rotation).await;
    assert_eq!(enrollment["key"]["slot"], "secondary");
    assert_eq!(device.key(), new, "the device took the new key");
    old_key_is_refused(&app, &device, &old).await;
    // The device is back on its hub with the new key, and says so.
    let record = online(&app, "rotate-1").await;
    assert_eq!(
        record["reported"]["properties"]["keyRotation"]["id"],
        rotation.as_str()
    );
    assert_eq!(
        record["reported"]["properties"]["keyRotation"]["status"],
        "completed"
    );
    let history = app.get("/devices/rotate-1/history").await;
    let kinds = history_kinds(&history.body);
    for kind in ["keyRotationStarted", "keyDelivered", "keyRotationCompleted"] {
        assert!(kinds.contains(&kind.to_owned()), "{kind} in {kinds:?}");
    }
    // A code issued now carries the key the device holds.
    assert_eq!(app.code("rotate-1").await.device_key, new);
    sender.stop().await;

    // No key of this rotation in any answer (the provisioning code's, which carries one by
    // design, aside) or log line.
    let (retired, _) = dps_keys(&app, "rotate-1");
    let secrets = vec![
        ("the old key".to_owned(), old.expose_base64().to_owned()),
        ("the new key".to_owned(), new.expose_base64().to_owned()),
        (
            "the retired slot's key".to_owned(),
            retired.expose_base64().to_owned(),
        ),
        (
            "the staged-over key".to_owned(),
            staged_before.expose_base64().to_owned(),
        ),
    ];
    let answers = [
        answer.text.clone(),
        app.get("/enrollments/rotate-1").await.text,
        app.get("/devices/rotate-1").await.text,
        app.get("/enrollments").await.text,
        history.text.clone(),
    ];
    for text in &answers {
        let leaks = find_secrets(text, &secrets);
        assert!(leaks.is_empty(), "keys in an answer: {leaks:#?}");
    }
    // The handler's lines reach the capture through the stand-in, which relays its output as it
    // reads it (at trace level, a lot of it): wait for the handler's last line of the rotation.
    let text = eventually("the handler's lines relayed", || async {
        let text = logs.text();
        text.contains("finished a key rotation").then_some(text)
    })
    .await;
    // Kept for whoever reads a failure (the keys are this run's own).
    let artifacts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/rotation");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("logs.txt"), &text).unwrap();
    for line in [
        "stored a rotated key",
        "the rotated key is the device's key now",
        "handed the new key to the device",
        "finished a key rotation",
    ] {
        assert!(text.contains(line), "the capture holds {line:?}");
    }
    let leaks = find_secrets(&text, &secrets);
    assert!(leaks.is_empty(), "keys in the logs: {leaks:#?}");
}

#[tokio::test]
async fn a_device_offline_during_a_rotation_keeps_its_old_key_and_finishes_the_rotation_when_it_is_back(
) {
    let app = spawn_app_with(&[]).await;
    let device = provisioned(&app, "rotate-2").await;
    let sender = device.start();
    online(&app, "rotate-2").await;
    sender.stop().await;
    eventually("the device disconnected", || async {
        let device = app.get("/devices/rotate-2").await.body;
        (device["connection"]["state"] == "disconnected").then_some(())
    })
    .await;
    let old = device.key();
    let hub = device.hub();

    // Offline: the key waits in DPS's free slot.
    let answer = rotate(&app, "rotate-2").await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    let pending = &answer.body["key"]["pending"];
    assert_eq!(pending["step"], "staged");
    assert_eq!(pending["lastError"], "the device is not connected");
    let rotation = pending["id"].as_str().unwrap().to_owned();
    // One rotation at a time; unknown enrollments are not found.
    let again = rotate(&app, "rotate-2").await;
    assert_eq!(again.status, 409, "{}", again.text);
    assert_eq!(again.error_code(), "rotationPending");
    let unknown = rotate(&app, "nobody-here").await;
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    assert_eq!(unknown.error_code(), "notFound");

    // The old key still works with DPS and with the hub; a device that connects is offered the
    // key over that connection (this one turns it down, as a busy device might).
    register_with(&app, "rotate-2", &old)
        .await
        .expect("DPS still takes the old key");
    let mut connection = connect_with(&app, &hub, "rotate-2", &old)
        .await
        .expect("the hub still takes the old key");
    connection.subscribe_methods().await.unwrap();
    let (name, rid, _) = tokio::time::timeout(Duration::from_secs(30), connection.next_method())
        .await
        .expect("the key is offered when the device connects")
        .unwrap();
    assert_eq!(name, "RotateKey");
    connection
        .answer_method(&rid, 503, &json!({ "message": "busy" }))
        .await
        .unwrap();
    eventually("the refusal recorded", || async {
        let enrollment = app.get("/enrollments/rotate-2").await.body;
        (enrollment["key"]["pending"]["lastError"] == "the device answered RotateKey 503")
            .then_some(())
    })
    .await;
    connection.close().await;
    assert_eq!(device.key(), old);

    // Back for real: the sender connects with its old key, takes the new one and finishes.
    let sender = device.start();
    let enrollment = rotated(&app, "rotate-2", &rotation).await;
    assert_eq!(enrollment["key"]["last"]["slot"], "secondary");
    assert_ne!(device.key(), old);
    old_key_is_refused(&app, &device, &old).await;
    online(&app, "rotate-2").await;
    sender.stop().await;
}

#[tokio::test]
async fn a_sender_killed_after_storing_the_rotated_key_finishes_the_rotation_when_it_starts_again()
{
    let app = spawn_app_with(&[]).await;
    let device = provisioned(&app, "rotate-3").await;
    let process = device.start_process();
    online(&app, "rotate-3").await;
    let old = device.key();

    // DPS turns devices away (429) for now: the sender stores the key and cannot re-provision.
    app.emulator.dps().throttle_for(Duration::from_secs(600));
    let answer = rotate(&app, "rotate-3").await;
    assert_eq!(answer.status, 202, "{}", answer.text);
    assert_eq!(answer.body["key"]["pending"]["step"], "delivered");
    let rotation = answer.body["key"]["pending"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = device.state.load().unwrap().unwrap();
    assert_eq!(
        stored.pending_key.map(|p| p.rotation_id).as_deref(),
        Some(rotation.as_str()),
        "the key is stored before the device answers"
    );
    assert_eq!(
        stored.credentials.key, old,
        "and the old key is still its key"
    );
    eventually(
        "the sender trying DPS with the new key, and turned away",
        || async { (app.emulator.dps().registration_counts().throttled > 0).then_some(()) },
    )
    .await;
    process.kill();

    // Nothing was retired while the device had not finished.
    let enrollment = app.get("/enrollments/rotate-3").await.body;
    assert_eq!(enrollment["key"]["pending"]["step"], "delivered");
    assert!(
        dps_keys(&app, "rotate-3").0 == old,
        "the old key stays in DPS until the device has moved"
    );

    // Started again with DPS back: it finishes from the stored key.
    app.emulator.dps().throttle_for(Duration::ZERO);
    let sender = device.start();
    let enrollment = rotated(&app, "rotate-3", &rotation).await;
    assert_eq!(enrollment["key"]["slot"], "secondary");
    assert!(device.state.load().unwrap().unwrap().pending_key.is_none());
    old_key_is_refused(&app, &device, &old).await;
    online(&app, "rotate-3").await;
    sender.stop().await;
}
