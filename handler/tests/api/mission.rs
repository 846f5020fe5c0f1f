//! The whole mission, end to end: a CRM enrolls a device through the admin API and fetches its
//! provisioning code; a person pastes the code into the device's portal in a browser; the device
//! provisions through DPS; the telemetry sender connects and sends; the hub has the telemetry and
//! the reported provisioning status, and the middleware's record shows it.

use crate::helpers::{eventually, spawn_app};
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
    let app = spawn_app().await;
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
}
