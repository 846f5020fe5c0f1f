//! What a failed Table Storage call becomes: a [`StoreError`], transient or permanent by its
//! HTTP status, without the message (which may echo request details).

use crate::storage::{limits, Failure, StoreError};

/// The HTTP status of a failed call, if it got an answer.
pub(super) fn status_of(error: &azure_core::Error) -> Option<u16> {
    error.as_http_error().map(|e| u16::from(e.status()))
}

/// A failed call as the registry reports it: transient or permanent by its HTTP status
/// ([`Failure::of_status`]); without one (no connection, a timeout) transient.
pub(super) fn failed(error: azure_core::Error) -> StoreError {
    // The status and error code are enough to act on; the message may echo request details.
    match error.as_http_error() {
        Some(http) => {
            let status = u16::from(http.status());
            Failure::of_status(status).error(format!(
                "HTTP {status} {}",
                http.error_code().unwrap_or_default()
            ))
        }
        None => StoreError::Unavailable(format!("{:?}", error.kind())),
    }
}

/// Why Table Storage's limits refuse `data` as one string property, if they do.
pub(super) fn oversize(what: &str, data: &str) -> Option<String> {
    (!limits::fits_string(data)).then(|| {
        format!(
            "{what} is {} UTF-16 characters, above the {} one property holds \
             (PropertyValueTooLarge)",
            data.encode_utf16().count(),
            limits::STRING_UNITS
        )
    })
}
