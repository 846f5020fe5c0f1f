//! The emulated Device Provisioning Service.
//!
//! - [`model`]: records in their wire shape.
//! - [`enrollments`]: the service API for individual enrollments and enrollment groups.
//! - [`registrations`]: the service API for registration records.
//! - [`provisioning`]: device registration: authentication, allocation, assignment, operations.
//! - [`allocation`]: picking a hub (hashed, static, custom webhook).
//! - [`rate_limit`]: the registration rate limit (429 with Retry-After beyond it).
//! - [`service_http`], [`device_http`], [`device_mqtt`]: the wire protocols over the above.
//! - [`error`], [`validate`]: errors in Azure's shape, Azure's naming rules.

pub(crate) mod allocation;
pub(crate) mod device_http;
pub(crate) mod device_mqtt;
pub mod enrollments;
pub mod error;
pub mod model;
pub(crate) mod provisioning;
pub mod rate_limit;
pub(crate) mod registrations;
pub(crate) mod service_http;
pub(crate) mod validate;

use crate::cloud_state::CloudState;
use crate::hub::Hubs;
use crate::journaled_store::Store;
use iot_credentials::SharedAccessKey;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A hub linked to DPS.
#[derive(Debug, Clone)]
pub struct LinkedHub {
    /// Host name, as assigned to devices.
    pub host_name: String,
    /// Weight in hashed allocation.
    pub allocation_weight: u32,
}

/// DPS configuration.
#[derive(Debug, Clone)]
pub struct DpsSettings {
    /// The ID scope devices register under.
    pub id_scope: String,
    /// Host names a service token may name (with and without the port).
    pub service_hosts: Vec<String>,
    /// The service policy name (`skn`).
    pub service_policy: String,
    /// The service policy key.
    pub service_key: SharedAccessKey,
    /// Linked hubs, in configuration order.
    pub linked_hubs: Vec<LinkedHub>,
    /// `Retry-After` while assigning.
    pub retry_after: Duration,
    /// Custom allocation webhook timeout.
    pub webhook_timeout: Duration,
    /// Register calls admitted per minute, None for no limit.
    pub registration_rate: Option<rate_limit::Rate>,
    /// The service API's rate limit (enrollments, groups, registration states, queries);
    /// `None`: unlimited.
    pub operation_rate: Option<rate_limit::Rate>,
}

/// What the registration rate limit has done since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistrationCounts {
    /// Register calls admitted.
    pub admitted: u64,
    /// Device requests answered 429, by the rate limit or while throttled ([`Dps::throttle_for`]).
    pub throttled: u64,
}

/// The DPS instance: settings, durable records and registration operations in flight.
pub struct Dps {
    /// Until when device requests are answered 429 (tests of clients' backoff).
    throttled_until: std::sync::Mutex<Option<std::time::Instant>>,
    rate_limiter: Option<rate_limit::RateLimiter>,
    operation_limiter: Option<rate_limit::RateLimiter>,
    operations_throttled: AtomicU64,
    admitted: AtomicU64,
    rate_limited: AtomicU64,
    settings: DpsSettings,
    store: Arc<Store<CloudState>>,
    hubs: Hubs,
    operations: provisioning::Operations,
    webhooks: reqwest::Client,
}

impl Dps {
    /// Answers device registration requests with 429 and Retry-After for `duration`, as DPS does
    /// when a scope exceeds its registration rate.
    pub fn throttle_for(&self, duration: std::time::Duration) {
        *self
            .throttled_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now() + duration);
    }

    /// `Throttled` with the seconds left, while throttling.
    pub fn check_throttle(&self) -> Result<(), error::DpsError> {
        let until = *self
            .throttled_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match until.map(|u| u.saturating_duration_since(std::time::Instant::now())) {
            Some(left) if !left.is_zero() => {
                self.rate_limited.fetch_add(1, Ordering::Relaxed);
                Err(error::DpsError::Throttled(
                    left.as_secs_f64().ceil().max(1.0) as u64,
                ))
            }
            _ => Ok(()),
        }
    }

    /// Counts a register call against the rate limit: `Throttled` with the seconds to wait when
    /// the limit is reached.
    pub fn admit_registration(&self) -> Result<(), error::DpsError> {
        if let Some(limiter) = &self.rate_limiter {
            if let Err(seconds) = limiter.admit() {
                self.rate_limited.fetch_add(1, Ordering::Relaxed);
                return Err(error::DpsError::Throttled(seconds));
            }
        }
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Counts a service-API call against the operation limit: `Throttled` with the seconds to
    /// wait when the limit is reached.
    pub fn admit_operation(&self) -> Result<(), error::DpsError> {
        match &self.operation_limiter {
            Some(limiter) => limiter.admit().map_err(|seconds| {
                self.operations_throttled.fetch_add(1, Ordering::Relaxed);
                error::DpsError::Throttled(seconds)
            }),
            None => Ok(()),
        }
    }

    /// Service-API calls refused by the operation limit so far.
    pub fn operations_throttled(&self) -> u64 {
        self.operations_throttled.load(Ordering::Relaxed)
    }

    /// Register calls admitted and refused by the rate limit so far.
    pub fn registration_counts(&self) -> RegistrationCounts {
        RegistrationCounts {
            admitted: self.admitted.load(Ordering::Relaxed),
            throttled: self.rate_limited.load(Ordering::Relaxed),
        }
    }

    /// A DPS over `store`, assigning devices to `hubs`.
    pub fn new(settings: DpsSettings, store: Arc<Store<CloudState>>, hubs: Hubs) -> Self {
        let webhooks = reqwest::Client::builder()
            .timeout(settings.webhook_timeout)
            .build()
            .unwrap_or_default();
        Self {
            throttled_until: std::sync::Mutex::new(None),
            rate_limiter: settings.registration_rate.map(rate_limit::RateLimiter::new),
            operation_limiter: settings.operation_rate.map(rate_limit::RateLimiter::new),
            operations_throttled: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            settings,
            store,
            hubs,
            operations: provisioning::Operations::default(),
            webhooks,
        }
    }

    /// The configuration.
    pub fn settings(&self) -> &DpsSettings {
        &self.settings
    }

    /// The linked hub with this host name (case-insensitive).
    pub fn linked_hub(&self, host_name: &str) -> Option<&LinkedHub> {
        self.settings
            .linked_hubs
            .iter()
            .find(|hub| hub.host_name.eq_ignore_ascii_case(host_name))
    }
}
