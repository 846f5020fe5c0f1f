//! The whole mission, end to end: a CRM enrolls a device through the admin API and fetches its
//! provisioning code; a person pastes the code into the device's portal in a browser; the device
//! provisions through DPS; the telemetry sender connects and sends; the hub has the telemetry and
//! the reported provisioning status, and the middleware's record shows it.
//!
//! Every log line of that run (the stand-in and emulator, the handler it supervises, the portal
//! and the sender, at trace level) is captured and searched for the secrets the run created.

use crate::helpers::{eventually, spawn_app_with};
use crate::logs::{find_secrets, LogCapture};
use crate::webdriver::Browser;
use device::assignment::StateDir;
use device::portal::{serve, Portal, PortalConfig};
use device::provision::{DeviceInfo, Provisioner};
use device::sender::{run, SenderConfig, Stats};
use device::telemetry::Source;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn a_device_goes_from_crm_enrollment_to_telemetry() {
    // The runtime of a plain #[tokio::test] is this thread: everything in process logs here,
    // and the handler's lines come through the stand-in's supervisor.
    let logs = LogCapture::default();
    let _capture = logs.install();
    let app = spawn_app_with(&[("RUST_LOG", "trace")]).await;
    let ca = app.emulator.ca_certificate_pem().to_owned();
    let endpoints = app.emulator.endpoints().clone();

    // The CRM enrolls the device and gets the code for the customer.
    app.post(
        "/enrollments",
        &json!({ "registrationId": "mission-1", "customer": { "id": "contoso" }, "asset": { "serialNumber": "SN-M1", "model": "TX-100" },
                 "initialTwin": { "desiredProperties": { "telemetryIntervalSeconds": 0.2 } } }),
    )
    .await;
    let code = app
        .get("/enrollments/mission-1/provisioning-code")
        .await
        .body["code"]
        .as_str()
        .unwrap()
        .to_owned();

    // The device serves its portal; the customer pastes the code.
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    let mut provisioner = Provisioner::new(Some(&ca)).unwrap();
    provisioner.deadline = Duration::from_secs(20);
    provisioner.info = DeviceInfo {
        model: Some("TX-100".into()),
        serial_number: Some("SN-M1".into()),
        firmware: Some("1.0.0".into()),
    };
    let portal = Portal::new(PortalConfig {
        state: state.clone(),
        provisioner: provisioner.clone(),
        default_endpoint: endpoints.dps.device_endpoint.clone(),
        setup_password: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, portal, std::future::pending()));
    let browser = Browser::start("mission").await;
    browser.open(&url).await;
    browser.type_into("#code", &code).await;
    browser.screenshot("1-code-entered").await;
    browser.click("#submit").await;
    let hub = browser.text("#result #hub").await;
    browser.screenshot("2-provisioned").await;
    browser.close().await;
    assert_eq!(state.load().unwrap().unwrap().hub, hub);

    // The telemetry sender, reading what the portal stored, connects and sends.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stats = Arc::new(Stats::default());
    let config = SenderConfig {
        state: state.clone(),
        extra_ca: Some(ca.clone()),
        mqtt_port: 8883,
        hub_ports: endpoints
            .hubs
            .iter()
            .map(|h| (h.host_name.clone(), h.mqtt_port))
            .collect(),
        interval: Duration::from_secs(5),
        outbox_capacity: 1000,
        token_lifetime: Duration::from_secs(3600),
        window: 16,
        info: provisioner.info.clone(),
        provisioner,
    };
    let counters = stats.clone();
    let sender = tokio::spawn(async move {
        run(config, Source::simulated(), counters, stopped)
            .await
            .unwrap()
    });

    // The hub has the telemetry (the enrollment's desired interval of 0.2 s is in effect)…
    let stream = app.emulator.hub(&hub).unwrap().hub.events().clone();
    let partition = stream.partition_of("mission-1");
    eventually("telemetry from the device", || {
        let stream = stream.clone();
        async move {
            let events = stream.read(partition, 0, usize::MAX).await.events;
            let telemetry = events
                .iter()
                .filter(|e| {
                    e.device_id() == Some("mission-1")
                        && e.system_properties.get("iothub-message-source")
                            == Some(&json!("Telemetry"))
                })
                .count();
            (telemetry >= 3).then_some(())
        }
    })
    .await;
    // …and the middleware's record shows the device's own report, learned from the hub's events.
    let record = eventually("the reported status in the record", || async {
        let device = app.get("/devices/mission-1").await.body;
        (device["reported"]["provisioningStatus"] == "provisioned").then_some(device)
    })
    .await;
    assert_eq!(record["hub"], hub.as_str());
    assert_eq!(record["connection"]["state"], "connected");
    assert_eq!(record["reported"]["properties"]["firmware"], "1.0.0");
    let _ = stop.send(true);
    sender.await.unwrap();
    assert!(stats.acknowledged.load(Ordering::Relaxed) >= 3);

    // No secret of this run in any log line.
    let text = logs.text();
    assert!(
        text.contains("the hub acknowledged the first message") && text.contains(" handler: "),
        "the capture holds the device's and the handler's lines"
    );
    let device_key = state.load().unwrap().unwrap().credentials.key;
    let mut secrets = vec![
        ("the provisioning code".to_owned(), code.clone()),
        (
            "the device key".to_owned(),
            device_key.expose_base64().to_owned(),
        ),
        ("the function key".to_owned(), app.function_key.clone()),
        (
            "the master key".to_owned(),
            emulator::config::DEFAULT_MASTER_KEY.to_owned(),
        ),
        (
            "the storage account key".to_owned(),
            iot_credentials::connection_string::DEVELOPMENT_ACCOUNT_KEY.to_owned(),
        ),
    ];
    let connection_strings = [
        (
            "the DPS policy",
            endpoints.dps.service_connection_string.clone(),
        ),
        (
            "the Event Hubs policy",
            endpoints.event_hubs.connection_string.clone(),
        ),
    ]
    .into_iter()
    .chain(
        endpoints
            .hubs
            .iter()
            .map(|h| ("a hub policy", h.connection_string.clone())),
    );
    for (name, connection_string) in connection_strings {
        let key = connection_string
            .split(';')
            .find_map(|part| part.strip_prefix("SharedAccessKey="))
            .unwrap()
            .to_owned();
        secrets.push((format!("{name}'s key"), key));
    }
    // The search finds what it looks for.
    assert!(!find_secrets(&format!("got {code}"), &secrets).is_empty());
    assert_eq!(
        find_secrets("url ...&sig=AbC%2Bdef123%3D&se=1", &[]).len(),
        1
    );
    assert!(find_secrets("SharedAccessKey=<redacted>", &[]).is_empty());
    // Kept beside the screenshots for whoever reads a failure (the secrets are this run's own).
    let artifacts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/mission");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::write(artifacts.join("logs.txt"), &text).unwrap();
    let leaks = find_secrets(&text, &secrets);
    assert!(leaks.is_empty(), "secrets in the logs: {leaks:#?}");
}
