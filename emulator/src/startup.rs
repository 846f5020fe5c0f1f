//! Starting the emulator, one named step per part: open the state, the event hubs, each hub,
//! DPS and the Functions host stand-in, then publish endpoints.json. [`start`] reads as that
//! list; each step binds its own listeners, in the order the parts depend on each other (DPS
//! links the hubs; the Functions host's settings are filled from the published endpoints).

use crate::cloud_state::CloudState;
use crate::config::{
    EmulatorConfig, FunctionsConfig, HubConfig, Persistence, DPS_SERVICE_POLICY, EVENT_HUBS_POLICY,
    HUB_SERVICE_POLICY, REGISTRY_EVENT_HUB,
};
use crate::dps::{self, Dps, DpsSettings, LinkedHub};
use crate::endpoints::{
    self, DpsEndpoints, Endpoints, EventHubsEndpoints, FunctionsEndpoints, HubEndpoints,
};
use crate::events::checkpoints::Checkpoints;
use crate::events::log::{EventStream, Partitioning};
use crate::events::namespace::Namespace;
use crate::events::routing::{Router, BUILT_IN};
use crate::functions;
use crate::hub::{self, Hub, HubSettings, Hubs};
use crate::journaled_store::{Store, StoreError};
use crate::net;
use crate::tls::{LocalCa, TlsError};
use iot_credentials::ServiceConnectionString;
use rustls::ServerConfig;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
                " (ports below 1024 need root or CAP_NET_BIND_SERVICE; pass --https-port 0 to use \
                    a free port)"
            }
            std::io::ErrorKind::AddrInUse => {
                " (another emulator may be running; stop it or \
                choose other ports)"
            }
            std::io::ErrorKind::AddrNotAvailable => " (use a loopback address such as 127.0.0.2)",
            _ => "",
        };
        StartError::Bind {
            address,
            source,
            hint,
        }
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
    let durable = matches!(config.persistence, Persistence::Durable);
    let ca = LocalCa::load_or_create(&config.state_dir)?;
    let store = Arc::new(open_store(&config.state_dir, durable)?);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut servers = Servers {
        tls: server_tls(&ca, &config)?,
        shutdown: shutdown_rx,
        tasks: Vec::new(),
    };
    let namespace = Arc::new(open_event_hubs(&config, durable)?);
    let mut hubs = Vec::new();
    let mut hub_endpoints = Vec::new();
    for hub_config in &config.hubs {
        let (hub, published) = start_hub(
            &config,
            hub_config,
            durable,
            &store,
            &namespace,
            &mut servers,
        )
        .await?;
        hubs.push(hub);
        hub_endpoints.push(published);
    }
    let dps = start_dps(&config, &store, &hubs, &mut servers).await?;
    let mut endpoints = Endpoints {
        ca_certificate_path: std::path::absolute(ca.certificate_path())
            .unwrap_or_else(|_| ca.certificate_path().to_owned()),
        dps: dps.published.clone(),
        hubs: hub_endpoints,
        event_hubs: EventHubsEndpoints {
            namespace: namespace.host_name.clone(),
            event_hubs: namespace.names().map(str::to_owned).collect(),
            connection_string: namespace.connection_string(REGISTRY_EVENT_HUB),
        },
        functions: None,
    };
    let mut functions_host = None;
    if let Some(functions) = &config.functions {
        let (host, published) = start_functions_host(
            &config,
            functions,
            durable,
            &hubs,
            &namespace,
            &endpoints,
            &mut servers,
        )
        .await?;
        endpoints.functions = Some(published);
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
        dps: dps.dps,
        dps_https: dps.https,
        dps_mqtt: dps.mqtt,
        hubs,
        functions: functions_host,
        ca_pem: ca.certificate_pem().to_owned(),
        store,
        shutdown,
        tasks: servers.tasks,
    })
}

/// What every server of the emulator shares: the TLS configuration, the shutdown signal, and
/// the tasks [`RunningEmulator::shutdown`] waits for.
struct Servers {
    tls: Arc<ServerConfig>,
    shutdown: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Serves HTTPS on `listener` until shutdown.
    fn https<H, F>(&mut self, listener: TcpListener, handler: H)
    where
        H: Fn(http::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
        F: std::future::Future<Output = http::Response<net::https::Body>> + Send + 'static,
    {
        self.tasks.push(tokio::spawn(net::https::serve(
            listener,
            self.tls.clone(),
            handler,
            self.shutdown.clone(),
        )));
    }

    /// Serves MQTT over TLS on `listener` until shutdown.
    fn mqtt<S, F>(&mut self, listener: TcpListener, max_packet_size: usize, session: S)
    where
        S: Fn(net::mqtt::Accepted) -> F + Clone + Send + Sync + 'static,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.push(tokio::spawn(net::mqtt::serve(
            listener,
            self.tls.clone(),
            max_packet_size,
            session,
            self.shutdown.clone(),
        )));
    }
}

/// The durable store under `state_dir/cloud`, or one in memory.
fn open_store(state_dir: &Path, durable: bool) -> Result<Store<CloudState>, StoreError> {
    if durable {
        Store::open(&state_dir.join("cloud"))
    } else {
        Ok(Store::in_memory())
    }
}

/// One server certificate for DPS's and every hub's address, issued by the local CA.
fn server_tls(ca: &LocalCa, config: &EmulatorConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let mut addresses = vec![config.dps_address];
    addresses.extend(config.hubs.iter().map(|h| h.address));
    ca.server_config(&addresses, &[])
}

/// An event stream named `name`, kept in `dir` when the state is durable.
fn open_stream(
    config: &EmulatorConfig,
    durable: bool,
    name: &str,
    dir: PathBuf,
) -> Result<EventStream, StartError> {
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
}

/// The Event Hubs namespace with its configured event hubs (round-robin partitioned).
fn open_event_hubs(config: &EmulatorConfig, durable: bool) -> Result<Namespace, StartError> {
    let mut event_hubs = Vec::new();
    for name in &config.event_hubs.event_hubs {
        let dir = config.state_dir.join("eventhubs").join(name);
        event_hubs.push(Arc::new(
            open_stream(config, durable, name, dir)?.partitioned(Partitioning::RoundRobin),
        ));
    }
    Ok(Namespace::new(
        config.event_hubs.host_name.clone(),
        EVENT_HUBS_POLICY.into(),
        config.event_hubs.key.clone(),
        event_hubs,
    ))
}

/// One hub: binds its service (HTTPS) and device (MQTT) listeners, opens its built-in event
/// stream and routes, and serves both; returns it with what endpoints.json says about it.
async fn start_hub(
    config: &EmulatorConfig,
    hub_config: &HubConfig,
    durable: bool,
    store: &Arc<Store<CloudState>>,
    namespace: &Namespace,
    servers: &mut Servers,
) -> Result<(RunningHub, HubEndpoints), StartError> {
    let https_listener = bind(hub_config.address, config.https_port).await?;
    let mqtt_listener = bind(hub_config.address, config.mqtt_port).await?;
    let (https, mqtt) = (local(&https_listener), local(&mqtt_listener));
    let host = hub_config.host_name();
    let service_host = host_with_port(&host, https.port(), 443);
    let events = Arc::new(open_stream(
        config,
        durable,
        &hub_config.name,
        config.state_dir.join("events").join(&hub_config.name),
    )?);
    let router = router(config, namespace, events)?;
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
    servers.https(https_listener, move |request| {
        hub::service_http::handle(service.clone(), request)
    });
    let devices = hub.clone();
    servers.mqtt(
        mqtt_listener,
        hub::device_mqtt::MAX_PACKET_SIZE,
        move |accepted| hub::device_mqtt::session(devices.clone(), accepted),
    );
    let key = config.hub_service_key.clone();
    let published = HubEndpoints {
        name: hub_config.name.clone(),
        host_name: host.clone(),
        connection_string: ServiceConnectionString::new(service_host, HUB_SERVICE_POLICY, key.clone()).expose(),
        mqtt_port: mqtt.port(),
        event_hub_connection_string: format!(
            "Endpoint=sb://{host}/;SharedAccessKeyName={HUB_SERVICE_POLICY};SharedAccessKey={};EntityPath={}",
            key.expose_base64(),
            hub_config.name
        ),
    };
    Ok((RunningHub { hub, https, mqtt }, published))
}

/// A started DPS: the service, where it listens, and what endpoints.json says about it.
struct StartedDps {
    dps: Arc<Dps>,
    https: SocketAddr,
    mqtt: SocketAddr,
    published: DpsEndpoints,
}

/// DPS: binds its HTTPS (service API and device registration) and MQTT listeners, links the
/// started hubs, and serves both.
async fn start_dps(
    config: &EmulatorConfig,
    store: &Arc<Store<CloudState>>,
    hubs: &[RunningHub],
    servers: &mut Servers,
) -> Result<StartedDps, StartError> {
    let https_listener = bind(config.dps_address, config.https_port).await?;
    let mqtt_listener = bind(config.dps_address, config.mqtt_port).await?;
    let (https, mqtt) = (local(&https_listener), local(&mqtt_listener));
    let host = config.dps_address.to_string();
    let service_host = host_with_port(&host, https.port(), 443);
    let dps = Arc::new(Dps::new(
        DpsSettings {
            id_scope: config.id_scope.clone(),
            service_hosts: dedup(vec![host.clone(), service_host.clone()]),
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
        hub_map(hubs),
    ));
    let https_dps = dps.clone();
    servers.https(https_listener, move |request| {
        dps::device_http::handle(https_dps.clone(), request)
    });
    let mqtt_dps = dps.clone();
    servers.mqtt(
        mqtt_listener,
        dps::device_mqtt::MAX_PACKET_SIZE,
        move |accepted| dps::device_mqtt::session(mqtt_dps.clone(), accepted),
    );
    let service_connection_string = ServiceConnectionString::new(
        service_host.clone(),
        DPS_SERVICE_POLICY,
        config.dps_service_key.clone(),
    );
    let published = DpsEndpoints {
        id_scope: config.id_scope.clone(),
        service_connection_string: service_connection_string.expose(),
        device_endpoint: service_host,
        mqtt_host: host,
        mqtt_port: mqtt.port(),
    };
    Ok(StartedDps {
        dps,
        https,
        mqtt,
        published,
    })
}

/// The Functions host stand-in: opens consumer checkpoints and the key store, binds its
/// loopback listener, fills the app settings from `endpoints` (what is published so far), and
/// starts the app; returns it with what endpoints.json says about it.
async fn start_functions_host(
    config: &EmulatorConfig,
    functions: &FunctionsConfig,
    durable: bool,
    hubs: &[RunningHub],
    namespace: &Namespace,
    endpoints: &Endpoints,
    servers: &mut Servers,
) -> Result<(functions::FunctionsHost, FunctionsEndpoints), StartError> {
    let checkpoints = Arc::new(if durable {
        Checkpoints::durable(config.state_dir.join("checkpoints"))
            .map_err(|e| StartError::Events(e.to_string()))?
    } else {
        Checkpoints::in_memory()
    });
    let listener = bind(IpAddr::V4(Ipv4Addr::LOCALHOST), functions.port).await?;
    let overrides = functions::Overrides {
        settings: filled_settings(functions, endpoints)?,
        executable: functions.executable.clone(),
    };
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
    let (host, tasks) = functions::start(
        &functions.app_root,
        overrides,
        listener,
        keys,
        functions::EventSources {
            hubs: &hub_map(hubs),
            namespace,
        },
        checkpoints,
        servers.shutdown.clone(),
    )
    .await?;
    servers.tasks.extend(tasks);
    let published = FunctionsEndpoints {
        base_url: format!("http://{}/{}", host.address, host.app.route_prefix),
        function_key: functions.function_key.clone(),
        master_key: functions.master_key.clone(),
        status_url: format!("http://{}/admin/host/status", host.address),
    };
    Ok((host, published))
}

/// The app settings with their `{…}` placeholders filled from the published endpoints.
fn filled_settings(
    functions: &FunctionsConfig,
    endpoints: &Endpoints,
) -> Result<std::collections::BTreeMap<String, String>, StartError> {
    let published = serde_json::to_value(endpoints).unwrap_or_default();
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
    Ok(settings)
}

/// The started hubs by host name.
fn hub_map(hubs: &[RunningHub]) -> Hubs {
    hubs.iter()
        .map(|h| (h.hub.settings().host_name.clone(), h.hub.clone()))
        .collect()
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
                        "a route names endpoint {:?}, which is neither `events` nor an event hub \
                            of the namespace",
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
