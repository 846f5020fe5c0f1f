//! `handler`: the custom handler the Azure Functions host starts (host.json names it). Reads the
//! app settings, wires storage and the Azure clients together, and serves on
//! FUNCTIONS_CUSTOMHANDLER_PORT until the host stops it.

use anyhow::Context;
use handler::cloud::dps::DpsClient;
use handler::cloud::https_client;
use handler::cloud::hub::HubClients;
use handler::service::notify::Notifier;
use handler::service::CodeSettings;
use handler::storage::tables::{http_client_trusting, TableRegistry};
use handler::{Config, Service};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How often queued notifications are looked at without a wake-up (retries coming due).
const NOTIFY_PERIOD: Duration = Duration::from_secs(2);

// One thread: the handler waits on storage, DPS and hubs far more than it computes, and on the
// small instances Functions runs it on, a single thread serves more requests than a pool whose
// threads fight the storage client for the same cores (docs/benchmarks.md). Functions scales out
// by adding instances.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // warp's own lines for every request repeat what the host logs of each call.
                .unwrap_or_else(|_| "info,warp::filters::trace=off".into()),
        )
        .with_ansi(false)
        .init();
    let config = Config::from_env()?;
    let https = https_client(config.extra_ca.as_deref())
        .map_err(anyhow::Error::msg)
        .context("the HTTPS client for DPS and IoT Hub could not be built")?;
    let storage_http = http_client_trusting(config.extra_ca.as_deref())
        .map_err(anyhow::Error::msg)
        .context("the HTTP client for Table Storage could not be built")?;
    let registry = Arc::new(TableRegistry::with_access(
        &config.storage,
        &config.table_prefix,
        storage_http,
    ));
    let service = Arc::new(Service {
        store: registry.clone(),
        dead_letters: registry.clone(),
        outbox: registry.clone(),
        dps: Arc::new(DpsClient::new(config.dps.clone(), https.clone())),
        hubs: Arc::new(HubClients::new(&config.hubs, https.clone())),
        notifier: Arc::new(
            Notifier::new(config.webhook.clone(), https).with_retry(config.notify_retry),
        ),
        codes: CodeSettings {
            id_scope: config.id_scope.clone(),
            device_endpoint: config.device_endpoint.clone(),
        },
        hub_names: config.hub_names.clone(),
        events_cache: Default::default(),
        rotations_in_flight: Default::default(),
    });
    // The host forwards on loopback; nothing else should reach the handler.
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, config.port));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    // Create the tables while the first requests arrive, rather than before listening.
    tokio::spawn(async move {
        if let Err(error) = registry.ensure_tables().await {
            tracing::warn!(
                %error,
                "the registry tables could not be created yet; requests will retry"
            );
        }
    });
    tracing::info!(%address, hubs = config.hubs.len(), "the handler is listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let notifier = tokio::spawn(service.clone().run_notifier(NOTIFY_PERIOD, async move {
        let mut stop = stop_rx;
        let _ = stop.wait_for(|s| *s).await;
    }));
    handler::serve(listener, service, shutdown()).await;
    let _ = stop_tx.send(true);
    let _ = notifier.await;
    tracing::info!("the handler stopped");
    Ok(())
}

/// Completes on SIGTERM (how the host stops its worker) or Ctrl-C.
async fn shutdown() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
