//! The event functions end to end: the hubs' events reach the handler through the Functions host
//! stand-in and keep records and history right; malformed events are set aside; status changes
//! reach a webhook, signed; reconciliation repairs what events missed.

use crate::helpers::{eventually, spawn_app, spawn_app_on, spawn_app_with, TestApp};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use warp::Filter;

async fn device(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/devices/{id}")).await.body
}

async fn history_kinds(app: &TestApp, id: &str) -> Vec<String> {
    let page = app
        .get(&format!("/devices/{id}/history?pageSize=100"))
        .await
        .body;
    page["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .rev()
                .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_devices_whole_life_ends_with_the_right_record_and_history() {
    let app = spawn_app().await;
    app.enroll("life-1", "contoso").await;
    let (first_hub, device_id) = app.register("life-1").await;
    let mut connection = app.connect("life-1", &first_hub, &device_id).await;
    connection.report(&json!({ "provisioning": { "status": "provisioned" }, "firmware": "1.0.0", "ignored": true })).await.unwrap();
    connection
        .send_telemetry(bytes::Bytes::from_static(b"{\"t\":21}"), &[])
        .await
        .unwrap();
    let record = eventually("the report to be recorded", || async {
        let d = device(&app, "life-1").await;
        (d["reported"]["provisioningStatus"] == "provisioned"
            && d["connection"]["state"] == "connected")
            .then_some(d)
    })
    .await;
    assert_eq!(record["hub"], first_hub.as_str());
    assert_eq!(record["status"], "assigned");
    assert_eq!(
        record["reported"]["properties"],
        json!({ "provisioning": { "status": "provisioned" }, "firmware": "1.0.0" })
    );
    assert!(record["lastSeen"].is_string());
    connection.close().await;
    eventually("the disconnect to be recorded", || async {
        (device(&app, "life-1").await["connection"]["state"] == "disconnected").then_some(())
    })
    .await;

    // Re-provision: pin the enrollment to the other hub and register again.
    let other_hub = app
        .emulator
        .endpoints()
        .hubs
        .iter()
        .map(|h| h.host_name.clone())
        .find(|h| *h != first_hub)
        .unwrap();
    let changed = app
        .patch("/enrollments/life-1", &json!({ "iotHub": other_hub }), None)
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    let (second_hub, _) = app.register("life-1").await;
    assert_eq!(second_hub, other_hub);
    let record = eventually("the move to be recorded", || async {
        let d = device(&app, "life-1").await;
        (d["hub"] == other_hub.as_str()).then_some(d)
    })
    .await;
    assert_eq!(record["status"], "assigned");
    let kinds = eventually(
        "the history to show the move and the old hub's removal",
        || async {
            let kinds = history_kinds(&app, "life-1").await;
            (kinds.contains(&"reprovisioned".to_owned())
                && kinds.contains(&"removedFromHub".to_owned()))
            .then_some(kinds)
        },
    )
    .await;
    let position = |kind: &str| {
        kinds
            .iter()
            .position(|k| k == kind)
            .unwrap_or_else(|| panic!("{kind} missing from {kinds:?}"))
    };
    assert!(position("enrolled") < position("registered"));
    assert!(position("registered") < position("connected"));
    assert!(position("connected") < position("reported"));
    assert!(position("reported") < position("disconnected"));
    assert!(position("disconnected") < position("reprovisioned"));

    assert_eq!(app.delete("/enrollments/life-1").await.status, 204);
    let kinds = history_kinds(&app, "life-1").await;
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("deleted"),
        "{kinds:?}"
    );
    assert_eq!(
        app.get("/devices/life-1").await.status,
        404,
        "the record is gone, its history stays"
    );
}

/// Posts an invocation to the handler the way the host does for OnHubEvents.
async fn invoke_events(
    app: &TestApp,
    bodies: Vec<Value>,
    properties: Vec<Value>,
    system: Vec<Value>,
    sequences: Vec<i64>,
) -> Value {
    let enqueued: Vec<String> = sequences
        .iter()
        .map(|_| "2030-01-01T00:00:00.5".to_owned())
        .collect();
    let invocation = json!({
        "Data": { "events": serde_json::to_string(&bodies).unwrap() },
        "Metadata": {
            "PartitionContext": { "FullyQualifiedNamespace": "127.0.0.3", "EventHubName": "hub-1", "ConsumerGroup": "registry", "PartitionId": "9" },
            "SequenceNumberArray": serde_json::to_string(&sequences).unwrap(),
            "EnqueuedTimeUtcArray": serde_json::to_string(&enqueued).unwrap(),
            "PropertiesArray": serde_json::to_string(&properties).unwrap(),
            "SystemPropertiesArray": serde_json::to_string(&system).unwrap(),
        }
    });
    let response = app
        .http
        .post(format!("{}/OnHubEvents", app.handler_url()))
        .json(&invocation)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "a batch with a malformed event still succeeds"
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_malformed_event_lands_in_the_dead_letter_table_and_the_rest_is_applied() {
    let app = spawn_app().await;
    app.enroll("dl-1", "c").await;
    let props = |op: &str| json!({ "hubName": "hub-1", "deviceId": "dl-1", "opType": op, "operationTimestamp": "2030-01-01T00:00:00Z" });
    let system = json!({ "iothub-message-source": "deviceConnectionStateEvents", "iothub-connection-device-id": "dl-1" });
    let result = invoke_events(
        &app,
        vec![json!("{\"sequenceNumber\":\"not hex\"}"), json!("{\"sequenceNumber\":\"00000000000000000000000000000000000000000000000000000000000000A1\"}")],
        vec![props("deviceConnected"), props("deviceConnected")],
        vec![system.clone(), system],
        vec![41, 42],
    )
    .await;
    assert_eq!(result["ReturnValue"]["deadLettered"], 1, "{result}");
    assert_eq!(
        device(&app, "dl-1").await["lastSeen"],
        "2030-01-01T00:00:00Z",
        "the good event was applied"
    );
    let storage =
        iot_credentials::StorageConnectionString::development(&crate::helpers::azurite_endpoint());
    let registry = handler::storage::tables::TableRegistry::new(
        &storage,
        &app.table_prefix,
        handler::storage::tables::http_client(),
    );
    let letters = handler::storage::DeadLetters::dead_letters(&registry, 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].reason.contains("sequenceNumber"),
        "{:?}",
        letters[0]
    );
    assert_eq!(letters[0].key, "hub-1~9~41");
}

#[tokio::test]
async fn status_changes_reach_the_webhook_once_each_and_signed() {
    // A receiver that records what it gets.
    let received: Arc<Mutex<Vec<(Value, String, String)>>> = Arc::default();
    let sink = received.clone();
    let route = warp::post()
        .and(warp::header::<String>("x-registry-signature"))
        .and(warp::header::<String>("x-registry-notification-id"))
        .and(warp::body::bytes())
        .map(move |signature: String, id: String, body: bytes::Bytes| {
            let document: Value = serde_json::from_slice(&body).unwrap();
            let secret =
                handler::service::notify::WebhookSecret::new("test-webhook-secret-1234".into())
                    .unwrap();
            assert_eq!(
                signature,
                secret.sign(&body),
                "the signature is the HMAC of the body"
            );
            sink.lock().unwrap().push((document, id, signature));
            warp::http::StatusCode::NO_CONTENT
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notify", listener.local_addr().unwrap());
    tokio::spawn(warp::serve(route).incoming(listener).run());

    let app = spawn_app_with(&[
        ("NOTIFY_WEBHOOK_URL", url.as_str()),
        ("NOTIFY_WEBHOOK_SECRET", "test-webhook-secret-1234"),
    ])
    .await;
    app.enroll("hooked", "contoso").await;
    let (hub, device_id) = app.register("hooked").await;
    let mut connection = app.connect("hooked", &hub, &device_id).await;
    connection
        .report(&json!({ "provisioning": { "status": "provisioned" } }))
        .await
        .unwrap();
    let changes = eventually("two status notifications", || async {
        let got = received.lock().unwrap().clone();
        (got.len() >= 2).then_some(got)
    })
    .await;
    let statuses: Vec<(Value, Value)> = changes
        .iter()
        .map(|(d, _, _)| (d["status"].clone(), d["reportedStatus"].clone()))
        .collect();
    assert_eq!(
        statuses,
        [
            (json!("assigned"), Value::Null),
            (json!("assigned"), json!("provisioned"))
        ]
    );
    for (document, id, _) in &changes {
        assert_eq!(document["id"], id.as_str());
        assert_eq!(document["deviceId"], "hooked");
        assert_eq!(document["customerId"], "contoso");
    }
    // Nothing more arrives for the same changes, however the events are delivered.
    assert_eq!(app.run_function("DeliverNotifications").await, 202);
    assert_eq!(received.lock().unwrap().len(), 2);
    connection.close().await;
}

#[tokio::test]
async fn reconciliation_repairs_a_record_whose_events_never_arrived() {
    let app = spawn_app_with(&[("AzureWebJobs.OnHubEvents.Disabled", "true")]).await;
    app.enroll("quiet-1", "c").await;
    let (hub, device_id) = app.register("quiet-1").await;
    let mut connection = app.connect("quiet-1", &hub, &device_id).await;
    connection
        .report(&json!({ "provisioning": { "status": "provisioned" }, "firmware": "2.1" }))
        .await
        .unwrap();
    let before = device(&app, "quiet-1").await;
    assert_eq!(before["connection"], Value::Null, "no events were recorded");
    assert_eq!(app.run_function("Reconcile").await, 202);
    let after = device(&app, "quiet-1").await;
    assert_eq!(after["status"], "assigned");
    assert_eq!(after["hub"], hub.as_str());
    assert_eq!(after["connection"]["state"], "connected");
    assert_eq!(after["reported"]["provisioningStatus"], "provisioned");
    assert_eq!(after["reported"]["properties"]["firmware"], "2.1");
    // A second pass finds nothing to repair and changes nothing.
    let etag = after["etag"].clone();
    assert_eq!(app.run_function("Reconcile").await, 202);
    assert_eq!(device(&app, "quiet-1").await["etag"], etag);
    connection.close().await;
}

/// A deterministic generator (xorshift), so the shuffle is the same on every run.
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One event as the host delivers it: (body, application properties, system properties,
/// enqueued time, stream, sequence number).
type WireEvent = (Value, Value, Value, String, &'static str, i64);

/// A device's life on two hubs, as the hubs' streams carry it.
fn wire_life(device: &str, n: u64) -> Vec<WireEvent> {
    let mut events = Vec::new();
    let mut sequence = [0_i64; 2];
    let mut push = |hub: usize, second: u64, source: &str, op: Option<&str>, body: Value| {
        sequence[hub] += 1;
        let time = format!(
            "2030-01-{:02}T{:02}:{:02}:{:02}Z",
            1 + n / 24,
            n % 24,
            second / 60,
            second % 60
        );
        let hub_name = if hub == 0 { "hub-1" } else { "hub-2" };
        let mut props =
            json!({ "hubName": hub_name, "deviceId": device, "operationTimestamp": time });
        if let Some(op) = op {
            props["opType"] = json!(op);
        } else {
            props = json!({ "kind": "reading" });
        }
        let system =
            json!({ "iothub-message-source": source, "iothub-connection-device-id": device });
        events.push((
            body,
            props,
            system,
            time,
            hub_name,
            n as i64 * 1000 + sequence[hub],
        ));
    };
    let twin = |status: &str, version: u64| json!({ "version": version + 1, "properties": { "reported": { "provisioning": { "status": status }, "$version": version } } });
    let seq = |k: u64| json!({ "sequenceNumber": format!("{:064X}", n * 10 + k) });
    push(
        0,
        1,
        "deviceLifecycleEvents",
        Some("createDeviceIdentity"),
        json!({ "deviceId": device, "version": 1, "properties": { "reported": { "$version": 1 } } }),
    );
    push(
        0,
        2,
        "deviceConnectionStateEvents",
        Some("deviceConnected"),
        seq(1),
    );
    push(
        0,
        3,
        "twinChangeEvents",
        Some("updateTwin"),
        twin("provisioned", 2),
    );
    for s in 4..16 {
        push(0, s, "Telemetry", None, json!({ "t": s }));
    }
    push(
        0,
        16,
        "deviceConnectionStateEvents",
        Some("deviceDisconnected"),
        seq(2),
    );
    push(
        1,
        17,
        "deviceLifecycleEvents",
        Some("createDeviceIdentity"),
        json!({ "deviceId": device, "version": 2, "properties": { "reported": { "provisioning": { "status": "provisioned" }, "$version": 1 } } }),
    );
    push(
        0,
        18,
        "deviceLifecycleEvents",
        Some("deleteDeviceIdentity"),
        json!({ "deviceId": device }),
    );
    push(
        1,
        19,
        "deviceConnectionStateEvents",
        Some("deviceConnected"),
        seq(3),
    );
    push(
        1,
        20,
        "twinChangeEvents",
        Some("updateTwin"),
        twin("reprovisioned", 2),
    );
    push(1, 21, "Telemetry", None, json!({ "t": 21 }));
    events
}

/// Sends events to the handler's event function, one invocation per stream in the batch.
async fn deliver(app: &TestApp, batch: &[WireEvent]) {
    for stream in ["hub-1", "hub-2"] {
        let events: Vec<&WireEvent> = batch.iter().filter(|e| e.4 == stream).collect();
        if events.is_empty() {
            continue;
        }
        let bodies: Vec<String> = events.iter().map(|e| e.0.to_string()).collect();
        let invocation = json!({
            "Data": { "events": serde_json::to_string(&bodies).unwrap() },
            "Metadata": {
                "PartitionContext": { "EventHubName": stream, "PartitionId": "0" },
                "SequenceNumberArray": serde_json::to_string(&events.iter().map(|e| e.5).collect::<Vec<_>>()).unwrap(),
                "EnqueuedTimeUtcArray": serde_json::to_string(&events.iter().map(|e| e.3.trim_end_matches('Z')).collect::<Vec<_>>()).unwrap(),
                "PropertiesArray": serde_json::to_string(&events.iter().map(|e| &e.1).collect::<Vec<_>>()).unwrap(),
                "SystemPropertiesArray": serde_json::to_string(&events.iter().map(|e| &e.2).collect::<Vec<_>>()).unwrap(),
            }
        });
        let response = app
            .http
            .post(format!("{}/OnHubEvents", app.handler_url()))
            .json(&invocation)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "{}",
            response.text().await.unwrap_or_default()
        );
    }
}

/// A device view without what differs between two registries by nature (etags, write times).
fn comparable(mut view: Value) -> Value {
    for field in ["etag", "updatedAt"] {
        view.as_object_mut().map(|v| v.remove(field));
    }
    view
}

#[tokio::test]
async fn a_thousand_events_duplicated_and_shuffled_give_the_records_of_in_order_delivery() {
    let (ordered, shuffled) = tokio::join!(spawn_app(), spawn_app());
    let devices: Vec<String> = (0..50).map(|d| format!("shuffle-{d:02}")).collect();
    for app in [&ordered, &shuffled] {
        let body: Vec<Value> = devices
            .iter()
            .map(|id| json!({ "registrationId": id, "customer": { "id": "c" } }))
            .collect();
        let imported = app.post("/enrollments/import", &json!(body)).await;
        assert_eq!(imported.body["summary"]["created"], 50, "{}", imported.text);
    }
    let all: Vec<WireEvent> = devices
        .iter()
        .enumerate()
        .flat_map(|(n, id)| wire_life(id, n as u64))
        .collect();
    assert!(all.len() >= 1000, "{} events", all.len());
    for batch in all.chunks(100) {
        deliver(&ordered, batch).await;
    }
    let mut rng = Seeded(0x0123_4567_89ab_cdef);
    let mut twice: Vec<WireEvent> = all.iter().chain(all.iter()).cloned().collect();
    for i in (1..twice.len()).rev() {
        twice.swap(i, rng.below(i + 1));
    }
    let mut rest = twice.as_slice();
    while !rest.is_empty() {
        let size = (1 + rng.below(100)).min(rest.len());
        deliver(&shuffled, &rest[..size]).await;
        rest = &rest[size..];
    }
    for id in &devices {
        let (a, b) = (device(&ordered, id).await, device(&shuffled, id).await);
        assert_eq!(comparable(a.clone()), comparable(b), "{id}");
        assert_eq!(a["hub"], "127.0.0.4", "{id} ended on hub 2: {a}");
        assert_eq!(a["reported"]["provisioningStatus"], "reprovisioned");
        assert_eq!(a["connection"]["state"], "connected");
    }
}

/// An Azurite of the test's own, so pausing it disturbs no other test.
struct OwnAzurite {
    child: tokio::process::Child,
    endpoint: String,
}

impl OwnAzurite {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let program = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../emulator/azurite/node_modules/.bin/azurite-table"
        );
        let child = tokio::process::Command::new(program)
            .args([
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--silent",
                "--tableHost",
                "127.0.0.1",
                "--tablePort",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("Azurite is installed (make test installs it)");
        eventually("Azurite to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}/devstoreaccount1"),
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }
}

#[tokio::test]
async fn events_during_a_storage_outage_are_all_recorded_once_storage_is_back() {
    let azurite = OwnAzurite::start().await;
    let storage = iot_credentials::StorageConnectionString::development(&azurite.endpoint).expose();
    let app = spawn_app_with(&[("AzureWebJobsStorage", storage.as_str())]).await;
    app.enroll("outage-1", "c").await;
    let (hub, device_id) = app.register("outage-1").await;
    let mut connection = app.connect("outage-1", &hub, &device_id).await;
    eventually("the connection to be recorded", || async {
        (device(&app, "outage-1").await["connection"]["state"] == "connected").then_some(())
    })
    .await;

    // Storage stops answering for 30 s while the device keeps reporting.
    azurite.signal("-STOP");
    let paused = std::time::Instant::now();
    for firmware in ["3.0", "3.1", "3.2"] {
        connection.report(&json!({ "firmware": firmware, "provisioning": { "status": format!("running {firmware}") } })).await.unwrap();
    }
    connection.close().await;
    tokio::time::sleep(std::time::Duration::from_secs(30).saturating_sub(paused.elapsed())).await;
    azurite.signal("-CONT");

    // The host redelivers the failed batches (retry policy, up to 30 s apart) until they stick.
    let mut last = Value::Null;
    for _ in 0..240 {
        last = device(&app, "outage-1").await;
        if last["reported"]["properties"]["firmware"] == "3.2"
            && last["connection"]["state"] == "disconnected"
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(last["reported"]["properties"]["firmware"], "3.2", "{last}");
    assert_eq!(last["reported"]["provisioningStatus"], "running 3.2");
    assert_eq!(last["connection"]["state"], "disconnected");
    // The record can be final while a partition holding an older report is still backing off
    // (the registry's event hub does not keep a device's events in one partition): wait for the
    // history too, bounded by the retry policy's longest interval and then some.
    let mut reports = 0;
    for _ in 0..240 {
        let history = app.get("/devices/outage-1/history?pageSize=100").await.body;
        reports = history["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "reported")
            .count();
        if reports >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(
        reports, 3,
        "every report made during the outage is in the history, once"
    );
}

#[tokio::test]
async fn three_hubs_feed_the_one_event_function_and_each_record_names_its_hub() {
    // A third hub is configuration: a connection string, a name and its routes, no new code.
    let app = spawn_app_on(
        &[("hub-3", "127.0.0.6")],
        &[
            (
                "IOTHUB_CONNECTION_STRINGS",
                "{hubs.0.connectionString}|{hubs.1.connectionString}|{hubs.2.connectionString}",
            ),
            (
                "IOTHUB_NAMES",
                "hub-1=127.0.0.3|hub-2=127.0.0.4|hub-3=127.0.0.6",
            ),
        ],
    )
    .await;
    let hosts = ["127.0.0.3", "127.0.0.4", "127.0.0.6"];
    let mut connections = Vec::new();
    for (n, host) in hosts.iter().enumerate() {
        let id = format!("three-{n}");
        let answer = app
            .post(
                "/enrollments",
                &json!({ "registrationId": id, "customer": { "id": "contoso" }, "iotHub": host }),
            )
            .await;
        assert_eq!(answer.status, 201, "{}", answer.text);
        let (hub, device_id) = app.register(&id).await;
        assert_eq!(hub, *host, "the enrollment pins the hub");
        let mut connection = app.connect(&id, &hub, &device_id).await;
        connection
            .report(&json!({ "provisioning": { "status": "provisioned" } }))
            .await
            .unwrap();
        connections.push(connection);
    }
    for (n, host) in hosts.iter().enumerate() {
        let record = eventually("each device's events to be recorded", || async {
            let d = device(&app, &format!("three-{n}")).await;
            (d["reported"]["provisioningStatus"] == "provisioned"
                && d["connection"]["state"] == "connected")
                .then_some(d)
        })
        .await;
        assert_eq!(record["hub"], *host, "{record}");
        assert_eq!(record["status"], "assigned");
    }
}

#[tokio::test]
async fn a_modules_lifecycle_twin_and_connection_events_leave_its_devices_record_as_it_was() {
    let app = spawn_app().await;
    app.enroll("edge-1", "c").await;
    let (hub, device_id) = app.register("edge-1").await;
    let mut connection = app.connect("edge-1", &hub, &device_id).await;
    connection
        .report(&json!({ "provisioning": { "status": "provisioned" } }))
        .await
        .unwrap();
    let before = eventually("the device's own events to be recorded", || async {
        let d = device(&app, "edge-1").await;
        (d["reported"]["provisioningStatus"] == "provisioned"
            && d["connection"]["state"] == "connected")
            .then_some(d)
    })
    .await;
    // A module of the device is created, reports, disconnects and is deleted, later than
    // anything the device did: the events IoT Hub raises carry the device id plus moduleId
    // (articles/iot-hub/iot-hub-non-telemetry-event-schema.md).
    let props = |op: &str| json!({ "hubName": "hub-1", "deviceId": device_id, "moduleId": "telemetry-filter", "opType": op, "operationTimestamp": "2030-01-01T00:00:00Z" });
    let system = |source: &str, with_module: bool| {
        let mut s =
            json!({ "iothub-message-source": source, "iothub-connection-device-id": device_id });
        if with_module {
            s["iothub-connection-module-id"] = json!("telemetry-filter");
        }
        s
    };
    let result = invoke_events(
        &app,
        vec![
            json!({ "deviceId": device_id, "moduleId": "telemetry-filter", "properties": { "reported": { "provisioningStatus": "failed" } } }).to_string().into(),
            json!({ "version": 9, "properties": { "reported": { "provisioningStatus": "failed", "$version": 9 } } }).to_string().into(),
            json!({ "sequenceNumber": "0000000000000000000000000000000000000000000000000000000000000FFF" }).to_string().into(),
            json!({ "deviceId": device_id, "moduleId": "telemetry-filter" }).to_string().into(),
        ],
        vec![
            props("createDeviceIdentity"),
            props("updateTwin"),
            props("deviceDisconnected"),
            props("deleteDeviceIdentity"),
        ],
        vec![
            system("deviceLifecycleEvents", true),
            system("twinChangeEvents", true),
            // Connection events of modules carry moduleId only among the application properties.
            system("deviceConnectionStateEvents", false),
            system("deviceLifecycleEvents", true),
        ],
        vec![901, 902, 903, 904],
    )
    .await;
    assert_eq!(result["ReturnValue"]["deadLettered"], 0, "{result}");
    assert_eq!(result["ReturnValue"]["changed"], 0, "{result}");
    let after = device(&app, "edge-1").await;
    for field in ["hub", "status", "connection", "reported", "lastSeen"] {
        assert_eq!(after[field], before[field], "{field} is the device's own");
    }
    connection.close().await;
}
