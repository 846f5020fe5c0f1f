//! Device routes: what the backend asks about devices, and what it asks devices to do.

use super::error::ApiError;
use super::{
    if_match, json_body, json_reply, list_reply, query_pairs, respond, views, with, Segment,
    JSON_LIMIT,
};
use crate::service::devices::CommandRequest;
use crate::service::Service;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

/// Every device route.
pub fn routes(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    list(service.clone())
        .or(read(service.clone()))
        .unify()
        .or(desired(service.clone()))
        .unify()
        .or(command(service.clone()))
        .unify()
        .or(history(service))
        .unify()
        .boxed()
}

/// `GET /api/devices/{deviceId}/history`: newest first, paged.
fn history(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "devices" / Segment / "history")
        .and(warp::get())
        .and(with(service))
        .and(query_pairs())
        .then(|id: Segment, service: Arc<Service>, pairs: Vec<(String, String)>| async move {
            respond(async {
                let mut page_size = 50;
                let mut continuation = None;
                for (name, value) in pairs {
                    match name.as_str() {
                        "pageSize" => page_size = super::page_size(&value, 1000)?,
                        "continuationToken" => continuation = Some(value).filter(|v| !v.is_empty()),
                        "code" => {}
                        other => return Err(ApiError::invalid(format!("unknown query parameter {other:?}; use pageSize or continuationToken"))),
                    }
                }
                let (entries, next) = service.history(&id.0, page_size, continuation.as_deref()).await?;
                Ok(json_reply(StatusCode::OK, &json!({ "items": entries, "continuationToken": next }), None))
            }
            .await)
        })
        .boxed()
}

/// `GET /api/devices`
fn list(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "devices")
        .and(warp::get())
        .and(with(service))
        .and(query_pairs())
        .then(
            |service: Arc<Service>, pairs: Vec<(String, String)>| async move {
                respond(list_reply(&service, pairs, views::device).await)
            },
        )
        .boxed()
}

/// `GET /api/devices/{deviceId}`
fn read(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "devices" / Segment)
        .and(warp::get())
        .and(with(service))
        .and(query_pairs())
        .then(
            |id: Segment, service: Arc<Service>, pairs: Vec<(String, String)>| async move {
                respond(
                    async {
                        let refresh = match pairs
                            .iter()
                            .find(|(k, _)| k == "refresh")
                            .map(|(_, v)| v.as_str())
                        {
                            None | Some("false") => false,
                            Some("true") | Some("") => true,
                            Some(other) => {
                                return Err(ApiError::invalid(format!(
                                    "refresh must be true or false, not {other:?}"
                                )))
                            }
                        };
                        let stored = service.device(&id.0, refresh).await?;
                        Ok(json_reply(
                            StatusCode::OK,
                            &views::device(&stored),
                            Some(&stored.etag),
                        ))
                    }
                    .await,
                )
            },
        )
        .boxed()
}

/// `PATCH /api/devices/{deviceId}/desired`: a JSON object merged into the desired properties.
fn desired(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "devices" / Segment / "desired")
        .and(warp::patch())
        .and(with(service))
        .and(if_match())
        .and(json_body::<Map<String, Value>>(JSON_LIMIT))
        .then(|id: Segment, service: Arc<Service>, if_match: Option<String>, patch: Map<String, Value>| async move {
            respond(async {
                let result = service.update_desired(&id.0, patch, if_match.as_deref()).await?;
                tracing::info!(device.id = %id.0, "updated desired properties");
                let body = json!({ "deviceId": id.0, "desired": result.desired, "etag": result.etag });
                Ok(json_reply(StatusCode::OK, &body, result.etag.as_deref()))
            }
            .await)
        })
        .boxed()
}

/// `POST /api/devices/{deviceId}/commands/{name}`
fn command(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "devices" / Segment / "commands" / Segment)
        .and(warp::post())
        .and(with(service))
        .and(json_body::<CommandRequest>(JSON_LIMIT))
        .then(|id: Segment, name: Segment, service: Arc<Service>, request: CommandRequest| async move {
            respond(async {
                let answer = service.command(&id.0, &name.0, request).await?;
                tracing::info!(
                    device.id = %id.0,
                    method = %name.0,
                    status = answer.status,
                    "a device answered a command"
                );
                Ok(json_reply(StatusCode::OK, &json!({ "status": answer.status, "payload": answer.payload }), None))
            }
            .await)
        })
        .boxed()
}
