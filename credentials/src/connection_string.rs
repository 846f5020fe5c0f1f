//! Connection strings: `Name=value;Name=value` lists that carry a host, an identity and a key.
//!
//! Parsed types keep the key as a [`SharedAccessKey`], so printing a parsed connection string
//! (with `{}` or `{:?}`) shows everything but the key. Writing the real string out needs
//! `expose()`.

use crate::key::{KeyError, SharedAccessKey};
use crate::sas::SasToken;
use std::fmt;

/// Why a connection string was refused. Never contains the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    /// A segment has no `=`.
    #[error("connection string segment {0:?} is not of the form Name=value")]
    Segment(String),
    /// A required setting is missing or empty.
    #[error("connection string has no {0}")]
    Missing(&'static str),
    /// The key is not usable.
    #[error("connection string key is unusable: {0}")]
    Key(#[from] KeyError),
    /// A setting appears twice.
    #[error("connection string sets {0} twice")]
    Duplicate(String),
    /// A form this project does not support.
    #[error("unsupported connection string: {0}")]
    Unsupported(&'static str),
}

/// The `Name=value` pairs of a connection string, in order. Names compare case-insensitively,
/// as Azure's own parsers do.
struct Pairs<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Pairs<'a> {
    fn parse(text: &'a str) -> Result<Self, ConnectionStringError> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for segment in text
            .trim()
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            // Values may contain '=' (base64 padding), so split at the first one only.
            let (name, value) = segment
                .split_once('=')
                .ok_or_else(|| ConnectionStringError::Segment(redact_segment(segment)))?;
            let name = name.trim();
            if pairs.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                return Err(ConnectionStringError::Duplicate(name.to_owned()));
            }
            pairs.push((name, value.trim()));
        }
        Ok(Self(pairs))
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .filter(|v| !v.is_empty())
    }

    fn require(&self, name: &'static str) -> Result<&'a str, ConnectionStringError> {
        self.get(name).ok_or(ConnectionStringError::Missing(name))
    }
}

/// A malformed segment may be a key pasted without its name; never echo more than its start.
fn redact_segment(segment: &str) -> String {
    let shown: String = segment.chars().take(12).collect();
    if shown.len() < segment.len() {
        format!("{shown}...")
    } else {
        shown
    }
}

/// A shared access policy connection string, the form both DPS and IoT Hub give services:
/// `HostName=<host[:port]>;SharedAccessKeyName=<policy>;SharedAccessKey=<key>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceConnectionString {
    host_name: String,
    policy_name: String,
    key: SharedAccessKey,
}

impl ServiceConnectionString {
    /// Parses the connection string of a DPS or IoT Hub shared access policy.
    pub fn parse(text: &str) -> Result<Self, ConnectionStringError> {
        let pairs = Pairs::parse(text)?;
        Ok(Self {
            host_name: pairs.require("HostName")?.to_owned(),
            policy_name: pairs.require("SharedAccessKeyName")?.to_owned(),
            key: SharedAccessKey::from_base64(pairs.require("SharedAccessKey")?)?,
        })
    }

    /// Builds one from its parts.
    pub fn new(
        host_name: impl Into<String>,
        policy_name: impl Into<String>,
        key: SharedAccessKey,
    ) -> Self {
        Self {
            host_name: host_name.into(),
            policy_name: policy_name.into(),
            key,
        }
    }

    /// The service host, possibly with `:port` (the emulator on a non-standard port).
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// The shared access policy name, e.g. `provisioningserviceowner` or `iothubowner`.
    pub fn policy_name(&self) -> &str {
        &self.policy_name
    }

    /// The policy key.
    pub fn key(&self) -> &SharedAccessKey {
        &self.key
    }

    /// A service token for the whole host (`sr=<host>`, `skn=<policy>`), valid until `expiry`.
    pub fn sas_token(&self, expiry: u64) -> SasToken {
        SasToken::sign(&self.host_name, &self.key, Some(&self.policy_name), expiry)
    }

    /// The full connection string, key included. Only for writing it where it belongs.
    pub fn expose(&self) -> String {
        format!(
            "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
            self.host_name,
            self.policy_name,
            self.key.expose_base64()
        )
    }
}

impl fmt::Display for ServiceConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HostName={};SharedAccessKeyName={};SharedAccessKey=<redacted>",
            self.host_name, self.policy_name
        )
    }
}

impl fmt::Debug for ServiceConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceConnectionString({self})")
    }
}

/// A device connection string: `HostName=<hub>;DeviceId=<id>;SharedAccessKey=<key>`, optionally
/// with `ModuleId` and `GatewayHostName`.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceConnectionString {
    host_name: String,
    device_id: String,
    module_id: Option<String>,
    gateway_host_name: Option<String>,
    key: SharedAccessKey,
}

impl DeviceConnectionString {
    /// Parses a symmetric-key device (or module) connection string.
    pub fn parse(text: &str) -> Result<Self, ConnectionStringError> {
        let pairs = Pairs::parse(text)?;
        if pairs.get("x509").is_some() {
            return Err(ConnectionStringError::Unsupported(
                "X.509 device connection strings carry no key; use symmetric-key devices",
            ));
        }
        if pairs.get("SharedAccessSignature").is_some() && pairs.get("SharedAccessKey").is_none() {
            return Err(ConnectionStringError::Unsupported(
                "a fixed SharedAccessSignature cannot be renewed; give the device key instead",
            ));
        }
        Ok(Self {
            host_name: pairs.require("HostName")?.to_owned(),
            device_id: pairs.require("DeviceId")?.to_owned(),
            module_id: pairs.get("ModuleId").map(str::to_owned),
            gateway_host_name: pairs.get("GatewayHostName").map(str::to_owned),
            key: SharedAccessKey::from_base64(pairs.require("SharedAccessKey")?)?,
        })
    }

    /// Builds one from an assignment (hub host name, device id, device key).
    pub fn new(
        host_name: impl Into<String>,
        device_id: impl Into<String>,
        key: SharedAccessKey,
    ) -> Self {
        Self {
            host_name: host_name.into(),
            device_id: device_id.into(),
            module_id: None,
            gateway_host_name: None,
            key,
        }
    }

    /// The IoT hub host name.
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// The device id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The module id, for module identities.
    pub fn module_id(&self) -> Option<&str> {
        self.module_id.as_deref()
    }

    /// The gateway (IoT Edge) the device connects through, if any.
    pub fn gateway_host_name(&self) -> Option<&str> {
        self.gateway_host_name.as_deref()
    }

    /// The device key.
    pub fn key(&self) -> &SharedAccessKey {
        &self.key
    }

    /// The resource a device token covers: `<hub>/devices/<id>[/modules/<module>]`.
    pub fn resource(&self) -> String {
        match &self.module_id {
            Some(module) => format!(
                "{}/devices/{}/modules/{}",
                self.host_name, self.device_id, module
            ),
            None => format!("{}/devices/{}", self.host_name, self.device_id),
        }
    }

    /// A device token (no `skn`), valid until `expiry`.
    pub fn sas_token(&self, expiry: u64) -> SasToken {
        SasToken::sign(&self.resource(), &self.key, None, expiry)
    }

    /// The full connection string, key included.
    pub fn expose(&self) -> String {
        let mut text = format!("HostName={};DeviceId={}", self.host_name, self.device_id);
        if let Some(module) = &self.module_id {
            text.push_str(&format!(";ModuleId={module}"));
        }
        text.push_str(&format!(";SharedAccessKey={}", self.key.expose_base64()));
        if let Some(gateway) = &self.gateway_host_name {
            text.push_str(&format!(";GatewayHostName={gateway}"));
        }
        text
    }
}

impl fmt::Display for DeviceConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostName={};DeviceId={}", self.host_name, self.device_id)?;
        if let Some(module) = &self.module_id {
            write!(f, ";ModuleId={module}")?;
        }
        f.write_str(";SharedAccessKey=<redacted>")
    }
}

impl fmt::Debug for DeviceConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceConnectionString({self})")
    }
}

/// Azurite's well-known development account, the same on every machine.
pub const DEVELOPMENT_ACCOUNT_NAME: &str = "devstoreaccount1";
/// Azurite's well-known development account key (public, documented by Microsoft).
pub const DEVELOPMENT_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// An Azure Storage account connection string, reduced to what Table Storage needs.
#[derive(Clone, PartialEq, Eq)]
pub struct StorageConnectionString {
    account_name: String,
    account_key: SharedAccessKey,
    table_endpoint: String,
}

impl StorageConnectionString {
    /// Parses `DefaultEndpointsProtocol=..;AccountName=..;AccountKey=..;[EndpointSuffix=..|TableEndpoint=..]`
    /// or the shorthand `UseDevelopmentStorage=true` (Azurite on 127.0.0.1:10002).
    pub fn parse(text: &str) -> Result<Self, ConnectionStringError> {
        let pairs = Pairs::parse(text)?;
        if pairs
            .get("UseDevelopmentStorage")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Ok(Self::development("http://127.0.0.1:10002/devstoreaccount1"));
        }
        let account_name = pairs.require("AccountName")?.to_owned();
        let account_key = SharedAccessKey::from_base64(pairs.require("AccountKey")?)?;
        let table_endpoint = match pairs.get("TableEndpoint") {
            Some(endpoint) => endpoint.trim_end_matches('/').to_owned(),
            None => {
                let protocol = pairs.get("DefaultEndpointsProtocol").unwrap_or("https");
                let suffix = pairs.get("EndpointSuffix").unwrap_or("core.windows.net");
                format!("{protocol}://{account_name}.table.{suffix}")
            }
        };
        Ok(Self {
            account_name,
            account_key,
            table_endpoint,
        })
    }

    /// Azurite's development account served at `table_endpoint`.
    pub fn development(table_endpoint: &str) -> Self {
        Self {
            account_name: DEVELOPMENT_ACCOUNT_NAME.to_owned(),
            #[allow(clippy::expect_used)]
            account_key: SharedAccessKey::from_base64(DEVELOPMENT_ACCOUNT_KEY)
                .expect("the well-known development key is valid base64"),
            table_endpoint: table_endpoint.trim_end_matches('/').to_owned(),
        }
    }

    /// The storage account name.
    pub fn account_name(&self) -> &str {
        &self.account_name
    }

    /// The account key.
    pub fn account_key(&self) -> &SharedAccessKey {
        &self.account_key
    }

    /// The Table service endpoint, without a trailing slash.
    pub fn table_endpoint(&self) -> &str {
        &self.table_endpoint
    }

    /// The full connection string, key included, in its explicit form.
    pub fn expose(&self) -> String {
        format!(
            "DefaultEndpointsProtocol={};AccountName={};AccountKey={};TableEndpoint={}",
            self.table_endpoint.split("://").next().unwrap_or("https"),
            self.account_name,
            self.account_key.expose_base64(),
            self.table_endpoint
        )
    }
}

impl fmt::Display for StorageConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AccountName={};AccountKey=<redacted>;TableEndpoint={}",
            self.account_name, self.table_endpoint
        )
    }
}

impl fmt::Debug for StorageConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorageConnectionString({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VydmljZSBrZXkgZm9yIGNvbm5lY3Rpb24gc3RyaW5nIHRlc3Rz";

    #[test]
    fn service_connection_strings_round_trip_and_hide_the_key() {
        let text = format!("HostName=dps.example:4443;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey={KEY}");
        let parsed = ServiceConnectionString::parse(&text).unwrap();
        assert_eq!(parsed.host_name(), "dps.example:4443");
        assert_eq!(parsed.policy_name(), "provisioningserviceowner");
        assert_eq!(parsed.expose(), text);
        assert!(!parsed.to_string().contains(KEY));
        assert!(!format!("{parsed:?}").contains(KEY));
    }

    #[test]
    fn names_are_case_insensitive_and_order_free() {
        let text = format!(
            "sharedaccesskey={KEY}; hostname=hub.example ;SHAREDACCESSKEYNAME=iothubowner;"
        );
        let parsed = ServiceConnectionString::parse(&text).unwrap();
        assert_eq!(parsed.host_name(), "hub.example");
        assert_eq!(parsed.policy_name(), "iothubowner");
    }

    #[test]
    fn missing_or_broken_parts_are_named_without_leaking_the_key() {
        assert_eq!(
            ServiceConnectionString::parse("HostName=h;SharedAccessKeyName=p").unwrap_err(),
            ConnectionStringError::Missing("SharedAccessKey")
        );
        let err = ServiceConnectionString::parse(&format!("HostName=h;{KEY}")).unwrap_err();
        assert!(!err.to_string().contains(KEY));
        assert!(matches!(
            ServiceConnectionString::parse("HostName=h;SharedAccessKeyName=p;SharedAccessKey=@@")
                .unwrap_err(),
            ConnectionStringError::Key(KeyError::NotBase64)
        ));
        assert!(matches!(
            ServiceConnectionString::parse("HostName=a;HostName=b").unwrap_err(),
            ConnectionStringError::Duplicate(_)
        ));
    }

    #[test]
    fn device_connection_strings_give_the_device_resource() {
        let text = format!("HostName=hub.example;DeviceId=dev-1;SharedAccessKey={KEY}");
        let parsed = DeviceConnectionString::parse(&text).unwrap();
        assert_eq!(parsed.resource(), "hub.example/devices/dev-1");
        assert_eq!(parsed.expose(), text);
        assert_eq!(
            parsed.to_string(),
            "HostName=hub.example;DeviceId=dev-1;SharedAccessKey=<redacted>"
        );
        assert!(DeviceConnectionString::parse("HostName=h;DeviceId=d;x509=true").is_err());
    }

    #[test]
    fn storage_connection_strings_find_the_table_endpoint() {
        let dev = StorageConnectionString::parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(
            dev.table_endpoint(),
            "http://127.0.0.1:10002/devstoreaccount1"
        );
        assert_eq!(dev.account_name(), "devstoreaccount1");

        let cloud = StorageConnectionString::parse(&format!(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.windows.net"
        ))
        .unwrap();
        assert_eq!(
            cloud.table_endpoint(),
            "https://acct.table.core.windows.net"
        );
        assert!(!cloud.to_string().contains(KEY));

        let explicit = StorageConnectionString::parse(&format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEVELOPMENT_ACCOUNT_KEY};TableEndpoint=http://127.0.0.1:5555/devstoreaccount1/"
        ))
        .unwrap();
        assert_eq!(
            explicit.table_endpoint(),
            "http://127.0.0.1:5555/devstoreaccount1"
        );
        assert_eq!(
            StorageConnectionString::parse(&explicit.expose()).unwrap(),
            explicit
        );
    }
}
