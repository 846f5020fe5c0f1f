//! Registration over HTTPS: `PUT {scope}/registrations/{id}/register`, then
//! `GET …/operations/{operationId}` until DPS has decided, each call retried on 429 and 5xx.

use super::{
    clock_or_credentials, registration_token, retry_after, Operation, ProvisionError, Provisioner,
};
use crate::assignment::Credentials;
use iot_credentials::sas::encode_component;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The device-side API version for HTTPS.
const HTTPS_API_VERSION: &str = "2021-06-01";

/// DPS's answer to one request, as far as the device reads it.
struct Reply {
    status: u16,
    /// `Retry-After`, bounded.
    retry_after: Option<Duration>,
    /// DPS's `Date`, to tell a wrong clock from a wrong key.
    server_date: Option<String>,
    text: String,
    body: Value,
}

impl Provisioner {
    /// The URL of `rest` under the device's registration.
    fn url(&self, credentials: &Credentials, rest: &str) -> String {
        format!(
            "https://{}/{}/registrations/{}/{rest}?api-version={HTTPS_API_VERSION}",
            credentials.endpoint,
            encode_component(&credentials.id_scope),
            encode_component(&credentials.registration_id)
        )
    }

    /// Sends one request, signed with a fresh registration token, and reads DPS's answer.
    async fn send(
        &self,
        credentials: &Credentials,
        request: reqwest::RequestBuilder,
    ) -> Result<Reply, ProvisionError> {
        let token = registration_token(credentials, Duration::from_secs(3600));
        let response = request
            .header("Authorization", token.expose())
            .send()
            .await
            .map_err(|e| {
                ProvisionError::Unreachable(if e.is_timeout() {
                    "timed out".into()
                } else if e.is_connect() {
                    "cannot connect".into()
                } else {
                    "the request failed".into()
                })
            })?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let status = response.status().as_u16();
        let retry_after = header("retry-after").as_deref().and_then(retry_after);
        let server_date = header("date");
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            retry_after,
            server_date,
            text,
            body,
        })
    }

    /// One call, retried on 429 and 5xx with backoff until the deadline.
    async fn call(
        &self,
        credentials: &Credentials,
        request: impl Fn() -> reqwest::RequestBuilder,
        started: Instant,
    ) -> Result<(u16, Value, Duration), ProvisionError> {
        let mut retry = 0u32;
        loop {
            let Reply {
                status,
                retry_after,
                server_date,
                text,
                body,
            } = self.send(credentials, request()).await?;
            match status {
                200..=299 => {
                    return Ok((status, body, retry_after.unwrap_or(Duration::from_secs(2))))
                }
                401 | 403 => return Err(clock_or_credentials(server_date.as_deref())),
                404 => return Err(ProvisionError::UnknownRegistration),
                429 | 500..=599 => {
                    let wait = self.backoff.wait(retry, retry_after);
                    if started.elapsed() + wait >= self.deadline {
                        return Err(ProvisionError::Service(format!("HTTP {status}")));
                    }
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        status,
                        wait_ms = wait.as_millis() as u64,
                        "DPS asked to wait; retrying"
                    );
                    tokio::time::sleep(wait).await;
                    retry = retry.saturating_add(1);
                }
                _ => {
                    return Err(ProvisionError::Refused(
                        body["message"]
                            .as_str()
                            .unwrap_or(&text)
                            .chars()
                            .take(200)
                            .collect(),
                    ))
                }
            }
        }
    }

    /// Registers over HTTPS: `PUT …/register`, then `GET …/operations/{id}` until DPS decides.
    pub(super) async fn over_https(
        &self,
        credentials: &Credentials,
        started: Instant,
    ) -> Result<Operation, ProvisionError> {
        let body = json!({
            "registrationId": credentials.registration_id,
            "payload": self.info.payload(),
        });
        let register_url = self.url(credentials, "register");
        let (_, answer, mut wait) = self
            .call(
                credentials,
                || self.http.put(&register_url).json(&body),
                started,
            )
            .await?;
        let mut operation: Operation = serde_json::from_value(answer)
            .map_err(|e| ProvisionError::Refused(format!("an unreadable answer: {e}")))?;
        while operation.status == "assigning" || operation.status == "unassigned" {
            let id = operation
                .operation_id
                .clone()
                .ok_or_else(|| ProvisionError::Refused("no operation id".into()))?;
            // Retry-After 0 is allowed; do not spin.
            let pause = wait.max(Duration::from_millis(50));
            if started.elapsed() + pause >= self.deadline {
                return Err(ProvisionError::Service(
                    "DPS is still assigning at the deadline".into(),
                ));
            }
            tokio::time::sleep(pause).await;
            let url = self.url(
                credentials,
                &format!("operations/{}", encode_component(&id)),
            );
            let (_, answer, next_wait) = self
                .call(credentials, || self.http.get(&url), started)
                .await?;
            operation = serde_json::from_value(answer)
                .map_err(|e| ProvisionError::Refused(format!("an unreadable answer: {e}")))?;
            if operation.operation_id.is_none() {
                operation.operation_id = Some(id);
            }
            wait = next_wait;
        }
        Ok(operation)
    }
}
