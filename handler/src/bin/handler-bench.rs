//! `handler-bench`: the handler's figures for `make bench`. Starts the handler the way the
//! Functions host does (environment, port), against a running emulator and Azurite, and measures
//! start-up time (exec to first answered request), idle memory, and requests per second with
//! p50/p99 latency for enrollment create and device read; then Azurite's own raw insert and
//! point-read rates through the same client library, as the ceiling the handler sits on.

// A command-line tool: printing results is its job.
#![allow(clippy::print_stdout)]

use anyhow::Context;
use azure_data_tables::clients::TableServiceClientBuilder;
use azure_storage::{CloudLocation, StorageCredentials};
use clap::Parser;
use futures_util::stream::{self, StreamExt};
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
    drop(handler);

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
    Ok(())
}
