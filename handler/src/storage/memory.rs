//! An in-memory [`Registry`] with the same semantics as Table Storage (etags, conflicts, paging),
//! for unit tests of the logic above it.

use super::{
    decode_token, encode_token, limits, DeadLetters, NotificationOutbox, Page, Registry,
    StoreError, Stored, SummaryPage,
};
use crate::domain::journal::{DeadLetter, HistoryEntry, Notification};
use crate::domain::{DeviceRecord, Filter, RegistrationId};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Records in a map, keyed by the registration id's key.
#[derive(Default)]
pub struct MemoryRegistry {
    records: Mutex<BTreeMap<String, Stored>>,
    /// Injected failures of `insert`, `replace` (and so `replace_with_history`), `delete`,
    /// `history` (`add_history`), `summaries`.
    faults: Faults,
    /// History entries by (device id, entry key).
    history: Mutex<BTreeMap<(String, String), HistoryEntry>>,
}

/// Failures to inject: operation name → how many of the next calls fail, and with what.
#[derive(Default)]
struct Faults(Mutex<BTreeMap<&'static str, (u32, StoreError)>>);

impl Faults {
    fn fail(&self, operation: &'static str, times: u32, error: StoreError) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(operation, (times, error));
    }

    fn check(&self, operation: &'static str) -> Result<(), StoreError> {
        let mut faults = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match faults.get_mut(operation) {
            Some((left, error)) if *left > 0 => {
                *left -= 1;
                Err(error.clone())
            }
            _ => Ok(()),
        }
    }
}

fn injected(operation: &'static str) -> StoreError {
    StoreError::Unavailable(format!("injected failure of {operation}"))
}

/// Refuses a document Table Storage would refuse: one string property holds it (`Data`).
fn check_size<T: serde::Serialize>(document: &T) -> Result<(), StoreError> {
    let text = serde_json::to_string(document).map_err(|e| StoreError::Refused(e.to_string()))?;
    if limits::fits_string(&text) {
        Ok(())
    } else {
        Err(StoreError::Refused("HTTP 400 PropertyValueTooLarge".into()))
    }
}

fn new_etag() -> String {
    format!("W/\"{}\"", uuid::Uuid::new_v4().simple())
}

impl MemoryRegistry {
    /// Makes the next `times` calls of `operation` fail as unavailable (for failure tests).
    pub fn fail(&self, operation: &'static str, times: u32) {
        self.faults.fail(operation, times, injected(operation));
    }

    /// Makes the next `times` calls of `operation` fail with `error`.
    pub fn fail_with(&self, operation: &'static str, times: u32, error: StoreError) {
        self.faults.fail(operation, times, error);
    }

    fn check(&self, operation: &'static str) -> Result<(), StoreError> {
        self.faults.check(operation)
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
        check_size(record)?;
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
        check_size(record)?;
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

    async fn summaries(
        &self,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<SummaryPage, StoreError> {
        self.check("summaries")?;
        let page = self
            .list(&Filter::default(), page_size, continuation)
            .await?;
        Ok(SummaryPage {
            items: page.items.iter().map(|s| s.record.summary()).collect(),
            continuation: page.continuation,
        })
    }

    async fn replace_with_history(
        &self,
        previous: &Stored,
        record: &DeviceRecord,
        history: &[HistoryEntry],
    ) -> Result<String, StoreError> {
        for entry in history {
            check_size(entry)?;
        }
        let etag = self.replace(previous, record).await?;
        let mut entries = self.history.lock().unwrap_or_else(|p| p.into_inner());
        for entry in history {
            entries.insert((record.device_id.to_string(), entry.key()), entry.clone());
        }
        Ok(etag)
    }

    async fn add_history(
        &self,
        device_id: &str,
        entries: &[HistoryEntry],
    ) -> Result<(), StoreError> {
        self.check("history")?;
        for entry in entries {
            check_size(entry)?;
        }
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        for entry in entries {
            history
                .entry((device_id.to_owned(), entry.key()))
                .or_insert_with(|| entry.clone());
        }
        Ok(())
    }

    async fn history(
        &self,
        device_id: &str,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<(Vec<HistoryEntry>, Option<String>), StoreError> {
        let after = match continuation {
            Some(token) => Some(
                decode_token(token)?
                    .as_str()
                    .map(str::to_owned)
                    .ok_or(StoreError::BadContinuation)?,
            ),
            None => None,
        };
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows = history.iter().filter(|((device, key), _)| {
            device == device_id && after.as_ref().is_none_or(|a| key > a)
        });
        let page: Vec<(String, HistoryEntry)> = rows
            .by_ref()
            .take(page_size)
            .map(|((_, k), e)| (k.clone(), e.clone()))
            .collect();
        let next = match (rows.next(), page.last()) {
            (Some(_), Some((key, _))) => {
                Some(encode_token(&serde_json::Value::String(key.clone())))
            }
            _ => None,
        };
        Ok((page.into_iter().map(|(_, e)| e).collect(), next))
    }
}

/// Dead letters in memory.
#[derive(Default)]
pub struct MemoryDeadLetters {
    dead: Mutex<Vec<DeadLetter>>,
    faults: Faults,
}

impl MemoryDeadLetters {
    /// Makes the next `times` calls of `operation` fail as unavailable (for failure tests).
    pub fn fail(&self, operation: &'static str, times: u32) {
        self.faults.fail(operation, times, injected(operation));
    }

    /// Makes the next `times` calls of `operation` fail with `error`.
    pub fn fail_with(&self, operation: &'static str, times: u32, error: StoreError) {
        self.faults.fail(operation, times, error);
    }
}

#[async_trait]
impl DeadLetters for MemoryDeadLetters {
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        self.faults.check("dead_letter")?;
        let letter = letter.clone().fitted();
        check_size(&letter)?;
        self.dead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(letter);
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self
            .dead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect())
    }
}

/// The notification outbox in memory.
#[derive(Default)]
pub struct MemoryOutbox {
    outbox: Mutex<BTreeMap<String, Notification>>,
    faults: Faults,
}

impl MemoryOutbox {
    /// Makes the next `times` calls of `operation` fail as unavailable (for failure tests).
    pub fn fail(&self, operation: &'static str, times: u32) {
        self.faults.fail(operation, times, injected(operation));
    }

    /// Every queued notification.
    pub fn queued(&self) -> Vec<Notification> {
        self.outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

#[async_trait]
impl NotificationOutbox for MemoryOutbox {
    async fn enqueue(&self, notification: &Notification) -> Result<(), StoreError> {
        self.faults.check("enqueue")?;
        self.outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(notification.id.clone())
            .or_insert_with(|| notification.clone());
        Ok(())
    }

    async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<Notification>, StoreError> {
        let outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        Ok(outbox
            .values()
            .filter(|n| n.next_attempt_ms <= now_ms)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn claim(&self, id: &str, now_ms: i64, until_ms: i64) -> Result<bool, StoreError> {
        let mut outbox = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match outbox.get_mut(id) {
            Some(n) if n.next_attempt_ms <= now_ms => {
                n.next_attempt_ms = until_ms;
                true
            }
            _ => false,
        })
    }

    async fn reschedule(&self, notification: &Notification) -> Result<(), StoreError> {
        if let Some(queued) = self
            .outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&notification.id)
        {
            *queued = notification.clone();
        }
        Ok(())
    }

    async fn delivered(&self, id: &str) -> Result<(), StoreError> {
        self.outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }
}
