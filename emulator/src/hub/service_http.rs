//! The IoT Hub service REST API, read side (api-version 2021-04-12 shapes): device identities
//! (`GET /devices`, `GET /devices/{id}`) and twins (`GET /twins/{id}`), authorized with a
//! service-policy SAS token. Errors use IoT Hub's shape: `{"Message": "ErrorCode:<code>;…"}` and
//! the `iothub-errorcode` header.

use super::registry::{DeviceIdentity, PropertySet, Registry};
use super::HubSettings;
use crate::net::https::{header, json, path_segments, Body};
use crate::state::CloudState;
use crate::store::Store;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use iot_credentials::sas::unix_now;
use iot_credentials::SignedSas;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// What a hub's HTTPS listener needs.
pub struct HubService {
    /// Configuration.
    pub settings: HubSettings,
    /// Shared state.
    pub store: Arc<Store<CloudState>>,
}

struct HubError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl HubError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn into_response(self) -> Response<Body> {
        let body = json!({
            "Message": format!("ErrorCode:{};{}", self.code, self.message),
            "ExceptionMessage": format!("Tracking ID:{} TimestampUtc:{}", crate::stamps::tracking_id(), crate::stamps::now()),
        });
        let mut response = json(self.status, &body);
        response
            .headers_mut()
            .insert("iothub-errorcode", HeaderValue::from_static(self.code));
        response
    }
}

/// Answers one request to a hub's HTTPS listener.
pub async fn handle(hub: Arc<HubService>, request: Request<Incoming>) -> Response<Body> {
    serve(&hub, &request).unwrap_or_else(HubError::into_response)
}

fn serve(hub: &HubService, request: &Request<Incoming>) -> Result<Response<Body>, HubError> {
    let segments = path_segments(request.uri().path()).ok_or_else(|| {
        HubError::new(
            StatusCode::BAD_REQUEST,
            "ArgumentInvalid",
            "the path is not valid UTF-8",
        )
    })?;
    authorize(hub, request)?;
    let is = |s: &String, word: &str| s.eq_ignore_ascii_case(word);
    let read = |f: &dyn Fn(Option<&Registry>) -> Result<Value, HubError>| {
        hub.store
            .read(|state| f(state.hubs.get(&hub.settings.host_name)))
            .map(|value| json(StatusCode::OK, &value))
    };
    match (request.method(), segments.as_slice()) {
        (&Method::GET, [devices]) if is(devices, "devices") => read(&|devices| {
            Ok(Value::Array(
                devices
                    .into_iter()
                    .flat_map(|r| r.values())
                    .map(device_json)
                    .collect(),
            ))
        }),
        (&Method::GET, [devices, id]) if is(devices, "devices") => {
            read(&|devices| Ok(device_json(find(devices, id)?)))
        }
        (&Method::GET, [twins, id]) if is(twins, "twins") => {
            read(&|devices| Ok(twin_json(find(devices, id)?)))
        }
        (_, [collection, ..]) if is(collection, "devices") || is(collection, "twins") => {
            Err(HubError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{} is not supported here yet", request.method()),
            ))
        }
        _ => Err(HubError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such resource",
        )),
    }
}

fn find<'a>(devices: Option<&'a Registry>, id: &str) -> Result<&'a DeviceIdentity, HubError> {
    devices.and_then(|r| r.get(id)).ok_or_else(|| {
        HubError::new(
            StatusCode::NOT_FOUND,
            "DeviceNotFound",
            format!("Device {id} not registered"),
        )
    })
}

fn authorize(hub: &HubService, request: &Request<Incoming>) -> Result<(), HubError> {
    let unauthorized = |message: String| {
        HubError::new(
            StatusCode::UNAUTHORIZED,
            "IotHubUnauthorizedAccess",
            message,
        )
    };
    let credential = header(request.headers(), http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("the Authorization header is missing".into()))?;
    let token = SignedSas::parse(credential).map_err(|e| unauthorized(e.to_string()))?;
    let settings = &hub.settings;
    if !token
        .key_name()
        .is_some_and(|n| n.eq_ignore_ascii_case(&settings.service_policy))
    {
        return Err(unauthorized(format!(
            "the token must be signed with the {:?} shared access policy",
            settings.service_policy
        )));
    }
    if !settings.service_hosts.iter().any(|h| token.grants(h)) {
        return Err(unauthorized("the token was issued for another hub".into()));
    }
    token
        .verify(&[&settings.service_key], unix_now())
        .map_err(|e| unauthorized(e.to_string()))
}

/// A device identity in IoT Hub's registry shape (keys included, as IoT Hub returns them to
/// `iothubowner`).
pub fn device_json(device: &DeviceIdentity) -> Value {
    json!({
        "deviceId": device.device_id,
        "generationId": device.generation_id,
        "etag": device.etag,
        "connectionState": "Disconnected",
        "status": device.status,
        "statusReason": null,
        "connectionStateUpdatedTime": "0001-01-01T00:00:00Z",
        "statusUpdatedTime": device.last_updated,
        "lastActivityTime": "0001-01-01T00:00:00Z",
        "cloudToDeviceMessageCount": 0,
        "authentication": {
            "symmetricKey": { "primaryKey": device.primary_key, "secondaryKey": device.secondary_key },
            "x509Thumbprint": { "primaryThumbprint": null, "secondaryThumbprint": null },
            "type": "sas"
        },
        "capabilities": { "iotEdge": device.iot_edge }
    })
}

fn properties(set: &PropertySet) -> Value {
    let mut values: Map<String, Value> = set.values.clone();
    values.insert("$version".into(), json!(set.version));
    Value::Object(values)
}

/// A device twin in IoT Hub's shape.
pub fn twin_json(device: &DeviceIdentity) -> Value {
    json!({
        "deviceId": device.device_id,
        "etag": device.etag,
        "deviceEtag": device.etag,
        "status": device.status,
        "version": device.twin.version,
        "tags": device.twin.tags,
        "properties": {
            "desired": properties(&device.twin.desired),
            "reported": properties(&device.twin.reported),
        },
        "capabilities": { "iotEdge": device.iot_edge },
        "authenticationType": "sas",
        "connectionState": "Disconnected",
    })
}
