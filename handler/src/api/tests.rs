//! The routes without a socket (warp::test), over in-memory storage and cloud fakes: statuses,
//! error bodies, headers, and agreement between the routes, the OpenAPI document and the
//! function.json files.

use super::{routes, ROUTES};
use crate::cloud::fake::FakeDps;
use crate::service::Service;
use crate::storage::memory::MemoryRegistry;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use warp::http::StatusCode;

fn service() -> (Arc<Service>, Arc<FakeDps>) {
    let dps = Arc::new(FakeDps::default());
    let service = Service {
        store: Arc::new(MemoryRegistry::default()),
        dps: dps.clone(),
        ..Service::for_tests()
    };
    (Arc::new(service), dps)
}

fn body(response: &warp::http::Response<bytes::Bytes>) -> Value {
    serde_json::from_slice(response.body()).unwrap_or(Value::Null)
}

fn error_code(response: &warp::http::Response<bytes::Bytes>) -> String {
    body(response)["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn enroll(service: &Arc<Service>, id: &str) -> warp::http::Response<bytes::Bytes> {
    warp::test::request()
        .method("POST")
        .path("/api/enrollments")
        .header("content-type", "application/json")
        .json(&json!({ "registrationId": id, "customer": { "id": "contoso" } }))
        .reply(&routes(service.clone()))
        .await
}

#[tokio::test]
async fn enrolling_answers_201_with_location_and_etag_then_409() {
    let (service, _) = service();
    let response = enroll(&service, "dev-1").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["location"], "/api/enrollments/dev-1");
    assert_eq!(
        response.headers()["etag"].to_str().unwrap(),
        body(&response)["etag"]
    );
    assert_eq!(body(&response)["status"], "enrolled");
    let again = enroll(&service, "dev-1").await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(&again), "alreadyEnrolled");
}

#[tokio::test]
async fn malformed_requests_get_a_json_error_and_change_nothing() {
    let (service, dps) = service();
    let api = routes(service.clone());
    let cases: Vec<(warp::test::RequestBuilder, StatusCode, &str)> = vec![
        (warp::test::request().method("POST").path("/api/enrollments").header("content-type", "text/plain").body("x"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupportedMediaType"),
        (warp::test::request().method("POST").path("/api/enrollments").header("content-type", "application/json").body("{not json"), StatusCode::BAD_REQUEST, "invalidRequest"),
        (warp::test::request().method("POST").path("/api/enrollments").header("content-type", "application/json").json(&json!({"registrationId": "a b", "customer": {"id": "c"}})), StatusCode::BAD_REQUEST, "invalidRequest"),
        (warp::test::request().method("POST").path("/api/enrollments").header("content-type", "application/json").json(&json!({"registrationId": "a", "customer": {"id": "c"}, "iotHub": "elsewhere.example"})), StatusCode::BAD_REQUEST, "invalidRequest"),
        (warp::test::request().method("POST").path("/api/enrollments").header("content-type", "application/json").body(vec![b' '; 70 * 1024]), StatusCode::PAYLOAD_TOO_LARGE, "payloadTooLarge"),
        (warp::test::request().method("PUT").path("/api/enrollments"), StatusCode::METHOD_NOT_ALLOWED, "methodNotAllowed"),
        (warp::test::request().method("GET").path("/api/nothing-here"), StatusCode::NOT_FOUND, "routeNotFound"),
        (warp::test::request().method("GET").path("/api/enrollments?status=sleeping"), StatusCode::BAD_REQUEST, "invalidRequest"),
        (warp::test::request().method("GET").path("/api/enrollments?custmer=contoso"), StatusCode::BAD_REQUEST, "invalidRequest"),
        (warp::test::request().method("GET").path("/api/enrollments?pageSize=0"), StatusCode::BAD_REQUEST, "invalidRequest"),
        (warp::test::request().method("GET").path("/api/enrollments?continuationToken=garbage"), StatusCode::BAD_REQUEST, "invalidRequest"),
        (warp::test::request().method("GET").path("/api/enrollments/nobody"), StatusCode::NOT_FOUND, "notFound"),
        (warp::test::request().method("GET").path("/api/devices/nobody"), StatusCode::NOT_FOUND, "notFound"),
        (warp::test::request().method("POST").path("/api/enrollments/import").header("content-type", "application/xml").body("<a/>"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupportedMediaType"),
        (warp::test::request().method("POST").path("/api/enrollments/import").header("content-type", "text/csv").body("serial\n1\n"), StatusCode::BAD_REQUEST, "invalidRequest"),
        // No body at all, with or without a media type: 400 with the reason, never 411.
        (warp::test::request().method("POST").path("/api/enrollments"), StatusCode::BAD_REQUEST, "invalidRequest"),
        (warp::test::request().method("POST").path("/api/enrollments").header("content-type", "application/json"), StatusCode::BAD_REQUEST, "invalidRequest"),
        (warp::test::request().method("PATCH").path("/api/enrollments/dev-1"), StatusCode::BAD_REQUEST, "invalidRequest"),
        (warp::test::request().method("POST").path("/api/enrollments/import").header("content-type", "text/csv"), StatusCode::BAD_REQUEST, "invalidRequest"),
        (warp::test::request().method("PATCH").path("/api/devices/dev-1/desired"), StatusCode::BAD_REQUEST, "invalidRequest"),
        (warp::test::request().method("POST").path("/api/devices/dev-1/commands/reboot"), StatusCode::BAD_REQUEST, "invalidRequest"),
    ];
    for (request, status, code) in cases {
        let response = request.reply(&api).await;
        assert_eq!(response.status(), status, "{:?}", body(&response));
        assert_eq!(error_code(&response), code, "{:?}", body(&response));
        assert!(body(&response)["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    assert!(dps.enrollments.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_dependency_outage_is_503_with_retry_after() {
    let (service, dps) = service();
    dps.faults.fail("create", 1);
    let response = enroll(&service, "dev-1").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(&response), "dependencyUnavailable");
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        !String::from_utf8_lossy(response.body()).contains("injected"),
        "details stay in the log"
    );
}

#[tokio::test]
async fn a_throttling_dependency_is_429_with_its_retry_after() {
    let (service, dps) = service();
    dps.faults.fail_with(
        "create",
        1,
        crate::cloud::CloudError::Throttled {
            retry_after: Some(7),
        },
    );
    let response = enroll(&service, "dev-1").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(&response), "throttled");
    assert_eq!(response.headers()["retry-after"], "7");
}

#[tokio::test]
async fn a_dependency_that_refuses_our_credentials_is_502() {
    let (service, dps) = service();
    dps.faults.fail_with(
        "create",
        1,
        crate::cloud::CloudError::BadGateway("DPS answered 401".into()),
    );
    let response = enroll(&service, "dev-1").await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(error_code(&response), "dependencyFailed");
    assert!(!response.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn if_match_guards_changes_and_deletes() {
    let (service, _) = service();
    let created = enroll(&service, "dev-1").await;
    let etag = created.headers()["etag"].to_str().unwrap().to_owned();
    let api = routes(service.clone());
    let patch = |etag: &str| {
        warp::test::request()
            .method("PATCH")
            .path("/api/enrollments/dev-1")
            .header("content-type", "application/json")
            .header("if-match", etag)
            .json(&json!({ "asset": { "model": "T-200" } }))
    };
    let changed = patch(&etag).reply(&api).await;
    assert_eq!(changed.status(), StatusCode::OK);
    assert_eq!(body(&changed)["asset"]["model"], "T-200");
    let stale = patch(&etag).reply(&api).await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let delete = warp::test::request()
        .method("DELETE")
        .path("/api/enrollments/dev-1")
        .header("if-match", &etag)
        .reply(&api)
        .await;
    assert_eq!(delete.status(), StatusCode::PRECONDITION_FAILED);
    let delete = warp::test::request()
        .method("DELETE")
        .path("/api/enrollments/dev-1")
        .reply(&api)
        .await;
    assert_eq!(delete.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn the_provisioning_code_is_not_cached_and_comes_as_svg_too() {
    let (service, _) = service();
    enroll(&service, "dev-1").await;
    let api = routes(service.clone());
    let response = warp::test::request()
        .path("/api/enrollments/dev-1/provisioning-code")
        .reply(&api)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let code = body(&response)["code"].as_str().unwrap().to_owned();
    assert!(iot_credentials::ProvisioningCode::parse(&code).is_ok());
    assert!(body(&response)["qrSvg"]
        .as_str()
        .unwrap()
        .starts_with("<?xml"));
    let svg = warp::test::request()
        .path("/api/enrollments/dev-1/provisioning-code?format=svg")
        .reply(&api)
        .await;
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    assert!(String::from_utf8_lossy(svg.body()).contains("<svg"));
    // Lists never carry keys.
    let list = warp::test::request()
        .path("/api/enrollments")
        .reply(&api)
        .await;
    let key = code.split('~').nth(3).unwrap();
    assert!(!String::from_utf8_lossy(list.body()).contains(key));
}

#[tokio::test]
async fn lists_page_with_continuation_tokens() {
    let (service, _) = service();
    for i in 0..5 {
        enroll(&service, &format!("dev-{i}")).await;
    }
    let api = routes(service.clone());
    let mut seen = Vec::new();
    let mut path = "/api/devices?pageSize=2&customer=contoso".to_owned();
    for _ in 0..10 {
        let page = body(&warp::test::request().path(&path).reply(&api).await);
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["deviceId"].as_str().unwrap().to_owned()),
        );
        match page["continuationToken"].as_str() {
            Some(token) => {
                path = format!("/api/devices?pageSize=2&customer=contoso&continuationToken={token}")
            }
            None => break,
        }
    }
    assert_eq!(seen, ["dev-0", "dev-1", "dev-2", "dev-3", "dev-4"]);
}

/// Routes in `ROUTES` as a set of (method, path) with parameters written `{}`.
fn route_set() -> BTreeSet<(String, String)> {
    ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), normalize(p)))
        .collect()
}

fn normalize(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn the_openapi_document_describes_exactly_the_routes() {
    let document: Value = serde_json::from_str(super::openapi::DOCUMENT).unwrap();
    let mut documented = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            documented.insert((method.to_ascii_uppercase(), normalize(path)));
        }
    }
    assert_eq!(documented, route_set());
}

#[test]
fn the_function_json_files_forward_exactly_the_routes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions");
    let mut forwarded = BTreeSet::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let folder = entry.unwrap().path();
        if !folder.is_dir() {
            continue;
        }
        let path = folder.join("function.json");
        let function: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for binding in function["bindings"].as_array().unwrap() {
            if binding["type"] != "httpTrigger" {
                continue;
            }
            assert_eq!(binding["authLevel"], "function", "{path:?}");
            let route = format!("/api/{}", binding["route"].as_str().unwrap());
            for method in binding["methods"].as_array().unwrap() {
                forwarded.insert((
                    method.as_str().unwrap().to_ascii_uppercase(),
                    normalize(&route),
                ));
            }
        }
    }
    assert_eq!(forwarded, route_set());
}

/// Each HTTP function's (name, methods, route), from functions/*/function.json.
fn http_functions() -> Vec<(String, Vec<String>, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap() {
        let folder = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(folder.join("function.json")) else {
            continue;
        };
        let function: Value = serde_json::from_str(&text).unwrap();
        let trigger = &function["bindings"][0];
        if trigger["type"] != "httpTrigger" {
            continue;
        }
        let methods = trigger["methods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_ascii_uppercase())
            .collect();
        let name = folder.file_name().unwrap().to_string_lossy().into_owned();
        found.push((name, methods, trigger["route"].as_str().unwrap().to_owned()));
    }
    found
}

#[test]
fn the_reader_key_opens_only_functions_that_read_and_reveal_no_key() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions/readers.json"),
    )
    .unwrap();
    let readers: Value = serde_json::from_str(&text).unwrap();
    let listed: BTreeSet<&str> = readers["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let functions = http_functions();
    for (name, methods, route) in &functions {
        // Reads and writes are separate functions, so a key can open the reads alone.
        assert!(
            methods.iter().all(|m| m == "GET") || methods.iter().all(|m| m != "GET"),
            "{name} mixes GET with {methods:?}: split it by method"
        );
        if listed.contains(name.as_str()) {
            assert_eq!(methods, &["GET"], "{name} is listed as read-only");
            assert!(
                !route.contains("provisioning-code"),
                "{name} answers a device's key, so it is not read-only"
            );
        }
    }
    let known: BTreeSet<&str> = functions.iter().map(|(n, _, _)| n.as_str()).collect();
    assert!(
        listed.is_subset(&known),
        "{listed:?} names a function that does not exist"
    );
    // Every GET but the provisioning code is readable with the reader key.
    let unlisted_reads: Vec<&str> = functions
        .iter()
        .filter(|(n, m, _)| m == &["GET"] && !listed.contains(n.as_str()))
        .map(|(n, _, _)| n.as_str())
        .collect();
    assert_eq!(unlisted_reads, ["ProvisioningCode"]);
}

#[tokio::test]
async fn every_listed_route_has_a_filter() {
    let (service, _) = service();
    let api = routes(service);
    for (method, path) in ROUTES {
        let concrete = path
            .replace("{registrationId}", "x")
            .replace("{deviceId}", "x")
            .replace("{name}", "x");
        let response = warp::test::request()
            .method(method)
            .path(&concrete)
            .reply(&api)
            .await;
        let code = error_code(&response);
        assert!(
            code != "routeNotFound" && code != "methodNotAllowed",
            "{method} {path}: {code}"
        );
    }
}

mod properties {
    //! Event invocations from any JSON: the batch parser never panics and never drops an event
    //! silently; a twin change the hub writes reads back as that change. A fixed seed keeps
    //! every run the same.
    use super::service;
    use crate::api::functions::parse_batch;
    use crate::domain::events::{Change, KEPT_REPORTED};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};
    use serde_json::{json, Map, Value};

    fn config() -> Config {
        Config {
            cases: 128,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(0x5eed_0017),
            ..Config::default()
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 40, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z$]{0,12}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// An invocation of up to four event bodies of any kind, whose metadata arrays hold any
    /// values, JSON-encoded as the host sends them, or not.
    fn invocation() -> impl Strategy<Value = Value> {
        let metadata = || prop::collection::vec(json_value(), 0..4);
        (
            metadata(),
            metadata(),
            metadata(),
            metadata(),
            metadata(),
            any::<bool>(),
        )
            .prop_map(|(bodies, props, sys, enqueued, sequences, encoded)| {
                let put = |v: Vec<Value>| {
                    if encoded {
                        Value::String(Value::Array(v).to_string())
                    } else {
                        Value::Array(v)
                    }
                };
                json!({
                    "Data": { "events": put(bodies) },
                    "Metadata": {
                        "PartitionContext": { "EventHubName": "hub-events", "PartitionId": 3 },
                        "PropertiesArray": put(props),
                        "SystemPropertiesArray": put(sys),
                        "EnqueuedTimeUtcArray": put(enqueued),
                        "SequenceNumberArray": put(sequences),
                    }
                })
            })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn any_invocation_parses_into_events_and_dead_letters_without_a_panic(
            invocation in invocation(), anything in json_value(),
        ) {
            let (service, _) = service();
            let bodies = invocation["Data"]["events"]
                .as_str()
                .map_or_else(|| invocation["Data"]["events"].clone(), |t| serde_json::from_str(t).unwrap());
            let count = bodies.as_array().map_or(0, Vec::len);
            let (events, dead) = parse_batch(&service, "OnHubEvents", &invocation);
            // Each body becomes an event, is skipped as none of the registry's business, or is
            // set aside with a reason; never more than it had.
            prop_assert!(events.len() + dead.len() <= count);
            prop_assert!(dead.iter().all(|d| !d.reason.is_empty()));
            let (events, dead) = parse_batch(&service, "OnHubEvents", &anything);
            prop_assert!(events.is_empty() || anything["Data"].is_object());
            if !anything["Data"].is_object() {
                prop_assert_eq!(dead.len(), 1, "an invocation without events is set aside whole");
            }
        }

        #[test]
        fn a_twin_change_reads_back_as_its_device_version_and_kept_properties(
            device in "[a-zA-Z0-9:._-]{1,30}",
            reported in prop::collection::btree_map(
                prop_oneof![Just("status".to_owned()), Just("firmware".to_owned()), "[a-z]{1,8}"],
                json_value(), 0..5),
            version in 0u64..u64::MAX,
            sequence in 0i64..i64::MAX,
            replace in any::<bool>(),
        ) {
            let (service, _) = service();
            let mut section: Map<String, Value> = reported.clone().into_iter().collect();
            section.insert("$version".into(), json!(version));
            let body = json!({ "properties": { "reported": section } }).to_string();
            let op = if replace { "replaceTwin" } else { "updateTwin" };
            let invocation = json!({
                "Data": { "events": Value::String(json!([body]).to_string()) },
                "Metadata": {
                    "PartitionContext": { "EventHubName": "hub-events", "PartitionId": "0" },
                    "PropertiesArray": json!([{ "hubName": "hub-1", "deviceId": device, "opType": op, "operationTimestamp": "2030-01-01T00:00:00.5Z" }]).to_string(),
                    "SystemPropertiesArray": json!([{ "iothub-message-source": "twinChangeEvents" }]).to_string(),
                    "EnqueuedTimeUtcArray": json!(["2030-01-01T00:00:01"]).to_string(),
                    "SequenceNumberArray": json!([sequence]).to_string(),
                }
            });
            let (events, dead) = parse_batch(&service, "OnHubEvents", &invocation);
            prop_assert!(dead.is_empty(), "{:?}", dead.iter().map(|d| &d.reason).collect::<Vec<_>>());
            prop_assert_eq!(events.len(), 1);
            let event = &events[0];
            prop_assert_eq!(&event.device_id, &device);
            prop_assert_eq!(event.key.sequence, sequence);
            prop_assert_eq!(event.key.partition.as_str(), "0");
            let kept: Map<String, Value> = reported
                .into_iter()
                .filter(|(k, _)| KEPT_REPORTED.contains(&k.as_str()))
                .collect();
            prop_assert_eq!(&event.change, &Change::Twin { reported: Some((kept, version)), replaced: replace });
        }
    }
}

mod dashboard {
    //! The dashboard page without a socket: what a browser is told about it, escaping of what
    //! CRMs and devices wrote, and the same JSON errors as every route.
    use super::{error_code, routes, service};
    use serde_json::json;
    use warp::http::StatusCode;

    #[tokio::test]
    async fn the_page_is_html_kept_to_its_tab_with_a_strict_policy() {
        let (service, _) = service();
        let response = warp::test::request()
            .path("/api/dashboard")
            .reply(&routes(service))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.starts_with("default-src 'none'; style-src 'sha256-"));
        let page = String::from_utf8_lossy(response.body()).into_owned();
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains(r#"id="stage-enrolled">0<"#), "{page}");
        assert!(!page.contains("<script"), "no script at all");
        assert!(!page.contains("src="), "nothing loaded from elsewhere");
    }

    #[tokio::test]
    async fn what_a_crm_or_device_wrote_is_shown_as_text_never_as_markup() {
        let (service, dps) = service();
        let response = warp::test::request()
            .method("POST")
            .path("/api/enrollments")
            .header("content-type", "application/json")
            .json(&json!({
                "registrationId": "xss-1",
                "customer": { "id": "evil", "name": "<script>alert('owned')</script>\"><img src=x onerror=alert(1)>" }
            }))
            .reply(&routes(service.clone()))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        // Registered, never connected: the device is listed with its customer.
        dps.register("xss-1", "hub-1.example");
        let read = warp::test::request()
            .path("/api/devices/xss-1?refresh=true")
            .reply(&routes(service.clone()))
            .await;
        assert_eq!(read.status(), StatusCode::OK);
        let response = warp::test::request()
            .path("/api/dashboard?code=the%2Bkey%3D")
            .reply(&routes(service))
            .await;
        let page = String::from_utf8_lossy(response.body()).into_owned();
        assert!(page.contains(r#"id="never-connected-count">1<"#), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert('owned')&lt;/script&gt;&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"),
            "{page}"
        );
        assert!(!page.contains("<script") && !page.contains("<img"));
        assert!(
            page.contains(r#"href="/api/devices/xss-1?code=the%2Bkey%3D""#),
            "links carry the page's key: {page}"
        );
        assert!(page.contains(r#"href="/api/devices/xss-1/history?code=the%2Bkey%3D""#));
    }

    #[tokio::test]
    async fn a_bad_threshold_or_unknown_parameter_is_a_json_400() {
        let (service, _) = service();
        for path in [
            "/api/dashboard?disconnectedFor=0",
            "/api/dashboard?disconnectedFor=never",
            "/api/dashboard?pageSize=5",
        ] {
            let response = warp::test::request()
                .path(path)
                .reply(&routes(service.clone()))
                .await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
            assert_eq!(error_code(&response), "invalidRequest", "{path}");
        }
        let post = warp::test::request()
            .method("POST")
            .path("/api/dashboard")
            .reply(&routes(service))
            .await;
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
