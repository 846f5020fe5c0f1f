//! The Azure Functions custom handler of the device-provisioning middleware.
//!
//! Layout:
//! - [`config`]: app settings, read once.
//! - [`domain`]: validated identifiers and the device record.
//! - [`storage`]: where records live (Table Storage; in memory for tests).
//! - [`cloud`]: the DPS and IoT Hub service APIs, behind traits.
//! - [`service`]: what the API does: enrollments, import, devices, repair.
//! - [`api`]: the HTTP routes (warp), JSON views, and the one error-to-status mapping.

pub mod api;
pub mod cloud;
pub mod config;
pub mod domain;
pub mod service;
pub mod storage;
