//! Bulk import: a 1,000-row CRM export with bad rows mixed in, and a JSON array.

use crate::helpers::{spawn_app, spawn_app_adjusted};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn a_thousand_row_csv_enrolls_every_valid_row_and_explains_the_rest() {
    let app = spawn_app().await;
    app.enroll("crm-0007", "acme").await;
    let mut csv = String::from("Registration ID,Customer ID,Customer Name,Serial Number,Model,Enabled,tag.site,desired.interval,Warranty Until\n");
    let mut expected_invalid = 0;
    for i in 0..1000 {
        let line = match i {
            // Every 97th row has an id DPS would refuse.
            i if i % 97 == 50 => {
                expected_invalid += 1;
                format!("crm {i:04},acme,Acme,SN{i},T-100,true,berlin,30,2030-01-01\n")
            }
            // Every 151st row lacks a customer.
            i if i % 151 == 75 => {
                expected_invalid += 1;
                format!("crm-{i:04},,Acme,SN{i},T-100,true,berlin,30,2030-01-01\n")
            }
            i => format!(
                "crm-{i:04},acme,Acme,SN{i},T-100,{},berlin,30,2030-01-01\n",
                i % 2 == 0
            ),
        };
        csv.push_str(&line);
    }
    // A row repeating an earlier id.
    csv.push_str("crm-0001,acme,,,,,,,\n");
    expected_invalid += 1;
    let answer = app
        .send(
            app.request(Method::POST, "/enrollments/import")
                .header("content-type", "text/csv")
                .body(csv),
        )
        .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        &answer.text[..answer.text.len().min(500)]
    );
    let summary = &answer.body["summary"];
    assert_eq!(summary["rows"], 1001);
    assert_eq!(summary["exists"], 1, "crm-0007 was enrolled before");
    assert_eq!(summary["invalid"], expected_invalid);
    let results = answer.body["results"].as_array().unwrap();
    let failed: Vec<&serde_json::Value> =
        results.iter().filter(|r| r["result"] == "failed").collect();
    assert_eq!(summary["failed"], 0, "{failed:?}");
    assert_eq!(summary["created"], 1001 - 1 - expected_invalid);
    let bad = results.iter().find(|r| r["row"] == 51).unwrap();
    assert_eq!(bad["result"], "invalid");
    assert!(
        bad["message"].as_str().unwrap().contains("registrationId"),
        "{bad}"
    );
    assert!(results.last().unwrap()["message"]
        .as_str()
        .unwrap()
        .contains("row 2"));

    let enrolled = app.get("/enrollments/crm-0002").await;
    assert_eq!(
        enrolled.body["asset"]["attributes"]["Warranty Until"],
        "2030-01-01"
    );
    assert_eq!(
        enrolled.body["initialTwin"]["desiredProperties"]["interval"],
        30
    );
    assert_eq!(
        app.get("/enrollments/crm-0003").await.body["status"],
        "disabled"
    );
    // Every created row is in the registry: page through the customer's devices.
    let mut count = 0;
    let mut path = "/devices?customer=acme&pageSize=1000".to_owned();
    loop {
        let page = app.get(&path).await;
        count += page.body["items"].as_array().unwrap().len();
        match page.body["continuationToken"].as_str() {
            Some(token) => {
                path = format!("/devices?customer=acme&pageSize=1000&continuationToken={token}")
            }
            None => break,
        }
    }
    assert_eq!(count, summary["created"].as_u64().unwrap() as usize + 1);
    // A registered device from the import provisions like any other.
    app.register("crm-0998").await;
}

#[tokio::test]
async fn a_json_array_imports_too_and_bad_bodies_are_refused_whole() {
    let app = spawn_app().await;
    let body = json!([
        { "registrationId": "j-1", "customer": { "id": "c" } },
        { "registrationId": "j-2", "customer": { "id": "c" }, "enabled": false },
        { "registrationId": "j-3" },
    ]);
    let answer = app.post("/enrollments/import", &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(
        answer.body["summary"],
        json!({ "rows": 3, "created": 2, "exists": 0, "invalid": 1, "failed": 0 })
    );
    let again = app.post("/enrollments/import", &body).await;
    assert_eq!(again.body["summary"]["exists"], 2);
    let refused = app
        .send(
            app.request(Method::POST, "/enrollments/import")
                .header("content-type", "text/csv")
                .body("serial\n1\n"),
        )
        .await;
    assert_eq!(
        (refused.status, refused.error_code()),
        (400, "invalidRequest")
    );
    let refused = app
        .send(
            app.request(Method::POST, "/enrollments/import")
                .header("content-type", "application/xml")
                .body("<a/>"),
        )
        .await;
    assert_eq!(refused.status, 415);
}

#[tokio::test]
async fn an_import_faster_than_dps_admits_waits_out_the_throttling_and_enrolls_every_row() {
    // DPS admits one service call a second here, one at once (Azure: 1,000 a minute per unit).
    // The import's ten bulk calls, several chunks in flight, meet 429s however slow the
    // machine is: any two calls within a second of each other collide.
    let app = spawn_app_adjusted(|config| {
        config.operation_rate = Some(emulator::dps::rate_limit::Rate {
            per_minute: 60,
            burst: 1,
        });
    })
    .await;
    let mut csv = String::from("Registration ID,Customer ID,Serial Number\n");
    for i in 0..100 {
        csv.push_str(&format!("paced-{i:03},acme,SN{i}\n"));
    }
    let answer = app
        .send(
            app.request(Method::POST, "/enrollments/import")
                .header("content-type", "text/csv")
                .body(csv),
        )
        .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        &answer.text[..answer.text.len().min(500)]
    );
    let summary = &answer.body["summary"];
    assert_eq!(summary["created"], 100, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(
        app.emulator.dps().operations_throttled() > 0,
        "DPS throttled the import, which waited"
    );
    let listed = app.get("/enrollments?customer=acme&pageSize=1000").await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 100);
}
