//! Key scopes through the Functions host stand-in: the reader key (a function key of the
//! read-only functions, made as `make up` makes it) reads enrollments and devices and opens
//! nothing that reveals a key, changes anything or drives a device.

use crate::helpers::spawn_app;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn a_reader_key_reads_but_cannot_take_keys_change_anything_or_drive_devices() {
    let app = spawn_app().await;
    app.enroll("reader-001", "contoso").await;
    let reader = app.create_reader_key().await;
    let with_reader = |method: Method, path: &str| {
        app.http
            .request(method, format!("{}{path}", app.base_url))
            .header("x-functions-key", &reader)
    };

    for path in [
        "/enrollments",
        "/enrollments/reader-001",
        "/devices",
        "/devices/reader-001",
        "/devices/reader-001/history",
        "/openapi.json",
    ] {
        let read = app.send(with_reader(Method::GET, path)).await;
        assert_eq!(
            read.status, 200,
            "GET {path} with the reader key: {}",
            read.text
        );
    }
    let listed = app.send(with_reader(Method::GET, "/enrollments")).await;
    assert!(
        listed.text.contains("reader-001"),
        "the reader sees the enrollment: {}",
        listed.text
    );

    let enrollment = json!({
        "registrationId": "reader-002",
        "customer": { "id": "contoso", "name": "Contoso" },
        "asset": { "serialNumber": "SN-2", "model": "T-100" },
    });
    let refused = [
        with_reader(Method::GET, "/enrollments/reader-001/provisioning-code"),
        with_reader(Method::GET, "/enrollments/reader-001/provisioning-code?format=svg"),
        with_reader(Method::POST, "/enrollments").json(&enrollment),
        with_reader(Method::PATCH, "/enrollments/reader-001").json(&json!({ "enabled": false })),
        with_reader(Method::DELETE, "/enrollments/reader-001"),
        with_reader(Method::POST, "/enrollments/import")
            .header("content-type", "text/csv")
            .body("registrationId,customerId,customerName,serialNumber,model\nreader-003,contoso,Contoso,SN-3,T-100\n"),
        with_reader(Method::PATCH, "/devices/reader-001/desired").json(&json!({ "interval": 5 })),
        with_reader(Method::POST, "/devices/reader-001/commands/Reprovision").json(&json!({})),
        with_reader(Method::POST, "/enrollments/reader-001/rotate-key"),
    ];
    for request in refused {
        let description = format!(
            "{:?}",
            request.try_clone().unwrap().build().unwrap().url().path()
        );
        let answer = app.send(request).await;
        assert_eq!(answer.status, 401, "{description}: {}", answer.text);
        assert_eq!(answer.error_code(), "Unauthorized");
        assert!(
            !answer.text.contains("SharedAccessKey") && !answer.text.contains("qrSvg"),
            "{description} revealed something: {}",
            answer.text
        );
    }
    // The admin API is the master key's alone.
    let base = app.base_url.trim_end_matches("/api");
    let keys = app
        .send(
            app.http
                .get(format!("{base}/admin/functions/Enrollments/keys"))
                .header("x-functions-key", &reader),
        )
        .await;
    assert_eq!(keys.status, 401);

    // Nothing the refused calls asked for happened, and the host key still does it all.
    let still = app.get("/enrollments/reader-001").await;
    assert_eq!(still.status, 200);
    assert_eq!(
        still.body["status"], "enrolled",
        "the PATCH was not applied"
    );
    assert_eq!(app.get("/enrollments/reader-002").await.status, 404);
    assert_eq!(app.get("/enrollments/reader-003").await.status, 404);
    let code = app.get("/enrollments/reader-001/provisioning-code").await;
    assert_eq!(
        code.status, 200,
        "the function key opens the provisioning code"
    );
}
