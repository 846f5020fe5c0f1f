//! The emulated IoT hubs.
//!
//! - [`registry`]: device identities, twins and queued cloud-to-device messages (durable).
//! - [`twin`]: merge-patch rules, limits, and the wire shapes of twins and devices.
//! - [`modules`]: module identities, module twins and module connections, kept apart from
//!   their devices.
//! - [`sessions`]: connected devices and modules.
//! - [`device_mqtt`]: the device endpoint (MQTT 3.1.1 over TLS).
//! - [`service_http`]: the service REST API.
//!
//! [`Hub`] holds the operations; each change of identity, twin or connection emits the event
//! IoT Hub would route (lifecycle, twin change, connection state), and telemetry goes to the same
//! stream.

pub mod device_mqtt;
pub mod modules;
pub mod registry;
pub mod service_http;
pub mod sessions;
pub mod twin;

use crate::events::log::EventStream;
use crate::events::routing::Router;
use crate::events::NewEvent;
use crate::net::mqtt_codec::{Packet, Publish, QoS};
use crate::stamps;
use crate::state::{Change, CloudState};
use crate::store::{Store, StoreError};
use bytes::Bytes;
use iot_credentials::SharedAccessKey;
use registry::{CloudMessage, DeviceIdentity, DeviceStatus, PropertySet, Twin};
use serde_json::{json, Map, Value};
use sessions::{MethodReply, Session, Sessions};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use twin::{Presence, TwinError};

/// IoT Hub's limit on queued cloud-to-device messages per device.
pub const MAX_QUEUED_MESSAGES: usize = 50;
/// Default lifetime of a cloud-to-device message.
pub const DEFAULT_MESSAGE_TTL: Duration = Duration::from_secs(3600);

/// One hub's configuration.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Short name (`hub-1`), the `hubName` of its events.
    pub name: String,
    /// Host name devices and DPS use.
    pub host_name: String,
    /// Host names a service token may name (with and without the port).
    pub service_hosts: Vec<String>,
    /// The service policy name.
    pub service_policy: String,
    /// The service policy key.
    pub service_key: SharedAccessKey,
}

/// What went wrong in a hub operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The request is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// No such device.
    #[error("device {0} is not registered")]
    DeviceNotFound(String),
    /// The device exists already.
    #[error("a device with id {0} already exists")]
    DeviceAlreadyExists(String),
    /// No such module on the device.
    #[error("module {module_id} is not registered on device {device_id}")]
    ModuleNotFound {
        /// The device.
        device_id: String,
        /// The module.
        module_id: String,
    },
    /// The module exists already on the device.
    #[error("a module with id {module_id} already exists on device {device_id}")]
    ModuleAlreadyExists {
        /// The device.
        device_id: String,
        /// The module.
        module_id: String,
    },
    /// `If-Match` does not match.
    #[error("the etag does not match the current one; read the resource again")]
    PreconditionFailed,
    /// The twin change breaks IoT Hub's rules.
    #[error(transparent)]
    Twin(#[from] TwinError),
    /// The device is not connected (or not listening for methods).
    #[error("the device is not online")]
    DeviceNotOnline,
    /// The device did not answer in time.
    #[error("timed out waiting for the response from the device")]
    Timeout,
    /// Too many cloud-to-device messages are queued.
    #[error("the device already has {MAX_QUEUED_MESSAGES} cloud-to-device messages waiting")]
    QueueFull,
    /// State could not be saved.
    #[error("the hub cannot save its state right now")]
    Unavailable,
}

impl From<StoreError> for HubError {
    fn from(error: StoreError) -> Self {
        tracing::error!(%error, "hub state could not be saved");
        Self::Unavailable
    }
}

/// A device as the service API creates or updates it. `Debug` shows whether keys are set, not
/// their values.
#[derive(Clone, Default)]
pub struct DeviceSpec {
    /// Enabled or disabled.
    pub status: Option<DeviceStatus>,
    /// Why disabled.
    pub status_reason: Option<String>,
    /// Primary key (generated when missing).
    pub primary_key: Option<String>,
    /// Secondary key (generated when missing).
    pub secondary_key: Option<String>,
    /// IoT Edge capability.
    pub iot_edge: Option<bool>,
}

impl std::fmt::Debug for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSpec")
            .field("status", &self.status)
            .field("status_reason", &self.status_reason)
            .field("primary_key_set", &self.primary_key.is_some())
            .field("secondary_key_set", &self.secondary_key.is_some())
            .field("iot_edge", &self.iot_edge)
            .finish()
    }
}

#[derive(Default, Clone)]
struct Seen {
    connection_state_updated: Option<String>,
    last_activity: Option<String>,
}

/// One emulated IoT hub.
pub struct Hub {
    settings: HubSettings,
    store: Arc<Store<CloudState>>,
    router: Router,
    /// Connected devices.
    pub sessions: Sessions,
    seen: Mutex<HashMap<String, Seen>>,
    sequence: Mutex<u128>,
}

/// The hubs by host name.
pub type Hubs = BTreeMap<String, Arc<Hub>>;

/// The device `device_id` of hub `host`, or DeviceNotFound.
fn existing<'a>(
    state: &'a CloudState,
    host: &str,
    device_id: &str,
) -> Result<&'a DeviceIdentity, HubError> {
    state
        .hubs
        .get(host)
        .and_then(|r| r.get(device_id))
        .ok_or_else(|| HubError::DeviceNotFound(device_id.to_owned()))
}

fn new_key() -> String {
    SharedAccessKey::generate(32).expose_base64().to_owned()
}

fn fresh_twin(tags: Map<String, Value>, desired: Map<String, Value>) -> Twin {
    Twin {
        tags,
        desired: PropertySet::new(desired),
        reported: PropertySet::new(Map::new()),
        version: 1,
        etag: stamps::hub_etag(),
    }
}

impl Hub {
    /// A hub over the shared state, emitting to `events`.
    pub fn new(settings: HubSettings, store: Arc<Store<CloudState>>, router: Router) -> Self {
        Self {
            settings,
            store,
            router,
            sessions: Sessions::default(),
            seen: Mutex::new(HashMap::new()),
            sequence: Mutex::new(0),
        }
    }

    /// The configuration.
    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// The event stream.
    pub fn events(&self) -> &Arc<EventStream> {
        self.router.built_in()
    }

    fn host(&self) -> &str {
        &self.settings.host_name
    }

    /// A device identity.
    pub fn device(&self, device_id: &str) -> Option<DeviceIdentity> {
        self.store.read(|state| {
            state
                .hubs
                .get(self.host())
                .and_then(|r| r.get(device_id))
                .cloned()
        })
    }

    /// Every device identity, ordered by id.
    pub fn devices(&self) -> Vec<DeviceIdentity> {
        self.store
            .read(|state| {
                state
                    .hubs
                    .get(self.host())
                    .map(|r| r.values().cloned().collect())
            })
            .unwrap_or_default()
    }

    /// What the registry does not store: connection state, activity, queue length.
    pub fn presence(&self, device_id: &str) -> Presence {
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device_id)
            .cloned()
            .unwrap_or_default();
        Presence {
            connected: self.sessions.get(device_id).is_some(),
            connection_state_updated: seen.connection_state_updated,
            last_activity: seen.last_activity,
            cloud_to_device_message_count: self.pending_messages(device_id).len(),
        }
    }

    /// Records activity (any packet) of the device or module whose session key is `key`
    /// ([`sessions::session_key`]).
    pub fn touch(&self, key: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.entry(key.to_owned()).or_default().last_activity = Some(stamps::now());
    }

    // ----- identity registry -----

    /// Creates a device (service `PUT /devices/{id}` without `If-Match`).
    pub async fn create_device(
        &self,
        device_id: &str,
        spec: DeviceSpec,
    ) -> Result<DeviceIdentity, HubError> {
        let host = self.host().to_owned();
        let created = self
            .store
            .transact(|state| {
                if state
                    .hubs
                    .get(&host)
                    .is_some_and(|r| r.contains_key(device_id))
                {
                    return Err(HubError::DeviceAlreadyExists(device_id.to_owned()));
                }
                let device = DeviceIdentity {
                    device_id: device_id.to_owned(),
                    generation_id: uuid::Uuid::new_v4().simple().to_string(),
                    etag: stamps::hub_etag(),
                    status: spec.status.unwrap_or_default(),
                    status_reason: spec.status_reason,
                    primary_key: spec.primary_key.unwrap_or_else(new_key),
                    secondary_key: spec.secondary_key.unwrap_or_else(new_key),
                    iot_edge: spec.iot_edge.unwrap_or(false),
                    twin: fresh_twin(Map::new(), Map::new()),
                    last_updated: stamps::now(),
                };
                Ok((
                    device.clone(),
                    vec![Change::PutDevice {
                        hub: host.clone(),
                        device: Box::new(device),
                    }],
                ))
            })
            .await?;
        self.lifecycle_event(&created, "createDeviceIdentity");
        Ok(created)
    }

    /// Updates a device (service `PUT /devices/{id}` with `If-Match`).
    pub async fn update_device(
        &self,
        device_id: &str,
        if_match: &str,
        spec: DeviceSpec,
    ) -> Result<DeviceIdentity, HubError> {
        let host = self.host().to_owned();
        let updated = self
            .store
            .transact(|state| {
                let current = existing(state, &host, device_id)?;
                if !stamps::etag_matches(if_match, &current.etag) {
                    return Err(HubError::PreconditionFailed);
                }
                let mut device = current.clone();
                device.status = spec.status.unwrap_or(device.status);
                device.status_reason = spec.status_reason.or(device.status_reason);
                device.primary_key = spec.primary_key.unwrap_or(device.primary_key);
                device.secondary_key = spec.secondary_key.unwrap_or(device.secondary_key);
                device.iot_edge = spec.iot_edge.unwrap_or(device.iot_edge);
                device.etag = stamps::hub_etag();
                device.last_updated = stamps::now();
                Ok((
                    device.clone(),
                    vec![Change::PutDevice {
                        hub: host.clone(),
                        device: Box::new(device),
                    }],
                ))
            })
            .await?;
        if updated.status == DeviceStatus::Disabled {
            self.evict(device_id);
        }
        Ok(updated)
    }

    /// Deletes a device, its queue, and its connection.
    pub async fn delete_device(
        &self,
        device_id: &str,
        if_match: Option<&str>,
    ) -> Result<(), HubError> {
        let host = self.host().to_owned();
        let deleted = self
            .store
            .transact(|state| {
                let current = existing(state, &host, device_id)?;
                if if_match.is_some_and(|m| !stamps::etag_matches(m, &current.etag)) {
                    return Err(HubError::PreconditionFailed);
                }
                Ok((
                    current.clone(),
                    vec![Change::DeleteDevice {
                        hub: host.clone(),
                        device_id: device_id.to_owned(),
                    }],
                ))
            })
            .await?;
        self.device_deleted(&deleted);
        Ok(())
    }

    // ----- twins -----

    /// Service twin patch: tags and desired properties, with `If-Match` (`*` or the twin etag).
    pub async fn patch_twin(
        &self,
        device_id: &str,
        if_match: Option<&str>,
        tags: Option<Map<String, Value>>,
        desired: Option<Map<String, Value>>,
    ) -> Result<DeviceIdentity, HubError> {
        self.change_twin(device_id, if_match, |twin| {
            if let Some(tags) = &tags {
                let mut merged = twin.tags.clone();
                twin::merge(&mut merged, tags);
                twin.tags = merged;
            }
            if let Some(desired) = &desired {
                twin::apply_to_set(&mut twin.desired, desired)?;
            }
            Ok(())
        })
        .await
        .map(|(device, _)| {
            let mut body = Map::new();
            body.insert("version".into(), json!(device.twin.version));
            if let Some(tags) = tags {
                body.insert("tags".into(), Value::Object(tags));
            }
            if let Some(desired) = desired {
                let mut section = desired.clone();
                section.insert("$version".into(), json!(device.twin.desired.version));
                body.insert("properties".into(), json!({ "desired": section }));
                self.push_desired(&device, desired);
            }
            self.twin_event(&device, "updateTwin", Value::Object(body));
            device
        })
    }

    /// Service twin replace: tags and desired properties become exactly what is given.
    pub async fn replace_twin(
        &self,
        device_id: &str,
        if_match: Option<&str>,
        tags: Map<String, Value>,
        desired: Map<String, Value>,
    ) -> Result<DeviceIdentity, HubError> {
        let (device, old_desired) = self
            .change_twin(device_id, if_match, |twin| {
                let old = twin.desired.values.clone();
                twin.tags = tags.clone();
                let mut patch: Map<String, Value> =
                    old.keys().map(|k| (k.clone(), Value::Null)).collect();
                patch.extend(desired.clone());
                twin::apply_to_set(&mut twin.desired, &patch)?;
                Ok(())
            })
            .await?;
        // Devices learn the replacement as a patch: removed properties arrive as null.
        let mut patch: Map<String, Value> = old_desired
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .map(|k| (k.clone(), Value::Null))
            .collect();
        patch.extend(desired);
        self.push_desired(&device, patch);
        self.twin_event(&device, "replaceTwin", twin_body(&device));
        Ok(device)
    }

    /// A device's reported-properties patch; returns the new reported version.
    pub async fn report(&self, device_id: &str, patch: &Value) -> Result<u64, HubError> {
        let patch = twin::validated_patch(patch)?;
        let (device, _) = self
            .change_twin(device_id, None, |twin| {
                twin::apply_to_set(&mut twin.reported, &patch)
            })
            .await?;
        let mut section = patch.clone();
        section.insert("$version".into(), json!(device.twin.reported.version));
        self.twin_event(
            &device,
            "updateTwin",
            json!({ "version": device.twin.version, "properties": { "reported": section } }),
        );
        Ok(device.twin.reported.version)
    }

    /// Applies `edit` to a twin under `If-Match`; returns the device and the desired values
    /// before the change.
    async fn change_twin(
        &self,
        device_id: &str,
        if_match: Option<&str>,
        edit: impl FnOnce(&mut Twin) -> Result<(), TwinError>,
    ) -> Result<(DeviceIdentity, Map<String, Value>), HubError> {
        let host = self.host().to_owned();
        self.store
            .transact(|state| {
                let current = existing(state, &host, device_id)?;
                if if_match.is_some_and(|m| !stamps::etag_matches(m, &current.twin.etag)) {
                    return Err(HubError::PreconditionFailed);
                }
                let old_desired = current.twin.desired.values.clone();
                let mut device = current.clone();
                edit(&mut device.twin)?;
                device.twin.version += 1;
                device.twin.etag = stamps::hub_etag();
                Ok((
                    (device.clone(), old_desired),
                    vec![Change::PutDevice {
                        hub: host.clone(),
                        device: Box::new(device),
                    }],
                ))
            })
            .await
    }

    fn push_desired(&self, device: &DeviceIdentity, mut patch: Map<String, Value>) {
        let Some(session) = self.sessions.get(&device.device_id) else {
            return;
        };
        let Some(qos) = session.subscriptions().desired else {
            return;
        };
        let version = device.twin.desired.version;
        patch.insert("$version".into(), json!(version));
        publish(
            &session,
            format!("$iothub/twin/PATCH/properties/desired/?$version={version}"),
            qos,
            Bytes::from(Value::Object(patch).to_string()),
        );
    }

    // ----- cloud-to-device messages -----

    /// Messages waiting for the device, oldest first, expired ones left out.
    pub fn pending_messages(&self, device_id: &str) -> Vec<CloudMessage> {
        let now = now_ms();
        self.store.read(|state| {
            state
                .cloud_messages
                .get(self.host())
                .and_then(|q| q.get(device_id))
                .map(|queue| {
                    queue
                        .iter()
                        .filter(|m| m.expires_at_ms > now)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// Queues a message for a device and sends it at once if the device listens.
    pub async fn send_message(
        &self,
        device_id: &str,
        message: CloudMessage,
    ) -> Result<(), HubError> {
        let host = self.host().to_owned();
        let now = now_ms();
        self.store
            .transact(|state| {
                if !state
                    .hubs
                    .get(&host)
                    .is_some_and(|r| r.contains_key(device_id))
                {
                    return Err(HubError::DeviceNotFound(device_id.to_owned()));
                }
                let queue = state
                    .cloud_messages
                    .get(&host)
                    .and_then(|q| q.get(device_id));
                let mut changes: Vec<Change> = queue
                    .into_iter()
                    .flatten()
                    .filter(|m| m.expires_at_ms <= now)
                    .map(|m| Change::RemoveCloudMessage {
                        hub: host.clone(),
                        device_id: device_id.to_owned(),
                        message_id: m.message_id.clone(),
                    })
                    .collect();
                let live = queue.map_or(0, |q| q.len()) - changes.len();
                if live >= MAX_QUEUED_MESSAGES {
                    return Err(HubError::QueueFull);
                }
                changes.push(Change::EnqueueCloudMessage {
                    hub: host.clone(),
                    device_id: device_id.to_owned(),
                    message: Box::new(message),
                });
                Ok(((), changes))
            })
            .await?;
        if let Some(session) = self.sessions.get(device_id) {
            self.deliver_messages(&session);
        }
        Ok(())
    }

    /// Sends every pending message the session does not already have in flight.
    pub fn deliver_messages(&self, session: &Session) {
        let Some(qos) = session.subscriptions().cloud_messages else {
            return;
        };
        for message in self.pending_messages(&session.device_id) {
            if session.is_in_flight(&message.message_id) {
                continue;
            }
            let topic = format!(
                "devices/{}/messages/devicebound/{}",
                session.device_id,
                message_bag(&session.device_id, &message)
            );
            let packet_id = session.packet_id();
            session.track_message(packet_id, message.message_id.clone());
            let packet = Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic,
                pkid: if qos == QoS::AtMostOnce { 0 } else { packet_id },
                payload: message.body.clone(),
            });
            session.writer.send(packet);
            if qos == QoS::AtMostOnce {
                // Nothing will acknowledge a QoS 0 delivery; it is complete once sent.
                let _ = session.acknowledge(packet_id);
            }
        }
    }

    /// A device acknowledged a message: it leaves the queue.
    pub async fn complete_message(
        &self,
        device_id: &str,
        message_id: String,
    ) -> Result<(), HubError> {
        let host = self.host().to_owned();
        self.store
            .transact(|_| {
                Ok::<_, HubError>((
                    (),
                    vec![Change::RemoveCloudMessage {
                        hub: host.clone(),
                        device_id: device_id.to_owned(),
                        message_id,
                    }],
                ))
            })
            .await
    }

    // ----- direct methods -----

    /// Invokes a direct method and waits for the device's answer.
    pub async fn invoke_method(
        &self,
        device_id: &str,
        method: &str,
        payload: &Value,
        response_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<MethodReply, HubError> {
        if self.device(device_id).is_none() {
            return Err(HubError::DeviceNotFound(device_id.to_owned()));
        }
        self.call_session(
            &sessions::session_key(device_id, None),
            method,
            payload,
            response_timeout,
            connect_timeout,
        )
        .await
    }

    /// Sends a method call to the session filed under `key` (a device's or a module's), waiting
    /// up to `connect_timeout` for it to listen, and waits for the answer.
    async fn call_session(
        &self,
        key: &str,
        method: &str,
        payload: &Value,
        response_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<MethodReply, HubError> {
        let session = tokio::time::timeout(connect_timeout, async {
            loop {
                let changed = self.sessions.changed.notified();
                if let Some(session) = self
                    .sessions
                    .by_key(key)
                    .filter(|s| s.subscriptions().methods.is_some())
                {
                    return session;
                }
                changed.await;
            }
        })
        .await
        .map_err(|_| HubError::DeviceNotOnline)?;
        let qos = session.subscriptions().methods.unwrap_or(QoS::AtMostOnce);
        let (rid, reply) = session.start_method();
        publish(
            &session,
            format!("$iothub/methods/POST/{method}/?$rid={rid}"),
            qos,
            Bytes::from(payload.to_string()),
        );
        match tokio::time::timeout(response_timeout, reply).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(HubError::DeviceNotOnline),
            Err(_) => {
                session.abandon_method(&rid);
                Err(HubError::Timeout)
            }
        }
    }

    // ----- connections -----

    /// Closes a device's connection, if any.
    pub fn evict(&self, device_id: &str) {
        if let Some(session) = self.sessions.get(device_id) {
            session.evicted.notify_one();
        }
    }

    /// Records a connection change and emits `deviceConnected` or `deviceDisconnected`.
    pub fn connection_event(&self, device_id: &str, connected: bool) {
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.entry(device_id.to_owned())
                .or_default()
                .connection_state_updated = Some(stamps::now());
        }
        let sequence = self.next_connection_sequence();
        let op = if connected {
            "deviceConnected"
        } else {
            "deviceDisconnected"
        };
        self.notification(
            device_id,
            "deviceConnectionStateEvents",
            "deviceConnectionStateNotification",
            op,
            json!({ "sequenceNumber": sequence }),
        );
    }

    /// The next connection-state sequence number: strictly increasing, as Azure's 256-bit
    /// sequence numbers are, and time-based so it keeps increasing across restarts. Devices and
    /// modules share one sequence.
    fn next_connection_sequence(&self) -> String {
        let mut last = self.sequence.lock().unwrap_or_else(|p| p.into_inner());
        let now = time::OffsetDateTime::now_utc()
            .unix_timestamp_nanos()
            .max(0) as u128;
        *last = (*last + 1).max(now);
        format!("{:064X}", *last)
    }

    // ----- events -----

    /// Emits a lifecycle event for a created or deleted identity.
    pub fn lifecycle_event(&self, device: &DeviceIdentity, op: &str) {
        self.notification(
            &device.device_id,
            "deviceLifecycleEvents",
            "deviceLifecycleNotification",
            op,
            twin_body(device),
        );
    }

    fn twin_event(&self, device: &DeviceIdentity, op: &str, body: Value) {
        self.notification(
            &device.device_id,
            "twinChangeEvents",
            "twinChangeNotification",
            op,
            body,
        );
    }

    /// A device was removed (by the service or by DPS moving it): tell the stream, close it
    /// and its modules' connections (its modules went with it).
    pub fn device_deleted(&self, device: &DeviceIdentity) {
        self.lifecycle_event(device, "deleteDeviceIdentity");
        self.evict(&device.device_id);
        for session in self.sessions.modules_of(&device.device_id) {
            session.evicted.notify_one();
        }
    }

    /// DPS replaced a device's twin (reprovisioning with reset).
    pub fn twin_replaced(&self, device: &DeviceIdentity) {
        self.twin_event(device, "replaceTwin", twin_body(device));
    }

    fn notification(&self, device_id: &str, source: &str, schema: &str, op: &str, body: Value) {
        self.notify(device_id, None, source, schema, op, body);
    }

    /// Builds and records a non-telemetry event. A module's carries the application property
    /// `moduleId`, and for lifecycle and twin events the system property
    /// `iothub-connection-module-id` (MicrosoftDocs/azure-docs
    /// articles/iot-hub/iot-hub-non-telemetry-event-schema.md: the system property "is output only
    /// for module life cycle and twin events"; connection state events of a module carry
    /// `moduleId`).
    fn notify(
        &self,
        device_id: &str,
        module: Option<&str>,
        source: &str,
        schema: &str,
        op: &str,
        body: Value,
    ) {
        let mut system = Map::new();
        system.insert("content-type".into(), json!("application/json"));
        system.insert("content-encoding".into(), json!("utf-8"));
        system.insert(
            "correlation-id".into(),
            json!(uuid::Uuid::new_v4().simple().to_string()[..11].to_owned()),
        );
        system.insert("user-id".into(), json!(self.settings.name));
        system.insert("iothub-connection-device-id".into(), json!(device_id));
        if let Some(module_id) = module.filter(|_| source != "deviceConnectionStateEvents") {
            system.insert("iothub-connection-module-id".into(), json!(module_id));
        }
        system.insert("iothub-message-source".into(), json!(source));
        let mut application = Map::new();
        application.insert("hubName".into(), json!(self.settings.name));
        application.insert("deviceId".into(), json!(device_id));
        if let Some(module_id) = module {
            application.insert("moduleId".into(), json!(module_id));
        }
        application.insert("opType".into(), json!(op));
        application.insert("iothub-message-schema".into(), json!(schema));
        application.insert("operationTimestamp".into(), json!(stamps::now()));
        self.append(NewEvent {
            device_id: device_id.to_owned(),
            system_properties: system,
            properties: application,
            body: Bytes::from(body.to_string()),
        });
    }

    /// Records device telemetry; `bag` holds the topic's property bag, already decoded.
    pub fn telemetry(
        &self,
        device: &DeviceIdentity,
        bag: Vec<(String, String)>,
        body: Bytes,
    ) -> bool {
        self.record_telemetry(&device.device_id, None, &device.generation_id, bag, body)
    }

    /// Records telemetry of a device or (with `module_id`) of one of its modules, whose
    /// messages also carry `iothub-connection-module-id`.
    fn record_telemetry(
        &self,
        device_id: &str,
        module_id: Option<&str>,
        generation_id: &str,
        bag: Vec<(String, String)>,
        body: Bytes,
    ) -> bool {
        let mut system = Map::new();
        system.insert("iothub-connection-device-id".into(), json!(device_id));
        if let Some(module_id) = module_id {
            system.insert("iothub-connection-module-id".into(), json!(module_id));
        }
        let scope = if module_id.is_some() {
            "module"
        } else {
            "device"
        };
        system.insert(
            "iothub-connection-auth-method".into(),
            json!(format!(
                r#"{{"scope":"{scope}","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}}"#
            )),
        );
        system.insert(
            "iothub-connection-auth-generation-id".into(),
            json!(generation_id),
        );
        system.insert("iothub-message-source".into(), json!("Telemetry"));
        let mut application = Map::new();
        for (name, value) in bag {
            let system_name = match name.as_str() {
                "$.mid" => Some("message-id"),
                "$.cid" => Some("correlation-id"),
                "$.uid" => Some("user-id"),
                "$.to" => Some("to"),
                "$.ct" => Some("content-type"),
                "$.ce" => Some("content-encoding"),
                "$.exp" => Some("absolute-expiry-time"),
                "$.ifid" => Some("dt-dataschema"),
                "$.sub" => Some("dt-subject"),
                _ => None,
            };
            match system_name {
                Some(system_name) => {
                    system.insert(system_name.into(), json!(value));
                }
                None => {
                    application.insert(name, json!(value));
                }
            }
        }
        self.append(NewEvent {
            device_id: device_id.to_owned(),
            system_properties: system,
            properties: application,
            body,
        })
    }

    fn append(&self, event: NewEvent) -> bool {
        match self.router.route(event) {
            Ok(_) => true,
            Err(error) => {
                tracing::error!(hub = %self.settings.name, %error, "an event could not be recorded");
                false
            }
        }
    }
}

/// A lifecycle or replace body: the device's twin.
fn twin_body(device: &DeviceIdentity) -> Value {
    json!({
        "deviceId": device.device_id,
        "etag": device.twin.etag,
        "version": device.twin.version,
        "tags": device.twin.tags,
        "properties": {
            "desired": twin::service_section(&device.twin.desired, true),
            "reported": twin::service_section(&device.twin.reported, false),
        }
    })
}

/// The property bag of a cloud-to-device message topic, URL-encoded.
fn message_bag(device_id: &str, message: &CloudMessage) -> String {
    let encode = iot_credentials::sas::encode_component;
    let mut pairs = vec![
        ("$.mid".to_owned(), message.message_id.clone()),
        (
            "$.to".to_owned(),
            format!("/devices/{device_id}/messages/deviceBound"),
        ),
    ];
    if let Some(cid) = &message.correlation_id {
        pairs.push(("$.cid".into(), cid.clone()));
    }
    if let Some(ct) = &message.content_type {
        pairs.push(("$.ct".into(), ct.clone()));
    }
    if let Some(ce) = &message.content_encoding {
        pairs.push(("$.ce".into(), ce.clone()));
    }
    pairs.extend(
        message
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Publishes to a session at `qos` (a packet id is taken for QoS 1).
pub(crate) fn publish(session: &Session, topic: String, qos: QoS, payload: Bytes) {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic,
        pkid: if qos == QoS::AtMostOnce {
            0
        } else {
            session.packet_id()
        },
        payload,
    });
    session.writer.send(packet);
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
