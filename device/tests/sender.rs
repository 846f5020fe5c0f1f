//! The telemetry sender against the emulator's hubs: telemetry with its properties, the twin
//! (reported status, desired changes acknowledged), direct methods, cloud-to-device messages,
//! token renewal, re-provisioning to another hub, an emulator restart with nothing lost, and a
//! link so slow that connecting outlasts the sender's own timers.
// In a test crate a panic, with the failing call's message, is the failure report.
#![allow(clippy::unwrap_used)]

use device::assignment::{Assignment, Credentials, StateDir};
use device::provision::{DeviceInfo, Provisioner};
use device::sender::{run, SenderConfig, Stats};
use device::telemetry::Source;
use emulator::config::{EmulatorConfig, Persistence};
use emulator::fleet::hub::HubService;
use emulator::fleet::service::DpsService;
use emulator::RunningEmulator;
use iot_credentials::ServiceConnectionString;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

struct Cloud {
    emulator: RunningEmulator,
    dps: DpsService,
}

async fn start_cloud(config: EmulatorConfig) -> Cloud {
    let emulator = emulator::start(config).await.unwrap();
    let connection =
        ServiceConnectionString::parse(&emulator.endpoints().dps.service_connection_string)
            .unwrap();
    let dps = DpsService::new(connection, emulator.ca_certificate_pem()).unwrap();
    Cloud { emulator, dps }
}

impl Cloud {
    fn hub(&self, host: &str) -> HubService {
        let entry = self
            .emulator
            .endpoints()
            .hubs
            .iter()
            .find(|h| h.host_name == host)
            .unwrap();
        HubService::new(
            ServiceConnectionString::parse(&entry.connection_string).unwrap(),
            self.emulator.ca_certificate_pem(),
        )
        .unwrap()
    }

    fn provisioner(&self) -> Provisioner {
        let mut provisioner = Provisioner::new(Some(self.emulator.ca_certificate_pem())).unwrap();
        provisioner.deadline = Duration::from_secs(20);
        provisioner
    }

    /// Enrolls and provisions `id` (pinned to `hub` if given) and stores the assignment.
    async fn provisioned_device(
        &self,
        id: &str,
        hub: Option<&str>,
        state: &StateDir,
    ) -> Assignment {
        let mut enrollment =
            json!({ "registrationId": id, "attestation": { "type": "symmetricKey" } });
        if let Some(hub) = hub {
            enrollment["allocationPolicy"] = json!("static");
            enrollment["iotHubs"] = json!([hub]);
        }
        self.dps.put_enrollment(&enrollment).await.unwrap();
        let credentials = Credentials {
            id_scope: self.emulator.endpoints().dps.id_scope.clone(),
            registration_id: id.into(),
            key: self.dps.primary_key(id).await.unwrap(),
            endpoint: self.emulator.endpoints().dps.device_endpoint.clone(),
        };
        let assignment = self.provisioner().provision(&credentials).await.unwrap();
        state.save(&assignment).unwrap();
        assignment
    }

    fn config(&self, state: &StateDir) -> SenderConfig {
        SenderConfig {
            state: state.clone(),
            extra_ca: Some(self.emulator.ca_certificate_pem().to_owned()),
            mqtt_port: 8883,
            hub_ports: self
                .emulator
                .endpoints()
                .hubs
                .iter()
                .map(|h| (h.host_name.clone(), h.mqtt_port))
                .collect::<BTreeMap<_, _>>(),
            interval: Duration::from_millis(100),
            outbox_capacity: 10_000,
            token_lifetime: Duration::from_secs(3600),
            window: 16,
            info: DeviceInfo {
                model: Some("TX-100".into()),
                serial_number: Some("SN-7".into()),
                firmware: Some("1.2.3".into()),
            },
            provisioner: self.provisioner(),
        }
    }

    /// Telemetry bodies and message ids the hub received from `device_id`.
    async fn telemetry(&self, hub: &str, device_id: &str) -> Vec<Arc<emulator::events::Event>> {
        let stream = self.emulator.hub(hub).unwrap().hub.events().clone();
        let partition = stream.partition_of(device_id);
        if stream.ends()[partition] == 0 {
            return Vec::new();
        }
        stream
            .read(partition, 0, usize::MAX)
            .await
            .events
            .into_iter()
            .filter(|e| {
                e.device_id() == Some(device_id)
                    && e.system_properties.get("iothub-message-source") == Some(&json!("Telemetry"))
            })
            .collect()
    }
}

/// Runs the sender in the background; `stop` ends it and answers its counters.
struct Running {
    stop: watch::Sender<bool>,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

fn spawn_sender(config: SenderConfig) -> Running {
    let (stop, stopped) = watch::channel(false);
    let stats = Arc::new(Stats::default());
    let counters = stats.clone();
    let task = tokio::spawn(async move {
        run(config, Source::simulated(), counters, stopped)
            .await
            .unwrap()
    });
    Running { stop, stats, task }
}

impl Running {
    async fn stop(self) -> Arc<Stats> {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
        self.stats
    }
}

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..300 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 15 s");
}

#[tokio::test]
async fn the_sender_sends_reports_takes_desired_changes_answers_methods_and_receives_messages() {
    let state_dir = tempfile::tempdir().unwrap();
    let cloud = start_cloud(EmulatorConfig::for_tests(state_dir.path().join("cloud"))).await;
    let state = StateDir::new(state_dir.path().join("device"));
    let assignment = cloud.provisioned_device("sender-1", None, &state).await;
    let hub = cloud.hub(&assignment.hub);
    let sender = spawn_sender(cloud.config(&state));

    let event = eventually("telemetry", || async {
        cloud
            .telemetry(&assignment.hub, "sender-1")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(event.system_properties["content-type"], "application/json");
    assert_eq!(event.system_properties["content-encoding"], "utf-8");
    assert!(event.system_properties["message-id"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    let body: Value = serde_json::from_slice(&event.body).unwrap();
    assert!(body["temperature"].is_number());

    let reported = eventually("the connect report", || async {
        let (_, twin) = hub.call(Method::GET, "twins/sender-1", None).await.unwrap();
        (twin["properties"]["reported"]["provisioning"]["status"] == "provisioned")
            .then_some(twin["properties"]["reported"].clone())
    })
    .await;
    assert_eq!(reported["provisioning"]["hub"], assignment.hub.as_str());
    assert_eq!(reported["deviceInfo"]["model"], "TX-100");
    assert_eq!(reported["firmware"], "1.2.3");

    let (status, twin) = hub
        .call(
            Method::PATCH,
            "twins/sender-1",
            Some(&json!({ "properties": { "desired": { "telemetryIntervalSeconds": 0.05 } } })),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let version = twin["properties"]["desired"]["$version"].as_u64().unwrap();
    let ack = eventually("the desired change to be acknowledged", || async {
        let (_, twin) = hub.call(Method::GET, "twins/sender-1", None).await.unwrap();
        (twin["properties"]["reported"]["acknowledgedDesiredVersion"] == version)
            .then_some(twin["properties"]["reported"]["telemetryIntervalSeconds"].clone())
    })
    .await;
    assert_eq!(
        (ack["ac"].as_u64(), ack["av"].as_u64()),
        (Some(200), Some(version))
    );

    let (status, answer) = hub.call(Method::POST, "twins/sender-1/methods", Some(&json!({ "methodName": "GetDiagnostics", "payload": {}, "responseTimeoutInSeconds": 10 }))).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], 200);
    assert_eq!(
        answer["payload"]["intervalMs"], 50,
        "the desired interval is in effect"
    );
    assert!(answer["payload"]["acknowledged"].as_u64().unwrap() > 0);
    let (_, answer) = hub
        .call(
            Method::POST,
            "twins/sender-1/methods",
            Some(&json!({ "methodName": "Explode", "responseTimeoutInSeconds": 10 })),
        )
        .await
        .unwrap();
    assert_eq!(answer["status"], 404);

    let (status, _) = hub
        .call(
            Method::POST,
            "devices/sender-1/messages/devicebound",
            Some(&json!({ "command": "blink" })),
        )
        .await
        .unwrap();
    assert!((200..300).contains(&status), "{status}");
    let stats = sender.stop().await;
    assert_eq!(stats.cloud_messages.load(Ordering::Relaxed), 1);
    assert_eq!(
        stats.accepted.load(Ordering::Relaxed),
        stats.acknowledged.load(Ordering::Relaxed),
        "shutdown flushed the outbox"
    );
}

#[tokio::test]
async fn the_connection_outlives_several_token_lifetimes() {
    let state_dir = tempfile::tempdir().unwrap();
    let cloud = start_cloud(EmulatorConfig::for_tests(state_dir.path().join("cloud"))).await;
    let state = StateDir::new(state_dir.path().join("device"));
    let assignment = cloud.provisioned_device("renewer", None, &state).await;
    let mut config = cloud.config(&state);
    config.token_lifetime = Duration::from_secs(2);
    config.interval = Duration::from_millis(50);
    let window = config.window;
    let sender = spawn_sender(config);
    // Three renewals: each time the hub would have closed a connection with a stale token.
    eventually("three token renewals", || async {
        (sender.stats.renewals.load(Ordering::Relaxed) >= 3).then_some(())
    })
    .await;
    let stats = sender.stop().await;
    assert!(stats.renewals.load(Ordering::Relaxed) >= 3, "{stats:?}");
    assert_eq!(
        stats.accepted.load(Ordering::Relaxed),
        stats.acknowledged.load(Ordering::Relaxed)
    );
    // A renewal ends the connection once the hub has acknowledged what was in flight, so a
    // planned reconnection sends nothing twice. Only a renewal whose drain ran out of time (a
    // slow hub; counted) may leave up to a window of messages to be sent again.
    let ids = message_ids(&cloud.telemetry(&assignment.hub, "renewer").await);
    let duplicated: Vec<(&String, &usize)> = ids.iter().filter(|(_, n)| **n > 1).collect();
    let cut_short = stats.renewals_cut_short.load(Ordering::Relaxed);
    assert!(
        duplicated.len() as u64 <= cut_short * window as u64,
        "sent more than once: {duplicated:?}, with {cut_short} renewals cut short"
    );
    assert_eq!(
        ids.len() as u64,
        stats.accepted.load(Ordering::Relaxed),
        "every accepted message arrived"
    );
}

#[tokio::test]
async fn a_burst_of_method_calls_is_answered_in_full() {
    let state_dir = tempfile::tempdir().unwrap();
    let cloud = start_cloud(EmulatorConfig::for_tests(state_dir.path().join("cloud"))).await;
    let state = StateDir::new(state_dir.path().join("device"));
    let assignment = cloud.provisioned_device("busy", None, &state).await;
    let hub = cloud.hub(&assignment.hub);
    let mut config = cloud.config(&state);
    // A small request channel (2 x window): the burst of answers overflows it.
    config.window = 1;
    let sender = spawn_sender(config);
    eventually("the sender connected", || async {
        (sender.stats.connections.load(Ordering::Relaxed) >= 1).then_some(())
    })
    .await;
    let hub = Arc::new(hub);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let hub = hub.clone();
        calls.spawn(async move {
            hub.call(
                Method::POST,
                "twins/busy/methods",
                Some(&json!({ "methodName": "GetDiagnostics", "responseTimeoutInSeconds": 20 })),
            )
            .await
            .unwrap()
            .0
        });
    }
    let statuses: Vec<u16> = calls.join_all().await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    sender.stop().await;
}

fn message_ids(events: &[Arc<emulator::events::Event>]) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for event in events {
        *ids.entry(
            event.system_properties["message-id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
        .or_insert(0) += 1;
    }
    ids
}

#[tokio::test]
async fn reprovisioning_moves_the_sender_to_the_new_hub() {
    let state_dir = tempfile::tempdir().unwrap();
    let cloud = start_cloud(EmulatorConfig::for_tests(state_dir.path().join("cloud"))).await;
    let hubs: Vec<String> = cloud
        .emulator
        .endpoints()
        .hubs
        .iter()
        .map(|h| h.host_name.clone())
        .collect();
    let state = StateDir::new(state_dir.path().join("device"));
    let assignment = cloud
        .provisioned_device("mover", Some(&hubs[0]), &state)
        .await;
    let sender = spawn_sender(cloud.config(&state));
    eventually("telemetry on the first hub", || async {
        (!cloud.telemetry(&hubs[0], "mover").await.is_empty()).then_some(())
    })
    .await;

    // The enrollment now pins the device to the other hub; the backend asks it to re-provision.
    let enrollment = json!({ "registrationId": "mover", "attestation": { "type": "symmetricKey", "symmetricKey": { "primaryKey": assignment.credentials.key.expose_base64(), "secondaryKey": assignment.credentials.key.expose_base64() } }, "allocationPolicy": "static", "iotHubs": [hubs[1]] });
    cloud.dps.put_enrollment(&enrollment).await.unwrap();
    let (status, answer) = cloud
        .hub(&hubs[0])
        .call(
            Method::POST,
            "twins/mover/methods",
            Some(&json!({ "methodName": "Reprovision", "responseTimeoutInSeconds": 30 })),
        )
        .await
        .unwrap();
    // The device answers at once (202); on the emulator DPS can move it within milliseconds, so
    // the answer may lose the race with the old hub dropping the device (404, device offline).
    assert!(
        status == 200 && answer["status"] == 202 || status == 404,
        "{status}: {answer}"
    );
    eventually("telemetry on the new hub", || async {
        (!cloud.telemetry(&hubs[1], "mover").await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(state.load().unwrap().unwrap().hub, hubs[1]);
    let reported = eventually("the report from the new hub", || async {
        let (_, twin) = cloud
            .hub(&hubs[1])
            .call(Method::GET, "twins/mover", None)
            .await
            .unwrap();
        (twin["properties"]["reported"]["provisioning"]["hub"] == hubs[1].as_str()).then_some(())
    });
    reported.await;
    sender.stop().await;
}

fn free_port(address: &str) -> u16 {
    std::net::TcpListener::bind((address, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn durable_config(dir: &Path, https: u16, mqtt: u16) -> EmulatorConfig {
    let mut config = EmulatorConfig::for_tests(dir);
    config.persistence = Persistence::Durable;
    config.https_port = https;
    config.mqtt_port = mqtt;
    config
}

#[tokio::test]
async fn an_emulator_restart_during_telemetry_loses_no_accepted_message() {
    let state_dir = tempfile::tempdir().unwrap();
    let cloud_dir = state_dir.path().join("cloud");
    let (https, mqtt) = (free_port("127.0.0.2"), free_port("127.0.0.3"));
    let cloud = start_cloud(durable_config(&cloud_dir, https, mqtt)).await;
    let state = StateDir::new(state_dir.path().join("device"));
    let assignment = cloud.provisioned_device("survivor", None, &state).await;
    let mut config = cloud.config(&state);
    config.interval = Duration::from_millis(20);
    let sender = spawn_sender(config);
    eventually("telemetry before the restart", || async {
        (cloud.telemetry(&assignment.hub, "survivor").await.len() >= 20).then_some(())
    })
    .await;

    // The cloud goes away for a while; the device keeps accepting readings.
    cloud.emulator.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cloud = start_cloud(durable_config(&cloud_dir, https, mqtt)).await;
    eventually("the sender to reconnect and catch up", || async {
        let stats = &sender.stats;
        let behind =
            stats.accepted.load(Ordering::Relaxed) - stats.acknowledged.load(Ordering::Relaxed);
        (stats.connections.load(Ordering::Relaxed) >= 2 && behind < 5).then_some(())
    })
    .await;
    let stats = sender.stop().await;
    let accepted = stats.accepted.load(Ordering::Relaxed);
    assert!(
        stats.connections.load(Ordering::Relaxed) >= 2,
        "the sender reconnected"
    );
    let ids = message_ids(&cloud.telemetry(&assignment.hub, "survivor").await);
    let boot_ids: Vec<&String> = ids.keys().collect();
    let prefix = boot_ids[0].split('-').next().unwrap().to_owned();
    let missing: Vec<u64> = (1..=accepted)
        .filter(|n| !ids.contains_key(&format!("{prefix}-{n}")))
        .collect();
    let duplicates: usize = ids.values().filter(|c| **c > 1).count();
    assert!(
        missing.is_empty(),
        "lost {} of {accepted} messages: {missing:?}",
        missing.len()
    );
    eprintln!("{accepted} messages accepted, all delivered; {duplicates} delivered more than once");
}

/// A link to the hub whose first answer comes `delay` late (a slow cellular handshake): each
/// connection waits before it is passed on. Answers its port and how many connections it took.
async fn slow_link(host: &str, port: u16, delay: Duration) -> (u16, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
    let local = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicU64::new(0));
    let (count, host) = (accepted.clone(), host.to_owned());
    tokio::spawn(async move {
        while let Ok((mut device, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            let host = host.clone();
            tokio::spawn(async move {
                // The device's TLS hello waits in the socket meanwhile.
                tokio::time::sleep(delay).await;
                if let Ok(mut hub) = tokio::net::TcpStream::connect((host.as_str(), port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut device, &mut hub).await;
                }
            });
        }
    });
    (local, accepted)
}

#[tokio::test]
async fn a_link_slower_than_the_senders_timers_still_connects_once() {
    let state_dir = tempfile::tempdir().unwrap();
    let cloud = start_cloud(EmulatorConfig::for_tests(state_dir.path())).await;
    let state = StateDir::new(state_dir.path().join("device"));
    let assignment = cloud.provisioned_device("slow-link", None, &state).await;
    let mut config = cloud.config(&state);
    // Readings every 20 ms and the state check every 500 ms both come before the hub answers.
    config.interval = Duration::from_millis(20);
    let hub_port = config.hub_ports[&assignment.hub];
    let (port, connections) =
        slow_link(&assignment.hub, hub_port, Duration::from_millis(800)).await;
    config.hub_ports.insert(assignment.hub.clone(), port);
    let sender = spawn_sender(config);
    eventually("telemetry over the slow link", || async {
        (cloud.telemetry(&assignment.hub, "slow-link").await.len() >= 5).then_some(())
    })
    .await;
    let stats = sender.stop().await;
    assert_eq!(stats.connections.load(Ordering::Relaxed), 1);
    assert_eq!(
        connections.load(Ordering::Relaxed),
        1,
        "the sender finished the connection it started instead of dropping it half-made"
    );
}
