//! The handler started the way the Functions host starts it: its settings in the environment, a
//! free port, and the time from exec to its first answered request.

use anyhow::Context;
use emulator::endpoints::Endpoints;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// What every handler the benchmark starts shares: its executable, the emulator it uses for DPS
/// and the hubs, and Azurite.
pub struct HandlerSettings {
    /// The handler executable.
    pub executable: PathBuf,
    /// The emulator's endpoints.json, read.
    pub endpoints: Endpoints,
    /// Azurite's connection string (AzureWebJobsStorage).
    pub storage: String,
}

/// A running handler; killed when dropped.
pub struct Handler {
    /// The process.
    pub child: tokio::process::Child,
    /// Its API's base URL, `http://127.0.0.1:PORT/api`.
    pub base: String,
    spawned: Instant,
}

impl Handler {
    /// The handler's resident memory now, in KiB (0 once it has exited).
    pub fn resident_kib(&self) -> u64 {
        crate::memory::resident_kib(self.child.id())
    }

    /// The function app's root URL (event functions sit beside `/api`, not under it).
    pub fn root(&self) -> &str {
        self.base.trim_end_matches("/api")
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts a handler whose registry tables are named with `table_prefix`, with the settings the
/// host would give it.
pub fn spawn(settings: &HandlerSettings, table_prefix: &str) -> anyhow::Result<Handler> {
    let port = free_port()?;
    let endpoints = &settings.endpoints;
    let hubs: Vec<&str> = endpoints
        .hubs
        .iter()
        .map(|h| h.connection_string.as_str())
        .collect();
    let mut command = tokio::process::Command::new(&settings.executable);
    command
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env(
            "DPS_SERVICE_CONNECTION_STRING",
            &endpoints.dps.service_connection_string,
        )
        .env("DPS_ID_SCOPE", &endpoints.dps.id_scope)
        .env("DPS_DEVICE_ENDPOINT", &endpoints.dps.device_endpoint)
        .env("IOTHUB_CONNECTION_STRINGS", hubs.join("|"))
        .env("EXTRA_TRUSTED_CA_FILE", &endpoints.ca_certificate_path)
        .env("AzureWebJobsStorage", &settings.storage)
        .env("REGISTRY_TABLE_PREFIX", table_prefix)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let spawned = Instant::now();
    let child = command.spawn().context("starting the handler")?;
    Ok(Handler {
        child,
        base: format!("http://127.0.0.1:{port}/api"),
        spawned,
    })
}

/// Polls until the handler answers a request (bounded); the time from exec to that answer.
pub async fn first_answer(http: &reqwest::Client, handler: &Handler) -> anyhow::Result<Duration> {
    let deadline = handler.spawned + Duration::from_secs(10);
    loop {
        if let Ok(response) = http
            .get(format!("{}/openapi.json", handler.base))
            .send()
            .await
        {
            if response.status().is_success() {
                return Ok(handler.spawned.elapsed());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the handler did not answer within 10 s"
        );
        tokio::task::yield_now().await;
    }
}

/// Starts a handler and waits for its first answer.
pub async fn start(
    http: &reqwest::Client,
    settings: &HandlerSettings,
    table_prefix: &str,
) -> anyhow::Result<Handler> {
    let handler = spawn(settings, table_prefix)?;
    first_answer(http, &handler).await?;
    Ok(handler)
}
