//! Where device records live, behind a small trait so the logic above can be tested with an
//! in-memory store and run on Azure Table Storage.
//!
//! - [`tables`]: Azure Table Storage (Azurite locally) through azure_data_tables.
//! - [`identity`]: Entra tokens from the app's managed identity, for Table Storage in Azure.
//! - [`memory`]: an in-memory store with the same semantics, for unit tests.

pub mod identity;
pub mod memory;
pub mod tables;

use crate::domain::journal::{DeadLetter, HistoryEntry, Notification};
use crate::domain::{DeviceRecord, Filter, RegistrationId};
use async_trait::async_trait;

/// A record with the etag that guards it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The record.
    pub record: DeviceRecord,
    /// Its etag (opaque).
    pub etag: String,
}

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The records.
    pub items: Vec<Stored>,
    /// Opaque token for the next page.
    pub continuation: Option<String>,
}

/// What storage can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The record exists already.
    #[error("the record already exists")]
    Conflict,
    /// The etag no longer matches.
    #[error("the record changed since it was read")]
    PreconditionFailed,
    /// A continuation token this store did not issue.
    #[error("the continuation token is not valid")]
    BadContinuation,
    /// Storage cannot be reached or refused the request; retrying later may help.
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
}

/// The device records.
#[async_trait]
pub trait Registry: Send + Sync {
    /// Reads a record by registration id.
    async fn get(&self, id: &RegistrationId) -> Result<Option<Stored>, StoreError>;

    /// Reads a record by device id.
    async fn get_by_device(&self, device_id: &str) -> Result<Option<Stored>, StoreError>;

    /// Creates a record; `Conflict` if one exists.
    async fn insert(&self, record: &DeviceRecord) -> Result<String, StoreError>;

    /// Replaces a record read as `previous` with etag `etag`; `PreconditionFailed` if it changed.
    async fn replace(&self, previous: &Stored, record: &DeviceRecord)
        -> Result<String, StoreError>;

    /// Deletes a record read as `previous`; `PreconditionFailed` if it changed.
    async fn delete(&self, previous: &Stored) -> Result<(), StoreError>;

    /// One page of the records passing `filter`, ordered by registration id.
    async fn list(
        &self,
        filter: &Filter,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<Page, StoreError>;

    /// Replaces a record like [`Registry::replace`] and adds `history` entries for its device
    /// in the same atomic write: an entry exists exactly when the change it describes does.
    async fn replace_with_history(
        &self,
        previous: &Stored,
        record: &DeviceRecord,
        history: &[HistoryEntry],
    ) -> Result<String, StoreError>;

    /// Adds entries to a device's history; an entry already there (same time and cause) is
    /// left as it is.
    async fn add_history(
        &self,
        device_id: &str,
        entries: &[HistoryEntry],
    ) -> Result<(), StoreError>;

    /// One page of a device's history, newest first.
    async fn history(
        &self,
        device_id: &str,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<(Vec<HistoryEntry>, Option<String>), StoreError>;
}

/// Dead letters and the notification outbox.
#[async_trait]
pub trait Journal: Send + Sync {
    /// Keeps an event that cannot be applied.
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError>;

    /// The newest dead letters (for operators and tests).
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError>;

    /// Queues a notification; one with the same id already queued is left as it is.
    async fn enqueue(&self, notification: &Notification) -> Result<(), StoreError>;

    /// Notifications due at `now_ms`, at most `limit`.
    async fn due(&self, now_ms: i64, limit: usize) -> Result<Vec<Notification>, StoreError>;

    /// Takes a due notification for one delivery attempt: moves its next attempt to `until_ms`
    /// unless it is gone or no longer due at `now_ms`. True for exactly one of several callers
    /// racing for it (another instance, or the timer beside the background task), so a
    /// notification is sent once per attempt, not once per caller.
    async fn claim(&self, id: &str, now_ms: i64, until_ms: i64) -> Result<bool, StoreError>;

    /// Stores a notification's new attempt count and next attempt; one delivered meanwhile
    /// stays delivered (it is not queued again).
    async fn reschedule(&self, notification: &Notification) -> Result<(), StoreError>;

    /// Removes a delivered notification.
    async fn delivered(&self, id: &str) -> Result<(), StoreError>;
}

/// Continuation tokens are opaque to clients: base64url of the position.
pub(crate) fn encode_token(position: &serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(position.to_string())
}

/// Decodes a token made by [`encode_token`].
pub(crate) fn decode_token(token: &str) -> Result<serde_json::Value, StoreError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim())
        .map_err(|_| StoreError::BadContinuation)?;
    serde_json::from_slice(&bytes).map_err(|_| StoreError::BadContinuation)
}
