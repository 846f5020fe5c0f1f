//! Device routes: the record after the device registered, desired properties and direct methods
//! through the hub, and the hub identity's removal with the enrollment.

use crate::helpers::spawn_app;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn a_registered_device_is_found_with_its_hub_and_can_be_listed_by_hub() {
    let app = spawn_app().await;
    app.enroll("dev-a", "contoso").await;
    let before = app.get("/devices/dev-a").await;
    assert_eq!(before.status, 200, "{}", before.text);
    assert_eq!(before.body["status"], "enrolled");
    assert_eq!(before.body["hub"], serde_json::Value::Null);
    let (hub, _) = app.register("dev-a").await;
    let after = app.get("/devices/dev-a?refresh=true").await;
    assert_eq!(after.body["status"], "assigned", "{}", after.text);
    assert_eq!(after.body["hub"], hub);
    assert_eq!(after.body["registration"]["substatus"], "initialAssignment");
    let by_hub = app.get(&format!("/devices?hub={hub}")).await;
    assert_eq!(
        by_hub.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        by_hub.text
    );
    assert_eq!(
        app.get("/devices?status=assigned").await.body["items"][0]["deviceId"],
        "dev-a"
    );
    assert_eq!(app.get("/devices/nobody").await.status, 404);
    assert_eq!(app.get("/devices/dev-a?refresh=perhaps").await.status, 400);
}

#[tokio::test]
async fn a_chosen_device_id_and_hub_are_what_dps_assigns() {
    let app = spawn_app().await;
    let hub = app.emulator.endpoints().hubs[1].host_name.clone();
    let answer = app
        .post("/enrollments", &json!({ "registrationId": "pinned", "deviceId": "pinned-device", "customer": { "id": "c" }, "iotHub": hub }))
        .await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    let (assigned, device_id) = app.register("pinned").await;
    assert_eq!(
        (assigned.as_str(), device_id.as_str()),
        (hub.as_str(), "pinned-device")
    );
    let device = app.get("/devices/pinned-device?refresh=true").await;
    assert_eq!(
        (
            device.body["registrationId"].as_str(),
            device.body["hub"].as_str()
        ),
        (Some("pinned"), Some(hub.as_str()))
    );
}

#[tokio::test]
async fn desired_properties_and_commands_reach_the_connected_device() {
    let app = spawn_app().await;
    app.enroll("live-1", "contoso").await;
    let not_yet = app
        .post("/devices/live-1/commands/reboot", &json!({}))
        .await;
    assert_eq!(
        (not_yet.status, not_yet.error_code()),
        (409, "deviceNotAssigned"),
        "{}",
        not_yet.text
    );
    let (hub, device_id) = app.register("live-1").await;
    app.get("/devices/live-1?refresh=true").await;

    let offline = app
        .post(
            "/devices/live-1/commands/reboot",
            &json!({ "payload": { "delay": 1 } }),
        )
        .await;
    assert_eq!(
        (offline.status, offline.error_code()),
        (409, "deviceOffline"),
        "{}",
        offline.text
    );

    let mut device = app.connect("live-1", &hub, &device_id).await;
    let desired = app
        .patch(
            "/devices/live-1/desired",
            &json!({ "interval": 5, "mode": "eco" }),
            None,
        )
        .await;
    assert_eq!(desired.status, 200, "{}", desired.text);
    assert_eq!(desired.body["desired"]["interval"], 5);
    let twin = device.get_twin().await.unwrap();
    assert_eq!(twin["desired"]["mode"], "eco");
    assert_eq!(
        twin["desired"]["interval"], 5,
        "the enrollment's initial twin was replaced by the update"
    );

    device.subscribe_methods().await.unwrap();
    let device_side = tokio::spawn(async move {
        let (name, rid, payload) = device.next_method().await.unwrap();
        let request: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        device
            .answer_method(
                &rid,
                200,
                &json!({ "method": name, "delay": request["delay"] }),
            )
            .await
            .unwrap();
        // The second call is left unanswered.
        let _ = device.next_method().await.unwrap();
        device
    });
    let answer = app
        .post(
            "/devices/live-1/commands/reboot",
            &json!({ "payload": { "delay": 3 }, "timeoutSeconds": 10 }),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.body,
        json!({ "status": 200, "payload": { "method": "reboot", "delay": 3 } })
    );
    let timeout = app
        .post(
            "/devices/live-1/commands/hang",
            &json!({ "timeoutSeconds": 5 }),
        )
        .await;
    assert_eq!(
        (timeout.status, timeout.error_code()),
        (504, "deviceTimeout"),
        "{}",
        timeout.text
    );
    let device = device_side.await.unwrap();

    let bad = app
        .send(
            app.request(Method::PATCH, "/devices/live-1/desired")
                .json(&json!(["not", "an", "object"])),
        )
        .await;
    assert_eq!(bad.status, 400);
    let bad = app
        .post(
            "/devices/live-1/commands/reboot",
            &json!({ "timeoutSeconds": 1000 }),
        )
        .await;
    assert_eq!(bad.status, 400);

    // Deleting the enrollment removes the hub identity: the device is cut off for good.
    assert_eq!(app.delete("/enrollments/live-1").await.status, 204);
    device.close().await;
    let hub_endpoint = app
        .emulator
        .endpoints()
        .hubs
        .iter()
        .find(|h| h.host_name == hub)
        .unwrap()
        .clone();
    let code_gone = app.get("/enrollments/live-1/provisioning-code").await;
    assert_eq!(code_gone.status, 404);
    let hub_device = app
        .send(
            app.device_http
                .get(format!(
                    "https://{}/devices/{device_id}?api-version=2021-04-12",
                    hub_connection_host(&hub_endpoint.connection_string)
                ))
                .header("Authorization", hub_token(&hub_endpoint.connection_string)),
        )
        .await;
    assert_eq!(
        hub_device.status, 404,
        "the hub identity is gone: {}",
        hub_device.text
    );
}

fn hub_connection_host(connection: &str) -> String {
    iot_credentials::ServiceConnectionString::parse(connection)
        .unwrap()
        .host_name()
        .to_owned()
}

fn hub_token(connection: &str) -> String {
    let connection = iot_credentials::ServiceConnectionString::parse(connection).unwrap();
    connection
        .sas_token(iot_credentials::sas::unix_now() + 600)
        .expose()
        .to_owned()
}
