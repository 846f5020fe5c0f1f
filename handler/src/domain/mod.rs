//! The registry's domain: validated identifiers, the device record, and what IoT Hub's events
//! tell about it.

pub mod events;
pub mod ids;
pub mod journal;
pub mod live;
pub mod record;

pub use ids::{CustomerId, DeviceId, HubName, InvalidId, RegistrationId};
pub use record::{
    age_seconds, now, Asset, Customer, DeviceRecord, DpsSync, Filter, IndexKind, InitialTwin,
    Registration, Status,
};
