//! What the API does, independent of HTTP: enrollments, devices, bulk import, and keeping the
//! registry and DPS in agreement.
//!
//! - [`enrollments`]: enroll, read, list, change and remove devices; provisioning codes.
//! - [`import`]: bulk enrollment from a CSV export or a JSON array.
//! - [`devices`]: device records, desired properties and direct methods.
//! - [`repair`]: finishing DPS changes that a failure interrupted.
//! - [`events`]: recording IoT Hub's events in the records and each device's history.
//! - [`notify`]: status notifications to a webhook, from an outbox.
//! - [`reconcile`]: the periodic comparison with DPS and the hubs.
//! - [`dashboard`]: the fleet dashboard's figures, from one scan of the records' summaries.
//! - [`rotation`]: rotating a device's symmetric key with the device rolling over to it.
//!
//! Every change that touches DPS follows one order: the record is written first with the intent
//! (`sync: pendingCreate|pendingUpdate|pendingDelete`), then DPS is changed, then the intent is
//! cleared. A failure anywhere leaves an intent behind, never a DPS enrollment the registry does
//! not know about, and [`repair`] finishes it the next time the record is touched.

pub(crate) mod dashboard;
pub(crate) mod devices;
pub(crate) mod enrollments;
pub(crate) mod events;
pub(crate) mod import;
pub mod notify;
pub(crate) mod reconcile;
pub(crate) mod repair;
pub(crate) mod rotation;

use crate::cloud::dps::Provisioning;
use crate::cloud::hub::DeviceHubs;
use crate::cloud::CloudError;
use crate::storage::{DeadLetters, NotificationOutbox, Registry, StoreError};
use std::sync::Arc;

/// Which outside service failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// The Device Provisioning Service.
    Dps,
    /// An IoT hub.
    Hub,
    /// Table Storage.
    Storage,
}

impl Upstream {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Upstream::Dps => "DPS",
            Upstream::Hub => "IoT Hub",
            Upstream::Storage => "Table Storage",
        }
    }
}

/// Why a request could not be done. `crate::api::error` maps each to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed or breaks a rule; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{message}")]
    Conflict {
        /// A stable code for scripts (`alreadyEnrolled`, `deviceIdTaken`, `deviceOffline`, …).
        code: &'static str,
        /// What to do about it.
        message: String,
    },
    /// The record changed since the client read it (If-Match), or a concurrent writer won.
    #[error("{0}")]
    PreconditionFailed(String),
    /// The device did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// An outside service asks us to slow down.
    #[error("{} is throttling requests", .service.name())]
    Throttled {
        /// Which one.
        service: Upstream,
        /// Seconds to wait, if known.
        retry_after: Option<u64>,
    },
    /// An outside service is unreachable or failing; retrying later may help.
    #[error("{} is unavailable", .service.name())]
    Unavailable {
        /// Which one.
        service: Upstream,
        /// What happened (logged, not shown to clients).
        detail: String,
    },
    /// An outside service answered in a way we cannot use (wrong credentials, unknown hub).
    #[error("{} answered in a way the middleware cannot use", .service.name())]
    BadGateway {
        /// Which one.
        service: Upstream,
        /// What happened (logged, not shown to clients).
        detail: String,
    },
}

impl From<enrollment_input::Invalid> for ServiceError {
    fn from(error: enrollment_input::Invalid) -> Self {
        Self::Invalid(error.0)
    }
}

impl ServiceError {
    fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }

    /// Maps a DPS or hub failure that has no more specific meaning at the call site.
    fn upstream(service: Upstream, error: CloudError) -> Self {
        match error {
            CloudError::NotFound(m) => Self::NotFound(m),
            CloudError::Conflict(m) => Self::conflict("conflict", m),
            CloudError::PreconditionFailed => Self::PreconditionFailed(format!(
                "the {} resource changed; read it again",
                service.name()
            )),
            CloudError::Rejected(m) => {
                Self::Invalid(format!("{} refused the request: {m}", service.name()))
            }
            CloudError::DeviceOffline => {
                Self::conflict("deviceOffline", "the device is not connected to its hub")
            }
            CloudError::Timeout => Self::Timeout("the device did not answer in time".into()),
            CloudError::Throttled { retry_after } => Self::Throttled {
                service,
                retry_after,
            },
            CloudError::Unavailable(detail) => Self::Unavailable { service, detail },
            CloudError::BadGateway(detail) => Self::BadGateway { service, detail },
        }
    }

    pub(crate) fn dps(error: CloudError) -> Self {
        Self::upstream(Upstream::Dps, error)
    }

    pub(crate) fn hub(error: CloudError) -> Self {
        Self::upstream(Upstream::Hub, error)
    }
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict => Self::conflict(
                "conflict",
                "the record was created by another request at the same time",
            ),
            StoreError::PreconditionFailed => Self::PreconditionFailed(
                "the record changed since it was read; read it again and retry".into(),
            ),
            StoreError::BadContinuation => {
                Self::Invalid("the continuation token is not valid; start the listing again".into())
            }
            StoreError::Unavailable(detail) => Self::Unavailable {
                service: Upstream::Storage,
                detail,
            },
            // Nothing the client can retry into success, and nothing it sent wrong (requests are
            // bounded before they are stored): an operator's matter.
            StoreError::Refused(detail) => Self::BadGateway {
                service: Upstream::Storage,
                detail,
            },
        }
    }
}

/// What provisioning codes carry besides the device's own values.
#[derive(Debug, Clone)]
pub struct CodeSettings {
    /// The DPS ID scope.
    pub id_scope: String,
    /// The DPS device endpoint.
    pub device_endpoint: String,
}

/// The middleware: the registry and the Azure services it keeps in step.
#[derive(Clone)]
pub struct Service {
    /// Device records.
    pub store: Arc<dyn Registry>,
    /// DPS.
    pub dps: Arc<dyn Provisioning>,
    /// The linked hubs.
    pub hubs: Arc<dyn DeviceHubs>,
    /// Events that could not be recorded, with the reason.
    pub dead_letters: Arc<dyn DeadLetters>,
    /// Status notifications waiting for the webhook.
    pub outbox: Arc<dyn NotificationOutbox>,
    /// Status notifications.
    pub notifier: Arc<notify::Notifier>,
    /// For provisioning codes.
    pub codes: CodeSettings,
    /// Hub names as events carry them (`hubName`) → host names as DPS assigns them.
    pub hub_names: std::collections::BTreeMap<String, String>,
    /// Records recently seen by the event functions.
    pub events_cache: Arc<events::RecordCache>,
    /// Key rotations a background task is moving on.
    pub rotations_in_flight: Arc<rotation::InFlight>,
}

impl Service {
    /// `GET /api/enrollments` and `GET /api/devices`: one page of the records passing `filter`
    /// (the API shows them in two views).
    pub async fn list(
        &self,
        filter: &crate::domain::Filter,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<crate::storage::Page, ServiceError> {
        Ok(self.store.list(filter, page_size, continuation).await?)
    }

    /// The host name of the hub an event names: the configured one, or the linked hub whose
    /// host starts with the name (Azure: `<name>.azure-devices.net`), or the name itself.
    pub fn hub_host(&self, name: &str) -> String {
        let name = name.to_ascii_lowercase();
        if let Some(host) = self.hub_names.get(&name) {
            return host.clone();
        }
        self.hub_names
            .values()
            .find(|host| host.split('.').next() == Some(name.as_str()))
            .cloned()
            .unwrap_or(name)
    }
}

/// Checks a client's `If-Match` against the record's etag (`*` matches anything).
fn check_if_match(if_match: Option<&str>, etag: &str) -> Result<(), ServiceError> {
    match if_match.map(str::trim) {
        None | Some("*") | Some("\"*\"") => Ok(()),
        Some(wanted) if wanted == etag => Ok(()),
        Some(_) => Err(ServiceError::PreconditionFailed(
            "the record changed since it was read (If-Match does not match its ETag); read it again and retry".into(),
        )),
    }
}

/// The one way unit tests build a service: in-memory stores, fake DPS and hubs (`hub-1.example`
/// linked), no webhook. Tests replace the fields they care about (`..Service::for_tests()`).
#[cfg(test)]
impl Service {
    pub(crate) fn for_tests() -> Self {
        Self {
            store: Arc::new(crate::storage::memory::MemoryRegistry::default()),
            dps: Arc::new(crate::cloud::fake::FakeDps::default()),
            hubs: Arc::new(crate::cloud::fake::FakeHubs::linked(&["hub-1.example"])),
            dead_letters: Arc::new(crate::storage::memory::MemoryDeadLetters::default()),
            outbox: Arc::new(crate::storage::memory::MemoryOutbox::default()),
            notifier: Arc::new(notify::Notifier::new(None, reqwest::Client::new())),
            codes: CodeSettings {
                id_scope: "0ne00000001".into(),
                device_endpoint: "dps.example".into(),
            },
            hub_names: Default::default(),
            events_cache: Default::default(),
            rotations_in_flight: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests;
