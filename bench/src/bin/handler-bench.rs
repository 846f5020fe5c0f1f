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
use bench::azurite::{self, RawRow};
use bench::dashboard_fleet::write_fleet;
use bench::drive::drive;
use bench::event_mix::{invocation, Seeded};
use bench::figures::{millis, table_header, Figures};
use bench::handler_process::{self, Handler, HandlerSettings};
use clap::Parser;
use iot_credentials::StorageConnectionString;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Events per `OnHubEvents` invocation, as the host delivers them.
const BATCH: usize = 100;

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

/// What every phase shares.
struct Bench {
    args: Args,
    settings: HandlerSettings,
    storage: StorageConnectionString,
    http: reqwest::Client,
    /// This run's id, in every table prefix, so runs do not meet in Azurite.
    run: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = HandlerSettings {
        executable: args.handler.clone(),
        endpoints: emulator::fleet::clients::read_endpoints(&args.endpoints)?,
        storage: args.storage.clone(),
    };
    let bench = Bench {
        storage: StorageConnectionString::parse(&args.storage)?,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?,
        run: uuid::Uuid::new_v4().simple().to_string(),
        settings,
        args,
    };

    let start_ups = time_start_ups(&bench).await?;
    let handler = handler_process::start(
        &bench.http,
        &bench.settings,
        &format!("B{}", &bench.run[..12]),
    )
    .await?;
    let requests = measure_requests(&bench, &handler).await;
    let events = measure_events(&bench, &handler).await;
    drop(handler);
    let dashboard = measure_dashboard(&bench).await?;
    let ceiling = measure_azurite(&bench).await?;

    print_start_ups(&start_ups, &requests);
    print_requests(&bench, &requests, &ceiling);
    print_events(&bench, &events, &ceiling);
    print_dashboard(&bench, &dashboard);
    Ok(())
}

/// Exec to the first answered request, on fresh processes.
struct StartUps {
    count: usize,
    median: Duration,
    worst: Duration,
}

async fn time_start_ups(bench: &Bench) -> anyhow::Result<StartUps> {
    let mut starts = Vec::new();
    for i in 0..bench.args.starts.max(1) {
        let prefix = format!("S{}x{i}", &bench.run[..8]);
        let mut handler = handler_process::spawn(&bench.settings, &prefix)?;
        starts.push(handler_process::first_answer(&bench.http, &handler).await?);
        let _ = handler.child.kill().await;
    }
    starts.sort_unstable();
    Ok(StartUps {
        count: starts.len(),
        median: starts[starts.len() / 2],
        worst: starts[starts.len() - 1],
    })
}

/// Enrollment creates, then device reads, with the handler's memory before and after.
struct Requests {
    idle_rss: u64,
    loaded_rss: u64,
    create: Figures,
    read: Figures,
}

async fn measure_requests(bench: &Bench, handler: &Handler) -> Requests {
    let (args, http) = (&bench.args, &bench.http);
    let idle_rss = handler.resident_kib();
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
    Requests {
        idle_rss,
        loaded_rss: handler.resident_kib(),
        create,
        read,
    }
}

/// Events recorded, in batches as the host delivers them, one invocation per partition at a
/// time; after a warm-up that is not measured.
async fn measure_events(bench: &Bench, handler: &Handler) -> Figures {
    let args = &bench.args;
    let rng = Mutex::new(Seeded(0x5eed_0000_1234_5678));
    // Every device's first events (its first last-seen minute, and the handler's first read of
    // its record) cost what steady traffic does not.
    let warm_batches = args.devices.div_ceil(BATCH) * 3;
    drive(args.partitions, warm_batches, None, |i| {
        send_events(bench, handler, &rng, i, (i * BATCH) as i64 + 1)
    })
    .await;
    drive(args.partitions, args.events.div_ceil(BATCH), None, |i| {
        send_events(bench, handler, &rng, i, 1_000_000 + (i * BATCH) as i64)
    })
    .await
}

/// Sends invocation `i` (partition `i % partitions`) starting at `first_sequence`; true when the
/// handler took it.
fn send_events(
    bench: &Bench,
    handler: &Handler,
    rng: &Mutex<Seeded>,
    i: usize,
    first_sequence: i64,
) -> impl std::future::Future<Output = bool> {
    let args = &bench.args;
    let body = {
        let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
        invocation(
            &mut rng,
            i % args.partitions,
            first_sequence,
            BATCH,
            args.devices,
        )
    };
    let request = bench
        .http
        .post(format!("{}/OnHubEvents", handler.root()))
        .json(&body);
    async move { request.send().await.is_ok_and(|r| r.status().is_success()) }
}

/// The dashboard over a fleet of its own, next to the device list in the same handler and
/// Azurite's own scans of the same rows.
struct Dashboard {
    seeded: Figures,
    page_bytes: usize,
    dashboard: Figures,
    dashboard_rss: u64,
    one_page: Figures,
    device_page_bytes: usize,
    all_pages: Figures,
    pages_rss: u64,
    raw_summaries: Figures,
    raw_records: Figures,
}

async fn measure_dashboard(bench: &Bench) -> anyhow::Result<Dashboard> {
    let (args, http) = (&bench.args, &bench.http);
    let fleet_prefix = format!("D{}", &bench.run[..12]);
    let hubs: Vec<String> = bench
        .settings
        .endpoints
        .hubs
        .iter()
        .map(|h| h.host_name.clone())
        .collect();
    let seeded = write_fleet(&bench.storage, &hubs, &fleet_prefix, args.dashboard_devices).await?;
    let handler = handler_process::start(http, &bench.settings, &fleet_prefix).await?;
    let dashboard_url = format!("{}/dashboard", handler.base);
    let first_page = http.get(&dashboard_url).send().await?.text().await?;
    anyhow::ensure!(
        first_page.contains(&format!("id=\"stage-enrolled\">{}<", seeded.count)),
        "the dashboard does not count the {} devices written",
        seeded.count
    );
    let dashboard = drive(1, args.views, None, |_| {
        read_whole(http.get(&dashboard_url))
    })
    .await;
    let dashboard_rss = handler.resident_kib();
    let one_page_url = format!("{}/devices?pageSize=1000", handler.base);
    let one_page = drive(1, args.views, None, |_| read_whole(http.get(&one_page_url))).await;
    let device_page_bytes = http.get(&one_page_url).send().await?.bytes().await?.len();
    let scans = args.views.div_ceil(3).max(1);
    let all_pages = drive(1, scans, None, |_| every_device_page(http, &handler.base)).await;
    let pages_rss = handler.resident_kib();
    drop(handler);
    // Azurite's own cost of the two scans, through the same library and client: the fleet's
    // record rows with the summary column alone, and whole. A client per scan, as each page
    // view of the handler's is a request of its own.
    let raw_scan = |select: Option<&'static str>| {
        let table =
            azurite::table_service(&bench.storage).table_client(format!("{fleet_prefix}Devices"));
        let expected = seeded.count;
        async move { azurite::scan_records(&table, select, expected).await }
    };
    let raw_summaries = drive(1, scans, None, |_| {
        raw_scan(Some("PartitionKey,RowKey,Summary"))
    })
    .await;
    let raw_records = drive(1, scans, None, |_| raw_scan(None)).await;
    Ok(Dashboard {
        page_bytes: first_page.len(),
        seeded,
        dashboard,
        dashboard_rss,
        one_page,
        device_page_bytes,
        all_pages,
        pages_rss,
        raw_summaries,
        raw_records,
    })
}

/// Sends `request` and reads its whole answer, as a browser or script would; true on a 200.
async fn read_whole(request: reqwest::RequestBuilder) -> bool {
    match request.send().await {
        Ok(response) if response.status().as_u16() == 200 => response.bytes().await.is_ok(),
        _ => false,
    }
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

/// Azurite's ceiling, through the same library and a pooled client like the handler's.
struct AzuriteCeiling {
    insert: Figures,
    point_read: Figures,
    /// 100-row transactions, one partition each: the ceiling of the events phase.
    batch_insert: Figures,
}

async fn measure_azurite(bench: &Bench) -> anyhow::Result<AzuriteCeiling> {
    let args = &bench.args;
    let service = azurite::table_service(&bench.storage);
    let table = service.table_client(format!("R{}", &bench.run[..12]));
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

    let batch_table = service.table_client(format!("E{}", &bench.run[..12]));
    batch_table
        .create()
        .await
        .context("creating the batch table")?;
    let batch_insert = drive(args.partitions, args.events.div_ceil(BATCH), None, |i| {
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
    Ok(AzuriteCeiling {
        insert,
        point_read,
        batch_insert,
    })
}

fn print_start_ups(start_ups: &StartUps, requests: &Requests) {
    println!(
        "Handler start-up (exec to first answered request, {} starts): median {:.1} ms, worst \
            {:.1} ms",
        start_ups.count,
        millis(start_ups.median),
        millis(start_ups.worst)
    );
    println!(
        "Handler memory: {} KiB resident when idle, {} KiB after the load below",
        requests.idle_rss, requests.loaded_rss
    );
    println!();
}

fn print_requests(bench: &Bench, requests: &Requests, ceiling: &AzuriteCeiling) {
    println!(
        "{} clients, {} devices:",
        bench.args.clients, bench.args.devices
    );
    println!(
        "{}",
        table_header(&[
            "operation",
            "requests/s",
            "p50",
            "p99",
            "requests",
            "failed"
        ])
    );
    println!(
        "{}",
        requests
            .create
            .row("handler: enrollment create (POST /api/enrollments)")
    );
    println!(
        "{}",
        requests
            .read
            .row("handler: device read (GET /api/devices/{id})")
    );
    println!("{}", ceiling.insert.row("Azurite: raw insert"));
    println!("{}", ceiling.point_read.row("Azurite: raw point read"));
    println!();
    println!(
        "Device reads at {:.0}% of Azurite's raw point-read rate.",
        100.0 * requests.read.rate() / ceiling.point_read.rate().max(f64::MIN_POSITIVE)
    );
    println!();
}

fn print_events(bench: &Bench, recorded: &Figures, ceiling: &AzuriteCeiling) {
    let events_rate = recorded.rate() * BATCH as f64;
    let rows_rate = ceiling.batch_insert.rate() * BATCH as f64;
    println!(
        "Events, batches of {BATCH} ({} in flight), 90% telemetry, 5% twin changes, 5% \
        connection changes, over {} devices:",
        bench.args.partitions, bench.args.devices
    );
    println!(
        "{}",
        table_header(&[
            "operation",
            "per second",
            "batch p50",
            "batch p99",
            "batches",
            "failed"
        ])
    );
    let row = |what: &str, figures: &Figures, rate: f64| {
        format!(
            "| {what} | {rate:.0} | {:.1} ms | {:.1} ms | {} | {} |",
            millis(figures.percentile(0.5)),
            millis(figures.percentile(0.99)),
            figures.count,
            figures.failed
        )
    };
    println!(
        "{}",
        row(
            "handler: events recorded (POST /OnHubEvents)",
            recorded,
            events_rate
        )
    );
    println!(
        "{}",
        row(
            "Azurite: raw rows inserted (100-row transactions)",
            &ceiling.batch_insert,
            rows_rate
        )
    );
    println!();
    println!(
        "Events recorded at {:.0}% of Azurite's raw batch-insert rate.",
        100.0 * events_rate / rows_rate.max(f64::MIN_POSITIVE)
    );
    println!();
}

fn print_dashboard(bench: &Bench, d: &Dashboard) {
    println!(
        "Dashboard over {} devices ({} written to storage in {:.1} s, {} failed), one request at \
            a time:",
        bench.args.dashboard_devices,
        d.seeded.count,
        d.seeded.elapsed.as_secs_f64(),
        d.seeded.failed
    );
    println!(
        "{}",
        table_header(&["request", "p50", "slowest", "answer", "requests", "failed"])
    );
    let timed = |what: &str, figures: &Figures, bytes: Option<usize>| {
        format!(
            "| {what} | {:.1} ms | {:.1} ms | {} | {} | {} |",
            millis(figures.percentile(0.5)),
            millis(figures.slowest()),
            bytes.map_or_else(|| "–".to_owned(), |b| format!("{} KiB", b / 1024)),
            figures.count,
            figures.failed
        )
    };
    let rows = [
        (
            "handler: GET /api/dashboard",
            &d.dashboard,
            Some(d.page_bytes),
        ),
        (
            "handler: GET /api/devices?pageSize=1000 (one page)",
            &d.one_page,
            Some(d.device_page_bytes),
        ),
        (
            "handler: every page of GET /api/devices?pageSize=1000",
            &d.all_pages,
            None,
        ),
        (
            "Azurite: raw scan of the record rows, Summary column only",
            &d.raw_summaries,
            None,
        ),
        (
            "Azurite: raw scan of the record rows, whole",
            &d.raw_records,
            None,
        ),
    ];
    for (what, figures, bytes) in rows {
        println!("{}", timed(what, figures, bytes));
    }
    println!();
    let ratio = |a: &Figures, b: &Figures| {
        a.percentile(0.5).as_secs_f64() / b.percentile(0.5).as_secs_f64().max(f64::MIN_POSITIVE)
    };
    println!(
        "The dashboard takes {:.1} times one page of 1,000 devices, {:.2} times reading every \
            record through the API, {:.2} times Azurite's raw scan of the summaries. Handler memory: {} KiB after the dashboard views, {} KiB after the device pages.",
        ratio(&d.dashboard, &d.one_page),
        ratio(&d.dashboard, &d.all_pages),
        ratio(&d.dashboard, &d.raw_summaries),
        d.dashboard_rss,
        d.pages_rss,
    );
}
