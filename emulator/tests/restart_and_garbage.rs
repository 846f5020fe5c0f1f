//! State that survives restarts (clean and killed), and an HTTPS listener that shrugs off
//! garbage.
// In a test crate a panic, with the failing call's message, is the failure report.
#![allow(clippy::unwrap_used)]

mod support;

use emulator::config::EmulatorConfig;
use emulator::endpoints::Endpoints;
use reqwest::Method;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::TestEmulator;

#[tokio::test]
async fn enrollments_registrations_and_devices_survive_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let durable = |dir: &std::path::Path| EmulatorConfig {
        persistence: emulator::config::Persistence::Durable,
        ..EmulatorConfig::for_tests(dir)
    };
    let first = TestEmulator::start_in(durable(dir.path()), tempfile::tempdir().unwrap()).await;
    let device = first
        .enroll(
            "persistent",
            json!({ "initialTwin": { "tags": { "kept": true } } }),
        )
        .await;
    let hub = first.register(&device).await.unwrap().assigned_hub.unwrap();
    let ca = first.running.ca_certificate_pem().to_owned();
    first.running.shutdown().await.expect("clean shutdown");

    let second = TestEmulator::start_in(durable(dir.path()), tempfile::tempdir().unwrap()).await;
    assert_eq!(
        second.running.ca_certificate_pem(),
        ca,
        "the CA is kept, so clients keep trusting it"
    );
    assert_eq!(
        second.service.primary_key("persistent").await.unwrap(),
        device.key
    );
    assert_eq!(
        second
            .service
            .registration("persistent")
            .await
            .unwrap()
            .assigned_hub
            .as_deref(),
        Some(hub.as_str())
    );
    assert_eq!(
        second.hub_get(&hub, "twins/persistent").await.unwrap()["tags"]["kept"],
        true
    );
    // And the device can register again against the restarted service.
    assert!(second.register(&device).await.is_ok());
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_emulator(state_dir: &std::path::Path) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_emulator"))
        .args(["--state-dir"])
        .arg(state_dir)
        .args([
            "--https-port",
            "0",
            "--mqtt-port",
            "0",
            "--registration-retry-after",
            "0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the emulator binary starts");
    Process(child)
}

/// Waits for the emulator to write endpoints.json (its readiness signal), bounded.
async fn wait_for_endpoints(state_dir: &std::path::Path, process: &mut Process) -> Endpoints {
    for _ in 0..600 {
        if let Some(status) = process.0.try_wait().expect("the child can be polled") {
            panic!("the emulator exited early: {status}");
        }
        if let Ok(endpoints) = Endpoints::read(state_dir) {
            return endpoints;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no endpoints.json within 15 s");
}

#[tokio::test]
async fn an_answered_change_survives_the_process_being_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = spawn_emulator(dir.path());
    let endpoints = wait_for_endpoints(dir.path(), &mut process).await;
    let ca = std::fs::read_to_string(&endpoints.ca_certificate_path).unwrap();
    let connection =
        iot_credentials::ServiceConnectionString::parse(&endpoints.dps.service_connection_string)
            .unwrap();
    let service = emulator::fleet::service::DpsService::new(connection, &ca).unwrap();
    let answer = service
        .put_enrollment(
            &json!({ "registrationId": "crash-proof", "attestation": { "type": "symmetricKey" } }),
        )
        .await
        .unwrap();
    assert_eq!(answer["registrationId"], "crash-proof");
    let key = service.primary_key("crash-proof").await.unwrap();

    // SIGKILL: no shutdown hook runs, only what was written before answering survives.
    process.0.kill().unwrap();
    process.0.wait().unwrap();
    std::fs::remove_file(dir.path().join("endpoints.json")).unwrap();

    let mut process = spawn_emulator(dir.path());
    let endpoints = wait_for_endpoints(dir.path(), &mut process).await;
    let connection =
        iot_credentials::ServiceConnectionString::parse(&endpoints.dps.service_connection_string)
            .unwrap();
    let service = emulator::fleet::service::DpsService::new(connection, &ca).unwrap();
    assert_eq!(service.primary_key("crash-proof").await.unwrap(), key);
}

#[tokio::test]
async fn garbage_on_the_https_port_is_refused_and_service_goes_on() {
    let emu = TestEmulator::start().await;
    let address = emu.running.dps_https_address();

    let mut plain = tokio::net::TcpStream::connect(address).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"\x00\x01garbage\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut sink),
    )
    .await;
    assert!(closed.is_ok(), "a non-TLS client is disconnected");

    let mut raw = support::RawConnection::open(&emu, address).await;
    raw.write(b"NOT-HTTP \x01\x02\x03\r\n\r\n").await;
    let mut answer = Vec::new();
    // The server must answer and close, not leave the connection hanging.
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut raw.stream, &mut answer),
    )
    .await;
    assert!(
        closed.is_ok(),
        "a malformed request is answered and the connection closed, not left hanging"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );

    let ok = emu
        .service_call(
            Method::POST,
            "enrollments/query",
            Some(&json!({ "query": "*" })),
        )
        .await;
    assert_eq!(ok.status, 200);
}
