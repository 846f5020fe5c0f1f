//! The Functions host's HTTP front, `http://127.0.0.1:7071` as `func start` serves it: routes
//! `/{prefix}/...` to HTTP-triggered functions, enforces `authLevel` with function keys
//! (`x-functions-key` header or `code` query parameter), and forwards the request unchanged to
//! the custom handler (`enableForwardingHttpRequest`), whose answer goes back as it is.
//! `GET /admin/host/status` answers without a key, so tools can wait for the host; the rest of
//! `/admin/` (running a function, the keys API) needs the master key.

use super::app::{AuthLevel, FunctionApp, FunctionDef, HttpMode, Trigger};
use super::invoke::{Invoker, HOST_VERSION};
use super::keys::{Grant, KeyStore};
use super::link::{Answer, Framing, LinkError, Outgoing};
use super::supervisor::HandlerSupervisor;
use crate::net::https::{json, query_param, read_body, Body, BodyError};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;

/// Largest request forwarded (the real front end allows 100 MB; the admin API needs far less).
pub const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// What the front needs.
pub struct Front {
    /// The app.
    pub app: Arc<FunctionApp>,
    /// The key store.
    pub keys: Arc<KeyStore>,
    /// The handler process.
    pub handler: Arc<HandlerSupervisor>,
    /// Reaches the handler.
    pub invoker: Invoker,
}

pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

/// Answers one request on the front.
pub async fn handle(front: Arc<Front>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if path.eq_ignore_ascii_case("/admin/host/status") {
        return host_status(&front);
    }
    if let Some(rest) = path
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("/admin/"))
        .and_then(|_| path.get(7..))
    {
        return super::admin::handle(&front, rest, request).await;
    }
    let (function, auth) = match http_function(&front.app, &path, request.method()) {
        Ok(found) => found,
        Err(NoFunction::ForPath) => {
            return error(
                StatusCode::NOT_FOUND,
                "NotFound",
                "no function serves this path",
            )
        }
        Err(NoFunction::ForMethod) => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "the function does not accept this method",
            )
        }
    };
    if !authorized(
        &front.keys,
        auth,
        Some(&function.name),
        request.headers(),
        request.uri(),
    ) {
        tracing::info!(function = %function.name, "request refused: missing or wrong function key");
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a valid function key is required (x-functions-key header or code query parameter)",
        );
    }
    forward(&front, function, request).await
}

/// `GET /admin/host/status`: `Running` once the handler listens, as tools wait for it.
fn host_status(front: &Front) -> Response<Body> {
    let state = if front.handler.is_ready() {
        "Running"
    } else {
        "Initializing"
    };
    json(
        StatusCode::OK,
        &json!({ "state": state, "version": HOST_VERSION }),
    )
}

/// Why no function takes a request.
enum NoFunction {
    /// No route matches the path (404).
    ForPath,
    /// Routes match, but none accepts the method (405).
    ForMethod,
}

/// The HTTP-triggered function serving `path` and `method`, with its `authLevel`: the
/// best-ranked route that matches and accepts the method.
fn http_function<'a>(
    app: &'a FunctionApp,
    path: &str,
    method: &http::Method,
) -> Result<(&'a FunctionDef, AuthLevel), NoFunction> {
    let prefix = format!("/{}/", app.route_prefix);
    let rest = path
        .get(prefix.len()..)
        .filter(|_| {
            path.to_ascii_lowercase()
                .starts_with(&prefix.to_ascii_lowercase())
        })
        .ok_or(NoFunction::ForPath)?;
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = method.as_str().to_ascii_uppercase();
    let mut candidates: Vec<_> = app
        .functions
        .iter()
        .filter_map(|f| match &f.trigger {
            Trigger::Http {
                auth,
                methods,
                route,
            } if route.matches(&segments) => Some((f, *auth, methods, route.rank())),
            _ => None,
        })
        .collect();
    if candidates.is_empty() {
        return Err(NoFunction::ForPath);
    }
    candidates.sort_by_key(|(_, _, _, rank)| *rank);
    candidates
        .iter()
        .find(|(_, _, methods, _)| methods.is_empty() || methods.contains(&method))
        .map(|(function, auth, _, _)| (*function, *auth))
        .ok_or(NoFunction::ForMethod)
}

/// Forwards an authorized request to the handler and relays its answer; logs the invocation.
async fn forward(
    front: &Front,
    function: &FunctionDef,
    request: Request<Incoming>,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let invocation_id = uuid::Uuid::new_v4().to_string();
    let (parts, body) = request.into_parts();
    let body = match read_body(body, BODY_LIMIT).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                "the request body is too large",
            )
        }
        Err(BodyError::Broken) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the request body could not be read",
            )
        }
    };
    let outgoing = outgoing(front.app.http_mode, &parts, body, &invocation_id);
    let response = match front.invoker.link().exchange(&outgoing).await {
        Ok(answer) => relay(answer),
        Err(LinkError::NotRunning) => {
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "HandlerUnavailable",
                "the function app's handler is not running; retry shortly",
            );
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("5"),
            );
            response
        }
        Err(LinkError::NoAnswer(reason)) => {
            tracing::warn!(
                function = %function.name,
                invocation.id = %invocation_id,
                %reason,
                "the handler did not answer"
            );
            error(
                StatusCode::BAD_GATEWAY,
                "HandlerFailed",
                "the function app's handler did not answer",
            )
        }
    };
    tracing::info!(
        function = %function.name,
        invocation.id = %invocation_id,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "HTTP function invoked"
    );
    response
}

/// Whether the key presented (the `x-functions-key` header, else the `code` query parameter,
/// as AuthenticationLevelHandler reads them) opens a function of `level`: the master key opens
/// every level, a system key `system`, a host function key or a key of `function` itself
/// `function` (AuthUtility.PrincipalHasAuthLevelClaim).
pub(super) fn authorized(
    keys: &KeyStore,
    level: AuthLevel,
    function: Option<&str>,
    headers: &HeaderMap,
    uri: &http::Uri,
) -> bool {
    if level == AuthLevel::Anonymous {
        return true;
    }
    let presented = match headers.get("x-functions-key") {
        Some(value) => value.to_str().ok().map(str::to_owned),
        None => query_param(uri, "code"),
    };
    let Some(grant) = presented.and_then(|key| keys.grant(&key, function)) else {
        return false;
    };
    match level {
        AuthLevel::Anonymous => true,
        AuthLevel::Function => matches!(grant, Grant::Admin | Grant::Function),
        AuthLevel::System => matches!(grant, Grant::Admin | Grant::System),
        AuthLevel::Admin => grant == Grant::Admin,
    }
}

/// Headers that describe one connection, not the request.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// The request as the host hands it to the handler.
///
/// Proxying (`enableProxyingHttpRequest`, YARP in the host) passes the request through: path,
/// query, headers and body as the client sent them. Forwarding (`enableForwardingHttpRequest`,
/// the legacy mode) rebuilds it and copies the body only when the client sent a Content-Length
/// above zero (HttpRequestExtensions.ToHttpRequestMessage), so a chunked upload arrives empty.
/// Either way the host sets its own invocation id and version headers.
fn outgoing(
    mode: HttpMode,
    parts: &http::request::Parts,
    body: Bytes,
    invocation_id: &str,
) -> Outgoing {
    let sized = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = parts.headers.get(http::header::TRANSFER_ENCODING).is_some();
    let body = match (mode, sized) {
        (_, Some(length)) if length > 0 => Framing::Sized(body),
        (HttpMode::Proxying, _) if chunked => Framing::Chunked(body),
        _ => Framing::Empty,
    };
    let mut headers = HeaderMap::new();
    for (name, value) in parts.headers.iter().filter(|(n, _)| !hop_by_hop(n)) {
        headers.append(name, value.clone());
    }
    if let Ok(id) = http::HeaderValue::from_str(invocation_id) {
        headers.insert("x-azure-functions-invocationid", id);
    }
    headers.insert(
        "x-azure-functions-hostversion",
        http::HeaderValue::from_static(HOST_VERSION),
    );
    Outgoing {
        method: parts.method.clone(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        headers,
        body,
    }
}

/// The handler's answer, as the client gets it.
fn relay(answer: Answer) -> Response<Body> {
    let mut response = Response::new(Body::new(answer.body));
    *response.status_mut() = answer.status;
    for (name, value) in answer.headers.iter().filter(|(n, _)| !hop_by_hop(n)) {
        response.headers_mut().append(name, value.clone());
    }
    response
}
