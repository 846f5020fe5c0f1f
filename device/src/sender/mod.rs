//! The telemetry sender: a long-running loop that keeps the device connected to its hub.
//!
//! - Reads the stored assignment; notices a new one (after re-provisioning) and moves.
//! - MQTT over TLS (rumqttc), one [`session`] per connection, with a SAS token it renews before
//!   expiry ([`token_renewal`]) by reconnecting with a
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

mod incoming;
mod reports;
mod session;
mod token_renewal;

use crate::assignment::StateDir;
use crate::backoff;
use crate::outbox::{Message, Outbox};
use crate::provision::{tls_config, DeviceInfo, Provisioner};
use crate::rotation;
use crate::telemetry::Source;
use iot_credentials::sas::unix_now;
use session::Session;
use std::collections::BTreeMap;
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
        let session = Session::new(&config, &assignment, &shared, tls.clone(), &mut shutdown);
        match session.run().await {
            End::Shutdown => break,
            End::Renew => {
                stats.renewals.fetch_add(1, Ordering::Relaxed);
                backoff = FIRST_BACKOFF;
            }
            End::Reassigned => backoff = FIRST_BACKOFF,
            End::Failed(reason) => {
                let wait = backoff::spread(backoff);
                tracing::warn!(
                    %reason,
                    retry_in_ms = wait.as_millis() as u64,
                    "the connection to the hub failed; retrying"
                );
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
