//! Credentials shared by every program in this project: the device, the handler and the emulator.
//!
//! Layout:
//! - [`key`]: [`SharedAccessKey`], a base64 symmetric key that never prints itself, and the
//!   derivation of a device key from an enrollment-group key.
//! - [`sas`]: building, parsing and verifying `SharedAccessSignature` tokens for DPS and IoT Hub.
//! - [`provisioning_code`]: the one string a customer gives the device to provision itself.
//! - [`ids`]: Azure's rules for registration ids and device ids.
//! - [`connection_string`]: parsing and printing the connection strings Azure hands out
//!   (DPS and IoT Hub service policies, devices, storage accounts).
//!
//! Every type that holds a secret redacts it in `Debug` and `Display`; the secret is reachable only
//! through a method whose name says so (`expose_*`).

pub mod connection_string;
pub mod ids;
pub mod key;
pub mod provisioning_code;
pub mod sas;

pub use connection_string::{
    ConnectionStringError, DeviceConnectionString, ServiceConnectionString, StorageConnectionString,
};
pub use key::{derive_device_key, secrets_equal, KeyError, SharedAccessKey};
pub use provisioning_code::{CodeError, ProvisioningCode};
pub use sas::{SasError, SasToken, SignedSas};
