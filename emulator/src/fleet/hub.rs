//! A minimal client of an IoT hub's service API (devices, twins, methods, messages).

use super::{https_client, ClientError};
use iot_credentials::sas::unix_now;
use iot_credentials::ServiceConnectionString;
use serde_json::Value;

/// An IoT Hub service client signed with a shared access policy.
pub struct HubService {
    http: reqwest::Client,
    connection: ServiceConnectionString,
}

impl HubService {
    /// A client for the hub in `connection`, trusting `ca_pem`.
    pub fn new(connection: ServiceConnectionString, ca_pem: &str) -> Result<Self, ClientError> {
        Ok(Self {
            http: https_client(ca_pem)?,
            connection,
        })
    }

    /// Any call: answers the status and the JSON body (`null` when empty or not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ClientError> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut request = self
            .http
            .request(
                method,
                format!(
                    "https://{}/{path}{separator}api-version=2021-04-12",
                    self.connection.host_name()
                ),
            )
            .header(
                "Authorization",
                self.connection.sas_token(unix_now() + 600).expose(),
            );
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}
