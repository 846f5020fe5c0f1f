//! A running emulator as its clients reach it: its endpoints.json, read, and clients of its DPS
//! and hubs that trust its CA. The `fleet` tool and the benchmarks start every command here.

use super::device::{DeviceCredentials, HttpsRegistrar};
use super::hub_device::Endpoint;
use super::load::Target;
use super::service::DpsService;
use super::{client_tls, https_client, ClientError};
use crate::endpoints::{Endpoints, HubEndpoints};
use iot_credentials::{ServiceConnectionString, SharedAccessKey};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the emulator's endpoints.json, or a client built from it, is unusable.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not an endpoints.json.
    #[error("{path} is not an emulator endpoints.json: {source}")]
    NotEndpoints {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The DPS service connection string does not parse.
    #[error("the DPS service connection string: {0}")]
    ConnectionString(String),
    /// A client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A hub host name that endpoints.json does not list.
    #[error("DPS assigned a hub that endpoints.json does not list")]
    UnknownHub,
    /// A hub host name that is not an IP address (the emulator's hubs listen on loopback ones).
    #[error("hub host {host:?} is not an IP address")]
    HubAddress {
        /// The host name.
        host: String,
    },
}

/// Reads and parses an emulator's endpoints.json.
pub fn read_endpoints(path: &Path) -> Result<Endpoints, EndpointsError> {
    let text = std::fs::read(path).map_err(|source| EndpointsError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| EndpointsError::NotEndpoints {
        path: path.to_owned(),
        source,
    })
}

/// The emulator named by an endpoints.json, with clients for it.
pub struct Emulator {
    /// What endpoints.json says.
    pub endpoints: Endpoints,
    /// The DPS service API (enrollments, registrations).
    pub service: DpsService,
    /// DPS device registration over HTTPS, on one shared connection pool.
    pub registrar: HttpsRegistrar,
    /// TLS settings that trust the emulator's CA.
    pub tls: Arc<rustls::ClientConfig>,
}

impl Emulator {
    /// Reads endpoints.json at `path` and the CA it names, and builds the clients.
    pub fn load(path: &Path) -> Result<Self, EndpointsError> {
        let endpoints = read_endpoints(path)?;
        let ca = std::fs::read_to_string(&endpoints.ca_certificate_path).map_err(|source| {
            EndpointsError::Read {
                path: endpoints.ca_certificate_path.clone(),
                source,
            }
        })?;
        let connection = ServiceConnectionString::parse(&endpoints.dps.service_connection_string)
            .map_err(|e| EndpointsError::ConnectionString(e.to_string()))?;
        let http = https_client(&ca)?;
        Ok(Self {
            service: DpsService::new(connection, &ca)?,
            registrar: HttpsRegistrar::new(http, &endpoints.dps.device_endpoint),
            tls: Arc::new(client_tls(&ca)?),
            endpoints,
        })
    }

    /// A device of this emulator's DPS with the given registration id and key.
    pub fn device(&self, registration_id: &str, key: SharedAccessKey) -> DeviceCredentials {
        DeviceCredentials {
            id_scope: self.endpoints.dps.id_scope.clone(),
            registration_id: registration_id.to_owned(),
            key,
        }
    }

    /// The hub with this host name, as endpoints.json lists it.
    pub fn hub_entry(&self, host: &str) -> Result<&HubEndpoints, EndpointsError> {
        self.endpoints
            .hubs
            .iter()
            .find(|h| h.host_name == host)
            .ok_or(EndpointsError::UnknownHub)
    }

    /// The hub's name and host name for a reader, or the host name alone for an unknown hub.
    pub fn hub_name(&self, host: &str) -> String {
        self.hub_entry(host)
            .map_or_else(|_| host.to_owned(), |h| format!("{} ({host})", h.name))
    }

    /// Where the hub with this host name takes MQTT connections.
    pub fn hub_endpoint(&self, host: &str) -> Result<Endpoint, EndpointsError> {
        let hub = self.hub_entry(host)?;
        let ip = host.parse().map_err(|_| EndpointsError::HubAddress {
            host: host.to_owned(),
        })?;
        Ok(Endpoint {
            address: std::net::SocketAddr::new(ip, hub.mqtt_port),
            host: host.to_owned(),
            tls: self.tls.clone(),
        })
    }

    /// Every hub's MQTT endpoint by the host name DPS assigns.
    pub fn hub_endpoints(&self) -> Result<HashMap<String, Endpoint>, EndpointsError> {
        self.endpoints
            .hubs
            .iter()
            .map(|hub| Ok((hub.host_name.clone(), self.hub_endpoint(&hub.host_name)?)))
            .collect()
    }

    /// Where devices register with this emulator's DPS, over either transport.
    pub fn registration_target(&self) -> Target {
        Target {
            https_endpoint: self.endpoints.dps.device_endpoint.clone(),
            mqtt_host: self.endpoints.dps.mqtt_host.clone(),
            mqtt_port: self.endpoints.dps.mqtt_port,
            tls: self.tls.clone(),
        }
    }
}
