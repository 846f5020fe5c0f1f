//! Device history in the `Devices` table: rows `h~<inverted time>~<cause>` in the record's
//! partition, newest first, written in the same entity-group transaction as the record change
//! they describe.

use super::documents::{from_json, json_of, DataRow};
use super::failures::{failed, oversize};
use super::records::{row_of, RECORD_ROW};
use super::{continuation_token, position_of, starting_at, TableRegistry};
use crate::domain::journal::HistoryEntry;
use crate::domain::DeviceRecord;
use crate::storage::{Failure, StoreError, Stored};
use azure_core::Etag;
use azure_data_tables::prelude::*;
use futures_util::StreamExt;

/// History rows sort after `h~` and before `h~~` (their keys start with digits).
const HISTORY_PREFIX: &str = "h~";
/// Entity group transactions hold at most 100 operations.
const TRANSACTION_LIMIT: usize = 100;

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

/// The first operation of a transaction that failed (by the `statuses` of its operations), as
/// the error it stands for. Answers inside a transaction carry a status only, so `oversize`
/// says what broke a limit, if known.
fn transaction_failure(
    mut statuses: impl Iterator<Item = u16>,
    oversize: Option<String>,
) -> Option<StoreError> {
    let failed = statuses.find(|status| !(200..300).contains(status))?;
    Some(match failed {
        412 | 404 => StoreError::PreconditionFailed,
        status => Failure::of_status(status).error(match oversize {
            Some(why) => format!("HTTP {status} in a transaction: {why}"),
            None => format!("HTTP {status} in a transaction"),
        }),
    })
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

    pub(super) async fn replace_record_with_history(
        &self,
        previous: &Stored,
        record: &DeviceRecord,
        history: &[HistoryEntry],
    ) -> Result<String, StoreError> {
        if history.is_empty() {
            return self.replace_record(previous, record).await;
        }
        self.ensure_tables().await?;
        let key = record.registration_id.key();
        let old = previous.record.index_entries();
        let new = record.index_entries();
        self.add_gained_index_rows(&key, &old, &new).await?;
        let mut rows = history_rows(&key, history)?;
        // A transaction holds 100 operations, the record update among them; more entries than fit
        // go first, on their own (the same entries written again later are harmless).
        let overflow = rows.len().saturating_sub(TRANSACTION_LIMIT - 1);
        for row in rows.drain(..overflow) {
            self.upsert_history(&row).await?;
        }
        let record_row = row_of(record)?;
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
        let statuses = response
            .operation_responses
            .iter()
            .map(|r| u16::from(r.status_code));
        if let Some(error) = transaction_failure(statuses, oversize) {
            return Err(error);
        }
        self.drop_lost_index_rows(&key, &old, &new).await;
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

    pub(super) async fn add_history_rows(
        &self,
        device_id: &str,
        entries: &[HistoryEntry],
    ) -> Result<(), StoreError> {
        self.ensure_tables().await?;
        let Some(key) = self.registration_key_of(device_id).await? else {
            return Ok(());
        };
        for row in history_rows(&key, entries)? {
            self.upsert_history(&row).await?;
        }
        Ok(())
    }

    pub(super) async fn history_page(
        &self,
        device_id: &str,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<(Vec<HistoryEntry>, Option<String>), StoreError> {
        self.ensure_tables().await?;
        let Some(key) = self.registration_key_of(device_id).await? else {
            return Ok((Vec::new(), None));
        };
        let filter = format!(
            "PartitionKey eq '{}' and RowKey gt '{HISTORY_PREFIX}' \
             and RowKey lt '{HISTORY_PREFIX}~'",
            key.replace('\'', "''")
        );
        let position = continuation
            .map(|token| position_of(token, None))
            .transpose()?;
        let query = self
            .devices
            .query()
            .filter(azure_data_tables::Filter::new(filter))
            .top(Top::new(u32::try_from(page_size.max(1)).unwrap_or(1000)));
        let mut pages = starting_at(query, position).into_stream::<DataRow>();
        let Some(page) = pages.next().await else {
            return Ok((Vec::new(), None));
        };
        let page = page.map_err(failed)?;
        let next = azure_core::Continuable::continuation(&page)
            .map(|position| continuation_token(None, position));
        let entries = page
            .entities
            .iter()
            .map(from_json)
            .collect::<Result<Vec<HistoryEntry>, _>>()?;
        Ok((entries, next))
    }
}
