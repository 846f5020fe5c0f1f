//! Enrolling devices: the records a CRM creates, reads, changes and removes, each backed by an
//! individual enrollment (symmetric key) in DPS; and the provisioning code for the end user.

use super::{check_if_match, Service, ServiceError};
use crate::cloud::CloudError;
use crate::domain::{now, Asset, DeviceRecord, DpsSync, HubName, RegistrationId};
use crate::storage::Stored;
use iot_credentials::ProvisioningCode;
use serde::Deserialize;
use serde_json::{Map, Value};

use enrollment_input::request::{check_asset, check_twin, customer_of};
pub use enrollment_input::{CustomerInput, NewEnrollment};

/// Twin changes in a PATCH: JSON merge patches of tags and desired properties.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TwinPatch {
    /// Merged into the tags (`null` removes a tag).
    #[serde(default)]
    pub tags: Option<Map<String, Value>>,
    /// Merged into the desired properties (`null` removes one).
    #[serde(default)]
    pub desired_properties: Option<Map<String, Value>>,
}

/// `PATCH /api/enrollments/{registrationId}`: the fields to change.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnrollmentPatch {
    /// A new owner.
    #[serde(default)]
    pub customer: Option<CustomerInput>,
    /// A new asset description (replaces the old).
    #[serde(default)]
    pub asset: Option<Asset>,
    /// Twin changes.
    #[serde(default)]
    pub initial_twin: Option<TwinPatch>,
    /// Enable or disable.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// A hub to pin to; `null` returns the device to hashed allocation.
    #[serde(default, deserialize_with = "present")]
    pub iot_hub: Option<Option<String>>,
}

/// Tells a JSON `null` (present) from an absent field.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

fn invalid(message: impl Into<String>) -> ServiceError {
    ServiceError::Invalid(message.into())
}

/// The hub a request names, which must be one this middleware is linked to.
fn hub_of(service: &Service, hub: Option<String>) -> Result<Option<HubName>, ServiceError> {
    linked(service, enrollment_input::request::hub_of(hub)?)
}

fn linked(service: &Service, hub: Option<HubName>) -> Result<Option<HubName>, ServiceError> {
    match hub {
        Some(hub) if !service.hubs.knows(hub.as_str()) => Err(invalid(format!(
            "iotHub {hub} is not a hub linked to this middleware"
        ))),
        hub => Ok(hub),
    }
}

/// RFC 7386 JSON merge patch of one object into another (json-patch's `merge`; an object
/// patched with an object stays an object).
fn merge(target: &mut Map<String, Value>, patch: Map<String, Value>) {
    let mut document = Value::Object(std::mem::take(target));
    json_patch::merge(&mut document, &Value::Object(patch));
    if let Value::Object(merged) = document {
        *target = merged;
    }
}

/// Validates a request into a record awaiting DPS.
pub fn record_of(request: NewEnrollment, service: &Service) -> Result<DeviceRecord, ServiceError> {
    let checked = request.check()?;
    let stamp = now();
    Ok(DeviceRecord {
        registration_id: checked.registration_id,
        device_id: checked.device_id,
        customer: checked.customer,
        asset: checked.asset,
        initial_twin: checked.initial_twin,
        enabled: checked.enabled,
        iot_hub: linked(service, checked.iot_hub)?,
        sync: DpsSync::PendingCreate,
        registration: None,
        // Nothing can have registered yet: reads need not ask DPS for a while.
        registration_checked_at: Some(stamp.clone()),
        live: crate::domain::hub_report::HubReport::default(),
        key_slot: Default::default(),
        key_rotation: None,
        last_key_rotation: None,
        created_at: stamp.clone(),
        updated_at: stamp,
    })
}

/// Whether two records ask for the same enrollment (their bookkeeping aside).
fn same_enrollment(a: &DeviceRecord, b: &DeviceRecord) -> bool {
    a.device_id == b.device_id
        && a.customer == b.customer
        && a.asset == b.asset
        && a.initial_twin == b.initial_twin
        && a.enabled == b.enabled
        && a.iot_hub == b.iot_hub
}

/// Whether a change must reach DPS (the enrollment holds these; the rest is the registry's).
fn dps_fields_differ(a: &DeviceRecord, b: &DeviceRecord) -> bool {
    a.enabled != b.enabled || a.initial_twin != b.initial_twin || a.iot_hub != b.iot_hub
}

/// What a provisioning code request answers.
pub struct CodeAnswer {
    /// The code (holds the device key).
    pub code: ProvisioningCode,
    /// Whether the enrollment is enabled (a disabled device will be refused by DPS).
    pub enabled: bool,
}

impl Service {
    /// Writes a new record awaiting DPS, or takes over one an interrupted create left behind.
    /// Answers the stored record and whether it was taken over.
    pub(super) async fn reserve(
        &self,
        record: &DeviceRecord,
    ) -> Result<(Stored, bool), ServiceError> {
        for _ in 0..3 {
            match self.store.insert(record).await {
                Ok(etag) => {
                    return Ok((
                        Stored {
                            record: record.clone(),
                            etag,
                        },
                        false,
                    ))
                }
                Err(crate::storage::StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
            let Some(existing) = self.store.get(&record.registration_id).await? else {
                return Err(ServiceError::conflict(
                    "deviceIdTaken",
                    format!(
                        "device id {} belongs to another enrollment",
                        record.device_id
                    ),
                ));
            };
            match existing.record.sync {
                DpsSync::PendingCreate => {
                    let mut taken = record.clone();
                    taken.created_at = existing.record.created_at.clone();
                    match self.store.replace(&existing, &taken).await {
                        Ok(etag) => {
                            return Ok((
                                Stored {
                                    record: taken,
                                    etag,
                                },
                                true,
                            ))
                        }
                        // A concurrent create of the same id moved on (completed it or took it
                        // over): look again. A POST has no If-Match, so it never answers 412.
                        Err(crate::storage::StoreError::PreconditionFailed) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                // A delete was interrupted: finish it, then enroll afresh.
                DpsSync::PendingDelete => match self.finish_delete(&existing).await {
                    Ok(()) | Err(ServiceError::PreconditionFailed(_)) => {}
                    Err(e) => return Err(e),
                },
                _ => {
                    return Err(ServiceError::conflict(
                        "alreadyEnrolled",
                        format!("{} is already enrolled", existing.record.registration_id),
                    ))
                }
            }
        }
        Err(ServiceError::conflict(
            "conflict",
            "the record keeps changing; retry",
        ))
    }

    /// Marks a record's DPS change done.
    pub(super) async fn complete(&self, stored: &Stored) -> Result<Stored, ServiceError> {
        let mut record = stored.record.clone();
        record.sync = DpsSync::Complete;
        let etag = self.store.replace(stored, &record).await?;
        Ok(Stored { record, etag })
    }

    /// Removes a record whose DPS create was refused. A failure here leaves a pending create,
    /// which repair completes or the client's retry takes over; either way nothing is lost.
    pub(super) async fn abandon(&self, stored: &Stored) {
        if let Err(error) = self.store.delete(stored).await {
            tracing::warn!(
                registration.id = %stored.record.registration_id,
                %error,
                "a refused enrollment's record could not be removed"
            );
        }
    }

    /// `POST /api/enrollments`.
    pub async fn enroll(&self, request: NewEnrollment) -> Result<Stored, ServiceError> {
        let record = record_of(request, self)?;
        let (stored, taken_over) = self.reserve(&record).await?;
        match self.dps.create(&stored.record).await {
            Ok(()) => {}
            // Our earlier, interrupted attempt created it: make it say what this request says.
            Err(CloudError::Conflict(_)) if taken_over => self
                .dps
                .update(&stored.record)
                .await
                .map_err(ServiceError::dps)?,
            Err(CloudError::Conflict(_)) => {
                self.abandon(&stored).await;
                return Err(ServiceError::conflict(
                    "existsInDps",
                    format!("DPS already has an enrollment {} that the registry does not know; remove it from DPS or choose another registration id", record.registration_id),
                ));
            }
            Err(CloudError::Rejected(message)) => {
                self.abandon(&stored).await;
                return Err(invalid(format!("DPS refused the enrollment: {message}")));
            }
            Err(e) => return Err(ServiceError::dps(e)),
        }
        let completed = match self.complete(&stored).await {
            Ok(completed) => completed,
            // Someone else moved the pending record on while DPS was asked: a read that finished
            // this very enrollment (then it is this request's result), or another create of the
            // same registration id that took it over (then this one yields to it).
            Err(ServiceError::PreconditionFailed(_)) => {
                return match self.store.get(&record.registration_id).await? {
                    Some(now)
                        if now.record.sync == DpsSync::Complete
                            && same_enrollment(&now.record, &stored.record) =>
                    {
                        Ok(now)
                    }
                    _ => Err(ServiceError::conflict(
                        "conflict",
                        format!(
                            "another request enrolled {} at the same time; read the enrollment",
                            record.registration_id
                        ),
                    )),
                };
            }
            Err(e) => return Err(e),
        };
        self.note(completed.record.device_id.as_str(), "enrolled", Some(serde_json::json!({ "registrationId": completed.record.registration_id, "customerId": completed.record.customer.id })))
            .await;
        Ok(completed)
    }

    /// `GET /api/enrollments/{registrationId}`: the record, with any unfinished DPS change
    /// finished first when DPS allows.
    pub async fn enrollment(&self, id: &str) -> Result<Stored, ServiceError> {
        let id = RegistrationId::parse(id).map_err(|e| ServiceError::NotFound(e.0))?;
        let stored = self
            .store
            .get(&id)
            .await?
            .ok_or_else(|| not_enrolled(&id))?;
        self.settle_for_read(stored)
            .await?
            .ok_or_else(|| not_enrolled(&id))
    }

    /// `PATCH /api/enrollments/{registrationId}`.
    pub async fn change(
        &self,
        id: &str,
        patch: EnrollmentPatch,
        if_match: Option<&str>,
    ) -> Result<Stored, ServiceError> {
        let id = RegistrationId::parse(id).map_err(|e| ServiceError::NotFound(e.0))?;
        let stored = self
            .store
            .get(&id)
            .await?
            .ok_or_else(|| not_enrolled(&id))?;
        check_if_match(if_match, &stored.etag)?;
        let stored = self
            .settle(stored)
            .await?
            .ok_or_else(|| not_enrolled(&id))?;
        let mut record = stored.record.clone();
        if let Some(customer) = patch.customer {
            record.customer = customer_of(customer)?;
        }
        if let Some(asset) = patch.asset {
            record.asset = check_asset(asset)?;
        }
        if let Some(twin) = patch.initial_twin {
            if let Some(tags) = twin.tags {
                merge(&mut record.initial_twin.tags, tags);
            }
            if let Some(desired) = twin.desired_properties {
                merge(&mut record.initial_twin.desired_properties, desired);
            }
            check_twin(&record.initial_twin)?;
        }
        if let Some(enabled) = patch.enabled {
            record.enabled = enabled;
        }
        if let Some(hub) = patch.iot_hub {
            record.iot_hub = hub_of(self, hub)?;
        }
        if record == stored.record {
            return Ok(stored);
        }
        record.updated_at = now();
        // A larger twin or asset leaves less room for what the device reported: cut that, so a
        // valid change is never refused by storage.
        record.fit_storage();
        if !dps_fields_differ(&record, &stored.record) {
            let etag = self.store.replace(&stored, &record).await?;
            return Ok(Stored { record, etag });
        }
        record.sync = DpsSync::PendingUpdate;
        let etag = self.store.replace(&stored, &record).await?;
        let pending = Stored { record, etag };
        match self.dps.update(&pending.record).await {
            Ok(()) => self.complete(&pending).await,
            Err(CloudError::Rejected(message)) => {
                // Put the record back as it was, so it still says what DPS holds.
                let mut previous = stored.record.clone();
                previous.updated_at = now();
                if let Err(error) = self.store.replace(&pending, &previous).await {
                    tracing::warn!(
                        registration.id = %id,
                        %error,
                        "a refused change could not be rolled back; repair will retry it"
                    );
                }
                Err(invalid(format!("DPS refused the change: {message}")))
            }
            Err(e) => Err(ServiceError::dps(e)),
        }
    }

    /// `DELETE /api/enrollments/{registrationId}`: the enrollment, the registration state and
    /// the device identity in its hub, then the record.
    pub async fn remove(&self, id: &str, if_match: Option<&str>) -> Result<(), ServiceError> {
        let id = RegistrationId::parse(id).map_err(|e| ServiceError::NotFound(e.0))?;
        let stored = self
            .store
            .get(&id)
            .await?
            .ok_or_else(|| not_enrolled(&id))?;
        check_if_match(if_match, &stored.etag)?;
        let stored = if stored.record.sync == DpsSync::PendingDelete {
            stored
        } else {
            let mut record = stored.record.clone();
            record.sync = DpsSync::PendingDelete;
            record.updated_at = now();
            let etag = self.store.replace(&stored, &record).await?;
            Stored { record, etag }
        };
        self.finish_delete(&stored).await?;
        self.note(stored.record.device_id.as_str(), "deleted", None)
            .await;
        Ok(())
    }

    /// `GET /api/enrollments/{registrationId}/provisioning-code`.
    pub async fn provisioning_code(&self, id: &str) -> Result<CodeAnswer, ServiceError> {
        let stored = self.enrollment(id).await?;
        let record = &stored.record;
        if record.sync != DpsSync::Complete {
            return Err(ServiceError::conflict(
                "enrollmentPending",
                format!(
                    "{} is still being {}; retry shortly",
                    record.registration_id,
                    if record.sync == DpsSync::PendingDelete {
                        "deleted"
                    } else {
                        "enrolled"
                    }
                ),
            ));
        }
        if record.key_rotation.is_some() {
            // The key the code would carry is about to be retired.
            return Err(ServiceError::conflict(
                "rotationPending",
                format!(
                    "{}'s key is being rotated; the code is issued again once the rotation completes",
                    record.registration_id
                ),
            ));
        }
        // The slot the device holds: primary until a rotation moved it.
        let key = self
            .dps
            .keys(record.registration_id.as_str())
            .await
            .map_err(ServiceError::dps)?
            .slot(record.key_slot)
            .clone();
        Ok(CodeAnswer {
            code: ProvisioningCode {
                id_scope: self.codes.id_scope.clone(),
                registration_id: record.registration_id.to_string(),
                device_key: key,
                endpoint: self.codes.device_endpoint.clone(),
            },
            enabled: record.enabled,
        })
    }
}

fn not_enrolled(id: &RegistrationId) -> ServiceError {
    ServiceError::NotFound(format!("no enrollment {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patches_follow_rfc_7386() {
        let mut target = json!({"a": 1, "b": {"c": 2, "d": 3}})
            .as_object()
            .cloned()
            .unwrap();
        let patch = json!({"a": null, "b": {"c": 5}, "e": [1]})
            .as_object()
            .cloned()
            .unwrap();
        merge(&mut target, patch);
        assert_eq!(
            Value::Object(target),
            json!({"b": {"c": 5, "d": 3}, "e": [1]})
        );
    }

    #[test]
    fn a_patch_tells_a_null_hub_from_an_absent_one() {
        let cleared: EnrollmentPatch = serde_json::from_value(json!({"iotHub": null})).unwrap();
        assert_eq!(cleared.iot_hub, Some(None));
        let untouched: EnrollmentPatch = serde_json::from_value(json!({"enabled": false})).unwrap();
        assert_eq!(untouched.iot_hub, None);
        let error = serde_json::from_value::<EnrollmentPatch>(json!({"deviceId": "x"}))
            .unwrap_err()
            .to_string();
        assert!(error.contains("deviceId"), "{error}");
    }

    mod properties {
        //! The merge patch of `PATCH /api/enrollments/{id}` (tags, desired properties) on any
        //! JSON: RFC 7386, and a patch applied twice changes nothing more. A fixed seed keeps
        //! every run the same.
        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, RngSeed};

        fn config() -> Config {
            Config {
                cases: 256,
                failure_persistence: None,
                rng_seed: RngSeed::Fixed(0x5eed_0015),
                ..Config::default()
            }
        }

        fn object() -> impl Strategy<Value = Map<String, Value>> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                "[a-z]{0,4}".prop_map(Value::String),
            ];
            let value = leaf.prop_recursive(6, 48, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                    prop::collection::btree_map("[a-c]", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            });
            prop::collection::btree_map("[a-c]", value, 0..4).prop_map(|m| m.into_iter().collect())
        }

        /// What RFC 7386's MergePatch(target, patch) answers, written from its pseudocode.
        fn reference(target: Value, patch: &Value) -> Value {
            let Value::Object(patch) = patch else {
                return patch.clone();
            };
            let mut target = match target {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            for (name, value) in patch {
                if value.is_null() {
                    target.remove(name);
                } else {
                    let current = target.remove(name).unwrap_or(Value::Null);
                    target.insert(name.clone(), reference(current, value));
                }
            }
            Value::Object(target)
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn the_merge_is_rfc_7386_and_idempotent(target in object(), patch in object()) {
                let mut once = target.clone();
                merge(&mut once, patch.clone());
                prop_assert_eq!(
                    Value::Object(once.clone()),
                    reference(Value::Object(target), &Value::Object(patch.clone()))
                );
                let mut twice = once.clone();
                merge(&mut twice, patch);
                prop_assert_eq!(twice, once);
            }
        }
    }
}
