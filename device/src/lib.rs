//! The device side of the provisioning story.
//!
//! Layout:
//! - [`assignment`]: what a provisioned device stores (credentials, hub, device id), atomically
//!   and privately.
//! - [`provision`]: registration with DPS over HTTPS or MQTT, with backoff and errors a person can
//!   act on.

pub mod assignment;
pub mod provision;
