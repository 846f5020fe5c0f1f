//! The device side of DPS over HTTPS (api-version 2019-03-31 and later): register, poll the
//! operation, look up the registration status. This module also routes each request on the DPS
//! listener to the service API or the device API.

use super::error::DpsError;
use super::model::{DeviceRegistration, RegistrationStatus};
use super::service_http::{self, require_api_version};
use super::Dps;
use crate::net::https::{header, json, path_segments, Body};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;

/// Answers any request arriving on the DPS HTTPS listener.
pub async fn handle(dps: Arc<Dps>, request: Request<Incoming>) -> Response<Body> {
    let Some(segments) = path_segments(request.uri().path()) else {
        return DpsError::BadRequest("the URL path is not valid UTF-8".into()).into_response();
    };
    if service_http::is_service_path(&segments) {
        return service_http::handle(&dps, request, segments).await;
    }
    serve(&dps, request, segments)
        .await
        .unwrap_or_else(DpsError::into_response)
}

async fn serve(
    dps: &Dps,
    request: Request<Incoming>,
    segments: Vec<String>,
) -> Result<Response<Body>, DpsError> {
    let (parts, body) = request.into_parts();
    let is = |s: &String, word: &str| s.eq_ignore_ascii_case(word);
    let (scope, registration_id, rest) = match segments.as_slice() {
        [scope, registrations, id, rest @ ..] if is(registrations, "registrations") => {
            (scope, id, rest)
        }
        _ => return Err(DpsError::RouteNotFound("no such resource".into())),
    };
    enum Call<'a> {
        Register,
        Operation(&'a str),
        Status,
    }
    let call = match (rest, &parts.method) {
        ([register], &Method::PUT) if is(register, "register") => Call::Register,
        ([operations, id], &Method::GET) if is(operations, "operations") => {
            Call::Operation(id.as_str())
        }
        ([], &Method::POST) => Call::Status,
        ([register], _) if is(register, "register") => {
            return Err(method_not_allowed(&parts.method))
        }
        ([operations, _], _) if is(operations, "operations") => {
            return Err(method_not_allowed(&parts.method))
        }
        ([], _) => return Err(method_not_allowed(&parts.method)),
        _ => return Err(DpsError::RouteNotFound("no such resource".into())),
    };
    dps.check_throttle()?;
    let credential = header(&parts.headers, http::header::AUTHORIZATION);
    let admission = dps.authenticate(scope, registration_id, credential)?;
    require_api_version(&parts.uri)?;
    match call {
        Call::Register => {
            let request: DeviceRegistration = optional_json_body(&parts, body).await?;
            let answer = dps.register(registration_id, admission, request).await?;
            Ok(with_retry_after(json(StatusCode::ACCEPTED, &answer), dps))
        }
        Call::Operation(operation_id) => {
            let status = dps.operation_status(registration_id, operation_id)?;
            if status.status == RegistrationStatus::Assigning {
                Ok(with_retry_after(json(StatusCode::ACCEPTED, &status), dps))
            } else {
                Ok(json(StatusCode::OK, &status))
            }
        }
        Call::Status => {
            let _: DeviceRegistration = optional_json_body(&parts, body).await?;
            Ok(json(
                StatusCode::OK,
                &dps.device_registration_status(registration_id)?,
            ))
        }
    }
}

fn method_not_allowed(method: &Method) -> DpsError {
    DpsError::MethodNotAllowed(format!("{method} is not allowed on this resource"))
}

fn with_retry_after(mut response: Response<Body>, dps: &Dps) -> Response<Body> {
    let seconds = dps.settings().retry_after.as_secs().to_string();
    if let Ok(value) = HeaderValue::from_str(&seconds) {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, value);
    }
    response
}

/// Devices may send an empty body; anything else must be a valid registration document.
async fn optional_json_body(
    parts: &http::request::Parts,
    body: Incoming,
) -> Result<DeviceRegistration, DpsError> {
    Ok(
        service_http::optional_json_body(parts, body, "device registration")
            .await?
            .unwrap_or_default(),
    )
}
