//! The host's admin API below `/admin/`, every route with the master key
//! (Azure/azure-functions-host src/WebJobs.Script.WebHost/Controllers/KeysController.cs and
//! HostController.cs, `[Authorize(Policy = PolicyNames.AdminAuthLevel)]`):
//!
//! - `POST /admin/functions/{name}`: runs a timer function now;
//! - `GET /admin/functions/{name}/keys`: the function's keys, `{"keys": [{name, value}], "links"}`;
//! - `GET|POST|PUT|DELETE /admin/functions/{name}/keys/{keyName}`: one key; POST generates a
//!   value, PUT takes `{"name", "value"}`; 201 when created, 200 when replaced, 204 deleted;
//! - the same under `/admin/host/keys` (or `functionkeys`: keys for every function) and
//!   `/admin/host/systemkeys`, where `_master` names the master key (readable and settable, not
//!   deletable).
//!
//! A function that the app does not have answers 404, as the host's `IsFunction` check does.

use super::app::{AuthLevel, Trigger};
use super::front::{authorized, error, Front};
use super::keys::{HostScope, KeyStoreError, Scope, Written};
use super::link::READY_WAIT;
use crate::net::https::{json, read_body, Body};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

/// Largest body of a key PUT.
const KEY_BODY_LIMIT: usize = 16 * 1024;

/// One route of the admin API.
enum Route<'a> {
    /// `/admin/functions/{name}`.
    Run(&'a str),
    /// `/admin/functions/{name}/keys` or `/admin/host/{scope}`.
    Keys(Scope),
    /// `.../{keyName}` below either.
    Key(Scope, &'a str),
}

fn route(rest: &str) -> Option<Route<'_>> {
    let segments: Vec<&str> = rest.split('/').collect();
    let host_scope = |text: &str| match text.to_ascii_lowercase().as_str() {
        "keys" | "functionkeys" => Some(HostScope::FunctionKeys),
        "systemkeys" => Some(HostScope::SystemKeys),
        _ => None,
    };
    let function = |name: &str| Scope::Function(name.to_owned());
    match segments.as_slice() {
        [kind, name] if kind.eq_ignore_ascii_case("functions") && !name.is_empty() => {
            Some(Route::Run(name))
        }
        [kind, name, keys]
            if kind.eq_ignore_ascii_case("functions")
                && !name.is_empty()
                && keys.eq_ignore_ascii_case("keys") =>
        {
            Some(Route::Keys(function(name)))
        }
        [kind, name, keys, key]
            if kind.eq_ignore_ascii_case("functions")
                && !name.is_empty()
                && keys.eq_ignore_ascii_case("keys") =>
        {
            Some(Route::Key(function(name), key))
        }
        [kind, scope] if kind.eq_ignore_ascii_case("host") => {
            host_scope(scope).map(|s| Route::Keys(Scope::Host(s)))
        }
        [kind, scope, key] if kind.eq_ignore_ascii_case("host") => {
            host_scope(scope).map(|s| Route::Key(Scope::Host(s), key))
        }
        _ => None,
    }
}

/// Key names the stand-in takes: what a URL segment carries without encoding. The host itself
/// takes any segment; a name outside this set is refused here with the reason instead of being
/// stored under an encoded form.
fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn not_found(what: &str) -> Response<Body> {
    error(StatusCode::NOT_FOUND, "NotFound", what)
}

fn store_failed(e: &KeyStoreError) -> Response<Body> {
    if matches!(e, KeyStoreError::MasterKey) {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the master key cannot be deleted",
        );
    }
    tracing::error!(error = %e, "the key store could not be written");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "KeyStoreUnavailable",
        "the key store could not be written; see the log",
    )
}

/// Answers a request below `/admin/` (`rest` is the path after it).
pub async fn handle(front: &Front, rest: &str, request: Request<Incoming>) -> Response<Body> {
    let Some(route) = route(rest) else {
        return not_found("no admin route serves this path");
    };
    if !authorized(
        &front.keys,
        AuthLevel::Admin,
        None,
        request.headers(),
        request.uri(),
    ) {
        tracing::info!("admin request refused: the master key is required");
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the admin API needs the master key (x-functions-key header or code query parameter)",
        );
    }
    // The function named must be one the app has.
    let scope_name = match &route {
        Route::Run(name) => Some(*name),
        Route::Keys(Scope::Function(name)) | Route::Key(Scope::Function(name), _) => {
            Some(name.as_str())
        }
        _ => None,
    };
    let function = match scope_name {
        Some(name) => match front
            .app
            .functions
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
        {
            Some(function) => Some(function),
            None => return not_found("the app has no such function"),
        },
        None => None,
    };
    let self_link = request.uri().to_string();
    let links = json!([{ "rel": "self", "href": self_link }]);
    match route {
        Route::Run(_) => match function {
            Some(function) if request.method() == Method::POST => {
                run_on_demand(front, function).await
            }
            _ => method_not_allowed("use POST to run a function"),
        },
        Route::Keys(scope) => {
            if request.method() != Method::GET {
                return method_not_allowed("use GET to list keys");
            }
            // The app's spelling of the function, so its keys are one set whatever the case.
            let scope = canonical(scope, function);
            match front.keys.list(&scope) {
                Ok(keys) => json(
                    StatusCode::OK,
                    &json!({
                        "keys": keys.iter().map(|(name, value)| json!({ "name": name, "value": value })).collect::<Vec<_>>(),
                        "links": links,
                    }),
                ),
                Err(e) => store_failed(&e),
            }
        }
        Route::Key(scope, name) => {
            let scope = canonical(scope, function);
            key(front, scope, name, request, links).await
        }
    }
}

fn canonical(scope: Scope, function: Option<&super::app::FunctionDef>) -> Scope {
    match (scope, function) {
        (Scope::Function(_), Some(function)) => Scope::Function(function.name.clone()),
        (scope, _) => scope,
    }
}

fn method_not_allowed(message: &str) -> Response<Body> {
    error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
}

/// One key: read, generate (POST), set (PUT) or delete.
async fn key(
    front: &Front,
    scope: Scope,
    name: &str,
    request: Request<Incoming>,
    links: Value,
) -> Response<Body> {
    if !valid_key_name(name) {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "a key name is 1 to 128 letters, digits, '-', '_' or '.'",
        );
    }
    let answer = |status: StatusCode, value: &str| {
        json(
            status,
            &json!({ "name": name, "value": value, "links": links }),
        )
    };
    let written = |result: Result<(Written, String), KeyStoreError>| match result {
        Ok((Written::Created, value)) => {
            tracing::info!(key.name = %name, scope = ?scope_label(&scope), "key created");
            answer(StatusCode::CREATED, &value)
        }
        Ok((Written::Updated, value)) => {
            tracing::info!(key.name = %name, scope = ?scope_label(&scope), "key replaced");
            answer(StatusCode::OK, &value)
        }
        Err(e) => store_failed(&e),
    };
    match request.method().clone() {
        Method::GET => match front.keys.get(&scope, name) {
            Ok(Some(value)) => answer(StatusCode::OK, &value),
            Ok(None) => not_found("no key of that name"),
            Err(e) => store_failed(&e),
        },
        Method::POST => written(front.keys.set(&scope, name, None)),
        Method::PUT => {
            let Ok(body) = read_body(request.into_body(), KEY_BODY_LIMIT).await else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the body could not be read (at most 16 KiB)",
                );
            };
            let value = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("value").and_then(Value::as_str).map(str::to_owned));
            match value {
                Some(value) if !value.is_empty() => {
                    written(front.keys.set(&scope, name, Some(&value)))
                }
                _ => error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "send {\"name\": \"<key name>\", \"value\": \"<key value>\"} with a non-empty value",
                ),
            }
        }
        Method::DELETE => match front.keys.delete(&scope, name) {
            Ok(true) => {
                tracing::info!(key.name = %name, scope = ?scope_label(&scope), "key deleted");
                let mut response = Response::new(Body::new(bytes::Bytes::new()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            Ok(false) => not_found("no key of that name"),
            Err(e) => store_failed(&e),
        },
        _ => method_not_allowed("use GET, POST, PUT or DELETE on a key"),
    }
}

/// Where a key lives, for the log (never its value).
fn scope_label(scope: &Scope) -> String {
    match scope {
        Scope::Function(name) => format!("function {name}"),
        Scope::Host(HostScope::FunctionKeys) => "host function keys".into(),
        Scope::Host(HostScope::SystemKeys) => "host system keys".into(),
    }
}

/// `POST /admin/functions/{name}`: runs a timer function now, as the host's admin API does. The
/// real host answers 202 at once and runs the function in the background; the stand-in answers
/// 202 once the invocation has finished, so a caller (a test) knows when its effects are
/// visible, or 500 if it failed.
async fn run_on_demand(front: &Front, function: &super::app::FunctionDef) -> Response<Body> {
    let Trigger::Timer { binding, .. } = &function.trigger else {
        return error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the stand-in runs timer functions on demand; other triggers run from their sources",
        );
    };
    if !front.handler.wait_ready_for(READY_WAIT).await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "HandlerUnavailable",
            "the function app's handler is not running",
        );
    }
    let payload = super::invoke::timer(&function.name, binding, None, false, None);
    let invocation_id = uuid::Uuid::new_v4().to_string();
    match front
        .invoker
        .invoke(&function.name, &payload, &invocation_id)
        .await
    {
        Ok(_) => {
            tracing::info!(
                function = %function.name,
                invocation.id = %invocation_id,
                "ran a function on demand"
            );
            json(StatusCode::ACCEPTED, &json!({}))
        }
        Err(e) => {
            tracing::warn!(
                function = %function.name,
                error = %e,
                "a function run on demand failed"
            );
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "FunctionFailed",
                "the invocation failed; see the log",
            )
        }
    }
}
