//! A minimal client of an IoT hub's service API (devices, twins, methods, messages).

use super::{error_message, https_client, ClientError};
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

    /// GET `path` (e.g. `twins/dev-1`); None when the hub answers 404.
    pub async fn get(&self, path: &str) -> Result<Option<Value>, ClientError> {
        let response = self
            .http
            .get(format!(
                "https://{}/{path}?api-version=2021-04-12",
                self.connection.host_name()
            ))
            .header(
                "Authorization",
                self.connection.sas_token(unix_now() + 600).expose(),
            )
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        match status {
            200 => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| ClientError::Transport(e.to_string())),
            404 => Ok(None),
            401 => Err(ClientError::Unauthorized(error_message(&text))),
            status => Err(ClientError::Refused {
                status,
                message: error_message(&text),
            }),
        }
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
