//! `emulator`: runs the local DPS and IoT hubs until interrupted.

use anyhow::{bail, Context};
use clap::Parser;
use emulator::config::{EmulatorConfig, FunctionsConfig, HubConfig, Persistence};
use emulator::dps::rate_limit::Rate;
use emulator::events::routing::RouteConfig;
use iot_credentials::SharedAccessKey;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Local Azure IoT Hub Device Provisioning Service and IoT hubs that official SDKs accept.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Directory for the CA, the state journal and endpoints.json (created if missing).
    #[arg(long, env = "EMULATOR_STATE_DIR")]
    state_dir: PathBuf,
    /// Keep enrollments, registrations and devices in memory only.
    #[arg(long)]
    in_memory: bool,
    /// Loopback address serving DPS (HTTPS and MQTT).
    #[arg(long, default_value = "127.0.0.2")]
    dps_address: IpAddr,
    /// A linked hub: NAME[=ADDRESS][,weight=N]. Repeat for several. Default: hub-1=127.0.0.3 and
    /// hub-2=127.0.0.4. Hubs without an address take the next addresses after the DPS address.
    #[arg(long = "hub", value_name = "NAME[=ADDRESS][,weight=N]")]
    hubs: Vec<String>,
    /// HTTPS port on every address (Azure's is 443; 0 picks free ports).
    #[arg(long, default_value_t = 443)]
    https_port: u16,
    /// MQTT-over-TLS port on every address (Azure's is 8883; 0 picks free ports).
    #[arg(long, default_value_t = 8883)]
    mqtt_port: u16,
    /// The DPS ID scope.
    #[arg(long, default_value = emulator::config::DEFAULT_ID_SCOPE)]
    id_scope: String,
    /// Key of the DPS provisioningserviceowner policy (base64). Default: the documented development key.
    #[arg(long, env = "EMULATOR_DPS_SERVICE_KEY", hide_env_values = true)]
    dps_service_key: Option<String>,
    /// Key of every hub's iothubowner policy (base64). Default: the documented development key.
    #[arg(long, env = "EMULATOR_HUB_SERVICE_KEY", hide_env_values = true)]
    hub_service_key: Option<String>,
    /// Seconds DPS tells devices to wait before polling a registration.
    #[arg(long, default_value_t = 1)]
    registration_retry_after: u64,
    /// DPS's registration rate limit: register calls admitted per minute, the excess answered
    /// 429 with Retry-After (Azure allows 1,000 a minute per unit). 0, the default, is no limit.
    #[arg(long, default_value_t = 0)]
    registration_rate: u32,
    /// Register calls admitted at once under the rate limit (default: one second's worth).
    #[arg(long)]
    registration_burst: Option<u32>,
    /// DPS's service-API rate limit: calls admitted per minute (enrollments, groups, registration
    /// states, queries; a bulk call counts once), the excess answered 429 with Retry-After (Azure
    /// allows 1,000 a minute per unit). 0, the default, is no limit.
    #[arg(long, default_value_t = 0)]
    operation_rate: u32,
    /// Service-API calls admitted at once under that limit (default: one second's worth).
    #[arg(long)]
    operation_burst: Option<u32>,
    /// Run this custom-handler function app (host.json, function folders, local.settings.json)
    /// in the Functions host stand-in.
    #[arg(long)]
    functions_app: Option<PathBuf>,
    /// Port of the Functions host stand-in on 127.0.0.1 (7071 as `func start`; 0 picks one).
    #[arg(long, default_value_t = 7071)]
    functions_port: u16,
    /// Function key of the stand-in. Default: the documented development key.
    #[arg(long, env = "EMULATOR_FUNCTION_KEY", hide_env_values = true)]
    function_key: Option<String>,
    /// Master key of the stand-in (admin API, every function). Default: the documented
    /// development key.
    #[arg(long, env = "EMULATOR_MASTER_KEY", hide_env_values = true)]
    master_key: Option<String>,
    /// An app setting for the function app, replacing local.settings.json's (repeatable):
    /// `NAME=VALUE`, where VALUE may name endpoints.json values in braces, such as
    /// `DPS_SERVICE_CONNECTION_STRING={dps.serviceConnectionString}`.
    #[arg(long = "functions-setting", value_name = "NAME=VALUE")]
    functions_settings: Vec<String>,
    /// The custom handler executable, instead of host.json's defaultExecutablePath.
    #[arg(long)]
    functions_executable: Option<PathBuf>,
    /// Events kept in memory per partition of each hub's event stream.
    #[arg(long, default_value_t = emulator::events::log::DEFAULT_RETENTION)]
    event_retention: usize,
    /// A route of every hub, SOURCE=ENDPOINT (DeviceMessages, TwinChangeEvents,
    /// DeviceLifecycleEvents, DeviceConnectionStateEvents; `events` or an event hub of the
    /// namespace); repeat. Given, they replace the default routes.
    #[arg(long = "route", value_name = "SOURCE=ENDPOINT")]
    routes: Vec<String>,
    /// Turns the fallback route off (telemetry no route takes is then dropped).
    #[arg(long)]
    no_fallback_route: bool,
    /// Host name of the Event Hubs namespace (it only names it in connection strings).
    #[arg(long, default_value = "127.0.0.5")]
    event_hubs_namespace: String,
    /// An event hub of the namespace (repeat; default hub-events).
    #[arg(long = "event-hub", value_name = "NAME")]
    event_hubs: Vec<String>,
}

fn parse_hub(
    spec: &str,
    next_address: &mut impl FnMut() -> Option<IpAddr>,
) -> anyhow::Result<HubConfig> {
    let mut parts = spec.split(',');
    let head = parts.next().unwrap_or_default();
    let (name, address) = match head.split_once('=') {
        Some((name, address)) => (
            name,
            Some(
                address
                    .parse::<IpAddr>()
                    .with_context(|| format!("hub {name}: {address:?} is not an IP address"))?,
            ),
        ),
        None => (head, None),
    };
    if name.is_empty() {
        bail!("hub {spec:?} has no name");
    }
    let mut allocation_weight = 1;
    for option in parts {
        match option.split_once('=') {
            Some(("weight", n)) => {
                allocation_weight = n
                    .parse()
                    .with_context(|| format!("hub {name}: weight {n:?} is not a whole number"))?
            }
            _ => bail!("hub {name}: unknown option {option:?} (expected weight=N)"),
        }
    }
    let address = match address {
        Some(address) => address,
        None => next_address()
            .with_context(|| format!("hub {name}: no address left after the DPS address"))?,
    };
    Ok(HubConfig {
        name: name.to_owned(),
        address,
        allocation_weight,
    })
}

fn config(args: Args) -> anyhow::Result<EmulatorConfig> {
    let mut config = EmulatorConfig::new(args.state_dir);
    if args.in_memory {
        config.persistence = Persistence::InMemory;
    }
    config.dps_address = args.dps_address;
    if !args.hubs.is_empty() {
        let mut next = match args.dps_address {
            IpAddr::V4(v4) => u32::from(v4),
            IpAddr::V6(_) => 0,
        };
        let mut next_address = || {
            next = next.checked_add(1)?;
            (next != 0).then(|| IpAddr::V4(next.into()))
        };
        config.hubs = args
            .hubs
            .iter()
            .map(|spec| parse_hub(spec, &mut next_address))
            .collect::<anyhow::Result<_>>()?;
    }
    config.https_port = args.https_port;
    config.mqtt_port = args.mqtt_port;
    config.id_scope = args.id_scope;
    if let Some(key) = args.dps_service_key {
        config.dps_service_key = SharedAccessKey::from_base64(&key).context("--dps-service-key")?;
    }
    if let Some(key) = args.hub_service_key {
        config.hub_service_key = SharedAccessKey::from_base64(&key).context("--hub-service-key")?;
    }
    config.registration_retry_after = Duration::from_secs(args.registration_retry_after);
    config.event_retention = args.event_retention;
    config.registration_rate = rate_limit(
        args.registration_rate,
        args.registration_burst,
        "registration",
    )?;
    config.operation_rate = rate_limit(args.operation_rate, args.operation_burst, "operation")?;
    if !args.routes.is_empty() {
        config.routes = args
            .routes
            .iter()
            .map(|r| RouteConfig::parse(r).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?;
    }
    config.fallback_route = !args.no_fallback_route;
    config.event_hubs.host_name = args.event_hubs_namespace;
    if !args.event_hubs.is_empty() {
        config.event_hubs.event_hubs = args.event_hubs;
    }
    if let Some(app_root) = args.functions_app {
        let mut functions = FunctionsConfig::new(app_root);
        functions.port = args.functions_port;
        if let Some(key) = args.function_key {
            functions.function_key = key;
        }
        if let Some(key) = args.master_key {
            functions.master_key = key;
        }
        for setting in args.functions_settings {
            let (name, value) = setting
                .split_once('=')
                .with_context(|| format!("--functions-setting {setting:?}: use NAME=VALUE"))?;
            functions
                .settings
                .push((name.trim().to_owned(), value.to_owned()));
        }
        functions.executable = args.functions_executable;
        config.functions = Some(functions);
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = config(Args::parse())?;
    let state_dir = config.state_dir.clone();
    let running = emulator::start(config).await?;
    let endpoints = running.endpoints();
    tracing::info!(
        dps.https = %running.dps_https_address(),
        dps.mqtt = %running.dps_mqtt_address(),
        id_scope = %endpoints.dps.id_scope,
        hubs = ?endpoints.hubs.iter().map(|h| format!("{}={}", h.name, h.host_name)).collect::<Vec<_>>(),
        endpoints = %state_dir.join(emulator::endpoints::FILE_NAME).display(),
        "emulator ready"
    );
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await?;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// A rate limit from `--{name}-rate` (per minute; 0 is none) and `--{name}-burst`.
fn rate_limit(per_minute: u32, burst: Option<u32>, name: &str) -> anyhow::Result<Option<Rate>> {
    match (per_minute, burst) {
        (0, None) => Ok(None),
        (0, Some(_)) => bail!("--{name}-burst needs --{name}-rate"),
        (per_minute, burst) => {
            let mut rate = Rate::per_minute(per_minute);
            if let Some(burst) = burst {
                rate.burst = burst.max(1);
            }
            Ok(Some(rate))
        }
    }
}
