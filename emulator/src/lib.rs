//! A local, protocol-faithful stand-in for Azure IoT Hub Device Provisioning Service and
//! IoT Hub, good enough that Microsoft's own SDKs cannot tell the difference.
//!
//! Layout:
//! - [`config`]: what to serve, where, with which development keys.
//! - [`tls`]: the local CA (created on first start) and the server certificate.
//! - [`journaled_store`], [`cloud_state`]: the store that journals every change to a model and
//!   folds the journal into a snapshot, and the model it holds (DPS records, hub registries).
//! - [`azure_format`]: etags, identifiers and timestamps as Azure writes them.
//! - [`net`]: HTTPS and MQTT-over-TLS listeners, and the MQTT 3.1.1 codec.
//! - [`dps`]: the Device Provisioning Service (service API, device registration, allocation).
//! - [`hub`]: the IoT hubs (identity registry; service API).
//! - [`endpoints`]: `endpoints.json`, how clients find the emulator.
//! - [`events`]: each hub's event stream and consumer checkpoints.
//! - [`functions`]: the Azure Functions host stand-in for a custom-handler app.
//! - [`fleet`]: clients of the emulator for the `fleet` tool (demo, load generator) and tests.
//!
//! [`start`] binds every listener (port 0 picks free ports, so tests run in parallel), writes
//! endpoints.json and returns a handle that stops everything cleanly.

pub mod azure_format;
pub mod base64_bytes;
pub mod cloud_state;
pub mod config;
pub mod dps;
pub mod endpoints;
pub mod events;
pub mod fleet;
pub mod functions;
pub mod hub;
pub mod journaled_store;
pub mod net;
pub mod tls;

use cloud_state::CloudState;
use config::{
    EmulatorConfig, Persistence, DPS_SERVICE_POLICY, EVENT_HUBS_POLICY, HUB_SERVICE_POLICY,
    REGISTRY_EVENT_HUB,
};
use dps::{Dps, DpsSettings, LinkedHub};
use endpoints::{DpsEndpoints, Endpoints, EventHubsEndpoints, FunctionsEndpoints, HubEndpoints};
use events::checkpoints::Checkpoints;
use events::log::{EventStream, Partitioning};
use events::namespace::Namespace;
use events::routing::{Router, BUILT_IN};
use hub::{Hub, HubSettings, Hubs};
use iot_credentials::ServiceConnectionString;
use journaled_store::{Store, StoreError};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use tls::{LocalCa, TlsError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Certificates could not be made or loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// State could not be loaded.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}{hint}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The error.
        source: std::io::Error,
        /// Advice for the common cases.
        hint: &'static str,
    },
    /// The Functions host stand-in could not start.
    #[error("the Functions host stand-in cannot start: {0}")]
    Functions(#[from] functions::FunctionsError),
    /// An event stream could not be opened.
    #[error("cannot open the event streams: {0}")]
    Events(String),
    /// endpoints.json could not be written.
    #[error("cannot write endpoints.json in {dir}: {source}")]
    Endpoints {
        /// The state directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A running emulator. Dropping it without [`RunningEmulator::shutdown`] stops the listeners
/// when the runtime ends, but skips the final snapshot (the journal still has everything).
pub struct RunningEmulator {
    endpoints: Endpoints,
    dps: Arc<Dps>,
    dps_https: SocketAddr,
    dps_mqtt: SocketAddr,
    hubs: Vec<RunningHub>,
    functions: Option<functions::FunctionsHost>,
    ca_pem: String,
    store: Arc<Store<CloudState>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// One hub of a running emulator.
pub struct RunningHub {
    /// The hub.
    pub hub: Arc<Hub>,
    /// Where it serves its service API.
    pub https: SocketAddr,
    /// Where devices connect.
    pub mqtt: SocketAddr,
}

impl RunningEmulator {
    /// The provisioning service (to throttle it in tests of clients' backoff).
    pub fn dps(&self) -> &Dps {
        &self.dps
    }

    /// What endpoints.json says.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Where DPS serves HTTPS.
    pub fn dps_https_address(&self) -> SocketAddr {
        self.dps_https
    }

    /// Where DPS serves MQTT.
    pub fn dps_mqtt_address(&self) -> SocketAddr {
        self.dps_mqtt
    }

    /// The hubs, in configuration order.
    pub fn hubs(&self) -> &[RunningHub] {
        &self.hubs
    }

    /// Where each hub serves HTTPS, in configuration order.
    pub fn hub_https_addresses(&self) -> Vec<SocketAddr> {
        self.hubs.iter().map(|h| h.https).collect()
    }

    /// The hub with this host name.
    pub fn hub(&self, host_name: &str) -> Option<&RunningHub> {
        self.hubs
            .iter()
            .find(|h| h.hub.settings().host_name == host_name)
    }

    /// The Functions host stand-in, when it runs.
    pub fn functions(&self) -> Option<&functions::FunctionsHost> {
        self.functions.as_ref()
    }

    /// The CA certificate clients must trust (PEM).
    pub fn ca_certificate_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Stops every listener, lets open requests finish, and folds the journal into a snapshot.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.store.close()
    }
}

async fn bind(address: IpAddr, port: u16) -> Result<TcpListener, StartError> {
    let address = SocketAddr::new(address, port);
    TcpListener::bind(address).await.map_err(|source| {
        let hint = match source.kind() {
            std::io::ErrorKind::PermissionDenied => {
                " (ports below 1024 need root or CAP_NET_BIND_SERVICE; pass --https-port 0 to use a free port)"
            }
            std::io::ErrorKind::AddrInUse => " (another emulator may be running; stop it or choose other ports)",
            std::io::ErrorKind::AddrNotAvailable => " (use a loopback address such as 127.0.0.2)",
            _ => "",
        };
        StartError::Bind { address, source, hint }
    })
}

/// How a host is written in a connection string: the bare host on Azure's port, `host:port`
/// otherwise.
fn host_with_port(host: &str, port: u16, default: u16) -> String {
    if port == default {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    }
}

/// Starts the emulator: loads (or creates) the CA and state, binds every listener, writes
/// endpoints.json.
pub async fn start(config: EmulatorConfig) -> Result<RunningEmulator, StartError> {
    let ca = LocalCa::load_or_create(&config.state_dir)?;
    let durable = matches!(config.persistence, Persistence::Durable);
    let store = Arc::new(if durable {
        Store::open(&config.state_dir.join("cloud"))?
    } else {
        Store::in_memory()
    });
    let mut addresses = vec![config.dps_address];
    addresses.extend(config.hubs.iter().map(|h| h.address));
    let tls = ca.server_config(&addresses, &[])?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let open_stream = |name: &str, dir: PathBuf| -> Result<EventStream, StartError> {
        if durable {
            EventStream::open(name, &dir, config.event_partitions, config.event_retention)
                .map_err(|e| StartError::Events(e.to_string()))
        } else {
            Ok(EventStream::in_memory(
                name,
                config.event_partitions,
                config.event_retention,
            ))
        }
    };
    let mut event_hubs = Vec::new();
    for name in &config.event_hubs.event_hubs {
        let dir = config.state_dir.join("eventhubs").join(name);
        event_hubs.push(Arc::new(
            open_stream(name, dir)?.partitioned(Partitioning::RoundRobin),
        ));
    }
    let namespace = Arc::new(Namespace::new(
        config.event_hubs.host_name.clone(),
        EVENT_HUBS_POLICY.into(),
        config.event_hubs.key.clone(),
        event_hubs,
    ));
    let mut hubs = Vec::new();
    let mut hub_endpoints = Vec::new();
    for hub_config in &config.hubs {
        let https_listener = bind(hub_config.address, config.https_port).await?;
        let mqtt_listener = bind(hub_config.address, config.mqtt_port).await?;
        let (https, mqtt) = (local(&https_listener), local(&mqtt_listener));
        let host = hub_config.host_name();
        let service_host = host_with_port(&host, https.port(), 443);
        let events = Arc::new(open_stream(
            &hub_config.name,
            config.state_dir.join("events").join(&hub_config.name),
        )?);
        let router = router(&config, &namespace, events)?;
        let hub = Arc::new(Hub::new(
            HubSettings {
                name: hub_config.name.clone(),
                host_name: host.clone(),
                service_hosts: dedup(vec![host.clone(), service_host.clone()]),
                service_policy: HUB_SERVICE_POLICY.into(),
                service_key: config.hub_service_key.clone(),
            },
            store.clone(),
            router,
        ));
        let service = hub.clone();
        tasks.push(tokio::spawn(net::https::serve(
            https_listener,
            tls.clone(),
            move |request| hub::service_http::handle(service.clone(), request),
            shutdown_rx.clone(),
        )));
        let devices = hub.clone();
        tasks.push(tokio::spawn(net::mqtt::serve(
            mqtt_listener,
            tls.clone(),
            hub::device_mqtt::MAX_PACKET_SIZE,
            move |accepted| hub::device_mqtt::session(devices.clone(), accepted),
            shutdown_rx.clone(),
        )));
        let key = config.hub_service_key.clone();
        hub_endpoints.push(HubEndpoints {
            name: hub_config.name.clone(),
            host_name: host.clone(),
            connection_string: ServiceConnectionString::new(service_host, HUB_SERVICE_POLICY, key.clone()).expose(),
            mqtt_port: mqtt.port(),
            event_hub_connection_string: format!(
                "Endpoint=sb://{host}/;SharedAccessKeyName={HUB_SERVICE_POLICY};SharedAccessKey={};EntityPath={}",
                key.expose_base64(),
                hub_config.name
            ),
        });
        hubs.push(RunningHub { hub, https, mqtt });
    }

    let mut functions_host = None;
    let dps_https_listener = bind(config.dps_address, config.https_port).await?;
    let dps_mqtt_listener = bind(config.dps_address, config.mqtt_port).await?;
    let dps_https = local(&dps_https_listener);
    let dps_mqtt = local(&dps_mqtt_listener);
    let dps_host = config.dps_address.to_string();
    let dps_service_host = host_with_port(&dps_host, dps_https.port(), 443);
    let hub_map: Hubs = hubs
        .iter()
        .map(|h| (h.hub.settings().host_name.clone(), h.hub.clone()))
        .collect();
    let dps = Arc::new(Dps::new(
        DpsSettings {
            id_scope: config.id_scope.clone(),
            service_hosts: dedup(vec![dps_host.clone(), dps_service_host.clone()]),
            service_policy: DPS_SERVICE_POLICY.into(),
            service_key: config.dps_service_key.clone(),
            linked_hubs: config
                .hubs
                .iter()
                .map(|h| LinkedHub {
                    host_name: h.host_name(),
                    allocation_weight: h.allocation_weight,
                })
                .collect(),
            retry_after: config.registration_retry_after,
            webhook_timeout: config.webhook_timeout,
            registration_rate: config.registration_rate,
            operation_rate: config.operation_rate,
        },
        store.clone(),
        hub_map,
    ));
    let https_dps = dps.clone();
    tasks.push(tokio::spawn(net::https::serve(
        dps_https_listener,
        tls.clone(),
        move |request| dps::device_http::handle(https_dps.clone(), request),
        shutdown_rx.clone(),
    )));
    let mqtt_dps = dps.clone();
    tasks.push(tokio::spawn(net::mqtt::serve(
        dps_mqtt_listener,
        tls.clone(),
        dps::device_mqtt::MAX_PACKET_SIZE,
        move |accepted| dps::device_mqtt::session(mqtt_dps.clone(), accepted),
        shutdown_rx.clone(),
    )));

    let service_connection_string = ServiceConnectionString::new(
        dps_service_host.clone(),
        DPS_SERVICE_POLICY,
        config.dps_service_key.clone(),
    );
    let endpoints = Endpoints {
        ca_certificate_path: std::path::absolute(ca.certificate_path())
            .unwrap_or_else(|_| ca.certificate_path().to_owned()),
        dps: DpsEndpoints {
            id_scope: config.id_scope.clone(),
            service_connection_string: service_connection_string.expose(),
            device_endpoint: dps_service_host,
            mqtt_host: dps_host,
            mqtt_port: dps_mqtt.port(),
        },
        hubs: hub_endpoints,
        event_hubs: EventHubsEndpoints {
            namespace: namespace.host_name.clone(),
            event_hubs: namespace.names().map(str::to_owned).collect(),
            connection_string: namespace.connection_string(REGISTRY_EVENT_HUB),
        },
        functions: None,
    };
    let mut endpoints = endpoints;
    if let Some(functions) = &config.functions {
        let checkpoints = Arc::new(if durable {
            Checkpoints::durable(config.state_dir.join("checkpoints"))
                .map_err(|e| StartError::Events(e.to_string()))?
        } else {
            Checkpoints::in_memory()
        });
        let listener = bind(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), functions.port).await?;
        let hub_map: Hubs = hubs
            .iter()
            .map(|h| (h.hub.settings().host_name.clone(), h.hub.clone()))
            .collect();
        let published = serde_json::to_value(&endpoints).unwrap_or_default();
        let mut settings = std::collections::BTreeMap::new();
        for (name, template) in &functions.settings {
            let value = endpoints::fill(template, &published).map_err(|reason| {
                StartError::Functions(functions::FunctionsError::Setting {
                    name: name.clone(),
                    reason,
                })
            })?;
            settings.insert(name.clone(), value);
        }
        let keys = Arc::new(if durable {
            functions::keys::KeyStore::durable(
                &config.state_dir,
                &functions.master_key,
                &functions.function_key,
            )
            .map_err(|e| StartError::Functions(e.into()))?
        } else {
            functions::keys::KeyStore::in_memory(&functions.master_key, &functions.function_key)
        });
        let overrides = functions::Overrides {
            settings,
            executable: functions.executable.clone(),
        };
        let (host, functions_tasks) = functions::start(
            &functions.app_root,
            overrides,
            listener,
            keys,
            functions::EventSources {
                hubs: &hub_map,
                namespace: &namespace,
            },
            checkpoints,
            shutdown_rx.clone(),
        )
        .await?;
        tasks.extend(functions_tasks);
        endpoints.functions = Some(FunctionsEndpoints {
            base_url: format!("http://{}/{}", host.address, host.app.route_prefix),
            function_key: functions.function_key.clone(),
            master_key: functions.master_key.clone(),
            status_url: format!("http://{}/admin/host/status", host.address),
        });
        functions_host = Some(host);
    }
    endpoints
        .write(&config.state_dir)
        .map_err(|source| StartError::Endpoints {
            dir: config.state_dir.clone(),
            source,
        })?;
    Ok(RunningEmulator {
        endpoints,
        dps: dps.clone(),
        dps_https,
        dps_mqtt,
        hubs,
        functions: functions_host,
        ca_pem: ca.certificate_pem().to_owned(),
        store,
        shutdown,
        tasks,
    })
}

/// A hub's routes, with each endpoint name resolved to the built-in stream or an event hub of
/// the namespace; an endpoint that names neither stops the start.
fn router(
    config: &EmulatorConfig,
    namespace: &Namespace,
    built_in: Arc<EventStream>,
) -> Result<Router, StartError> {
    let mut routes = Vec::new();
    for route in &config.routes {
        let endpoint = if route.endpoint.eq_ignore_ascii_case(BUILT_IN) {
            built_in.clone()
        } else {
            namespace
                .event_hub(&route.endpoint)
                .cloned()
                .ok_or_else(|| {
                    StartError::Events(format!(
                        "a route names endpoint {:?}, which is neither `events` nor an event hub of the namespace",
                        route.endpoint
                    ))
                })?
        };
        routes.push((route.source, endpoint));
    }
    Ok(Router::new(routes, built_in, config.fallback_route))
}

fn local(listener: &TcpListener) -> SocketAddr {
    // A bound listener always has a local address; fall back to unspecified defensively.
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

fn dedup(mut hosts: Vec<String>) -> Vec<String> {
    hosts.dedup();
    hosts
}
