//! The devices and modules connected to a hub right now: one session per device and one per
//! module (a new connection replaces the old, as on Azure), with what each subscribed to and
//! what is in flight. A module's session and its device's session are independent: sessions are
//! keyed by [`session_key`], `{deviceId}` or `{deviceId}/{moduleId}`, which cannot collide
//! because device ids have no `/`.

use crate::net::mqtt::PacketWriter;
use crate::net::mqtt_codec::QoS;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{oneshot, Notify};

/// A device's answer to a direct method.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodReply {
    /// The status the device chose.
    pub status: i64,
    /// Its JSON payload (null when empty or not JSON).
    pub payload: Value,
}

/// What a session subscribed to, with the granted QoS.
#[derive(Debug, Default, Clone)]
pub struct Subscriptions {
    /// `devices/{id}/messages/devicebound/#`.
    pub cloud_messages: Option<QoS>,
    /// `$iothub/twin/res/#`.
    pub twin_responses: Option<QoS>,
    /// `$iothub/twin/PATCH/properties/desired/#`.
    pub desired: Option<QoS>,
    /// `$iothub/methods/POST/#`.
    pub methods: Option<QoS>,
}

/// The key of a device's (`module_id` None) or a module's session.
pub fn session_key(device_id: &str, module_id: Option<&str>) -> String {
    match module_id {
        Some(module_id) => format!("{device_id}/{module_id}"),
        None => device_id.to_owned(),
    }
}

/// One open device or module connection.
pub struct Session {
    /// Distinguishes sessions of the same device.
    pub id: u64,
    /// The device (for a module, the device it belongs to).
    pub device_id: String,
    /// The module, when this is a module's connection.
    pub module_id: Option<String>,
    /// Sends to the device.
    pub writer: PacketWriter,
    subscriptions: Mutex<Subscriptions>,
    methods: Mutex<HashMap<String, oneshot::Sender<MethodReply>>>,
    in_flight: Mutex<HashMap<u16, String>>,
    next_packet_id: AtomicU16,
    next_request_id: AtomicU64,
    /// Signalled when the hub wants this session gone (replaced, deleted, disabled).
    pub evicted: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Session {
    /// The key the session is filed under ([`session_key`]).
    pub fn key(&self) -> String {
        session_key(&self.device_id, self.module_id.as_deref())
    }

    /// What the session is subscribed to.
    pub fn subscriptions(&self) -> Subscriptions {
        lock(&self.subscriptions).clone()
    }

    /// Changes the subscriptions.
    pub fn subscribe(&self, change: impl FnOnce(&mut Subscriptions)) {
        change(&mut lock(&self.subscriptions));
    }

    /// A packet id for a QoS 1 publish to the device (never 0).
    pub fn packet_id(&self) -> u16 {
        loop {
            let id = self.next_packet_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Remembers that packet `packet_id` carries cloud message `message_id`.
    pub fn track_message(&self, packet_id: u16, message_id: String) {
        lock(&self.in_flight).insert(packet_id, message_id);
    }

    /// The cloud message a PUBACK acknowledges.
    pub fn acknowledge(&self, packet_id: u16) -> Option<String> {
        lock(&self.in_flight).remove(&packet_id)
    }

    /// Whether a cloud message is already on its way to the device.
    pub fn is_in_flight(&self, message_id: &str) -> bool {
        lock(&self.in_flight).values().any(|m| m == message_id)
    }

    /// Registers a method call and returns its request id and the reply channel.
    pub fn start_method(&self) -> (String, oneshot::Receiver<MethodReply>) {
        let rid = format!(
            "{:x}",
            self.next_request_id.fetch_add(1, Ordering::Relaxed) + 1
        );
        let (tx, rx) = oneshot::channel();
        lock(&self.methods).insert(rid.clone(), tx);
        (rid, rx)
    }

    /// Delivers a device's method reply; false if no call waits for it.
    pub fn finish_method(&self, rid: &str, reply: MethodReply) -> bool {
        match lock(&self.methods).remove(rid) {
            Some(tx) => tx.send(reply).is_ok(),
            None => false,
        }
    }

    /// Forgets a method call (timed out).
    pub fn abandon_method(&self, rid: &str) {
        lock(&self.methods).remove(rid);
    }
}

/// The open sessions of one hub.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Arc<Session>>>,
    next_id: AtomicU64,
    /// Signalled whenever a session opens or closes.
    pub changed: Notify,
}

impl Sessions {
    /// Opens a session for `device_id` (or its module `module_id`), returning it and the
    /// session it replaced, if any.
    pub fn open(
        &self,
        device_id: &str,
        module_id: Option<&str>,
        writer: PacketWriter,
    ) -> (Arc<Session>, Option<Arc<Session>>) {
        let session = Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            device_id: device_id.to_owned(),
            module_id: module_id.map(str::to_owned),
            writer,
            subscriptions: Mutex::new(Subscriptions::default()),
            methods: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            next_packet_id: AtomicU16::new(1),
            next_request_id: AtomicU64::new(0),
            evicted: Notify::new(),
        });
        let replaced = lock(&self.open).insert(session.key(), session.clone());
        self.changed.notify_waiters();
        (session, replaced)
    }

    /// Closes `session` if it is still the device's current one; true if it was.
    pub fn close(&self, session: &Session) -> bool {
        // Methods waiting for this connection's answer will not get one: fail them now (the
        // caller answers "device not online") instead of letting them run into their timeout.
        lock(&session.methods).clear();
        let key = session.key();
        let mut open = lock(&self.open);
        let current = open.get(&key).is_some_and(|s| s.id == session.id);
        if current {
            open.remove(&key);
        }
        drop(open);
        self.changed.notify_waiters();
        current
    }

    /// The device's open session (its modules' sessions are not it).
    pub fn get(&self, device_id: &str) -> Option<Arc<Session>> {
        lock(&self.open).get(device_id).cloned()
    }

    /// The session filed under `key` ([`session_key`]).
    pub fn by_key(&self, key: &str) -> Option<Arc<Session>> {
        lock(&self.open).get(key).cloned()
    }

    /// A module's open session.
    pub fn get_module(&self, device_id: &str, module_id: &str) -> Option<Arc<Session>> {
        lock(&self.open)
            .get(&session_key(device_id, Some(module_id)))
            .cloned()
    }

    /// The open sessions of a device's modules.
    pub fn modules_of(&self, device_id: &str) -> Vec<Arc<Session>> {
        lock(&self.open)
            .values()
            .filter(|s| s.device_id == device_id && s.module_id.is_some())
            .cloned()
            .collect()
    }

    /// Number of open sessions.
    pub fn count(&self) -> usize {
        lock(&self.open).len()
    }
}
