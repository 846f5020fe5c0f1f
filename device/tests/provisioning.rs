//! The provisioning client against the emulator's DPS: HTTPS and MQTT, wrong keys, disabled
//! enrollments, throttling, and a hub change on re-provisioning.
// In a test crate a panic, with the failing call's message, is the failure report.
#![allow(clippy::unwrap_used)]

use device::assignment::Credentials;
use device::provision::{DpsTransport, ProvisionError, Provisioner};
use emulator::config::EmulatorConfig;
use emulator::dps::model::RegistrationStatus;
use emulator::fleet::service::DpsService;
use emulator::RunningEmulator;
use iot_credentials::{ServiceConnectionString, SharedAccessKey};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

struct Dps {
    emulator: RunningEmulator,
    service: DpsService,
    _state: tempfile::TempDir,
}

async fn start() -> Dps {
    let state = tempfile::tempdir().unwrap();
    let emulator = emulator::start(EmulatorConfig::for_tests(state.path()))
        .await
        .unwrap();
    let connection =
        ServiceConnectionString::parse(&emulator.endpoints().dps.service_connection_string)
            .unwrap();
    let service = DpsService::new(connection, emulator.ca_certificate_pem()).unwrap();
    Dps {
        emulator,
        service,
        _state: state,
    }
}

impl Dps {
    async fn enroll(&self, id: &str, extra: serde_json::Value) -> Credentials {
        let mut enrollment =
            json!({ "registrationId": id, "attestation": { "type": "symmetricKey" } });
        if let (Some(target), Some(fields)) = (enrollment.as_object_mut(), extra.as_object()) {
            target.extend(fields.clone());
        }
        self.service.put_enrollment(&enrollment).await.unwrap();
        Credentials {
            id_scope: self.emulator.endpoints().dps.id_scope.clone(),
            registration_id: id.into(),
            key: self.service.primary_key(id).await.unwrap(),
            endpoint: self.emulator.endpoints().dps.device_endpoint.clone(),
        }
    }

    fn provisioner(&self, transport: DpsTransport) -> Provisioner {
        let mut provisioner = Provisioner::new(Some(self.emulator.ca_certificate_pem())).unwrap();
        provisioner.transport = transport;
        provisioner.mqtt_port = self.emulator.endpoints().dps.mqtt_port;
        provisioner.deadline = Duration::from_secs(20);
        provisioner
    }
}

#[tokio::test]
async fn a_device_provisions_over_https_and_over_mqtt() {
    let dps = start().await;
    let hubs: Vec<String> = dps
        .emulator
        .endpoints()
        .hubs
        .iter()
        .map(|h| h.host_name.clone())
        .collect();
    for (id, transport) in [
        ("over-https", DpsTransport::Https),
        ("over-mqtt", DpsTransport::Mqtt),
    ] {
        let credentials = dps.enroll(id, json!({})).await;
        let assignment = dps
            .provisioner(transport)
            .provision(&credentials)
            .await
            .unwrap();
        assert!(
            hubs.contains(&assignment.hub),
            "{transport:?}: {}",
            assignment.hub
        );
        assert_eq!(assignment.device_id, id);
        assert_eq!(assignment.substatus.as_deref(), Some("initialAssignment"));
        assert_eq!(assignment.credentials, credentials);
    }
}

#[tokio::test]
async fn a_wrong_key_and_a_disabled_enrollment_are_told_apart() {
    let dps = start().await;
    for transport in [DpsTransport::Https, DpsTransport::Mqtt] {
        let mut wrong = dps.enroll("wrong-key", json!({})).await;
        wrong.key = SharedAccessKey::generate(32);
        assert_eq!(
            dps.provisioner(transport)
                .provision(&wrong)
                .await
                .unwrap_err(),
            ProvisionError::Unauthorized,
            "{transport:?}"
        );
        let disabled = dps
            .enroll("switched-off", json!({ "provisioningStatus": "disabled" }))
            .await;
        assert_eq!(
            dps.provisioner(transport)
                .provision(&disabled)
                .await
                .unwrap_err(),
            ProvisionError::Disabled,
            "{transport:?}"
        );
    }
    let mut unknown = dps.enroll("known", json!({})).await;
    unknown.registration_id = "never-enrolled".into();
    assert_eq!(
        dps.provisioner(DpsTransport::Https)
            .provision(&unknown)
            .await
            .unwrap_err(),
        ProvisionError::Unauthorized
    );
    // Nothing listens there: tried again until the deadline, then reported as unreachable.
    let mut nowhere = dps.enroll("nowhere", json!({})).await;
    nowhere.endpoint = "127.0.0.1:1".into();
    let mut patient = dps.provisioner(DpsTransport::Https);
    patient.deadline = Duration::from_secs(2);
    let error = patient.provision(&nowhere).await.unwrap_err();
    assert!(matches!(error, ProvisionError::Unreachable(_)), "{error:?}");
    assert!(
        patient.retries.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "it tried again"
    );
}

#[tokio::test]
async fn throttling_is_waited_out_with_backoff_within_the_deadline() {
    let dps = start().await;
    let credentials = dps.enroll("patient", json!({})).await;
    // Throttled beyond the deadline: the client gives up with a service error, not a hang.
    dps.emulator.dps().throttle_for(Duration::from_secs(30));
    let mut hasty = dps.provisioner(DpsTransport::Https);
    hasty.deadline = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let error = hasty.provision(&credentials).await.unwrap_err();
    // It gave up by itself, naming the throttling, before its deadline cut it off.
    assert!(
        matches!(&error, ProvisionError::Service(reason) if reason.contains("429")),
        "{error:?}"
    );
    assert!(
        started.elapsed() < hasty.deadline,
        "{:?}",
        started.elapsed()
    );
    // Throttled for a while: both transports wait it out.
    for transport in [DpsTransport::Https, DpsTransport::Mqtt] {
        dps.emulator.dps().throttle_for(Duration::from_secs(2));
        let assignment = dps
            .provisioner(transport)
            .provision(&credentials)
            .await
            .unwrap();
        assert!(!assignment.hub.is_empty(), "{transport:?}");
    }
}

#[tokio::test]
async fn re_provisioning_follows_the_enrollment_to_another_hub() {
    let dps = start().await;
    let hubs: Vec<String> = dps
        .emulator
        .endpoints()
        .hubs
        .iter()
        .map(|h| h.host_name.clone())
        .collect();
    let credentials = dps
        .enroll(
            "mover",
            json!({ "allocationPolicy": "static", "iotHubs": [hubs[0]] }),
        )
        .await;
    let first = dps
        .provisioner(DpsTransport::Https)
        .provision(&credentials)
        .await
        .unwrap();
    assert_eq!(first.hub, hubs[0]);
    let mut enrollment = serde_json::to_value(
        dps.service
            .call(reqwest::Method::GET, "enrollments/mover", None)
            .await
            .unwrap(),
    )
    .unwrap();
    enrollment["iotHubs"] = json!([hubs[1]]);
    enrollment["attestation"] = json!({ "type": "symmetricKey", "symmetricKey": { "primaryKey": credentials.key.expose_base64(), "secondaryKey": credentials.key.expose_base64() } });
    dps.service.put_enrollment(&enrollment).await.unwrap();
    let second = dps
        .provisioner(DpsTransport::Mqtt)
        .provision(&credentials)
        .await
        .unwrap();
    assert_eq!(second.hub, hubs[1]);
    assert_eq!(second.substatus.as_deref(), Some("deviceDataMigrated"));
}

fn free_port(address: &str) -> u16 {
    std::net::TcpListener::bind((address, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_storm_of_devices_waits_out_a_dps_restart() {
    let state = tempfile::tempdir().unwrap();
    let mut config = EmulatorConfig::for_tests(state.path());
    config.persistence = emulator::config::Persistence::Durable;
    config.https_port = free_port("127.0.0.2");
    config.mqtt_port = free_port("127.0.0.2");
    let emulator = emulator::start(config.clone()).await.unwrap();
    let connection =
        ServiceConnectionString::parse(&emulator.endpoints().dps.service_connection_string)
            .unwrap();
    let service = DpsService::new(connection.clone(), emulator.ca_certificate_pem()).unwrap();
    let dps = Dps {
        emulator,
        service,
        _state: tempfile::tempdir().unwrap(),
    };
    let mut devices = Vec::new();
    for n in 0..40 {
        devices.push(dps.enroll(&format!("storm-{n}"), json!({})).await);
    }
    // Every device is told to wait (429, retry after 1 s), so all are mid-provisioning when DPS
    // goes away; they come back to a DPS that refuses connections.
    dps.emulator.dps().throttle_for(Duration::from_secs(1));
    let https = dps.provisioner(DpsTransport::Https);
    let mqtt = dps.provisioner(DpsTransport::Mqtt);
    let retries = [https.retries.clone(), mqtt.retries.clone()];
    let retried = || {
        retries
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let mut storm = tokio::task::JoinSet::new();
    for (n, credentials) in devices.into_iter().enumerate() {
        let mut provisioner = if n % 2 == 0 {
            https.clone()
        } else {
            mqtt.clone()
        };
        provisioner.deadline = Duration::from_secs(90);
        storm.spawn(async move {
            let assignment = provisioner.provision(&credentials).await;
            (credentials.registration_id, assignment)
        });
    }
    let ca = dps.emulator.ca_certificate_pem().to_owned();
    wait_for("every device to be told to wait", || {
        dps.emulator.dps().registration_counts().throttled >= 40
    })
    .await;
    dps.emulator.shutdown().await.unwrap();
    assert!(
        storm.try_join_next().is_none(),
        "no device finished before the restart"
    );
    // Down until the devices have met the closed door at least 40 times.
    let before = retried();
    wait_for("the devices to find DPS gone", || retried() >= before + 40).await;
    let emulator = emulator::start(config).await.unwrap();
    assert_eq!(
        emulator.ca_certificate_pem(),
        ca,
        "the restarted DPS is the same service"
    );
    let service = DpsService::new(connection, emulator.ca_certificate_pem()).unwrap();
    let hubs: Vec<String> = emulator
        .endpoints()
        .hubs
        .iter()
        .map(|h| h.host_name.clone())
        .collect();
    let outcomes = storm.join_all().await;
    assert_eq!(outcomes.len(), 40);
    for (id, outcome) in outcomes {
        let assignment = outcome.unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(hubs.contains(&assignment.hub), "{id}: {}", assignment.hub);
        // DPS agrees with what the device was told.
        let state = service.registration(&id).await.unwrap();
        assert_eq!(state.status, RegistrationStatus::Assigned, "{id}");
        assert_eq!(
            state.assigned_hub.as_deref(),
            Some(assignment.hub.as_str()),
            "{id}"
        );
        assert_eq!(
            state.device_id.as_deref(),
            Some(assignment.device_id.as_str()),
            "{id}"
        );
    }
}

/// Polls `done` until it holds (at most ~60 s).
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    for _ in 0..2400 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("waited 60 s for {what}");
}
