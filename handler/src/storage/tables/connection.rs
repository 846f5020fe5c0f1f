//! Reaching the account: the table clients (by key or by managed identity), the tables created
//! once per process, and the HTTP client every storage call goes through.

use super::failures::{failed, status_of};
use super::TableRegistry;
use crate::config::StorageAccess;
use crate::storage::identity::ManagedIdentityCredential;
use crate::storage::StoreError;
use azure_core::{RetryOptions, TransportOptions};
use azure_data_tables::clients::TableServiceClientBuilder;
use azure_storage::{CloudLocation, StorageCredentials};
use iot_credentials::StorageConnectionString;
use iot_io::https::{client_builder, Timeouts};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

impl TableRegistry {
    /// A registry on the account of `storage`, tables named `{prefix}Devices` and so on.
    pub fn new(storage: &StorageConnectionString, prefix: &str, http: reqwest::Client) -> Self {
        let credentials = StorageCredentials::access_key(
            storage.account_name().to_owned(),
            storage.account_key().expose_base64().to_owned(),
        );
        Self::on(
            storage.account_name(),
            storage.table_endpoint(),
            credentials,
            prefix,
            http,
        )
    }

    /// A registry reached as `access` says: with the account key, or with the managed
    /// identity's tokens (fetched through the same `http` client).
    pub fn with_access(access: &StorageAccess, prefix: &str, http: reqwest::Client) -> Self {
        match access {
            StorageAccess::Key(storage) => Self::new(storage, prefix, http),
            StorageAccess::Identity {
                account,
                table_endpoint,
                identity,
            } => {
                let credential = ManagedIdentityCredential::new(identity.clone(), http.clone());
                let credentials = StorageCredentials::token_credential(Arc::new(credential));
                Self::on(account, table_endpoint, credentials, prefix, http)
            }
        }
    }

    fn on(
        account: &str,
        table_endpoint: &str,
        credentials: StorageCredentials,
        prefix: &str,
        http: reqwest::Client,
    ) -> Self {
        let location = CloudLocation::Custom {
            account: account.to_owned(),
            uri: table_endpoint.to_owned(),
        };
        // The default transport turns connection pooling off; a pooled client is several times
        // faster. Retries are the caller's business (503 with Retry-After).
        let service = TableServiceClientBuilder::with_location(location, credentials)
            .transport(TransportOptions::new(Arc::new(http)))
            .retry(RetryOptions::none())
            .build();
        Self {
            devices: service.table_client(format!("{prefix}Devices")),
            aliases: service.table_client(format!("{prefix}DeviceIds")),
            index: service.table_client(format!("{prefix}Index")),
            dead_letters: service.table_client(format!("{prefix}DeadLetters")),
            outbox: service.table_client(format!("{prefix}Outbox")),
            ready: OnceCell::new(),
        }
    }

    /// Creates the tables if they do not exist (once per process).
    pub async fn ensure_tables(&self) -> Result<(), StoreError> {
        self.ready
            .get_or_try_init(|| async {
                for table in [
                    &self.devices,
                    &self.aliases,
                    &self.index,
                    &self.dead_letters,
                    &self.outbox,
                ] {
                    match table.create().await {
                        Ok(_) => {}
                        Err(e) if status_of(&e) == Some(409) => {}
                        Err(e) => return Err(failed(e)),
                    }
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }
}

/// The HTTP client storage calls go through: pooled, with a bound on every call.
pub fn http_client() -> reqwest::Client {
    http_client_trusting(None).unwrap_or_default()
}

/// [`http_client`] trusting the CA in `extra_ca_pem` too (the emulator's, for Azurite over
/// HTTPS). The managed identity's tokens are fetched through it as well.
pub fn http_client_trusting(extra_ca_pem: Option<&str>) -> Result<reqwest::Client, String> {
    let timeouts = Timeouts {
        connect: Duration::from_secs(3),
        request: Duration::from_secs(10),
    };
    client_builder(extra_ca_pem, timeouts)?
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())
}
