//! The registry's domain: validated identifiers, the device record, what IoT Hub's events
//! tell about it, the bounds on what it keeps of device data (`bounded`), key rotations
//! (`rotation`), and the record's summary the fleet dashboard reads (`summary`).

pub(crate) mod bounded;
pub mod events;
/// Identifiers (shared with dpsctl through the enrollment-input crate).
pub use enrollment_input::ids;
pub(crate) mod hub_report;
pub mod journal;
pub(crate) mod record;
pub(crate) mod rotation;
pub(crate) mod summary;

pub use ids::{CustomerId, DeviceId, HubName, InvalidId, RegistrationId};
pub use record::{
    age_seconds, now, Asset, Customer, DeviceRecord, DpsSync, Filter, IndexKind, InitialTwin,
    Registration, Status,
};
