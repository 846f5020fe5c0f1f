//! `bench import`: a fleet enrolled from a CRM export through the admin API
//! (`POST /api/enrollments/import`, CSV, a batch of rows a request), next to the ceiling of that
//! path measured in the same run: DPS's bulk creates alone, ten enrollments a call with as many
//! calls in flight as the handler's import makes. Every imported row costs its share of a bulk
//! create plus the registry's Table Storage writes, so the ratio is what the bookkeeping costs.

use anyhow::Context;
use emulator::fleet::admin::AdminApi;
use emulator::fleet::clients::Emulator;
use emulator::fleet::service::DpsService;
use emulator::fleet::ClientError;
use futures_util::{StreamExt, TryStreamExt};
use iot_credentials::SharedAccessKey;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// DPS bulk calls the handler's import keeps in flight (handler/src/service/import.rs,
/// `DPS_CONCURRENCY`).
const IMPORT_DPS_IN_FLIGHT: usize = 4;

/// Imports `rows` rows, `batch` a request, next to the bulk-create ceiling; prints the table.
pub async fn run(emulator: &Emulator, rows: usize, batch: usize) -> anyhow::Result<()> {
    let functions = emulator
        .endpoints
        .functions
        .clone()
        .context("the emulator runs no function app")?;
    let api = AdminApi::new(&functions);
    let run = std::process::id();

    let ids: Vec<String> = (0..rows).map(|n| format!("ceiling-{run}-{n:06}")).collect();
    let started = Instant::now();
    futures_util::stream::iter(ids.chunks(emulator::dps::enrollments::BULK_LIMIT))
        .map(|chunk| {
            let enrollments: Vec<Value> = chunk
                .iter()
                .map(|id| {
                    json!({
                        "registrationId": id,
                        "attestation": { "type": "symmetricKey", "symmetricKey": {
                            "primaryKey": SharedAccessKey::generate(64).expose_base64(),
                            "secondaryKey": SharedAccessKey::generate(64).expose_base64(),
                        }},
                    })
                })
                .collect();
            bulk_create_paced(&emulator.service, enrollments)
        })
        .buffer_unordered(IMPORT_DPS_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    let ceiling = rows as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let (mut created, mut other) = (0_u64, 0_u64);
    let all: Vec<usize> = (0..rows).collect();
    for part in all.chunks(batch.max(1)) {
        let mut csv =
            String::from("Registration ID,Customer ID,Customer Name,Serial Number,Model\n");
        for n in part {
            csv.push_str(&format!(
                "import-{run}-{n:06},customer-{},Customer {},SN-{n},TX-100\n",
                n % 20,
                n % 20
            ));
        }
        let answer = api.import_csv(csv).await?;
        let summary = &answer["summary"];
        let made = summary["created"].as_u64().unwrap_or(0);
        created += made;
        other += part.len() as u64 - made;
        // A row not created is a finding: say which and why.
        if let Some(first) = answer["results"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["result"] != "created"))
        {
            eprintln!("not created: {first} (summary {summary})");
        }
    }
    let elapsed = started.elapsed();
    let rate = created as f64 / elapsed.as_secs_f64();
    println!(
        "Import of {rows} CSV rows through the admin API, {batch} rows a request, next to DPS's \
            bulk create alone ({IMPORT_DPS_IN_FLIGHT} calls of {} in flight, as the import makes them):",
        emulator::dps::enrollments::BULK_LIMIT
    );
    println!("| operation | rows/s | rows | took | not created |");
    println!("|---|---|---|---|---|");
    println!(
        "| handler: import (POST /api/enrollments/import) | {rate:.0} | {created} | {:.1} s | \
            {other} |",
        elapsed.as_secs_f64()
    );
    println!(
        "| emulator DPS: bulk create alone | {ceiling:.0} | {rows} | {:.1} s | 0 |",
        rows as f64 / ceiling
    );
    println!();
    println!(
        "The import at {:.1}% of the DPS bulk-create rate.",
        100.0 * rate / ceiling.max(f64::MIN_POSITIVE)
    );
    Ok(())
}

/// A bulk create, sent again a second after each 429 (a DPS with `--operation-rate`), as the
/// handler's import waits out throttling.
async fn bulk_create_paced(
    service: &DpsService,
    enrollments: Vec<Value>,
) -> Result<(), ClientError> {
    loop {
        match service.bulk_create(enrollments.clone()).await {
            Err(ClientError::Refused { status: 429, .. }) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            outcome => return outcome,
        }
    }
}
