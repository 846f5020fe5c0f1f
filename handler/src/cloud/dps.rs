//! The DPS service API (api-version 2021-10-01): individual enrollments with symmetric-key
//! attestation, and the registration states devices leave behind.
//!
//! Changes to an existing enrollment are read-modify-write: the enrollment's `etag` (GET) and its
//! keys (`attestationmechanism`, the only call that answers them) are read, and the PUT carries
//! the etag as `If-Match`, so a concurrent change (another instance rotating the keys, say) is
//! refused with 412 and read again rather than overwritten with stale keys (If-Match: "The ETag
//! of the enrollment record", Azure/azure-rest-api-specs
//! specification/deviceprovisioningservices/data-plane/DeviceProvisioningServices/service/routes.tsp).

use super::{common_error, send, CloudError};
use crate::domain::rotation::KeySlot;
use crate::domain::{DeviceRecord, Registration};
use async_trait::async_trait;
use iot_credentials::sas::{encode_component, unix_now};
use iot_credentials::{ServiceConnectionString, SharedAccessKey};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};

const API_VERSION: &str = "2021-10-01";
/// Azure's cap on items in one bulk enrollment call.
pub const BULK_LIMIT: usize = 10;
/// Read-modify-write rounds of an enrollment change before another writer is let win.
const WRITE_ATTEMPTS: usize = 4;

/// An enrollment's two symmetric keys. `Debug` shows neither (the keys' own `Debug` is redacted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentKeys {
    /// `primaryKey`.
    pub primary: SharedAccessKey,
    /// `secondaryKey`.
    pub secondary: SharedAccessKey,
}

impl EnrollmentKeys {
    /// The key in `slot`.
    pub fn slot(&self, slot: KeySlot) -> &SharedAccessKey {
        match slot {
            KeySlot::Primary => &self.primary,
            KeySlot::Secondary => &self.secondary,
        }
    }

    /// Puts `key` into `slot`.
    pub fn set(&mut self, slot: KeySlot, key: SharedAccessKey) {
        match slot {
            KeySlot::Primary => self.primary = key,
            KeySlot::Secondary => self.secondary = key,
        }
    }
}

/// What bulk creation answered for one enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkOutcome {
    /// Created.
    Created,
    /// DPS already has an enrollment with this registration id.
    Exists,
    /// DPS refused it; its message.
    Refused(String),
}

/// The calls the middleware makes to DPS.
#[async_trait]
pub trait Provisioning: Send + Sync {
    /// Creates the record's enrollment; `Conflict` if DPS has one with its registration id.
    async fn create(&self, record: &DeviceRecord) -> Result<(), CloudError>;

    /// Creates up to [`BULK_LIMIT`] enrollments in one call, answering per record (in order).
    async fn create_many(&self, records: &[&DeviceRecord]) -> Result<Vec<BulkOutcome>, CloudError>;

    /// Makes the enrollment say what the record says, keeping its keys (creates it if missing).
    async fn update(&self, record: &DeviceRecord) -> Result<(), CloudError>;

    /// Puts `key` into the enrollment's `slot`, keeping the other key and making the rest say
    /// what the record says; `NotFound` if there is no enrollment.
    async fn replace_key(
        &self,
        record: &DeviceRecord,
        slot: KeySlot,
        key: &SharedAccessKey,
    ) -> Result<(), CloudError>;

    /// Removes the enrollment; a missing one is not an error.
    async fn delete(&self, registration_id: &str) -> Result<(), CloudError>;

    /// The enrollment's keys (DPS answers keys only on `attestationmechanism`, never on GET).
    async fn keys(&self, registration_id: &str) -> Result<EnrollmentKeys, CloudError>;

    /// The device's registration state; `None` if it never registered.
    async fn registration(&self, registration_id: &str)
        -> Result<Option<Registration>, CloudError>;

    /// Removes the registration state; a missing one is not an error.
    async fn delete_registration(&self, registration_id: &str) -> Result<(), CloudError>;

    /// The registration ids of every individual enrollment (for reconciliation).
    async fn enrollment_ids(&self) -> Result<Vec<String>, CloudError>;
}

/// The enrollment DPS should hold for a record. Keys are left out (DPS generates them) unless
/// given, so an update can carry the current ones.
pub fn enrollment_body(record: &DeviceRecord, keys: Option<&EnrollmentKeys>) -> Value {
    let symmetric = match keys {
        Some(keys) => {
            json!({
                "primaryKey": keys.primary.expose_base64(),
                "secondaryKey": keys.secondary.expose_base64(),
            })
        }
        None => json!({}),
    };
    let mut enrollment = json!({
        "registrationId": record.registration_id.as_str(),
        "deviceId": record.device_id.as_str(),
        "attestation": { "type": "symmetricKey", "symmetricKey": symmetric },
        "provisioningStatus": if record.enabled { "enabled" } else { "disabled" },
        "initialTwin": {
            "tags": record.initial_twin.tags,
            "properties": { "desired": record.initial_twin.desired_properties },
        },
        "reprovisionPolicy": { "updateHubAssignment": true, "migrateDeviceData": true },
        "allocationPolicy": "hashed",
    });
    if let Some(hub) = &record.iot_hub {
        enrollment["allocationPolicy"] = json!("static");
        enrollment["iotHubs"] = json!([hub.as_str()]);
    }
    enrollment
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegistrationState {
    status: Option<String>,
    assigned_hub: Option<String>,
    device_id: Option<String>,
    substatus: Option<String>,
    error_message: Option<String>,
    last_updated_date_time_utc: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SymmetricKeys {
    primary_key: Option<String>,
    secondary_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attestation {
    symmetric_key: Option<SymmetricKeys>,
}

/// DPS over HTTPS, signed with a service policy.
pub struct DpsClient {
    http: reqwest::Client,
    connection: ServiceConnectionString,
}

impl DpsClient {
    /// A client of the DPS in `connection`.
    pub fn new(connection: ServiceConnectionString, http: reqwest::Client) -> Self {
        Self { http, connection }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<super::Answer, CloudError> {
        self.call_if(method, path, body, None).await
    }

    async fn call_if(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<super::Answer, CloudError> {
        let url = format!(
            "https://{}/{path}?api-version={API_VERSION}",
            self.connection.host_name()
        );
        // A token per call: signing is a microsecond, and it never goes stale.
        let token = self.connection.sas_token(unix_now() + 300);
        let mut request = self
            .http
            .request(method, url)
            .header("Authorization", token.expose());
        if let Some(etag) = if_match {
            request = request.header("If-Match", etag);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        send(request, "DPS").await
    }

    /// The enrollment's etag; `None` if there is no enrollment.
    async fn etag(&self, registration_id: &str) -> Result<Option<String>, CloudError> {
        let answer = self
            .call(Method::GET, &enrollment_path(registration_id), None)
            .await?;
        match answer.status {
            200 => {
                let enrollment: Value = serde_json::from_str(&answer.text).map_err(|_| {
                    CloudError::BadGateway("DPS answered an unreadable enrollment".into())
                })?;
                enrollment["etag"]
                    .as_str()
                    .map(str::to_owned)
                    .map(Some)
                    .ok_or_else(|| {
                        CloudError::BadGateway("DPS answered an enrollment without an etag".into())
                    })
            }
            404 => Ok(None),
            _ => Err(common_error("DPS", &answer)),
        }
    }

    /// Writes the record's enrollment with the keys `change` makes of the current ones, guarded
    /// by the etag read with them; a missing enrollment is created (keys generated) if
    /// `create_missing`, else `NotFound`.
    async fn write(
        &self,
        record: &DeviceRecord,
        create_missing: bool,
        change: impl Fn(&mut EnrollmentKeys),
    ) -> Result<(), CloudError> {
        let id = record.registration_id.as_str();
        for _ in 0..WRITE_ATTEMPTS {
            // The etag first: if the keys change after it was read, the PUT is refused.
            let etag = self.etag(id).await?;
            let keys = match &etag {
                Some(_) => {
                    let mut keys = self.read_keys(id).await?;
                    change(&mut keys);
                    Some(keys)
                }
                None if create_missing => None,
                None => return Err(CloudError::NotFound(format!("DPS has no enrollment {id}"))),
            };
            let body = enrollment_body(record, keys.as_ref());
            let answer = self
                .call_if(
                    Method::PUT,
                    &enrollment_path(id),
                    Some(&body),
                    etag.as_deref(),
                )
                .await?;
            match answer.status {
                200 | 201 => return Ok(()),
                // Changed since it was read: read it again.
                412 => continue,
                _ => return Err(common_error("DPS", &answer)),
            }
        }
        Err(CloudError::PreconditionFailed)
    }

    async fn read_keys(&self, registration_id: &str) -> Result<EnrollmentKeys, CloudError> {
        let path = format!(
            "enrollments/{}/attestationmechanism",
            encode_component(registration_id)
        );
        let answer = self.call(Method::POST, &path, None).await?;
        if answer.status != 200 {
            return Err(common_error("DPS", &answer));
        }
        let attestation: Attestation = serde_json::from_str(&answer.text)
            .map_err(|_| CloudError::BadGateway("DPS answered an unreadable attestation".into()))?;
        let keys = attestation.symmetric_key.ok_or_else(|| {
            CloudError::BadGateway("the enrollment has no symmetric key attestation".into())
        })?;
        let parse = |key: Option<String>| {
            key.and_then(|k| SharedAccessKey::from_base64(&k).ok())
                .ok_or_else(|| {
                    CloudError::BadGateway("DPS answered an unusable symmetric key".into())
                })
        };
        Ok(EnrollmentKeys {
            primary: parse(keys.primary_key)?,
            secondary: parse(keys.secondary_key)?,
        })
    }

    async fn bulk(&self, records: &[&DeviceRecord]) -> Result<Vec<BulkOutcome>, CloudError> {
        let enrollments: Vec<Value> = records.iter().map(|r| enrollment_body(r, None)).collect();
        let answer = self
            .call(
                Method::POST,
                "enrollments",
                Some(&json!({ "mode": "create", "enrollments": enrollments })),
            )
            .await?;
        if answer.status != 200 {
            return Err(common_error("DPS", &answer));
        }
        let result: Value = serde_json::from_str(&answer.text)
            .map_err(|_| CloudError::BadGateway("DPS answered an unreadable bulk result".into()))?;
        let errors = result["errors"].as_array().cloned().unwrap_or_default();
        Ok(records
            .iter()
            .map(|record| {
                let error = errors.iter().find(|e| {
                    e["registrationId"]
                        .as_str()
                        .is_some_and(|id| id.eq_ignore_ascii_case(record.registration_id.as_str()))
                });
                match error {
                    None => BulkOutcome::Created,
                    Some(e) if e["errorCode"].as_u64().is_some_and(|c| c / 1000 == 409) => {
                        BulkOutcome::Exists
                    }
                    Some(e) => BulkOutcome::Refused(
                        e["errorStatus"]
                            .as_str()
                            .unwrap_or("refused by DPS")
                            .chars()
                            .take(300)
                            .collect(),
                    ),
                }
            })
            .collect())
    }
}

fn enrollment_path(registration_id: &str) -> String {
    format!("enrollments/{}", encode_component(registration_id))
}

#[async_trait]
impl Provisioning for DpsClient {
    async fn create(&self, record: &DeviceRecord) -> Result<(), CloudError> {
        // Bulk create of one: the only DPS call that refuses to replace an existing enrollment.
        match self.bulk(&[record]).await?.pop() {
            Some(BulkOutcome::Created) => Ok(()),
            Some(BulkOutcome::Exists) => Err(CloudError::Conflict(format!(
                "DPS already has an enrollment {}",
                record.registration_id
            ))),
            Some(BulkOutcome::Refused(message)) => Err(CloudError::Rejected(message)),
            None => Err(CloudError::BadGateway(
                "DPS answered an empty bulk result".into(),
            )),
        }
    }

    async fn create_many(&self, records: &[&DeviceRecord]) -> Result<Vec<BulkOutcome>, CloudError> {
        let mut outcomes = Vec::with_capacity(records.len());
        for chunk in records.chunks(BULK_LIMIT) {
            outcomes.extend(self.bulk(chunk).await?);
        }
        Ok(outcomes)
    }

    async fn update(&self, record: &DeviceRecord) -> Result<(), CloudError> {
        self.write(record, true, |_| {}).await
    }

    async fn replace_key(
        &self,
        record: &DeviceRecord,
        slot: KeySlot,
        key: &SharedAccessKey,
    ) -> Result<(), CloudError> {
        self.write(record, false, |keys| keys.set(slot, key.clone()))
            .await
    }

    async fn delete(&self, registration_id: &str) -> Result<(), CloudError> {
        let answer = self
            .call(Method::DELETE, &enrollment_path(registration_id), None)
            .await?;
        match answer.status {
            200 | 204 | 404 => Ok(()),
            _ => Err(common_error("DPS", &answer)),
        }
    }

    async fn keys(&self, registration_id: &str) -> Result<EnrollmentKeys, CloudError> {
        self.read_keys(registration_id).await
    }

    async fn registration(
        &self,
        registration_id: &str,
    ) -> Result<Option<Registration>, CloudError> {
        let path = format!("registrations/{}", encode_component(registration_id));
        let answer = self.call(Method::GET, &path, None).await?;
        match answer.status {
            200 => {
                let state: RegistrationState =
                    serde_json::from_str(&answer.text).map_err(|_| {
                        CloudError::BadGateway(
                            "DPS answered an unreadable registration state".into(),
                        )
                    })?;
                Ok(Some(Registration {
                    status: state.status.unwrap_or_else(|| "unassigned".into()),
                    assigned_hub: state.assigned_hub,
                    device_id: state.device_id,
                    substatus: state.substatus,
                    error_message: state.error_message,
                    last_updated: state.last_updated_date_time_utc,
                    observed_at: crate::domain::now(),
                }))
            }
            404 => Ok(None),
            _ => Err(common_error("DPS", &answer)),
        }
    }

    async fn enrollment_ids(&self) -> Result<Vec<String>, CloudError> {
        let mut ids = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let url = format!(
                "https://{}/enrollments/query?api-version={API_VERSION}",
                self.connection.host_name()
            );
            let token = self.connection.sas_token(unix_now() + 300);
            let mut request = self
                .http
                .post(url)
                .header("Authorization", token.expose())
                .header("x-ms-max-item-count", "1000")
                .json(&json!({ "query": "*" }));
            if let Some(token) = &continuation {
                request = request.header("x-ms-continuation", token);
            }
            let response = request
                .send()
                .await
                .map_err(|_| CloudError::Unavailable("DPS: cannot query enrollments".into()))?;
            continuation = response
                .headers()
                .get("x-ms-continuation")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let status = response.status().as_u16();
            let text = response
                .text()
                .await
                .map_err(|_| CloudError::Unavailable("DPS: the answer was cut off".into()))?;
            if status != 200 {
                return Err(common_error(
                    "DPS",
                    &super::Answer {
                        status,
                        retry_after: None,
                        error_code: None,
                        text,
                    },
                ));
            }
            let page: Vec<Value> = serde_json::from_str(&text).map_err(|_| {
                CloudError::BadGateway("DPS answered an unreadable query page".into())
            })?;
            ids.extend(
                page.iter()
                    .filter_map(|e| e["registrationId"].as_str().map(str::to_owned)),
            );
            if continuation.is_none() {
                return Ok(ids);
            }
        }
    }

    async fn delete_registration(&self, registration_id: &str) -> Result<(), CloudError> {
        let path = format!("registrations/{}", encode_component(registration_id));
        let answer = self.call(Method::DELETE, &path, None).await?;
        match answer.status {
            200 | 204 | 404 => Ok(()),
            _ => Err(common_error("DPS", &answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::record::tests::sample;

    #[test]
    fn enrollments_carry_the_record_and_pin_a_chosen_hub() {
        let mut record = sample("dev-1");
        let body = enrollment_body(&record, None);
        assert_eq!(body["attestation"]["type"], "symmetricKey");
        assert_eq!(body["allocationPolicy"], "hashed");
        assert_eq!(body["initialTwin"]["tags"]["customer"], "contoso");
        record.iot_hub = Some(crate::domain::HubName::parse("hub-2.example").unwrap());
        record.enabled = false;
        let body = enrollment_body(&record, None);
        assert_eq!(body["allocationPolicy"], "static");
        assert_eq!(body["iotHubs"][0], "hub-2.example");
        assert_eq!(body["provisioningStatus"], "disabled");
    }
}
