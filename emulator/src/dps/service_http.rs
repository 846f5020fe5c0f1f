//! The DPS service API over HTTPS (api-version 2021-10-01 shapes): routing, SAS authorization
//! against the service policy, and JSON in and out.

use super::enrollments::{EnrollmentKind, Group, Individual, Page, DEFAULT_PAGE_SIZE};
use super::error::DpsError;
use super::model::{BulkMode, QuerySpecification};
use super::Dps;
use crate::net::https::{self, header, json, query_param, read_body, Body, BodyError};
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode};
use hyper::body::Incoming;
use iot_credentials::sas::unix_now;
use iot_credentials::SignedSas;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 1 << 20;
/// Largest page a query returns, whatever the client asks.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Whether a path belongs to the service API (rather than the device API).
pub fn is_service_path(segments: &[String]) -> bool {
    segments.first().is_some_and(|first| {
        ["enrollments", "enrollmentgroups", "registrations"]
            .iter()
            .any(|c| first.eq_ignore_ascii_case(c))
    })
}

#[derive(Clone, Copy)]
enum Collection {
    Enrollments,
    Groups,
    Registrations,
}

enum Route {
    Bulk(Collection),
    Query(Collection),
    Item(Collection, String),
    Attestation(Collection, String),
    GroupRegistrations(String),
}

fn route(method: &Method, segments: &[String]) -> Result<Route, DpsError> {
    let collection = match segments.first().map(|s| s.to_ascii_lowercase()).as_deref() {
        Some("enrollments") => Collection::Enrollments,
        Some("enrollmentgroups") => Collection::Groups,
        Some("registrations") => Collection::Registrations,
        _ => return Err(DpsError::RouteNotFound("no such resource".into())),
    };
    let is = |s: &String, word: &str| s.eq_ignore_ascii_case(word);
    match (collection, &segments[1..]) {
        (Collection::Registrations, [group, query]) if is(query, "query") => {
            Ok(Route::GroupRegistrations(group.clone()))
        }
        (Collection::Registrations, []) => Err(DpsError::RouteNotFound("no such resource".into())),
        (_, []) => Ok(Route::Bulk(collection)),
        (_, [query]) if is(query, "query") && method == Method::POST => {
            Ok(Route::Query(collection))
        }
        (_, [id]) => Ok(Route::Item(collection, id.clone())),
        (Collection::Enrollments | Collection::Groups, [id, attestation])
            if is(attestation, "attestationmechanism") =>
        {
            Ok(Route::Attestation(collection, id.clone()))
        }
        _ => Err(DpsError::RouteNotFound("no such resource".into())),
    }
}

/// Answers one service API request.
pub async fn handle(
    dps: &Dps,
    request: http::Request<Incoming>,
    segments: Vec<String>,
) -> Response<Body> {
    serve(dps, request, segments)
        .await
        .unwrap_or_else(DpsError::into_response)
}

async fn serve(
    dps: &Dps,
    request: http::Request<Incoming>,
    segments: Vec<String>,
) -> Result<Response<Body>, DpsError> {
    let (parts, body) = request.into_parts();
    let route = route(&parts.method, &segments)?;
    authorize(dps, &parts)?;
    require_api_version(&parts.uri)?;
    dps.admit_operation()?;
    let if_match = header(&parts.headers, http::header::IF_MATCH).map(str::to_owned);
    let if_match = if_match.as_deref();
    let method = parts.method.clone();
    match (route, method) {
        (Route::Item(Collection::Enrollments, id), m) => {
            item::<Individual>(dps, m, &id, if_match, &parts, body).await
        }
        (Route::Item(Collection::Groups, id), m) => {
            item::<Group>(dps, m, &id, if_match, &parts, body).await
        }
        (Route::Item(Collection::Registrations, id), Method::GET) => {
            Ok(json(StatusCode::OK, &dps.get_registration(&id)?))
        }
        (Route::Item(Collection::Registrations, id), Method::DELETE) => {
            dps.delete_registration(&id, if_match).await?;
            Ok(https::empty(StatusCode::NO_CONTENT))
        }
        (Route::Attestation(Collection::Groups, id), Method::POST) => {
            Ok(json(StatusCode::OK, &dps.get_attestation::<Group>(&id)?))
        }
        (Route::Attestation(_, id), Method::POST) => Ok(json(
            StatusCode::OK,
            &dps.get_attestation::<Individual>(&id)?,
        )),
        (Route::Query(Collection::Groups), Method::POST) => query::<Group>(dps, &parts, body).await,
        (Route::Query(_), Method::POST) => query::<Individual>(dps, &parts, body).await,
        (Route::Bulk(Collection::Groups), Method::POST) => {
            bulk::<Group>(dps, &parts, body, "enrollmentGroups").await
        }
        (Route::Bulk(_), Method::POST) => {
            bulk::<Individual>(dps, &parts, body, "enrollments").await
        }
        (Route::GroupRegistrations(group), Method::POST) => {
            // The Python SDK posts this query with no body at all (Content-Length 0).
            let spec: Option<QuerySpecification> =
                optional_json_body(&parts, body, "query specification").await?;
            let (size, continuation) = paging(&parts)?;
            let page = dps.query_group_registrations(
                &group,
                spec.as_ref(),
                size,
                continuation.as_deref(),
            )?;
            Ok(page_response(page, "DeviceRegistration"))
        }
        _ => Err(DpsError::MethodNotAllowed(format!(
            "{} is not allowed on this resource",
            parts.method
        ))),
    }
}

async fn item<K: EnrollmentKind>(
    dps: &Dps,
    method: Method,
    id: &str,
    if_match: Option<&str>,
    parts: &Parts,
    body: Incoming,
) -> Result<Response<Body>, DpsError> {
    match method {
        Method::GET => Ok(json(StatusCode::OK, &dps.get_enrollment::<K>(id)?)),
        Method::PUT => {
            let record: K::Record = json_body(parts, body, "enrollment").await?;
            Ok(json(
                StatusCode::OK,
                &dps.put_enrollment::<K>(id, if_match, record).await?,
            ))
        }
        Method::DELETE => {
            dps.delete_enrollment::<K>(id, if_match).await?;
            Ok(https::empty(StatusCode::NO_CONTENT))
        }
        other => Err(DpsError::MethodNotAllowed(format!(
            "{other} is not allowed on this resource"
        ))),
    }
}

async fn query<K: EnrollmentKind>(
    dps: &Dps,
    parts: &Parts,
    body: Incoming,
) -> Result<Response<Body>, DpsError> {
    let spec: QuerySpecification = json_body(parts, body, "query specification").await?;
    let (size, continuation) = paging(parts)?;
    let page = dps.query_enrollments::<K>(&spec, size, continuation.as_deref())?;
    Ok(page_response(page, K::ITEM_TYPE))
}

async fn bulk<K: EnrollmentKind>(
    dps: &Dps,
    parts: &Parts,
    body: Incoming,
    items_field: &'static str,
) -> Result<Response<Body>, DpsError> {
    #[derive(Deserialize)]
    struct Bulk<T> {
        mode: BulkMode,
        #[serde(alias = "enrollments", alias = "enrollmentGroups")]
        items: Vec<T>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Outcome {
        // Azure's member order: `{"errors": [...], "isSuccessful": bool}`.
        errors: Vec<serde_json::Value>,
        is_successful: bool,
    }
    let request: Bulk<K::Record> = json_body(parts, body, items_field).await?;
    let outcome = dps
        .bulk_enrollments::<K>(request.mode, request.items)
        .await?;
    let errors = outcome
        .errors
        .iter()
        .map(|e| {
            serde_json::json!({
                K::ID_FIELD: e.id,
                "errorCode": e.error_code,
                "errorStatus": e.error_status,
            })
        })
        .collect::<Vec<_>>();
    Ok(json(
        StatusCode::OK,
        &Outcome {
            is_successful: errors.is_empty(),
            errors,
        },
    ))
}

/// A query page with DPS's headers: `x-ms-item-type`, `X-Content-Type-Options: nosniff`, and
/// `x-ms-continuation` only while more pages follow (`x-ms-max-item-count` is a request header
/// only; the live service does not echo it).
fn page_response<T: Serialize>(page: Page<T>, item_type: &'static str) -> Response<Body> {
    let mut response = json(StatusCode::OK, &page.items);
    let headers = response.headers_mut();
    headers.insert("x-ms-item-type", HeaderValue::from_static(item_type));
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(token) = page
        .continuation
        .and_then(|t| HeaderValue::from_str(&t).ok())
    {
        headers.insert("x-ms-continuation", token);
    }
    response
}

fn paging(parts: &Parts) -> Result<(usize, Option<String>), DpsError> {
    let size = match header(&parts.headers, "x-ms-max-item-count") {
        None => DEFAULT_PAGE_SIZE,
        Some(text) => match text.trim().parse::<usize>() {
            Ok(0) | Err(_) => {
                return Err(DpsError::BadRequest(
                    "x-ms-max-item-count must be a positive whole number".into(),
                ))
            }
            Ok(n) => n.min(MAX_PAGE_SIZE),
        },
    };
    Ok((
        size,
        header(&parts.headers, "x-ms-continuation").map(str::to_owned),
    ))
}

fn authorize(dps: &Dps, parts: &Parts) -> Result<(), DpsError> {
    let settings = dps.settings();
    let credential = header(&parts.headers, http::header::AUTHORIZATION).ok_or_else(|| {
        DpsError::Unauthorized(
            "the Authorization header with a SharedAccessSignature is missing".into(),
        )
    })?;
    let token = SignedSas::parse(credential).map_err(|e| DpsError::Unauthorized(e.to_string()))?;
    if !token
        .key_name()
        .is_some_and(|name| name.eq_ignore_ascii_case(&settings.service_policy))
    {
        return Err(DpsError::Unauthorized(format!(
            "the token must be signed with the {:?} shared access policy",
            settings.service_policy
        )));
    }
    if !settings.service_hosts.iter().any(|host| token.grants(host)) {
        return Err(DpsError::Unauthorized(
            "the token was issued for another provisioning service".into(),
        ));
    }
    token
        .verify(&[&settings.service_key], unix_now())
        .map_err(|e| DpsError::Unauthorized(e.to_string()))
}

/// Azure requires `api-version`; any dated version is accepted.
pub fn require_api_version(uri: &http::Uri) -> Result<(), DpsError> {
    let version = query_param(uri, "api-version").ok_or_else(|| {
        DpsError::BadRequest("the api-version query parameter is required".into())
    })?;
    let date = version.strip_suffix("-preview").unwrap_or(&version);
    let shaped = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if shaped {
        Ok(())
    } else {
        Err(DpsError::BadRequest(format!(
            "api-version {version:?} is not a valid version"
        )))
    }
}

/// Reads and parses a JSON body, with Azure's answers for oversize (413), non-JSON content types
/// (415) and invalid JSON (400).
pub async fn json_body<T: DeserializeOwned>(
    parts: &Parts,
    body: Incoming,
    what: &str,
) -> Result<T, DpsError> {
    optional_json_body(parts, body, what)
        .await?
        .ok_or_else(|| DpsError::BadRequest(format!("a JSON {what} is required in the body")))
}

/// Like [`json_body`], but an empty body is `None` rather than an error.
pub async fn optional_json_body<T: DeserializeOwned>(
    parts: &Parts,
    body: Incoming,
    what: &str,
) -> Result<Option<T>, DpsError> {
    if let Some(content_type) = header(&parts.headers, http::header::CONTENT_TYPE) {
        if !content_type
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("application/json")
        {
            return Err(DpsError::UnsupportedMediaType(format!(
                "the body must be application/json, not {content_type:?}"
            )));
        }
    }
    let bytes = read_body(body, BODY_LIMIT)
        .await
        .map_err(|error| match error {
            BodyError::TooLarge => DpsError::PayloadTooLarge(BODY_LIMIT),
            BodyError::Broken => DpsError::BadRequest("the request body could not be read".into()),
        })?;
    if bytes.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| DpsError::BadRequest(format!("the body is not a valid {what}: {e}")))
}
