//! The harness: an emulator (DPS, two hubs, the Functions host stand-in) running the repository's
//! function app laid out as the package is, storing in the Azurite that `make test` started.

use emulator::config::{EmulatorConfig, FunctionsConfig, HubConfig};
use emulator::fleet::device::{DeviceCredentials, HttpsRegistrar};
use emulator::fleet::hub_device::{DeviceConnection, Endpoint};
use emulator::fleet::{client_tls, https_client};
use emulator::RunningEmulator;
use iot_credentials::{ProvisioningCode, StorageConnectionString};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tempfile::TempDir;

/// The variable `make test` sets (scripts/with-azurite.sh).
const AZURITE: &str = "AZURITE_TABLE_ENDPOINT";
/// The packaged function app to run, when set (`make test` sets it to dist/function-app).
const FUNCTION_APP: &str = "FUNCTION_APP";

pub struct TestApp {
    pub emulator: RunningEmulator,
    /// What the emulator was started with (a restart starts it again with the same).
    config: EmulatorConfig,
    _state: TempDir,
    pub base_url: String,
    pub function_key: String,
    pub master_key: String,
    pub http: reqwest::Client,
    /// Trusts the emulator's CA, for device-side calls.
    pub device_http: reqwest::Client,
    /// The registry's table names start with this.
    pub table_prefix: String,
}

/// An answer as tests look at it.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Answer {
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

pub fn azurite_endpoint() -> String {
    std::env::var(AZURITE).unwrap_or_else(|_| {
        panic!("{AZURITE} is not set: these tests need Azurite. Run them with `make test`, or `scripts/with-azurite.sh cargo test -p handler`.")
    })
}

fn repository_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The function app the tests run: the package in `FUNCTION_APP` (`make test` builds it and sets
/// this, so the tests run what would be deployed), or else a package-shaped app that
/// scripts/package.sh lays out around the handler cargo built for this run (so a plain
/// `cargo test` tests the code as it is now, never an older package). This harness is shared by
/// test crates that cargo builds no handler for (dpsctl's): they set `crate::HANDLER_BINARY` to
/// `None` and need `FUNCTION_APP`.
fn function_app() -> &'static Path {
    static APP: OnceLock<PathBuf> = OnceLock::new();
    APP.get_or_init(|| {
        if let Some(dir) = std::env::var_os(FUNCTION_APP) {
            let dir = PathBuf::from(dir);
            assert!(
                dir.join("host.json").is_file() && dir.join("handler").is_file(),
                "{FUNCTION_APP}={} holds no packaged function app (host.json and handler): run `make package`",
                dir.display()
            );
            return dir;
        }
        let handler = crate::HANDLER_BINARY.unwrap_or_else(|| {
            panic!("{FUNCTION_APP} is not set: run `make package` and set {FUNCTION_APP}=$PWD/dist/function-app (make test does both)")
        });
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("function-app");
        let status = Command::new(repository_root().join("scripts/package.sh"))
            .arg("layout")
            .arg(handler)
            .arg(&dir)
            .status()
            .expect("scripts/package.sh runs");
        assert!(status.success(), "scripts/package.sh layout failed");
        dir
    })
}

/// The development app settings of local.settings.json, which the package leaves out (in Azure
/// app settings live with the app, not in its files).
fn local_settings() -> Vec<(String, String)> {
    let path = repository_root().join("local.settings.json");
    let text = std::fs::read_to_string(&path).expect("local.settings.json is readable");
    let file: Value = serde_json::from_str(&text).expect("local.settings.json is JSON");
    file["Values"]
        .as_object()
        .expect("local.settings.json has Values")
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().map_or_else(|| v.to_string(), str::to_owned),
            )
        })
        .collect()
}

/// The app, with the handler's settings pointed at this emulator and a fresh set of tables.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Like [`spawn_app`] with some settings replaced (to point a dependency somewhere broken).
pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_on(&[], overrides).await
}

/// Like [`spawn_app_with`] with more hubs than the two of every test app: `(name, address)`.
pub async fn spawn_app_on(extra_hubs: &[(&str, &str)], overrides: &[(&str, &str)]) -> TestApp {
    let (config, state, table_prefix) = app_config(extra_hubs, overrides);
    launch(config, state, table_prefix).await
}

/// Like [`spawn_app`] with the emulator's configuration adjusted (a DPS rate limit, say).
pub async fn spawn_app_adjusted(adjust: impl FnOnce(&mut EmulatorConfig)) -> TestApp {
    let (mut config, state, table_prefix) = app_config(&[], &[]);
    adjust(&mut config);
    launch(config, state, table_prefix).await
}

/// The emulator's configuration for a test app, its state folder and its tables' prefix.
fn app_config(
    extra_hubs: &[(&str, &str)],
    overrides: &[(&str, &str)],
) -> (EmulatorConfig, TempDir, String) {
    let state = tempfile::tempdir().unwrap();
    let mut config = EmulatorConfig::for_tests(state.path());
    config
        .hubs
        .extend(extra_hubs.iter().map(|(name, address)| HubConfig {
            name: (*name).to_owned(),
            address: address.parse().unwrap(),
            allocation_weight: 1,
        }));
    // The hubs route as infra/ deploys them: only to the registry's event hub.
    config.routes = EmulatorConfig::registry_routes();
    let table_prefix = format!("T{}", uuid::Uuid::new_v4().simple());
    let storage = StorageConnectionString::development(&azurite_endpoint()).expose();
    let mut settings: Vec<(String, String)> = [
        (
            "DPS_SERVICE_CONNECTION_STRING",
            "{dps.serviceConnectionString}",
        ),
        ("DPS_ID_SCOPE", "{dps.idScope}"),
        ("DPS_DEVICE_ENDPOINT", "{dps.deviceEndpoint}"),
        (
            "IOTHUB_CONNECTION_STRINGS",
            "{hubs.0.connectionString}|{hubs.1.connectionString}",
        ),
        ("EXTRA_TRUSTED_CA_FILE", "{caCertificatePath}"),
        ("REGISTRY_EVENTS", "{eventHubs.connectionString}"),
        ("AzureWebJobsStorage", storage.as_str()),
        ("REGISTRY_TABLE_PREFIX", table_prefix.as_str()),
        ("RUST_LOG", "warn"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (name, value) in overrides {
        settings.retain(|(k, _)| k != name);
        settings.push(((*name).to_owned(), (*value).to_owned()));
    }
    let mut app_settings = local_settings();
    app_settings.retain(|(name, _)| settings.iter().all(|(k, _)| k != name));
    app_settings.extend(settings);
    config.functions = Some(FunctionsConfig {
        port: 0,
        settings: app_settings,
        ..FunctionsConfig::new(function_app())
    });
    (config, state, table_prefix)
}

/// Like [`spawn_app`], with the emulator's state on disk (enrollments, identities, twins, event
/// streams and the host's checkpoints) and every port fixed, so that
/// [`TestApp::restart_emulator`] can stop it and start it again where it was.
pub async fn spawn_restartable_app() -> TestApp {
    let (mut config, state, table_prefix) = app_config(&[], &[]);
    config.persistence = emulator::config::Persistence::Durable;
    let mut addresses = vec![config.dps_address];
    addresses.extend(config.hubs.iter().map(|h| h.address));
    config.https_port = port_free_on(&addresses);
    config.mqtt_port = loop {
        let port = port_free_on(&addresses);
        if port != config.https_port {
            break port;
        }
    };
    if let Some(functions) = config.functions.as_mut() {
        functions.port = port_free_on(&[std::net::Ipv4Addr::LOCALHOST.into()]);
    }
    launch(config, state, table_prefix).await
}

/// A port nothing listens on at any of `addresses` (the emulator binds DPS and each hub on one
/// port, each on its own address).
fn port_free_on(addresses: &[std::net::IpAddr]) -> u16 {
    for _ in 0..100 {
        let first = std::net::TcpListener::bind((addresses[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        if addresses[1..]
            .iter()
            .all(|address| std::net::TcpListener::bind((*address, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port is free on all of {addresses:?}");
}

/// Starts the emulator and waits for its function app.
async fn launch(config: EmulatorConfig, state: TempDir, table_prefix: String) -> TestApp {
    let emulator = emulator::start(config.clone())
        .await
        .expect("the emulator and the function app start");
    let host = emulator.functions().expect("the Functions host runs");
    assert!(
        host.handler.wait_ready_for(Duration::from_secs(30)).await,
        "the handler did not start listening"
    );
    let functions = emulator.endpoints().functions.clone().unwrap();
    let device_http = https_client(emulator.ca_certificate_pem()).unwrap();
    TestApp {
        base_url: functions.base_url,
        function_key: functions.function_key,
        master_key: functions.master_key,
        http: reqwest::Client::builder()
            // Past the stand-in's own 230 s limit on an HTTP answer (Azure's front end has the
            // same): the stand-in answers first, so a test sees its verdict, and a busy machine
            // making a large import slow fails no test (speed is `make bench`'s to measure).
            .timeout(Duration::from_secs(240))
            .build()
            .unwrap(),
        device_http,
        emulator,
        config,
        _state: state,
        table_prefix,
    }
}

/// Polls `check` until it answers `Some` (at most ~20 s): for effects of events, which arrive
/// asynchronously and announce nothing.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..400 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 20 s");
}

impl TestApp {
    /// Stops the emulator (DPS, hubs, the Functions host and its handler) and starts it again
    /// over its state, on the same ports; only for a [`spawn_restartable_app`].
    pub async fn restart_emulator(self) -> TestApp {
        assert!(
            matches!(
                self.config.persistence,
                emulator::config::Persistence::Durable
            ),
            "only a restartable app keeps its state across a restart"
        );
        let TestApp {
            emulator,
            config,
            _state: state,
            table_prefix,
            ..
        } = self;
        emulator.shutdown().await.unwrap();
        launch(config, state, table_prefix).await
    }

    /// The handler itself, behind the stand-in (where the host sends non-HTTP invocations).
    pub fn handler_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.emulator.functions().unwrap().handler.port()
        )
    }

    /// Runs a timer function now, through the stand-in's admin API.
    pub async fn run_function(&self, name: &str) -> u16 {
        let base = self.base_url.trim_end_matches("/api");
        self.http
            .post(format!("{base}/admin/functions/{name}"))
            .header("x-functions-key", emulator::config::DEFAULT_MASTER_KEY)
            .json(&json!({ "input": "" }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Makes the reader key as `make up` does: one value, set through the stand-in's admin keys
    /// API (`PUT /admin/functions/{name}/keys/reader`, master key) on every function that
    /// functions/readers.json lists.
    pub async fn create_reader_key(&self) -> String {
        let text = std::fs::read_to_string(repository_root().join("functions/readers.json"))
            .expect("functions/readers.json is readable");
        let readers: Value = serde_json::from_str(&text).expect("functions/readers.json is JSON");
        let name = readers["keyName"].as_str().unwrap();
        let value = format!("reader-{}", uuid::Uuid::new_v4().simple());
        let base = self.base_url.trim_end_matches("/api");
        for function in readers["functions"].as_array().unwrap() {
            let function = function.as_str().unwrap();
            let status = self
                .http
                .put(format!("{base}/admin/functions/{function}/keys/{name}"))
                .header("x-functions-key", &self.master_key)
                .json(&json!({ "name": name, "value": value }))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 201, "the reader key is made on {function}");
        }
        value
    }

    /// A request with the function key.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base_url))
            .header("x-functions-key", &self.function_key)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the Functions host answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            text,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value, if_match: Option<&str>) -> Answer {
        let mut request = self.request(Method::PATCH, path).json(body);
        if let Some(etag) = if_match {
            request = request.header("if-match", etag);
        }
        self.send(request).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// Enrolls a device as a CRM would; panics unless it is created.
    pub async fn enroll(&self, id: &str, customer: &str) -> Answer {
        let answer = self
            .post(
                "/enrollments",
                &json!({
                    "registrationId": id,
                    "customer": { "id": customer, "name": format!("Customer {customer}") },
                    "asset": { "serialNumber": format!("SN-{id}"), "model": "T-100", "attributes": { "color": "blue" } },
                    "initialTwin": { "tags": { "site": "berlin" }, "desiredProperties": { "interval": 30 } },
                }),
            )
            .await;
        assert_eq!(answer.status, 201, "{}", answer.text);
        answer
    }

    /// The device's provisioning code, parsed.
    pub async fn code(&self, id: &str) -> ProvisioningCode {
        let answer = self
            .get(&format!("/enrollments/{id}/provisioning-code"))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        ProvisioningCode::parse(answer.body["code"].as_str().unwrap()).unwrap()
    }

    /// Registers the device with DPS as the device would (HTTPS), from its provisioning code.
    pub async fn register(&self, id: &str) -> (String, String) {
        let code = self.code(id).await;
        let registrar = HttpsRegistrar::new(self.device_http.clone(), &code.endpoint);
        let credentials = DeviceCredentials {
            id_scope: code.id_scope.clone(),
            registration_id: code.registration_id.clone(),
            key: code.device_key.clone(),
        };
        let state = registrar
            .register(&credentials, None)
            .await
            .expect("the device registers");
        (state.assigned_hub.unwrap(), state.device_id.unwrap())
    }

    /// Connects the device to its hub over MQTT.
    pub async fn connect(&self, id: &str, hub: &str, device_id: &str) -> DeviceConnection {
        let code = self.code(id).await;
        let endpoints = self.emulator.endpoints();
        let hub = endpoints
            .hubs
            .iter()
            .find(|h| h.host_name == hub)
            .expect("the assigned hub is one of the emulator's");
        let endpoint = Endpoint {
            address: format!("{}:{}", hub.host_name, hub.mqtt_port)
                .parse()
                .unwrap(),
            host: hub.host_name.clone(),
            tls: Arc::new(client_tls(self.emulator.ca_certificate_pem()).unwrap()),
        };
        DeviceConnection::connect_device(&endpoint, device_id, &code.device_key)
            .await
            .expect("the device connects")
    }
}

/// A device provisioned from its provisioning code, as the portal does: its state folder (the
/// assignment, later the outbox) and the telemetry sender's configuration for this app.
pub struct ProvisionedDevice {
    pub id: String,
    pub dir: TempDir,
    pub state: device::assignment::StateDir,
    pub config: device::sender::SenderConfig,
}

impl TestApp {
    /// Provisions the enrolled `id` through DPS with its provisioning code and stores the
    /// assignment, ready for the sender (readings every half second; tests change what they need).
    pub async fn provision_device(&self, id: &str) -> ProvisionedDevice {
        use device::provision::{DeviceInfo, Provisioner};
        let code = self.code(id).await;
        let ca = self.emulator.ca_certificate_pem().to_owned();
        let mut provisioner = Provisioner::new(Some(&ca)).unwrap();
        provisioner.deadline = Duration::from_secs(60);
        provisioner.info = DeviceInfo {
            model: Some("T-100".into()),
            serial_number: Some(format!("SN-{id}")),
            firmware: Some("1.0.0".into()),
        };
        let dir = tempfile::tempdir().unwrap();
        let state = device::assignment::StateDir::new(dir.path());
        let assignment = provisioner
            .provision(&device::assignment::Credentials::from(code))
            .await
            .unwrap();
        state.save(&assignment).unwrap();
        let config = device::sender::SenderConfig {
            state: state.clone(),
            extra_ca: Some(ca),
            mqtt_port: 8883,
            hub_ports: self
                .emulator
                .endpoints()
                .hubs
                .iter()
                .map(|h| (h.host_name.clone(), h.mqtt_port))
                .collect(),
            interval: Duration::from_millis(500),
            outbox_capacity: 1000,
            token_lifetime: Duration::from_secs(3600),
            window: 16,
            info: provisioner.info.clone(),
            provisioner,
        };
        ProvisionedDevice {
            id: id.to_owned(),
            dir,
            state,
            config,
        }
    }
}
