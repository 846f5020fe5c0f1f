//! What the hub sends a session, and what the background work it starts answers: twin answers
//! and desired patches, direct methods (`GetDiagnostics`, `RotateKey`, `Reprovision`),
//! cloud-to-device messages, and the outcomes of re-provisioning and key rotation.

use super::reports::{apply_desired, connect_report, diagnostics, now};
use super::session::Session;
use super::{End, FIRST_BACKOFF, MAX_BACKOFF};
use crate::assignment::Assignment;
use crate::backoff;
use crate::rotation;
use rumqttc::Publish;
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The request id in a topic's query (`...?$rid=7&...`).
fn request_id(query: &str) -> Option<&str> {
    query.split('&').find_map(|p| p.strip_prefix("$rid="))
}

impl Session<'_> {
    /// Routes a message from the hub by its topic.
    pub(super) fn on_publish(&mut self, publish: &Publish) {
        let topic = publish.topic.as_str();
        if let Some(rest) = topic.strip_prefix("$iothub/twin/res/") {
            let (status, query) = rest.split_once("/?").unwrap_or((rest, ""));
            let answered = request_id(query);
            if answered.is_some() && answered == self.twin_request.as_deref() {
                self.twin_request = None;
                if status == "200" {
                    self.on_twin(&publish.payload);
                }
            }
        } else if topic.starts_with("$iothub/twin/PATCH/properties/desired/") {
            let desired: Map<String, Value> =
                serde_json::from_slice(&publish.payload).unwrap_or_default();
            let ack = apply_desired(self.shared, &desired);
            self.report(&ack);
        } else if let Some(rest) = topic.strip_prefix("$iothub/methods/POST/") {
            let (name, query) = rest.split_once("/?").unwrap_or((rest, ""));
            if let Some(method_rid) = request_id(query).map(str::to_owned) {
                self.shared.stats.methods.fetch_add(1, Ordering::Relaxed);
                self.on_method(name, &method_rid, &publish.payload);
            }
        } else if topic.starts_with(&format!(
            "devices/{}/messages/devicebound/",
            self.assignment.device_id
        )) {
            self.shared
                .stats
                .cloud_messages
                .fetch_add(1, Ordering::Relaxed);
            let bytes = publish.payload.len();
            tracing::info!(bytes, "received a cloud-to-device message");
        }
    }

    /// The twin as read on connecting: desired properties applied, the device reported.
    fn on_twin(&mut self, payload: &[u8]) {
        let twin: Value = serde_json::from_slice(payload).unwrap_or_default();
        let desired = twin["desired"].as_object().cloned().unwrap_or_default();
        let ack = apply_desired(self.shared, &desired);
        let report = connect_report(self.config, self.assignment, self.shared, ack);
        self.report(&report);
    }

    /// Answers a direct method.
    fn on_method(&mut self, name: &str, method_rid: &str, payload: &[u8]) {
        let (status, answer) = match name {
            "GetDiagnostics" => (200, diagnostics(self.assignment, self.shared)),
            rotation::METHOD => self.on_rotate_key(payload),
            "Reprovision" => {
                // DPS starts once the answer is on the wire: moving hubs removes the device from
                // this one, and with it the connection a later answer would need.
                self.reprovision_after_answer = true;
                let message = "re-provisioning through DPS; the device moves if its hub changed";
                (202, json!({ "accepted": true, "message": message }))
            }
            other => {
                let message = format!(
                    "this device has no method {other:?}; \
                     it offers Reprovision, RotateKey and GetDiagnostics"
                );
                (404, json!({ "message": message }))
            }
        };
        self.send_control(
            format!("$iothub/methods/res/{status}/?$rid={method_rid}"),
            answer.to_string().into_bytes(),
        );
    }

    /// `RotateKey`: stores the rotated key; re-provisioning with it starts once answered.
    fn on_rotate_key(&mut self, payload: &[u8]) -> (u16, Value) {
        let request: Value = serde_json::from_slice(payload).unwrap_or_default();
        match rotation::accept(&self.config.state, &request) {
            Ok(rotation::Accepted::Stored(id)) => {
                // The file changed under this session on purpose.
                self.fingerprint = self.config.state.fingerprint();
                tracing::info!(
                    rotation.id = %id,
                    "stored a rotated key; re-provisioning with it next"
                );
                self.rotate_after_answer = true;
                (200, json!({ "accepted": true, "rotationId": id }))
            }
            Ok(rotation::Accepted::AlreadyDone(id)) => {
                if let Some(report) = rotation::completed_report(self.assignment) {
                    self.report(&json!({ "keyRotation": report }));
                }
                let answer = json!({ "accepted": true, "rotationId": id, "alreadyDone": true });
                (200, answer)
            }
            Err(error) => {
                tracing::warn!(%error, "a key rotation was refused");
                (error.status(), json!({ "message": error.to_string() }))
            }
        }
    }

    /// Runs DPS again with the stored credentials, in the background.
    pub(super) fn start_reprovisioning(&self) {
        let provisioner = self.config.provisioner.clone();
        let state = self.config.state.clone();
        let current = self.assignment.clone();
        let done = self.method_done.clone();
        tokio::spawn(async move {
            let outcome = match provisioner.provision(&current.credentials).await {
                Ok(next) => {
                    // What the device learned meanwhile (a rotated key) stays.
                    let latest = state.load().ok().flatten().unwrap_or(current);
                    let next = latest.reassigned(next);
                    state.save(&next).map(|()| next).map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            let _ = done.send(outcome);
        });
    }

    /// Re-provisioning ended: another hub means a move; a failure is reported.
    pub(super) fn on_reprovisioned(&mut self, outcome: Result<Assignment, String>) -> Option<End> {
        match outcome {
            Ok(next)
                if next.hub != self.assignment.hub
                    || next.device_id != self.assignment.device_id =>
            {
                tracing::info!(hub = %next.hub, "re-provisioned to another hub; moving");
                let _ = self.client.try_disconnect();
                return Some(End::Reassigned);
            }
            // The same hub: the fingerprint watcher reconnects with the stored assignment.
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "re-provisioning failed; staying on the current hub");
                let status = "reprovisionFailed";
                let failed = json!({ "status": status, "error": error, "at": now() });
                self.report(&json!({ "provisioning": failed }));
            }
        }
        None
    }

    /// Re-provisioning with a rotated key ended: done means a move; refused is reported; a
    /// failure is tried again after a backoff.
    pub(super) fn on_rotation_finished(
        &mut self,
        outcome: Result<rotation::Finished, String>,
    ) -> Option<End> {
        let shared = self.shared;
        match outcome {
            Ok(rotation::Finished::Done(next)) => {
                let first = FIRST_BACKOFF.as_millis() as u64;
                shared.rotation_backoff_ms.store(first, Ordering::Relaxed);
                tracing::info!(hub = %next.hub, "moving to the rotated key");
                let _ = self.client.try_disconnect();
                return Some(End::Reassigned);
            }
            Ok(rotation::Finished::Refused(id, error)) => {
                self.fingerprint = self.config.state.fingerprint();
                let refused = rotation::refused_report(&id, &error, &now());
                self.report(&json!({ "keyRotation": refused }));
            }
            Ok(rotation::Finished::Nothing) => {}
            Err(reason) => {
                let wait =
                    Duration::from_millis(shared.rotation_backoff_ms.load(Ordering::Relaxed));
                let next = (wait * 2).min(MAX_BACKOFF).as_millis() as u64;
                shared.rotation_backoff_ms.store(next, Ordering::Relaxed);
                let wait = backoff::spread(wait);
                tracing::warn!(
                    %reason,
                    retry_in_ms = wait.as_millis() as u64,
                    "re-provisioning with the rotated key failed; \
                     the current key stays in use, trying again later"
                );
                self.rotation_retry = Some(tokio::time::Instant::now() + wait);
            }
        }
        None
    }
}
