//! An Event Hubs namespace: named event hubs that IoT hubs route to as custom endpoints and
//! that event-triggered functions read. Consumers address it by host name and event hub name,
//! with the namespace's policy key, as an Event Hubs connection string does.

use super::log::EventStream;
use iot_credentials::SharedAccessKey;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The namespace and its event hubs.
pub struct Namespace {
    /// Host name (`<namespace>.servicebus.windows.net` in Azure).
    pub host_name: String,
    /// Policy name of the published connection string.
    pub policy: String,
    /// That policy's key.
    pub key: SharedAccessKey,
    event_hubs: BTreeMap<String, Arc<EventStream>>,
}

impl Namespace {
    /// A namespace holding `event_hubs`.
    pub fn new(
        host_name: String,
        policy: String,
        key: SharedAccessKey,
        event_hubs: Vec<Arc<EventStream>>,
    ) -> Self {
        Self {
            host_name,
            policy,
            key,
            event_hubs: event_hubs
                .into_iter()
                .map(|hub| (hub.name().to_ascii_lowercase(), hub))
                .collect(),
        }
    }

    /// An event hub by name (Event Hubs names are case-insensitive).
    pub fn event_hub(&self, name: &str) -> Option<&Arc<EventStream>> {
        self.event_hubs.get(&name.to_ascii_lowercase())
    }

    /// The event hubs' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.event_hubs.values().map(|hub| hub.name())
    }

    /// The connection string of the namespace's policy for `event_hub` (EntityPath set).
    pub fn connection_string(&self, event_hub: &str) -> String {
        format!(
            "Endpoint=sb://{}/;SharedAccessKeyName={};SharedAccessKey={};EntityPath={event_hub}",
            self.host_name,
            self.policy,
            self.key.expose_base64()
        )
    }
}
