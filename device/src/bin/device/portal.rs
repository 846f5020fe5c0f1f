//! The `portal` role (`device portal`, or the binary called as `device-portal`): the setup page a
//! device serves to its owner (see `device::portal`).

use crate::dps::DpsArgs;
use anyhow::Context;
use clap::Parser;
use device::assignment::StateDir;
use device::portal::{serve, Portal, PortalConfig};
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
    #[command(flatten)]
    dps: DpsArgs,
    /// A file the bound address is written to once listening (for scripts and tests).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

/// Serves the portal until Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let extra_ca = args.dps.extra_ca()?;
    let setup_password = match &args.setup_password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let info = args.dps.info(env!("CARGO_PKG_VERSION").into());
    let provisioner = args.dps.provisioner(extra_ca.as_deref(), info)?;
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
