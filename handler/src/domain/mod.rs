//! The registry's domain: validated identifiers, the device record, what IoT Hub's events
//! tell about it, and the bounds on what it keeps of device data (`bounded`).

pub mod bounded;
pub mod events;
/// Identifiers (shared with dpsctl through the enrollment-input crate).
pub use enrollment_input::ids;
pub mod journal;
pub mod live;
pub mod record;

pub use ids::{CustomerId, DeviceId, HubName, InvalidId, RegistrationId};
pub use record::{
    age_seconds, now, Asset, Customer, DeviceRecord, DpsSync, Filter, IndexKind, InitialTwin,
    Registration, Status,
};
