//! `handler-bench`: the handler's figures for `make bench`. Starts the handler the way the
//! Functions host does (environment, port), against a running emulator and Azurite, and measures
//! start-up time (exec to first answered request), idle memory, and requests per second with
//! p50/p99 latency for enrollment create and device read; events recorded per second; the fleet
//! dashboard's page time over a fleet of 10,000 devices in every state, next to one page of
//! `GET /api/devices` and a scan of every page of it; then Azurite's own raw insert and
//! point-read rates through the same client library, as the ceiling the handler sits on.

// A command-line tool: printing results is its job.
#![allow(clippy::print_stdout)]

use anyhow::Context;
use azure_data_tables::clients::TableServiceClientBuilder;
use azure_storage::{CloudLocation, StorageCredentials};
use clap::Parser;
use futures_util::stream::{self, StreamExt};
use handler::domain::events::{Change, ConnectionSequence, EventKey, HubEvent, Stamp};
use handler::domain::journal::HistoryEntry;
use handler::domain::{
    Asset, Customer, CustomerId, DeviceId, DeviceRecord, DpsSync, RegistrationId,
};
use handler::storage::tables::TableRegistry;
use handler::storage::{Registry, Stored};
use iot_credentials::StorageConnectionString;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// The emulator's endpoints.json.
    #[arg(long)]
    endpoints: PathBuf,
    /// Azurite's connection string.
    #[arg(long)]
    storage: String,
    /// The handler executable.
    #[arg(long)]
    handler: PathBuf,
    /// Devices to enroll.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds of reads.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Start-ups to time.
    #[arg(long, default_value_t = 20)]
    starts: usize,
    /// Events to record in the events phase.
    #[arg(long, default_value_t = 50_000)]
    events: usize,
    /// Invocations in flight (the host runs one per partition).
    #[arg(long, default_value_t = 8)]
    partitions: usize,
    /// Devices of the dashboard's fleet (written straight to storage, in a mix of states).
    #[arg(long, default_value_t = 10_000)]
    dashboard_devices: usize,
    /// Page views timed in the dashboard phase (one at a time, as a person opens the page).
    #[arg(long, default_value_t = 10)]
    views: usize,
}

/// A deterministic generator (xorshift) for the event mix.
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One invocation of `OnHubEvents` as the host sends it: `size` events for random devices,
/// nine in ten telemetry, the rest twin changes and connection changes, in stream order.
fn invocation(
    rng: &mut Seeded,
    partition: usize,
    first_sequence: i64,
    size: usize,
    devices: usize,
) -> Value {
    let now = time::OffsetDateTime::now_utc();
    let stamp = |offset_ms: i64| {
        (now + time::Duration::milliseconds(offset_ms))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let (mut bodies, mut props, mut system, mut enqueued, mut sequences) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..size {
        let sequence = first_sequence + i as i64;
        let device = format!("bench-{:06}", rng.below(devices));
        let at = stamp(i as i64);
        let (source, body, app) = match rng.below(20) {
            0 => (
                "twinChangeEvents",
                json!({ "version": sequence, "properties": { "reported": { "firmware": format!("1.{sequence}"), "$version": sequence } } }).to_string(),
                json!({ "hubName": "hub-1", "deviceId": device, "opType": "updateTwin", "operationTimestamp": at }),
            ),
            1 => (
                "deviceConnectionStateEvents",
                json!({ "sequenceNumber": format!("{:064X}", sequence) }).to_string(),
                json!({ "hubName": "hub-1", "deviceId": device, "opType": if sequence % 2 == 0 { "deviceConnected" } else { "deviceDisconnected" }, "operationTimestamp": at }),
            ),
            _ => ("Telemetry", json!({ "temperature": 21.5 }).to_string(), json!({ "kind": "reading" })),
        };
        bodies.push(body);
        props.push(app);
        system.push(
            json!({ "iothub-message-source": source, "iothub-connection-device-id": device }),
        );
        enqueued.push(at.trim_end_matches('Z').to_owned());
        sequences.push(sequence);
    }
    json!({
        "Data": { "events": serde_json::to_string(&bodies).unwrap_or_default() },
        "Metadata": {
            "PartitionContext": { "EventHubName": "hub-1", "PartitionId": partition.to_string() },
            "SequenceNumberArray": serde_json::to_string(&sequences).unwrap_or_default(),
            "EnqueuedTimeUtcArray": serde_json::to_string(&enqueued).unwrap_or_default(),
            "PropertiesArray": serde_json::to_string(&props).unwrap_or_default(),
            "SystemPropertiesArray": serde_json::to_string(&system).unwrap_or_default(),
        }
    })
}

struct Handler {
    child: tokio::process::Child,
    base: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts the handler with the settings the host would give it; answers it and when it was
/// spawned.
fn spawn_handler(
    args: &Args,
    endpoints: &Value,
    prefix: &str,
) -> anyhow::Result<(Handler, Instant)> {
    let port = free_port()?;
    let hubs: Vec<&str> = endpoints["hubs"]
        .as_array()
        .context("no hubs")?
        .iter()
        .filter_map(|h| h["connectionString"].as_str())
        .collect();
    let text = |pointer: &str| {
        endpoints
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mut command = tokio::process::Command::new(&args.handler);
    command
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env(
            "DPS_SERVICE_CONNECTION_STRING",
            text("/dps/serviceConnectionString"),
        )
        .env("DPS_ID_SCOPE", text("/dps/idScope"))
        .env("DPS_DEVICE_ENDPOINT", text("/dps/deviceEndpoint"))
        .env("IOTHUB_CONNECTION_STRINGS", hubs.join("|"))
        .env("EXTRA_TRUSTED_CA_FILE", text("/caCertificatePath"))
        .env("AzureWebJobsStorage", &args.storage)
        .env("REGISTRY_TABLE_PREFIX", prefix)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let started = Instant::now();
    let child = command.spawn().context("starting the handler")?;
    Ok((
        Handler {
            child,
            base: format!("http://127.0.0.1:{port}/api"),
        },
        started,
    ))
}

/// Polls until the handler answers a request (bounded); the time from exec to that answer.
async fn first_answer(
    http: &reqwest::Client,
    handler: &Handler,
    started: Instant,
) -> anyhow::Result<Duration> {
    let deadline = started + Duration::from_secs(10);
    loop {
        if let Ok(response) = http
            .get(format!("{}/openapi.json", handler.base))
            .send()
            .await
        {
            if response.status().is_success() {
                return Ok(started.elapsed());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the handler did not answer within 10 s"
        );
        tokio::task::yield_now().await;
    }
}

fn rss_kib(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Rate and latency of a batch of timed operations.
struct Figures {
    count: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let last = sorted.len().saturating_sub(1) as f64;
        sorted
            .get((last * p).round() as usize)
            .copied()
            .unwrap_or_default()
    }

    fn row(&self, what: &str) -> String {
        format!(
            "| {what} | {:.0} | {:.1} ms | {:.1} ms | {} | {} |",
            self.rate(),
            self.percentile(0.5).as_secs_f64() * 1000.0,
            self.percentile(0.99).as_secs_f64() * 1000.0,
            self.count,
            self.failed
        )
    }
}

/// Runs `operation(i)` with `clients` in flight: for i in 0..count, or for `duration` when given
/// (i then cycles through 0..count).
async fn drive<F, Fut>(
    clients: usize,
    count: usize,
    duration: Option<Duration>,
    operation: F,
) -> Figures
where
    F: Fn(usize) -> Fut + Sync,
    Fut: std::future::Future<Output = bool>,
{
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let results: Vec<(Vec<Duration>, usize)> = stream::iter(0..clients)
        .map(|_| async {
            let mut latencies = Vec::new();
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                match duration {
                    Some(limit) if started.elapsed() >= limit => break,
                    None if i >= count => break,
                    _ => {}
                }
                let t = Instant::now();
                if operation(i % count.max(1)).await {
                    latencies.push(t.elapsed());
                } else {
                    failed += 1;
                }
            }
            (latencies, failed)
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut figures = Figures {
        count: 0,
        failed: 0,
        elapsed,
        latencies: Vec::new(),
    };
    for (latencies, failed) in results {
        figures.count += latencies.len();
        figures.failed += failed;
        figures.latencies.extend(latencies);
    }
    figures
}

/// Device `i` of the dashboard's fleet, as its events would have left it, with the history
/// entries they would have written: by `i % 100`, 10 enrolled only, 10 registered and never
/// connected, 5 disconnected 3 hours ago, 5 disconnected 10 minutes ago, 1 connected and
/// reporting a failure, 9 connected without a report yet, 60 connected and reporting; spread
/// over the hubs.
fn fleet_device(i: usize, hubs: &[String]) -> anyhow::Result<(DeviceRecord, Vec<HistoryEntry>)> {
    let id = format!("fleet-{i:06}");
    let now = time::OffsetDateTime::now_utc();
    let stamp = |minutes_ago: i64| {
        Stamp::parse(
            &(now - time::Duration::minutes(minutes_ago))
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        )
        .context("a stamp")
    };
    let mut record = DeviceRecord {
        registration_id: RegistrationId::parse(&id)?,
        device_id: DeviceId::parse(&id)?,
        customer: Customer {
            id: CustomerId::parse(&format!("customer-{}", i % 50))?,
            name: Some(format!("Customer {}", i % 50)),
        },
        asset: Asset {
            serial_number: Some(format!("SN{i}")),
            model: Some("B-1".into()),
            attributes: Default::default(),
        },
        initial_twin: Default::default(),
        enabled: true,
        iot_hub: None,
        sync: DpsSync::Complete,
        registration: None,
        registration_checked_at: None,
        live: Default::default(),
        key_slot: Default::default(),
        key_rotation: None,
        last_key_rotation: None,
        created_at: stamp(600)?.to_string(),
        updated_at: stamp(1)?.to_string(),
    };
    let state = i % 100;
    if state < 10 {
        return Ok((record, Vec::new()));
    }
    let hub = hubs[i % hubs.len()].clone();
    let mut history = Vec::new();
    let mut sequence = 0;
    let mut happen = |record: &mut DeviceRecord,
                      minutes_ago: i64,
                      kind: &str,
                      change: Change|
     -> anyhow::Result<()> {
        sequence += 1;
        let at = stamp(minutes_ago)?;
        record.live.apply(&HubEvent {
            key: EventKey {
                stream: "bench".into(),
                partition: "0".into(),
                sequence,
            },
            device_id: id.clone(),
            hub: hub.clone(),
            at: at.clone(),
            enqueued: at.clone(),
            change,
        });
        history.push(HistoryEntry {
            at,
            kind: kind.into(),
            hub: Some(hub.clone()),
            detail: None,
            cause: format!("bench~{sequence}"),
        });
        Ok(())
    };
    let connection = |n: u8| ConnectionSequence::parse(&format!("{n:064X}")).context("a sequence");
    happen(
        &mut record,
        500,
        "registered",
        Change::Created { reported: None },
    )?;
    if state < 20 {
        return Ok((record, history));
    }
    happen(
        &mut record,
        499,
        "connected",
        Change::Connected(connection(1)?),
    )?;
    let status = match state {
        20..=29 => {
            let gone = if state < 25 { 180 } else { 10 };
            happen(
                &mut record,
                gone,
                "disconnected",
                Change::Disconnected(connection(2)?),
            )?;
            return Ok((record, history));
        }
        30 => "reprovisionFailed",
        31..=39 => return Ok((record, history)),
        _ => "provisioned",
    };
    let reported = json!({ "provisioning": { "status": status }, "firmware": "1.0.0" });
    happen(
        &mut record,
        498,
        "reported",
        Change::Twin {
            reported: Some((reported.as_object().cloned().unwrap_or_default(), 2)),
            replaced: false,
        },
    )?;
    Ok((record, history))
}

/// Writes the dashboard's fleet under table prefix `prefix`, as the handler's own writes would
/// have: each record with its index rows, then its history in the record's transaction.
async fn write_fleet(args: &Args, endpoints: &Value, prefix: &str) -> anyhow::Result<Figures> {
    let storage = StorageConnectionString::parse(&args.storage)?;
    let registry = TableRegistry::new(&storage, prefix, handler::storage::tables::http_client());
    registry
        .ensure_tables()
        .await
        .map_err(|e| anyhow::anyhow!("the fleet's tables: {e}"))?;
    let hubs: Vec<String> = endpoints["hubs"]
        .as_array()
        .context("no hubs")?
        .iter()
        .filter_map(|h| h["hostName"].as_str().map(str::to_owned))
        .collect();
    anyhow::ensure!(!hubs.is_empty(), "the emulator has no hubs");
    Ok(drive(32, args.dashboard_devices, None, |i| {
        let device = fleet_device(i, &hubs);
        let registry = &registry;
        async move {
            let Ok((record, history)) = device else {
                return false;
            };
            let Ok(etag) = registry.insert(&record).await else {
                return false;
            };
            history.is_empty()
                || registry
                    .replace_with_history(
                        &Stored {
                            record: record.clone(),
                            etag,
                        },
                        &record,
                        &history,
                    )
                    .await
                    .is_ok()
        }
    })
    .await)
}

/// Sends `request` and reads its whole answer, as a browser or script would; true on a 200.
async fn read_whole(request: reqwest::RequestBuilder) -> bool {
    match request.send().await {
        Ok(response) if response.status().as_u16() == 200 => response.bytes().await.is_ok(),
        _ => false,
    }
}

/// The dashboard fleet's Devices table, for Azurite's raw scans.
fn fleet_table(
    args: &Args,
    prefix: &str,
) -> anyhow::Result<azure_data_tables::prelude::TableClient> {
    let storage = StorageConnectionString::parse(&args.storage)?;
    let credentials = StorageCredentials::access_key(
        storage.account_name().to_owned(),
        storage.account_key().expose_base64().to_owned(),
    );
    let location = CloudLocation::Custom {
        account: storage.account_name().to_owned(),
        uri: storage.table_endpoint().to_owned(),
    };
    Ok(
        TableServiceClientBuilder::with_location(location, credentials)
            .transport(azure_core::TransportOptions::new(Arc::new(
                handler::storage::tables::http_client(),
            )))
            .retry(azure_core::RetryOptions::none())
            .build()
            .table_client(format!("{prefix}Devices")),
    )
}

/// Walks every page of `GET /api/devices?pageSize=1000`: what reading whole records costs.
async fn every_device_page(http: &reqwest::Client, base: &str) -> bool {
    let mut url = format!("{base}/devices?pageSize=1000");
    loop {
        let Ok(response) = http.get(&url).send().await else {
            return false;
        };
        if response.status().as_u16() != 200 {
            return false;
        }
        let Ok(page) = response.json::<Value>().await else {
            return false;
        };
        match page["continuationToken"].as_str() {
            Some(token) => url = format!("{base}/devices?pageSize=1000&continuationToken={token}"),
            None => return true,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct RawRow {
    #[serde(rename = "PartitionKey")]
    partition_key: String,
    #[serde(rename = "RowKey")]
    row_key: String,
    #[serde(rename = "Data")]
    data: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let endpoints: Value = serde_json::from_slice(&std::fs::read(&args.endpoints)?)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let run = uuid::Uuid::new_v4().simple().to_string();

    // Start-up: exec to the first answered request, on fresh processes.
    let mut starts = Vec::new();
    for i in 0..args.starts.max(1) {
        let (mut handler, started) =
            spawn_handler(&args, &endpoints, &format!("S{}x{i}", &run[..8]))?;
        starts.push(first_answer(&http, &handler, started).await?);
        let _ = handler.child.kill().await;
    }
    starts.sort_unstable();
    let median = starts[starts.len() / 2];
    let worst = starts[starts.len() - 1];

    let prefix = format!("B{}", &run[..12]);
    let (handler, started) = spawn_handler(&args, &endpoints, &prefix)?;
    first_answer(&http, &handler, started).await?;
    let idle_rss = rss_kib(handler.child.id());

    let create = drive(args.clients, args.devices, None, |i| {
        let request = http
            .post(format!("{}/enrollments", handler.base))
            .json(&json!({
                "registrationId": format!("bench-{i:06}"),
                "customer": { "id": format!("customer-{}", i % 10) },
                "asset": { "serialNumber": format!("SN{i}"), "model": "B-1" },
            }));
        async move {
            request
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 201)
        }
    })
    .await;
    let read = drive(
        args.clients,
        args.devices,
        Some(Duration::from_secs(args.seconds)),
        |i| {
            let request = http.get(format!("{}/devices/bench-{i:06}", handler.base));
            async move {
                request
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 200)
            }
        },
    )
    .await;
    let loaded_rss = rss_kib(handler.child.id());

    // Events: batches of 100 as the host delivers them, one invocation per partition at a time.
    const BATCH: usize = 100;
    let batches = args.events.div_ceil(BATCH);
    let rng = std::sync::Mutex::new(Seeded(0x5eed_0000_1234_5678));
    // Warm-up, not measured: every device's first events (its first last-seen minute, and the
    // handler's first read of its record) cost what steady traffic does not.
    let warm_batches = args.devices.div_ceil(BATCH) * 3;
    drive(args.partitions, warm_batches, None, |i| {
        let body = {
            let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
            invocation(
                &mut rng,
                i % args.partitions,
                (i * BATCH) as i64 + 1,
                BATCH,
                args.devices,
            )
        };
        let request = http
            .post(format!(
                "{}/OnHubEvents",
                handler.base.trim_end_matches("/api")
            ))
            .json(&body);
        async move { request.send().await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    let recorded = drive(args.partitions, batches, None, |i| {
        let body = {
            let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
            invocation(
                &mut rng,
                i % args.partitions,
                1_000_000 + (i * BATCH) as i64,
                BATCH,
                args.devices,
            )
        };
        let request = http
            .post(format!(
                "{}/OnHubEvents",
                handler.base.trim_end_matches("/api")
            ))
            .json(&body);
        async move { request.send().await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    drop(handler);

    // The dashboard over a fleet of its own, next to the device list in the same handler.
    let fleet_prefix = format!("D{}", &run[..12]);
    let seeded = write_fleet(&args, &endpoints, &fleet_prefix).await?;
    let (handler, started) = spawn_handler(&args, &endpoints, &fleet_prefix)?;
    first_answer(&http, &handler, started).await?;
    let dashboard_url = format!("{}/dashboard", handler.base);
    let first_page = http.get(&dashboard_url).send().await?.text().await?;
    let page_bytes = first_page.len();
    anyhow::ensure!(
        first_page.contains(&format!("id=\"stage-enrolled\">{}<", seeded.count)),
        "the dashboard does not count the {} devices written",
        seeded.count
    );
    let dashboard = drive(1, args.views, None, |_| {
        read_whole(http.get(&dashboard_url))
    })
    .await;
    let dashboard_rss = rss_kib(handler.child.id());
    let one_page = drive(1, args.views, None, |_| {
        read_whole(http.get(format!("{}/devices?pageSize=1000", handler.base)))
    })
    .await;
    let device_page_bytes = http
        .get(format!("{}/devices?pageSize=1000", handler.base))
        .send()
        .await?
        .bytes()
        .await?
        .len();
    let all_pages = drive(1, args.views.div_ceil(3).max(1), None, |_| {
        every_device_page(&http, &handler.base)
    })
    .await;
    let pages_rss = rss_kib(handler.child.id());
    drop(handler);
    // Azurite's own cost of the two scans, through the same library and client: the fleet's
    // record rows with the summary column alone, and whole.
    let raw_scan = |select: Option<&'static str>| {
        let table = fleet_table(&args, &fleet_prefix);
        async move {
            let Ok(table) = table else { return false };
            let mut query = table
                .query()
                .filter(azure_data_tables::Filter::new("RowKey eq 'record'"))
                .top(azure_data_tables::prelude::Top::new(1000));
            if let Some(select) = select {
                query = query.select(azure_data_tables::prelude::Select::new(select));
            }
            let mut pages = query.into_stream::<Value>();
            let mut rows = 0;
            while let Some(page) = pages.next().await {
                match page {
                    Ok(page) => rows += page.entities.len(),
                    Err(_) => return false,
                }
            }
            rows == seeded.count
        }
    };
    let raw_summaries = drive(1, args.views.div_ceil(3).max(1), None, |_| {
        raw_scan(Some("PartitionKey,RowKey,Summary"))
    })
    .await;
    let raw_records = drive(1, args.views.div_ceil(3).max(1), None, |_| raw_scan(None)).await;

    // Azurite's ceiling, through the same library and a pooled client like the handler's.
    let storage = StorageConnectionString::parse(&args.storage)?;
    let credentials = StorageCredentials::access_key(
        storage.account_name().to_owned(),
        storage.account_key().expose_base64().to_owned(),
    );
    let location = CloudLocation::Custom {
        account: storage.account_name().to_owned(),
        uri: storage.table_endpoint().to_owned(),
    };
    let service = TableServiceClientBuilder::with_location(location, credentials)
        .transport(azure_core::TransportOptions::new(Arc::new(
            handler::storage::tables::http_client(),
        )))
        .retry(azure_core::RetryOptions::none())
        .build();
    let table = service.table_client(format!("R{}", &run[..12]));
    table.create().await.context("creating the raw table")?;
    let payload = "x".repeat(600);
    let insert = drive(args.clients, args.devices, None, |i| {
        let row = RawRow {
            partition_key: format!("raw-{i:06}"),
            row_key: "record".into(),
            data: payload.clone(),
        };
        let table = &table;
        async move {
            match table.insert::<_, Value>(&row) {
                Ok(request) => request.await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    let point_read = drive(
        args.clients,
        args.devices,
        Some(Duration::from_secs(args.seconds)),
        |i| {
            let entity = table
                .partition_key_client(format!("raw-{i:06}"))
                .entity_client("record");
            async move { entity.get::<RawRow>().await.is_ok() }
        },
    )
    .await;

    // Azurite's ceiling for the events phase: 100-row transactions, one partition each.
    let batch_table = service.table_client(format!("E{}", &run[..12]));
    batch_table
        .create()
        .await
        .context("creating the batch table")?;
    let batch_insert = drive(args.partitions, batches, None, |i| {
        let rows: Vec<RawRow> = (0..BATCH)
            .map(|r| RawRow {
                partition_key: format!("batch-{i:06}"),
                row_key: format!("{r:04}"),
                data: payload[..200].to_owned(),
            })
            .collect();
        let partition = batch_table.partition_key_client(format!("batch-{i:06}"));
        async move {
            let mut transaction = partition.transaction();
            for row in &rows {
                transaction = match transaction.insert(row) {
                    Ok(t) => t,
                    Err(_) => return false,
                };
            }
            transaction.into_future().await.is_ok_and(|r| {
                r.operation_responses
                    .iter()
                    .all(|o| (200..300).contains(&u16::from(o.status_code)))
            })
        }
    })
    .await;

    println!(
        "Handler start-up (exec to first answered request, {} starts): median {:.1} ms, worst {:.1} ms",
        starts.len(),
        median.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0
    );
    println!(
        "Handler memory: {idle_rss} KiB resident when idle, {loaded_rss} KiB after the load below"
    );
    println!();
    println!("{} clients, {} devices:", args.clients, args.devices);
    println!("| operation | requests/s | p50 | p99 | requests | failed |");
    println!("|---|---|---|---|---|---|");
    println!(
        "{}",
        create.row("handler: enrollment create (POST /api/enrollments)")
    );
    println!(
        "{}",
        read.row("handler: device read (GET /api/devices/{id})")
    );
    println!("{}", insert.row("Azurite: raw insert"));
    println!("{}", point_read.row("Azurite: raw point read"));
    println!();
    println!(
        "Device reads at {:.0}% of Azurite's raw point-read rate.",
        100.0 * read.rate() / point_read.rate().max(f64::MIN_POSITIVE)
    );
    println!();
    let events_rate = recorded.rate() * BATCH as f64;
    let rows_rate = batch_insert.rate() * BATCH as f64;
    println!("Events, batches of {BATCH} ({} in flight), 90% telemetry, 5% twin changes, 5% connection changes, over {} devices:", args.partitions, args.devices);
    println!("| operation | per second | batch p50 | batch p99 | batches | failed |");
    println!("|---|---|---|---|---|---|");
    let row = |what: &str, figures: &Figures, rate: f64| {
        format!(
            "| {what} | {rate:.0} | {:.1} ms | {:.1} ms | {} | {} |",
            figures.percentile(0.5).as_secs_f64() * 1000.0,
            figures.percentile(0.99).as_secs_f64() * 1000.0,
            figures.count,
            figures.failed
        )
    };
    println!(
        "{}",
        row(
            "handler: events recorded (POST /OnHubEvents)",
            &recorded,
            events_rate
        )
    );
    println!(
        "{}",
        row(
            "Azurite: raw rows inserted (100-row transactions)",
            &batch_insert,
            rows_rate
        )
    );
    println!();
    println!(
        "Events recorded at {:.0}% of Azurite's raw batch-insert rate.",
        100.0 * events_rate / rows_rate.max(f64::MIN_POSITIVE)
    );
    println!();
    println!(
        "Dashboard over {} devices ({} written to storage in {:.1} s, {} failed), one request at a time:",
        args.dashboard_devices,
        seeded.count,
        seeded.elapsed.as_secs_f64(),
        seeded.failed
    );
    println!("| request | p50 | slowest | answer | requests | failed |");
    println!("|---|---|---|---|---|---|");
    let timed = |what: &str, figures: &Figures, bytes: Option<usize>| {
        let mut sorted = figures.latencies.clone();
        sorted.sort_unstable();
        format!(
            "| {what} | {:.1} ms | {:.1} ms | {} | {} | {} |",
            figures.percentile(0.5).as_secs_f64() * 1000.0,
            sorted.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
            bytes.map_or_else(|| "–".to_owned(), |b| format!("{} KiB", b / 1024)),
            figures.count,
            figures.failed
        )
    };
    println!(
        "{}",
        timed("handler: GET /api/dashboard", &dashboard, Some(page_bytes))
    );
    println!(
        "{}",
        timed(
            "handler: GET /api/devices?pageSize=1000 (one page)",
            &one_page,
            Some(device_page_bytes)
        )
    );
    println!(
        "{}",
        timed(
            "handler: every page of GET /api/devices?pageSize=1000",
            &all_pages,
            None
        )
    );
    println!(
        "{}",
        timed(
            "Azurite: raw scan of the record rows, Summary column only",
            &raw_summaries,
            None
        )
    );
    println!(
        "{}",
        timed(
            "Azurite: raw scan of the record rows, whole",
            &raw_records,
            None
        )
    );
    println!();
    let ratio = |a: &Figures, b: &Figures| {
        a.percentile(0.5).as_secs_f64() / b.percentile(0.5).as_secs_f64().max(f64::MIN_POSITIVE)
    };
    println!(
        "The dashboard takes {:.1} times one page of 1,000 devices, {:.2} times reading every record through the API, {:.2} times Azurite's raw scan of the summaries. Handler memory: {dashboard_rss} KiB after the dashboard views, {pages_rss} KiB after the device pages.",
        ratio(&dashboard, &one_page),
        ratio(&dashboard, &all_pages),
        ratio(&dashboard, &raw_summaries),
    );
    Ok(())
}
