//! Enrollment routes: what a CRM calls to enroll devices and hand out provisioning codes.

use super::error::ApiError;
use super::{
    body_up_to, if_match, json_body, json_reply, list_reply, media_type_is, query_pairs, required,
    respond, views, with, Segment, IMPORT_LIMIT, JSON_LIMIT,
};
use crate::service::enrollments::{EnrollmentPatch, NewEnrollment};
use crate::service::import::{parse_csv, parse_json, ImportRow};
use crate::service::Service;
use qrcode::render::svg;
use qrcode::QrCode;
use serde_json::json;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

/// Every enrollment route.
pub fn routes(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    create(service.clone())
        .or(list(service.clone()))
        .unify()
        .or(import(service.clone()))
        .unify()
        .or(read(service.clone()))
        .unify()
        .or(change(service.clone()))
        .unify()
        .or(remove(service.clone()))
        .unify()
        .or(provisioning_code(service.clone()))
        .unify()
        .or(rotate_key(service))
        .unify()
        .boxed()
}

/// `POST /api/enrollments/{registrationId}/rotate-key`: 202, since the rotation finishes when
/// the device has re-provisioned with the new key (the record's `keyRotation` shows the step).
fn rotate_key(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "enrollments" / Segment / "rotate-key")
        .and(warp::post())
        .and(with(service))
        .then(start_key_rotation)
        .map(respond)
        .boxed()
}

async fn start_key_rotation(id: Segment, service: Arc<Service>) -> Result<Response, ApiError> {
    let stored = service.rotate_key(&id.0).await?;
    let step = stored
        .record
        .key_rotation
        .as_ref()
        .map_or("completed", |r| r.step.as_str());
    tracing::info!(
        registration.id = %stored.record.registration_id,
        step,
        "asked for a key rotation"
    );
    Ok(json_reply(
        StatusCode::ACCEPTED,
        &views::enrollment(&stored),
        Some(&stored.etag),
    ))
}

/// `POST /api/enrollments`
fn create(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "enrollments")
        .and(warp::post())
        .and(with(service))
        .and(json_body::<NewEnrollment>(JSON_LIMIT))
        .then(enroll_device)
        .map(respond)
        .boxed()
}

async fn enroll_device(
    service: Arc<Service>,
    request: NewEnrollment,
) -> Result<Response, ApiError> {
    let stored = service.enroll(request).await?;
    let record = &stored.record;
    tracing::info!(
        registration.id = %record.registration_id,
        customer.id = %record.customer.id,
        "enrolled a device"
    );
    let mut response = json_reply(
        StatusCode::CREATED,
        &views::enrollment(&stored),
        Some(&stored.etag),
    );
    let location = format!("/api/enrollments/{}", record.registration_id);
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /api/enrollments`
fn list(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "enrollments")
        .and(warp::get())
        .and(with(service))
        .and(query_pairs())
        .then(
            |service: Arc<Service>, pairs: Vec<(String, String)>| async move {
                list_reply(&service, pairs, views::enrollment).await
            },
        )
        .map(respond)
        .boxed()
}

/// `GET /api/enrollments/{registrationId}`
fn read(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "enrollments" / Segment)
        .and(warp::get())
        .and(with(service))
        .then(show_enrollment)
        .map(respond)
        .boxed()
}

async fn show_enrollment(id: Segment, service: Arc<Service>) -> Result<Response, ApiError> {
    let stored = service.enrollment(&id.0).await?;
    Ok(json_reply(
        StatusCode::OK,
        &views::enrollment(&stored),
        Some(&stored.etag),
    ))
}

/// `PATCH /api/enrollments/{registrationId}`
fn change(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "enrollments" / Segment)
        .and(warp::patch())
        .and(with(service))
        .and(if_match())
        .and(json_body::<EnrollmentPatch>(JSON_LIMIT))
        .then(change_enrollment)
        .map(respond)
        .boxed()
}

async fn change_enrollment(
    id: Segment,
    service: Arc<Service>,
    if_match: Option<String>,
    patch: EnrollmentPatch,
) -> Result<Response, ApiError> {
    let stored = service.change(&id.0, patch, if_match.as_deref()).await?;
    tracing::info!(registration.id = %stored.record.registration_id, "changed an enrollment");
    Ok(json_reply(
        StatusCode::OK,
        &views::enrollment(&stored),
        Some(&stored.etag),
    ))
}

/// `DELETE /api/enrollments/{registrationId}`
fn remove(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "enrollments" / Segment)
        .and(warp::delete())
        .and(with(service))
        .and(if_match())
        .then(remove_enrollment)
        .map(respond)
        .boxed()
}

async fn remove_enrollment(
    id: Segment,
    service: Arc<Service>,
    if_match: Option<String>,
) -> Result<Response, ApiError> {
    service.remove(&id.0, if_match.as_deref()).await?;
    tracing::info!(registration.id = %id.0, "removed an enrollment");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/enrollments/import`: `text/csv` with a header row, or a JSON array.
fn import(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "enrollments" / "import")
        .and(warp::post())
        .and(with(service))
        .and(warp::header::optional::<String>("content-type"))
        .and(body_up_to(IMPORT_LIMIT))
        .then(import_enrollments)
        .map(respond)
        .boxed()
}

async fn import_enrollments(
    service: Arc<Service>,
    content_type: Option<String>,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    required(&body, "CSV rows with a header row, or a JSON array")?;
    let content_type = content_type.as_deref();
    let rows: Vec<ImportRow> = if media_type_is(content_type, &["text/csv", "application/csv"]) {
        parse_csv(&body)?
    } else if media_type_is(content_type, &["application/json"]) {
        parse_json(&body)?
    } else {
        return Err(ApiError::UnsupportedMediaType(
            "text/csv (with a header row) or application/json (an array)",
        ));
    };
    let results = service.import(rows).await;
    let view = views::import(&results);
    tracing::info!(
        rows = results.len(),
        created = %view["summary"]["created"],
        "imported enrollments"
    );
    Ok(json_reply(StatusCode::OK, &view, None))
}

/// `GET /api/enrollments/{registrationId}/provisioning-code` (`?format=svg` for the QR code
/// alone).
fn provisioning_code(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "enrollments" / Segment / "provisioning-code")
        .and(warp::get())
        .and(with(service))
        .and(query_pairs())
        .then(issue_provisioning_code)
        .map(respond)
        .boxed()
}

async fn issue_provisioning_code(
    id: Segment,
    service: Arc<Service>,
    pairs: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    let format = pairs
        .iter()
        .find(|(k, _)| k == "format")
        .map(|(_, v)| v.as_str());
    let svg_only = match format {
        None | Some("json") => false,
        Some("svg") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "format {other:?} is unknown; use json or svg"
            )))
        }
    };
    let answer = service.provisioning_code(&id.0).await?;
    let code = answer.code.expose();
    let qr = QrCode::new(code.as_bytes())
        .map_err(|e| ApiError::invalid(format!("the code does not fit a QR code: {e}")))?
        .render::<svg::Color<'_>>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build();
    // Handing out a device key is worth an audit line; the key itself is not in it.
    tracing::info!(registration.id = %answer.code.registration_id, "issued a provisioning code");
    let mut response = if svg_only {
        let mut response = qr.into_response();
        let svg = HeaderValue::from_static("image/svg+xml");
        response.headers_mut().insert(header::CONTENT_TYPE, svg);
        response
    } else {
        let body = json!({
            "registrationId": answer.code.registration_id,
            "code": code,
            "qrSvg": qr,
            "enabled": answer.enabled,
        });
        json_reply(StatusCode::OK, &body, None)
    };
    let no_store = HeaderValue::from_static("no-store");
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, no_store);
    Ok(response)
}
