//! The IoT Hub service REST API (api-version 2021-04-12 shapes), authorized with a service
//! policy SAS:
//!
//! | route | |
//! |---|---|
//! | `GET /devices` | list identities |
//! | `PUT /devices/{id}` | create (no `If-Match`) or update (`If-Match`) |
//! | `GET`, `DELETE /devices/{id}` | read, delete (`If-Match` optional) |
//! | `GET`, `PATCH`, `PUT /twins/{id}` | read, patch tags/desired, replace (`If-Match` optional) |
//! | `POST /twins/{id}/methods` | invoke a direct method |
//! | `GET /devices/{id}/modules` | list a device's modules |
//! | `PUT /devices/{id}/modules/{mid}` | create (no `If-Match`) or update (`If-Match`) a module |
//! | `GET`, `DELETE /devices/{id}/modules/{mid}` | read, delete a module (`If-Match` optional) |
//! | `GET`, `PATCH`, `PUT /twins/{id}/modules/{mid}` | read, patch, replace a module twin |
//! | `POST /twins/{id}/modules/{mid}/methods` | invoke a direct method on a module |
//! | `POST /devices/{id}/messages/devicebound` | send a cloud-to-device message (emulator only: Azure takes these over AMQP) |
//!
//! Errors use IoT Hub's shape: `{"Message": "ErrorCode:<code>;<text>", "ExceptionMessage": …}`
//! with the `iothub-errorcode` header.

use super::modules::{self, ModuleSpec};
use super::registry::{CloudMessage, DeviceStatus};
use super::{twin, DeviceSpec, Hub, HubError, DEFAULT_MESSAGE_TTL};
use crate::azure_format;
use crate::net::https::{header, json, path_segments, query_param, read_body, Body, BodyError};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use iot_credentials::sas::unix_now;
use iot_credentials::SignedSas;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body (a cloud-to-device message may be 64 KB; twins 32 KB per section).
pub const BODY_LIMIT: usize = 256 * 1024;

/// An error as IoT Hub reports it.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "ArgumentInvalid", message)
    }

    fn into_response(self) -> Response<Body> {
        let body = json!({
            "Message": format!("ErrorCode:{};{}", self.code, self.message),
            "ExceptionMessage": format!("Tracking ID:{} TimestampUtc:{}", azure_format::tracking_id(), azure_format::now()),
        });
        let mut response = json(self.status, &body);
        response
            .headers_mut()
            .insert("iothub-errorcode", HeaderValue::from_static(self.code));
        response
    }
}

/// The one place hub errors become HTTP statuses.
impl From<HubError> for ApiError {
    fn from(error: HubError) -> Self {
        let (status, code) = match &error {
            HubError::BadRequest(_) | HubError::Twin(_) => {
                (StatusCode::BAD_REQUEST, "ArgumentInvalid")
            }
            HubError::DeviceNotFound(_) => (StatusCode::NOT_FOUND, "DeviceNotFound"),
            HubError::DeviceAlreadyExists(_) => (StatusCode::CONFLICT, "DeviceAlreadyExists"),
            HubError::ModuleNotFound { .. } => (StatusCode::NOT_FOUND, "ModuleNotFound"),
            HubError::ModuleAlreadyExists { .. } => {
                (StatusCode::CONFLICT, "ModuleAlreadyExistsOnDevice")
            }
            HubError::PreconditionFailed => (StatusCode::PRECONDITION_FAILED, "PreconditionFailed"),
            HubError::DeviceNotOnline => (StatusCode::NOT_FOUND, "DeviceNotOnline"),
            HubError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "GatewayTimeout"),
            HubError::QueueFull => (StatusCode::FORBIDDEN, "DeviceMaximumQueueDepthExceeded"),
            HubError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        };
        Self::new(status, code, error.to_string())
    }
}

/// Answers one request to a hub's HTTPS listener.
pub async fn handle(hub: Arc<Hub>, request: Request<Incoming>) -> Response<Body> {
    serve(&hub, request)
        .await
        .unwrap_or_else(ApiError::into_response)
}

async fn serve(hub: &Hub, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (parts, body) = request.into_parts();
    let segments = path_segments(parts.uri.path())
        .ok_or_else(|| ApiError::bad_request("the path is not valid UTF-8"))?;
    authorize(hub, &parts.headers)?;
    if query_param(&parts.uri, "api-version").is_none() {
        return Err(ApiError::bad_request(
            "the api-version query parameter is required",
        ));
    }
    let if_match = header(&parts.headers, http::header::IF_MATCH).map(str::to_owned);
    let request = Routed {
        hub,
        parts,
        body,
        if_match,
    };
    let is = |index: usize, word: &str| {
        segments
            .get(index)
            .is_some_and(|s| s.eq_ignore_ascii_case(word))
    };
    // Every path under /devices or /twins that no route takes is a method the resource does
    // not support (405); anything else is not a resource at all (404).
    match (is(0, "devices"), is(0, "twins"), is(2, "modules")) {
        (true, _, false) => device_routes(request, &segments).await,
        (true, _, true) => module_routes(request, &segments).await,
        (_, true, false) => twin_routes(request, &segments).await,
        (_, true, true) => module_twin_routes(request, &segments).await,
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such resource",
        )),
    }
}

/// A request that passed authorization, as each group of routes reads it.
struct Routed<'a> {
    hub: &'a Hub,
    parts: http::request::Parts,
    body: Incoming,
    if_match: Option<String>,
}

/// The 405 for a path under `/devices` or `/twins` that no route takes.
fn method_not_allowed(method: &Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{method} is not supported on this resource"),
    )
}

/// `/devices`, `/devices/{id}` and `/devices/{id}/messages/devicebound`.
async fn device_routes(
    request: Routed<'_>,
    segments: &[String],
) -> Result<Response<Body>, ApiError> {
    let Routed {
        hub,
        parts,
        body,
        if_match,
    } = request;
    let is = |s: &String, word: &str| s.eq_ignore_ascii_case(word);
    let presence = |id: &str| hub.presence(id);
    match (&parts.method, segments) {
        (&Method::GET, [devices]) if is(devices, "devices") => {
            let top = query_param(&parts.uri, "top")
                .and_then(|t| t.parse::<usize>().ok())
                .unwrap_or(1000);
            let list: Vec<Value> = hub
                .devices()
                .iter()
                .take(top)
                .map(|d| twin::device_json(d, &presence(&d.device_id)))
                .collect();
            Ok(json(StatusCode::OK, &list))
        }
        (&Method::GET, [devices, id]) if is(devices, "devices") => {
            let device = hub
                .device(id)
                .ok_or_else(|| HubError::DeviceNotFound(id.clone()))?;
            Ok(json(
                StatusCode::OK,
                &twin::device_json(&device, &presence(id)),
            ))
        }
        (&Method::PUT, [devices, id]) if is(devices, "devices") => {
            crate::dps::validate::device_id(id)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let body: DeviceBody = json_body(&parts.headers, body).await?;
            let spec = body.into_spec(id)?;
            let device = match if_match.as_deref() {
                None => hub.create_device(id, spec).await?,
                Some(etag) => hub.update_device(id, etag, spec).await?,
            };
            Ok(json(
                StatusCode::OK,
                &twin::device_json(&device, &presence(id)),
            ))
        }
        (&Method::DELETE, [devices, id]) if is(devices, "devices") => {
            hub.delete_device(id, if_match.as_deref()).await?;
            Ok(crate::net::https::empty(StatusCode::NO_CONTENT))
        }
        (&Method::POST, [devices, id, messages, bound])
            if is(devices, "devices") && is(messages, "messages") && is(bound, "devicebound") =>
        {
            let payload = read_limited(body).await?;
            let message = cloud_message(&parts.headers, payload);
            let message_id = message.message_id.clone();
            hub.send_message(id, message).await?;
            let mut response = crate::net::https::empty(StatusCode::NO_CONTENT);
            if let Ok(value) = HeaderValue::from_str(&message_id) {
                response.headers_mut().insert("iothub-messageid", value);
            }
            Ok(response)
        }
        _ => Err(method_not_allowed(&parts.method)),
    }
}

/// `/twins/{id}` and `/twins/{id}/methods`.
async fn twin_routes(request: Routed<'_>, segments: &[String]) -> Result<Response<Body>, ApiError> {
    let Routed {
        hub,
        parts,
        body,
        if_match,
    } = request;
    let is = |s: &String, word: &str| s.eq_ignore_ascii_case(word);
    let presence = |id: &str| hub.presence(id);
    match (&parts.method, segments) {
        (&Method::GET, [twins, id]) if is(twins, "twins") => {
            let device = hub
                .device(id)
                .ok_or_else(|| HubError::DeviceNotFound(id.clone()))?;
            Ok(json(
                StatusCode::OK,
                &twin::twin_json(&device, &presence(id)),
            ))
        }
        (&Method::PATCH | &Method::PUT, [twins, id]) if is(twins, "twins") => {
            let replace = parts.method == Method::PUT;
            let body: Value = json_body(&parts.headers, body).await?;
            let (tags, desired) = twin_change(&body)?;
            let device = if replace {
                hub.replace_twin(
                    id,
                    if_match.as_deref(),
                    tags.unwrap_or_default(),
                    desired.unwrap_or_default(),
                )
                .await?
            } else {
                hub.patch_twin(id, if_match.as_deref(), tags, desired)
                    .await?
            };
            Ok(json(
                StatusCode::OK,
                &twin::twin_json(&device, &presence(id)),
            ))
        }
        (&Method::POST, [twins, id, methods]) if is(twins, "twins") && is(methods, "methods") => {
            let call: MethodCall = json_body(&parts.headers, body).await?;
            let (response_timeout, connect_timeout) = call.timeouts()?;
            let reply = hub
                .invoke_method(
                    id,
                    &call.method_name,
                    &call.payload,
                    response_timeout,
                    connect_timeout,
                )
                .await?;
            Ok(json(
                StatusCode::OK,
                &json!({ "status": reply.status, "payload": reply.payload }),
            ))
        }
        _ => Err(method_not_allowed(&parts.method)),
    }
}

/// `/devices/{id}/modules` and `/devices/{id}/modules/{mid}`.
async fn module_routes(
    request: Routed<'_>,
    segments: &[String],
) -> Result<Response<Body>, ApiError> {
    let Routed {
        hub,
        parts,
        body,
        if_match,
    } = request;
    let is = |s: &String, word: &str| s.eq_ignore_ascii_case(word);
    match (&parts.method, segments) {
        (&Method::GET, [devices, id, mods]) if is(devices, "devices") && is(mods, "modules") => {
            let list: Vec<Value> = hub
                .modules_of(id)?
                .iter()
                .map(|m| modules::module_json(m, &hub.module_presence(id, &m.module_id)))
                .collect();
            Ok(json(StatusCode::OK, &list))
        }
        (&Method::GET, [devices, id, mods, mid])
            if is(devices, "devices") && is(mods, "modules") =>
        {
            let module = known_module(hub, id, mid)?;
            Ok(json(
                StatusCode::OK,
                &modules::module_json(&module, &hub.module_presence(id, mid)),
            ))
        }
        (&Method::PUT, [devices, id, mods, mid])
            if is(devices, "devices") && is(mods, "modules") =>
        {
            modules::validate_module_id(mid)?;
            let body: ModuleBody = json_body(&parts.headers, body).await?;
            let spec = body.into_spec(id, mid)?;
            let module = match if_match.as_deref() {
                None => hub.create_module(id, mid, spec).await?,
                Some(etag) => hub.update_module(id, mid, etag, spec).await?,
            };
            Ok(json(
                StatusCode::OK,
                &modules::module_json(&module, &hub.module_presence(id, mid)),
            ))
        }
        (&Method::DELETE, [devices, id, mods, mid])
            if is(devices, "devices") && is(mods, "modules") =>
        {
            hub.delete_module(id, mid, if_match.as_deref()).await?;
            Ok(crate::net::https::empty(StatusCode::NO_CONTENT))
        }
        _ => Err(method_not_allowed(&parts.method)),
    }
}

/// `/twins/{id}/modules/{mid}` and `/twins/{id}/modules/{mid}/methods`.
async fn module_twin_routes(
    request: Routed<'_>,
    segments: &[String],
) -> Result<Response<Body>, ApiError> {
    let Routed {
        hub,
        parts,
        body,
        if_match,
    } = request;
    let is = |s: &String, word: &str| s.eq_ignore_ascii_case(word);
    match (&parts.method, segments) {
        (&Method::GET, [twins, id, mods, mid]) if is(twins, "twins") && is(mods, "modules") => {
            let module = known_module(hub, id, mid)?;
            Ok(json(
                StatusCode::OK,
                &modules::module_twin_json(&module, &hub.module_presence(id, mid)),
            ))
        }
        (&Method::PATCH | &Method::PUT, [twins, id, mods, mid])
            if is(twins, "twins") && is(mods, "modules") =>
        {
            let body: Value = json_body(&parts.headers, body).await?;
            let (tags, desired) = twin_change(&body)?;
            let module = if parts.method == Method::PUT {
                hub.replace_module_twin(
                    id,
                    mid,
                    if_match.as_deref(),
                    tags.unwrap_or_default(),
                    desired.unwrap_or_default(),
                )
                .await?
            } else {
                hub.patch_module_twin(id, mid, if_match.as_deref(), tags, desired)
                    .await?
            };
            Ok(json(
                StatusCode::OK,
                &modules::module_twin_json(&module, &hub.module_presence(id, mid)),
            ))
        }
        (&Method::POST, [twins, id, mods, mid, methods])
            if is(twins, "twins") && is(mods, "modules") && is(methods, "methods") =>
        {
            let call: MethodCall = json_body(&parts.headers, body).await?;
            let (response_timeout, connect_timeout) = call.timeouts()?;
            let reply = hub
                .invoke_module_method(
                    id,
                    mid,
                    &call.method_name,
                    &call.payload,
                    response_timeout,
                    connect_timeout,
                )
                .await?;
            Ok(json(
                StatusCode::OK,
                &json!({ "status": reply.status, "payload": reply.payload }),
            ))
        }
        _ => Err(method_not_allowed(&parts.method)),
    }
}

/// The module `device_id`/`module_id`, or the 404 that says which of the two is missing.
fn known_module(
    hub: &Hub,
    device_id: &str,
    module_id: &str,
) -> Result<super::registry::ModuleIdentity, ApiError> {
    if let Some(module) = hub.module(device_id, module_id) {
        return Ok(module);
    }
    Err(match hub.device(device_id) {
        None => HubError::DeviceNotFound(device_id.to_owned()),
        Some(_) => HubError::ModuleNotFound {
            device_id: device_id.to_owned(),
            module_id: module_id.to_owned(),
        },
    }
    .into())
}

fn authorize(hub: &Hub, headers: &HeaderMap) -> Result<(), ApiError> {
    let unauthorized = |message: String| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "IotHubUnauthorizedAccess",
            message,
        )
    };
    let credential = header(headers, http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("the Authorization header is missing".into()))?;
    let token = SignedSas::parse(credential).map_err(|e| unauthorized(e.to_string()))?;
    let settings = hub.settings();
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

async fn read_limited(body: Incoming) -> Result<Bytes, ApiError> {
    read_body(body, BODY_LIMIT)
        .await
        .map_err(|error| match error {
            BodyError::TooLarge => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "MessageTooLarge",
                format!("the body exceeds {BODY_LIMIT} bytes"),
            ),
            BodyError::Broken => ApiError::bad_request("the request body could not be read"),
        })
}

async fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Incoming,
) -> Result<T, ApiError> {
    if let Some(content_type) = header(headers, http::header::CONTENT_TYPE) {
        if !content_type
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("application/json")
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("the body must be application/json, not {content_type:?}"),
            ));
        }
    }
    let bytes = read_limited(body).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid: {e}")))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceBody {
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    status: Option<DeviceStatus>,
    #[serde(default)]
    status_reason: Option<String>,
    #[serde(default)]
    authentication: Option<Authentication>,
    #[serde(default)]
    capabilities: Option<Capabilities>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Authentication {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    symmetric_key: Option<SymmetricKey>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SymmetricKey {
    #[serde(default)]
    primary_key: Option<String>,
    #[serde(default)]
    secondary_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Capabilities {
    #[serde(default)]
    iot_edge: bool,
}

impl DeviceBody {
    fn into_spec(self, path_id: &str) -> Result<DeviceSpec, ApiError> {
        if self.device_id.as_deref().is_some_and(|id| id != path_id) {
            return Err(ApiError::bad_request(
                "deviceId in the body must equal the id in the URL",
            ));
        }
        let mut spec = DeviceSpec {
            status: self.status,
            status_reason: self.status_reason,
            iot_edge: self.capabilities.map(|c| c.iot_edge),
            ..DeviceSpec::default()
        };
        (spec.primary_key, spec.secondary_key) = given_keys(self.authentication)?;
        Ok(spec)
    }
}

/// The symmetric keys a device or module body gives (None where left empty, to be generated).
fn given_keys(
    authentication: Option<Authentication>,
) -> Result<(Option<String>, Option<String>), ApiError> {
    let Some(auth) = authentication else {
        return Ok((None, None));
    };
    if auth
        .kind
        .as_deref()
        .is_some_and(|k| !k.eq_ignore_ascii_case("sas"))
    {
        return Err(ApiError::bad_request(
            "emulated devices and modules authenticate with SAS keys (authentication.type \"sas\")",
        ));
    }
    let Some(keys) = auth.symmetric_key else {
        return Ok((None, None));
    };
    for (name, key) in [
        ("primaryKey", &keys.primary_key),
        ("secondaryKey", &keys.secondary_key),
    ] {
        if let Some(key) = key.as_deref().filter(|k| !k.is_empty()) {
            crate::dps::validate::symmetric_key(name, key)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
    }
    Ok((
        keys.primary_key.filter(|k| !k.is_empty()),
        keys.secondary_key.filter(|k| !k.is_empty()),
    ))
}

/// A module as `PUT /devices/{id}/modules/{mid}` sends it (the `Module` definition).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModuleBody {
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    module_id: Option<String>,
    #[serde(default)]
    managed_by: Option<String>,
    #[serde(default)]
    authentication: Option<Authentication>,
}

impl ModuleBody {
    fn into_spec(self, device_id: &str, module_id: &str) -> Result<ModuleSpec, ApiError> {
        if self.device_id.as_deref().is_some_and(|id| id != device_id)
            || self.module_id.as_deref().is_some_and(|id| id != module_id)
        {
            return Err(ApiError::bad_request(
                "deviceId and moduleId in the body must equal the ids in the URL",
            ));
        }
        let (primary_key, secondary_key) = given_keys(self.authentication)?;
        Ok(ModuleSpec {
            managed_by: self.managed_by.filter(|m| !m.is_empty()),
            primary_key,
            secondary_key,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MethodCall {
    method_name: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    response_timeout_in_seconds: Option<u64>,
    #[serde(default)]
    connect_timeout_in_seconds: Option<u64>,
}

impl MethodCall {
    /// The response and connect timeouts, checked against IoT Hub's bounds, and the method name.
    fn timeouts(&self) -> Result<(Duration, Duration), ApiError> {
        let response_timeout = self.response_timeout_in_seconds.unwrap_or(30);
        let connect_timeout = self.connect_timeout_in_seconds.unwrap_or(0);
        if !(5..=300).contains(&response_timeout) || connect_timeout > 300 {
            return Err(ApiError::bad_request(
                "responseTimeoutInSeconds must be 5 to 300 and connectTimeoutInSeconds 0 to 300",
            ));
        }
        if self.method_name.is_empty() || self.method_name.contains('/') {
            return Err(ApiError::bad_request(
                "methodName must be a non-empty name without '/'",
            ));
        }
        Ok((
            Duration::from_secs(response_timeout),
            Duration::from_secs(connect_timeout),
        ))
    }
}

/// A twin section (tags or desired properties) as sent.
type Section = Option<Map<String, Value>>;

/// The tags and desired properties of a twin PATCH or PUT body. Reported properties belong to
/// the device and are refused.
fn twin_change(body: &Value) -> Result<(Section, Section), ApiError> {
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::bad_request("a twin body must be a JSON object"))?;
    let properties = object.get("properties").and_then(Value::as_object);
    if properties.is_some_and(|p| p.contains_key("reported")) {
        return Err(ApiError::bad_request(
            "reported properties can only be changed by the device",
        ));
    }
    let section = |value: Option<&Value>| -> Result<Section, ApiError> {
        value
            .filter(|v| !v.is_null())
            .map(|v| twin::validated_patch(v).map_err(|e| ApiError::bad_request(e.to_string())))
            .transpose()
    };
    Ok((
        section(object.get("tags"))?,
        section(properties.and_then(|p| p.get("desired")))?,
    ))
}

/// A cloud-to-device message from the emulator-only route: the body is the payload; headers
/// carry `iothub-messageid`, `iothub-correlationid`, `iothub-expiry` (seconds from now),
/// `content-type`, `content-encoding` and `iothub-app-<name>` application properties.
fn cloud_message(headers: &HeaderMap, body: Bytes) -> CloudMessage {
    let text = |name: &str| header(headers, name).map(str::to_owned);
    let properties: BTreeMap<String, String> = headers
        .iter()
        .filter_map(|(name, value)| {
            let name = name.as_str().strip_prefix("iothub-app-")?;
            Some((name.to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let ttl = text("iothub-expiry")
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(DEFAULT_MESSAGE_TTL, Duration::from_secs);
    CloudMessage {
        message_id: text("iothub-messageid").unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        correlation_id: text("iothub-correlationid"),
        content_type: text("content-type"),
        content_encoding: text("content-encoding"),
        properties,
        expires_at_ms: super::now_ms() + ttl.as_millis() as i64,
        body,
    }
}
