//! `event-recorder`: a minimal Azure Functions custom handler for trying the Functions host
//! stand-in (used by its contract tests and by `make demo`).
//!
//! - Listens on `FUNCTIONS_CUSTOMHANDLER_PORT`.
//! - `POST /{FunctionName}` (non-HTTP triggers): appends `{"function", "invocationId", "request"}`
//!   as one JSON line to `$EVENT_RECORDER_LOG`, answers `{"Outputs":{},"Logs":[…],"ReturnValue":null}`.
//!   `EVENT_RECORDER_FAIL_FIRST=Name:N[,Name:N]` makes the first N invocations of a function
//!   answer 500, to exercise retry policies.
//! - `/api/...` (forwarded HTTP triggers): answers with a JSON echo of method, path, query and
//!   body.
//! - `EVENT_RECORDER_PID_FILE`, when set, receives the process id (tests kill the handler with it).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

struct Recorder {
    log: Option<Mutex<std::fs::File>>,
    fail_first: Mutex<HashMap<String, u32>>,
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn handle(
    recorder: Arc<Recorder>,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let invocation_id = request
        .headers()
        .get("x-azure-functions-invocationid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // How the body came: tests check that the stand-in frames requests as the host does.
    let framing = match (
        request.headers().get("content-length"),
        request.headers().get("transfer-encoding"),
    ) {
        (Some(length), _) => format!("length {}", length.to_str().unwrap_or_default()),
        (None, Some(encoding)) => encoding.to_str().unwrap_or_default().to_owned(),
        (None, None) => "none".to_owned(),
    };
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({ "error": "unreadable body" }),
            )
        }
    };
    if path.starts_with("/api/") {
        return reply(
            StatusCode::OK,
            json!({ "method": method, "path": path, "query": query, "body": String::from_utf8_lossy(&body), "framing": framing, "pid": std::process::id() }),
        );
    }
    let function = path.trim_matches('/').to_owned();
    let failing = {
        let mut fail_first = recorder
            .fail_first
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match fail_first.get_mut(&function) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        }
    };
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(log) = &recorder.log {
        let line = json!({ "function": function, "invocationId": invocation_id, "failed": failing, "framing": framing, "request": request });
        let mut file = log.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(file, "{line}");
        let _ = file.flush();
    }
    if failing {
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": "failing on purpose (EVENT_RECORDER_FAIL_FIRST)" }),
        );
    }
    reply(
        StatusCode::OK,
        json!({ "Outputs": {}, "Logs": [format!("{function} recorded")], "ReturnValue": null }),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT")?.parse()?;
    if let Ok(path) = std::env::var("EVENT_RECORDER_PID_FILE") {
        std::fs::write(path, std::process::id().to_string())?;
    }
    let log = match std::env::var("EVENT_RECORDER_LOG") {
        Ok(path) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        )),
        Err(_) => None,
    };
    let fail_first = std::env::var("EVENT_RECORDER_FAIL_FIRST")
        .unwrap_or_default()
        .split(',')
        .filter_map(|spec| {
            let (name, count) = spec.split_once(':')?;
            Some((name.to_owned(), count.parse().ok()?))
        })
        .collect();
    let recorder = Arc::new(Recorder {
        log,
        fail_first: Mutex::new(fail_first),
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let recorder = recorder.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(recorder, request).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
