//! Picking the hub for a device: weighted hashing, static assignment, or a custom webhook
//! called with Azure's AllocationRequest and answered with an AllocationResponse
//! (articles/iot-dps/concepts-custom-allocation.md).

use super::model::{
    AllocationPolicy, DeviceRegistrationState, EnrollmentGroup, EnrollmentSettings,
    IndividualEnrollment, InitialTwin,
};
use super::provisioning::Admission;
use super::{Dps, LinkedHub};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Where a device goes, and what a custom webhook added.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    /// The hub host name.
    pub hub: String,
    /// An initial twin that replaces the enrollment's (custom allocation only).
    pub initial_twin: Option<InitialTwin>,
    /// Data for the device (custom allocation only).
    pub payload: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AllocationRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    individual_enrollment: Option<IndividualEnrollment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enrollment_group: Option<EnrollmentGroup>,
    device_runtime_context: DeviceRuntimeContext,
    linked_hubs: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceRuntimeContext {
    registration_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_iot_hub_host_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_device_id: Option<String>,
    symmetric_key: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AllocationResponse {
    // The documentation spells it both ways.
    #[serde(alias = "iotHubHostname")]
    iot_hub_host_name: String,
    #[serde(default)]
    initial_twin: Option<InitialTwin>,
    #[serde(default)]
    payload: Option<Value>,
}

/// Picks one of `hubs` by a hash of the registration id, in proportion to their weights; the same
/// id always lands on the same hub while the hubs and weights stay the same.
pub fn hashed(registration_id: &str, hubs: &[&LinkedHub]) -> Option<String> {
    let total: u64 = hubs.iter().map(|h| u64::from(h.allocation_weight)).sum();
    if total == 0 {
        return None;
    }
    let digest = Sha256::digest(registration_id.to_ascii_lowercase().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let mut point = u64::from_be_bytes(first) % total;
    for hub in hubs {
        let weight = u64::from(hub.allocation_weight);
        if point < weight {
            return Some(hub.host_name.clone());
        }
        point -= weight;
    }
    None
}

impl Dps {
    /// The hubs an enrollment may use: its `iotHubs` list, or every linked hub.
    fn candidates(&self, settings: &EnrollmentSettings) -> Vec<&LinkedHub> {
        match settings.iot_hubs.as_deref() {
            Some(named) if !named.is_empty() => {
                named.iter().filter_map(|h| self.linked_hub(h)).collect()
            }
            _ => self.settings.linked_hubs.iter().collect(),
        }
    }

    /// Decides the hub for a registering device, or says why none can be chosen.
    pub(super) async fn allocate(
        &self,
        registration_id: &str,
        admission: &Admission,
        payload: Option<Value>,
        current: Option<&DeviceRegistrationState>,
    ) -> Result<Allocation, String> {
        let settings = admission.settings();
        let candidates = self.candidates(settings);
        if candidates.is_empty() {
            return Err(
                "none of the enrollment's IoT hubs is linked to this provisioning service".into(),
            );
        }
        let plain = |hub: String| Allocation {
            hub,
            initial_twin: None,
            payload: None,
        };
        match settings
            .allocation_policy
            .unwrap_or(AllocationPolicy::Hashed)
        {
            AllocationPolicy::Hashed | AllocationPolicy::GeoLatency => {
                hashed(registration_id, &candidates)
                    .map(plain)
                    .ok_or_else(|| "every candidate hub has allocation weight 0".to_owned())
            }
            AllocationPolicy::Static => {
                let mut named = settings
                    .iot_hubs
                    .iter()
                    .flatten()
                    .chain(settings.iot_hub_host_name.iter())
                    .peekable();
                if named.peek().is_none() {
                    // DPS takes `static` with no hub named; its device went to the one linked
                    // hub (recorded live traffic, see docs/emulator.md). With several linked
                    // hubs the emulator takes the first one configured.
                    return candidates
                        .first()
                        .map(|h| plain(h.host_name.clone()))
                        .ok_or_else(|| "no IoT hub is linked".to_owned());
                }
                named
                    .find_map(|h| self.linked_hub(h))
                    .map(|h| plain(h.host_name.clone()))
                    .ok_or_else(|| "the static hub of the enrollment is not linked".to_owned())
            }
            AllocationPolicy::Custom => {
                self.call_webhook(registration_id, admission, payload, current, &candidates)
                    .await
            }
        }
    }

    async fn call_webhook(
        &self,
        registration_id: &str,
        admission: &Admission,
        payload: Option<Value>,
        current: Option<&DeviceRegistrationState>,
        candidates: &[&LinkedHub],
    ) -> Result<Allocation, String> {
        let Some(definition) = admission.settings().custom_allocation_definition.as_ref() else {
            return Err("custom allocation without a customAllocationDefinition".into());
        };
        let (individual_enrollment, enrollment_group) = match admission {
            Admission::Individual(e) => {
                let mut shown = (**e).clone();
                shown.settings.attestation = e.settings.attestation.without_secrets();
                (Some(shown), None)
            }
            Admission::Group(g) => {
                let mut shown = (**g).clone();
                shown.settings.attestation = g.settings.attestation.without_secrets();
                (None, Some(shown))
            }
        };
        let linked_hubs: Vec<String> = candidates.iter().map(|h| h.host_name.clone()).collect();
        let request = AllocationRequest {
            individual_enrollment,
            enrollment_group,
            device_runtime_context: DeviceRuntimeContext {
                registration_id: registration_id.to_owned(),
                current_iot_hub_host_name: current.and_then(|c| c.assigned_hub.clone()),
                current_device_id: current.and_then(|c| c.device_id.clone()),
                symmetric_key: Map::new(),
                payload,
            },
            linked_hubs: linked_hubs.clone(),
        };
        let response = self
            .webhooks
            .post(&definition.webhook_url)
            .json(&request)
            .send()
            .await
            // Webhook URLs may carry a function key (`?code=...`): errors must not repeat them.
            .map_err(|e| {
                format!(
                    "the custom allocation webhook could not be reached: {}",
                    e.without_url()
                )
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!(
                "the custom allocation webhook answered HTTP {}",
                status.as_u16()
            ));
        }
        let answer: AllocationResponse = response.json().await.map_err(|e| {
            format!(
                "the custom allocation webhook's answer is not an AllocationResponse: {}",
                e.without_url()
            )
        })?;
        let hub = candidates
            .iter()
            .find(|h| h.host_name.eq_ignore_ascii_case(&answer.iot_hub_host_name))
            .ok_or_else(|| {
                format!(
                    "the custom allocation webhook chose {:?}, which is not one of the linked \
                        hubs ({})",
                    answer.iot_hub_host_name,
                    linked_hubs.join(", ")
                )
            })?;
        Ok(Allocation {
            hub: hub.host_name.clone(),
            initial_twin: answer.initial_twin,
            payload: answer.payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(name: &str, weight: u32) -> LinkedHub {
        LinkedHub {
            host_name: name.into(),
            allocation_weight: weight,
        }
    }

    #[test]
    fn hashing_is_stable_and_case_insensitive() {
        let (a, b) = (hub("a", 1), hub("b", 1));
        let hubs = [&a, &b];
        let first = hashed("Device-42", &hubs);
        assert_eq!(first, hashed("device-42", &hubs));
        assert_eq!(first, hashed("DEVICE-42", &hubs));
    }

    #[test]
    fn hashing_follows_the_weights() {
        let (a, b) = (hub("a", 3), hub("b", 1));
        let hubs = [&a, &b];
        let on_a = (0..4000)
            .filter(|i| hashed(&format!("device-{i}"), &hubs).as_deref() == Some("a"))
            .count();
        // 3:1 weights: about 3,000 of 4,000 devices on a.
        assert!((2800..3200).contains(&on_a), "{on_a} devices on a");
        let (zero, one) = (hub("zero", 0), hub("one", 1));
        assert!(
            (0..100).all(|i| hashed(&format!("d{i}"), &[&zero, &one]).as_deref() == Some("one"))
        );
        assert_eq!(hashed("d", &[&zero]), None);
    }
}
