//! The Azure services the handler calls, each behind a small trait so the logic above can be
//! tested with fakes that fail on demand:
//!
//! - [`dps`]: the DPS service API (individual enrollments, registration states).
//! - [`hub`]: the IoT Hub service API of every linked hub (devices, twins, direct methods).
//! - [`fake`]: in-memory stand-ins with failure injection, for unit tests.

pub mod dps;
#[cfg(test)]
pub mod fake;
pub mod hub;

use iot_io::https::{client_builder, Timeouts};
use std::time::Duration;

/// What a call to DPS or IoT Hub can fail with, in terms the service layer acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// The thing asked about does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// It exists already.
    #[error("already exists: {0}")]
    Conflict(String),
    /// The etag given no longer matches.
    #[error("the resource changed since it was read")]
    PreconditionFailed,
    /// The service refused what was sent (its message is safe to show the client).
    #[error("{0}")]
    Rejected(String),
    /// The device is not connected (direct methods).
    #[error("the device is not connected")]
    DeviceOffline,
    /// The device did not answer in time (direct methods).
    #[error("the device did not answer in time")]
    Timeout,
    /// The service asks callers to slow down.
    #[error("the service is throttling requests")]
    Throttled {
        /// Seconds it asked to wait, if it said.
        retry_after: Option<u64>,
    },
    /// The service cannot be reached or failed; retrying later may help.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The service answered in a way the handler cannot use (wrong credentials, a broken
    /// answer): retrying will not help until an operator acts.
    #[error("unusable answer: {0}")]
    BadGateway(String),
}

/// The HTTPS client DPS and hub calls go through: pooled, bounded, trusting the public roots and
/// the extra CA of the configuration (the emulator's, in development).
pub fn https_client(extra_ca_pem: Option<&str>) -> Result<reqwest::Client, String> {
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        request: Duration::from_secs(90),
    };
    client_builder(extra_ca_pem, timeouts)?
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())
}

/// A response read in full: status, the headers the mapping needs, body text.
pub(crate) struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub error_code: Option<String>,
    pub text: String,
}

/// Sends a request and reads the answer. Transport failures become `Unavailable`, with the
/// request's URL removed from the message (it may carry nothing secret, but keep logs short).
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    service: &str,
) -> Result<Answer, CloudError> {
    let response = request.send().await.map_err(|e| {
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "cannot connect"
        } else {
            "request failed"
        };
        CloudError::Unavailable(format!("{service}: {kind}"))
    })?;
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header("retry-after").and_then(|v| v.trim().parse().ok());
    let error_code = header("iothub-errorcode").or_else(|| header("x-ms-error-code"));
    let text = response
        .text()
        .await
        .map_err(|_| CloudError::Unavailable(format!("{service}: the answer was cut off")))?;
    Ok(Answer {
        status,
        retry_after,
        error_code,
        text,
    })
}

/// The human message of an Azure error body (`message`, `Message`, or the raw text), short.
pub(crate) fn error_message(text: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("message").or_else(|| v.get("Message")))
        .and_then(|m| m.as_str())
        .unwrap_or(text);
    // IoT Hub prefixes messages with "ErrorCode:<code>;".
    let message = message
        .split_once(';')
        .filter(|(head, _)| head.starts_with("ErrorCode:"))
        .map_or(message, |(_, rest)| rest);
    message.chars().take(300).collect()
}

/// Maps the statuses DPS and IoT Hub share.
pub(crate) fn common_error(service: &str, answer: &Answer) -> CloudError {
    let message = error_message(&answer.text);
    match answer.status {
        400 => CloudError::Rejected(message),
        401 | 403 => CloudError::BadGateway(format!(
            "{service} refused the middleware's credentials ({})",
            answer.status
        )),
        404 => CloudError::NotFound(message),
        409 => CloudError::Conflict(message),
        412 => CloudError::PreconditionFailed,
        429 => CloudError::Throttled {
            retry_after: answer.retry_after,
        },
        500..=599 => CloudError::Unavailable(format!("{service} answered {}", answer.status)),
        status => CloudError::BadGateway(format!("{service} answered {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_error_bodies_are_reduced_to_their_message() {
        assert_eq!(
            error_message(r#"{"errorCode":404201,"message":"not there"}"#),
            "not there"
        );
        assert_eq!(
            error_message(r#"{"Message":"ErrorCode:DeviceNotFound;no device d1"}"#),
            "no device d1"
        );
        assert_eq!(error_message("plain"), "plain");
    }
}
