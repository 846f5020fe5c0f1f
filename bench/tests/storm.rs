//! The storm machinery at small scale: a fleet powered on at once against a DPS whose
//! registration rate is limited, provisioned by the device crate's own client.
// In a test crate a panic, with the failing call's message, is the failure report.
#![allow(clippy::unwrap_used)]

use bench::storm::power_on_all;
use device::assignment::Credentials;
use device::provision::{Backoff, DpsTransport, Provisioner};
use emulator::dps::rate_limit::Rate;
use emulator::fleet::hub_device::Endpoint;
use emulator::fleet::load::enroll;
use emulator::fleet::service::DpsService;
use emulator::RunningEmulator;
use iot_credentials::ServiceConnectionString;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// 10 registrations a second after a burst of 10: 50 devices need at least (50 - 10) / 10 = 4 s.
const RATE: Rate = Rate {
    per_minute: 600,
    burst: 10,
};

/// An emulator on free loopback ports, with the clients the storm needs.
struct TestEmulator {
    running: RunningEmulator,
    service: DpsService,
    tls: Arc<rustls::ClientConfig>,
    _state_dir: TempDir,
}

impl TestEmulator {
    async fn start_with(adjust: impl FnOnce(&mut emulator::config::EmulatorConfig)) -> Self {
        let state_dir = tempfile::tempdir().unwrap();
        let mut config = emulator::config::EmulatorConfig::for_tests(state_dir.path());
        adjust(&mut config);
        let running = emulator::start(config).await.unwrap();
        let ca = running.ca_certificate_pem().to_owned();
        let connection =
            ServiceConnectionString::parse(&running.endpoints().dps.service_connection_string)
                .unwrap();
        Self {
            service: DpsService::new(connection, &ca).unwrap(),
            tls: Arc::new(emulator::fleet::client_tls(&ca).unwrap()),
            running,
            _state_dir: state_dir,
        }
    }
}

async fn fleet(emu: &TestEmulator, prefix: &str, count: usize) -> Vec<Credentials> {
    let endpoints = emu.running.endpoints();
    enroll(&emu.service, prefix, count, &endpoints.dps.id_scope)
        .await
        .unwrap()
        .into_iter()
        .map(|d| Credentials {
            id_scope: d.id_scope,
            registration_id: d.registration_id,
            key: d.key,
            endpoint: endpoints.dps.device_endpoint.clone(),
        })
        .collect()
}

fn hubs(emu: &TestEmulator) -> HashMap<String, Endpoint> {
    emu.running
        .hubs()
        .iter()
        .map(|hub| {
            let host = hub.hub.settings().host_name.clone();
            let endpoint = Endpoint {
                address: hub.mqtt,
                host: host.clone(),
                tls: emu.tls.clone(),
            };
            (host, endpoint)
        })
        .collect()
}

#[tokio::test]
async fn a_throttled_storm_ends_with_every_device_connected_with_jitter_and_without() {
    let emu = TestEmulator::start_with(|config| config.registration_rate = Some(RATE)).await;
    let hubs = hubs(&emu);
    for (transport, jitter) in [(DpsTransport::Https, true), (DpsTransport::Mqtt, false)] {
        let label = format!("{transport:?}, jitter {jitter}");
        let devices = fleet(&emu, &format!("storm-{jitter}"), 50).await;
        let mut provisioner = Provisioner::new(Some(emu.running.ca_certificate_pem())).unwrap();
        provisioner.transport = transport;
        provisioner.mqtt_port = emu.running.dps_mqtt_address().port();
        // The device's own backoff, compressed: its cap of 30 s would make the synchronized run
        // take minutes (every wave of retries meets a bucket of only 10).
        provisioner.backoff = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter,
        };
        provisioner.deadline = Duration::from_secs(30);
        let before = emu.running.dps().registration_counts();

        let report = power_on_all(&devices, &provisioner, &hubs).await;

        assert_eq!(report.gave_up, 0, "{label}: {:?}", report.first_error);
        assert_eq!(report.connected, 50, "{label}");
        let after = emu.running.dps().registration_counts();
        assert!(
            after.throttled > before.throttled,
            "{label}: DPS throttled no one"
        );
        assert!(
            report.retries >= after.throttled - before.throttled,
            "{label}: every 429 made a device wait ({} retries, {} refused)",
            report.retries,
            after.throttled - before.throttled
        );
        // The limit held: the fleet could not be through faster than the rate allows, and no
        // second saw many more completions than the burst plus a second's worth (20; the margin
        // covers completions delayed across a second's boundary on a busy machine).
        assert!(
            report.peak_registrations_per_second <= 30,
            "{label}: {} registrations in one second",
            report.peak_registrations_per_second
        );
        let all = report.all_connected_after.unwrap();
        assert!(all >= Duration::from_secs(3), "{label}: done in {all:?}");
        // Every device is on a hub, where it reported itself provisioned.
        let on_hubs: usize = emu
            .running
            .hubs()
            .iter()
            .map(|hub| {
                devices
                    .iter()
                    .filter_map(|d| hub.hub.device(&d.registration_id))
                    .filter(|d| d.twin.reported.values["provisioning"]["status"] == "provisioned")
                    .count()
            })
            .sum();
        assert_eq!(on_hubs, 50, "{label}");
    }
}
