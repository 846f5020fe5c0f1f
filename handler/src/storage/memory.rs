//! An in-memory [`Registry`] with the same semantics as Table Storage (etags, conflicts, paging),
//! for unit tests of the logic above it.

use super::{decode_token, encode_token, Page, Registry, StoreError, Stored};
use crate::domain::{DeviceRecord, Filter, RegistrationId};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Records in a map, keyed by the registration id's key.
#[derive(Default)]
pub struct MemoryRegistry {
    records: Mutex<BTreeMap<String, Stored>>,
    /// Injected failures: operation (`insert`, `replace`, `delete`) → calls left to fail.
    faults: Mutex<BTreeMap<&'static str, u32>>,
}

fn new_etag() -> String {
    format!("W/\"{}\"", uuid::Uuid::new_v4().simple())
}

impl MemoryRegistry {
    /// Makes the next `times` calls of `operation` fail as unavailable (for failure tests).
    pub fn fail(&self, operation: &'static str, times: u32) {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(operation, times);
    }

    fn check(&self, operation: &'static str) -> Result<(), StoreError> {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        match faults.get_mut(operation) {
            Some(left) if *left > 0 => {
                *left -= 1;
                Err(StoreError::Unavailable(format!(
                    "injected failure of {operation}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Every record, for assertions.
    pub fn all(&self) -> Vec<Stored> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Stored>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn get(&self, id: &RegistrationId) -> Result<Option<Stored>, StoreError> {
        Ok(self.lock().get(&id.key()).cloned())
    }

    async fn get_by_device(&self, device_id: &str) -> Result<Option<Stored>, StoreError> {
        Ok(self
            .lock()
            .values()
            .find(|s| s.record.device_id.as_str() == device_id)
            .cloned())
    }

    async fn insert(&self, record: &DeviceRecord) -> Result<String, StoreError> {
        self.check("insert")?;
        let mut records = self.lock();
        let key = record.registration_id.key();
        // Device ids are unique, as the Table Storage registry's alias rows make them.
        if records.contains_key(&key)
            || records
                .values()
                .any(|s| s.record.device_id == record.device_id)
        {
            return Err(StoreError::Conflict);
        }
        let etag = new_etag();
        records.insert(
            key,
            Stored {
                record: record.clone(),
                etag: etag.clone(),
            },
        );
        Ok(etag)
    }

    async fn replace(
        &self,
        previous: &Stored,
        record: &DeviceRecord,
    ) -> Result<String, StoreError> {
        self.check("replace")?;
        let mut records = self.lock();
        let key = record.registration_id.key();
        match records.get(&key) {
            Some(current) if current.etag == previous.etag => {
                let etag = new_etag();
                records.insert(
                    key,
                    Stored {
                        record: record.clone(),
                        etag: etag.clone(),
                    },
                );
                Ok(etag)
            }
            _ => Err(StoreError::PreconditionFailed),
        }
    }

    async fn delete(&self, previous: &Stored) -> Result<(), StoreError> {
        self.check("delete")?;
        let mut records = self.lock();
        let key = previous.record.registration_id.key();
        match records.get(&key) {
            Some(current) if current.etag == previous.etag => {
                records.remove(&key);
                Ok(())
            }
            _ => Err(StoreError::PreconditionFailed),
        }
    }

    async fn list(
        &self,
        filter: &Filter,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<Page, StoreError> {
        let after = match continuation {
            Some(token) => Some(
                decode_token(token)?
                    .as_str()
                    .map(str::to_owned)
                    .ok_or(StoreError::BadContinuation)?,
            ),
            None => None,
        };
        let records = self.lock();
        let mut matching = records
            .iter()
            .filter(|(key, _)| after.as_ref().is_none_or(|a| key.as_str() > a.as_str()))
            .filter(|(_, stored)| filter.matches(&stored.record));
        let items: Vec<(String, Stored)> = matching
            .by_ref()
            .take(page_size)
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        let continuation = match (matching.next(), items.last()) {
            (Some(_), Some((last, _))) => {
                Some(encode_token(&serde_json::Value::String(last.clone())))
            }
            _ => None,
        };
        Ok(Page {
            items: items.into_iter().map(|(_, s)| s).collect(),
            continuation,
        })
    }
}
