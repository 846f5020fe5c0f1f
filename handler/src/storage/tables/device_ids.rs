//! The `DeviceIds` table: which registration holds a device id. It finds a record by device id,
//! and the device's history (which outlives the record, so the alias does too).

use super::failures::{failed, status_of};
use super::TableRegistry;
use crate::domain::{DeviceRecord, RegistrationId};
use crate::storage::StoreError;
use azure_data_tables::prelude::*;
use base64::Engine;
use serde::{Deserialize, Serialize};

const ALIAS_ROW: &str = "alias";

#[derive(Serialize, Deserialize)]
struct AliasRow {
    #[serde(rename = "PartitionKey")]
    partition_key: String,
    #[serde(rename = "RowKey")]
    row_key: String,
    #[serde(rename = "RegistrationKey")]
    registration_key: String,
}

fn alias_key(device_id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(device_id)
}

impl TableRegistry {
    /// The key of the registration holding `device_id`, if one ever claimed it: where its record
    /// is (if the record still uses the id) and where its history is.
    pub(super) async fn registration_key_of(
        &self,
        device_id: &str,
    ) -> Result<Option<String>, StoreError> {
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

    /// Claims the device id for `record` (refusing one that another record holds).
    pub(super) async fn claim_device_id(&self, record: &DeviceRecord) -> Result<(), StoreError> {
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
