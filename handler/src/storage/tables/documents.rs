//! Rows holding one JSON document (`Data`): history entries, dead letters and queued
//! notifications are all stored this way.

use super::failures::{failed, status_of};
use crate::storage::StoreError;
use azure_data_tables::prelude::*;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

/// A row holding one JSON document.
#[derive(Serialize, Deserialize)]
pub(super) struct DataRow {
    #[serde(rename = "PartitionKey")]
    pub(super) partition_key: String,
    #[serde(rename = "RowKey")]
    pub(super) row_key: String,
    #[serde(rename = "Data")]
    pub(super) data: String,
    /// Outbox rows: the next attempt, unix ms, zero-padded so text order is time order.
    #[serde(
        rename = "NextAttempt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub(super) next_attempt: Option<String>,
}

pub(super) fn json_of<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Refused(e.to_string()))
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(row: &DataRow) -> Result<T, StoreError> {
    serde_json::from_str(&row.data)
        .map_err(|e| StoreError::Refused(format!("a stored row is unreadable: {e}")))
}

/// The first `limit` (up to 1,000) rows of `table` passing `filter`, as documents.
pub(super) async fn first_page<T: serde::de::DeserializeOwned>(
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

/// Inserts `row`; one already there (same keys) is left as it is.
pub(super) async fn insert_ignoring_existing(
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

/// An OData filter on one partition.
pub(super) fn partition_filter(partition: &str) -> azure_data_tables::Filter {
    azure_data_tables::Filter::new(format!(
        "PartitionKey eq '{}'",
        partition.replace('\'', "''")
    ))
}
