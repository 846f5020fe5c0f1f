//! The Azure Functions custom handler of the device-provisioning middleware.
//!
//! Layout:
//! - [`config`]: app settings, read once.
//! - [`domain`]: validated identifiers and the device record.
//! - [`storage`]: where records live (Table Storage; in memory for tests).
//! - [`cloud`]: the DPS and IoT Hub service APIs, behind traits.
//! - [`service`]: what the API does: enrollments, import, devices, repair.
//! - [`api`]: the HTTP routes (warp), JSON views, and the one error-to-status mapping.
//!
//! The binary needs only what is re-exported here ([`Config`], [`Service`], [`serve`]) and the
//! clients it wires into the service; the route handlers, the service's steps and the record's
//! internals are `pub(crate)`. The modules stay public for the benchmarks (bench/) and the
//! integration tests, which build records, events and the Table Storage registry themselves.

pub mod api;
pub mod cloud;
pub mod config;
pub mod domain;
pub mod service;
pub mod storage;

pub use api::serve;
pub use config::Config;
pub use service::Service;
