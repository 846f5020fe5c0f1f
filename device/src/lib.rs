//! The device side of the provisioning story.
//!
//! Layout:
//! - [`assignment`]: what a provisioned device stores (credentials, hub, device id), atomically
//!   and privately.
//! - [`provision`]: registration with DPS over HTTPS or MQTT, with backoff and errors a person can
//!   act on.
//! - `backoff`: exponential backoff with jitter, for every retry the device makes.
//! - `outbox`: the durable, bounded queue telemetry waits in until the hub acknowledges it.
//! - [`telemetry`]: where telemetry comes from (a JSON-lines file or a simulated sensor).
//! - [`sender`]: the long-running connection to the hub: telemetry, twin, methods, messages.
//! - `rotation`: taking up a rotated key: stored, re-provisioned with, reported.
//! - [`portal`]: the setup web page the device serves to its owner.

pub mod assignment;
mod backoff;
pub(crate) mod outbox;
pub mod portal;
pub mod provision;
pub(crate) mod rotation;
pub mod sender;
pub mod telemetry;
