//! Rotating a device's symmetric key without losing the device, the way fleets roll keys with
//! an individual enrollment's two slots (`domain::rotation`):
//!
//! 1. **Staging**: a new random key goes into the slot the device is not using (DPS PUT with
//!    the enrollment's etag). The device's current key keeps working.
//! 2. **Staged → Delivered**: the key is read back from DPS and handed to the device over its
//!    authenticated hub connection, as the direct method [`METHOD`]. A device that is offline
//!    stays staged; the key is handed over when it connects (its `deviceConnected` event) or by
//!    the next repair pass (the `Reconcile` timer).
//! 3. The device stores the key, re-provisions through DPS with it (DPS then writes the
//!    enrollment's keys into the hub identity), reconnects with it and reports
//!    `keyRotation: {id, status: "completed"}`.
//! 4. **Retiring**: seeing that report (through the event stream), the old slot gets a fresh
//!    random key nobody holds, in DPS and in the hub identity, so the old key is refused by both.
//!
//! Every step is written to the record before the change it names is made, so an interruption
//! anywhere is finished from where it stood: staging and retiring put a fresh key nobody has
//! seen into their slot, which is harmless to repeat; delivering again hands over the same key
//! under the same id, which the device takes as a repeat. The key itself is never stored by the
//! registry, written to a log, or answered by the API; it travels DPS → handler → hub → device.

use super::{Service, ServiceError};
use crate::cloud::hub::MethodCall;
use crate::cloud::CloudError;
use crate::domain::events::Stamp;
use crate::domain::rotation::{CompletedRotation, KeyRotation, RotationStep};
use crate::domain::{now, DeviceRecord, DpsSync, RegistrationId};
use crate::storage::{StoreError, Stored};
use iot_credentials::SharedAccessKey;
use serde_json::json;

/// The direct method that hands the new key to the device.
pub const METHOD: &str = "RotateKey";
/// Bytes of a generated key: what DPS generates (MicrosoftDocs/azure-docs
/// articles/iot-dps/concepts-symmetric-key-attestation.md: "a default length of 64 bytes").
const KEY_BYTES: usize = 64;
/// Seconds the device has to store the key and answer.
const ANSWER_SECONDS: u32 = 30;
/// Seconds a delivery prompted by the device's connection waits for the device to subscribe to
/// methods (the hub announces the connection before the device has subscribed).
const CONNECTED_WAIT_SECONDS: u32 = 15;
/// Steps one advance takes at most (staging, delivery, retiring, and slack for races).
const MAX_STEPS: usize = 6;
/// Attempts at an etag-guarded record write before giving way to the other writer.
const WRITE_ATTEMPTS: usize = 6;

/// Whether, and how, an advance may hand the key to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Not now (the caller only finishes DPS steps).
    No,
    /// Call the device now, failing at once if it is not connected.
    Now,
    /// The device has just connected: give it a moment to subscribe to methods.
    OnConnect,
}

fn rotation_pending(id: &RegistrationId) -> ServiceError {
    ServiceError::conflict(
        "rotationPending",
        format!("a key rotation of {id} is already in progress; it finishes when the device has re-provisioned with the new key"),
    )
}

impl Service {
    /// `POST /api/enrollments/{registrationId}/rotate-key`: starts a rotation and takes it as
    /// far as it goes now (to `delivered` when the device is online, `staged` when it is not). A
    /// dependency failing after the rotation is recorded does not fail the request: the rotation
    /// stays at the step it reached, with the reason, for the repair pass.
    pub async fn rotate_key(&self, id: &str) -> Result<Stored, ServiceError> {
        let id = RegistrationId::parse(id).map_err(|e| ServiceError::NotFound(e.0))?;
        let stored = self
            .store
            .get(&id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no enrollment {id}")))?;
        let stored = self
            .settle(stored)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("no enrollment {id}")))?;
        let check = |record: &DeviceRecord| -> Result<(), ServiceError> {
            if record.key_rotation.is_some() {
                return Err(rotation_pending(&record.registration_id));
            }
            if record.sync != DpsSync::Complete {
                return Err(ServiceError::conflict(
                    "enrollmentPending",
                    format!("{id} has an unfinished change; retry shortly"),
                ));
            }
            if !record.enabled {
                return Err(ServiceError::conflict(
                    "enrollmentDisabled",
                    format!("{id} is disabled, so it could not re-provision with a new key; enable it first"),
                ));
            }
            if record.assigned_hub().is_none() {
                return Err(ServiceError::conflict(
                    "deviceNotAssigned",
                    format!("{id} has not registered yet, so there is no device to hand a key to; its provisioning code still carries the current key"),
                ));
            }
            Ok(())
        };
        check(&stored.record)?;
        // The intent first: from here on a repair pass finishes the rotation.
        let rotation = KeyRotation::start(stored.record.key_slot.other());
        let mut current = stored;
        let mut started = None;
        for _ in 0..WRITE_ATTEMPTS {
            let mut record = current.record.clone();
            record.key_rotation = Some(rotation.clone());
            record.updated_at = now();
            match self.store.replace(&current, &record).await {
                Ok(etag) => {
                    started = Some(Stored { record, etag });
                    break;
                }
                // Events wrote meanwhile: look again (another rotation may have started).
                Err(StoreError::PreconditionFailed) => {
                    current = self
                        .store
                        .get(&id)
                        .await?
                        .ok_or_else(|| ServiceError::NotFound(format!("no enrollment {id}")))?;
                    check(&current.record)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let started = started.ok_or_else(|| {
            ServiceError::conflict(
                "conflict",
                format!("the record of {id} keeps changing; retry"),
            )
        })?;
        tracing::info!(
            registration.id = %id,
            rotation.id = %rotation.id,
            slot = rotation.slot.as_str(),
            "started a key rotation"
        );
        match self.advance_rotation(started.clone(), Delivery::Now).await {
            Ok(stored) => Ok(stored),
            // The rotation is accepted (its intent is stored, and the repair pass takes it on
            // from the step it reached); the answer says where it stopped and why.
            Err(error) => {
                tracing::warn!(
                    registration.id = %id,
                    rotation.id = %rotation.id,
                    %error,
                    "a key rotation could not move on now; the repair pass takes it on"
                );
                let current = self.store.get(&id).await?.unwrap_or(started);
                self.update_rotation(&current, &rotation.id, |record| {
                    if let Some(pending) = record.key_rotation.as_mut() {
                        pending.last_error = Some(error.to_string());
                    }
                })
                .await
            }
        }
    }

    /// Takes a record's rotation as far as it goes now. Answers the record as it then is; a
    /// failure leaves the rotation at the step it reached, for the next advance.
    pub async fn advance_rotation(
        &self,
        mut stored: Stored,
        delivery: Delivery,
    ) -> Result<Stored, ServiceError> {
        for _ in 0..MAX_STEPS {
            let Some(rotation) = stored.record.key_rotation.clone() else {
                return Ok(stored);
            };
            let id = stored.record.registration_id.clone();
            stored = match rotation.step {
                RotationStep::Staging => {
                    let key = SharedAccessKey::generate(KEY_BYTES);
                    self.dps
                        .replace_key(&stored.record, rotation.slot, &key)
                        .await
                        .map_err(ServiceError::dps)?;
                    let staged = self
                        .move_rotation(&stored, &rotation, |r| {
                            r.step = RotationStep::Staged;
                        })
                        .await?;
                    self.note(
                        stored.record.device_id.as_str(),
                        "keyRotationStarted",
                        Some(json!({ "rotationId": rotation.id, "slot": rotation.slot.as_str() })),
                    )
                    .await;
                    staged
                }
                RotationStep::Staged | RotationStep::Delivered
                    if rotation.reported_done(&stored.record.live) =>
                {
                    // Reported done (for a staged rotation: the answer to the method was lost).
                    self.move_rotation(&stored, &rotation, |r| {
                        r.step = RotationStep::Retiring;
                    })
                    .await?
                }
                RotationStep::Staged if delivery != Delivery::No => {
                    match self.deliver(&stored.record, &rotation, delivery).await? {
                        Ok(()) => {
                            let delivered = self
                                .move_rotation(&stored, &rotation, |r| {
                                    r.step = RotationStep::Delivered;
                                    r.deliveries += 1;
                                    r.last_error = None;
                                })
                                .await?;
                            tracing::info!(
                                registration.id = %id,
                                rotation.id = %rotation.id,
                                "handed the new key to the device"
                            );
                            self.note(
                                stored.record.device_id.as_str(),
                                "keyDelivered",
                                Some(json!({ "rotationId": rotation.id, "slot": rotation.slot.as_str() })),
                            )
                            .await;
                            delivered
                        }
                        Err(reason) => {
                            tracing::info!(
                                registration.id = %id,
                                rotation.id = %rotation.id,
                                %reason,
                                "the new key could not be handed to the device yet; the rotation stays pending"
                            );
                            return self
                                .move_rotation(&stored, &rotation, |r| {
                                    r.deliveries += 1;
                                    r.last_error = Some(reason.clone());
                                })
                                .await;
                        }
                    }
                }
                RotationStep::Staged | RotationStep::Delivered => return Ok(stored),
                RotationStep::Retiring => return self.retire(stored, &rotation).await,
            };
        }
        Ok(stored)
    }

    /// Hands the key in the rotation's slot to the device. `Ok(Err(reason))` when the device
    /// could not take it now (offline, slow, refusing); `Err` when a dependency failed.
    async fn deliver(
        &self,
        record: &DeviceRecord,
        rotation: &KeyRotation,
        delivery: Delivery,
    ) -> Result<Result<(), String>, ServiceError> {
        let Some(hub) = record.assigned_hub().map(str::to_owned) else {
            return Ok(Err("the device is not assigned to a hub".into()));
        };
        let keys = self
            .dps
            .keys(record.registration_id.as_str())
            .await
            .map_err(ServiceError::dps)?;
        let call = MethodCall {
            name: METHOD.to_owned(),
            payload: json!({
                "rotationId": rotation.id,
                "slot": rotation.slot.as_str(),
                "key": keys.slot(rotation.slot).expose_base64(),
            }),
            response_timeout: ANSWER_SECONDS,
            connect_timeout: match delivery {
                Delivery::OnConnect => CONNECTED_WAIT_SECONDS,
                _ => 0,
            },
        };
        match self
            .hubs
            .invoke(&hub, record.device_id.as_str(), &call)
            .await
        {
            Ok(answer) if answer.status == 200 => Ok(Ok(())),
            Ok(answer) => Ok(Err(format!(
                "the device answered {} {}",
                METHOD, answer.status
            ))),
            Err(CloudError::DeviceOffline) => Ok(Err("the device is not connected".into())),
            Err(CloudError::Timeout) => Ok(Err("the device did not answer in time".into())),
            Err(CloudError::NotFound(_)) => Ok(Err("the device's hub does not know it".into())),
            Err(e) => Err(ServiceError::hub(e)),
        }
    }

    /// The last step: the old slot gets a fresh key nobody holds, in DPS and in the hub identity
    /// (which keeps the keys DPS wrote when the device re-provisioned until something replaces
    /// them), then the record says the device is on its new slot.
    async fn retire(&self, stored: Stored, rotation: &KeyRotation) -> Result<Stored, ServiceError> {
        let record = &stored.record;
        let id = record.registration_id.as_str();
        let retired = rotation.slot.other();
        self.dps
            .replace_key(record, retired, &SharedAccessKey::generate(KEY_BYTES))
            .await
            .map_err(ServiceError::dps)?;
        if let Some(hub) = record.assigned_hub().filter(|h| self.hubs.knows(h)) {
            let keys = self.dps.keys(id).await.map_err(ServiceError::dps)?;
            match self
                .hubs
                .set_device_keys(
                    hub,
                    record.device_id.as_str(),
                    &keys.primary,
                    &keys.secondary,
                )
                .await
            {
                Ok(()) => {}
                // Gone from the hub: nothing holds the old key there.
                Err(CloudError::NotFound(_)) => {}
                Err(e) => return Err(ServiceError::hub(e)),
            }
        }
        let done = CompletedRotation {
            id: rotation.id.clone(),
            slot: rotation.slot,
            completed_at: Stamp::now(),
        };
        let finished = self
            .update_rotation(&stored, &rotation.id, |record| {
                record.key_slot = rotation.slot;
                record.key_rotation = None;
                record.last_key_rotation = Some(done.clone());
            })
            .await?;
        tracing::info!(
            registration.id = %id,
            rotation.id = %rotation.id,
            slot = rotation.slot.as_str(),
            "finished a key rotation; the old key is retired"
        );
        self.note(
            record.device_id.as_str(),
            "keyRotationCompleted",
            Some(json!({ "rotationId": rotation.id, "slot": rotation.slot.as_str(), "retiredSlot": retired.as_str() })),
        )
        .await;
        Ok(finished)
    }

    /// Changes the record's rotation (still the one named `rotation.id`) with `change`.
    async fn move_rotation(
        &self,
        stored: &Stored,
        rotation: &KeyRotation,
        change: impl Fn(&mut KeyRotation),
    ) -> Result<Stored, ServiceError> {
        self.update_rotation(stored, &rotation.id, |record| {
            if let Some(current) = record.key_rotation.as_mut() {
                change(current);
                current.updated_at = Stamp::now();
            }
        })
        .await
    }

    /// Applies `change` to the newest copy of the record while its rotation is still the one
    /// named `rotation_id` (events write the record too; their changes are kept). Answers the
    /// record as written, or as found if the rotation moved on elsewhere.
    async fn update_rotation(
        &self,
        stored: &Stored,
        rotation_id: &str,
        change: impl Fn(&mut DeviceRecord),
    ) -> Result<Stored, ServiceError> {
        let mut current = stored.clone();
        for _ in 0..WRITE_ATTEMPTS {
            if current.record.key_rotation.as_ref().map(|r| r.id.as_str()) != Some(rotation_id) {
                return Ok(current);
            }
            let mut record = current.record.clone();
            change(&mut record);
            record.updated_at = now();
            match self.store.replace(&current, &record).await {
                Ok(etag) => {
                    // The event functions' copy is stale now; they read it again.
                    self.events_cache.forget(record.device_id.as_str());
                    return Ok(Stored { record, etag });
                }
                Err(StoreError::PreconditionFailed) => {
                    current = self
                        .store
                        .get(&stored.record.registration_id)
                        .await?
                        .ok_or_else(|| {
                            ServiceError::NotFound(format!(
                                "no enrollment {}",
                                stored.record.registration_id
                            ))
                        })?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Unavailable {
            service: super::Upstream::Storage,
            detail: format!(
                "the record of {} kept changing during a key rotation",
                stored.record.registration_id
            ),
        })
    }

    /// What the event functions do after recording a device's events: if they moved its
    /// rotation along (it connected while a key waited, or it reported the rotation done), the
    /// next step runs in the background, so the batch is not held up; what fails there is left
    /// to the next event or the repair pass.
    pub(super) fn follow_up_rotation(&self, record: &DeviceRecord, connected_now: bool) {
        let Some(rotation) = &record.key_rotation else {
            return;
        };
        let delivery = match rotation.step {
            _ if rotation.reported_done(&record.live) => Delivery::No,
            RotationStep::Staged if connected_now => Delivery::OnConnect,
            _ => return,
        };
        let id = record.registration_id.clone();
        if !self.rotations_in_flight.claim(&id, delivery) {
            // A task is moving it already; it looks again when done.
            return;
        }
        let service = self.clone();
        tokio::spawn(async move {
            let mut delivery = delivery;
            loop {
                let outcome = async {
                    match service.store.get(&id).await? {
                        Some(stored) => service.advance_rotation(stored, delivery).await.map(drop),
                        None => Ok(()),
                    }
                }
                .await;
                if let Err(error) = outcome {
                    tracing::warn!(
                        registration.id = %id,
                        %error,
                        "a key rotation could not move on now; the repair pass tries again"
                    );
                }
                // Events that arrived meanwhile asked for another look.
                match service.rotations_in_flight.release(&id) {
                    Some(again) => delivery = again,
                    None => return,
                }
            }
        });
    }
}

/// Records whose rotation a background task is moving, so that events arriving together start
/// one task per device rather than one per batch; an event arriving while the task runs has it
/// look once more when it is done (so no event's prompt is lost to the one before it).
#[derive(Default)]
pub struct InFlight(std::sync::Mutex<std::collections::HashMap<String, Option<Delivery>>>);

impl InFlight {
    /// True if the caller is to run the task; otherwise the running task is asked to look again.
    fn claim(&self, id: &RegistrationId, delivery: Delivery) -> bool {
        let mut running = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match running.get_mut(&id.key()) {
            Some(again) => {
                // Handing the key over when asked to wins over only finishing DPS steps.
                *again = Some(match (*again, delivery) {
                    (Some(Delivery::OnConnect), _) | (_, Delivery::OnConnect) => {
                        Delivery::OnConnect
                    }
                    (Some(Delivery::Now), _) | (_, Delivery::Now) => Delivery::Now,
                    _ => Delivery::No,
                });
                false
            }
            None => {
                running.insert(id.key(), None);
                true
            }
        }
    }

    /// Ends the task's turn: `Some` (how to deliver) if it is to look again.
    fn release(&self, id: &RegistrationId) -> Option<Delivery> {
        let mut running = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match running.get_mut(&id.key()) {
            Some(again @ Some(_)) => again.take(),
            _ => {
                running.remove(&id.key());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_that_arrives_while_a_rotation_task_runs_has_it_look_again() {
        let running = InFlight::default();
        let id = RegistrationId::parse("Dev-1").unwrap();
        assert!(running.claim(&id, Delivery::No));
        assert_eq!(running.release(&id), None, "nothing came in meanwhile");
        assert!(running.claim(&id, Delivery::No));
        assert!(!running.claim(
            &RegistrationId::parse("dev-1").unwrap(),
            Delivery::OnConnect
        ));
        assert!(!running.claim(&id, Delivery::No));
        assert_eq!(
            running.release(&id),
            Some(Delivery::OnConnect),
            "the strongest ask wins"
        );
        assert_eq!(running.release(&id), None);
        assert!(running.claim(&id, Delivery::No), "free again");
    }
}
