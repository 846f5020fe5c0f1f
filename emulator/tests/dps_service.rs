//! The DPS service API: enrollments, groups and registration records, as a backend uses them.
// In a test crate a panic, with the failing call's message, is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use iot_credentials::sas::unix_now;
use iot_credentials::{SasToken, SharedAccessKey};
use reqwest::Method;
use serde_json::{json, Value};
use support::TestEmulator;

/// The etag DPS writes: base64 of a quoted GUID (`IjBhMDBi…MDAwMCI=`).
fn is_dps_etag(etag: &Value) -> bool {
    use base64::Engine;
    etag.as_str()
        .and_then(|e| base64::engine::general_purpose::STANDARD.decode(e).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .is_some_and(|text| text.len() > 2 && text.starts_with('"') && text.ends_with('"'))
}

#[tokio::test]
async fn a_put_answers_generated_keys_and_get_leaves_the_symmetric_key_out() {
    let emu = TestEmulator::start().await;
    let created = emu
        .service_call(
            Method::PUT,
            "enrollments/sensor-01",
            Some(&json!({
                "registrationId": "sensor-01",
                "attestation": { "type": "symmetricKey" },
                "initialTwin": { "tags": { "customer": "contoso" } },
            })),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert_eq!(
        created.headers["content-type"],
        "application/json; charset=utf-8"
    );
    let generated = created.body["attestation"]["symmetricKey"].clone();
    for field in ["primaryKey", "secondaryKey"] {
        let key = generated[field].as_str().expect("PUT answers the keys");
        assert_eq!(
            SharedAccessKey::from_base64(key).unwrap().len(),
            64,
            "DPS generates 64-byte keys"
        );
    }
    assert_ne!(generated["primaryKey"], generated["secondaryKey"]);
    assert_eq!(
        created.body["provisioningStatus"],
        Value::Null,
        "provisioningStatus is kept as given (none) and always present"
    );
    assert!(created.body.get("provisioningStatus").is_some());
    assert!(created.body.get("registrationState").is_none());
    assert!(
        created.body.get("reprovisionPolicy").is_none(),
        "no policy is invented"
    );
    assert!(
        is_dps_etag(&created.body["etag"]),
        "{}",
        created.body["etag"]
    );
    assert!(created.body["createdDateTimeUtc"].is_string());

    let fetched = emu
        .service_call(Method::GET, "enrollments/SENSOR-01", None)
        .await;
    assert_eq!(fetched.status, 200, "ids are case-insensitive");
    assert_eq!(
        fetched.body["attestation"],
        json!({ "type": "symmetricKey" }),
        "GET leaves the symmetricKey member out"
    );
    assert_eq!(
        fetched.body["registrationState"],
        json!({ "registrationId": "sensor-01", "status": "unassigned" })
    );
    assert_eq!(fetched.body["initialTwin"]["tags"]["customer"], "contoso");
    assert_eq!(fetched.body["etag"], created.body["etag"]);

    let attestation = emu
        .service_call(
            Method::POST,
            "enrollments/sensor-01/attestationmechanism",
            None,
        )
        .await;
    assert_eq!(attestation.status, 200);
    for field in ["primaryKey", "secondaryKey"] {
        let key = attestation.body["symmetricKey"][field]
            .as_str()
            .expect("key present");
        assert_eq!(
            SharedAccessKey::from_base64(key).unwrap().len(),
            64,
            "DPS generates 64-byte keys"
        );
    }
    assert_eq!(
        attestation.body["symmetricKey"], generated,
        "the PUT answered the keys DPS keeps"
    );
}

#[tokio::test]
async fn a_put_in_the_python_sdks_shape_echoes_given_keys_and_drops_nulls() {
    // The body azure-iot-deviceprovisioning sends: every optional member present, most null.
    let emu = TestEmulator::start().await;
    let (primary, secondary) = (SharedAccessKey::generate(32), SharedAccessKey::generate(32));
    let body = json!({
        "registrationId": "sym-given",
        "attestation": { "type": "symmetricKey", "symmetricKey": {
            "primaryKey": primary.expose_base64(), "secondaryKey": secondary.expose_base64() } },
        "allocationPolicy": "geoLatency",
        "capabilities": null,
        "reprovisionPolicy": { "migrateDeviceData": true, "updateHubAssignment": true },
        "customAllocationDefinition": null,
        "provisioningStatus": null,
        "deviceId": "sym-device",
        "optionalDeviceInformation": null,
        "iotHubs": null,
        "iotHubHostName": null,
        "initialTwin": { "properties": { "desired": { "key": "value" } } },
    });
    let created = emu
        .service_call(Method::PUT, "enrollments/sym-given", Some(&body))
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let mut members: Vec<&str> = created
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    members.sort_unstable();
    assert_eq!(
        members,
        [
            "allocationPolicy",
            "attestation",
            "createdDateTimeUtc",
            "deviceId",
            "etag",
            "initialTwin",
            "lastUpdatedDateTimeUtc",
            "provisioningStatus",
            "registrationId",
            "reprovisionPolicy",
        ],
        "null members are left out, except provisioningStatus: {}",
        created.body
    );
    assert_eq!(
        created.body["attestation"]["symmetricKey"],
        json!({ "primaryKey": primary.expose_base64(), "secondaryKey": secondary.expose_base64() })
    );
    assert_eq!(created.body["provisioningStatus"], Value::Null);

    // An update with If-Match answers the keys too, and the new status.
    let mut update = body.clone();
    update["provisioningStatus"] = json!("disabled");
    let token = emu.service_token();
    let updated = emu
        .http
        .put(emu.dps_url("enrollments/sym-given?api-version=2021-10-01"))
        .header("Authorization", &token)
        .header("If-Match", created.body["etag"].as_str().unwrap())
        .json(&update)
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    let updated: Value = updated.json().await.unwrap();
    assert_eq!(updated["provisioningStatus"], "disabled");
    assert_eq!(
        updated["attestation"]["symmetricKey"]["primaryKey"],
        primary.expose_base64()
    );
    assert_ne!(updated["etag"], created.body["etag"]);
    assert_eq!(
        updated["createdDateTimeUtc"],
        created.body["createdDateTimeUtc"]
    );
}

#[tokio::test]
async fn writing_back_a_record_read_without_keys_keeps_its_keys() {
    let emu = TestEmulator::start().await;
    let device = emu.enroll("keeps-keys", json!({})).await;
    let mut record = emu
        .service_call(Method::GET, "enrollments/keeps-keys", None)
        .await
        .body;
    record["initialTwin"] = json!({ "tags": { "floor": 3 } });
    let updated = emu
        .service_call(Method::PUT, "enrollments/keeps-keys", Some(&record))
        .await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    let key = emu.service.primary_key("keeps-keys").await.unwrap();
    assert_eq!(key, device.key);
}

#[tokio::test]
async fn a_stale_etag_is_refused_with_412_and_changes_nothing() {
    let emu = TestEmulator::start().await;
    emu.enroll("etagged", json!({})).await;
    let first = emu
        .service_call(Method::GET, "enrollments/etagged", None)
        .await
        .body;
    let etag = first["etag"].as_str().unwrap().to_owned();

    // A concurrent writer changes the record.
    let mut other = first.clone();
    other["deviceId"] = json!("renamed");
    assert_eq!(
        emu.service_call(Method::PUT, "enrollments/etagged", Some(&other))
            .await
            .status,
        200
    );

    let token = emu.service_token();
    let mut mine = first.clone();
    mine["deviceId"] = json!("mine");
    let stale = emu
        .http
        .put(emu.dps_url("enrollments/etagged?api-version=2021-10-01"))
        .header("Authorization", &token)
        .header("If-Match", &etag)
        .json(&mine)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);
    let body: Value = stale.json().await.unwrap();
    assert_eq!(body["errorCode"], 412002);
    let now = emu
        .service_call(Method::GET, "enrollments/etagged", None)
        .await
        .body;
    assert_eq!(now["deviceId"], "renamed");

    let stale_delete = emu
        .http
        .delete(emu.dps_url("enrollments/etagged?api-version=2021-10-01"))
        .header("Authorization", &token)
        .header("If-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(stale_delete.status(), 412);
    let fresh_delete = emu
        .http
        .delete(emu.dps_url("enrollments/etagged?api-version=2021-10-01"))
        .header("Authorization", &token)
        .header("If-Match", now["etag"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(fresh_delete.status(), 204);
    assert_eq!(
        emu.service_call(Method::GET, "enrollments/etagged", None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn queries_page_through_every_enrollment_with_continuation_tokens() {
    let emu = TestEmulator::start().await;
    for batch in 0..3 {
        let items: Vec<Value> = (0..10)
            .map(|i| json!({ "registrationId": format!("paged-{batch}{i}"), "attestation": { "type": "symmetricKey" } }))
            .collect();
        let answer = emu
            .service_call(
                Method::POST,
                "enrollments",
                Some(&json!({ "mode": "create", "enrollments": items })),
            )
            .await;
        assert_eq!(answer.body["isSuccessful"], true, "{}", answer.body);
    }
    let token = emu.service_token();
    let mut seen = Vec::new();
    let mut continuation: Option<String> = None;
    for _ in 0..10 {
        let mut request = emu
            .http
            .post(emu.dps_url("enrollments/query?api-version=2021-10-01"))
            .header("Authorization", &token)
            .header("x-ms-max-item-count", "7")
            .json(&json!({ "query": "SELECT *" }));
        if let Some(c) = &continuation {
            request = request.header("x-ms-continuation", c);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-ms-item-type"], "Enrollment");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert!(
            response.headers().get("x-ms-max-item-count").is_none(),
            "DPS does not echo the page size"
        );
        continuation = response
            .headers()
            .get("x-ms-continuation")
            .map(|v| v.to_str().unwrap().to_owned());
        let page: Vec<Value> = response.json().await.unwrap();
        assert!(page.len() <= 7);
        assert!(
            page.iter()
                .all(|e| e["attestation"] == json!({ "type": "symmetricKey" })),
            "queries leave the symmetricKey member out"
        );
        assert!(
            page.iter().all(|e| e.get("registrationState").is_none()),
            "query items carry no registration state"
        );
        seen.extend(
            page.into_iter()
                .map(|e| e["registrationId"].as_str().unwrap().to_owned()),
        );
        if continuation.is_none() {
            break;
        }
    }
    let mut expected: Vec<String> = (0..3)
        .flat_map(|b| (0..10).map(move |i| format!("paged-{b}{i}")))
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn bulk_operations_answer_per_item_and_respect_azures_cap() {
    let emu = TestEmulator::start().await;
    emu.enroll("bulk-existing", json!({})).await;
    let answer = emu
        .service_call(Method::POST, "enrollments", Some(&json!({
            "mode": "create",
            "enrollments": [
                { "registrationId": "bulk-new", "attestation": { "type": "symmetricKey" } },
                { "registrationId": "bulk-existing", "attestation": { "type": "symmetricKey" } },
                { "registrationId": "-bad-id", "attestation": { "type": "symmetricKey" } },
                { "registrationId": "bulk-new", "attestation": { "type": "symmetricKey" } },
            ]
        })))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["isSuccessful"], false);
    let errors = answer.body["errors"].as_array().unwrap();
    let failed: Vec<(&str, u64)> = errors
        .iter()
        .map(|e| {
            (
                e["registrationId"].as_str().unwrap(),
                e["errorCode"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(failed.contains(&("bulk-existing", 409201)), "{failed:?}");
    assert!(failed.contains(&("-bad-id", 400004)), "{failed:?}");
    assert!(
        failed.contains(&("bulk-new", 409201)),
        "a repeated id in one batch conflicts: {failed:?}"
    );
    assert_eq!(errors.len(), 3);
    assert_eq!(
        emu.service_call(Method::GET, "enrollments/bulk-new", None)
            .await
            .status,
        200
    );

    let eleven: Vec<Value> = (0..11)
        .map(|i| json!({ "registrationId": format!("eleven-{i}"), "attestation": { "type": "symmetricKey" } }))
        .collect();
    let too_many = emu
        .service_call(
            Method::POST,
            "enrollments",
            Some(&json!({ "mode": "create", "enrollments": eleven })),
        )
        .await;
    assert_eq!(too_many.status, 400);
    assert_eq!(
        emu.service_call(Method::GET, "enrollments/eleven-0", None)
            .await
            .status,
        404
    );

    let deleted = emu
        .service_call(
            Method::POST,
            "enrollments",
            Some(&json!({
                "mode": "delete",
                "enrollments": [
                    { "registrationId": "bulk-new", "attestation": { "type": "symmetricKey" } },
                    { "registrationId": "never-was", "attestation": { "type": "symmetricKey" } },
                ]
            })),
        )
        .await;
    assert_eq!(deleted.body["errors"][0]["registrationId"], "never-was");
    assert_eq!(deleted.body["errors"][0]["errorCode"], 404201);
    assert_eq!(
        emu.service_call(Method::GET, "enrollments/bulk-new", None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn bulk_update_refuses_existing_records_without_an_etag_as_dps_does() {
    let emu = TestEmulator::start().await;
    let item =
        |id: &str| json!({ "registrationId": id, "attestation": { "type": "symmetricKey" } });
    let created = emu
        .service_call(
            Method::POST,
            "enrollments",
            Some(&json!({
            "mode": "create", "enrollments": [item("upd-1"), item("upd-2")] })),
        )
        .await;
    assert_eq!(created.body, json!({ "isSuccessful": true, "errors": [] }));

    let again = emu
        .service_call(
            Method::POST,
            "enrollments",
            Some(&json!({
            "mode": "update", "enrollments": [item("upd-1"), item("upd-3")] })),
        )
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(
        again.body,
        json!({ "isSuccessful": false, "errors": [
            { "registrationId": "upd-1", "errorCode": 409201, "errorStatus": "Enrollment already exists." }
        ] }),
        "the live service's answer; a new id is created"
    );
    assert_eq!(
        emu.service_call(Method::GET, "enrollments/upd-3", None)
            .await
            .status,
        200
    );

    // With the current etag the update goes through; with a stale one it is refused.
    let current = emu
        .service_call(Method::GET, "enrollments/upd-2", None)
        .await
        .body;
    let mut fresh = item("upd-2");
    fresh["etag"] = current["etag"].clone();
    fresh["deviceId"] = json!("renamed");
    let mut stale = item("upd-1");
    stale["etag"] = current["etag"].clone();
    let mixed = emu
        .service_call(
            Method::POST,
            "enrollments",
            Some(&json!({
            "mode": "update", "enrollments": [fresh, stale] })),
        )
        .await;
    assert_eq!(
        mixed.body["errors"].as_array().unwrap().len(),
        1,
        "{}",
        mixed.body
    );
    assert_eq!(mixed.body["errors"][0]["registrationId"], "upd-1");
    assert_eq!(mixed.body["errors"][0]["errorCode"], 412002);
    assert_eq!(
        emu.service_call(Method::GET, "enrollments/upd-2", None)
            .await
            .body["deviceId"],
        "renamed"
    );

    // Groups answer with their own code and words.
    let group =
        json!({ "enrollmentGroupId": "upd-group", "attestation": { "type": "symmetricKey" } });
    emu.service_call(
        Method::POST,
        "enrollmentGroups",
        Some(&json!({
        "mode": "create", "enrollmentGroups": [group.clone()] })),
    )
    .await;
    let group_again = emu
        .service_call(
            Method::POST,
            "enrollmentGroups",
            Some(&json!({
            "mode": "update", "enrollmentGroups": [group] })),
        )
        .await;
    assert_eq!(
        group_again.body["errors"],
        json!([{ "enrollmentGroupId": "upd-group", "errorCode": 409202,
                 "errorStatus": "EnrollmentGroup already exists." }])
    );
}

#[tokio::test]
async fn enrollment_groups_support_create_read_keys_query_and_delete() {
    let emu = TestEmulator::start().await;
    let group_key = SharedAccessKey::generate(64);
    let created = emu
        .service_call(Method::PUT, "enrollmentGroups/factory-batch-7", Some(&json!({
            "enrollmentGroupId": "factory-batch-7",
            "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": group_key.expose_base64() } },
        })))
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert_eq!(
        created.body["attestation"]["symmetricKey"]["primaryKey"],
        group_key.expose_base64(),
        "a group PUT answers the given key"
    );
    let generated_secondary = created.body["attestation"]["symmetricKey"]["secondaryKey"].clone();
    assert!(generated_secondary.is_string(), "and the generated one");
    assert!(created.body.get("registrationState").is_none());
    let fetched = emu
        .service_call(Method::GET, "enrollmentGroups/factory-batch-7", None)
        .await;
    assert_eq!(
        fetched.body["attestation"],
        json!({ "type": "symmetricKey" })
    );
    assert!(fetched.body.get("registrationState").is_none());
    // The Node SDK writes this path in lower case.
    let keys = emu
        .service_call(
            Method::POST,
            "enrollmentgroups/factory-batch-7/attestationmechanism",
            None,
        )
        .await;
    assert_eq!(
        keys.body["symmetricKey"]["primaryKey"],
        group_key.expose_base64()
    );
    assert_eq!(
        keys.body["symmetricKey"]["secondaryKey"], generated_secondary,
        "the missing secondary key is generated, and the PUT answered it"
    );
    let listed = emu
        .service_call(
            Method::POST,
            "enrollmentGroups/query",
            Some(&json!({ "query": "*" })),
        )
        .await;
    assert_eq!(listed.headers["x-ms-item-type"], "EnrollmentGroup");
    assert_eq!(listed.body.as_array().unwrap().len(), 1);
    assert_eq!(
        listed.body[0]["attestation"],
        json!({ "type": "symmetricKey" })
    );
    assert_eq!(
        emu.service_call(Method::DELETE, "enrollmentGroups/factory-batch-7", None)
            .await
            .status,
        204
    );
    assert_eq!(
        emu.service_call(Method::GET, "enrollmentGroups/factory-batch-7", None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn service_calls_without_valid_credentials_get_401() {
    let emu = TestEmulator::start().await;
    let path = "enrollments/x?api-version=2021-10-01";
    let host = emu.running.endpoints().dps.device_endpoint.clone();
    let right_key = iot_credentials::ServiceConnectionString::parse(
        &emu.running.endpoints().dps.service_connection_string,
    )
    .unwrap()
    .key()
    .clone();
    let forged = SasToken::sign(
        &host,
        &SharedAccessKey::generate(32),
        Some("provisioningserviceowner"),
        unix_now() + 600,
    );
    let expired = SasToken::sign(
        &host,
        &right_key,
        Some("provisioningserviceowner"),
        unix_now() - 10,
    );
    let wrong_policy = SasToken::sign(&host, &right_key, Some("enrollmentread"), unix_now() + 600);
    let other_host = SasToken::sign(
        "other-dps.azure-devices-provisioning.net",
        &right_key,
        Some("provisioningserviceowner"),
        unix_now() + 600,
    );
    let cases: [(&str, Option<&str>); 6] = [
        ("missing", None),
        ("not a SAS", Some("Bearer abc")),
        ("forged", Some(forged.expose())),
        ("expired", Some(expired.expose())),
        ("wrong policy", Some(wrong_policy.expose())),
        ("other host", Some(other_host.expose())),
    ];
    for (case, auth) in cases {
        let answer = emu.send(Method::GET, path, auth, None).await;
        assert_eq!(answer.status, 401, "{case}");
        assert_eq!(answer.body["errorCode"], 401002, "{case}");
        assert_eq!(answer.headers["x-ms-error-code"], "401002", "{case}");
        assert!(answer.body["trackingId"].is_string(), "{case}");
    }
    let answer = emu
        .send(Method::GET, path, Some(expired.expose()), None)
        .await;
    assert!(answer.body["message"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn bad_input_gets_dps_shaped_errors_and_changes_nothing() {
    let emu = TestEmulator::start().await;
    let token = emu.service_token();
    let put = |path: &'static str, content_type: &'static str, body: String| {
        let token = token.clone();
        let emu = &emu;
        async move {
            emu.send(
                Method::PUT,
                path,
                Some(&token),
                Some((content_type, body.as_str())),
            )
            .await
        }
    };
    let v = "?api-version=2021-10-01";
    let cases = vec![
        ("malformed JSON", put("enrollments/bad-1?api-version=2021-10-01", "application/json", "{\"registrationId\":".into()).await, 400),
        ("id mismatch", put("enrollments/bad-2?api-version=2021-10-01", "application/json", json!({"registrationId": "other", "attestation": {"type": "symmetricKey"}}).to_string()).await, 400),
        ("invalid id", put("enrollments/bad_3-?api-version=2021-10-01", "application/json", json!({"registrationId": "bad_3-", "attestation": {"type": "symmetricKey"}}).to_string()).await, 400),
        ("no attestation", put("enrollments/bad-4?api-version=2021-10-01", "application/json", json!({"registrationId": "bad-4"}).to_string()).await, 400),
        ("short key", put("enrollments/bad-5?api-version=2021-10-01", "application/json", json!({"registrationId": "bad-5", "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "c2hvcnQ="}}}).to_string()).await, 400),
        ("unlinked hub", put("enrollments/bad-6?api-version=2021-10-01", "application/json", json!({"registrationId": "bad-6", "attestation": {"type": "symmetricKey"}, "iotHubs": ["elsewhere.azure-devices.net"]}).to_string()).await, 400),
        ("custom without webhook", put("enrollments/bad-7?api-version=2021-10-01", "application/json", json!({"registrationId": "bad-7", "attestation": {"type": "symmetricKey"}, "allocationPolicy": "custom"}).to_string()).await, 400),
        ("bad device id", put("enrollments/bad-8?api-version=2021-10-01", "application/json", json!({"registrationId": "bad-8", "deviceId": "has space", "attestation": {"type": "symmetricKey"}}).to_string()).await, 400),
        ("text body", put("enrollments/bad-9?api-version=2021-10-01", "text/plain", "hello".into()).await, 415),
        ("oversize", put("enrollments/bad-10?api-version=2021-10-01", "application/json", format!("{{\"registrationId\":\"bad-10\",\"x\":\"{}\"}}", "a".repeat(2 << 20))).await, 413),
        ("no api-version", put("enrollments/bad-11", "application/json", json!({"registrationId": "bad-11", "attestation": {"type": "symmetricKey"}}).to_string()).await, 400),
    ];
    for (case, answer, status) in cases {
        assert_eq!(answer.status, status, "{case}: {}", answer.body);
        assert!(
            answer.body["errorCode"]
                .as_u64()
                .is_some_and(|c| c / 1000 == u64::from(status)),
            "{case}: {}",
            answer.body
        );
        assert!(
            answer.body["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{case}"
        );
    }
    assert_eq!(
        emu.send(Method::GET, &format!("nowhere{v}"), Some(&token), None)
            .await
            .status,
        404
    );
    assert_eq!(
        emu.send(
            Method::PATCH,
            &format!("enrollments/x{v}"),
            Some(&token),
            None
        )
        .await
        .status,
        405
    );
    let all = emu
        .service_call(
            Method::POST,
            "enrollments/query",
            Some(&json!({ "query": "*" })),
        )
        .await;
    assert_eq!(all.body, json!([]), "nothing was created by bad requests");
}

#[tokio::test]
async fn registration_records_are_read_queried_by_group_and_deleted() {
    let emu = TestEmulator::start().await;
    let group_key = SharedAccessKey::generate(64);
    // `static` with no hub named, as the Python SDK's live test enrolls it: DPS accepts it.
    let group = emu.service_call(Method::PUT, "enrollmentGroups/line-a", Some(&json!({
        "enrollmentGroupId": "line-a",
        "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": group_key.expose_base64() } },
        "allocationPolicy": "static",
        "iotHubs": null,
    })))
    .await;
    assert_eq!(group.status, 200, "{}", group.body);
    // Before any device registers, the group's query answers an empty list to an empty body.
    let none_yet = emu
        .send(
            Method::POST,
            "registrations/line-a/query?api-version=2021-10-01",
            Some(&emu.service_token()),
            None,
        )
        .await;
    assert_eq!(none_yet.status, 200, "{}", none_yet.body);
    assert_eq!(none_yet.body, json!([]));
    for id in ["line-a-1", "line-a-2"] {
        let device = emu.device(id, iot_credentials::derive_device_key(&group_key, id));
        emu.register(&device).await.expect("group device registers");
    }
    let individual = emu.enroll("solo", json!({})).await;
    emu.register(&individual).await.unwrap();

    let record = emu
        .service_call(Method::GET, "registrations/line-a-1", None)
        .await;
    assert_eq!(record.status, 200);
    assert_eq!(record.body["status"], "assigned");
    assert_eq!(record.body["substatus"], "initialAssignment");
    assert_eq!(
        record.body["assignedHub"],
        emu.hub_host(0),
        "static with no hub named: the first linked hub"
    );
    assert_eq!(record.body["deviceId"], "line-a-1");
    assert!(is_dps_etag(&record.body["etag"]));
    assert!(record.body["createdDateTimeUtc"].is_string());
    assert!(record.body["lastUpdatedDateTimeUtc"].is_string());
    assert!(
        record.body.get("symmetricKey").is_none(),
        "the service API leaves the admitting group out: {}",
        record.body
    );

    // An enrollment GET carries the registration record once the device registered.
    let solo = emu
        .service_call(Method::GET, "enrollments/solo", None)
        .await;
    assert_eq!(solo.body["registrationState"]["status"], "assigned");
    assert_eq!(solo.body["registrationState"]["registrationId"], "solo");

    let listed = emu
        .send(
            Method::POST,
            "registrations/line-a/query?api-version=2021-10-01",
            Some(&emu.service_token()),
            None,
        )
        .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.headers["x-ms-item-type"], "DeviceRegistration");
    assert!(listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r.get("symmetricKey").is_none()));
    let ids: Vec<&str> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["registrationId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["line-a-1", "line-a-2"]);

    assert_eq!(
        emu.service_call(Method::DELETE, "registrations/line-a-1", None)
            .await
            .status,
        204
    );
    assert_eq!(
        emu.service_call(Method::GET, "registrations/line-a-1", None)
            .await
            .status,
        404
    );
    // The device stays in its hub: DPS does not deprovision hub identities.
    let hub = record.body["assignedHub"].as_str().unwrap();
    assert!(emu.hub_get(hub, "devices/line-a-1").await.is_some());

    // Deleting an individual enrollment takes its registration record with it.
    assert_eq!(
        emu.service_call(Method::DELETE, "enrollments/solo", None)
            .await
            .status,
        204
    );
    assert_eq!(
        emu.service_call(Method::GET, "registrations/solo", None)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn beyond_the_operation_rate_the_service_api_answers_429_with_retry_after() {
    let emu = TestEmulator::start_with(|config| {
        config.operation_rate = Some(emulator::dps::rate_limit::Rate {
            per_minute: 60,
            burst: 2,
        });
    })
    .await;
    let enrollment =
        json!({ "registrationId": "ops-1", "attestation": { "type": "symmetricKey" } });
    let created = emu
        .service_call(Method::PUT, "enrollments/ops-1", Some(&enrollment))
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let read = emu
        .service_call(Method::GET, "enrollments/ops-1", None)
        .await;
    assert_eq!(read.status, 200, "{}", read.body);
    // The bucket held two: the third call within the second is refused, and says when to return.
    let refused = emu
        .service_call(Method::GET, "enrollments/ops-1", None)
        .await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.body["errorCode"], 429001, "{}", refused.body);
    let wait: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    // Devices are not counted against it: the enrolled device still registers.
    let key = SharedAccessKey::from_base64(
        created.body["attestation"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let device = emu.device("ops-1", key);
    assert!(emu.register(&device).await.is_ok());
}
