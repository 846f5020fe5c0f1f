//! Device records in the `Devices` table (row `record` of the device's partition): point reads,
//! etag-guarded writes, listings, and the dashboard's scan of summaries. The `Summary` column is
//! written in the same entity write as `Data`, so it always describes the record beside it.

use super::failures::{failed, status_of};
use super::index::index_partition;
use super::{continuation_token, position_of, starting_at, TableRegistry, VERIFY_CONCURRENCY};
use crate::domain::summary::Summary;
use crate::domain::{DeviceRecord, Filter, RegistrationId};
use crate::storage::{Page, StoreError, Stored, SummaryPage};
use azure_core::Etag;
use azure_data_tables::operations::QueryEntityBuilder;
use azure_data_tables::prelude::*;
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

pub(super) const RECORD_ROW: &str = "record";

#[derive(Serialize, Deserialize)]
pub(super) struct RecordRow {
    #[serde(rename = "PartitionKey")]
    partition_key: String,
    #[serde(rename = "RowKey")]
    row_key: String,
    #[serde(rename = "Data")]
    pub(super) data: String,
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

pub(super) fn row_of(record: &DeviceRecord) -> Result<RecordRow, StoreError> {
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

/// Only record rows: the Devices table also holds history rows.
fn records_only() -> azure_data_tables::Filter {
    azure_data_tables::Filter::new(format!("RowKey eq '{RECORD_ROW}'"))
}

/// A failed etag-guarded write: the record changed (412) or went (404) since it was read.
fn guarded(e: azure_core::Error) -> StoreError {
    match status_of(&e) {
        Some(412) | Some(404) => StoreError::PreconditionFailed,
        _ => failed(e),
    }
}

impl TableRegistry {
    pub(super) async fn get_row(&self, key: &str) -> Result<Option<Stored>, StoreError> {
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

    pub(super) async fn get_record_by_device(
        &self,
        device_id: &str,
    ) -> Result<Option<Stored>, StoreError> {
        self.ensure_tables().await?;
        // Most devices keep their registration id as device id: one point read finds them.
        if let Ok(id) = RegistrationId::parse(device_id) {
            if let Some(stored) = self.get_row(&id.key()).await? {
                if stored.record.device_id.as_str() == device_id {
                    return Ok(Some(stored));
                }
            }
        }
        let Some(key) = self.registration_key_of(device_id).await? else {
            return Ok(None);
        };
        // An alias left by a half-finished write may point at a record with another device id.
        Ok(self
            .get_row(&key)
            .await?
            .filter(|s| s.record.device_id.as_str() == device_id))
    }

    pub(super) async fn insert_record(&self, record: &DeviceRecord) -> Result<String, StoreError> {
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

    pub(super) async fn replace_record(
        &self,
        previous: &Stored,
        record: &DeviceRecord,
    ) -> Result<String, StoreError> {
        self.ensure_tables().await?;
        let key = record.registration_id.key();
        let old = previous.record.index_entries();
        let new = record.index_entries();
        self.add_gained_index_rows(&key, &old, &new).await?;
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
            .map_err(guarded)?;
        self.drop_lost_index_rows(&key, &old, &new).await;
        Ok(response.etag.to_string())
    }

    pub(super) async fn delete_record(&self, previous: &Stored) -> Result<(), StoreError> {
        self.ensure_tables().await?;
        let record = &previous.record;
        let key = record.registration_id.key();
        self.devices
            .partition_key_client(&key)
            .entity_client(RECORD_ROW)
            .delete()
            .if_match(IfMatchCondition::Etag(Etag::from(previous.etag.clone())))
            .await
            .map_err(guarded)?;
        for (kind, value) in record.index_entries() {
            self.drop_index(index_partition(kind, &value), &key).await;
        }
        // The alias stays: it leads to the device's history, which outlives the record. Another
        // enrollment may take the device id over later (see `claim_device_id`).
        Ok(())
    }

    /// One page of records passing `filter`: through its index partition when it has one,
    /// else by scanning every record.
    pub(super) async fn list_records(
        &self,
        filter: &Filter,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<Page, StoreError> {
        self.ensure_tables().await?;
        let index = filter.index();
        let kind = if index.is_some() { "index" } else { "scan" };
        let position = continuation
            .map(|token| position_of(token, Some(kind)))
            .transpose()?;
        let table = if index.is_some() {
            &self.index
        } else {
            &self.devices
        };
        let query = table
            .query()
            .top(Top::new(u32::try_from(page_size.max(1)).unwrap_or(1000)));
        let query = starting_at(query, position);
        let (items, next) = match index {
            Some((kind_name, value)) => {
                let partition = index_partition(kind_name, &value);
                self.list_indexed(filter, partition, query).await?
            }
            None => scan_records(filter, query).await?,
        };
        Ok(Page {
            items,
            continuation: next.map(|position| continuation_token(Some(kind), position)),
        })
    }

    pub(super) async fn scan_summaries(
        &self,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<SummaryPage, StoreError> {
        self.ensure_tables().await?;
        let position = continuation
            .map(|token| position_of(token, Some("summaries")))
            .transpose()?;
        let query = self
            .devices
            .query()
            .filter(records_only())
            .select(Select::new("PartitionKey,RowKey,Summary"))
            .top(Top::new(
                u32::try_from(page_size.clamp(1, 1000)).unwrap_or(1000),
            ));
        let mut pages = starting_at(query, position).into_stream::<SummaryRow>();
        let Some(page) = pages.next().await else {
            return Ok(SummaryPage::default());
        };
        let page = page.map_err(failed)?;
        let next = azure_core::Continuable::continuation(&page)
            .map(|position| continuation_token(Some("summaries"), position));
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
}

/// One page of the scan of every record: those passing `filter`, and the query's continuation.
async fn scan_records(
    filter: &Filter,
    query: QueryEntityBuilder,
) -> Result<(Vec<Stored>, Option<(String, Option<String>)>), StoreError> {
    let mut pages = query.filter(records_only()).into_stream::<RecordRow>();
    let Some(page) = pages.next().await else {
        return Ok((Vec::new(), None));
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
    Ok((items, next))
}
