//! A local, protocol-faithful stand-in for Azure IoT Hub Device Provisioning Service and
//! IoT Hub, good enough that Microsoft's own SDKs cannot tell the difference.
//!
//! Layout:
//! - [`config`]: what to serve, where, with which development keys.
//! - [`tls`]: the local CA (created on first start) and the server certificate.
//! - [`journaled_store`], [`cloud_state`]: the store that journals every change to a model and
//!   folds the journal into a snapshot, and the model it holds (DPS records, hub registries).
//! - [`azure_format`]: etags, identifiers and timestamps as Azure writes them.
//! - [`net`]: HTTPS and MQTT-over-TLS listeners, and the MQTT 3.1.1 codec.
//! - [`dps`]: the Device Provisioning Service (service API, device registration, allocation).
//! - [`hub`]: the IoT hubs (identity registry; service API).
//! - [`endpoints`]: `endpoints.json`, how clients find the emulator.
//! - [`events`]: each hub's event stream and consumer checkpoints.
//! - [`functions`]: the Azure Functions host stand-in for a custom-handler app.
//! - [`fleet`]: clients of the emulator for the `fleet` tool (demo, load generator), the
//!   benchmarks (bench/) and tests.
//!
//! [`start`] (`startup.rs`, one named step per part) binds every listener (port 0 picks free
//! ports, so tests run in parallel), writes endpoints.json and returns a handle that stops
//! everything cleanly.

pub mod azure_format;
pub(crate) mod base64_bytes;
pub(crate) mod cloud_state;
pub mod config;
pub mod dps;
pub mod endpoints;
pub mod events;
pub mod fleet;
pub mod functions;
pub mod hub;
pub mod journaled_store;
pub mod net;
mod startup;
pub mod tls;

pub use startup::{start, RunningEmulator, RunningHub, StartError};
