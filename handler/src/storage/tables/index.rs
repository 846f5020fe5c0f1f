//! The `Index` table: one partition per customer, hub, status and pending DPS sync, a row per
//! member. Rows go in *before* the record and come out *after* it, so a half-done write can
//! leave an extra row but never hide a record; listings check every hit and tidy stale ones.

use super::documents::partition_filter;
use super::failures::{failed, status_of};
use super::{TableRegistry, VERIFY_CONCURRENCY};
use crate::domain::{Filter, IndexKind};
use crate::storage::{StoreError, Stored};
use azure_data_tables::operations::QueryEntityBuilder;
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct IndexRow {
    #[serde(rename = "PartitionKey")]
    partition_key: String,
    #[serde(rename = "RowKey")]
    row_key: String,
}

pub(super) fn index_partition(kind: IndexKind, value: &str) -> String {
    format!("{}~{}", kind.prefix(), value)
}

impl TableRegistry {
    pub(super) async fn put_index(&self, partition: String, key: &str) -> Result<(), StoreError> {
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

    pub(super) async fn drop_index(&self, partition: String, key: &str) {
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

    /// Before a record changes from `old` to `new` entries: adds the rows it gains.
    pub(super) async fn add_gained_index_rows(
        &self,
        key: &str,
        old: &[(IndexKind, String)],
        new: &[(IndexKind, String)],
    ) -> Result<(), StoreError> {
        for (kind, value) in new.iter().filter(|e| !old.contains(e)) {
            self.put_index(index_partition(*kind, value), key).await?;
        }
        Ok(())
    }

    /// After a record changed from `old` to `new` entries: removes the rows it lost.
    pub(super) async fn drop_lost_index_rows(
        &self,
        key: &str,
        old: &[(IndexKind, String)],
        new: &[(IndexKind, String)],
    ) {
        for (kind, value) in old.iter().filter(|e| !new.contains(e)) {
            self.drop_index(index_partition(*kind, value), key).await;
        }
    }

    /// One page of the index partition `partition`, each hit checked against its record: the
    /// records passing `filter`, and the continuation of the index query.
    pub(super) async fn list_indexed(
        &self,
        filter: &Filter,
        partition: String,
        query: QueryEntityBuilder,
    ) -> Result<(Vec<Stored>, Option<(String, Option<String>)>), StoreError> {
        let mut pages = query
            .filter(partition_filter(&partition))
            .into_stream::<IndexRow>();
        let Some(page) = pages.next().await else {
            return Ok((Vec::new(), None));
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
        let mut items = Vec::new();
        for (key, stored) in checked {
            match stored? {
                Some(stored) if filter.matches(&stored.record) => items.push(stored),
                // A leftover of an interrupted or superseded write: tidy it away.
                _ => self.drop_index(partition.clone(), &key).await,
            }
        }
        Ok((items, next))
    }
}
