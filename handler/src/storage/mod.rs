//! Where device records live, behind a small trait so the logic above can be tested with an
//! in-memory store and run on Azure Table Storage.
//!
//! - [`tables`]: Azure Table Storage (Azurite locally) through azure_data_tables.
//! - [`identity`]: Entra tokens from the app's managed identity, for Table Storage in Azure.
//! - [`memory`]: an in-memory store with the same semantics, for unit tests.

pub(crate) mod identity;
pub mod memory;
pub mod tables;

use crate::domain::journal::{DeadLetter, HistoryEntry, Notification};
use crate::domain::summary::Summary;
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

/// One page of record summaries: what the dashboard reads of every record.
#[derive(Debug, Clone, Default)]
pub struct SummaryPage {
    /// The summaries.
    pub items: Vec<Summary>,
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
    /// Storage cannot be reached, is busy or failing, or does not let us in yet: transient,
    /// retrying later may help (see [`Failure::of_status`]).
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    /// Storage refused this request for what it is (too large, malformed), or a stored row
    /// cannot be read: permanent, the same request fails the same way however often it is sent.
    #[error("storage refused the request: {0}")]
    Refused(String),
}

impl StoreError {
    /// Whether sending the same request again can never succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, StoreError::Refused(_))
    }
}

/// Whether a failed storage call is worth repeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Later, the same request may succeed.
    Transient,
    /// The request itself is the problem.
    Permanent,
}

impl Failure {
    /// Classifies an HTTP status of Table Storage; the one place that decides.
    ///
    /// Table Storage answers a request it will never accept with 400 (`PropertyValueTooLarge`,
    /// `EntityTooLarge`, `TooManyProperties`, `InvalidInput`, `InvalidValueType`, …), 405, 413
    /// (`RequestBodyTooLarge`), 415 or 501; it answers 500 `InternalError`/`OperationTimedOut`
    /// and 503 `ServerBusy` when it is the one failing (azure-rest-api-specs
    /// docs-ref-conceptual/storageservices/Table-Service-Error-Codes.md and
    /// Common-REST-API-Error-Codes.md). 408, 429 and the gateway errors are timing, so
    /// transient. 401 and 403 are transient too on purpose: a missing role assignment or a key
    /// being rotated is fixed by an operator, not by the request, and events must wait for that
    /// fix rather than be set aside. 404, 409 and 412 mean something at each call site and are
    /// handled there; reaching here they are races (a table being created or deleted), so
    /// transient.
    pub fn of_status(status: u16) -> Self {
        match status {
            400 | 405 | 406 | 411 | 413 | 414 | 415 | 416 | 417 | 422 | 431 | 501 | 505 => {
                Failure::Permanent
            }
            _ => Failure::Transient,
        }
    }

    /// The error for a failed call with this class.
    pub fn error(self, detail: String) -> StoreError {
        match self {
            Failure::Transient => StoreError::Unavailable(detail),
            Failure::Permanent => StoreError::Refused(detail),
        }
    }
}

/// Table Storage's limits on one entity ("Property Limitations" and "Property Types" in
/// azure-rest-api-specs docs-ref-conceptual/storageservices/Understanding-the-Table-Service-Data-Model.md;
/// MicrosoftDocs/azure-docs includes/storage-tables-scale-targets.md). Azurite enforces the first
/// two (its TableHandler `checkProperties` and `checkEntityLimit`).
pub mod limits {
    /// A string property holds at most this many UTF-16 code units (64 KiB).
    pub const STRING_UNITS: usize = 32 * 1024;
    /// A binary property holds at most this many bytes.
    pub const BINARY_BYTES: usize = 64 * 1024;
    /// All of an entity's properties together.
    pub const ENTITY_BYTES: usize = 1024 * 1024;
    /// Properties an entity may have besides PartitionKey, RowKey and Timestamp.
    pub const PROPERTIES: usize = 252;

    /// Whether `text` fits one string property.
    pub fn fits_string(text: &str) -> bool {
        // UTF-8 never has fewer bytes than UTF-16 has code units: most texts need no count.
        text.len() <= STRING_UNITS || text.encode_utf16().count() <= STRING_UNITS
    }
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

    /// One page of every record's summary ([`DeviceRecord::summary`], kept beside the record by
    /// every write), in registration-id order: the dashboard's scan, without reading whole
    /// records.
    async fn summaries(
        &self,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<SummaryPage, StoreError>;

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

/// Events set aside because they cannot be recorded, with the reason, for operators.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Keeps an event that cannot be applied.
    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError>;

    /// The newest dead letters (for operators and tests).
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError>;
}

/// Status notifications waiting to be delivered to the webhook (queued with the record write
/// that caused them, removed once delivered).
#[async_trait]
pub trait NotificationOutbox: Send + Sync {
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

#[cfg(test)]
mod tests {
    use super::{limits, Failure, StoreError};

    #[test]
    fn what_a_retry_cannot_fix_is_permanent_and_the_rest_transient() {
        for status in [400, 405, 411, 413, 415, 501] {
            assert_eq!(Failure::of_status(status), Failure::Permanent, "{status}");
        }
        for status in [401, 403, 404, 408, 409, 412, 429, 500, 502, 503, 504] {
            assert_eq!(Failure::of_status(status), Failure::Transient, "{status}");
        }
        assert!(Failure::of_status(413).error("x".into()).is_permanent());
        assert!(!Failure::of_status(503).error("x".into()).is_permanent());
        assert!(!StoreError::PreconditionFailed.is_permanent());
    }

    #[test]
    fn string_limits_count_utf16_units_not_bytes() {
        assert!(limits::fits_string(&"a".repeat(limits::STRING_UNITS)));
        assert!(!limits::fits_string(&"a".repeat(limits::STRING_UNITS + 1)));
        // Three UTF-8 bytes, one UTF-16 unit: fits though its bytes do not.
        assert!(limits::fits_string(&"€".repeat(limits::STRING_UNITS)));
        // Four UTF-8 bytes, two UTF-16 units.
        assert!(!limits::fits_string(
            &"😀".repeat(limits::STRING_UNITS / 2 + 1)
        ));
    }
}
