//! What the emulator serves, where, and with which credentials.
//!
//! Default keys and the ID scope are fixed development values, published here and in
//! docs/emulator.md the way Azurite publishes `devstoreaccount1`: they protect nothing, and being
//! the same on every machine lets examples and scripts work without copying secrets around.

use crate::events::routing::{RouteConfig, Source, BUILT_IN};
use iot_credentials::SharedAccessKey;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

/// The default ID scope of the emulated DPS instance.
pub const DEFAULT_ID_SCOPE: &str = "0ne00EMU001";
/// The DPS service policy that the published connection string uses.
pub const DPS_SERVICE_POLICY: &str = "provisioningserviceowner";
/// Default key of the DPS service policy (development value, public).
pub const DEFAULT_DPS_SERVICE_KEY: &str =
    "RW11bGF0ZWQgRFBTIHNlcnZpY2Uga2V5OyBkZXZlbG9wbWVudCB1c2Ugb25seSEhISE=";
/// The IoT Hub service policy that the published connection strings use.
pub const HUB_SERVICE_POLICY: &str = "iothubowner";
/// Default key of every hub's service policy (development value, public).
pub const DEFAULT_HUB_SERVICE_KEY: &str =
    "RW11bGF0ZWQgSW9UIEh1YiBvd25lciBrZXk7IGRldmVsb3BtZW50IHVzZSBvbmx5ISE=";
/// Default function key of the Functions host stand-in (development value, public).
pub const DEFAULT_FUNCTION_KEY: &str = "local-function-key-for-development-only";
/// Default master key of the Functions host stand-in (development value, public).
pub const DEFAULT_MASTER_KEY: &str = "local-master-key-for-development-only";

/// The Event Hubs namespace's shared access policy that the published connection string uses.
pub const EVENT_HUBS_POLICY: &str = "RootManageSharedAccessKey";
/// Default key of the namespace policy (development value, public).
pub const DEFAULT_EVENT_HUBS_KEY: &str =
    "RW11bGF0ZWQgRXZlbnQgSHVicyBuYW1lc3BhY2Uga2V5OyBkZXZlbG9wbWVudCBvbmx5";
/// The event hub the registry's routes send hub events to.
pub const REGISTRY_EVENT_HUB: &str = "hub-events";

/// The sources the registry follows.
const REGISTRY_SOURCES: [Source; 3] = [
    Source::DeviceLifecycleEvents,
    Source::TwinChangeEvents,
    Source::DeviceConnectionStateEvents,
];

/// Loopback address of the DPS endpoints when none is given.
pub const DEFAULT_DPS_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// One emulated IoT hub linked to the DPS instance.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Short name, as in an Azure resource name (`hub-1`); shown in endpoints.json and events.
    pub name: String,
    /// The loopback address that serves this hub; its text is the hub's host name.
    pub address: IpAddr,
    /// Allocation weight for the hashed policy (0 takes the hub out of hashed allocation).
    pub allocation_weight: u32,
}

impl HubConfig {
    /// The host name devices and DPS use for this hub (the address, so it resolves anywhere).
    pub fn host_name(&self) -> String {
        self.address.to_string()
    }
}

/// Where state lives.
#[derive(Debug, Clone)]
pub enum Persistence {
    /// Enrollments, registrations and device identities survive restarts (journal in the state dir).
    Durable,
    /// Nothing is written but the CA and endpoints.json; used by tests.
    InMemory,
}

/// The Functions host stand-in: which app to run and where. `Debug` shows no key and no setting's
/// value (settings hold connection strings).
#[derive(Clone)]
pub struct FunctionsConfig {
    /// The app root (host.json, function folders, local.settings.json).
    pub app_root: PathBuf,
    /// Port on 127.0.0.1 (7071 as `func start`; 0 picks a free port).
    pub port: u16,
    /// The function key.
    pub function_key: String,
    /// The master key.
    pub master_key: String,
    /// App settings that replace local.settings.json's, as `(name, value)`. A value may name
    /// parts of endpoints.json in braces (`{dps.serviceConnectionString}`,
    /// `{hubs.0.connectionString}`), filled in once the emulator's ports are known.
    pub settings: Vec<(String, String)>,
    /// The handler executable, instead of host.json's defaultExecutablePath.
    pub executable: Option<PathBuf>,
}

impl std::fmt::Debug for FunctionsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let setting_names: Vec<&str> = self
            .settings
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        f.debug_struct("FunctionsConfig")
            .field("app_root", &self.app_root)
            .field("port", &self.port)
            .field("function_key", &"<redacted>")
            .field("master_key", &"<redacted>")
            .field("settings", &setting_names)
            .field("executable", &self.executable)
            .finish()
    }
}

impl FunctionsConfig {
    /// The app at `app_root` on port 7071 with the development keys.
    pub fn new(app_root: impl Into<PathBuf>) -> Self {
        Self {
            app_root: app_root.into(),
            port: 7071,
            function_key: DEFAULT_FUNCTION_KEY.into(),
            master_key: DEFAULT_MASTER_KEY.into(),
            settings: Vec::new(),
            executable: None,
        }
    }
}

/// Everything the emulator needs to start.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Holds the CA, the journal and endpoints.json.
    pub state_dir: PathBuf,
    /// Durable or in-memory state.
    pub persistence: Persistence,
    /// Address of the DPS HTTPS and MQTT endpoints.
    pub dps_address: IpAddr,
    /// The hubs linked to DPS.
    pub hubs: Vec<HubConfig>,
    /// HTTPS port on every address (443 as in Azure; 0 picks a free port per listener).
    pub https_port: u16,
    /// MQTT-over-TLS port on every address (8883 as in Azure; 0 picks a free port per listener).
    pub mqtt_port: u16,
    /// The DPS ID scope.
    pub id_scope: String,
    /// Key of the `provisioningserviceowner` policy.
    pub dps_service_key: SharedAccessKey,
    /// Key of each hub's `iothubowner` policy.
    pub hub_service_key: SharedAccessKey,
    /// The `Retry-After` DPS answers while a registration is assigning. Azure sends a few
    /// seconds; the emulator defaults to one so tests and demos move quickly.
    pub registration_retry_after: Duration,
    /// How long a custom allocation webhook may take before the registration fails.
    pub webhook_timeout: Duration,
    /// DPS's registration rate limit (429 with Retry-After beyond it). Off by default: Azure's
    /// 1,000 a minute per unit would throttle every benchmark and load test; storms turn it on.
    pub registration_rate: Option<crate::dps::rate_limit::Rate>,
    /// DPS's service-API rate limit (429 with Retry-After beyond it). Off by default, as the
    /// registration limit is; Azure admits 1,000 operations a minute per unit.
    pub operation_rate: Option<crate::dps::rate_limit::Rate>,
    /// Partitions of each hub's event stream.
    pub event_partitions: usize,
    /// Events kept per partition (older ones are dropped, as retention does in Event Hubs).
    pub event_retention: usize,
    /// The Event Hubs namespace whose event hubs are custom routing endpoints of every hub.
    pub event_hubs: EventHubsConfig,
    /// Every hub's routes. The default sends the non-telemetry events both to the built-in
    /// endpoint and to the registry's event hub, so clients of either see them;
    /// [`EmulatorConfig::registry_routes`] is what infra/ deploys.
    pub routes: Vec<RouteConfig>,
    /// The fallback route: telemetry no route takes goes to the built-in endpoint.
    pub fallback_route: bool,
    /// The Functions host stand-in, if an app is to run.
    pub functions: Option<FunctionsConfig>,
}

/// An emulated Event Hubs namespace. It has no network endpoint of its own (the stand-in reads
/// it in-process); its host name only names it in connection strings.
#[derive(Debug, Clone)]
pub struct EventHubsConfig {
    /// The namespace's host name (`<namespace>.servicebus.windows.net` in Azure).
    pub host_name: String,
    /// Its event hubs.
    pub event_hubs: Vec<String>,
    /// Key of its `RootManageSharedAccessKey` policy.
    pub key: SharedAccessKey,
}

impl EmulatorConfig {
    /// The defaults: DPS on 127.0.0.2, two hubs on 127.0.0.3 and 127.0.0.4, Azure's ports.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            persistence: Persistence::Durable,
            dps_address: IpAddr::V4(DEFAULT_DPS_ADDRESS),
            hubs: vec![
                HubConfig {
                    name: "hub-1".into(),
                    address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
                    allocation_weight: 1,
                },
                HubConfig {
                    name: "hub-2".into(),
                    address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)),
                    allocation_weight: 1,
                },
            ],
            https_port: 443,
            mqtt_port: 8883,
            id_scope: DEFAULT_ID_SCOPE.into(),
            dps_service_key: development_key(DEFAULT_DPS_SERVICE_KEY),
            hub_service_key: development_key(DEFAULT_HUB_SERVICE_KEY),
            registration_retry_after: Duration::from_secs(1),
            webhook_timeout: Duration::from_secs(10),
            registration_rate: None,
            operation_rate: None,
            event_partitions: crate::events::log::DEFAULT_PARTITIONS,
            event_retention: crate::events::log::DEFAULT_RETENTION,
            event_hubs: EventHubsConfig {
                host_name: "127.0.0.5".into(),
                event_hubs: vec![REGISTRY_EVENT_HUB.into()],
                key: development_key(DEFAULT_EVENT_HUBS_KEY),
            },
            routes: [BUILT_IN, REGISTRY_EVENT_HUB]
                .into_iter()
                .flat_map(|endpoint| {
                    REGISTRY_SOURCES.map(|source| RouteConfig {
                        source,
                        endpoint: endpoint.into(),
                    })
                })
                .collect(),
            fallback_route: true,
            functions: None,
        }
    }

    /// The routes infra/ gives every hub: lifecycle, twin-change and connection-state events
    /// to the registry's event hub; telemetry stays on the built-in endpoint (fallback route).
    pub fn registry_routes() -> Vec<RouteConfig> {
        REGISTRY_SOURCES
            .map(|source| RouteConfig {
                source,
                endpoint: REGISTRY_EVENT_HUB.into(),
            })
            .to_vec()
    }

    /// A configuration for tests: in memory, free ports, no waiting between polls.
    pub fn for_tests(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            persistence: Persistence::InMemory,
            https_port: 0,
            mqtt_port: 0,
            registration_retry_after: Duration::ZERO,
            webhook_timeout: Duration::from_secs(5),
            ..Self::new(state_dir)
        }
    }
}

fn development_key(text: &str) -> SharedAccessKey {
    // The constants above are valid base64; a typo would fail every test at once.
    #[allow(clippy::expect_used)]
    SharedAccessKey::from_base64(text).expect("development keys are valid base64")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_shows_no_key_and_no_setting_value() {
        let mut config = EmulatorConfig::new("/tmp/x");
        config.functions = Some(FunctionsConfig {
            function_key: "function-key-value-1".into(),
            master_key: "master-key-value-2".into(),
            settings: vec![("STORAGE".into(), "AccountKey=setting-value-3".into())],
            ..FunctionsConfig::new("/tmp/app")
        });
        let shown = format!("{config:?}");
        for secret in [
            "function-key-value-1",
            "master-key-value-2",
            "setting-value-3",
            DEFAULT_DPS_SERVICE_KEY,
            DEFAULT_HUB_SERVICE_KEY,
            DEFAULT_EVENT_HUBS_KEY,
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("STORAGE"), "setting names stay: {shown}");
        let spec = crate::hub::DeviceSpec {
            primary_key: Some("device-key-value-4".into()),
            ..Default::default()
        };
        assert!(!format!("{spec:?}").contains("device-key-value-4"));
        let module = crate::hub::modules::ModuleSpec {
            primary_key: Some("module-key-value-5".into()),
            ..Default::default()
        };
        assert!(!format!("{module:?}").contains("module-key-value-5"));
    }

    #[test]
    fn development_keys_are_valid_and_long_enough_for_azure() {
        let config = EmulatorConfig::new("/tmp/x");
        assert!(config.dps_service_key.len() >= 32);
        assert!(config.hub_service_key.len() >= 32);
        assert_ne!(config.dps_address, config.hubs[0].address);
    }
}
