//! The registry's domain: validated identifiers and the device record.

pub mod ids;
pub mod record;

pub use ids::{CustomerId, DeviceId, HubName, InvalidId, RegistrationId};
pub use record::{
    age_seconds, now, Asset, Connection, Customer, DeviceRecord, DpsSync, Filter, IndexKind,
    InitialTwin, Registration, Reported, Status,
};
