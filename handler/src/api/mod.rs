//! The admin API as warp filters: one function per route (in [`enrollments`] and [`devices`]),
//! plain async handlers, JSON views in [`views`], and one `recover` in [`error`]; the fleet
//! dashboard's HTML page ([`dashboard`]); and the non-HTTP functions the host invokes directly
//! ([`functions`]).
//!
//! The Functions host forwards `/api/...` requests unchanged (enableForwardingHttpRequest), so
//! the paths here are the public ones. Function keys are checked by the host, not here.

pub(crate) mod dashboard;
pub(crate) mod devices;
pub(crate) mod enrollments;
pub(crate) mod error;
pub(crate) mod functions;
pub(crate) mod openapi;
pub(crate) mod views;

use crate::domain::{CustomerId, Filter, HubName, Status};
use crate::service::Service;
use error::ApiError;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::convert::Infallible;
use std::str::FromStr;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter as _, Reply};

/// Every route: (method, path template). The OpenAPI document and functions/*/function.json
/// are tested against this list, and this list against the filters.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/enrollments"),
    ("GET", "/api/enrollments"),
    ("GET", "/api/enrollments/{registrationId}"),
    ("PATCH", "/api/enrollments/{registrationId}"),
    ("DELETE", "/api/enrollments/{registrationId}"),
    ("POST", "/api/enrollments/import"),
    ("GET", "/api/enrollments/{registrationId}/provisioning-code"),
    ("POST", "/api/enrollments/{registrationId}/rotate-key"),
    ("GET", "/api/devices/{deviceId}"),
    ("GET", "/api/devices"),
    ("PATCH", "/api/devices/{deviceId}/desired"),
    ("POST", "/api/devices/{deviceId}/commands/{name}"),
    ("GET", "/api/devices/{deviceId}/history"),
    ("GET", "/api/dashboard"),
    ("GET", "/api/openapi.json"),
];

/// Largest JSON body of single-item routes.
pub const JSON_LIMIT: u64 = 64 * 1024;
/// Largest import body (10,000 rows of a wide CRM export); dpsctl splits files to fit it.
pub const IMPORT_LIMIT: u64 = enrollment_input::import::MAX_BODY_BYTES;
/// Largest page a list answers.
const MAX_PAGE_SIZE: usize = 1000;
const DEFAULT_PAGE_SIZE: usize = 100;

/// A path segment, percent-decoded (device ids may hold characters clients encode).
pub struct Segment(pub String);

impl FromStr for Segment {
    type Err = ();
    fn from_str(text: &str) -> Result<Self, ()> {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .map(|s| Segment(s.into_owned()))
            .map_err(|_| ())
    }
}

/// The whole API, with its rejections answered as JSON errors.
pub fn routes(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    let service_for_functions = service.clone();
    let api = enrollments::routes(service.clone())
        .or(devices::routes(service.clone()))
        .unify()
        .or(dashboard::route(service))
        .unify()
        .or(openapi::route())
        .unify()
        .or(functions::route(service_for_functions))
        .unify();
    api.recover(error::recover)
        .unify()
        .with(warp::trace(span_of))
        .map(Reply::into_response)
        .boxed()
}

/// The header the Functions host puts on every request and invocation it passes on
/// (azure-functions-host, HttpWorkerConstants.InvocationIdHeaderName).
const INVOCATION_ID_HEADER: &str = "x-azure-functions-invocationid";

/// The span every log line of a request or invocation is written in: the host's invocation id
/// (so a line can be matched with the host's own log of the call), and for the admin API the
/// method, the path without its query (a browser's key may be in `?code=`) and the device or
/// enrollment it names. The event functions open a span per device inside it
/// (`Service::record_events`).
fn span_of(info: warp::trace::Info<'_>) -> tracing::Span {
    let invocation = info
        .request_headers()
        .get(INVOCATION_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| id.len() <= 64)
        .unwrap_or_default();
    let path = info.path();
    let Some(api_path) = path.strip_prefix("/api/") else {
        return tracing::info_span!(
            "invocation",
            function = %path.trim_start_matches('/'),
            invocation.id = %invocation
        );
    };
    let span = tracing::info_span!(
        "request",
        method = %info.method(),
        path = %path,
        invocation.id = %invocation,
        device.id = tracing::field::Empty,
        registration.id = tracing::field::Empty,
    );
    let mut segments = api_path.split('/');
    let named = segments
        .next()
        .zip(segments.next().and_then(|s| s.parse::<Segment>().ok()));
    match named {
        Some(("devices", Segment(id))) => {
            span.record("device.id", tracing::field::display(&id));
        }
        Some(("enrollments", Segment(id))) if id != "import" => {
            span.record("registration.id", tracing::field::display(&id));
        }
        _ => {}
    }
    span
}

/// Passes the service to handlers.
fn with(
    service: Arc<Service>,
) -> impl warp::Filter<Extract = (Arc<Service>,), Error = Infallible> + Clone {
    warp::any().map(move || service.clone())
}

/// The request's `If-Match`, if any.
fn if_match() -> impl warp::Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::header::optional::<String>("if-match")
        .or(warp::any().map(|| None))
        .unify()
}

/// The query string as pairs (an absent query is empty).
fn query_pairs(
) -> impl warp::Filter<Extract = (Vec<(String, String)>,), Error = warp::Rejection> + Clone {
    warp::query::<Vec<(String, String)>>()
}

/// Whether a Content-Type names one of the media types (ignoring parameters and case).
fn media_type_is(content_type: Option<&str>, types: &[&str]) -> bool {
    content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase())
        .is_some_and(|c| {
            types.contains(&c.as_str())
                || (types.contains(&"application/json") && c.ends_with("+json"))
        })
}

/// The request body in whatever framing it came (Content-Length or chunked: the Functions host
/// sends invocations chunked, and proxies client bodies as they were sent), read to at most
/// `limit` bytes. A declared length over the limit is refused before reading; a chunked body as
/// soon as it passes the limit, so no request makes the handler buffer more than it takes.
fn body_up_to(
    limit: u64,
) -> impl warp::Filter<Extract = (bytes::Bytes,), Error = warp::Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |declared: Option<u64>, stream| read_up_to(stream, declared, limit))
}

async fn read_up_to<B: bytes::Buf>(
    stream: impl futures_util::Stream<Item = Result<B, warp::Error>>,
    declared: Option<u64>,
    limit: u64,
) -> Result<bytes::Bytes, warp::Rejection> {
    use bytes::BufMut;
    use futures_util::StreamExt;
    if declared.is_some_and(|length| length > limit) {
        return Err(warp::reject::custom(ApiError::PayloadTooLarge));
    }
    let mut stream = std::pin::pin!(stream);
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            warp::reject::custom(ApiError::invalid("the request body could not be read"))
        })?;
        if (body.len() + chunk.remaining()) as u64 > limit {
            return Err(warp::reject::custom(ApiError::PayloadTooLarge));
        }
        body.put(chunk);
    }
    Ok(body.freeze())
}

/// A body that must be there: POST and PATCH routes say so plainly instead of failing to parse
/// nothing.
fn required(body: &[u8], what: &str) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(format!(
            "the request has no body; send {what}"
        )));
    }
    Ok(())
}

/// A JSON body of at most `limit` bytes, parsed into `T`.
fn json_body<T: DeserializeOwned + Send>(
    limit: u64,
) -> impl warp::Filter<Extract = (T,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and(body_up_to(limit))
        .and_then(
            |content_type: Option<String>, body: bytes::Bytes| async move {
                required(&body, "a JSON object").map_err(warp::reject::custom)?;
                if !media_type_is(content_type.as_deref(), &["application/json"]) {
                    return Err(warp::reject::custom(ApiError::UnsupportedMediaType(
                        "application/json",
                    )));
                }
                serde_json::from_slice::<T>(&body).map_err(|e| {
                    warp::reject::custom(ApiError::invalid(format!(
                        "the JSON body is not valid: {e}"
                    )))
                })
            },
        )
}

/// A list's query: filters, page size, continuation.
pub struct ListQuery {
    /// Filters.
    pub filter: Filter,
    /// Page size.
    pub page_size: usize,
    /// Continuation token.
    pub continuation: Option<String>,
}

impl ListQuery {
    /// Parses `customer`, `status`, `hub`, `pageSize` and `continuationToken`; anything else is
    /// refused, so a misspelt filter is not silently ignored.
    pub fn parse(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut query = ListQuery {
            filter: Filter::default(),
            page_size: DEFAULT_PAGE_SIZE,
            continuation: None,
        };
        for (name, value) in pairs {
            match name.as_str() {
                "customer" => query.filter.customer = Some(CustomerId::parse(&value).map_err(|e| ApiError::invalid(e.0))?),
                "hub" => query.filter.hub = Some(HubName::parse(&value).map_err(|e| ApiError::invalid(e.0))?),
                "status" => {
                    query.filter.status = Some(Status::parse(&value).ok_or_else(|| {
                        let known: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
                        ApiError::invalid(format!("status {value:?} is unknown; use one of {}", known.join(", ")))
                    })?)
                }
                "pageSize" => query.page_size = page_size(&value, MAX_PAGE_SIZE)?,
                "continuationToken" | "continuation" => query.continuation = Some(value).filter(|v| !v.is_empty()),
                // The function key, when given in the query; the host checked it.
                "code" => {}
                other => return Err(ApiError::invalid(format!("unknown query parameter {other:?}; use customer, status, hub, pageSize or continuationToken"))),
            }
        }
        Ok(query)
    }
}

/// `GET /api/enrollments` and `GET /api/devices`: the same records, in the given view.
async fn list_reply(
    service: &Service,
    pairs: Vec<(String, String)>,
    view: fn(&crate::storage::Stored) -> Value,
) -> Result<Response, ApiError> {
    let query = ListQuery::parse(pairs)?;
    let page = service
        .list(
            &query.filter,
            query.page_size,
            query.continuation.as_deref(),
        )
        .await?;
    Ok(json_reply(StatusCode::OK, &views::page(&page, view), None))
}

/// A `pageSize` query value, 1 to `max`.
fn page_size(value: &str, max: usize) -> Result<usize, ApiError> {
    value
        .parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| ApiError::invalid(format!("pageSize must be 1 to {max}")))
}

/// A JSON answer, with an ETag header when given.
fn json_reply(status: StatusCode, body: &Value, etag: Option<&str>) -> Response {
    let mut response = warp::reply::with_status(warp::reply::json(body), status).into_response();
    if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

/// Turns a handler's result into the answer.
fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|error| error.response())
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    warp::serve(routes(service))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

#[cfg(test)]
mod tests;
