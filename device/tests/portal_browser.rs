//! The setup portal in a real browser (headless Chromium through WebDriver), walked as a person
//! would: open it, paste the code, submit, read the result; and the messages for a code that is
//! not one and for a wrong key. Screenshots of each page land in target/test-artifacts/portal.
// In a test crate a panic, with the failing call's message, is the failure report.
#![allow(clippy::unwrap_used)]

#[path = "support/webdriver.rs"]
mod webdriver;

use device::assignment::StateDir;
use device::portal::{serve, Portal, PortalConfig};
use device::provision::Provisioner;
use emulator::config::EmulatorConfig;
use emulator::fleet::service::DpsService;
use iot_credentials::{ProvisioningCode, ServiceConnectionString, SharedAccessKey};
use serde_json::json;
use std::time::Duration;
use webdriver::Browser;

#[tokio::test]
async fn a_person_sets_up_the_device_in_the_portal() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = emulator::start(EmulatorConfig::for_tests(dir.path().join("cloud")))
        .await
        .unwrap();
    let endpoints = emulator.endpoints().clone();
    let dps = DpsService::new(
        ServiceConnectionString::parse(&endpoints.dps.service_connection_string).unwrap(),
        emulator.ca_certificate_pem(),
    )
    .unwrap();
    dps.put_enrollment(
        &json!({ "registrationId": "kitchen-sensor", "attestation": { "type": "symmetricKey" } }),
    )
    .await
    .unwrap();
    let code = ProvisioningCode {
        id_scope: endpoints.dps.id_scope.clone(),
        registration_id: "kitchen-sensor".into(),
        device_key: dps.primary_key("kitchen-sensor").await.unwrap(),
        endpoint: endpoints.dps.device_endpoint.clone(),
    }
    .expose();

    let state = StateDir::new(dir.path().join("device"));
    let mut provisioner = Provisioner::new(Some(emulator.ca_certificate_pem())).unwrap();
    provisioner.deadline = Duration::from_secs(20);
    let portal = Portal::new(PortalConfig {
        state: state.clone(),
        provisioner,
        default_endpoint: endpoints.dps.device_endpoint.clone(),
        setup_password: Some("label-password".into()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, portal, std::future::pending()));

    let browser = Browser::start("portal").await;
    browser.open(&url).await;
    browser.find("#code").await;
    browser.screenshot("1-setup-form").await;

    // Something that is not a code.
    browser.type_into("#code", "DP1~this~is~not~right").await;
    browser.click("#submit").await;
    let message = browser.text("#error").await;
    assert!(
        message.contains("incomplete") || message.contains("not valid"),
        "{message}"
    );
    browser.screenshot("2-invalid-code").await;

    // The right fields with a wrong key.
    browser.open(&url).await;
    browser.click("details summary").await;
    browser.type_into("#idScope", &endpoints.dps.id_scope).await;
    browser.type_into("#registrationId", "kitchen-sensor").await;
    browser
        .type_into("#deviceKey", SharedAccessKey::generate(32).expose_base64())
        .await;
    browser.click("#submit").await;
    let message = browser.text("#error").await;
    assert!(message.contains("device key is wrong"), "{message}");
    browser.screenshot("3-wrong-key").await;
    assert!(state.load().unwrap().is_none(), "nothing was stored");

    // The code, pasted.
    browser.open(&url).await;
    browser.type_into("#code", &code).await;
    browser.click("#submit").await;
    let hub = browser.text("#result #hub").await;
    assert!(
        endpoints.hubs.iter().any(|h| h.host_name == hub),
        "the result names a hub: {hub}"
    );
    browser.screenshot("4-provisioned").await;
    assert_eq!(state.load().unwrap().unwrap().hub, hub);

    // The device page shows the assignment, and guards changes.
    browser.open(&url).await;
    assert_eq!(browser.text("#hub").await, hub);
    browser.screenshot("5-device").await;
    browser.close().await;
}
