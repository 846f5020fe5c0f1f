//! `endpoints.json`: how clients find and trust the emulator (the `emulator` object of
//! ../shared/design.md, plus the ports when they are not Azure's).

use iot_io::atomic_file::{self, Access};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// File name inside the state directory.
pub const FILE_NAME: &str = "endpoints.json";

/// Everything a client needs. Holds connection strings with keys, so `Debug` omits them.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// Absolute path of the CA certificate (PEM) to trust.
    pub ca_certificate_path: PathBuf,
    /// The provisioning service.
    pub dps: DpsEndpoints,
    /// The linked hubs.
    pub hubs: Vec<HubEndpoints>,
    /// The Event Hubs namespace the hubs route to.
    pub event_hubs: EventHubsEndpoints,
    /// The Functions host stand-in, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<FunctionsEndpoints>,
}

/// How to reach the Functions host stand-in.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionsEndpoints {
    /// `http://127.0.0.1:7071/api` (with the route prefix).
    pub base_url: String,
    /// The `default` host key (`x-functions-key`): opens every function-level function.
    pub function_key: String,
    /// The master key: every function and the admin API (`/admin/...`, keys included).
    #[serde(default)]
    pub master_key: String,
    /// The host's readiness URL.
    pub status_url: String,
}

/// The Event Hubs namespace whose event hubs are the hubs' custom routing endpoints.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventHubsEndpoints {
    /// The namespace's host name (what `<connection>__fullyQualifiedNamespace` names).
    pub namespace: String,
    /// Its event hubs.
    pub event_hubs: Vec<String>,
    /// `Endpoint=sb://<namespace>/;SharedAccessKeyName=RootManageSharedAccessKey;
    /// SharedAccessKey=…;EntityPath=hub-events`, the registry's event hub.
    pub connection_string: String,
}

/// How to reach DPS.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DpsEndpoints {
    /// The ID scope.
    pub id_scope: String,
    /// `HostName=<host[:port]>;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=…`.
    pub service_connection_string: String,
    /// `<host[:port]>` of the HTTPS registration API (Azure: global.azure-devices-provisioning.net).
    pub device_endpoint: String,
    /// Host serving DPS over MQTT.
    pub mqtt_host: String,
    /// Its port (8883 unless configured otherwise).
    pub mqtt_port: u16,
}

/// How to reach one hub.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubEndpoints {
    /// Short name.
    pub name: String,
    /// Host name devices connect to (and DPS assigns).
    pub host_name: String,
    /// `HostName=<host[:port]>;SharedAccessKeyName=iothubowner;SharedAccessKey=…`.
    pub connection_string: String,
    /// Port of the device endpoint (MQTT over TLS; 8883 unless configured otherwise).
    pub mqtt_port: u16,
    /// The Event Hub-compatible connection string of the hub's event stream, as an
    /// eventHubTrigger's `connection` setting names it (`EntityPath` is the hub's name).
    pub event_hub_connection_string: String,
}

impl fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoints")
            .field("ca_certificate_path", &self.ca_certificate_path)
            .field("id_scope", &self.dps.id_scope)
            .field("device_endpoint", &self.dps.device_endpoint)
            .field(
                "hubs",
                &self.hubs.iter().map(|h| &h.host_name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Endpoints {
    /// Writes `dir/endpoints.json` atomically and durably (readers never see half a file),
    /// owner-readable only since it holds keys.
    pub fn write(&self, dir: &Path) -> io::Result<PathBuf> {
        let path = dir.join(FILE_NAME);
        let text = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        atomic_file::write(&path, &text, Access::OwnerOnly)?;
        Ok(path)
    }

    /// Reads `dir/endpoints.json`.
    pub fn read(dir: &Path) -> io::Result<Self> {
        let bytes = std::fs::read(dir.join(FILE_NAME))?;
        serde_json::from_slice(&bytes).map_err(io::Error::other)
    }
}

/// Fills `{a.b.0.c}` placeholders in `template` with values of `endpoints` (endpoints.json as
/// JSON); other braces are left alone. Used for app settings that point at the emulator.
pub fn fill(template: &str, endpoints: &serde_json::Value) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}');
        let name = close.map(|c| &after[..c]).filter(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        });
        match (name, close) {
            (Some(name), Some(close)) => {
                let pointer = format!("/{}", name.replace('.', "/"));
                let value = endpoints
                    .pointer(&pointer)
                    .ok_or_else(|| format!("{{{name}}} names nothing in endpoints.json"))?;
                match value {
                    serde_json::Value::String(text) => out.push_str(text),
                    other => out.push_str(&other.to_string()),
                }
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod fill_tests {
    use super::fill;
    use serde_json::json;

    #[test]
    fn placeholders_name_endpoint_values_and_other_braces_stay() {
        let endpoints = json!({"dps": {"idScope": "0ne"}, "hubs": [{"connectionString": "a"}, {"connectionString": "b"}], "port": 8883});
        assert_eq!(
            fill(
                "{hubs.0.connectionString}|{hubs.1.connectionString}",
                &endpoints
            )
            .unwrap(),
            "a|b"
        );
        assert_eq!(
            fill("scope={dps.idScope} port={port} {not json} {}", &endpoints).unwrap(),
            "scope=0ne port=8883 {not json} {}"
        );
        assert!(fill("{dps.nothing}", &endpoints)
            .unwrap_err()
            .contains("dps.nothing"));
    }
}
