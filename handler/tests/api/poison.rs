//! Poison events: a device that reports more than a record can hold, or an event Table Storage
//! refuses for what it is, must not stall its partition. Against real Azurite, which enforces
//! Table Storage's 32K-character string properties.

use crate::helpers::{azurite_endpoint, eventually, spawn_app, TestApp};
use handler::storage::{DeadLetters, Registry};
use serde_json::{json, Value};

/// The registry's own tables, as the handler of `app` sees them.
pub(crate) fn registry(app: &TestApp) -> handler::storage::tables::TableRegistry {
    let storage = iot_credentials::StorageConnectionString::development(&azurite_endpoint());
    handler::storage::tables::TableRegistry::new(
        &storage,
        &app.table_prefix,
        handler::storage::tables::http_client(),
    )
}

/// One event as the host delivers it: (body, application properties, system properties).
type Wire = (Value, Value, Value);

fn connected(device: &str, sequence: u64) -> Wire {
    (
        json!({ "sequenceNumber": format!("{sequence:064X}") }),
        json!({ "hubName": "hub-1", "deviceId": device, "opType": "deviceConnected", "operationTimestamp": "2030-01-01T00:00:00Z" }),
        json!({ "iothub-message-source": "deviceConnectionStateEvents", "iothub-connection-device-id": device }),
    )
}

fn reported(device: &str, properties: Value) -> Wire {
    let mut reported = properties;
    reported["$version"] = json!(2);
    (
        json!({ "version": 3, "properties": { "reported": reported } }),
        json!({ "hubName": "hub-1", "deviceId": device, "opType": "updateTwin", "operationTimestamp": "2030-01-01T00:00:01Z" }),
        json!({ "iothub-message-source": "twinChangeEvents", "iothub-connection-device-id": device }),
    )
}

/// Delivers one batch to OnHubEvents as the host does (one POST is one delivery) and answers
/// the status and the result document.
async fn deliver(app: &TestApp, events: &[Wire], first_sequence: i64) -> (u16, Value) {
    let bodies: Vec<String> = events.iter().map(|e| e.0.to_string()).collect();
    let sequences: Vec<i64> = (0..events.len() as i64)
        .map(|n| first_sequence + n)
        .collect();
    let enqueued: Vec<&str> = events.iter().map(|_| "2030-01-01T00:00:02.5").collect();
    let invocation = json!({
        "Data": { "events": serde_json::to_string(&bodies).unwrap() },
        "Metadata": {
            "PartitionContext": { "FullyQualifiedNamespace": "127.0.0.3", "EventHubName": "hub-1", "ConsumerGroup": "registry", "PartitionId": "2" },
            "SequenceNumberArray": serde_json::to_string(&sequences).unwrap(),
            "EnqueuedTimeUtcArray": serde_json::to_string(&enqueued).unwrap(),
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
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A status object of about 30 KB: inside IoT Hub's 32 KB for reported properties, beyond what
/// one Table Storage property holds once it sits in a record.
fn large_status() -> Value {
    json!({ "log": "line of a device's diagnostic log\n".repeat(900), "state": "degraded" })
}

fn json_len(value: &Value) -> usize {
    value.to_string().len()
}

#[tokio::test]
async fn a_device_reporting_a_30_kb_status_is_recorded_cut_and_its_partitions_move_on() {
    let app = spawn_app().await;
    let mut connections = Vec::new();
    for id in ["poison-1", "calm-1"] {
        app.enroll(id, "c").await;
        let (hub, device_id) = app.register(id).await;
        connections.push(app.connect(id, &hub, &device_id).await);
    }
    let status = large_status();
    assert!((28_000..32_000).contains(&json_len(&status)));
    connections[0]
        .report(&json!({ "status": status, "provisioning": { "status": "provisioned" } }))
        .await
        .expect("IoT Hub takes a report inside its limit");
    // The registry's event hub spreads events over its four partitions in turn: four reports
    // after the poison one put a later event behind it in every partition, the poison's own
    // included. Each report makes its own history entry.
    for n in 1..=4 {
        connections[1]
            .report(&json!({ "firmware": format!("1.{n}") }))
            .await
            .unwrap();
    }
    let record = eventually("the large report to be recorded, cut", || async {
        let d = app.get("/devices/poison-1").await.body;
        (d["reported"]["provisioningStatus"] == "provisioned").then_some(d)
    })
    .await;
    let kept = &record["reported"]["properties"]["status"];
    assert!(json_len(kept) <= 4096, "{} bytes kept", json_len(kept));
    assert_eq!(kept["state"], "degraded", "small members survive the cut");
    assert_eq!(
        record["reported"]["truncated"]["status"].as_u64(),
        Some(json_len(&status) as u64),
        "the record says what was cut: {}",
        record["reported"]
    );
    eventually(
        "every later report in every partition to be recorded",
        || async {
            let history = app.get("/devices/calm-1/history?pageSize=100").await.body;
            let reports = history["items"]
                .as_array()?
                .iter()
                .filter(|e| e["kind"] == "reported")
                .count();
            (reports == 4).then_some(())
        },
    )
    .await;
    let history = app.get("/devices/poison-1/history?pageSize=100").await.body;
    let entry = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "reported")
        .cloned()
        .unwrap();
    assert!(entry["detail"]["truncated"]["status"].is_u64(), "{entry}");
    assert!(json_len(&entry["detail"]["properties"]["status"]) <= 4096);
    for connection in connections {
        connection.close().await;
    }
}

#[tokio::test]
async fn a_batch_carrying_a_poison_report_is_acknowledged_on_its_first_delivery() {
    let app = spawn_app().await;
    for id in ["poison-2", "calm-2", "calm-3"] {
        app.enroll(id, "c").await;
    }
    let batch = [
        connected("calm-2", 0xA1),
        reported("poison-2", json!({ "status": large_status() })),
        connected("calm-3", 0xA2),
    ];
    let (status, result) = deliver(&app, &batch, 500).await;
    assert_eq!(status, 200, "one delivery is enough: {result}");
    assert_eq!(result["ReturnValue"]["changed"], 3, "{result}");
    assert_eq!(result["ReturnValue"]["deadLettered"], 0, "{result}");
    for id in ["calm-2", "calm-3"] {
        let d = app.get(&format!("/devices/{id}")).await.body;
        assert_eq!(d["lastSeen"], "2030-01-01T00:00:00Z", "{id}: {d}");
    }
    let poison = app.get("/devices/poison-2").await.body;
    assert!(
        poison["reported"]["truncated"]["status"].is_u64(),
        "{poison}"
    );
}

#[tokio::test]
async fn an_event_table_storage_refuses_ends_in_the_dead_letter_table_and_the_batch_moves_on() {
    let app = spawn_app().await;
    app.enroll("refused-1", "c").await;
    app.enroll("calm-4", "c").await;
    // A record that only just fits one Table Storage property (the API keeps assets far
    // smaller; a record written by an older version or another tool could be this large): any
    // event makes it too large, and Azurite refuses the write with 400 PropertyValueTooLarge.
    let tables = registry(&app);
    let id = handler::domain::RegistrationId::parse("refused-1").unwrap();
    let stored = tables.get(&id).await.unwrap().unwrap();
    let mut record = stored.record.clone();
    record.asset.attributes.insert("pad".into(), String::new());
    let base = serde_json::to_string(&record).unwrap().len();
    record
        .asset
        .attributes
        .insert("pad".into(), "p".repeat(32_740 - base));
    let etag = tables.replace(&stored, &record).await.unwrap();

    let batch = [connected("refused-1", 0xB1), connected("calm-4", 0xB2)];
    for delivery in 0..2 {
        let (status, result) = deliver(&app, &batch, 700).await;
        assert_eq!(status, 200, "delivery {delivery} is acknowledged: {result}");
        assert_eq!(result["ReturnValue"]["deadLettered"], 1, "{result}");
    }
    let calm = app.get("/devices/calm-4").await.body;
    assert_eq!(calm["lastSeen"], "2030-01-01T00:00:00Z", "{calm}");
    let letters = tables.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 2, "one letter per delivery: {letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.key, "hub-1~2~700");
    assert_eq!(letter.function, "OnHubEvents");
    assert!(
        letter.reason.contains("PropertyValueTooLarge"),
        "the reason names Table Storage's refusal: {}",
        letter.reason
    );
    let described: Value = serde_json::from_str(&letter.event).unwrap();
    assert_eq!(described["deviceId"], "refused-1");
    assert_eq!(described["kind"], "deviceConnected");
    assert_eq!(
        tables.get(&id).await.unwrap().unwrap().etag,
        etag,
        "the refused record is left as it was"
    );
}
