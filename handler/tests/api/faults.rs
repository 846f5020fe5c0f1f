//! Faults, on loopback and bounded: storage killed and restarted during a 10,000-row import and
//! during event ingestion, the handler killed mid-batch, the webhook receiver down for a long
//! while (compressed through NOTIFY_RETRY_INTERVALS). After each, DPS and the registry agree, no
//! event is lost, every notification arrives once, and the records equal a fault-free run's.

use crate::helpers::{eventually, spawn_app, spawn_app_with, TestApp};
use emulator::fleet::hub_device::DeviceConnection;
use handler::cloud::dps::{DpsClient, Provisioning};
use iot_credentials::{ServiceConnectionString, StorageConnectionString};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Azurite's Table service keeps its data in LokiJS and writes it to disk every 5 s
/// (Azure/Azurite src/table/persistence/LokiTableMetadataStore.ts: `autosave: true,
/// autosaveInterval: 5000`), acknowledging writes before they are on disk: a SIGKILL loses up to
/// 5 s of acknowledged writes, which Table Storage never does. So a crash, as the handler sees
/// it, is the line cut (requests in flight unanswered, new connections refused); then Azurite is
/// stopped with SIGINT, on which it saves what it acknowledged and exits (its table main.js and
/// LokiJS `close`), and is started again over the same data. Waiting out an autosave instead
/// raced a save still being written.
const AZURITE_STOP_LIMIT: Duration = Duration::from_secs(60);

/// An Azurite of the test's own, persistent (`--location`), on its own port, that can be killed
/// with SIGKILL and started again over the same data.
struct PersistentAzurite {
    child: Option<tokio::process::Child>,
    port: u16,
    data: tempfile::TempDir,
}

impl PersistentAzurite {
    async fn start() -> Self {
        let port = free_port();
        let mut azurite = Self {
            child: None,
            port,
            data: tempfile::tempdir().unwrap(),
        };
        azurite.launch().await;
        azurite
    }

    async fn launch(&mut self) {
        let program = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../emulator/azurite/node_modules/.bin/azurite-table"
        );
        let log = std::fs::File::create(self.data.path().join("azurite.log")).unwrap();
        let child = tokio::process::Command::new(program)
            .arg("--location")
            .arg(self.data.path().join("db"))
            .args([
                "--disableTelemetry",
                "--tableHost",
                "127.0.0.1",
                "--tablePort",
            ])
            .arg(self.port.to_string())
            .stdout(log)
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("Azurite is installed (make test installs it)");
        self.child = Some(child);
        let log = self.data.path().join("azurite.log");
        eventually("Azurite to start", || async {
            std::fs::read_to_string(&log)
                .is_ok_and(|text| text.contains("successfully started"))
                .then_some(())
        })
        .await;
    }

    /// SIGINT (Azurite saves and exits), then a new Azurite over the same data on the same port.
    async fn stop_and_restart(&mut self) {
        let mut child = self.child.take().unwrap();
        let pid = child.id().unwrap();
        let sent = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "SIGINT sent to Azurite");
        tokio::time::timeout(AZURITE_STOP_LIMIT, child.wait())
            .await
            .expect("Azurite saves and exits within 60 s of SIGINT")
            .unwrap();
        std::fs::remove_file(self.data.path().join("azurite.log")).unwrap();
        self.launch().await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP line between the handler and a service that can be cut: open connections are dropped
/// (requests in flight get no answer, whether or not the service applied them) and new ones
/// are closed at once, until it is mended. Counts the bytes sent to the service.
struct Line {
    address: std::net::SocketAddr,
    open: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Line {
    async fn to(port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let line = Self {
            address: listener.local_addr().unwrap(),
            open: Arc::new(AtomicBool::new(true)),
            sent: Arc::default(),
            connections: Arc::default(),
        };
        let (open, sent, connections) = (
            line.open.clone(),
            line.sent.clone(),
            line.connections.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !open.load(Ordering::SeqCst) {
                    continue;
                }
                let sent = sent.clone();
                let task = tokio::spawn(async move {
                    let Ok(mut service) = TcpStream::connect(("127.0.0.1", port)).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.split();
                    let (mut service_read, mut service_write) = service.split();
                    let upstream = async {
                        let mut buffer = vec![0_u8; 16 * 1024];
                        loop {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let n = client_read.read(&mut buffer).await?;
                            if n == 0 {
                                return service_write.shutdown().await;
                            }
                            sent.fetch_add(n as u64, Ordering::Relaxed);
                            service_write.write_all(&buffer[..n]).await?;
                        }
                    };
                    // The service closing its end (Azurite ends idle keep-alive connections
                    // after 5 s) reaches the client as it would across a network; a line that
                    // swallowed it left pooled connections that take a request and never answer.
                    let downstream = async {
                        use tokio::io::AsyncWriteExt;
                        tokio::io::copy(&mut service_read, &mut client_write).await?;
                        client_write.shutdown().await
                    };
                    let _ = tokio::join!(upstream, downstream);
                });
                connections.lock().unwrap().push(task.abort_handle());
            }
        });
        line
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn mend(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn endpoint(&self) -> String {
        format!("http://{}/devstoreaccount1", self.address)
    }
}

/// Cuts the line, stops Azurite (it writes what it acknowledged) and starts it again.
async fn crash_storage(line: &Line, azurite: &mut PersistentAzurite) {
    line.cut();
    azurite.stop_and_restart().await;
    line.mend();
}

/// Polls `check` every 20 ms until it holds, at most `limit`.
async fn within(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A value without what differs between two runs by nature: etags and times.
fn without_times(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, v)| k.as_str() != "etag" && !v.as_str().is_some_and(looks_like_time))
                .map(|(k, v)| (k.clone(), without_times(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_times).collect()),
        other => other.clone(),
    }
}

fn looks_like_time(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 19
        && bytes[..4].iter().all(u8::is_ascii_digit)
        && bytes[4] == b'-'
        && bytes[10] == b'T'
}

/// Every device record of a customer, by device id, without times and etags.
pub(crate) async fn records(app: &TestApp, customer: &str) -> BTreeMap<String, Value> {
    let mut all = BTreeMap::new();
    let mut path = format!("/devices?customer={customer}&pageSize=1000");
    loop {
        let page = app.get(&path).await;
        assert_eq!(page.status, 200, "{}", page.text);
        for item in page.body["items"].as_array().unwrap() {
            all.insert(
                item["deviceId"].as_str().unwrap().to_owned(),
                without_times(item),
            );
        }
        match page.body["continuationToken"].as_str() {
            Some(token) => {
                path =
                    format!("/devices?customer={customer}&pageSize=1000&continuationToken={token}")
            }
            None => return all,
        }
    }
}

/// The registration ids DPS holds for this app's emulator.
async fn dps_enrollments(app: &TestApp) -> Vec<String> {
    let endpoints = app.emulator.endpoints();
    let connection =
        ServiceConnectionString::parse(&endpoints.dps.service_connection_string).unwrap();
    let http = handler::cloud::https_client(Some(app.emulator.ca_certificate_pem())).unwrap();
    let mut ids = DpsClient::new(connection, http)
        .enrollment_ids()
        .await
        .unwrap();
    ids.sort();
    ids
}

/// Checks that DPS holds exactly the registry's enrollments of `customer`.
pub(crate) async fn assert_dps_agrees(app: &TestApp, customer: &str) {
    let registry: Vec<String> = records(app, customer)
        .await
        .values()
        .map(|r| r["registrationId"].as_str().unwrap().to_owned())
        .collect();
    let mut registry = registry;
    registry.sort();
    assert_eq!(dps_enrollments(app).await, registry, "DPS and the registry");
}

/// The CSV header and row `i` of the bulk import.
const CSV_HEADER: &str =
    "Registration ID,Customer ID,Customer Name,Serial Number,Model,Enabled,tag.site,desired.interval\n";

fn csv_row(i: usize) -> String {
    format!(
        "bulk-{i:05},bulk,Bulk Ltd,SN{i},T-100,{},berlin,{}\n",
        i % 3 != 0,
        10 + i % 50
    )
}

fn csv_of(rows: impl Iterator<Item = usize>) -> String {
    let mut csv = String::from(CSV_HEADER);
    for i in rows {
        csv.push_str(&csv_row(i));
    }
    csv
}

/// Imports `csv`, answering the whole answer (summary and per-row results).
async fn import_answer(app: &TestApp, csv: &str) -> Value {
    let answer = app
        .send(
            app.request(Method::POST, "/enrollments/import")
                .header("content-type", "text/csv")
                .timeout(Duration::from_secs(300))
                .body(csv.to_owned()),
        )
        .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        &answer.text[..answer.text.len().min(500)]
    );
    answer.body
}

async fn import(app: &TestApp, csv: &str) -> Value {
    import_answer(app, csv).await["summary"].clone()
}

/// The 1-based rows of an import answer whose result is `failed`.
fn failed_rows(answer: &Value) -> Vec<usize> {
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["result"] == "failed")
        .map(|r| r["row"].as_u64().unwrap() as usize)
        .collect()
}

/// Rows of the import the storage crash interrupts: 1,000 in `make test`; `make bench` runs the
/// 10,000 rows of a fleet (FAULT_IMPORT_ROWS), which take minutes against a persistent Azurite
/// (about ten Table Storage calls a row) and so are a soak, not a test to wait for.
fn import_rows() -> usize {
    std::env::var("FAULT_IMPORT_ROWS")
        .ok()
        .and_then(|rows| rows.parse().ok())
        .unwrap_or(1_000)
}

#[tokio::test]
async fn storage_killed_during_a_large_import_loses_nothing_once_the_import_is_rerun() {
    let rows = import_rows();
    // A row's record depends on that row alone, so a fault-free import of every 100th row is
    // the reference for those rows (importing all of them twice would double the test's time).
    const SAMPLE: usize = 100;
    let csv = csv_of(0..rows);
    let mut azurite = PersistentAzurite::start().await;
    let line = Line::to(azurite.port).await;
    let storage = StorageConnectionString::development(&line.endpoint()).expose();
    let overrides = [("AzureWebJobsStorage", storage.as_str())];
    let (clean, faulty) = tokio::join!(spawn_app(), spawn_app_with(&overrides));
    let summary = import(&clean, &csv_of((0..rows).step_by(SAMPLE))).await;
    assert_eq!(summary["created"], rows / SAMPLE, "{summary}");

    // Storage dies a little way into the import (its writes are ~1 KB a row, 200 bytes a row
    // is about a fifth of the way).
    let started = line.sent();
    let t = std::time::Instant::now();
    let first = {
        let import = import_answer(&faulty, &csv);
        tokio::pin!(import);
        let crash = async {
            within(
                "the import to write to storage",
                Duration::from_secs(180),
                || line.sent() - started > rows as u64 * 200,
            )
            .await;
            crash_storage(&line, &mut azurite).await;
        };
        let (summary, ()) = tokio::join!(import, crash);
        summary
    };
    eprintln!(
        "the import during the crash took {:?}: {}",
        t.elapsed(),
        first["summary"]
    );
    assert_eq!(first["summary"]["rows"], rows);
    // The rows the crash failed say so; importing them again finishes them (in parts, each
    // well within the host's 230 s limit on an HTTP function).
    // Row numbers are 1-based; the CSV's row n holds device n - 1.
    let mut failed: Vec<usize> = failed_rows(&first).into_iter().map(|row| row - 1).collect();
    for _ in 0..3 {
        let mut still = Vec::new();
        for part in failed.chunks(2_000) {
            let again = import_answer(&faulty, &csv_of(part.iter().copied())).await;
            assert_eq!(again["summary"]["invalid"], 0, "{}", again["summary"]);
            still.extend(failed_rows(&again).into_iter().map(|row| part[row - 1]));
        }
        failed = still;
        if failed.is_empty() {
            break;
        }
    }
    assert!(failed.is_empty(), "rows still failing: {failed:?}");
    assert_eq!(faulty.run_function("Reconcile").await, 202);

    let (expected, got) = (
        records(&clean, "bulk").await,
        records(&faulty, "bulk").await,
    );
    if got.len() != rows {
        let dps = dps_enrollments(&faulty).await;
        let mut missing = Vec::new();
        for id in (0..rows).map(|i| format!("bulk-{i:05}")) {
            if !got.contains_key(&id) {
                let record = faulty.get(&format!("/devices/{id}")).await;
                missing.push(format!(
                    "{id} (in DPS: {}; GET /devices/{id}: {} {})",
                    dps.contains(&id),
                    record.status,
                    record.text
                ));
            }
        }
        panic!("{} of {rows} records, missing {missing:?}", got.len());
    }
    let unfinished: Vec<&Value> = got
        .values()
        .filter(|r| !r["pendingChange"].is_null())
        .collect();
    assert!(
        unfinished.is_empty(),
        "{} records keep an intent, first {}",
        unfinished.len(),
        unfinished[0]
    );
    let differing: Vec<&String> = expected
        .iter()
        .filter(|(id, record)| got.get(*id) != Some(record))
        .map(|(id, _)| id)
        .collect();
    assert!(
        differing.is_empty(),
        "{} records differ from the fault-free run's, first {}: {} vs {}",
        differing.len(),
        differing[0],
        expected[differing[0]],
        got.get(differing[0]).unwrap_or(&Value::Null)
    );
    assert_dps_agrees(&faulty, "bulk").await;
}

/// A webhook receiver that refuses everything (503) while `down`, then takes what it gets.
#[derive(Default)]
struct Receiver {
    down: AtomicBool,
    refused: AtomicU64,
    /// Notification ids in the order they were accepted, with the documents.
    accepted: Mutex<Vec<(String, Value)>>,
}

impl Receiver {
    async fn start() -> (Arc<Self>, String) {
        use warp::Filter;
        let receiver = Arc::new(Self {
            down: AtomicBool::new(true),
            ..Self::default()
        });
        let state = receiver.clone();
        let route = warp::post()
            .and(warp::header::<String>("x-registry-notification-id"))
            .and(warp::body::bytes())
            .map(move |id: String, body: bytes::Bytes| {
                if state.down.load(Ordering::SeqCst) {
                    state.refused.fetch_add(1, Ordering::SeqCst);
                    return warp::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                let document: Value = serde_json::from_slice(&body).unwrap_or_default();
                state.accepted.lock().unwrap().push((id, document));
                warp::http::StatusCode::NO_CONTENT
            });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/notify", listener.local_addr().unwrap());
        tokio::spawn(warp::serve(route).incoming(listener).run());
        (receiver, url)
    }

    fn accepted(&self) -> Vec<(String, Value)> {
        self.accepted.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn notifications_queued_while_the_webhook_is_down_arrive_once_each_when_it_is_back() {
    const DEVICES: usize = 8;
    let (receiver, url) = Receiver::start().await;
    // The real schedule (1 s doubling to 5 min) compressed: 50 ms doubling to 400 ms, so a few
    // seconds down here are a few minutes' worth of attempts there.
    let app = spawn_app_with(&[
        ("NOTIFY_WEBHOOK_URL", url.as_str()),
        ("NOTIFY_WEBHOOK_SECRET", "test-webhook-secret-1234"),
        ("NOTIFY_RETRY_INTERVALS", "0.05,0.4"),
    ])
    .await;
    let mut connections = Vec::new();
    for n in 0..DEVICES {
        let id = format!("hook-{n}");
        app.enroll(&id, "contoso").await;
        let (hub, device_id) = app.register(&id).await;
        let mut connection = app.connect(&id, &hub, &device_id).await;
        connection
            .report(&json!({ "provisioning": { "status": "provisioned" } }))
            .await
            .unwrap();
        connections.push(connection);
    }
    // Every device's two changes are recorded while the receiver refuses them, again and again.
    for n in 0..DEVICES {
        eventually("the report to be recorded", || async {
            let d = app.get(&format!("/devices/hook-{n}")).await.body;
            (d["reported"]["provisioningStatus"] == "provisioned").then_some(())
        })
        .await;
    }
    within(
        "each notification to be refused many times",
        Duration::from_secs(60),
        || receiver.refused.load(Ordering::SeqCst) >= (2 * DEVICES * 6) as u64,
    )
    .await;
    assert!(receiver.accepted().is_empty());

    // Back up: the background task and timer runs (as other instances would) race for them.
    receiver.down.store(false, Ordering::SeqCst);
    let timers =
        futures_util::future::join_all((0..4).map(|_| app.run_function("DeliverNotifications")))
            .await;
    assert!(timers.iter().all(|status| *status == 202), "{timers:?}");
    within(
        "every notification to arrive",
        Duration::from_secs(30),
        || receiver.accepted().len() >= 2 * DEVICES,
    )
    .await;
    // More passes find nothing left to send.
    for _ in 0..3 {
        assert_eq!(app.run_function("DeliverNotifications").await, 202);
    }
    let accepted = receiver.accepted();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, _) in &accepted {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let duplicates: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "delivered more than once: {duplicates:?}"
    );
    assert_eq!(
        accepted.len(),
        2 * DEVICES,
        "{:#?}",
        accepted.iter().map(|(_, d)| d).collect::<Vec<_>>()
    );
    for n in 0..DEVICES {
        let device = format!("hook-{n}");
        // The record goes from enrolled to assigned and from no reported status to
        // provisioned, in whichever order the events (from different partitions) arrive; the
        // two notifications chain from the first state to the last, whatever order they were
        // delivered in after the outage.
        let mut steps: Vec<(String, String)> = accepted
            .iter()
            .filter(|(_, d)| d["deviceId"] == device.as_str())
            .map(|(_, d)| {
                (
                    format!("{}/{}", d["previousStatus"], d["previousReportedStatus"]),
                    format!("{}/{}", d["status"], d["reportedStatus"]),
                )
            })
            .collect();
        let mut state = "\"enrolled\"/null".to_owned();
        while let Some(next) = steps.iter().position(|(from, _)| *from == state) {
            state = steps.remove(next).1;
        }
        assert_eq!(state, "\"assigned\"/\"provisioned\"", "{device}");
        assert!(
            steps.is_empty(),
            "{device}: notifications off the chain: {steps:?}"
        );
    }
    for connection in connections {
        connection.close().await;
    }
}

/// Reports each device makes in the event tests.
const REPORTS: usize = 3;

/// Enrolls `devices` devices on the first hub, registers and connects them.
async fn connected_fleet(app: &TestApp, devices: usize) -> Vec<DeviceConnection> {
    let mut connections = Vec::new();
    for n in 0..devices {
        let id = format!("fleet-{n:02}");
        let answer = app
            .post(
                "/enrollments",
                &json!({ "registrationId": id, "customer": { "id": "fleet" }, "iotHub": "127.0.0.3" }),
            )
            .await;
        assert_eq!(answer.status, 201, "{}", answer.text);
        let (hub, device_id) = app.register(&id).await;
        connections.push(app.connect(&id, &hub, &device_id).await);
    }
    connections
}

/// Every device makes its `k`th report.
async fn report_round(connections: &mut [DeviceConnection], k: usize) {
    for connection in connections.iter_mut() {
        connection
            .report(&json!({ "provisioning": { "status": format!("step-{k}") }, "firmware": format!("1.{k}") }))
            .await
            .unwrap();
    }
}

/// Every device makes all its reports.
async fn report_all(connections: &mut [DeviceConnection]) {
    for k in 1..=REPORTS {
        report_round(connections, k).await;
    }
}

/// Waits (at most two minutes: the event function's retry policy backs off up to 30 s) until
/// every device's last report and all its reports' history entries are recorded; then answers
/// the records. Panics naming a device whose reports are missing or recorded twice.
async fn settled_fleet(app: &TestApp, devices: usize) -> BTreeMap<String, Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    for n in 0..devices {
        let id = format!("fleet-{n:02}");
        loop {
            let record = app.get(&format!("/devices/{id}")).await.body;
            let history = app
                .get(&format!("/devices/{id}/history?pageSize=100"))
                .await
                .body;
            let reports = history["items"].as_array().map_or(0, |items| {
                items.iter().filter(|e| e["kind"] == "reported").count()
            });
            let last = format!("step-{REPORTS}");
            if record["reported"]["provisioningStatus"] == last.as_str() && reports >= REPORTS {
                assert_eq!(reports, REPORTS, "{id}: every report once in the history");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id}: {reports} of {REPORTS} reports recorded, record {record}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    refresh_registrations(app, (0..devices).map(|n| format!("fleet-{n:02}"))).await;
    records(app, "fleet").await
}

/// Has the registry ask DPS for each device's registration now. A read of a device whose
/// record names no hub yet (its registration event not yet recorded) keeps what DPS said, so
/// whether a record shows the registration depends on when a test happened to read it; after
/// this, every record shows DPS's registration as it is.
pub(crate) async fn refresh_registrations(app: &TestApp, ids: impl Iterator<Item = String>) {
    for id in ids {
        let answer = app.get(&format!("/devices/{id}?refresh=true")).await;
        assert_eq!(answer.status, 200, "{id}: {}", answer.text);
    }
}

/// The handler process the stand-in runs for `app` (found by the port the stand-in gave it).
fn handler_pid(app: &TestApp) -> Option<u32> {
    let port = format!(
        "FUNCTIONS_CUSTOMHANDLER_PORT={}",
        app.emulator.functions().unwrap().handler.port()
    );
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            environ
                .split(|b| *b == 0)
                .any(|var| var == port.as_bytes())
                .then_some(pid)
        })
}

/// SIGKILLs the handler and waits until the stand-in has started a new one.
async fn kill_handler(app: &TestApp) {
    let handler = &app.emulator.functions().unwrap().handler;
    let generation = handler.generation();
    let pid = handler_pid(app).expect("the handler runs");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(
        handler
            .wait_ended(generation, Duration::from_secs(10))
            .await,
        "the stand-in saw the handler die"
    );
    assert!(handler.wait_ready_for(Duration::from_secs(30)).await);
    assert_ne!(handler.generation(), generation, "a new handler answers");
}

pub(crate) fn assert_same_records(
    expected: &BTreeMap<String, Value>,
    got: &BTreeMap<String, Value>,
) {
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (id, record) in expected {
        assert_eq!(&got[id], record, "{id} differs from the fault-free run's");
    }
}

#[tokio::test]
async fn a_handler_killed_while_events_flow_loses_none_of_them() {
    const DEVICES: usize = 6;
    let (clean, faulty) = tokio::join!(spawn_app(), spawn_app());
    let (mut quiet, mut troubled) = tokio::join!(
        connected_fleet(&clean, DEVICES),
        connected_fleet(&faulty, DEVICES)
    );
    // The handler is killed right after each round of reports, while the round's events are
    // being delivered to it.
    let troubles = async {
        for k in 1..=REPORTS {
            report_round(&mut troubled, k).await;
            kill_handler(&faulty).await;
        }
    };
    tokio::join!(report_all(&mut quiet), troubles);
    let (expected, got) = tokio::join!(
        settled_fleet(&clean, DEVICES),
        settled_fleet(&faulty, DEVICES)
    );
    assert_same_records(&expected, &got);
    for connection in quiet.into_iter().chain(troubled) {
        connection.close().await;
    }
}

#[tokio::test]
async fn storage_killed_during_event_ingestion_loses_no_event() {
    const DEVICES: usize = 6;
    let mut azurite = PersistentAzurite::start().await;
    let line = Line::to(azurite.port).await;
    let storage = StorageConnectionString::development(&line.endpoint()).expose();
    let overrides = [("AzureWebJobsStorage", storage.as_str())];
    let (clean, faulty) = tokio::join!(spawn_app(), spawn_app_with(&overrides));
    let (mut quiet, mut troubled) = tokio::join!(
        connected_fleet(&clean, DEVICES),
        connected_fleet(&faulty, DEVICES)
    );
    // Storage is cut right after the first round, while its events are being recorded; the
    // other rounds come during the outage.
    let troubles = async {
        report_round(&mut troubled, 1).await;
        let crash = crash_storage(&line, &mut azurite);
        let rest = async {
            for k in 2..=REPORTS {
                report_round(&mut troubled, k).await;
            }
        };
        tokio::join!(crash, rest);
    };
    tokio::join!(report_all(&mut quiet), troubles);
    let (expected, got) = tokio::join!(
        settled_fleet(&clean, DEVICES),
        settled_fleet(&faulty, DEVICES)
    );
    assert_same_records(&expected, &got);
    assert_dps_agrees(&faulty, "fleet").await;
    for connection in quiet.into_iter().chain(troubled) {
        connection.close().await;
    }
}
