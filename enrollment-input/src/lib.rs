//! The enrollment as clients send it, with the rules it can be held to without the registry.
//! The handler builds its records from these; `dpsctl` checks import files with the same code
//! before it sends them (`--dry-run`), so both refuse the same rows for the same reasons.
//!
//! Layout:
//! - [`ids`]: registration, device and customer ids and hub names, parsed once.
//! - [`request`]: `POST /api/enrollments`'s body ([`NewEnrollment`]) and its checks.
//! - [`import`]: CSV and JSON import files read into rows, repeated ids, per-row results.

pub mod ids;
pub mod import;
pub mod request;

pub use ids::{CustomerId, DeviceId, HubName, InvalidId, RegistrationId};
pub use request::{
    Asset, CheckedEnrollment, Customer, CustomerInput, InitialTwin, Invalid, NewEnrollment,
};
