//! Device records in Azure Table Storage (Azurite locally), through azure_data_tables.
//!
//! Five tables (names prefixed, default `Registry`):
//!
//! | table | PartitionKey | RowKey | holds |
//! |---|---|---|---|
//! | `Devices` | registration id, lower case | `record` | the record as JSON (`Data`) plus `CustomerId`, `Status`, `Hub`, `DeviceId`, and its dashboard summary as JSON (`Summary`) |
//! | `Devices` | the same | `h~` inverted time `~` cause | one entry of the device's history (`Data`) |
//! | `DeviceIds` | device id, base64url | `alias` | `RegistrationKey`: finds a record (and its history, which outlives it) by device id |
//! | `Index` | `customer~<id>`, `hub~<host>`, `status~<status>`, `sync~pending` | registration id, lower case | nothing: membership |
//! | `DeadLetters` | `dead` | inverted time `~` event | an event that cannot be applied (`Data`) |
//! | `Outbox` | `pending` | notification id | a notification until delivered (`Data`, `NextAttempt`) |
//!
//! One partition per device makes point reads and etag-guarded writes cheap and lets any number of
//! handler instances write at once: every write is conditional on the etag read. Index rows
//! are written *before* the record and removed *after* it, so a failure half-way can leave an
//! extra index row but never hide a record; listings check every index hit against the record
//! and delete the ones that no longer match. The `Summary` column is written in the same entity
//! write as `Data`, so it always describes the record beside it; the dashboard's scan selects it
//! alone (`$select`), a few hundred bytes a device instead of the record's few kilobytes.
//!
//! Layout: `connection` (clients, tables, the HTTP client), `records`, `device_ids`,
//! `index`, `history`, `dead_letters`, `outbox`; `documents` (rows holding one JSON
//! document) and `failures` (errors by HTTP status) serve them all. This file holds the
//! registry itself, the trait impls that map onto those files, and the continuation tokens.

mod connection;
mod dead_letters;
mod device_ids;
mod documents;
mod failures;
mod history;
mod index;
mod outbox;
mod records;

pub use connection::{http_client, http_client_trusting};

use super::{
    decode_token, encode_token, DeadLetters, NotificationOutbox, Page, Registry, StoreError,
    Stored, SummaryPage,
};
use crate::domain::journal::{DeadLetter, HistoryEntry, Notification};
use crate::domain::{DeviceRecord, Filter, RegistrationId};
use async_trait::async_trait;
use azure_data_tables::operations::QueryEntityBuilder;
use azure_data_tables::prelude::*;
use serde_json::json;
use tokio::sync::OnceCell;

/// Point reads in flight while checking one page of index hits.
const VERIFY_CONCURRENCY: usize = 16;

/// The registry on Table Storage.
pub struct TableRegistry {
    devices: TableClient,
    aliases: TableClient,
    index: TableClient,
    dead_letters: TableClient,
    outbox: TableClient,
    ready: OnceCell<()>,
}

/// Where a query resumes: a partition key and maybe a row key.
type Position = (String, Option<String>);

/// The position in a continuation token; `kind`, when given, must be the kind of listing that
/// issued it.
fn position_of(token: &str, kind: Option<&str>) -> Result<Position, StoreError> {
    let value = decode_token(token)?;
    if let Some(kind) = kind {
        if value["t"] != kind {
            return Err(StoreError::BadContinuation);
        }
    }
    let text = |field: &str| value[field].as_str().map(str::to_owned);
    Ok((text("pk").ok_or(StoreError::BadContinuation)?, text("rk")))
}

/// The continuation token of the next page at `position` of a listing of `kind`.
fn continuation_token(kind: Option<&str>, (pk, rk): Position) -> String {
    match kind {
        Some(kind) => encode_token(&json!({ "t": kind, "pk": pk, "rk": rk })),
        None => encode_token(&json!({ "pk": pk, "rk": rk })),
    }
}

/// `query` resumed at `position`, if there is one.
fn starting_at(mut query: QueryEntityBuilder, position: Option<Position>) -> QueryEntityBuilder {
    if let Some((pk, rk)) = position {
        query = query.initial_partition_key(pk);
        if let Some(rk) = rk {
            query = query.initial_row_key(rk);
        }
    }
    query
}

#[async_trait]
impl Registry for TableRegistry {
    async fn get(&self, id: &RegistrationId) -> Result<Option<Stored>, StoreError> {
        self.get_row(&id.key()).await
    }

    async fn get_by_device(&self, device_id: &str) -> Result<Option<Stored>, StoreError> {
        self.get_record_by_device(device_id).await
    }

    async fn insert(&self, record: &DeviceRecord) -> Result<String, StoreError> {
        self.insert_record(record).await
    }

    async fn replace(
        &self,
        previous: &Stored,
        record: &DeviceRecord,
    ) -> Result<String, StoreError> {
        self.replace_record(previous, record).await
    }

    async fn delete(&self, previous: &Stored) -> Result<(), StoreError> {
        self.delete_record(previous).await
    }

    async fn list(
        &self,
        filter: &Filter,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<Page, StoreError> {
        self.list_records(filter, page_size, continuation).await
    }

    async fn summaries(
        &self,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<SummaryPage, StoreError> {
        self.scan_summaries(page_size, continuation).await
    }

    async fn replace_with_history(
        &self,
        previous: &Stored,
        record: &DeviceRecord,
        history: &[HistoryEntry],
    ) -> Result<String, StoreError> {
        self.replace_record_with_history(previous, record, history)
            .await
    }

    async fn add_history(
        &self,
        device_id: &str,
        entries: &[HistoryEntry],
    ) -> Result<(), StoreError> {
        self.add_history_rows(device_id, entries).await
    }

    async fn history(
        &self,
        device_id: &str,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<(Vec<HistoryEntry>, Option<String>), StoreError> {
        self.history_page(device_id, page_size, continuation).await
    }
}

#[async_trait]
impl DeadLetters for TableRegistry {
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        self.put_dead_letter(letter).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.newest_dead_letters(limit).await
    }
}

#[async_trait]
impl NotificationOutbox for TableRegistry {
    async fn enqueue(&self, notification: &Notification) -> Result<(), StoreError> {
        self.enqueue_notification(notification).await
    }

    async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<Notification>, StoreError> {
        self.due_notifications(now_ms, limit).await
    }

    async fn claim(&self, id: &str, now_ms: i64, until_ms: i64) -> Result<bool, StoreError> {
        self.claim_notification(id, now_ms, until_ms).await
    }

    async fn reschedule(&self, notification: &Notification) -> Result<(), StoreError> {
        self.reschedule_notification(notification).await
    }

    async fn delivered(&self, id: &str) -> Result<(), StoreError> {
        self.remove_notification(id).await
    }
}
