//! DPS errors and the one place they become HTTP answers.
//!
//! Azure's body is `{errorCode, trackingId, message, timestampUtc}` with a six-digit code whose
//! first three digits are the HTTP status, plus the `x-ms-error-code` header. Codes Azure is known
//! to use are used as such (401002 unauthorized, 404201 enrollment not found, 404202 registration
//! not found, 409201/409202 enrollment/group exists); the others follow the same pattern and are listed in docs/emulator.md.

use crate::azure_format;
use crate::journaled_store::StoreError;
use crate::net::https::Body;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use serde::Serialize;

/// A DPS failure a client can be told about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpsError {
    /// The request is malformed or invalid.
    #[error("{0}")]
    BadRequest(String),
    /// Missing, forged, expired or misdirected credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// No such enrollment.
    #[error("{0}")]
    EnrollmentNotFound(String),
    /// No such enrollment group.
    #[error("{0}")]
    GroupNotFound(String),
    /// No such registration record or operation.
    #[error("{0}")]
    RegistrationNotFound(String),
    /// No such route.
    #[error("{0}")]
    RouteNotFound(String),
    /// The method is not defined for the route.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The record exists already.
    #[error("{0}")]
    Conflict(String),
    /// The enrollment group exists already (Azure's 409202).
    #[error("{0}")]
    GroupConflict(String),
    /// `If-Match` does not match the current etag.
    #[error("{0}")]
    PreconditionFailed(String),
    /// The body exceeds the limit.
    #[error("the request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// The body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The emulator cannot save state; retrying later may help.
    #[error("{0}")]
    Unavailable(String),
    /// Too many requests: the caller must wait this many seconds.
    #[error("too many requests; retry after {0} s")]
    Throttled(u64),
}

impl DpsError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::EnrollmentNotFound(_)
            | Self::GroupNotFound(_)
            | Self::RegistrationNotFound(_)
            | Self::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) | Self::GroupConflict(_) => StatusCode::CONFLICT,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The six-digit DPS error code.
    pub fn code(&self) -> u32 {
        match self {
            Self::BadRequest(_) => 400004,
            Self::Unauthorized(_) => 401002,
            Self::EnrollmentNotFound(_) => 404201,
            Self::RegistrationNotFound(_) => 404202,
            Self::GroupNotFound(_) => 404203,
            Self::RouteNotFound(_) => 404001,
            Self::MethodNotAllowed(_) => 405001,
            Self::Conflict(_) => 409201,
            Self::GroupConflict(_) => 409202,
            Self::PreconditionFailed(_) => 412002,
            Self::PayloadTooLarge(_) => 413001,
            Self::UnsupportedMediaType(_) => 415001,
            Self::Unavailable(_) => 503001,
            Self::Throttled(_) => 429001,
        }
    }

    /// The JSON body Azure sends with an error.
    pub fn body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Details<'a> {
            error_code: u32,
            tracking_id: String,
            message: &'a str,
            timestamp_utc: String,
        }
        let message = self.to_string();
        serde_json::to_vec(&Details {
            error_code: self.code(),
            tracking_id: azure_format::tracking_id(),
            message: &message,
            timestamp_utc: azure_format::now(),
        })
        .unwrap_or_default()
    }

    /// The HTTP answer.
    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Body::new(Bytes::from(self.body())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        if let Ok(code) = HeaderValue::from_str(&self.code().to_string()) {
            headers.insert("x-ms-error-code", code);
        }
        if let Self::Throttled(seconds) = self {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<StoreError> for DpsError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "DPS state could not be saved");
        Self::Unavailable("the provisioning service cannot save its state right now".into())
    }
}
