//! What the registry writes besides records: each device's history, events that could not be
//! applied, and notifications waiting to be delivered.

use super::events::Stamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One line of a device's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// When it happened.
    pub at: Stamp,
    /// What: `enrolled`, `registered`, `reprovisioned`, `removedFromHub`, `connected`,
    /// `disconnected`, `reported`, `deleted`.
    pub kind: String,
    /// The hub it happened on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// Particulars (a reported status, the hub a device came from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
    /// What caused it: the event's stream position, or a request id. Names the entry, so
    /// recording the same event twice writes one entry.
    pub cause: String,
}

impl HistoryEntry {
    /// The storage key: newest first, then by cause.
    pub fn key(&self) -> String {
        // Nanoseconds fit i64 until 2262; inverted so that ascending keys run newest first.
        let nanos = i64::try_from(self.at.nanos()).unwrap_or(i64::MAX).max(0);
        format!("{:019}~{}", i64::MAX - nanos, self.cause)
    }
}

/// An event that can never be applied, kept with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The function that received it.
    pub function: String,
    /// Its stream position, when known; otherwise an id.
    pub key: String,
    /// The device it names, when it names one (the dashboard links the letter to its record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Why it cannot be applied.
    pub reason: String,
    /// The event as received (shortened to 16 KiB).
    pub event: String,
    /// When it was set aside.
    pub at: Stamp,
}

impl DeadLetter {
    /// The letter with its copy of the event shortened until the whole letter fits one Table
    /// Storage property ([`super::bounded::DEAD_LETTER_BYTES`]): a letter that cannot be stored
    /// would stall the events behind it as surely as the event it describes.
    pub fn fitted(mut self) -> Self {
        loop {
            let size = serde_json::to_string(&self).map_or(usize::MAX, |t| t.len());
            if size <= super::bounded::DEAD_LETTER_BYTES || self.event.is_empty() {
                return self;
            }
            let half = self.event.len() / 2;
            self.event = super::bounded::prefix(&self.event, half).to_owned();
        }
    }
}

/// A status-change notification for the webhook, until it is accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Names the change; the same change always gets the same id, so a receiver can
    /// de-duplicate.
    pub id: String,
    /// The document to POST.
    pub document: Value,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Not before this time (unix milliseconds).
    pub next_attempt_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_of_an_escape_heavy_event_still_fits_one_property() {
        let letter = DeadLetter {
            function: "OnHubEvents".into(),
            key: "hub-1~0~7".into(),
            device_id: Some("d1".into()),
            reason: "the device's record cannot be stored".into(),
            // Every quote doubles when the letter is written as JSON.
            event: "\"".repeat(16 * 1024),
            at: Stamp::now(),
        }
        .fitted();
        let size = serde_json::to_string(&letter).unwrap().len();
        assert!(size <= super::super::bounded::DEAD_LETTER_BYTES, "{size}");
        assert!(letter.event.len() >= 4 * 1024, "as much as fits is kept");
    }
}
