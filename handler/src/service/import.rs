//! Bulk enrollment: a CRM export as CSV (header row) or a JSON array of enrollments. Every row
//! gets its own result; valid rows are enrolled even when others fail. DPS is called with its
//! bulk API, at most [`BULK_LIMIT`] enrollments a call. The file is read into rows by the
//! enrollment-input crate, which dpsctl shares to check files before it sends them.

use super::{Service, ServiceError};
use crate::cloud::dps::{BulkOutcome, BULK_LIMIT};
use crate::cloud::CloudError;
use crate::domain::DeviceRecord;
use crate::storage::Stored;
use enrollment_input::import::Repeats;
pub use enrollment_input::import::{ImportRow, Outcome, RowResult};
use futures_util::stream::{self, StreamExt};
use std::collections::BTreeMap;

/// Parses a CSV export with a header row (see [`enrollment_input::import::parse_csv`]).
pub fn parse_csv(body: &[u8]) -> Result<Vec<ImportRow>, ServiceError> {
    Ok(enrollment_input::import::parse_csv(body)?)
}

/// Parses a JSON array of enrollments (see [`enrollment_input::import::parse_json`]).
pub fn parse_json(body: &[u8]) -> Result<Vec<ImportRow>, ServiceError> {
    Ok(enrollment_input::import::parse_json(body)?)
}

/// Chunks of [`BULK_LIMIT`] rows in flight during an import.
const CHUNKS_IN_FLIGHT: usize = 8;
/// Storage writes in flight during an import, across its chunks (more made Azurite time out).
const STORAGE_CONCURRENCY: usize = 32;
/// DPS bulk calls in flight during an import.
const DPS_CONCURRENCY: usize = 4;
/// How long an import waits out DPS's throttling, all told. DPS admits 1,000 service operations
/// a minute per unit (MicrosoftDocs/azure-docs includes/iot-dps-limits.md), which a large import
/// reaches in seconds; a throttled chunk waits as DPS asks and is sent again. The budget keeps
/// the answer well inside the host's 230 s limit on an HTTP function; rows still throttled then
/// are answered `failed`, to be finished by importing again.
const THROTTLE_BUDGET: std::time::Duration = std::time::Duration::from_secs(150);
/// The wait when DPS throttles without saying how long.
const THROTTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a row's record could be written (and whether it took over an earlier attempt's).
type Reservation = Result<(Stored, bool), ServiceError>;
/// DPS's answer for one chunk.
type BulkAnswer = Result<Vec<BulkOutcome>, CloudError>;

/// What an import's chunks share: how many DPS calls and storage writes may be in flight.
struct Limits {
    dps_calls: tokio::sync::Semaphore,
    storage_writes: tokio::sync::Semaphore,
}

/// A row whose record is written with its intent, awaiting DPS.
#[derive(Clone)]
struct Reserved {
    row: usize,
    stored: Stored,
    /// The record was left by an earlier, interrupted attempt.
    taken_over: bool,
}

fn result(
    row: usize,
    registration_id: Option<String>,
    outcome: Outcome,
    message: Option<String>,
) -> RowResult {
    RowResult {
        row,
        registration_id,
        outcome,
        message,
    }
}

/// Results by row number: every step adds the rows it finished.
type Results = BTreeMap<usize, RowResult>;

/// A row the DPS enrollment holds, whose record's intent is left to clear (after updating the
/// enrollment first, when an earlier attempt's record was taken over).
type ToComplete = (Reserved, bool);

impl Service {
    /// `POST /api/enrollments/import`: enrolls every valid row; answers one result per row, in
    /// row order.
    pub async fn import(&self, rows: Vec<ImportRow>) -> Vec<RowResult> {
        let mut results = Results::new();
        let valid = self.validate_rows(rows, &mut results);
        // Each chunk of ten rows goes through its steps on its own (records written with their
        // intent, the DPS bulk call, the intents cleared), several chunks at once, so storage
        // work for some overlaps others waiting on DPS (which a large import keeps throttled).
        let limits = Limits {
            dps_calls: tokio::sync::Semaphore::new(DPS_CONCURRENCY),
            storage_writes: tokio::sync::Semaphore::new(STORAGE_CONCURRENCY),
        };
        let give_up_at = tokio::time::Instant::now() + THROTTLE_BUDGET;
        let chunks: Vec<Vec<(usize, DeviceRecord)>> =
            valid.chunks(BULK_LIMIT).map(<[_]>::to_vec).collect();
        let done: Vec<Vec<RowResult>> = stream::iter(chunks)
            .map(|chunk| self.import_chunk(chunk, &limits, give_up_at))
            .buffer_unordered(CHUNKS_IN_FLIGHT)
            .collect()
            .await;
        for entry in done.into_iter().flatten() {
            results.insert(entry.row, entry);
        }
        results.into_values().collect()
    }

    /// The rows that make a valid record, in order; the others answered `invalid`. Ids a file
    /// repeats are refused (the second would overwrite the first).
    fn validate_rows(
        &self,
        rows: Vec<ImportRow>,
        results: &mut Results,
    ) -> Vec<(usize, DeviceRecord)> {
        let mut repeats = Repeats::default();
        let mut valid = Vec::new();
        for row in rows {
            let record = row
                .input
                .map_err(ServiceError::Invalid)
                .and_then(|input| super::enrollments::record_of(input, self))
                .and_then(|record| {
                    repeats
                        .check(row.row, &record.registration_id, &record.device_id)
                        .map_err(ServiceError::Invalid)?;
                    Ok(record)
                });
            match record {
                Ok(record) => valid.push((row.row, record)),
                Err(e) => {
                    let id = row.registration_id;
                    results.insert(
                        row.row,
                        result(row.row, id, Outcome::Invalid, Some(e.to_string())),
                    );
                }
            }
        }
        valid
    }

    /// One chunk of at most [`BULK_LIMIT`] valid rows: their records written with the intent,
    /// one DPS bulk call (at most [`DPS_CONCURRENCY`] of them in flight across chunks), then the
    /// intents cleared. Answers a result for every row.
    async fn import_chunk(
        &self,
        rows: Vec<(usize, DeviceRecord)>,
        limits: &Limits,
        give_up_at: tokio::time::Instant,
    ) -> Vec<RowResult> {
        let mut results = Results::new();
        let pending = self.reserve_rows(rows, limits, &mut results).await;
        if pending.is_empty() {
            return results.into_values().collect();
        }
        // DPS, one bulk call for the chunk.
        let answer = {
            let records: Vec<&DeviceRecord> = pending.iter().map(|r| &r.stored.record).collect();
            let _permit = limits.dps_calls.acquire().await;
            self.create_paced(&records, give_up_at).await
        };
        let to_complete = self.settle_answer(pending, answer, &mut results).await;
        self.clear_intents(to_complete, limits, &mut results).await;
        results.into_values().collect()
    }

    /// Writes each row's record with its intent (pending create); the rows reserved, in row
    /// order, and the others answered.
    async fn reserve_rows(
        &self,
        rows: Vec<(usize, DeviceRecord)>,
        limits: &Limits,
        results: &mut Results,
    ) -> Vec<Reserved> {
        let reserved: Vec<(usize, DeviceRecord, Reservation)> = stream::iter(rows)
            .map(|(row, record)| async move {
                // The semaphores are never closed: a permit always comes.
                let _permit = limits.storage_writes.acquire().await;
                let outcome = self.reserve(&record).await;
                (row, record, outcome)
            })
            .buffer_unordered(BULK_LIMIT)
            .collect()
            .await;
        let mut pending: Vec<Reserved> = Vec::new();
        for (row, record, outcome) in reserved {
            let id = Some(record.registration_id.to_string());
            match outcome {
                Ok((stored, taken_over)) => pending.push(Reserved {
                    row,
                    stored,
                    taken_over,
                }),
                Err(ServiceError::Conflict {
                    code: "alreadyEnrolled",
                    message,
                }) => {
                    results.insert(row, result(row, id, Outcome::Exists, Some(message)));
                }
                Err(e @ ServiceError::Conflict { .. }) => {
                    results.insert(row, result(row, id, Outcome::Invalid, Some(e.to_string())));
                }
                Err(e) => {
                    results.insert(
                        row,
                        result(
                            row,
                            id,
                            Outcome::Failed,
                            Some(format!("{e}; retry the import")),
                        ),
                    );
                }
            }
        }
        pending.sort_by_key(|r| r.row);
        pending
    }

    /// Applies DPS's answer for the chunk: rows DPS enrolled are left to complete; rows it
    /// refused, or already had unknown to the registry, have their reservation abandoned. A
    /// failed call, or an answer that does not match the request, fails every row.
    async fn settle_answer(
        &self,
        chunk: Vec<Reserved>,
        answer: BulkAnswer,
        results: &mut Results,
    ) -> Vec<ToComplete> {
        let outcomes = match answer {
            Ok(outcomes) if outcomes.len() == chunk.len() => outcomes,
            Ok(_) | Err(_) => {
                let reason = match answer {
                    Err(e) => ServiceError::dps(e).to_string(),
                    Ok(_) => "DPS answered a bulk result that does not match the request".into(),
                };
                for r in chunk {
                    let message = format!("{reason}; retry the import to finish this row");
                    results.insert(
                        r.row,
                        result(
                            r.row,
                            Some(r.stored.record.registration_id.to_string()),
                            Outcome::Failed,
                            Some(message),
                        ),
                    );
                }
                return Vec::new();
            }
        };
        let mut to_complete = Vec::new();
        for (r, outcome) in chunk.into_iter().zip(outcomes) {
            let id = Some(r.stored.record.registration_id.to_string());
            match outcome {
                BulkOutcome::Created => to_complete.push((r, false)),
                BulkOutcome::Exists if r.taken_over => to_complete.push((r, true)),
                BulkOutcome::Exists => {
                    self.abandon(&r.stored).await;
                    let message =
                        "DPS already has this enrollment, but the registry does not know it"
                            .to_owned();
                    results.insert(r.row, result(r.row, id, Outcome::Exists, Some(message)));
                }
                BulkOutcome::Refused(message) => {
                    self.abandon(&r.stored).await;
                    results.insert(
                        r.row,
                        result(
                            r.row,
                            id,
                            Outcome::Invalid,
                            Some(format!("DPS refused it: {message}")),
                        ),
                    );
                }
            }
        }
        to_complete
    }

    /// Clears the intents of the rows DPS holds: each is `created`, finished now or later by
    /// repair when clearing fails.
    async fn clear_intents(
        &self,
        to_complete: Vec<ToComplete>,
        limits: &Limits,
        results: &mut Results,
    ) {
        let completed: Vec<(usize, String, Result<(), ServiceError>)> = stream::iter(to_complete)
            .map(|(r, update_first)| async move {
                let id = r.stored.record.registration_id.to_string();
                let outcome = async {
                    if update_first {
                        self.dps
                            .update(&r.stored.record)
                            .await
                            .map_err(ServiceError::dps)?;
                    }
                    let _permit = limits.storage_writes.acquire().await;
                    self.complete(&r.stored).await.map(|_| ())
                }
                .await;
                (r.row, id, outcome)
            })
            .buffer_unordered(BULK_LIMIT)
            .collect()
            .await;
        for (row, id, outcome) in completed {
            let entry = match outcome {
                Ok(()) => result(row, Some(id), Outcome::Created, None),
                // DPS holds it and the record exists with its intent: repair finishes it.
                Err(e) => result(
                    row,
                    Some(id),
                    Outcome::Created,
                    Some(format!("enrolled; the record is finished later ({e})")),
                ),
            };
            results.insert(row, entry);
        }
    }

    /// One bulk create, sent again after the wait DPS asks for while it throttles, until
    /// `give_up_at`.
    async fn create_paced(
        &self,
        records: &[&DeviceRecord],
        give_up_at: tokio::time::Instant,
    ) -> BulkAnswer {
        loop {
            match self.dps.create_many(records).await {
                Err(CloudError::Throttled { retry_after }) => {
                    let wait = retry_after.map_or(THROTTLE_WAIT, std::time::Duration::from_secs);
                    if tokio::time::Instant::now() + wait > give_up_at {
                        return Err(CloudError::Throttled { retry_after });
                    }
                    tokio::time::sleep(wait).await;
                }
                outcome => return outcome,
            }
        }
    }
}
