//! The fleet dashboard end to end: a small fleet driven into every state through the emulator's
//! DPS and hubs (and, for what happened long ago, the event function itself), read through the
//! Functions host stand-in. Its figures must equal a count over the full records after
//! Reconcile and after events are delivered again; in Chromium the page opens with the key in
//! the address, shows what a CRM wrote as text, and its links open the device's record.

use crate::helpers::{eventually, spawn_app_with, TestApp};
use crate::logs::{find_secrets, LogCapture};
use crate::webdriver::Browser;
use emulator::fleet::hub_device::DeviceConnection;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A number the page shows in the element with this id.
fn figure(page: &str, id: &str) -> Option<usize> {
    let marker = format!("id=\"{id}\">");
    let start = page.find(&marker)? + marker.len();
    page[start..].split('<').next()?.trim().parse().ok()
}

/// What the page and a full scan are compared on: devices per stage, and per hub (devices,
/// connected).
#[derive(Debug, PartialEq, Eq)]
struct Figures {
    stages: [usize; 4],
    hubs: BTreeMap<String, (usize, usize)>,
}

/// The figures as the page shows them.
fn shown(page: &str) -> Figures {
    let stage = |name: &str| figure(page, &format!("stage-{name}")).unwrap_or(usize::MAX);
    let mut hubs = BTreeMap::new();
    for row in page.split("<tr data-hub=\"").skip(1) {
        let hub = row.split('"').next().unwrap().to_owned();
        let cell = |class: &str| {
            let marker = format!("class=\"n {class}\">");
            let start = row.find(&marker).unwrap() + marker.len();
            row[start..]
                .split('<')
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        };
        let (devices, connected) = (cell("devices"), cell("connected"));
        if devices > 0 {
            hubs.insert(hub, (devices, connected));
        }
    }
    Figures {
        stages: [
            stage("enrolled"),
            stage("registered"),
            stage("connected"),
            stage("reporting"),
        ],
        hubs,
    }
}

/// The same figures counted over every full record the API lists.
async fn full_scan(app: &TestApp) -> Figures {
    let mut devices: Vec<Value> = Vec::new();
    let mut path = "/devices?pageSize=1000".to_owned();
    loop {
        let page = app.get(&path).await;
        assert_eq!(page.status, 200, "{}", page.text);
        devices.extend(page.body["items"].as_array().unwrap().iter().cloned());
        match page.body["continuationToken"].as_str() {
            Some(token) => path = format!("/devices?pageSize=1000&continuationToken={token}"),
            None => break,
        }
    }
    let registered: Vec<&Value> = devices
        .iter()
        .filter(|d| d["status"] == "assigned")
        .collect();
    let connected = |d: &&&Value| d["connection"]["state"] == "connected";
    let mut hubs = BTreeMap::new();
    for device in &registered {
        let entry = hubs
            .entry(device["hub"].as_str().unwrap().to_ascii_lowercase())
            .or_insert((0, 0));
        entry.0 += 1;
        entry.1 += usize::from(connected(&device));
    }
    Figures {
        stages: [
            devices.len(),
            registered.len(),
            registered.iter().filter(connected).count(),
            registered
                .iter()
                .filter(connected)
                .filter(|d| d["reported"]["provisioningStatus"].is_string())
                .count(),
        ],
        hubs,
    }
}

async fn dashboard(app: &TestApp) -> String {
    let answer = app.get("/dashboard").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.text
}

/// The time `minutes` ago, as IoT Hub writes operation timestamps.
fn minutes_ago(minutes: i64) -> String {
    (time::OffsetDateTime::now_utc() - time::Duration::minutes(minutes))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// An OnHubEvents invocation of connection events, as the host sends it to the handler:
/// `(device, hub name, connected, hex sequence number, operation time, stream position)`.
fn connection_events(events: &[(&str, &str, bool, u64, String, i64)]) -> Value {
    let bodies: Vec<String> = events
        .iter()
        .map(|e| json!({ "sequenceNumber": format!("{:064X}", e.3) }).to_string())
        .collect();
    let properties: Vec<Value> = events
        .iter()
        .map(|e| json!({ "hubName": e.1, "deviceId": e.0, "opType": if e.2 { "deviceConnected" } else { "deviceDisconnected" }, "operationTimestamp": e.4 }))
        .collect();
    let system: Vec<Value> = events
        .iter()
        .map(|e| json!({ "iothub-message-source": "deviceConnectionStateEvents", "iothub-connection-device-id": e.0 }))
        .collect();
    let sequences: Vec<i64> = events.iter().map(|e| e.5).collect();
    let enqueued: Vec<String> = events
        .iter()
        .map(|e| e.4.trim_end_matches('Z').to_owned())
        .collect();
    json!({
        "Data": { "events": serde_json::to_string(&bodies).unwrap() },
        "Metadata": {
            "PartitionContext": { "EventHubName": "hub-events", "PartitionId": "7" },
            "SequenceNumberArray": serde_json::to_string(&sequences).unwrap(),
            "EnqueuedTimeUtcArray": serde_json::to_string(&enqueued).unwrap(),
            "PropertiesArray": serde_json::to_string(&properties).unwrap(),
            "SystemPropertiesArray": serde_json::to_string(&system).unwrap(),
        }
    })
}

/// Delivers an invocation to the handler as the host does; answers its result.
async fn deliver(app: &TestApp, invocation: &Value) -> Value {
    let response = app
        .http
        .post(format!("{}/OnHubEvents", app.handler_url()))
        .json(invocation)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The name events carry for the hub with this host name.
fn hub_name(app: &TestApp, host: &str) -> String {
    app.emulator
        .endpoints()
        .hubs
        .iter()
        .find(|h| h.host_name == host)
        .unwrap()
        .name
        .clone()
}

/// A device registered through DPS and connected to its hub over MQTT.
async fn connected(app: &TestApp, id: &str) -> (String, DeviceConnection) {
    app.enroll(id, "contoso").await;
    let (hub, device_id) = app.register(id).await;
    let connection = app.connect(id, &hub, &device_id).await;
    (hub, connection)
}

#[tokio::test]
async fn the_dashboard_counts_a_small_fleet_and_equals_a_full_scan_after_reconcile_and_replays() {
    let app = spawn_app_with(&[]).await;
    app.enroll("waiting-1", "contoso").await;
    let xss = app
        .post(
            "/enrollments",
            &json!({ "registrationId": "xss-1", "customer": { "id": "evil", "name": "<script>alert(1)</script>" } }),
        )
        .await;
    assert_eq!(xss.status, 201, "{}", xss.text);
    app.register("xss-1").await;
    let (_, mut reporting) = connected(&app, "reporting-1").await;
    reporting
        .report(&json!({ "provisioning": { "status": "provisioned" } }))
        .await
        .unwrap();
    let (_, _silent) = connected(&app, "silent-1").await;
    let (_, mut failing) = connected(&app, "failed-1").await;
    failing
        .report(&json!({ "provisioning": { "status": "reprovisionFailed" } }))
        .await
        .unwrap();
    let (gone_hub, gone) = connected(&app, "gone-1").await;
    gone.close().await;
    // Registered through DPS; its connection events arrive late, from a backlog: it connected
    // three hours ago and dropped two hours ago (the hub agrees: it is not connected now).
    app.enroll("old-1", "contoso").await;
    let (old_hub, _) = app.register("old-1").await;
    let old_name = hub_name(&app, &old_hub);
    let backlog = connection_events(&[
        ("old-1", &old_name, true, 1, minutes_ago(180), 9001),
        ("old-1", &old_name, false, 2, minutes_ago(120), 9002),
    ]);
    deliver(&app, &backlog).await;
    // An event that can never be applied, naming a device.
    let mut malformed = connection_events(&[("silent-1", "hub-1", true, 1, minutes_ago(1), 9100)]);
    malformed["Data"]["events"] =
        json!(serde_json::to_string(&["{\"sequenceNumber\":\"not hex\"}"]).unwrap());
    assert_eq!(
        deliver(&app, &malformed).await["ReturnValue"]["deadLettered"],
        1
    );

    let page = eventually("the fleet's events to reach the dashboard", || async {
        let page = dashboard(&app).await;
        (shown(&page).stages == [7, 6, 3, 2] && figure(&page, "disconnected-count") == Some(1))
            .then_some(page)
    })
    .await;
    assert_eq!(figure(&page, "never-connected-count"), Some(1), "xss-1");
    assert_eq!(
        figure(&page, "provisioning-failed-count"),
        Some(1),
        "failed-1"
    );
    assert_eq!(figure(&page, "dead-letters-count"), Some(1));
    assert_eq!(figure(&page, "status-enrolled"), Some(1), "waiting-1");
    assert!(
        page.contains(r#"<tr data-device="old-1">"#),
        "the long-gone device is listed"
    );
    assert!(
        !page.contains(r#"<tr data-device="gone-1">"#),
        "a device gone for seconds is under the hour"
    );
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !page.contains("<script"));
    assert!(
        page.contains(r#"href="/api/devices/silent-1""#),
        "the dead letter links to its device"
    );
    assert_eq!(shown(&page), full_scan(&app).await);

    // Delivered again, twice, in reverse: nothing changes.
    let mut reversed = backlog.clone();
    for field in [
        "SequenceNumberArray",
        "EnqueuedTimeUtcArray",
        "PropertiesArray",
        "SystemPropertiesArray",
    ] {
        let mut values: Vec<Value> =
            serde_json::from_str(reversed["Metadata"][field].as_str().unwrap()).unwrap();
        values.reverse();
        reversed["Metadata"][field] = json!(serde_json::to_string(&values).unwrap());
    }
    let mut bodies: Vec<String> =
        serde_json::from_str(reversed["Data"]["events"].as_str().unwrap()).unwrap();
    bodies.reverse();
    reversed["Data"]["events"] = json!(serde_json::to_string(&bodies).unwrap());
    for invocation in [&backlog, &reversed] {
        assert_eq!(deliver(&app, invocation).await["ReturnValue"]["changed"], 0);
    }
    let replayed = dashboard(&app).await;
    assert_eq!(shown(&replayed), shown(&page));
    assert_eq!(shown(&replayed), full_scan(&app).await);

    // A connect the hub never saw (a stray event) makes gone-1 look connected…
    let gone_name = hub_name(&app, &gone_hub);
    let stray = connection_events(&[(
        "gone-1",
        &gone_name,
        true,
        u64::MAX >> 1,
        minutes_ago(0),
        9200,
    )]);
    assert_eq!(deliver(&app, &stray).await["ReturnValue"]["changed"], 1);
    let stray_page = dashboard(&app).await;
    assert_eq!(shown(&stray_page).stages[2], 4);
    assert_eq!(shown(&stray_page), full_scan(&app).await);
    // …until Reconcile asks the hub and repairs the record.
    assert_eq!(app.run_function("Reconcile").await, 202);
    let repaired = eventually("Reconcile to repair gone-1's connection", || async {
        let page = dashboard(&app).await;
        (shown(&page).stages[2] == 3).then_some(page)
    })
    .await;
    assert_eq!(shown(&repaired), shown(&page));
    assert_eq!(shown(&repaired), full_scan(&app).await);
    reporting.close().await;
    failing.close().await;
}

#[tokio::test]
async fn the_dashboard_opens_in_chromium_with_the_key_in_the_address_and_links_to_records() {
    let logs = LogCapture::default();
    let _capture = logs.install();
    let app = spawn_app_with(&[("RUST_LOG", "trace")]).await;
    let reader_key = app.create_reader_key().await;
    app.enroll("waiting-1", "contoso").await;
    let xss = app
        .post(
            "/enrollments",
            &json!({ "registrationId": "xss-1", "customer": { "id": "evil", "name": "<script>alert(1)</script>" } }),
        )
        .await;
    assert_eq!(xss.status, 201, "{}", xss.text);
    app.register("xss-1").await;
    let (_, mut device) = connected(&app, "reporting-1").await;
    device
        .report(&json!({ "provisioning": { "status": "provisioned" } }))
        .await
        .unwrap();
    eventually("the report to be recorded", || async {
        (figure(&dashboard(&app).await, "stage-reporting") == Some(1)).then_some(())
    })
    .await;

    let browser = Browser::start("dashboard").await;
    browser.resize(1280, 1900).await;
    browser
        .open(&format!("{}/dashboard?code={reader_key}", app.base_url))
        .await;
    assert_eq!(browser.text("#stage-enrolled").await, "3");
    assert_eq!(browser.text("#stage-registered").await, "2");
    assert_eq!(browser.text("#stage-connected").await, "1");
    assert_eq!(browser.text("#stage-reporting").await, "1");
    assert_eq!(browser.text("#never-connected-count").await, "1");
    assert_eq!(
        browser
            .text("#never-connected tr[data-device='xss-1'] .customer")
            .await,
        "evil · <script>alert(1)</script>",
        "the customer's name is shown as the text it is"
    );
    browser.screenshot("dashboard").await;
    let href = browser
        .attribute("#never-connected a.record", "href")
        .await
        .unwrap();
    assert!(
        href.ends_with(&format!("/api/devices/xss-1?code={reader_key}")),
        "{href}"
    );
    browser.click("#never-connected a.record").await;
    // Chromium shows a JSON answer as its text in a <pre>.
    let record: Value = serde_json::from_str(&browser.text("pre").await).unwrap();
    assert_eq!(record["deviceId"], "xss-1", "the link opens the record");
    assert_eq!(record["status"], "assigned");
    browser.screenshot("record").await;
    browser.close().await;
    device.close().await;

    let text = logs.text();
    assert!(
        text.contains(" handler: "),
        "the capture holds the handler's lines"
    );
    let secrets = [
        ("the reader key".to_owned(), reader_key),
        ("the function key".to_owned(), app.function_key.clone()),
    ];
    let leaks = find_secrets(&text, &secrets);
    assert!(leaks.is_empty(), "keys in the logs: {leaks:#?}");
}

#[tokio::test]
async fn a_record_written_before_summaries_existed_is_summarised_from_its_record() {
    use azure_data_tables::clients::TableServiceClientBuilder;
    use azure_data_tables::prelude::IfMatchCondition;
    use handler::storage::Registry;
    let storage =
        iot_credentials::StorageConnectionString::development(&crate::helpers::azurite_endpoint());
    let prefix = format!("T{}", uuid::Uuid::new_v4().simple());
    let registry = handler::storage::tables::TableRegistry::new(
        &storage,
        &prefix,
        handler::storage::tables::http_client(),
    );
    let record: handler::domain::DeviceRecord = serde_json::from_value(json!({
        "registrationId": "Old-Row-1", "deviceId": "Old-Row-1",
        "customer": { "id": "contoso", "name": "Contoso" },
        "enabled": true, "sync": "complete",
        "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z",
    }))
    .unwrap();
    registry.insert(&record).await.unwrap();
    // Rewrite the row as an older handler wrote it: everything but the Summary column.
    let credentials = azure_storage::StorageCredentials::access_key(
        storage.account_name().to_owned(),
        storage.account_key().expose_base64().to_owned(),
    );
    let location = azure_storage::CloudLocation::Custom {
        account: storage.account_name().to_owned(),
        uri: storage.table_endpoint().to_owned(),
    };
    let entity = TableServiceClientBuilder::with_location(location, credentials)
        .build()
        .table_client(format!("{prefix}Devices"))
        .partition_key_client("old-row-1")
        .entity_client("record");
    let mut row = entity.get::<Value>().await.unwrap().entity;
    let fields = row.as_object_mut().unwrap();
    assert!(
        fields.remove("Summary").is_some(),
        "new rows carry a summary"
    );
    fields.retain(|name, _| !name.contains("odata") && name != "Timestamp");
    entity
        .update(&row, IfMatchCondition::Any)
        .unwrap()
        .await
        .unwrap();
    assert!(entity
        .get::<Value>()
        .await
        .unwrap()
        .entity
        .get("Summary")
        .is_none());
    let page = registry.summaries(1000, None).await.unwrap();
    assert_eq!(page.items, vec![record.summary()]);
}
