//! The `sender` role (`device sender`, or the binary called as `telemetry-sender`): keeps a
//! provisioned device connected to its hub and sends telemetry (see `device::sender`). Runs until
//! SIGTERM or Ctrl-C, then flushes what it can.

use crate::dps::DpsArgs;
use anyhow::Context;
use clap::Parser;
use device::assignment::StateDir;
use device::sender::{SenderConfig, Stats};
use device::telemetry::Source;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The sender's command line.
#[derive(Parser)]
#[command(
    version,
    about = "Send a provisioned device's telemetry to its IoT hub"
)]
pub struct Args {
    /// The device's state directory (the assignment the portal stored, and the outbox).
    #[arg(long, env = "DEVICE_STATE_DIR", default_value = "device-state")]
    state_dir: PathBuf,
    /// A JSON-lines file of telemetry (`$UTC_TIME$` is replaced); default: a simulated sensor.
    #[arg(long)]
    telemetry_file: Option<PathBuf>,
    /// Seconds between messages, until the twin's `telemetryIntervalSeconds` says otherwise.
    #[arg(long, default_value_t = 10.0)]
    interval: f64,
    /// Messages kept while offline; past it the oldest are dropped and counted.
    #[arg(long, default_value_t = 10_000)]
    outbox_capacity: usize,
    /// SAS token lifetime in seconds (renewed at 80%).
    #[arg(long, default_value_t = 3600)]
    token_lifetime: u64,
    /// The hubs' MQTT port.
    #[arg(long, default_value_t = 8883)]
    mqtt_port: u16,
    /// A hub's port when it differs (the emulator on free ports): HOST=PORT, repeatable.
    #[arg(long = "hub-port", value_name = "HOST=PORT")]
    hub_ports: Vec<String>,
    #[command(flatten)]
    dps: DpsArgs,
    /// The firmware version.
    #[arg(long, env = "DEVICE_FIRMWARE", default_value = env!("CARGO_PKG_VERSION"))]
    firmware: String,
}

/// Sends telemetry until SIGTERM or Ctrl-C, then drains the outbox for a while.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let extra_ca = args.dps.extra_ca()?;
    let mut hub_ports = BTreeMap::new();
    for pair in &args.hub_ports {
        let (host, port) = pair.split_once('=').context("--hub-port takes HOST=PORT")?;
        hub_ports.insert(
            host.to_owned(),
            port.parse().context("--hub-port takes HOST=PORT")?,
        );
    }
    let info = args.dps.info(args.firmware.clone());
    let provisioner = args.dps.provisioner(extra_ca.as_deref(), info.clone())?;
    let source = match &args.telemetry_file {
        Some(path) => Source::from_file(path).map_err(anyhow::Error::msg)?,
        None => Source::simulated(),
    };
    let config = SenderConfig {
        state: StateDir::new(&args.state_dir),
        extra_ca,
        mqtt_port: args.mqtt_port,
        hub_ports,
        interval: Duration::from_secs_f64(args.interval.clamp(0.05, 3600.0)),
        outbox_capacity: args.outbox_capacity,
        token_lifetime: Duration::from_secs(args.token_lifetime.max(60)),
        window: 16,
        info,
        provisioner,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: flushing the outbox");
        let _ = stop.send(true);
    });
    let stats = Arc::new(Stats::default());
    device::sender::run(config, source, stats.clone(), stopped).await?;
    tracing::info!(?stats, "stopped");
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
