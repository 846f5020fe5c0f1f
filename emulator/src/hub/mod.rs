//! The emulated IoT hubs.
//!
//! - [`registry`]: device identities and twins, created by DPS assignment.
//! - [`service_http`]: the read side of the hub's service REST API (devices and twins).

pub mod registry;
pub mod service_http;

use iot_credentials::SharedAccessKey;

/// One hub's service-side configuration.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Short name (`hub-1`).
    pub name: String,
    /// Host name devices and DPS use.
    pub host_name: String,
    /// Host names a service token may name (with and without the port).
    pub service_hosts: Vec<String>,
    /// The service policy name.
    pub service_policy: String,
    /// The service policy key.
    pub service_key: SharedAccessKey,
}
