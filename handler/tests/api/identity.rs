//! Table Storage by managed identity, for real: the handler has no account key, only
//! `AzureWebJobsStorage__tableServiceUri` and the stand-in's token service
//! (`IDENTITY_ENDPOINT`/`IDENTITY_HEADER`); Azurite runs with `--oauth basic` over HTTPS under the
//! emulator's CA, so every table call it accepts carried a token it checked (audience, issuer,
//! lifetime).

use crate::helpers::{eventually, spawn_app_with, TestApp};
use base64::Engine;
use serde_json::{json, Value};
use std::path::Path;

/// An Azurite Table service accepting Entra tokens, over HTTPS with a certificate of the
/// emulator's CA.
struct OAuthAzurite {
    _child: tokio::process::Child,
    _files: tempfile::TempDir,
}

impl OAuthAzurite {
    async fn start(app: &TestApp, port: u16) -> Self {
        let ca_dir = Path::new(&app.emulator.endpoints().ca_certificate_path)
            .parent()
            .unwrap()
            .to_owned();
        let ca = emulator::tls::LocalCa::load_or_create(&ca_dir).unwrap();
        let files = tempfile::tempdir().unwrap();
        let (cert, key) = (files.path().join("cert.pem"), files.path().join("key.pem"));
        ca.write_server_certificate(&["127.0.0.1".parse().unwrap()], &cert, &key)
            .unwrap();
        let program = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../emulator/azurite/node_modules/.bin/azurite-table"
        );
        let child = tokio::process::Command::new(program)
            .args(["--inMemoryPersistence", "--disableTelemetry", "--silent"])
            .args(["--tableHost", "127.0.0.1", "--tablePort", &port.to_string()])
            .args(["--oauth", "basic"])
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("Azurite is installed (make test installs it)");
        eventually("Azurite to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        Self {
            _child: child,
            _files: files,
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The app with storage by identity only: the connection string removed (an empty setting is
/// an unset one), the Table service URI of an Azurite that will listen on `port`.
async fn spawn_identity_app(port: u16, extra: &[(&str, &str)]) -> TestApp {
    let uri = format!("https://127.0.0.1:{port}/devstoreaccount1");
    let mut overrides = vec![
        ("AzureWebJobsStorage", ""),
        ("AzureWebJobsStorage__tableServiceUri", uri.as_str()),
    ];
    overrides.extend_from_slice(extra);
    spawn_app_with(&overrides).await
}

async fn device(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/devices/{id}")).await.body
}

#[tokio::test]
async fn with_a_managed_identity_and_no_key_devices_are_enrolled_and_their_events_recorded() {
    let port = free_port();
    let app = spawn_identity_app(port, &[]).await;
    let _azurite = OAuthAzurite::start(&app, port).await;

    app.enroll("identity-1", "c-identity").await;
    let (hub, device_id) = app.register("identity-1").await;
    let record = eventually("the registration to be recorded", || async {
        let d = device(&app, "identity-1").await;
        (d["hub"] == hub.as_str()).then_some(d)
    })
    .await;
    assert_eq!(record["deviceId"], device_id.as_str(), "{record}");
    let mut connection = app.connect("identity-1", &hub, &device_id).await;
    connection
        .report(&json!({ "provisioning": { "status": "running" } }))
        .await
        .unwrap();
    let record = eventually("the connection to be recorded", || async {
        let d = device(&app, "identity-1").await;
        (d["connection"]["state"] == "connected"
            && d["reported"]["provisioningStatus"] == "running")
            .then_some(d)
    })
    .await;
    assert_eq!(record["hub"], hub.as_str(), "{record}");
    connection.close().await;
}

#[tokio::test]
async fn the_token_service_issues_storage_tokens_only_to_the_right_header() {
    let port = free_port();
    let app = spawn_identity_app(port, &[]).await;
    let identity = &app.emulator.functions().unwrap().identity;
    let settings = &app.emulator.functions().unwrap().app.settings;
    let (endpoint, secret) = (&settings["IDENTITY_ENDPOINT"], &settings["IDENTITY_HEADER"]);
    assert_eq!(endpoint, &identity.url);
    let ask = |header: Option<&str>| {
        let mut request = app.http.get(endpoint).query(&[
            ("resource", "https://storage.azure.com/"),
            ("api-version", "2019-08-01"),
        ]);
        if let Some(header) = header {
            request = request.header("X-IDENTITY-HEADER", header);
        }
        request.send()
    };
    assert_eq!(ask(None).await.unwrap().status(), 401);
    assert_eq!(ask(Some("not-the-secret")).await.unwrap().status(), 401);

    let answer: Value = ask(Some(secret)).await.unwrap().json().await.unwrap();
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["resource"], "https://storage.azure.com/");
    let expires_on: i64 = answer["expires_on"].as_str().unwrap().parse().unwrap();
    let claims = answer["access_token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], "https://storage.azure.com");
    assert!(claims["iss"]
        .as_str()
        .unwrap()
        .starts_with("https://sts.windows.net/"));
    assert_eq!(claims["exp"], expires_on);
    assert_eq!(claims["oid"], identity.principal_id.as_str());
}

#[tokio::test]
async fn a_handler_with_the_wrong_identity_header_gets_no_token_and_answers_503() {
    let port = free_port();
    let app = spawn_identity_app(port, &[("IDENTITY_HEADER", "a-stale-header-value")]).await;
    let _azurite = OAuthAzurite::start(&app, port).await;
    let answer = app
        .post(
            "/enrollments",
            &json!({
                "registrationId": "identity-refused",
                "customer": { "id": "c", "name": "Customer c" },
                "asset": { "serialNumber": "SN-1", "model": "T-100" },
            }),
        )
        .await;
    assert_eq!(answer.status, 503, "{}", answer.text);
    assert_eq!(answer.error_code(), "dependencyUnavailable");
    assert!(
        !answer.text.contains("a-stale-header-value"),
        "{}",
        answer.text
    );
}
