//! When DPS or storage fail: 502 for what an operator must fix, 503 with Retry-After for what
//! time may fix, and a record that says a change is pending rather than a silent drift.

use crate::helpers::{azurite_endpoint, spawn_app_with};
use serde_json::json;

const DEV_DPS_KEY: &str = "RW11bGF0ZWQgRFBTIHNlcnZpY2Uga2V5OyBkZXZlbG9wbWVudCB1c2Ugb25seSEhISE=";

#[tokio::test]
async fn wrong_dps_credentials_are_a_502_and_the_intent_waits_for_repair() {
    let wrong = "HostName={dps.deviceEndpoint};SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=d3Jvbmcga2V5IGZvciB0aGUgc2VydmljZSBwb2xpY3kh";
    let app = spawn_app_with(&[("DPS_SERVICE_CONNECTION_STRING", wrong)]).await;
    let answer = app
        .post(
            "/enrollments",
            &json!({ "registrationId": "d1", "customer": { "id": "c" } }),
        )
        .await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (502, "dependencyFailed"),
        "{}",
        answer.text
    );
    assert!(!answer.text.contains("d3Jvbmc"), "no key in answers");
    let record = app.get("/enrollments/d1").await;
    assert_eq!(
        record.body["pendingChange"], "create",
        "the intent is kept for repair: {}",
        record.text
    );
}

#[tokio::test]
async fn an_unreachable_dps_is_a_503_with_retry_after_and_the_record_shows_it_pending() {
    let dead = format!("HostName=127.0.0.1:1;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey={DEV_DPS_KEY}");
    let app = spawn_app_with(&[("DPS_SERVICE_CONNECTION_STRING", dead.as_str())]).await;
    let answer = app
        .post(
            "/enrollments",
            &json!({ "registrationId": "d1", "customer": { "id": "c" } }),
        )
        .await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (503, "dependencyUnavailable"),
        "{}",
        answer.text
    );
    assert!(answer.headers.contains_key("retry-after"));
    let record = app.get("/enrollments/d1").await;
    assert_eq!(
        (record.status, record.body["status"].as_str()),
        (200, Some("pending")),
        "{}",
        record.text
    );
    let pending = app.get("/enrollments?status=pending").await;
    assert_eq!(pending.body["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn unreachable_storage_is_a_503() {
    let _ = azurite_endpoint();
    let storage = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;TableEndpoint=http://127.0.0.1:1/devstoreaccount1";
    let app = spawn_app_with(&[("AzureWebJobsStorage", storage)]).await;
    let answer = app.get("/enrollments").await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (503, "dependencyUnavailable"),
        "{}",
        answer.text
    );
    assert!(answer.headers.contains_key("retry-after"));
}
