//! The one place errors become HTTP answers: `{"error": {"code", "message"}}` with the status
//! that says who must act. Client mistakes are 4xx with a message that says what to fix; a
//! failing dependency is 502/503 (with Retry-After) and its details go to the log, once.

use crate::service::ServiceError;
use serde_json::json;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

/// Seconds a client is asked to wait when a dependency is down.
const RETRY_AFTER_SECONDS: u64 = 5;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// What the service layer refused or could not do.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// No route has this path.
    #[error("there is no such route; see /api/openapi.json")]
    RouteNotFound,
    /// The route exists, not with this method.
    #[error("this route does not take that method; see /api/openapi.json")]
    MethodNotAllowed,
    /// The body is bigger than the route takes.
    #[error("the body is larger than this route takes")]
    PayloadTooLarge,
    /// The body has a media type the route does not take.
    #[error("this route takes {0}")]
    UnsupportedMediaType(&'static str),
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    /// A 400 with a message.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::Service(ServiceError::Invalid(message.into()))
    }

    /// Status and stable code.
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Service(error) => match error {
                ServiceError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalidRequest"),
                ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, "notFound"),
                ServiceError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
                ServiceError::PreconditionFailed(_) => {
                    (StatusCode::PRECONDITION_FAILED, "preconditionFailed")
                }
                ServiceError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "deviceTimeout"),
                ServiceError::Throttled { .. } => (StatusCode::TOO_MANY_REQUESTS, "throttled"),
                ServiceError::Unavailable { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "dependencyUnavailable")
                }
                ServiceError::BadGateway { .. } => (StatusCode::BAD_GATEWAY, "dependencyFailed"),
            },
            ApiError::RouteNotFound => (StatusCode::NOT_FOUND, "routeNotFound"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "methodNotAllowed"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payloadTooLarge"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupportedMediaType")
            }
        }
    }

    /// The answer.
    pub fn response(&self) -> Response {
        let (status, code) = self.status_and_code();
        let retry_after = match self {
            ApiError::Service(
                ServiceError::Unavailable { service, detail }
                | ServiceError::BadGateway { service, detail },
            ) => {
                // Details name hosts and statuses, never secrets; they stay in the log.
                tracing::warn!(
                    dependency = service.name(),
                    %detail,
                    status = status.as_u16(),
                    "a dependency failed"
                );
                (status == StatusCode::SERVICE_UNAVAILABLE).then_some(RETRY_AFTER_SECONDS)
            }
            ApiError::Service(ServiceError::Throttled {
                service,
                retry_after,
            }) => {
                tracing::warn!(dependency = service.name(), "a dependency is throttling");
                Some(retry_after.unwrap_or(RETRY_AFTER_SECONDS))
            }
            _ => None,
        };
        let body = json!({ "error": { "code": code, "message": self.to_string() } });
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), status).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if matches!(self, ApiError::PayloadTooLarge) {
            // The body was not read, so the connection cannot carry another request; say so, or
            // the caller's pool reuses a connection that is about to close.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// The `recover` of the route tree: turns warp's own rejections into the same JSON errors.
pub async fn recover(rejection: warp::Rejection) -> Result<Response, std::convert::Infallible> {
    // A body or query rejection means a route and method matched, so it says more than the
    // method and path rejections of the routes that did not match.
    let error = if let Some(error) = rejection.find::<ApiError>() {
        return Ok(error.response());
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::PayloadTooLarge
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::invalid("the query string is malformed")
    } else if rejection.find::<warp::reject::InvalidHeader>().is_some()
        || rejection.find::<warp::reject::MissingHeader>().is_some()
    {
        ApiError::invalid("a request header is malformed")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else if rejection.is_not_found() {
        ApiError::RouteNotFound
    } else {
        tracing::warn!(?rejection, "an unexpected rejection");
        ApiError::invalid("the request could not be understood")
    };
    Ok(error.response())
}
