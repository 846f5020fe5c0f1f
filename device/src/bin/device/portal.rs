//! The `portal` role (`device portal`, or the binary called as `device-portal`): the setup page a
//! device serves to its owner (see `device::portal`).

use anyhow::Context;
use clap::Parser;
use device::assignment::StateDir;
use device::portal::{serve, Portal, PortalConfig};
use device::provision::{DeviceInfo, DpsTransport, Provisioner};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The portal's command line.
#[derive(Parser)]
#[command(version, about = "Serve the device's setup portal")]
pub struct Args {
    /// Where to listen. Loopback by default: expose it on a network only on purpose.
    #[arg(long, env = "PORTAL_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The device's state directory (shared with the sender).
    #[arg(long, env = "DEVICE_STATE_DIR", default_value = "device-state")]
    state_dir: PathBuf,
    /// The DPS endpoint used with hand-typed fields.
    #[arg(
        long,
        env = "DPS_DEVICE_ENDPOINT",
        default_value = "global.azure-devices-provisioning.net"
    )]
    dps_endpoint: String,
    /// A file holding the device's setup password (needed to change a provisioned device).
    #[arg(long, env = "DEVICE_SETUP_PASSWORD_FILE")]
    setup_password_file: Option<PathBuf>,
    /// A PEM file of an extra CA to trust (the emulator's).
    #[arg(long, env = "EXTRA_TRUSTED_CA_FILE")]
    extra_ca_file: Option<PathBuf>,
    /// How the device reaches DPS.
    #[arg(long, value_enum, default_value = "https")]
    dps_transport: DpsTransport,
    /// DPS's MQTT port, for `--dps-transport mqtt`.
    #[arg(long, default_value_t = 8883)]
    dps_mqtt_port: u16,
    /// The device's model, sent to DPS.
    #[arg(long, env = "DEVICE_MODEL")]
    model: Option<String>,
    /// The device's serial number, sent to DPS.
    #[arg(long, env = "DEVICE_SERIAL")]
    serial: Option<String>,
    /// A file the bound address is written to once listening (for scripts and tests).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

/// Serves the portal until Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let extra_ca = match &args.extra_ca_file {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => None,
    };
    let setup_password = match &args.setup_password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let mut provisioner = Provisioner::new(extra_ca.as_deref()).map_err(anyhow::Error::msg)?;
    provisioner.transport = args.dps_transport;
    provisioner.mqtt_port = args.dps_mqtt_port;
    provisioner.info = DeviceInfo {
        model: args.model,
        serial_number: args.serial,
        firmware: Some(env!("CARGO_PKG_VERSION").into()),
    };
    let portal = Portal::new(PortalConfig {
        state: StateDir::new(&args.state_dir),
        provisioner,
        default_endpoint: args.dps_endpoint,
        setup_password,
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(url = %format!("http://{address}/"), "the setup portal is listening");
    if let Some(path) = &args.ready_file {
        std::fs::write(path, address.to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    serve(listener, portal, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
