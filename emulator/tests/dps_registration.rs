//! Device registration over HTTPS: authentication, allocation, reprovisioning, and what each
//! does to the hubs' registries.
// In a test crate a panic, with the failing call's message, is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use emulator::dps::model::{AssignedSubstatus, RegistrationStatus};
use emulator::fleet::ClientError;
use iot_credentials::sas::unix_now;
use iot_credentials::{derive_device_key, SasToken, SharedAccessKey};
use reqwest::Method;
use serde_json::{json, Value};
use support::{TestEmulator, WebhookStub};

#[tokio::test]
async fn a_device_registers_and_its_identity_appears_in_the_assigned_hub() {
    let emu = TestEmulator::start().await;
    let device = emu
        .enroll("thermo-1", json!({
            "deviceId": "thermostat-kitchen",
            "initialTwin": { "tags": { "customer": "contoso" }, "properties": { "desired": { "interval": 30 } } },
        }))
        .await;
    let state = emu.register(&device).await.expect("registration succeeds");
    assert_eq!(state.status, RegistrationStatus::Assigned);
    assert_eq!(state.substatus, Some(AssignedSubstatus::InitialAssignment));
    assert_eq!(state.device_id.as_deref(), Some("thermostat-kitchen"));
    let hub = state.assigned_hub.clone().unwrap();
    assert!([emu.hub_host(0), emu.hub_host(1)].contains(&hub));

    let identity = emu
        .hub_get(&hub, "devices/thermostat-kitchen")
        .await
        .expect("device exists in the hub");
    assert_eq!(identity["status"], "enabled");
    assert_eq!(
        identity["authentication"]["symmetricKey"]["primaryKey"],
        device.key.expose_base64()
    );
    let twin = emu.hub_get(&hub, "twins/thermostat-kitchen").await.unwrap();
    assert_eq!(twin["tags"]["customer"], "contoso");
    assert_eq!(twin["properties"]["desired"]["interval"], 30);

    let lookup = emu
        .send(
            Method::POST,
            &format!(
                "{}/registrations/thermo-1?api-version=2021-06-01",
                emu.id_scope()
            ),
            Some(device.token().expose()),
            Some(("application/json", "{\"registrationId\":\"thermo-1\"}")),
        )
        .await;
    assert_eq!(lookup.status, 200);
    assert_eq!(lookup.body["assignedHub"], hub.as_str());
}

#[tokio::test]
async fn register_answers_assigning_with_retry_after_and_the_poll_gives_the_result() {
    let emu = TestEmulator::start().await;
    let device = emu.enroll("poller", json!({})).await;
    let step = emu.registrar.start(&device, None).await.unwrap();
    assert_eq!(step.status.status, RegistrationStatus::Assigning);
    assert!(step.status.registration_state.is_none());
    let done = emu
        .registrar
        .poll(&device, &step.status.operation_id)
        .await
        .unwrap();
    assert_eq!(done.status.status, RegistrationStatus::Assigned);
    let unknown = emu.registrar.poll(&device, "4.no-such-operation").await;
    assert!(
        matches!(unknown, Err(ClientError::Refused { status: 404, .. })),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn a_wrong_key_never_gets_a_hub() {
    let emu = TestEmulator::start().await;
    emu.enroll("victim", json!({})).await;
    let impostor = emu.device("victim", SharedAccessKey::generate(64));
    let result = emu.register(&impostor).await;
    assert!(
        matches!(result, Err(ClientError::Unauthorized(_))),
        "{result:?}"
    );
    assert_eq!(
        emu.service_call(Method::GET, "registrations/victim", None)
            .await
            .status,
        404
    );
    for hub in [emu.hub_host(0), emu.hub_host(1)] {
        assert!(emu.hub_get(&hub, "devices/victim").await.is_none());
    }
    let unknown = emu.device("never-enrolled", SharedAccessKey::generate(64));
    assert!(matches!(
        emu.register(&unknown).await,
        Err(ClientError::Unauthorized(_))
    ));
}

#[tokio::test]
async fn tokens_for_another_registration_or_expired_tokens_are_refused() {
    let emu = TestEmulator::start().await;
    let device = emu.enroll("clock-skewed", json!({})).await;
    let path = format!(
        "{}/registrations/clock-skewed/register?api-version=2021-06-01",
        emu.id_scope()
    );
    let expired = SasToken::sign(
        &format!("{}/registrations/clock-skewed", emu.id_scope()),
        &device.key,
        Some("registration"),
        unix_now() - 120,
    );
    let answer = emu
        .send(
            Method::PUT,
            &path,
            Some(expired.expose()),
            Some(("application/json", "{}")),
        )
        .await;
    assert_eq!(answer.status, 401);
    assert!(
        answer.body["message"].as_str().unwrap().contains("clock"),
        "{}",
        answer.body
    );

    let elsewhere = SasToken::sign(
        &format!("{}/registrations/someone-else", emu.id_scope()),
        &device.key,
        Some("registration"),
        unix_now() + 600,
    );
    let answer = emu
        .send(
            Method::PUT,
            &path,
            Some(elsewhere.expose()),
            Some(("application/json", "{}")),
        )
        .await;
    assert_eq!(answer.status, 401);
}

#[tokio::test]
async fn a_disabled_enrollment_is_answered_disabled_and_assigns_nothing() {
    let emu = TestEmulator::start().await;
    let device = emu
        .enroll("switched-off", json!({ "provisioningStatus": "disabled" }))
        .await;
    let result = emu.register(&device).await;
    match result {
        Err(ClientError::NotAssigned { status, .. }) => assert_eq!(status, "disabled"),
        other => panic!("expected disabled, got {other:?}"),
    }
    let record = emu
        .service_call(Method::GET, "registrations/switched-off", None)
        .await;
    assert_eq!(record.body["status"], "disabled");
    for hub in [emu.hub_host(0), emu.hub_host(1)] {
        assert!(emu.hub_get(&hub, "devices/switched-off").await.is_none());
    }
}

#[tokio::test]
async fn group_devices_register_with_keys_derived_from_the_group_key() {
    let emu = TestEmulator::start().await;
    let group_key = SharedAccessKey::generate(64);
    emu.service_call(Method::PUT, "enrollmentGroups/batch-42", Some(&json!({
        "enrollmentGroupId": "batch-42",
        "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": group_key.expose_base64() } },
        "initialTwin": { "tags": { "batch": 42 } },
    })))
    .await;
    let device = emu.device("sn-0042", derive_device_key(&group_key, "sn-0042"));
    let state = emu.register(&device).await.expect("derived key accepted");
    let hub = state.assigned_hub.unwrap();
    let identity = emu.hub_get(&hub, "devices/sn-0042").await.unwrap();
    assert_eq!(
        identity["authentication"]["symmetricKey"]["primaryKey"],
        device.key.expose_base64()
    );
    assert_eq!(
        emu.hub_get(&hub, "twins/sn-0042").await.unwrap()["tags"]["batch"],
        42
    );

    // The group key itself is not a device key, and another device's derived key is refused.
    assert!(emu
        .register(&emu.device("sn-0043", group_key.clone()))
        .await
        .is_err());
    assert!(emu
        .register(&emu.device("sn-0044", derive_device_key(&group_key, "sn-0043")))
        .await
        .is_err());
}

#[tokio::test]
async fn a_disabled_individual_enrollment_blocks_a_device_its_group_would_admit() {
    let emu = TestEmulator::start().await;
    let group_key = SharedAccessKey::generate(64);
    emu.service_call(Method::PUT, "enrollmentGroups/fleet", Some(&json!({
        "enrollmentGroupId": "fleet",
        "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": group_key.expose_base64() } },
    })))
    .await;
    emu.enroll("stolen-unit", json!({ "provisioningStatus": "disabled" }))
        .await;
    let device = emu.device("stolen-unit", derive_device_key(&group_key, "stolen-unit"));
    let result = emu.register(&device).await;
    assert!(
        matches!(result, Err(ClientError::NotAssigned { ref status, .. }) if status == "disabled"),
        "{result:?}"
    );
}

#[tokio::test]
async fn static_allocation_uses_the_named_hub_and_hashing_spreads_and_sticks() {
    let emu = TestEmulator::start().await;
    let target = emu.hub_host(1);
    let device = emu
        .enroll(
            "pinned",
            json!({ "allocationPolicy": "static", "iotHubs": [target] }),
        )
        .await;
    assert_eq!(
        emu.register(&device).await.unwrap().assigned_hub.as_deref(),
        Some(target.as_str())
    );

    let mut hubs = std::collections::BTreeMap::new();
    for i in 0..24 {
        let device = emu.enroll(&format!("spread-{i}"), json!({})).await;
        let first = emu.register(&device).await.unwrap().assigned_hub.unwrap();
        let again = emu.register(&device).await.unwrap().assigned_hub.unwrap();
        assert_eq!(first, again, "hashing is deterministic");
        *hubs.entry(first).or_insert(0) += 1;
    }
    assert_eq!(
        hubs.len(),
        2,
        "24 devices over two equal hubs use both: {hubs:?}"
    );
}

#[tokio::test]
async fn custom_allocation_sends_azures_request_and_follows_the_answer() {
    let emu = TestEmulator::start().await;
    let chosen = emu.hub_host(1);
    let webhook = WebhookStub::start(200, json!({
        "iotHubHostName": chosen,
        "initialTwin": { "tags": { "tier": "gold" }, "properties": { "desired": { "mode": "eco" } } },
        "payload": { "welcome": "hello device" },
    }))
    .await;
    let device = emu
        .enroll("custom-1", json!({
            "allocationPolicy": "custom",
            "customAllocationDefinition": { "webhookUrl": webhook.url, "apiVersion": "2021-10-01" },
        }))
        .await;
    let state = emu
        .registrar
        .register(&device, Some(json!({ "model": "TX-1", "serial": "0001" })))
        .await
        .expect("webhook allocation succeeds");
    assert_eq!(state.assigned_hub.as_deref(), Some(chosen.as_str()));
    assert_eq!(state.payload, Some(json!({ "welcome": "hello device" })));
    let twin = emu.hub_get(&chosen, "twins/custom-1").await.unwrap();
    assert_eq!(twin["tags"]["tier"], "gold");
    assert_eq!(twin["properties"]["desired"]["mode"], "eco");

    let requests = webhook.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(
        request["individualEnrollment"]["registrationId"],
        "custom-1"
    );
    assert_eq!(
        request["individualEnrollment"]["attestation"],
        json!({ "type": "symmetricKey" }),
        "no keys sent to webhooks: the enrollment as GET shows it"
    );
    assert_eq!(
        request["deviceRuntimeContext"]["registrationId"],
        "custom-1"
    );
    assert_eq!(request["deviceRuntimeContext"]["payload"]["model"], "TX-1");
    assert!(request["deviceRuntimeContext"]
        .get("currentIotHubHostName")
        .is_none());
    let linked: Vec<&str> = request["linkedHubs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    assert_eq!(linked, [emu.hub_host(0), emu.hub_host(1)]);

    // A second registration tells the webhook where the device is now.
    emu.register(&device).await.unwrap();
    let second = &webhook.requests()[1];
    assert_eq!(
        second["deviceRuntimeContext"]["currentIotHubHostName"],
        chosen.as_str()
    );
    assert_eq!(
        second["deviceRuntimeContext"]["currentDeviceId"],
        "custom-1"
    );
}

#[tokio::test]
async fn a_failing_or_misbehaving_webhook_fails_the_registration_with_a_reason() {
    let emu = TestEmulator::start().await;
    let cases: [(u16, Value, &str); 3] = [
        (500, json!({}), "HTTP 500"),
        (
            200,
            json!({ "iotHubHostName": "unlinked.azure-devices.net" }),
            "not one of the linked hubs",
        ),
        (
            200,
            json!({ "unexpected": true }),
            "not an AllocationResponse",
        ),
    ];
    for (i, (status, reply, reason)) in cases.into_iter().enumerate() {
        let webhook = WebhookStub::start(status, reply).await;
        let id = format!("custom-fail-{i}");
        let device = emu
            .enroll(&id, json!({
                "allocationPolicy": "custom",
                "customAllocationDefinition": { "webhookUrl": webhook.url, "apiVersion": "2021-10-01" },
            }))
            .await;
        match emu.register(&device).await {
            Err(ClientError::NotAssigned { status, message }) => {
                assert_eq!(status, "failed");
                assert!(message.contains(reason), "{message}");
                assert!(
                    !message.contains("secret-function-key"),
                    "the webhook key leaked: {message}"
                );
            }
            other => panic!("expected a failed registration, got {other:?}"),
        }
        let record = emu
            .service_call(Method::GET, &format!("registrations/{id}"), None)
            .await;
        assert_eq!(record.body["status"], "failed");
        assert!(record.body["errorCode"].is_u64());
    }
}

#[tokio::test]
async fn reprovisioning_follows_the_enrollments_policy() {
    let emu = TestEmulator::start().await;
    let (first_hub, second_hub) = (emu.hub_host(0), emu.hub_host(1));
    let cases = [
        (
            "migrates",
            json!({ "updateHubAssignment": true, "migrateDeviceData": true }),
            AssignedSubstatus::DeviceDataMigrated,
            second_hub.clone(),
            "v1",
        ),
        (
            "resets",
            json!({ "updateHubAssignment": true, "migrateDeviceData": false }),
            AssignedSubstatus::DeviceDataReset,
            second_hub.clone(),
            "v2",
        ),
        (
            "stays",
            json!({ "updateHubAssignment": false, "migrateDeviceData": true }),
            AssignedSubstatus::ReprovisionedToInitialAssignment,
            first_hub.clone(),
            "v1",
        ),
    ];
    for (id, policy, substatus, expected_hub, expected_tag) in cases {
        let device = emu
            .enroll(
                id,
                json!({
                    "allocationPolicy": "static", "iotHubs": [first_hub],
                    "reprovisionPolicy": policy,
                    "initialTwin": { "tags": { "config": "v1" } },
                }),
            )
            .await;
        assert_eq!(
            emu.register(&device).await.unwrap().assigned_hub.as_deref(),
            Some(first_hub.as_str())
        );

        // The operator moves the enrollment to the second hub with a new initial twin.
        let mut record = emu
            .service_call(Method::GET, &format!("enrollments/{id}"), None)
            .await
            .body;
        record["iotHubs"] = json!([second_hub]);
        record["initialTwin"] = json!({ "tags": { "config": "v2" } });
        assert_eq!(
            emu.service_call(Method::PUT, &format!("enrollments/{id}"), Some(&record))
                .await
                .status,
            200
        );

        let state = emu.register(&device).await.unwrap();
        assert_eq!(state.substatus, Some(substatus), "{id}");
        assert_eq!(
            state.assigned_hub.as_deref(),
            Some(expected_hub.as_str()),
            "{id}"
        );
        let twin = emu
            .hub_get(&expected_hub, &format!("twins/{id}"))
            .await
            .expect("device in its hub");
        assert_eq!(twin["tags"]["config"], expected_tag, "{id}");
        if expected_hub != first_hub {
            assert!(
                emu.hub_get(&first_hub, &format!("devices/{id}"))
                    .await
                    .is_none(),
                "{id}: the old hub's identity is removed"
            );
        }
    }
}

#[tokio::test]
async fn beyond_the_registration_rate_dps_answers_429_with_retry_after_and_later_admits() {
    let emu = TestEmulator::start_with(|config| {
        config.registration_rate = Some(emulator::dps::rate_limit::Rate {
            per_minute: 60,
            burst: 1,
        });
    })
    .await;
    let first = emu.enroll("rate-1", json!({})).await;
    let second = emu.enroll("rate-2", json!({})).await;
    assert!(emu.register(&first).await.is_ok());
    let path = format!(
        "{}/registrations/rate-2/register?api-version=2021-06-01",
        emu.id_scope()
    );
    let token = second.token().expose().to_owned();
    let body = json!({ "registrationId": "rate-2" }).to_string();
    let register = || {
        emu.send(
            Method::PUT,
            &path,
            Some(&token),
            Some(("application/json", &body)),
        )
    };
    let refused = register().await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.headers["retry-after"], "1", "one a second refills");
    assert_eq!(refused.body["errorCode"], 429001);
    assert_eq!(refused.headers["x-ms-error-code"], "429001");
    let counts = emu.running.dps().registration_counts();
    assert_eq!((counts.admitted, counts.throttled), (1, 1));
    // After the wait DPS asked for, the registration is admitted.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let admitted = register().await;
    assert_eq!(admitted.status, 202, "{:?}", admitted.body);
}
