//! Device records in Azure Table Storage (Azurite locally), through azure_data_tables.
//!
//! Three tables (names prefixed, default `Registry`):
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

use super::identity::ManagedIdentityCredential;
use super::{
    decode_token, encode_token, limits, Failure, Journal, Page, Registry, StoreError, Stored,
    SummaryPage,
};
use crate::config::StorageAccess;
use crate::domain::journal::{DeadLetter, HistoryEntry, Notification};
use crate::domain::summary::Summary;
use crate::domain::{DeviceRecord, Filter, IndexKind, RegistrationId};
use async_trait::async_trait;
use azure_core::{Etag, RetryOptions, TransportOptions};
use azure_data_tables::clients::TableServiceClientBuilder;
use azure_data_tables::prelude::*;
use azure_storage::{CloudLocation, StorageCredentials};
use base64::Engine;
use futures_util::stream::{self, StreamExt};
use iot_credentials::StorageConnectionString;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

const RECORD_ROW: &str = "record";
/// History rows sort after `h~` and before `h~~` (their keys start with digits).
const HISTORY_PREFIX: &str = "h~";
const ALIAS_ROW: &str = "alias";
/// Point reads in flight while checking one page of index hits.
const VERIFY_CONCURRENCY: usize = 16;

#[derive(Serialize, Deserialize)]
struct RecordRow {
    #[serde(rename = "PartitionKey")]
    partition_key: String,
    #[serde(rename = "RowKey")]
    row_key: String,
    #[serde(rename = "Data")]
    data: String,
    #[serde(rename = "CustomerId")]
    customer_id: String,
    #[serde(rename = "Status")]
    status: String,
    #[serde(rename = "Hub")]
    hub: String,
    #[serde(rename = "DeviceId")]
    device_id: String,
    /// Absent in rows written before summaries were kept; any write adds it.
    #[serde(rename = "Summary", default)]
    summary: Option<String>,
    #[serde(rename = "odata.etag", default, skip_serializing)]
    etag: Option<String>,
}

/// A record row as the dashboard's scan selects it.
#[derive(Deserialize)]
struct SummaryRow {
    #[serde(rename = "PartitionKey")]
    partition_key: String,
    #[serde(rename = "Summary", default)]
    summary: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct AliasRow {
    #[serde(rename = "PartitionKey")]
    partition_key: String,
    #[serde(rename = "RowKey")]
    row_key: String,
    #[serde(rename = "RegistrationKey")]
    registration_key: String,
}

#[derive(Serialize, Deserialize)]
struct IndexRow {
    #[serde(rename = "PartitionKey")]
    partition_key: String,
    #[serde(rename = "RowKey")]
    row_key: String,
}

/// The registry on Table Storage.
pub struct TableRegistry {
    devices: TableClient,
    aliases: TableClient,
    index: TableClient,
    dead_letters: TableClient,
    outbox: TableClient,
    ready: OnceCell<()>,
}

fn status_of(error: &azure_core::Error) -> Option<u16> {
    error.as_http_error().map(|e| u16::from(e.status()))
}

/// A failed call as the registry reports it: transient or permanent by its HTTP status
/// ([`Failure::of_status`]); without one (no connection, a timeout) transient.
fn failed(error: azure_core::Error) -> StoreError {
    // The status and error code are enough to act on; the message may echo request details.
    match error.as_http_error() {
        Some(http) => {
            let status = u16::from(http.status());
            Failure::of_status(status).error(format!(
                "HTTP {status} {}",
                http.error_code().unwrap_or_default()
            ))
        }
        None => StoreError::Unavailable(format!("{:?}", error.kind())),
    }
}

/// Why Table Storage's limits refuse `data` as one string property, if they do.
fn oversize(what: &str, data: &str) -> Option<String> {
    (!limits::fits_string(data)).then(|| {
        format!(
            "{what} is {} UTF-16 characters, above the {} one property holds (PropertyValueTooLarge)",
            data.encode_utf16().count(),
            limits::STRING_UNITS
        )
    })
}

fn alias_key(device_id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(device_id)
}

fn index_partition(kind: IndexKind, value: &str) -> String {
    format!("{}~{}", kind.prefix(), value)
}

fn row_of(record: &DeviceRecord) -> Result<RecordRow, StoreError> {
    Ok(RecordRow {
        partition_key: record.registration_id.key(),
        row_key: RECORD_ROW.into(),
        data: serde_json::to_string(record).map_err(|e| StoreError::Refused(e.to_string()))?,
        customer_id: record.customer.id.as_str().to_owned(),
        status: record.status().as_str().to_owned(),
        hub: record
            .assigned_hub()
            .unwrap_or_default()
            .to_ascii_lowercase(),
        device_id: record.device_id.as_str().to_owned(),
        summary: Some(
            serde_json::to_string(&record.summary())
                .map_err(|e| StoreError::Refused(e.to_string()))?,
        ),
        etag: None,
    })
}

fn stored_of(row: RecordRow, etag: String) -> Result<Stored, StoreError> {
    let record = serde_json::from_str(&row.data)
        .map_err(|e| StoreError::Refused(format!("a stored record is unreadable: {e}")))?;
    Ok(Stored { record, etag })
}

impl TableRegistry {
    /// A registry on the account of `storage`, tables named `{prefix}Devices` and so on.
    pub fn new(storage: &StorageConnectionString, prefix: &str, http: reqwest::Client) -> Self {
        let credentials = StorageCredentials::access_key(
            storage.account_name().to_owned(),
            storage.account_key().expose_base64().to_owned(),
        );
        Self::on(
            storage.account_name(),
            storage.table_endpoint(),
            credentials,
            prefix,
            http,
        )
    }

    /// A registry reached as `access` says: with the account key, or with the managed
    /// identity's tokens (fetched through the same `http` client).
    pub fn with_access(access: &StorageAccess, prefix: &str, http: reqwest::Client) -> Self {
        match access {
            StorageAccess::Key(storage) => Self::new(storage, prefix, http),
            StorageAccess::Identity {
                account,
                table_endpoint,
                identity,
            } => {
                let credential = ManagedIdentityCredential::new(identity.clone(), http.clone());
                let credentials = StorageCredentials::token_credential(Arc::new(credential));
                Self::on(account, table_endpoint, credentials, prefix, http)
            }
        }
    }

    fn on(
        account: &str,
        table_endpoint: &str,
        credentials: StorageCredentials,
        prefix: &str,
        http: reqwest::Client,
    ) -> Self {
        let location = CloudLocation::Custom {
            account: account.to_owned(),
            uri: table_endpoint.to_owned(),
        };
        // The default transport turns connection pooling off; a pooled client is several times
        // faster. Retries are the caller's business (503 with Retry-After).
        let service = TableServiceClientBuilder::with_location(location, credentials)
            .transport(TransportOptions::new(Arc::new(http)))
            .retry(RetryOptions::none())
            .build();
        Self {
            devices: service.table_client(format!("{prefix}Devices")),
            aliases: service.table_client(format!("{prefix}DeviceIds")),
            index: service.table_client(format!("{prefix}Index")),
            dead_letters: service.table_client(format!("{prefix}DeadLetters")),
            outbox: service.table_client(format!("{prefix}Outbox")),
            ready: OnceCell::new(),
        }
    }

    /// Creates the tables if they do not exist (once per process).
    pub async fn ensure_tables(&self) -> Result<(), StoreError> {
        self.ready
            .get_or_try_init(|| async {
                for table in [
                    &self.devices,
                    &self.aliases,
                    &self.index,
                    &self.dead_letters,
                    &self.outbox,
                ] {
                    match table.create().await {
                        Ok(_) => {}
                        Err(e) if status_of(&e) == Some(409) => {}
                        Err(e) => return Err(failed(e)),
                    }
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    async fn get_row(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        self.ensure_tables().await?;
        let entity = self
            .devices
            .partition_key_client(key)
            .entity_client(RECORD_ROW);
        match entity.get::<RecordRow>().await {
            Ok(response) => stored_of(response.entity, response.etag.to_string()).map(Some),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(failed(e)),
        }
    }

    async fn put_index(&self, partition: String, key: &str) -> Result<(), StoreError> {
        let row = IndexRow {
            partition_key: partition.clone(),
            row_key: key.to_owned(),
        };
        self.index
            .partition_key_client(partition)
            .entity_client(key)
            .insert_or_replace(&row)
            .map_err(failed)?
            .await
            .map(|_| ())
            .map_err(failed)
    }

    async fn drop_index(&self, partition: String, key: &str) {
        let outcome = self
            .index
            .partition_key_client(partition)
            .entity_client(key)
            .delete()
            .await;
        if let Err(e) = outcome {
            if status_of(&e) != Some(404) {
                // Harmless: listings skip and remove index rows that no longer match.
                tracing::warn!(error = %failed(e), "a stale index row could not be removed");
            }
        }
    }

    /// Claims the device id for `record` (refusing one that another record holds).
    async fn claim_device_id(&self, record: &DeviceRecord) -> Result<(), StoreError> {
        let key = record.registration_id.key();
        let alias = AliasRow {
            partition_key: alias_key(record.device_id.as_str()),
            row_key: ALIAS_ROW.into(),
            registration_key: key.clone(),
        };
        let client = self
            .aliases
            .partition_key_client(&alias.partition_key)
            .entity_client(ALIAS_ROW);
        match self
            .aliases
            .insert::<_, serde_json::Value>(&alias)
            .map_err(failed)?
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if status_of(&e) != Some(409) => return Err(failed(e)),
            Err(_) => {}
        }
        let existing = client.get::<AliasRow>().await.map_err(failed)?;
        if existing.entity.registration_key == key {
            return Ok(());
        }
        // Held by another registration: only if that record still uses the id.
        let holder = RegistrationId::parse(&existing.entity.registration_key).ok();
        if let Some(holder) = holder {
            if let Some(stored) = self.get_row(&holder.key()).await? {
                if stored.record.device_id == record.device_id {
                    return Err(StoreError::Conflict);
                }
            }
        }
        client
            .update(&alias, IfMatchCondition::Etag(existing.etag))
            .map_err(failed)?
            .await
            .map(|_| ())
            .map_err(|e| {
                if status_of(&e) == Some(412) {
                    StoreError::Conflict
                } else {
                    failed(e)
                }
            })
    }
}

#[async_trait]
impl Registry for TableRegistry {
    async fn get(&self, id: &RegistrationId) -> Result<Option<Stored>, StoreError> {
        self.get_row(&id.key()).await
    }

    async fn get_by_device(&self, device_id: &str) -> Result<Option<Stored>, StoreError> {
        self.ensure_tables().await?;
        // Most devices keep their registration id as device id: one point read finds them.
        if let Ok(id) = RegistrationId::parse(device_id) {
            if let Some(stored) = self.get_row(&id.key()).await? {
                if stored.record.device_id.as_str() == device_id {
                    return Ok(Some(stored));
                }
            }
        }
        let alias = self
            .aliases
            .partition_key_client(alias_key(device_id))
            .entity_client(ALIAS_ROW);
        let key = match alias.get::<AliasRow>().await {
            Ok(response) => response.entity.registration_key,
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(failed(e)),
        };
        // An alias left by a half-finished write may point at a record with another device id.
        Ok(self
            .get_row(&key)
            .await?
            .filter(|s| s.record.device_id.as_str() == device_id))
    }

    async fn insert(&self, record: &DeviceRecord) -> Result<String, StoreError> {
        self.ensure_tables().await?;
        let key = record.registration_id.key();
        if self.get_row(&key).await?.is_some() {
            return Err(StoreError::Conflict);
        }
        self.claim_device_id(record).await?;
        for (kind, value) in record.index_entries() {
            self.put_index(index_partition(kind, &value), &key).await?;
        }
        let row = row_of(record)?;
        match self
            .devices
            .insert::<_, serde_json::Value>(&row)
            .map_err(failed)?
            .await
        {
            Ok(response) => Ok(response.etag.to_string()),
            Err(e) if status_of(&e) == Some(409) => Err(StoreError::Conflict),
            Err(e) => Err(failed(e)),
        }
    }

    async fn replace(
        &self,
        previous: &Stored,
        record: &DeviceRecord,
    ) -> Result<String, StoreError> {
        self.ensure_tables().await?;
        let key = record.registration_id.key();
        let old = previous.record.index_entries();
        let new = record.index_entries();
        for (kind, value) in new.iter().filter(|e| !old.contains(e)) {
            self.put_index(index_partition(*kind, value), &key).await?;
        }
        let row = row_of(record)?;
        let response = self
            .devices
            .partition_key_client(&key)
            .entity_client(RECORD_ROW)
            .update(
                &row,
                IfMatchCondition::Etag(Etag::from(previous.etag.clone())),
            )
            .map_err(failed)?
            .await
            .map_err(|e| match status_of(&e) {
                Some(412) | Some(404) => StoreError::PreconditionFailed,
                _ => failed(e),
            })?;
        for (kind, value) in old.iter().filter(|e| !new.contains(e)) {
            self.drop_index(index_partition(*kind, value), &key).await;
        }
        Ok(response.etag.to_string())
    }

    async fn delete(&self, previous: &Stored) -> Result<(), StoreError> {
        self.ensure_tables().await?;
        let record = &previous.record;
        let key = record.registration_id.key();
        self.devices
            .partition_key_client(&key)
            .entity_client(RECORD_ROW)
            .delete()
            .if_match(IfMatchCondition::Etag(Etag::from(previous.etag.clone())))
            .await
            .map_err(|e| match status_of(&e) {
                Some(412) | Some(404) => StoreError::PreconditionFailed,
                _ => failed(e),
            })?;
        for (kind, value) in record.index_entries() {
            self.drop_index(index_partition(kind, &value), &key).await;
        }
        // The alias stays: it leads to the device's history, which outlives the record. Another
        // enrollment may take the device id over later (see `claim_device_id`).
        Ok(())
    }

    async fn list(
        &self,
        filter: &Filter,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<Page, StoreError> {
        self.ensure_tables().await?;
        let index = filter.index();
        let kind = if index.is_some() { "index" } else { "scan" };
        let position = match continuation {
            Some(token) => {
                let value = decode_token(token)?;
                if value["t"] != kind {
                    return Err(StoreError::BadContinuation);
                }
                let text = |field: &str| value[field].as_str().map(str::to_owned);
                Some((text("pk").ok_or(StoreError::BadContinuation)?, text("rk")))
            }
            None => None,
        };
        let table = if index.is_some() {
            &self.index
        } else {
            &self.devices
        };
        let mut query = table
            .query()
            .top(Top::new(u32::try_from(page_size.max(1)).unwrap_or(1000)));
        match &index {
            Some((kind_name, value)) => {
                query = query.filter(Filter_::partition(&index_partition(*kind_name, value)))
            }
            // The Devices table also holds history rows; a scan wants records only.
            None => {
                query = query.filter(azure_data_tables::Filter::new(format!(
                    "RowKey eq '{RECORD_ROW}'"
                )))
            }
        }
        if let Some((pk, rk)) = position {
            query = query.initial_partition_key(pk);
            if let Some(rk) = rk {
                query = query.initial_row_key(rk);
            }
        }
        let page = match index {
            None => {
                let mut pages = query.into_stream::<RecordRow>();
                let Some(page) = pages.next().await else {
                    return Ok(Page::default());
                };
                let page = page.map_err(failed)?;
                let next = azure_core::Continuable::continuation(&page);
                let mut items = Vec::new();
                for row in page.entities {
                    let etag = row.etag.clone().unwrap_or_default();
                    let stored = stored_of(row, etag)?;
                    if filter.matches(&stored.record) {
                        items.push(stored);
                    }
                }
                (items, next)
            }
            Some((kind_name, value)) => {
                let mut pages = query.into_stream::<IndexRow>();
                let Some(page) = pages.next().await else {
                    return Ok(Page::default());
                };
                let page = page.map_err(failed)?;
                let next = azure_core::Continuable::continuation(&page);
                let keys: Vec<String> = page.entities.into_iter().map(|row| row.row_key).collect();
                let checked: Vec<(String, Result<Option<Stored>, StoreError>)> = stream::iter(keys)
                    .map(|key| async move {
                        let stored = self.get_row(&key).await;
                        (key, stored)
                    })
                    .buffered(VERIFY_CONCURRENCY)
                    .collect()
                    .await;
                let partition = index_partition(kind_name, &value);
                let mut items = Vec::new();
                for (key, stored) in checked {
                    match stored? {
                        Some(stored) if filter.matches(&stored.record) => items.push(stored),
                        // A leftover of an interrupted or superseded write: tidy it away.
                        _ => self.drop_index(partition.clone(), &key).await,
                    }
                }
                (items, next)
            }
        };
        let (items, next) = page;
        Ok(Page {
            items,
            continuation: next
                .map(|(pk, rk)| encode_token(&json!({ "t": kind, "pk": pk, "rk": rk }))),
        })
    }

    async fn summaries(
        &self,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<SummaryPage, StoreError> {
        self.ensure_tables().await?;
        let mut query = self
            .devices
            .query()
            .filter(azure_data_tables::Filter::new(format!(
                "RowKey eq '{RECORD_ROW}'"
            )))
            .select(Select::new("PartitionKey,RowKey,Summary"))
            .top(Top::new(
                u32::try_from(page_size.clamp(1, 1000)).unwrap_or(1000),
            ));
        if let Some(token) = continuation {
            let position = decode_token(token)?;
            if position["t"] != "summaries" {
                return Err(StoreError::BadContinuation);
            }
            let text = |field: &str| position[field].as_str().map(str::to_owned);
            query = query.initial_partition_key(text("pk").ok_or(StoreError::BadContinuation)?);
            if let Some(rk) = text("rk") {
                query = query.initial_row_key(rk);
            }
        }
        let mut pages = query.into_stream::<SummaryRow>();
        let Some(page) = pages.next().await else {
            return Ok(SummaryPage::default());
        };
        let page = page.map_err(failed)?;
        let next = azure_core::Continuable::continuation(&page)
            .map(|(pk, rk)| encode_token(&json!({ "t": "summaries", "pk": pk, "rk": rk })));
        // A row written before summaries were kept (or one that cannot be read) is summarised
        // from its record; the next write of that record adds the column.
        let summaries: Vec<Result<Option<Summary>, StoreError>> = stream::iter(page.entities)
            .map(|row| async move {
                if let Some(summary) = row
                    .summary
                    .as_deref()
                    .and_then(|text| serde_json::from_str::<Summary>(text).ok())
                {
                    return Ok(Some(summary));
                }
                Ok(self
                    .get_row(&row.partition_key)
                    .await?
                    .map(|stored| stored.record.summary()))
            })
            .buffered(VERIFY_CONCURRENCY)
            .collect()
            .await;
        let mut items = Vec::with_capacity(summaries.len());
        for summary in summaries {
            items.extend(summary?);
        }
        Ok(SummaryPage {
            items,
            continuation: next,
        })
    }

    async fn replace_with_history(
        &self,
        previous: &Stored,
        record: &DeviceRecord,
        history: &[HistoryEntry],
    ) -> Result<String, StoreError> {
        if history.is_empty() {
            return self.replace(previous, record).await;
        }
        self.ensure_tables().await?;
        let key = record.registration_id.key();
        let old = previous.record.index_entries();
        let new = record.index_entries();
        for (kind, value) in new.iter().filter(|e| !old.contains(e)) {
            self.put_index(index_partition(*kind, value), &key).await?;
        }
        let mut rows = history_rows(&key, history)?;
        // A transaction holds 100 operations, the record update among them; more entries than fit
        // go first, on their own (the same entries written again later are harmless).
        let overflow = rows.len().saturating_sub(TRANSACTION_LIMIT - 1);
        for row in rows.drain(..overflow) {
            self.upsert_history(&row).await?;
        }
        let record_row = row_of(record)?;
        // Answers inside a transaction carry a status only: say what broke a limit ourselves.
        let oversize = oversize("the record", &record_row.data).or_else(|| {
            rows.iter()
                .find_map(|row| oversize("a history entry", &row.data))
        });
        let partition = self.devices.partition_key_client(&key);
        let mut transaction = partition
            .transaction()
            .update(
                RECORD_ROW,
                record_row,
                Some(IfMatchCondition::Etag(Etag::from(previous.etag.clone()))),
            )
            .map_err(failed)?;
        for row in &rows {
            transaction = transaction
                .insert_or_replace(row.row_key.clone(), row)
                .map_err(failed)?;
        }
        let response = transaction.into_future().await.map_err(failed)?;
        if let Some(failed) = response
            .operation_responses
            .iter()
            .find(|r| !(200..300).contains(&u16::from(r.status_code)))
        {
            return Err(match u16::from(failed.status_code) {
                412 | 404 => StoreError::PreconditionFailed,
                status => Failure::of_status(status).error(match oversize {
                    Some(why) => format!("HTTP {status} in a transaction: {why}"),
                    None => format!("HTTP {status} in a transaction"),
                }),
            });
        }
        for (kind, value) in old.iter().filter(|e| !new.contains(e)) {
            self.drop_index(index_partition(*kind, value), &key).await;
        }
        match response
            .operation_responses
            .first()
            .and_then(|r| r.etag.clone())
        {
            Some(etag) => Ok(etag.to_string()),
            // Without the new etag the caller cannot write again; read it.
            None => self
                .get_row(&key)
                .await?
                .map(|s| s.etag)
                .ok_or(StoreError::PreconditionFailed),
        }
    }

    async fn add_history(
        &self,
        device_id: &str,
        entries: &[HistoryEntry],
    ) -> Result<(), StoreError> {
        self.ensure_tables().await?;
        let Some(key) = self.history_partition(device_id).await? else {
            return Ok(());
        };
        for row in history_rows(&key, entries)? {
            self.upsert_history(&row).await?;
        }
        Ok(())
    }

    async fn history(
        &self,
        device_id: &str,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<(Vec<HistoryEntry>, Option<String>), StoreError> {
        self.ensure_tables().await?;
        let Some(key) = self.history_partition(device_id).await? else {
            return Ok((Vec::new(), None));
        };
        let filter = format!(
            "PartitionKey eq '{}' and RowKey gt '{HISTORY_PREFIX}' and RowKey lt '{HISTORY_PREFIX}~'",
            key.replace('\'', "''")
        );
        let mut query = self
            .devices
            .query()
            .filter(azure_data_tables::Filter::new(filter))
            .top(Top::new(u32::try_from(page_size.max(1)).unwrap_or(1000)));
        if let Some(token) = continuation {
            let position = decode_token(token)?;
            let text = |field: &str| position[field].as_str().map(str::to_owned);
            query = query.initial_partition_key(text("pk").ok_or(StoreError::BadContinuation)?);
            if let Some(rk) = text("rk") {
                query = query.initial_row_key(rk);
            }
        }
        let mut pages = query.into_stream::<DataRow>();
        let Some(page) = pages.next().await else {
            return Ok((Vec::new(), None));
        };
        let page = page.map_err(failed)?;
        let next = azure_core::Continuable::continuation(&page)
            .map(|(pk, rk)| encode_token(&json!({ "pk": pk, "rk": rk })));
        let entries = page
            .entities
            .iter()
            .map(from_json)
            .collect::<Result<Vec<HistoryEntry>, _>>()?;
        Ok((entries, next))
    }
}

/// A row holding one JSON document.
#[derive(Serialize, Deserialize)]
struct DataRow {
    #[serde(rename = "PartitionKey")]
    partition_key: String,
    #[serde(rename = "RowKey")]
    row_key: String,
    #[serde(rename = "Data")]
    data: String,
    /// Outbox rows: the next attempt, unix ms, zero-padded so text order is time order.
    #[serde(
        rename = "NextAttempt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    next_attempt: Option<String>,
}

const DEAD_PARTITION: &str = "dead";
const OUTBOX_PARTITION: &str = "pending";
/// Entity group transactions hold at most 100 operations.
const TRANSACTION_LIMIT: usize = 100;

fn json_of<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Refused(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(row: &DataRow) -> Result<T, StoreError> {
    serde_json::from_str(&row.data)
        .map_err(|e| StoreError::Refused(format!("a stored row is unreadable: {e}")))
}

fn outbox_row(notification: &Notification) -> Result<DataRow, StoreError> {
    Ok(DataRow {
        partition_key: OUTBOX_PARTITION.into(),
        row_key: notification.id.clone(),
        data: json_of(notification)?,
        next_attempt: Some(next_attempt_text(notification.next_attempt_ms)),
    })
}

/// The first `limit` (up to 1,000) rows of `table` passing `filter`, as documents.
async fn first_page<T: serde::de::DeserializeOwned>(
    table: &TableClient,
    filter: azure_data_tables::Filter,
    limit: usize,
) -> Result<Vec<T>, StoreError> {
    let query = table.query().filter(filter).top(Top::new(
        u32::try_from(limit.clamp(1, 1000)).unwrap_or(1000),
    ));
    let mut pages = query.into_stream::<DataRow>();
    let Some(page) = pages.next().await else {
        return Ok(Vec::new());
    };
    page.map_err(failed)?
        .entities
        .iter()
        .map(from_json)
        .collect()
}

fn next_attempt_text(ms: i64) -> String {
    format!("{:016}", ms.max(0))
}

fn history_rows(partition: &str, entries: &[HistoryEntry]) -> Result<Vec<DataRow>, StoreError> {
    entries
        .iter()
        .map(|entry| {
            Ok(DataRow {
                partition_key: partition.to_owned(),
                row_key: format!("{HISTORY_PREFIX}{}", entry.key()),
                data: json_of(entry)?,
                next_attempt: None,
            })
        })
        .collect()
}

impl TableRegistry {
    async fn upsert_history(&self, row: &DataRow) -> Result<(), StoreError> {
        self.devices
            .partition_key_client(&row.partition_key)
            .entity_client(&row.row_key)
            .insert_or_replace(row)
            .map_err(failed)?
            .await
            .map(|_| ())
            .map_err(failed)
    }

    /// The partition holding a device's history: its record's, found through the device id's
    /// alias (which outlives the record).
    async fn history_partition(&self, device_id: &str) -> Result<Option<String>, StoreError> {
        let alias = self
            .aliases
            .partition_key_client(alias_key(device_id))
            .entity_client(ALIAS_ROW);
        match alias.get::<AliasRow>().await {
            Ok(response) => Ok(Some(response.entity.registration_key)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(failed(e)),
        }
    }

    async fn insert_ignoring_existing(
        &self,
        table: &TableClient,
        row: &DataRow,
    ) -> Result<(), StoreError> {
        match table
            .insert::<_, serde_json::Value>(row)
            .map_err(failed)?
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(409) => Ok(()),
            Err(e) => Err(failed(e)),
        }
    }
}

#[async_trait]
impl Journal for TableRegistry {
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        self.ensure_tables().await?;
        let letter = &letter.clone().fitted();
        let nanos = i64::try_from(letter.at.nanos()).unwrap_or(i64::MAX).max(0);
        let row = DataRow {
            partition_key: DEAD_PARTITION.into(),
            row_key: format!(
                "{:019}~{}",
                i64::MAX - nanos,
                letter.key.replace(['/', '\\', '#', '?'], "_")
            ),
            data: json_of(letter)?,
            next_attempt: None,
        };
        self.insert_ignoring_existing(&self.dead_letters, &row)
            .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.ensure_tables().await?;
        first_page(
            &self.dead_letters,
            Filter_::partition(DEAD_PARTITION),
            limit,
        )
        .await
    }

    async fn enqueue(&self, notification: &Notification) -> Result<(), StoreError> {
        self.ensure_tables().await?;
        let row = outbox_row(notification)?;
        self.insert_ignoring_existing(&self.outbox, &row).await
    }

    async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<Notification>, StoreError> {
        self.ensure_tables().await?;
        let filter = format!(
            "PartitionKey eq '{OUTBOX_PARTITION}' and NextAttempt le '{}'",
            next_attempt_text(now_ms)
        );
        first_page(&self.outbox, azure_data_tables::Filter::new(filter), limit).await
    }

    async fn claim(&self, id: &str, now_ms: i64, until_ms: i64) -> Result<bool, StoreError> {
        self.ensure_tables().await?;
        let client = self
            .outbox
            .partition_key_client(OUTBOX_PARTITION)
            .entity_client(id);
        let current = match client.get::<DataRow>().await {
            Ok(response) => response,
            Err(e) if status_of(&e) == Some(404) => return Ok(false),
            Err(e) => return Err(failed(e)),
        };
        let mut notification: Notification = from_json(&current.entity)?;
        if notification.next_attempt_ms > now_ms {
            return Ok(false);
        }
        notification.next_attempt_ms = until_ms;
        // Only the caller whose read is still current wins; the others see 412 (or 404 once it
        // was delivered).
        match client
            .update(
                &outbox_row(&notification)?,
                IfMatchCondition::Etag(current.etag),
            )
            .map_err(failed)?
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if matches!(status_of(&e), Some(404 | 412)) => Ok(false),
            Err(e) => Err(failed(e)),
        }
    }

    async fn reschedule(&self, notification: &Notification) -> Result<(), StoreError> {
        self.ensure_tables().await?;
        let row = outbox_row(notification)?;
        // An update, not an upsert: a notification another pass delivered (and deleted) in the
        // meantime must not be queued again.
        match self
            .outbox
            .partition_key_client(OUTBOX_PARTITION)
            .entity_client(&notification.id)
            .update(&row, IfMatchCondition::Any)
            .map_err(failed)?
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(failed(e)),
        }
    }

    async fn delivered(&self, id: &str) -> Result<(), StoreError> {
        self.ensure_tables().await?;
        match self
            .outbox
            .partition_key_client(OUTBOX_PARTITION)
            .entity_client(id)
            .delete()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(failed(e)),
        }
    }
}

/// OData filters for queries.
struct Filter_;

impl Filter_ {
    fn partition(partition: &str) -> azure_data_tables::Filter {
        azure_data_tables::Filter::new(format!(
            "PartitionKey eq '{}'",
            partition.replace('\'', "''")
        ))
    }
}

/// The HTTP client storage calls go through: pooled, with a bound on every call.
pub fn http_client() -> reqwest::Client {
    storage_client_builder().build().unwrap_or_default()
}

/// [`http_client`] trusting the CA in `extra_ca_pem` too (the emulator's, for Azurite over
/// HTTPS). The managed identity's tokens are fetched through it as well.
pub fn http_client_trusting(extra_ca_pem: Option<&str>) -> Result<reqwest::Client, String> {
    let mut builder = storage_client_builder();
    if let Some(pem) = extra_ca_pem {
        for certificate in
            reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| e.to_string())?
        {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

fn storage_client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(3))
        .pool_idle_timeout(Duration::from_secs(30))
}
