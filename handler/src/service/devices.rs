//! Devices as the backend asks about them: the record by device id, and the two things it can
//! do to a live device through its hub (desired properties, direct methods).

use super::{Service, ServiceError};
use crate::cloud::hub::MethodCall;
use crate::cloud::CloudError;
use crate::domain::{age_seconds, now, DeviceRecord, DpsSync};
use crate::storage::Stored;
use serde::Deserialize;
use serde_json::{Map, Value};

/// An unassigned device's registration is looked up in DPS at most this often by reads (events
/// normally bring it sooner; this covers a registry that missed them).
const REFRESH_AFTER_SECONDS: i64 = 30;
/// IoT Hub's limit on a twin's desired properties.
const MAX_DESIRED_BYTES: usize = 32 * 1024;

/// `POST /api/devices/{deviceId}/commands/{name}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandRequest {
    /// What the method receives.
    #[serde(default)]
    pub payload: Value,
    /// Seconds to wait for the answer (5 to 300, default 30).
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
    /// Seconds to wait for a disconnected device (0 to 300, default 0: fail at once).
    #[serde(default)]
    pub connect_timeout_seconds: Option<u32>,
}

/// What the device answered.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandResult {
    /// The device's status code.
    pub status: i64,
    /// Its payload.
    pub payload: Value,
}

/// The twin after a desired-property change.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredResult {
    /// The desired properties now.
    pub desired: Value,
    /// The twin's etag.
    pub etag: Option<String>,
}

fn unknown_device(device_id: &str) -> ServiceError {
    ServiceError::NotFound(format!("no device {device_id:?} in the registry"))
}

fn needs_refresh(record: &DeviceRecord) -> bool {
    record.sync == DpsSync::Complete
        && record.assigned_hub().is_none()
        && record
            .registration_checked_at
            .as_deref()
            .and_then(age_seconds)
            .is_none_or(|age| age >= REFRESH_AFTER_SECONDS)
}

impl Service {
    /// `GET /api/devices/{deviceId}`: the record. A device not known to be assigned has its
    /// registration refreshed from DPS now and then, so the answer does not wait on events;
    /// `refresh` asks DPS now, whatever the record says.
    pub async fn device(&self, device_id: &str, refresh: bool) -> Result<Stored, ServiceError> {
        let stored = self
            .store
            .get_by_device(device_id)
            .await?
            .ok_or_else(|| unknown_device(device_id))?;
        let stored = self
            .settle_for_read(stored)
            .await?
            .ok_or_else(|| unknown_device(device_id))?;
        if !(needs_refresh(&stored.record) || (refresh && stored.record.sync == DpsSync::Complete))
        {
            return Ok(stored);
        }
        let registration = match self
            .dps
            .registration(stored.record.registration_id.as_str())
            .await
        {
            Ok(registration) => registration,
            Err(error) => {
                tracing::warn!(
                    device.id = %device_id,
                    %error,
                    "the registration could not be refreshed from DPS"
                );
                return Ok(stored);
            }
        };
        // Events may write the record meanwhile; apply what DPS said to the newest copy.
        let mut current = stored;
        for _ in 0..3 {
            let mut record = current.record.clone();
            if let Some(registration) = registration.clone() {
                record.registration = Some(registration);
            }
            record.registration_checked_at = Some(now());
            match self.store.replace(&current, &record).await {
                Ok(etag) => return Ok(Stored { record, etag }),
                Err(crate::storage::StoreError::PreconditionFailed) => {
                    match self.store.get_by_device(device_id).await? {
                        Some(fresh) => current = fresh,
                        None => return Err(unknown_device(device_id)),
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        device.id = %device_id,
                        %error,
                        "a refreshed registration could not be stored"
                    );
                    return Ok(Stored {
                        record,
                        etag: current.etag,
                    });
                }
            }
        }
        Ok(current)
    }

    /// The hub a live-device call goes to, or why there is none.
    async fn live(&self, device_id: &str) -> Result<(DeviceRecord, String), ServiceError> {
        let stored = self.device(device_id, false).await?;
        let hub = stored
            .record
            .assigned_hub()
            .map(str::to_owned)
            .ok_or_else(|| ServiceError::Conflict {
                code: "deviceNotAssigned",
                message: format!(
                    "device {device_id:?} has not been assigned to a hub yet (status {})",
                    stored.record.status().as_str()
                ),
            })?;
        Ok((stored.record, hub))
    }

    /// `PATCH /api/devices/{deviceId}/desired`: merges into the twin's desired properties.
    pub async fn update_desired(
        &self,
        device_id: &str,
        desired: Map<String, Value>,
        if_match: Option<&str>,
    ) -> Result<DesiredResult, ServiceError> {
        let size = serde_json::to_string(&desired).map_or(0, |s| s.len());
        if size > MAX_DESIRED_BYTES {
            return Err(ServiceError::Invalid(format!("the desired properties are {size} bytes as JSON; IoT Hub's limit is {MAX_DESIRED_BYTES}")));
        }
        if let Some(bad) = desired
            .keys()
            .find(|k| k.is_empty() || k.starts_with('$') || k.contains(['.', ' ']))
        {
            return Err(ServiceError::Invalid(format!(
                "{bad:?} is not a valid property name (no '$' start, '.' or spaces)"
            )));
        }
        let (record, hub) = self.live(device_id).await?;
        let twin = self
            .hubs
            .update_desired(&hub, record.device_id.as_str(), &desired, if_match)
            .await
            .map_err(|e| in_hub(device_id, e))?;
        Ok(DesiredResult {
            desired: twin
                .pointer("/properties/desired")
                .cloned()
                .unwrap_or(Value::Null),
            etag: twin["etag"].as_str().map(str::to_owned),
        })
    }

    /// `POST /api/devices/{deviceId}/commands/{name}`: a direct method and the device's answer.
    pub async fn command(
        &self,
        device_id: &str,
        name: &str,
        request: CommandRequest,
    ) -> Result<CommandResult, ServiceError> {
        if name.is_empty()
            || name.len() > 128
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(ServiceError::Invalid(format!(
                "{name:?} is not a valid method name (1 to 128 letters, digits, '-', '_' or '.')"
            )));
        }
        let timeout = request.timeout_seconds.unwrap_or(30);
        if !(5..=300).contains(&timeout) {
            return Err(ServiceError::Invalid(
                "timeoutSeconds must be between 5 and 300".into(),
            ));
        }
        let connect_timeout = request.connect_timeout_seconds.unwrap_or(0);
        if connect_timeout > 300 {
            return Err(ServiceError::Invalid(
                "connectTimeoutSeconds must be between 0 and 300".into(),
            ));
        }
        let (record, hub) = self.live(device_id).await?;
        let call = MethodCall {
            name: name.to_owned(),
            payload: request.payload,
            response_timeout: timeout,
            connect_timeout,
        };
        let answer = self
            .hubs
            .invoke(&hub, record.device_id.as_str(), &call)
            .await
            .map_err(|e| match e {
                CloudError::Timeout => ServiceError::Timeout(format!(
                    "device {device_id:?} did not answer {name:?} within {timeout} s"
                )),
                other => in_hub(device_id, other),
            })?;
        Ok(CommandResult {
            status: answer.status,
            payload: answer.payload,
        })
    }
}

/// A hub's "not found" means the registry is ahead of the hub, not that the client erred.
fn in_hub(device_id: &str, error: CloudError) -> ServiceError {
    match error {
        CloudError::NotFound(_) => ServiceError::Conflict {
            code: "deviceNotInHub",
            message: format!(
                "device {device_id:?} is assigned but its hub does not know it (deleted there?)"
            ),
        },
        other => ServiceError::hub(other),
    }
}
