//! The host's key store and what each key opens, as the Functions host has them
//! (Azure/azure-functions-host src/WebJobs.Script.WebHost/Security/KeyManagement/SecretManager.cs,
//! `GetAuthorizationLevelAsync`; Security/Authorization/AuthUtility.cs,
//! `PrincipalHasAuthLevelClaim`):
//!
//! - the master key (`_master`) grants `Admin`: every function, whatever its level, and the admin
//!   API;
//! - a system key grants `System`: functions with `authLevel: system` only;
//! - a host function key (`default` and any named one) grants `Function` on every function;
//! - a function key grants `Function` on its own function only.
//!
//! A function's key set is made with a `default` key the first time it is read, as the host
//! generates it (`GenerateFunctionSecrets`). With durable state the store lives in the state
//! directory (`function-secrets.json`, mode 0600), as the host's file-system repository keeps
//! `secrets/host.json` and `secrets/<function>.json`; the master key and the `default` host key
//! given at start replace the stored ones, so a configured key always works.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use iot_credentials::secrets_equal;
use iot_io::atomic_file::{self, Access};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// The master key's name in the admin API (ScriptConstants.MasterKeyName).
pub const MASTER_KEY_NAME: &str = "_master";
/// The name of the host key and function key the host generates (`default`).
pub const DEFAULT_KEY_NAME: &str = "default";

/// What a presented key grants (the host's `AuthorizationLevel` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The master key.
    Admin,
    /// A system key.
    System,
    /// A host function key, or a key of the function asked for.
    Function,
}

/// Which set of host keys an admin route names (HostKeyScopes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostScope {
    /// `/admin/host/keys` and `/admin/host/functionkeys`: keys for every function-level function.
    FunctionKeys,
    /// `/admin/host/systemkeys`: keys for system-level functions (and `_master` when read by name).
    SystemKeys,
}

/// Whose keys an admin operation touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One function's keys (its name as the app spells it).
    Function(String),
    /// A host scope.
    Host(HostScope),
}

/// What a create or replace did (the admin API answers 201 or 200).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The key is new.
    Created,
    /// An existing key got a new value.
    Updated,
}

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The stored file is not a key store.
    #[error("{path}: not a key store: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The master key cannot be deleted (KeysController.IsBuiltInSystemKeyName).
    #[error("the master key cannot be deleted")]
    MasterKey,
}

/// File name of the store inside the state directory.
pub const FILE_NAME: &str = "function-secrets.json";

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Secrets {
    master_key: String,
    #[serde(default)]
    function_keys: BTreeMap<String, String>,
    #[serde(default)]
    system_keys: BTreeMap<String, String>,
    /// Per function, by lower-cased name (the host lower-cases it too).
    #[serde(default)]
    functions: BTreeMap<String, BTreeMap<String, String>>,
}

/// The keys of one app. `Debug` prints no key.
pub struct KeyStore {
    secrets: Mutex<Secrets>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A fresh key value: 32 random bytes, URL-safe base64 (usable as `?code=` as it is).
pub fn generate_key() -> String {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

fn matching(keys: &BTreeMap<String, String>, presented: &str) -> bool {
    // Every key is compared, so the time taken does not tell which one matched.
    keys.values().fold(false, |found, value| {
        secrets_equal(value, presented) | found
    })
}

impl KeyStore {
    /// A store in memory only, with these keys.
    pub fn in_memory(master: &str, default_host_key: &str) -> Self {
        let mut secrets = Secrets {
            master_key: master.to_owned(),
            ..Secrets::default()
        };
        secrets
            .function_keys
            .insert(DEFAULT_KEY_NAME.into(), default_host_key.to_owned());
        Self {
            secrets: Mutex::new(secrets),
            path: None,
        }
    }

    /// The store kept in `state_dir`, created if absent; the master key and the `default` host
    /// key are set to the given values.
    pub fn durable(
        state_dir: &std::path::Path,
        master: &str,
        default_host_key: &str,
    ) -> Result<Self, KeyStoreError> {
        let path = state_dir.join(FILE_NAME);
        let mut secrets = match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str::<Secrets>(&text).map_err(|e| KeyStoreError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Secrets::default(),
            Err(source) => return Err(KeyStoreError::Io { path, source }),
        };
        secrets.master_key = master.to_owned();
        secrets
            .function_keys
            .insert(DEFAULT_KEY_NAME.into(), default_host_key.to_owned());
        let store = Self {
            secrets: Mutex::new(secrets.clone()),
            path: Some(path),
        };
        store.persist(&secrets)?;
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Secrets> {
        // A panic while holding the lock cannot leave the map half-changed (each change is one
        // insert or remove), so a poisoned lock is still usable.
        self.secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn persist(&self, secrets: &Secrets) -> Result<(), KeyStoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| KeyStoreError::Io {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_string_pretty(secrets).unwrap_or_default();
        // The file holds every function's keys: owner-only.
        atomic_file::write(path, text.as_bytes(), Access::OwnerOnly).map_err(io)
    }

    /// The function's key set, made with a generated `default` key on first use.
    fn function_keys<'a>(
        secrets: &'a mut Secrets,
        function: &str,
        created: &mut bool,
    ) -> &'a mut BTreeMap<String, String> {
        secrets
            .functions
            .entry(function.to_ascii_lowercase())
            .or_insert_with(|| {
                *created = true;
                BTreeMap::from([(DEFAULT_KEY_NAME.to_owned(), generate_key())])
            })
    }

    /// What `presented` grants on `function`, checked in the host's order: master, system keys,
    /// host function keys, then the function's own keys.
    /// A store that cannot be written still answers from memory (the failure is logged).
    pub fn grant(&self, presented: &str, function: Option<&str>) -> Option<Grant> {
        if presented.is_empty() {
            return None;
        }
        let mut secrets = self.lock();
        if secrets_equal(&secrets.master_key, presented) {
            return Some(Grant::Admin);
        }
        if matching(&secrets.system_keys, presented) {
            return Some(Grant::System);
        }
        if matching(&secrets.function_keys, presented) {
            return Some(Grant::Function);
        }
        let function = function?;
        let mut created = false;
        let found = matching(
            Self::function_keys(&mut secrets, function, &mut created),
            presented,
        );
        if created {
            if let Err(e) = self.persist(&secrets) {
                tracing::warn!(
                    error = %e,
                    "the function keys could not be stored; they live in memory until the next \
                        change"
                );
            }
        }
        found.then_some(Grant::Function)
    }

    /// The keys of a scope, by name.
    pub fn list(&self, scope: &Scope) -> Result<BTreeMap<String, String>, KeyStoreError> {
        let mut secrets = self.lock();
        match scope {
            Scope::Host(HostScope::FunctionKeys) => Ok(secrets.function_keys.clone()),
            Scope::Host(HostScope::SystemKeys) => Ok(secrets.system_keys.clone()),
            Scope::Function(function) => {
                let mut created = false;
                let keys = Self::function_keys(&mut secrets, function, &mut created).clone();
                if created {
                    self.persist(&secrets)?;
                }
                Ok(keys)
            }
        }
    }

    /// One key by name. Read by name, the system scope includes `_master`, as the host's does.
    pub fn get(&self, scope: &Scope, name: &str) -> Result<Option<String>, KeyStoreError> {
        if *scope == Scope::Host(HostScope::SystemKeys) && name == MASTER_KEY_NAME {
            return Ok(Some(self.lock().master_key.clone()));
        }
        Ok(self.list(scope)?.remove(name))
    }

    /// Creates or replaces a key; `value` None generates one. Returns what was done and the
    /// value. `_master` in a host scope sets the master key (SetMasterKeyAsync).
    pub fn set(
        &self,
        scope: &Scope,
        name: &str,
        value: Option<&str>,
    ) -> Result<(Written, String), KeyStoreError> {
        let given = value.is_some();
        let value = value.map_or_else(generate_key, str::to_owned);
        let mut secrets = self.lock();
        let previous = match scope {
            Scope::Host(_) if name == MASTER_KEY_NAME => {
                // The host answers 201 for a generated master key and 200 for a given one.
                secrets.master_key = value.clone();
                given.then(String::new)
            }
            Scope::Host(HostScope::FunctionKeys) => {
                secrets.function_keys.insert(name.to_owned(), value.clone())
            }
            Scope::Host(HostScope::SystemKeys) => {
                secrets.system_keys.insert(name.to_owned(), value.clone())
            }
            Scope::Function(function) => {
                let mut created = false;
                Self::function_keys(&mut secrets, function, &mut created)
                    .insert(name.to_owned(), value.clone())
            }
        };
        self.persist(&secrets)?;
        let written = if previous.is_some() {
            Written::Updated
        } else {
            Written::Created
        };
        Ok((written, value))
    }

    /// Deletes a key; false when there was none.
    pub fn delete(&self, scope: &Scope, name: &str) -> Result<bool, KeyStoreError> {
        if name.eq_ignore_ascii_case(MASTER_KEY_NAME) {
            return Err(KeyStoreError::MasterKey);
        }
        let mut secrets = self.lock();
        let removed = match scope {
            Scope::Host(HostScope::FunctionKeys) => secrets.function_keys.remove(name),
            Scope::Host(HostScope::SystemKeys) => secrets.system_keys.remove(name),
            Scope::Function(function) => {
                let mut created = false;
                Self::function_keys(&mut secrets, function, &mut created).remove(name)
            }
        };
        if removed.is_some() {
            self.persist(&secrets)?;
        }
        Ok(removed.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_grant_by_scope_in_the_hosts_order() {
        let store = KeyStore::in_memory("master", "host-default");
        let a = Scope::Function("A".into());
        store.set(&a, "reader", Some("only-a")).unwrap();
        store
            .set(&Scope::Host(HostScope::SystemKeys), "hook", Some("system"))
            .unwrap();
        assert_eq!(store.grant("master", Some("B")), Some(Grant::Admin));
        assert_eq!(
            store.grant("host-default", Some("B")),
            Some(Grant::Function)
        );
        assert_eq!(store.grant("system", Some("B")), Some(Grant::System));
        assert_eq!(store.grant("only-a", Some("a")), Some(Grant::Function));
        assert_eq!(store.grant("only-a", Some("B")), None);
        assert_eq!(store.grant("only-a", None), None);
        assert_eq!(store.grant("", Some("A")), None);
    }

    #[test]
    fn a_durable_store_keeps_named_keys_and_takes_the_configured_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::durable(dir.path(), "m1", "d1").unwrap();
        let function = Scope::Function("Devices".into());
        let (written, _) = store.set(&function, "reader", Some("r")).unwrap();
        assert_eq!(written, Written::Created);
        let generated = store.get(&function, DEFAULT_KEY_NAME).unwrap().unwrap();
        drop(store);
        let again = KeyStore::durable(dir.path(), "m2", "d2").unwrap();
        assert_eq!(
            again.get(&function, "reader").unwrap().as_deref(),
            Some("r")
        );
        assert_eq!(
            again.get(&function, DEFAULT_KEY_NAME).unwrap(),
            Some(generated)
        );
        assert_eq!(
            again.grant("m1", None),
            None,
            "the configured master key wins"
        );
        assert_eq!(again.grant("d2", None), Some(Grant::Function));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_corrupt_store_stops_the_start_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "not json").unwrap();
        let error = KeyStore::durable(dir.path(), "m", "d")
            .unwrap_err()
            .to_string();
        assert!(error.contains(FILE_NAME), "{error}");
    }
}
