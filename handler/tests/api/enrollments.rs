//! Enrollment routes: create, read, list, change, delete, provisioning codes, and every error
//! status a client can cause.

use crate::helpers::spawn_app;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn routes_need_the_function_key() {
    let app = spawn_app().await;
    let answer = app
        .send(app.http.get(format!("{}/enrollments", app.base_url)))
        .await;
    assert_eq!(answer.status, 401);
    let answer = app
        .send(app.http.get(format!(
            "{}/enrollments?code={}",
            app.base_url, app.function_key
        )))
        .await;
    assert_eq!(
        answer.status, 200,
        "the key also works as ?code=, as on Azure"
    );
}

#[tokio::test]
async fn an_enrollment_is_created_read_changed_and_deleted() {
    let app = spawn_app().await;
    let created = app.enroll("therm-001", "contoso").await;
    assert_eq!(created.headers["location"], "/api/enrollments/therm-001");
    assert_eq!(created.body["status"], "enrolled");
    assert_eq!(created.body["asset"]["attributes"]["color"], "blue");
    let etag = created.headers["etag"].to_str().unwrap().to_owned();

    let read = app.get("/enrollments/THERM-001").await;
    assert_eq!(read.status, 200, "registration ids are case-insensitive");
    assert_eq!(read.body["deviceId"], "therm-001");
    assert_eq!(read.headers["etag"].to_str().unwrap(), etag);

    let changed = app
        .patch(
            "/enrollments/therm-001",
            &json!({ "customer": { "id": "fabrikam" }, "enabled": false, "initialTwin": { "tags": { "site": null, "floor": 3 } } }),
            Some(&etag),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    assert_eq!(changed.body["status"], "disabled");
    assert_eq!(changed.body["initialTwin"]["tags"], json!({ "floor": 3 }));
    let stale = app
        .patch(
            "/enrollments/therm-001",
            &json!({ "enabled": true }),
            Some(&etag),
        )
        .await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.error_code(), "preconditionFailed");

    // A disabled enrollment is refused by DPS: the change reached DPS.
    let code = app.code("therm-001").await;
    let registrar =
        emulator::fleet::device::HttpsRegistrar::new(app.device_http.clone(), &code.endpoint);
    let credentials = emulator::fleet::device::DeviceCredentials {
        id_scope: code.id_scope,
        registration_id: code.registration_id,
        key: code.device_key,
    };
    let outcome = registrar.register(&credentials, None).await;
    assert!(
        outcome.is_err(),
        "a disabled device must not be assigned: {outcome:?}"
    );

    let deleted = app.delete("/enrollments/therm-001").await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    assert_eq!(app.get("/enrollments/therm-001").await.status, 404);
    assert_eq!(
        app.get("/enrollments/therm-001/provisioning-code")
            .await
            .status,
        404
    );
    // DPS no longer knows the device either: its key is refused.
    assert!(registrar.register(&credentials, None).await.is_err());
    app.enroll("therm-001", "contoso").await;
}

#[tokio::test]
async fn two_writers_with_the_same_etag_one_wins_the_other_gets_412() {
    let app = spawn_app().await;
    let etag = app.enroll("race-1", "contoso").await.headers["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    let (model_a, model_b) = (
        json!({ "asset": { "model": "A" } }),
        json!({ "asset": { "model": "B" } }),
    );
    let a = app.patch("/enrollments/race-1", &model_a, Some(&etag));
    let b = app.patch("/enrollments/race-1", &model_b, Some(&etag));
    let (a, b) = tokio::join!(a, b);
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 412], "{} / {}", a.text, b.text);
    let winner = if a.status == 200 { a } else { b };
    assert_eq!(
        app.get("/enrollments/race-1").await.body["asset"]["model"],
        winner.body["asset"]["model"]
    );
}

#[tokio::test]
async fn listing_filters_and_pages_with_continuation_tokens() {
    let app = spawn_app().await;
    for i in 0..7 {
        app.enroll(&format!("page-{i}"), "contoso").await;
    }
    for i in 0..3 {
        app.enroll(&format!("other-{i}"), "fabrikam").await;
    }
    for (query, expected) in [
        ("customer=contoso&pageSize=3", 7),
        ("pageSize=4", 10),
        ("status=enrolled&pageSize=2", 10),
        ("customer=fabrikam", 3),
    ] {
        let mut seen = Vec::new();
        let mut pages = 0;
        let mut path = format!("/enrollments?{query}");
        loop {
            let page = app.get(&path).await;
            assert_eq!(page.status, 200, "{}", page.text);
            pages += 1;
            seen.extend(
                page.body["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["registrationId"].as_str().unwrap().to_owned()),
            );
            match page.body["continuationToken"].as_str() {
                Some(token) => path = format!("/enrollments?{query}&continuationToken={token}"),
                None => break,
            }
            assert!(pages < 20, "paging does not end");
        }
        let unique: std::collections::BTreeSet<_> = seen.iter().collect();
        assert_eq!(
            (seen.len(), unique.len()),
            (expected, expected),
            "{query}: {seen:?}"
        );
        if query.contains("pageSize=3") {
            assert!(pages >= 3, "{query} came in {pages} pages");
        }
    }
    let none = app.get("/enrollments?status=assigned").await;
    assert_eq!(none.body["items"], json!([]));
}

#[tokio::test]
async fn client_mistakes_get_json_errors_with_the_right_status() {
    let app = spawn_app().await;
    app.enroll("taken", "contoso").await;
    let big = "x".repeat(100 * 1024);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (app.request(Method::POST, "/enrollments").json(&json!({ "registrationId": "bad id", "customer": { "id": "c" } })), 400, "invalidRequest"),
        (app.request(Method::POST, "/enrollments").json(&json!({ "registrationId": "x", "customer": { "id": "c" }, "typo": 1 })), 400, "invalidRequest"),
        (app.request(Method::POST, "/enrollments").json(&json!({ "registrationId": "x", "customer": { "id": "c" }, "iotHub": "nowhere.example" })), 400, "invalidRequest"),
        (app.request(Method::POST, "/enrollments").header("content-type", "application/json").body("{"), 400, "invalidRequest"),
        (app.request(Method::POST, "/enrollments").header("content-type", "text/plain").body("hello"), 415, "unsupportedMediaType"),
        (app.request(Method::POST, "/enrollments").json(&json!({ "registrationId": "x", "customer": { "id": "c" }, "asset": { "model": big } })), 413, "payloadTooLarge"),
        (app.request(Method::POST, "/enrollments").json(&json!({ "registrationId": "taken", "customer": { "id": "c" } })), 409, "alreadyEnrolled"),
        (app.request(Method::POST, "/enrollments").json(&json!({ "registrationId": "y", "deviceId": "taken", "customer": { "id": "c" } })), 409, "deviceIdTaken"),
        (app.request(Method::GET, "/enrollments/nobody"), 404, "notFound"),
        (app.request(Method::GET, "/enrollments?status=sleepy"), 400, "invalidRequest"),
        (app.request(Method::GET, "/enrollments?continuationToken=not-a-token"), 400, "invalidRequest"),
        (app.request(Method::PATCH, "/enrollments/taken").json(&json!({ "deviceId": "new" })), 400, "invalidRequest"),
        (app.request(Method::DELETE, "/enrollments/taken").header("if-match", "W/\"stale\""), 412, "preconditionFailed"),
    ];
    for (request, status, code) in cases {
        let answer = app.send(request).await;
        assert_eq!(
            (answer.status, answer.error_code()),
            (status, code),
            "{}",
            answer.text
        );
        assert!(!answer.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty());
    }
    // Nothing above changed anything.
    let all = app.get("/enrollments").await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(app.get("/enrollments/x").await.status, 404);
}

#[tokio::test]
async fn the_provisioning_code_holds_what_the_device_needs_and_is_never_listed() {
    let app = spawn_app().await;
    app.enroll("coded-1", "contoso").await;
    let answer = app.get("/enrollments/coded-1/provisioning-code").await;
    assert_eq!(answer.headers["cache-control"], "no-store");
    assert!(answer.body["qrSvg"].as_str().unwrap().contains("<svg"));
    let code = app.code("coded-1").await;
    let endpoints = app.emulator.endpoints();
    assert_eq!(code.id_scope, endpoints.dps.id_scope);
    assert_eq!(code.endpoint, endpoints.dps.device_endpoint);
    // The key is the one DPS checks: the device registers with it.
    let (hub, device_id) = app.register("coded-1").await;
    assert!(endpoints.hubs.iter().any(|h| h.host_name == hub));
    assert_eq!(device_id, "coded-1");
    let key = code.device_key.expose_base64().to_owned();
    for path in [
        "/enrollments",
        "/enrollments/coded-1",
        "/devices",
        "/devices/coded-1",
    ] {
        assert!(
            !app.get(path).await.text.contains(&key),
            "{path} shows the key"
        );
    }
    let svg = app
        .get("/enrollments/coded-1/provisioning-code?format=svg")
        .await;
    assert_eq!(svg.headers["content-type"], "image/svg+xml");
}

#[tokio::test]
async fn the_openapi_document_is_served() {
    let app = spawn_app().await;
    let answer = app.get("/openapi.json").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["openapi"], "3.0.3");
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(answer.body, file);
}
