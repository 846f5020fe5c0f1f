//! Configuration: app settings, read from the environment once at start.
//!
//! [`SETTINGS`] is the one list of names. local.settings.json and infra/ must set the same ones; a
//! test checks local.settings.json against it.

use iot_credentials::{ConnectionStringError, ServiceConnectionString, StorageConnectionString};

/// One app setting.
pub struct Setting {
    /// The environment variable.
    pub name: &'static str,
    /// Whether the handler refuses to start without it.
    pub required: bool,
    /// What it holds.
    pub description: &'static str,
}

/// Port the Functions host gives the handler.
pub const PORT: &str = "FUNCTIONS_CUSTOMHANDLER_PORT";
/// DPS service policy connection string.
pub const DPS_CONNECTION_STRING: &str = "DPS_SERVICE_CONNECTION_STRING";
/// DPS ID scope (for provisioning codes).
pub const DPS_ID_SCOPE: &str = "DPS_ID_SCOPE";
/// DPS device endpoint (for provisioning codes).
pub const DPS_DEVICE_ENDPOINT: &str = "DPS_DEVICE_ENDPOINT";
/// IoT Hub service policy connection strings, one per linked hub, separated by `|`.
pub const IOTHUB_CONNECTION_STRINGS: &str = "IOTHUB_CONNECTION_STRINGS";
/// Storage account for the registry tables: a connection string (local development).
pub const STORAGE: &str = "AzureWebJobsStorage";
/// The same account by managed identity: its name (Azure; infra/ sets this form).
pub const STORAGE_ACCOUNT: &str = "AzureWebJobsStorage__accountName";
/// The same account by managed identity: its Table service URI (Azurite over HTTPS locally).
pub const STORAGE_TABLE_URI: &str = "AzureWebJobsStorage__tableServiceUri";
/// The forms of the storage setting; exactly one must be set.
pub const STORAGE_FORMS: [&str; 3] = [STORAGE, STORAGE_ACCOUNT, STORAGE_TABLE_URI];
/// Set by the platform (not an app setting) when the app has a managed identity: the local
/// token service (MicrosoftDocs/azure-docs articles/app-service/overview-managed-identity.md).
pub const IDENTITY_ENDPOINT: &str = "IDENTITY_ENDPOINT";
/// Set by the platform with [`IDENTITY_ENDPOINT`]: the value of the `X-IDENTITY-HEADER` header.
pub const IDENTITY_HEADER: &str = "IDENTITY_HEADER";
/// Prefix of the registry's table names.
pub const TABLE_PREFIX: &str = "REGISTRY_TABLE_PREFIX";
/// Extra root certificate (PEM file) to trust: the emulator's CA in development.
pub const EXTRA_CA: &str = "EXTRA_TRUSTED_CA_FILE";
/// Hub names as events carry them, mapped to host names: `name=host|name=host`.
pub const IOTHUB_NAMES: &str = "IOTHUB_NAMES";
/// Where status notifications go (a Logic App's HTTP trigger in Azure).
pub const NOTIFY_URL: &str = "NOTIFY_WEBHOOK_URL";
/// The secret notifications are signed with.
pub const NOTIFY_SECRET: &str = "NOTIFY_WEBHOOK_SECRET";
/// Waits between notification attempts: `first,longest` in seconds.
pub const NOTIFY_RETRY: &str = "NOTIFY_RETRY_INTERVALS";

/// Every setting the handler reads.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: PORT,
        required: true,
        description: "port the Functions host forwards to (set by the host)",
    },
    Setting {
        name: DPS_CONNECTION_STRING,
        required: true,
        description: "DPS shared access policy connection string (provisioningserviceowner)",
    },
    Setting {
        name: DPS_ID_SCOPE,
        required: true,
        description: "DPS ID scope, written into provisioning codes",
    },
    Setting {
        name: DPS_DEVICE_ENDPOINT,
        required: false,
        description: "DPS device endpoint for provisioning codes (default \
            global.azure-devices-provisioning.net)",
    },
    Setting {
        name: IOTHUB_CONNECTION_STRINGS,
        required: true,
        description:
            "service connection strings of the linked hubs, separated by |: a policy with \
            RegistryRead, RegistryWrite and ServiceConnect (registry-handler in infra/; \
            iothubowner locally)",
    },
    Setting {
        name: STORAGE,
        required: true,
        description: "storage account holding the registry tables: a connection string (locally), \
            or by managed identity AzureWebJobsStorage__accountName (the account name, in Azure) \
            or AzureWebJobsStorage__tableServiceUri (the Table service URI, https); exactly one of \
            the three",
    },
    Setting {
        name: TABLE_PREFIX,
        required: false,
        description: "prefix of the registry table names (default Registry)",
    },
    Setting {
        name: EXTRA_CA,
        required: false,
        description: "PEM file of an extra CA to trust (the emulator's, in development)",
    },
    Setting {
        name: IOTHUB_NAMES,
        required: false,
        description: "hub names as events carry them, with their host names: name=host|name=host \
            (default: a linked host starting with name.)",
    },
    Setting {
        name: NOTIFY_URL,
        required: false,
        description: "webhook receiving status notifications (a Logic App HTTP trigger); none: no \
            notifications",
    },
    Setting {
        name: NOTIFY_SECRET,
        required: false,
        description: "HMAC-SHA256 secret signing notifications (16+ characters; required with \
            NOTIFY_WEBHOOK_URL)",
    },
    Setting {
        name: NOTIFY_RETRY,
        required: false,
        description: "waits between attempts to deliver a notification the webhook refused: \
            first,longest in seconds, doubling in between (default 1,300)",
    },
];

/// Settings the Functions host reads for the event function's binding (function.json), not the
/// handler. Listed so local.settings.json and infra/ set them too. In Azure the connection is
/// identity-based: `REGISTRY_EVENTS__fullyQualifiedNamespace` names the Event Hubs namespace
/// instead of `REGISTRY_EVENTS` holding a connection string.
pub const HOST_SETTINGS: &[Setting] = &[
    Setting {
        name: "REGISTRY_EVENTS",
        required: true,
        description: "the Event Hubs connection of the hub-events event hub every hub routes its \
            lifecycle, twin-change and connection-state events to: a connection string locally, \
            REGISTRY_EVENTS__fullyQualifiedNamespace (the namespace host) in Azure",
    },
    Setting {
        name: "REGISTRY_EVENT_HUB_NAME",
        required: true,
        description: "the name of that event hub (hub-events)",
    },
];

/// Why the configuration is unusable. Never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required setting is missing.
    #[error("the app setting {0} is missing")]
    Missing(&'static str),
    /// A setting has the wrong form.
    #[error("the app setting {name} is invalid: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

/// The handler's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub port: u16,
    /// DPS service policy.
    pub dps: ServiceConnectionString,
    /// DPS ID scope.
    pub id_scope: String,
    /// DPS device endpoint.
    pub device_endpoint: String,
    /// Linked hubs' service policies.
    pub hubs: Vec<ServiceConnectionString>,
    /// Registry storage.
    pub storage: StorageAccess,
    /// Table name prefix.
    pub table_prefix: String,
    /// Extra trusted CA (PEM text).
    pub extra_ca: Option<String>,
    /// Hub names → host names, lower case.
    pub hub_names: std::collections::BTreeMap<String, String>,
    /// The notification webhook.
    pub webhook: Option<crate::service::notify::Webhook>,
    /// Waits between notification attempts.
    pub notify_retry: crate::service::notify::RetryIntervals,
}

/// How the handler reaches the registry's storage account.
#[derive(Clone)]
pub enum StorageAccess {
    /// With the account key of a connection string (local development, Azurite).
    Key(StorageConnectionString),
    /// With Entra tokens of the app's managed identity.
    Identity {
        /// The account name.
        account: String,
        /// The Table service endpoint, `https://{account}.table.core.windows.net` in Azure.
        table_endpoint: String,
        /// Where the tokens come from.
        identity: ManagedIdentity,
    },
}

impl std::fmt::Debug for StorageAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Key(storage) => f
                .debug_struct("Key")
                .field("account", &storage.account_name())
                .field("table_endpoint", &storage.table_endpoint())
                .finish_non_exhaustive(),
            Self::Identity {
                account,
                table_endpoint,
                identity,
            } => f
                .debug_struct("Identity")
                .field("account", account)
                .field("table_endpoint", table_endpoint)
                .field("identity", identity)
                .finish(),
        }
    }
}

/// The platform's managed-identity token service (`IDENTITY_ENDPOINT`, `IDENTITY_HEADER`).
#[derive(Clone)]
pub struct ManagedIdentity {
    /// The token endpoint.
    pub endpoint: reqwest::Url,
    header: String,
}

impl ManagedIdentity {
    /// A token service at `endpoint` that wants `header` in `X-IDENTITY-HEADER`.
    pub fn new(endpoint: reqwest::Url, header: String) -> Self {
        Self { endpoint, header }
    }

    /// The `X-IDENTITY-HEADER` value (a secret: the platform rotates it).
    pub fn header(&self) -> &str {
        &self.header
    }
}

impl std::fmt::Debug for ManagedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedIdentity")
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

/// Storage account names: 3 to 24 lower-case letters and digits.
fn valid_account(name: &str) -> bool {
    (3..=24).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn storage_access(lookup: &impl Fn(&str) -> Option<String>) -> Result<StorageAccess, ConfigError> {
    let set: Vec<(&'static str, String)> = STORAGE_FORMS
        .iter()
        .filter_map(|name| lookup(name).map(|value| (*name, value.trim().to_owned())))
        .collect();
    let (name, value) = match set.as_slice() {
        [] => return Err(ConfigError::Missing(STORAGE)),
        [one] => one.clone(),
        [first, second, ..] => {
            return Err(invalid(
                first.0,
                format!(
                    "{} is set too: set only one of {}",
                    second.0,
                    STORAGE_FORMS.join(", ")
                ),
            ))
        }
    };
    if name == STORAGE {
        return StorageConnectionString::parse(&value)
            .map(StorageAccess::Key)
            .map_err(|e| invalid(STORAGE, e));
    }
    let (account, table_endpoint) = if name == STORAGE_ACCOUNT {
        if !valid_account(&value) {
            return Err(invalid(
                STORAGE_ACCOUNT,
                "a storage account name is 3 to 24 lower-case letters and digits",
            ));
        }
        let endpoint = format!("https://{value}.table.core.windows.net");
        (value, endpoint)
    } else {
        let url = reqwest::Url::parse(&value).map_err(|e| invalid(STORAGE_TABLE_URI, e))?;
        if url.scheme() != "https" {
            // Bearer tokens are refused over plain HTTP, by Azure and by Azurite alike.
            return Err(invalid(
                STORAGE_TABLE_URI,
                "use an https URI: tokens travel only over TLS",
            ));
        }
        if url.query().is_some() || !url.username().is_empty() {
            return Err(invalid(
                STORAGE_TABLE_URI,
                "give the service URI alone, without a query or credentials",
            ));
        }
        let host = url.host_str().unwrap_or_default();
        // Azure names the account in the host; Azurite (an IP or localhost) in the first path
        // segment.
        let account = match host.split_once('.') {
            Some((first, rest)) if rest.starts_with("table.") => first.to_owned(),
            _ => url
                .path_segments()
                .and_then(|mut s| s.next())
                .unwrap_or_default()
                .to_owned(),
        };
        if !valid_account(&account) {
            return Err(invalid(
                STORAGE_TABLE_URI,
                "name the account in the host (https://{account}.table.core.windows.net) or the \
                    path (https://127.0.0.1:10002/{account})",
            ));
        }
        (account, value.trim_end_matches('/').to_owned())
    };
    let endpoint = lookup(IDENTITY_ENDPOINT);
    let header = lookup(IDENTITY_HEADER);
    let (Some(endpoint), Some(header)) = (endpoint, header) else {
        return Err(invalid(
            name,
            "it asks for the managed identity, but IDENTITY_ENDPOINT and IDENTITY_HEADER are not \
                set: turn on the function app's identity, or use a connection string in \
                AzureWebJobsStorage",
        ));
    };
    let endpoint =
        reqwest::Url::parse(endpoint.trim()).map_err(|e| invalid(IDENTITY_ENDPOINT, e))?;
    Ok(StorageAccess::Identity {
        account,
        table_endpoint,
        identity: ManagedIdentity::new(endpoint, header.trim().to_owned()),
    })
}

fn invalid(name: &'static str, error: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        name,
        reason: error.to_string(),
    }
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// Reads the configuration through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |name: &'static str| lookup(name).ok_or(ConfigError::Missing(name));
        let port = required(PORT)?
            .trim()
            .parse()
            .map_err(|e| invalid(PORT, e))?;
        let dps = ServiceConnectionString::parse(&required(DPS_CONNECTION_STRING)?)
            .map_err(|e: ConnectionStringError| invalid(DPS_CONNECTION_STRING, e))?;
        let hubs = required(IOTHUB_CONNECTION_STRINGS)?
            .split('|')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(ServiceConnectionString::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(IOTHUB_CONNECTION_STRINGS, e))?;
        if hubs.is_empty() {
            return Err(ConfigError::Missing(IOTHUB_CONNECTION_STRINGS));
        }
        let storage = storage_access(&lookup)?;
        let table_prefix = lookup(TABLE_PREFIX).unwrap_or_else(|| "Registry".into());
        if !table_prefix.chars().all(|c| c.is_ascii_alphanumeric())
            || !table_prefix.starts_with(|c: char| c.is_ascii_alphabetic())
            || table_prefix.len() > 40
        {
            return Err(invalid(
                TABLE_PREFIX,
                "use up to 40 letters and digits, starting with a letter",
            ));
        }
        let extra_ca = match lookup(EXTRA_CA) {
            Some(path) => Some(std::fs::read_to_string(&path).map_err(|e| invalid(EXTRA_CA, e))?),
            None => None,
        };
        let mut hub_names = std::collections::BTreeMap::new();
        for hub in &hubs {
            let host = crate::cloud::hub::host_key(hub.host_name());
            hub_names.insert(host.clone(), host);
        }
        for pair in lookup(IOTHUB_NAMES)
            .unwrap_or_default()
            .split('|')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (name, host) = pair
                .split_once('=')
                .ok_or_else(|| invalid(IOTHUB_NAMES, format!("{pair:?} is not name=host")))?;
            hub_names.insert(
                name.trim().to_ascii_lowercase(),
                crate::cloud::hub::host_key(host.trim()),
            );
        }
        let webhook = match lookup(NOTIFY_URL) {
            Some(url) => {
                let parsed = reqwest::Url::parse(url.trim()).map_err(|e| invalid(NOTIFY_URL, e))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(invalid(NOTIFY_URL, "use an http or https URL"));
                }
                let secret = crate::service::notify::WebhookSecret::new(required(NOTIFY_SECRET)?)
                    .ok_or_else(|| invalid(NOTIFY_SECRET, "use at least 16 characters"))?;
                Some(crate::service::notify::Webhook {
                    url: parsed.to_string(),
                    secret,
                })
            }
            None => None,
        };
        let notify_retry = match lookup(NOTIFY_RETRY).filter(|v| !v.trim().is_empty()) {
            Some(text) => crate::service::notify::RetryIntervals::parse(&text)
                .map_err(|reason| invalid(NOTIFY_RETRY, reason))?,
            None => Default::default(),
        };
        Ok(Self {
            port,
            dps,
            id_scope: required(DPS_ID_SCOPE)?,
            device_endpoint: lookup(DPS_DEVICE_ENDPOINT)
                .unwrap_or_else(|| "global.azure-devices-provisioning.net".into()),
            hubs,
            storage,
            table_prefix,
            extra_ca,
            hub_names,
            webhook,
            notify_retry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const KEY: &str = "c2VydmljZSBrZXkgZm9yIGNvbmZpZ3VyYXRpb24gdGVzdHMh";

    fn settings() -> HashMap<&'static str, String> {
        HashMap::from([
            (PORT, "7000".to_owned()),
            (DPS_CONNECTION_STRING, format!("HostName=dps.example;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey={KEY}")),
            (DPS_ID_SCOPE, "0ne00000001".to_owned()),
            (IOTHUB_CONNECTION_STRINGS, format!("HostName=a.example;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}|HostName=b.example;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}")),
            (STORAGE, "UseDevelopmentStorage=true".to_owned()),
        ])
    }

    #[test]
    fn a_complete_environment_is_read_with_defaults() {
        let values = settings();
        let config = Config::from_lookup(|n| values.get(n).cloned()).unwrap();
        assert_eq!(config.port, 7000);
        assert_eq!(config.hubs.len(), 2);
        assert_eq!(config.table_prefix, "Registry");
        assert_eq!(
            config.device_endpoint,
            "global.azure-devices-provisioning.net"
        );
    }

    #[test]
    fn missing_or_broken_settings_are_named_and_secrets_are_not_echoed() {
        let mut values = settings();
        values.remove(DPS_ID_SCOPE);
        let error = Config::from_lookup(|n| values.get(n).cloned())
            .unwrap_err()
            .to_string();
        assert!(error.contains(DPS_ID_SCOPE), "{error}");
        let mut values = settings();
        values.insert(
            DPS_CONNECTION_STRING,
            format!("HostName=dps;SharedAccessKey={KEY}"),
        );
        let error = Config::from_lookup(|n| values.get(n).cloned())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(DPS_CONNECTION_STRING) && !error.contains(KEY),
            "{error}"
        );
    }

    #[test]
    fn storage_by_identity_is_read_from_the_account_name_or_the_service_uri() {
        let mut values = settings();
        values.remove(STORAGE);
        values.insert(STORAGE_ACCOUNT, "registryprod".into());
        values.insert(IDENTITY_ENDPOINT, "http://127.0.0.1:41741/msi/token".into());
        values.insert(IDENTITY_HEADER, "rotated-secret-value".into());
        let config = Config::from_lookup(|n| values.get(n).cloned()).unwrap();
        let StorageAccess::Identity {
            account,
            table_endpoint,
            ..
        } = &config.storage
        else {
            panic!("not by identity: {:?}", config.storage);
        };
        assert_eq!(account, "registryprod");
        assert_eq!(
            table_endpoint,
            "https://registryprod.table.core.windows.net"
        );
        assert!(!format!("{config:?}").contains("rotated-secret-value"));

        values.remove(STORAGE_ACCOUNT);
        values.insert(
            STORAGE_TABLE_URI,
            "https://127.0.0.1:10002/devstoreaccount1/".into(),
        );
        let config = Config::from_lookup(|n| values.get(n).cloned()).unwrap();
        let StorageAccess::Identity {
            account,
            table_endpoint,
            ..
        } = &config.storage
        else {
            panic!("not by identity: {:?}", config.storage);
        };
        assert_eq!(account, "devstoreaccount1");
        assert_eq!(table_endpoint, "https://127.0.0.1:10002/devstoreaccount1");
    }

    #[test]
    fn storage_settings_that_cannot_work_are_refused_with_the_reason() {
        let error = |changes: &[(&'static str, Option<&str>)]| {
            let mut values = settings();
            values.insert(IDENTITY_ENDPOINT, "http://127.0.0.1:1/msi/token".into());
            values.insert(IDENTITY_HEADER, "h".into());
            for (name, value) in changes {
                match value {
                    Some(v) => values.insert(name, (*v).to_owned()),
                    None => values.remove(name),
                };
            }
            Config::from_lookup(|n| values.get(n).cloned())
                .unwrap_err()
                .to_string()
        };
        let both = error(&[(STORAGE_ACCOUNT, Some("registryprod"))]);
        assert!(both.contains("set only one"), "{both}");
        let none = error(&[(STORAGE, None)]);
        assert!(none.contains(STORAGE), "{none}");
        let name = error(&[(STORAGE, None), (STORAGE_ACCOUNT, Some("Not_An_Account"))]);
        assert!(name.contains("3 to 24"), "{name}");
        let plain = error(&[
            (STORAGE, None),
            (
                STORAGE_TABLE_URI,
                Some("http://127.0.0.1:10002/devstoreaccount1"),
            ),
        ]);
        assert!(plain.contains("https"), "{plain}");
        let no_identity = error(&[
            (STORAGE, None),
            (STORAGE_ACCOUNT, Some("registryprod")),
            (IDENTITY_HEADER, None),
        ]);
        assert!(
            no_identity.contains("IDENTITY_ENDPOINT and IDENTITY_HEADER"),
            "{no_identity}"
        );
    }

    #[test]
    fn local_settings_json_sets_every_setting_but_the_port() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../local.settings.json");
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let values = file["Values"].as_object().unwrap();
        for setting in SETTINGS
            .iter()
            .chain(HOST_SETTINGS)
            .filter(|s| s.name != PORT)
        {
            assert!(
                values.contains_key(setting.name),
                "local.settings.json lacks {}",
                setting.name
            );
        }
        // And the development values are usable as they stand (with the port the host adds).
        let config = Config::from_lookup(|name| {
            if name == PORT {
                return Some("7000".into());
            }
            values
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .filter(|v| !v.ends_with(".pem") && !v.is_empty())
        })
        .unwrap();
        assert_eq!(config.hubs.len(), 2);
    }
}
