//! A minimal client of the DPS service API: enroll, read keys, bulk-enroll.

use super::{error_message, https_client, ClientError};
use crate::dps::model::{AttestationMechanism, DeviceRegistrationState};
use iot_credentials::sas::unix_now;
use iot_credentials::{ServiceConnectionString, SharedAccessKey};
use serde_json::{json, Value};

const API_VERSION: &str = "2021-10-01";

/// A DPS service client signed with a shared access policy.
pub struct DpsService {
    http: reqwest::Client,
    connection: ServiceConnectionString,
}

impl DpsService {
    /// A client for the service in `connection_string`, trusting `ca_pem`.
    pub fn new(connection: ServiceConnectionString, ca_pem: &str) -> Result<Self, ClientError> {
        Ok(Self {
            http: https_client(ca_pem)?,
            connection,
        })
    }

    fn url(&self, path: &str) -> String {
        format!(
            "https://{}/{path}?api-version={API_VERSION}",
            self.connection.host_name()
        )
    }

    /// Sends a request with a fresh service token and returns the JSON answer.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let token = self.connection.sas_token(unix_now() + 3600);
        let mut request = self
            .http
            .request(method, self.url(path))
            .header("Authorization", token.expose());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        match status.as_u16() {
            200..=299 if text.is_empty() => Ok(Value::Null),
            200..=299 => {
                serde_json::from_str(&text).map_err(|e| ClientError::Transport(e.to_string()))
            }
            401 => Err(ClientError::Unauthorized(error_message(&text))),
            status => Err(ClientError::Refused {
                status,
                message: error_message(&text),
            }),
        }
    }

    /// Creates or replaces an individual enrollment.
    pub async fn put_enrollment(&self, enrollment: &Value) -> Result<Value, ClientError> {
        let id = enrollment["registrationId"].as_str().unwrap_or_default();
        self.call(
            reqwest::Method::PUT,
            &format!("enrollments/{id}"),
            Some(enrollment),
        )
        .await
    }

    /// The device's primary key (from the attestation mechanism; DPS never returns keys on GET).
    pub async fn primary_key(&self, registration_id: &str) -> Result<SharedAccessKey, ClientError> {
        let value = self
            .call(
                reqwest::Method::POST,
                &format!("enrollments/{registration_id}/attestationmechanism"),
                None,
            )
            .await?;
        let attestation: AttestationMechanism =
            serde_json::from_value(value).map_err(|e| ClientError::Transport(e.to_string()))?;
        attestation
            .symmetric_key
            .and_then(|k| k.primary_key)
            .and_then(|k| SharedAccessKey::from_base64(&k).ok())
            .ok_or_else(|| ClientError::Transport("the enrollment has no symmetric key".into()))
    }

    /// Creates up to 10 enrollments in one bulk call; fails if any item failed.
    pub async fn bulk_create(&self, enrollments: Vec<Value>) -> Result<(), ClientError> {
        let answer = self
            .call(
                reqwest::Method::POST,
                "enrollments",
                Some(&json!({ "mode": "create", "enrollments": enrollments })),
            )
            .await?;
        if answer["isSuccessful"] == json!(true) {
            Ok(())
        } else {
            Err(ClientError::Refused {
                status: 200,
                message: answer["errors"].to_string(),
            })
        }
    }

    /// A device's registration record.
    pub async fn registration(
        &self,
        registration_id: &str,
    ) -> Result<DeviceRegistrationState, ClientError> {
        let value = self
            .call(
                reqwest::Method::GET,
                &format!("registrations/{registration_id}"),
                None,
            )
            .await?;
        serde_json::from_value(value).map_err(|e| ClientError::Transport(e.to_string()))
    }
}
