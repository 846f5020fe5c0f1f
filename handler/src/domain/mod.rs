//! The registry's domain: validated identifiers, the device record, what IoT Hub's events
//! tell about it, the bounds on what it keeps of device data (`bounded`), and key rotations
//! (`rotation`).

pub mod bounded;
pub mod events;
/// Identifiers (shared with dpsctl through the enrollment-input crate).
pub use enrollment_input::ids;
pub mod journal;
pub mod live;
pub mod record;
pub mod rotation;

pub use ids::{CustomerId, DeviceId, HubName, InvalidId, RegistrationId};
pub use record::{
    age_seconds, now, Asset, Customer, DeviceRecord, DpsSync, Filter, IndexKind, InitialTwin,
    Registration, Status,
};
