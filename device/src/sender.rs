//! The telemetry sender: a long-running loop that keeps the device connected to its hub.
//!
//! - Reads the stored assignment; notices a new one (after re-provisioning) and moves.
//! - MQTT over TLS (rumqttc) with a SAS token it renews before expiry by reconnecting with a
//!   fresh one, once the hub has acknowledged what is in flight (a planned reconnection sends
//!   nothing twice); reconnects with exponential backoff and jitter after any failure.
//! - Twin requests, reports and method answers wait in their own queue when the MQTT client's
//!   request channel is full; they are never dropped.
//! - On connect: reads the twin, applies the desired properties (`telemetryIntervalSeconds`),
//!   reports provisioning status and device information; acknowledges each desired change.
//! - Answers direct methods: `Reprovision` (runs DPS again with the stored credentials),
//!   `RotateKey` (stores a rotated key, re-provisions with it, moves to it: [`crate::rotation`])
//!   and `GetDiagnostics`; receives cloud-to-device messages (acknowledged by the client).
//! - A rotated key stored but not yet used (the sender stopped, or DPS could not be reached) is
//!   taken up when a session starts, and retried with backoff while it fails.
//! - Telemetry goes through the on-disk [`Outbox`]: accepted first, sent at QoS 1, removed when
//!   the hub acknowledges it. Offline, it accumulates; online, it drains in order.

use crate::assignment::{Assignment, StateDir};
use crate::outbox::{Message, Outbox};
use crate::provision::{tls_config, DeviceInfo, Provisioner};
use crate::rotation;
use crate::telemetry::Source;
use iot_credentials::sas::{encode_component, unix_now};
use iot_credentials::SasToken;
use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};

/// The IoT Hub device API version in the MQTT user name.
const API_VERSION: &str = "2021-04-12";
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long shutdown waits for the outbox to drain.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// How the sender runs.
#[derive(Clone)]
pub struct SenderConfig {
    /// Where the assignment and the outbox live.
    pub state: StateDir,
    /// An extra CA to trust (the emulator's).
    pub extra_ca: Option<String>,
    /// The hubs' MQTT port (8883 on Azure).
    pub mqtt_port: u16,
    /// Ports of particular hubs (the emulator's, on free ports), by host name.
    pub hub_ports: BTreeMap<String, u16>,
    /// Telemetry interval until the twin says otherwise.
    pub interval: Duration,
    /// Messages the outbox keeps at most.
    pub outbox_capacity: usize,
    /// SAS token lifetime; the connection is renewed at 80% of it.
    pub token_lifetime: Duration,
    /// Messages in flight (sent, not yet acknowledged).
    pub window: usize,
    /// What the device is.
    pub info: DeviceInfo,
    /// For `Reprovision`.
    pub provisioner: Provisioner,
}

/// Counters, readable while the sender runs.
#[derive(Default, Debug)]
pub struct Stats {
    /// Messages accepted into the outbox.
    pub accepted: AtomicU64,
    /// Messages the hub acknowledged.
    pub acknowledged: AtomicU64,
    /// Connections made.
    pub connections: AtomicU64,
    /// Reconnections for a fresh token.
    pub renewals: AtomicU64,
    /// Renewals that had to leave messages unacknowledged (sent again on the next connection,
    /// so the hub may see them twice): the hub did not answer within the drain time.
    pub renewals_cut_short: AtomicU64,
    /// Cloud-to-device messages received.
    pub cloud_messages: AtomicU64,
    /// Direct methods answered.
    pub methods: AtomicU64,
    /// Desired-property changes applied.
    pub desired_applied: AtomicU64,
}

/// Why the sender stopped.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// The outbox or state cannot be used.
    #[error("{0}")]
    Storage(String),
    /// TLS cannot be set up.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Why a session ended.
enum End {
    Shutdown,
    Renew,
    Reassigned,
    Failed(String),
}

/// What the session shares with the telemetry producer.
struct Shared {
    outbox: Mutex<Outbox>,
    /// Whether the producer may still accept messages (false once it has stopped).
    producing: std::sync::atomic::AtomicBool,
    interval_ms: AtomicU64,
    produced: Notify,
    stats: Arc<Stats>,
    started: Instant,
    /// Whether a task is re-provisioning with a rotated key.
    rotating: std::sync::atomic::AtomicBool,
    /// The wait before the next try of a rotation that failed (milliseconds).
    rotation_backoff_ms: AtomicU64,
}

/// Re-provisions with the stored rotated key in the background (one task at a time); the
/// outcome comes back on `done`.
fn start_rotation(
    config: &SenderConfig,
    shared: &Arc<Shared>,
    done: &mpsc::UnboundedSender<Result<rotation::Finished, String>>,
) {
    if shared.rotating.swap(true, Ordering::AcqRel) {
        return;
    }
    let provisioner = config.provisioner.clone();
    let state = config.state.clone();
    let shared = shared.clone();
    let done = done.clone();
    tokio::spawn(async move {
        let outcome = rotation::finish(&state, &provisioner).await;
        shared.rotating.store(false, Ordering::Release);
        let _ = done.send(outcome);
    });
}

/// Completes when the shutdown flag turns true (or its sender is gone). Answers nothing, so no
/// borrow of the flag lives across the caller's awaits.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn jittered(base: Duration) -> Duration {
    let mut byte = [0u8; 2];
    let _ = getrandom::fill(&mut byte);
    base.mul_f64(0.5 + f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX))
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Accepts a telemetry message every interval until shutdown; offline too.
async fn produce(shared: Arc<Shared>, mut source: Source, mut shutdown: watch::Receiver<bool>) {
    let boot = format!("{:x}", unix_now());
    loop {
        let wait = Duration::from_millis(shared.interval_ms.load(Ordering::Relaxed).max(10));
        tokio::select! {
            // Biased: once shutdown is asked, no further message is accepted.
            biased;
            _ = stopped(&mut shutdown) => {
                shared.producing.store(false, Ordering::Release);
                shared.produced.notify_one();
                return;
            }
            _ = tokio::time::sleep(wait) => {}
        }
        let body = source.next_body();
        let pushed = {
            let mut outbox = shared.outbox.lock().unwrap_or_else(|p| p.into_inner());
            let id = format!(
                "{boot}-{}",
                shared.stats.accepted.load(Ordering::Relaxed) + 1
            );
            outbox.push(&Message {
                id,
                body,
                content_type: "application/json".into(),
                content_encoding: "utf-8".into(),
            })
        };
        match pushed {
            Ok(_) => {
                shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                shared.produced.notify_one();
            }
            Err(error) => tracing::error!(%error, "a telemetry message could not be accepted"),
        }
    }
}

/// Runs the sender until `shutdown` turns true, counting in `stats`.
pub async fn run(
    config: SenderConfig,
    source: Source,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SenderError> {
    let outbox = Outbox::open(config.state.path().join("outbox"), config.outbox_capacity)
        .map_err(|e| SenderError::Storage(e.to_string()))?;
    let tls = Arc::new(tls_config(config.extra_ca.as_deref()).map_err(SenderError::Tls)?);
    let shared = Arc::new(Shared {
        outbox: Mutex::new(outbox),
        producing: std::sync::atomic::AtomicBool::new(true),
        interval_ms: AtomicU64::new(config.interval.as_millis() as u64),
        produced: Notify::new(),
        stats: stats.clone(),
        started: Instant::now(),
        rotating: std::sync::atomic::AtomicBool::new(false),
        rotation_backoff_ms: AtomicU64::new(FIRST_BACKOFF.as_millis() as u64),
    });
    let producer = tokio::spawn(produce(shared.clone(), source, shutdown.clone()));
    let mut backoff = FIRST_BACKOFF;
    loop {
        let stop = *shutdown.borrow();
        if stop {
            break;
        }
        let assignment = match config.state.load() {
            Ok(Some(assignment)) => assignment,
            Ok(None) => {
                // Not provisioned yet: telemetry accumulates in the outbox meanwhile.
                tokio::select! {
                    _ = stopped(&mut shutdown) => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
            Err(error) => return Err(SenderError::Storage(error.to_string())),
        };
        match session(&config, &assignment, &shared, tls.clone(), &mut shutdown).await {
            End::Shutdown => break,
            End::Renew => {
                stats.renewals.fetch_add(1, Ordering::Relaxed);
                backoff = FIRST_BACKOFF;
            }
            End::Reassigned => backoff = FIRST_BACKOFF,
            End::Failed(reason) => {
                let wait = jittered(backoff);
                tracing::warn!(%reason, retry_in_ms = wait.as_millis() as u64, "the connection to the hub failed; retrying");
                tokio::select! {
                    _ = stopped(&mut shutdown) => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    let _ = producer.await;
    Ok(())
}

/// One connection, from CONNECT to its end.
async fn session(
    config: &SenderConfig,
    assignment: &Assignment,
    shared: &Arc<Shared>,
    tls: Arc<rustls::ClientConfig>,
    shutdown: &mut watch::Receiver<bool>,
) -> End {
    let hub = &assignment.hub;
    let device_id = &assignment.device_id;
    let port = config
        .hub_ports
        .get(hub)
        .copied()
        .unwrap_or(config.mqtt_port);
    let token = SasToken::sign(
        &format!("{hub}/devices/{device_id}"),
        &assignment.credentials.key,
        None,
        unix_now() + config.token_lifetime.as_secs().max(2),
    );
    let mut options = MqttOptions::new(device_id.clone(), hub.clone(), port);
    options.set_credentials(
        format!("{hub}/{device_id}/?api-version={API_VERSION}"),
        token.expose(),
    );
    options.set_keep_alive(Duration::from_secs(60));
    options.set_clean_session(true);
    options.set_max_packet_size(256 * 1024, 256 * 1024);
    options.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    let (client, mut events) = AsyncClient::new(options, (config.window * 2).max(16));
    // Reconnect with a fresh token at 80% of its lifetime, before the hub closes the connection.
    let renew_at = tokio::time::Instant::now()
        + config
            .token_lifetime
            .mul_f64(0.8)
            .max(Duration::from_millis(500));
    let mut fingerprint = config.state.fingerprint();
    let mut watch_state = tokio::time::interval(Duration::from_millis(500));
    let (method_done, mut method_results) = mpsc::unbounded_channel::<Result<Assignment, String>>();
    let (rotation_done, mut rotation_results) =
        mpsc::unbounded_channel::<Result<rotation::Finished, String>>();
    // A rotated key stored before (by an earlier session, or before a restart) is taken up now,
    // beside connecting with the current key.
    if assignment.pending_key.is_some() {
        start_rotation(config, shared, &rotation_done);
    }
    let mut rotation_retry: Option<tokio::time::Instant> = None;
    let mut rotate_after_answer = false;

    let mut in_flight: BTreeSet<u64> = BTreeSet::new();
    let mut awaiting_id: VecDeque<u64> = VecDeque::new();
    let mut by_packet: HashMap<u16, u64> = HashMap::new();
    let mut flushing: Option<tokio::time::Instant> = None;
    let mut reprovision_after_answer = false;
    // Twin requests, reports and method answers waiting for room in the client's request
    // channel: they go before telemetry and are never dropped, or a method caller would wait
    // for an answer that never comes (and see 504).
    let mut control: VecDeque<(String, Vec<u8>)> = VecDeque::new();
    // Set when the token is due for renewal: no new telemetry goes out, and the connection
    // ends once the hub has acknowledged what is in flight, so nothing is sent twice.
    let mut renewing: Option<tokio::time::Instant> = None;

    // rumqttc makes the whole connection (TCP, TLS, CONNECT, CONNACK) inside one `poll()` and
    // holds it in that future until CONNACK, so a poll that another select! branch cancels
    // drops the half-made connection. Made inside the loop below, a connection slower than its
    // quickest branch (the 500 ms state check, the telemetry interval) was never finished: on a
    // slow link the device connected and dropped the connection again and again. So the
    // connection is made first, and only shutdown interrupts it.
    let connack = tokio::select! {
        event = events.poll() => event,
        _ = stopped(shutdown) => return End::Shutdown,
    };
    match connack {
        Ok(Event::Incoming(Packet::ConnAck(_))) => {}
        Ok(other) => return End::Failed(format!("the hub answered {other:?} before CONNACK")),
        Err(error) => return End::Failed(error.to_string()),
    }
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    tracing::info!(hub = %hub, device.id = %device_id, "connected to the hub");
    let filters = [
        "$iothub/twin/res/#".to_owned(),
        "$iothub/twin/PATCH/properties/desired/#".to_owned(),
        "$iothub/methods/POST/#".to_owned(),
        format!("devices/{device_id}/messages/devicebound/#"),
    ];
    for filter in filters {
        let _ = client.try_subscribe(filter, QoS::AtLeastOnce);
    }
    // Request ids of this connection: twin reads and reports.
    let mut rid = 1u64;
    let id = format!("get-{rid}");
    control.push_back((format!("$iothub/twin/GET/?$rid={id}"), Vec::new()));
    let mut twin_request = Some(id);

    loop {
        while let Some((topic, payload)) = control.pop_front() {
            if client
                .try_publish(topic.clone(), QoS::AtMostOnce, false, payload.clone())
                .is_err()
            {
                control.push_front((topic, payload));
                break;
            }
        }
        if let Some(deadline) = renewing {
            if in_flight.is_empty() || tokio::time::Instant::now() >= deadline {
                if !in_flight.is_empty() {
                    shared
                        .stats
                        .renewals_cut_short
                        .fetch_add(1, Ordering::Relaxed);
                }
                let _ = client.try_disconnect();
                // Let the DISCONNECT go out.
                let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
                return End::Renew;
            }
        }
        // Fill the window from the outbox, oldest first.
        if renewing.is_none() {
            let room = config.window.saturating_sub(in_flight.len());
            if room > 0 {
                let next = shared
                    .outbox
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .oldest(room, &in_flight);
                for (seq, message) in next {
                    let topic = format!(
                        "devices/{device_id}/messages/events/$.mid={}&$.ct={}&$.ce={}",
                        encode_component(&message.id),
                        encode_component(&message.content_type),
                        encode_component(&message.content_encoding)
                    );
                    if client
                        .try_publish(topic, QoS::AtLeastOnce, false, message.body.into_bytes())
                        .is_err()
                    {
                        break;
                    }
                    in_flight.insert(seq);
                    awaiting_id.push_back(seq);
                }
            }
            if let Some(deadline) = flushing {
                let empty = shared
                    .outbox
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty();
                // Done when the producer has stopped and everything it accepted is acknowledged.
                let done = empty && !shared.producing.load(Ordering::Acquire);
                if done || tokio::time::Instant::now() >= deadline {
                    let _ = client.try_disconnect();
                    return End::Shutdown;
                }
            }
        }
        tokio::select! {
            event = events.poll() => {
                let event = match event {
                    Ok(event) => event,
                    Err(error) => return End::Failed(error.to_string()),
                };
                match event {
                    Event::Outgoing(Outgoing::Publish(0)) if rotate_after_answer => {
                        rotate_after_answer = false;
                        start_rotation(config, shared, &rotation_done);
                    }
                    Event::Outgoing(Outgoing::Publish(0)) if reprovision_after_answer => {
                        reprovision_after_answer = false;
                        let provisioner = config.provisioner.clone();
                        let state = config.state.clone();
                        let current = assignment.clone();
                        let done = method_done.clone();
                        tokio::spawn(async move {
                            let outcome = match provisioner.provision(&current.credentials).await {
                                Ok(next) => {
                                    // What the device learned meanwhile (a rotated key) stays.
                                    let latest = state.load().ok().flatten().unwrap_or(current);
                                    let next = latest.reassigned(next);
                                    state.save(&next).map(|()| next).map_err(|e| e.to_string())
                                }
                                Err(e) => Err(e.to_string()),
                            };
                            let _ = done.send(outcome);
                        });
                    }
                    Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
                        if let Some(seq) = awaiting_id.pop_front() {
                            by_packet.insert(pkid, seq);
                        }
                    }
                    Event::Incoming(Packet::PubAck(ack)) => {
                        if let Some(seq) = by_packet.remove(&ack.pkid) {
                            in_flight.remove(&seq);
                            shared.outbox.lock().unwrap_or_else(|p| p.into_inner()).acknowledge(seq);
                            if shared.stats.acknowledged.fetch_add(1, Ordering::Relaxed) == 0 {
                                tracing::info!("the hub acknowledged the first message");
                            }
                        }
                    }
                    Event::Incoming(Packet::Publish(publish)) => {
                        let topic = publish.topic.as_str();
                        if let Some(rest) = topic.strip_prefix("$iothub/twin/res/") {
                            let (status, query) = rest.split_once("/?").unwrap_or((rest, ""));
                            let answered = query.split('&').find_map(|p| p.strip_prefix("$rid="));
                            if answered.is_some() && answered == twin_request.as_deref() {
                                twin_request = None;
                                if status == "200" {
                                    let twin: Value = serde_json::from_slice(&publish.payload).unwrap_or_default();
                                    let desired = twin["desired"].as_object().cloned().unwrap_or_default();
                                    let ack = apply_desired(shared, &desired);
                                    rid += 1;
                                    let report = connect_report(config, assignment, shared, ack);
                                    control.push_back((format!("$iothub/twin/PATCH/properties/reported/?$rid=r{rid}"), report.to_string().into_bytes()));
                                }
                            }
                        } else if topic.starts_with("$iothub/twin/PATCH/properties/desired/") {
                            let desired: Map<String, Value> = serde_json::from_slice(&publish.payload).unwrap_or_default();
                            let ack = apply_desired(shared, &desired);
                            rid += 1;
                            control.push_back((format!("$iothub/twin/PATCH/properties/reported/?$rid=r{rid}"), ack.to_string().into_bytes()));
                        } else if let Some(rest) = topic.strip_prefix("$iothub/methods/POST/") {
                            let (name, query) = rest.split_once("/?").unwrap_or((rest, ""));
                            let Some(method_rid) = query.split('&').find_map(|p| p.strip_prefix("$rid=")).map(str::to_owned) else { continue };
                            shared.stats.methods.fetch_add(1, Ordering::Relaxed);
                            match name {
                                "GetDiagnostics" => {
                                    let payload = diagnostics(assignment, shared);
                                    control.push_back((format!("$iothub/methods/res/200/?$rid={method_rid}"), payload.to_string().into_bytes()));
                                }
                                rotation::METHOD => {
                                    let request: Value = serde_json::from_slice(&publish.payload).unwrap_or_default();
                                    let (status, payload) = match rotation::accept(&config.state, &request) {
                                        Ok(rotation::Accepted::Stored(id)) => {
                                            // The file changed under this session on purpose.
                                            fingerprint = config.state.fingerprint();
                                            tracing::info!(rotation.id = %id, "stored a rotated key; re-provisioning with it next");
                                            // DPS starts once the answer is on the wire (see above).
                                            rotate_after_answer = true;
                                            (200, json!({ "accepted": true, "rotationId": id }))
                                        }
                                        Ok(rotation::Accepted::AlreadyDone(id)) => {
                                            if let Some(report) = rotation::completed_report(assignment) {
                                                rid += 1;
                                                control.push_back((format!("$iothub/twin/PATCH/properties/reported/?$rid=r{rid}"), json!({ "keyRotation": report }).to_string().into_bytes()));
                                            }
                                            (200, json!({ "accepted": true, "rotationId": id, "alreadyDone": true }))
                                        }
                                        Err(error) => {
                                            tracing::warn!(%error, "a key rotation was refused");
                                            (error.status(), json!({ "message": error.to_string() }))
                                        }
                                    };
                                    control.push_back((format!("$iothub/methods/res/{status}/?$rid={method_rid}"), payload.to_string().into_bytes()));
                                }
                                "Reprovision" => {
                                    // Answered at once: moving hubs removes the device from this
                                    // one, and with it the connection a later answer would need.
                                    let payload = json!({ "accepted": true, "message": "re-provisioning through DPS; the device moves if its hub changed" });
                                    control.push_back((format!("$iothub/methods/res/202/?$rid={method_rid}"), payload.to_string().into_bytes()));
                                    // DPS starts once the answer is on the wire (see below).
                                    reprovision_after_answer = true;
                                }
                                other => {
                                    let payload = json!({ "message": format!("this device has no method {other:?}; it offers Reprovision, RotateKey and GetDiagnostics") });
                                    control.push_back((format!("$iothub/methods/res/404/?$rid={method_rid}"), payload.to_string().into_bytes()));
                                }
                            }
                        } else if topic.starts_with(&format!("devices/{device_id}/messages/devicebound/")) {
                            shared.stats.cloud_messages.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(bytes = publish.payload.len(), "received a cloud-to-device message");
                        }
                    }
                    _ => {}
                }
            }
            Some(outcome) = method_results.recv() => match outcome {
                Ok(next) if next.hub != assignment.hub || next.device_id != assignment.device_id => {
                    tracing::info!(hub = %next.hub, "re-provisioned to another hub; moving");
                    let _ = client.try_disconnect();
                    return End::Reassigned;
                }
                // The same hub: the fingerprint watcher reconnects with the stored assignment.
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "re-provisioning failed; staying on the current hub");
                    rid += 1;
                    let report = json!({ "provisioning": { "status": "reprovisionFailed", "error": error, "at": now() } });
                    control.push_back((format!("$iothub/twin/PATCH/properties/reported/?$rid=r{rid}"), report.to_string().into_bytes()));
                }
            },
            Some(outcome) = rotation_results.recv() => match outcome {
                Ok(rotation::Finished::Done(next)) => {
                    shared.rotation_backoff_ms.store(FIRST_BACKOFF.as_millis() as u64, Ordering::Relaxed);
                    tracing::info!(hub = %next.hub, "moving to the rotated key");
                    let _ = client.try_disconnect();
                    return End::Reassigned;
                }
                Ok(rotation::Finished::Refused(id, error)) => {
                    fingerprint = config.state.fingerprint();
                    rid += 1;
                    let report = json!({ "keyRotation": rotation::refused_report(&id, &error, &now()) });
                    control.push_back((format!("$iothub/twin/PATCH/properties/reported/?$rid=r{rid}"), report.to_string().into_bytes()));
                }
                Ok(rotation::Finished::Nothing) => {}
                Err(reason) => {
                    let wait = Duration::from_millis(shared.rotation_backoff_ms.load(Ordering::Relaxed));
                    shared.rotation_backoff_ms.store((wait * 2).min(MAX_BACKOFF).as_millis() as u64, Ordering::Relaxed);
                    let wait = jittered(wait);
                    tracing::warn!(%reason, retry_in_ms = wait.as_millis() as u64, "re-provisioning with the rotated key failed; the current key stays in use, trying again later");
                    rotation_retry = Some(tokio::time::Instant::now() + wait);
                }
            },
            _ = tokio::time::sleep_until(rotation_retry.unwrap_or_else(tokio::time::Instant::now)), if rotation_retry.is_some() => {
                rotation_retry = None;
                start_rotation(config, shared, &rotation_done);
            }
            _ = shared.produced.notified() => {}
            _ = watch_state.tick() => {
                if config.state.fingerprint() != fingerprint {
                    tracing::info!("the device has a new assignment; moving");
                    let _ = client.try_disconnect();
                    return End::Reassigned;
                }
            }
            _ = tokio::time::sleep_until(renew_at), if flushing.is_none() && renewing.is_none() => {
                // The token is still valid for a fifth of its lifetime: drain within three
                // quarters of that, leaving the rest for the DISCONNECT.
                renewing = Some(tokio::time::Instant::now() + config.token_lifetime.mul_f64(0.15));
            }
            _ = tokio::time::sleep_until(renewing.unwrap_or(renew_at)), if renewing.is_some() => {}
            _ = stopped(shutdown), if flushing.is_none() => {
                flushing = Some(tokio::time::Instant::now() + FLUSH_LIMIT);
                // Shutting down drains the whole outbox; a renewal would stop that.
                renewing = None;
            }
        }
    }
}

/// Applies desired properties; answers the reported patch that acknowledges them.
fn apply_desired(shared: &Shared, desired: &Map<String, Value>) -> Value {
    let version = desired.get("$version").and_then(Value::as_u64);
    let mut ack = Map::new();
    if let Some(value) = desired.get("telemetryIntervalSeconds") {
        let (status, description) = match value.as_f64() {
            Some(seconds) if (0.05..=3600.0).contains(&seconds) => {
                shared
                    .interval_ms
                    .store((seconds * 1000.0) as u64, Ordering::Relaxed);
                (200, "applied")
            }
            _ => (
                400,
                "telemetryIntervalSeconds must be a number from 0.05 to 3600",
            ),
        };
        ack.insert(
            "telemetryIntervalSeconds".into(),
            json!({ "value": value, "ac": status, "av": version, "ad": description }),
        );
    }
    if let Some(version) = version {
        ack.insert("acknowledgedDesiredVersion".into(), json!(version));
        shared.stats.desired_applied.fetch_add(1, Ordering::Relaxed);
    }
    Value::Object(ack)
}

/// What the device reports when it connects.
fn connect_report(
    config: &SenderConfig,
    assignment: &Assignment,
    shared: &Shared,
    desired_ack: Value,
) -> Value {
    let (queued, dropped) = {
        let outbox = shared.outbox.lock().unwrap_or_else(|p| p.into_inner());
        (outbox.len(), outbox.dropped())
    };
    let mut report = json!({
        "provisioning": {
            "status": "provisioned",
            "hub": assignment.hub,
            "deviceId": assignment.device_id,
            "substatus": assignment.substatus,
            "at": assignment.assigned_at,
        },
        "deviceInfo": { "model": config.info.model, "serialNumber": config.info.serial_number },
        "firmware": config.info.firmware,
        "status": { "state": "online", "since": now() },
        "telemetry": { "queued": queued, "dropped": dropped, "intervalMs": shared.interval_ms.load(Ordering::Relaxed) },
    });
    if let Some(rotation) = rotation::completed_report(assignment) {
        // Every connection says it again: the backend retires the old key on seeing it, and a
        // report lost in a disconnection is sent by the next connection.
        report["keyRotation"] = rotation;
    }
    if let (Some(report), Value::Object(ack)) = (report.as_object_mut(), desired_ack) {
        report.extend(ack);
    }
    report
}

fn diagnostics(assignment: &Assignment, shared: &Shared) -> Value {
    let stats = &shared.stats;
    let (queued, dropped) = {
        let outbox = shared.outbox.lock().unwrap_or_else(|p| p.into_inner());
        (outbox.len(), outbox.dropped())
    };
    json!({
        "hub": assignment.hub,
        "deviceId": assignment.device_id,
        "uptimeSeconds": shared.started.elapsed().as_secs(),
        "accepted": stats.accepted.load(Ordering::Relaxed),
        "acknowledged": stats.acknowledged.load(Ordering::Relaxed),
        "queued": queued,
        "dropped": dropped,
        "connections": stats.connections.load(Ordering::Relaxed),
        "tokenRenewals": stats.renewals.load(Ordering::Relaxed),
        "tokenRenewalsCutShort": stats.renewals_cut_short.load(Ordering::Relaxed),
        "cloudMessages": stats.cloud_messages.load(Ordering::Relaxed),
        "intervalMs": shared.interval_ms.load(Ordering::Relaxed),
    })
}
