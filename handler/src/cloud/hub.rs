//! The IoT Hub service API (api-version 2021-04-12) of every linked hub: device identities (and
//! their keys, which a key rotation replaces), twins' desired properties and direct methods.

use super::{common_error, send, CloudError};
use async_trait::async_trait;
use iot_credentials::sas::{encode_component, unix_now};
use iot_credentials::{ServiceConnectionString, SharedAccessKey};
use reqwest::Method;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

const API_VERSION: &str = "2021-04-12";

/// A device's answer to a direct method.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodAnswer {
    /// The status the device returned.
    pub status: i64,
    /// Its payload.
    pub payload: Value,
}

/// A direct-method call. `Debug` shows the payload's size, not the payload: a payload may carry
/// a secret (the key a rotation hands to the device).
#[derive(Clone, PartialEq)]
pub struct MethodCall {
    /// Method name.
    pub name: String,
    /// Request payload.
    pub payload: Value,
    /// Seconds to wait for the device's answer (5 to 300 on Azure).
    pub response_timeout: u32,
    /// Seconds to wait for a disconnected device to connect (0 to 300).
    pub connect_timeout: u32,
}

impl std::fmt::Debug for MethodCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodCall")
            .field("name", &self.name)
            .field("payload_bytes", &self.payload.to_string().len())
            .field("response_timeout", &self.response_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// What a hub's registry says about a device.
#[derive(Debug, Clone, PartialEq)]
pub struct HubDevice {
    /// `connectionState` is `Connected`.
    pub connected: bool,
    /// When the connection state last changed.
    pub connection_state_updated: Option<String>,
    /// The twin's reported properties.
    pub reported: serde_json::Map<String, Value>,
}

/// The calls the middleware makes to the linked hubs, each naming the hub by host name.
#[async_trait]
pub trait DeviceHubs: Send + Sync {
    /// Whether `hub` is a linked hub the middleware can call.
    fn knows(&self, hub: &str) -> bool;

    /// The device's identity and twin on the hub; `None` if the hub has no such device.
    async fn device(&self, hub: &str, device_id: &str) -> Result<Option<HubDevice>, CloudError>;

    /// Removes a device identity; a missing one is not an error.
    async fn delete_device(&self, hub: &str, device_id: &str) -> Result<(), CloudError>;

    /// Sets the device identity's two symmetric keys (the rest of the identity is kept);
    /// `NotFound` if the hub has no such device.
    async fn set_device_keys(
        &self,
        hub: &str,
        device_id: &str,
        primary: &SharedAccessKey,
        secondary: &SharedAccessKey,
    ) -> Result<(), CloudError>;

    /// Merges `desired` into the twin's desired properties (`null` removes); `if_match` is a twin
    /// etag. Answers the twin.
    async fn update_desired(
        &self,
        hub: &str,
        device_id: &str,
        desired: &Map<String, Value>,
        if_match: Option<&str>,
    ) -> Result<Value, CloudError>;

    /// Calls a direct method and waits for the device's answer.
    async fn invoke(
        &self,
        hub: &str,
        device_id: &str,
        call: &MethodCall,
    ) -> Result<MethodAnswer, CloudError>;
}

/// The linked hubs over HTTPS, each signed with its iothubowner policy.
pub struct HubClients {
    http: reqwest::Client,
    hubs: HashMap<String, ServiceConnectionString>,
}

/// The hub's host name without a port, lower case: how DPS names it in assignments.
pub fn host_key(host: &str) -> String {
    let host = host
        .rsplit_once(':')
        .filter(|(_, port)| port.parse::<u16>().is_ok())
        .map_or(host, |(h, _)| h);
    host.to_ascii_lowercase()
}

impl HubClients {
    /// Clients for the hubs in `connections`.
    pub fn new(connections: &[ServiceConnectionString], http: reqwest::Client) -> Self {
        let hubs = connections
            .iter()
            .map(|c| (host_key(c.host_name()), c.clone()))
            .collect();
        Self { http, hubs }
    }

    async fn call(
        &self,
        hub: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<super::Answer, CloudError> {
        let connection = self.hubs.get(&host_key(hub)).ok_or_else(|| {
            CloudError::BadGateway(format!(
                "{hub} is not one of the linked hubs in IOTHUB_CONNECTION_STRINGS"
            ))
        })?;
        let url = format!(
            "https://{}/{path}?api-version={API_VERSION}",
            connection.host_name()
        );
        let token = connection.sas_token(unix_now() + 300);
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
        send(request, "IoT Hub").await
    }
}

fn is_code(answer: &super::Answer, code: &str) -> bool {
    answer
        .error_code
        .as_deref()
        .is_some_and(|c| c.eq_ignore_ascii_case(code))
        || answer.text.contains(code)
}

#[async_trait]
impl DeviceHubs for HubClients {
    fn knows(&self, hub: &str) -> bool {
        self.hubs.contains_key(&host_key(hub))
    }

    async fn device(&self, hub: &str, device_id: &str) -> Result<Option<HubDevice>, CloudError> {
        let path = format!("devices/{}", encode_component(device_id));
        let answer = self.call(hub, Method::GET, &path, None, None).await?;
        let identity: Value = match answer.status {
            200 => serde_json::from_str(&answer.text).map_err(|_| {
                CloudError::BadGateway("IoT Hub answered an unreadable device".into())
            })?,
            404 => return Ok(None),
            _ => return Err(common_error("IoT Hub", &answer)),
        };
        let path = format!("twins/{}", encode_component(device_id));
        let answer = self.call(hub, Method::GET, &path, None, None).await?;
        let twin: Value = match answer.status {
            200 => serde_json::from_str(&answer.text).map_err(|_| {
                CloudError::BadGateway("IoT Hub answered an unreadable twin".into())
            })?,
            404 => return Ok(None),
            _ => return Err(common_error("IoT Hub", &answer)),
        };
        Ok(Some(HubDevice {
            connected: identity["connectionState"]
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("connected")),
            connection_state_updated: identity["connectionStateUpdatedTime"]
                .as_str()
                .map(str::to_owned),
            reported: twin
                .pointer("/properties/reported")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        }))
    }

    async fn delete_device(&self, hub: &str, device_id: &str) -> Result<(), CloudError> {
        let path = format!("devices/{}", encode_component(device_id));
        let answer = self
            .call(hub, Method::DELETE, &path, None, Some("\"*\""))
            .await?;
        match answer.status {
            200 | 204 | 404 => Ok(()),
            _ => Err(common_error("IoT Hub", &answer)),
        }
    }

    async fn set_device_keys(
        &self,
        hub: &str,
        device_id: &str,
        primary: &SharedAccessKey,
        secondary: &SharedAccessKey,
    ) -> Result<(), CloudError> {
        // PUT replaces the whole identity and takes its etag as If-Match when updating ("should
        // not be set when creating a device, but may be set when updating": Devices - Create Or
        // Update Identity, learn.microsoft.com/rest/api/iothub/service/devices/
        // create-or-update-identity), so the identity is read and written back with new keys; a
        // concurrent change is refused and read again rather than overwritten.
        let path = format!("devices/{}", encode_component(device_id));
        for _ in 0..4 {
            let answer = self.call(hub, Method::GET, &path, None, None).await?;
            let mut identity: Value = match answer.status {
                200 => serde_json::from_str(&answer.text).map_err(|_| {
                    CloudError::BadGateway("IoT Hub answered an unreadable device".into())
                })?,
                _ => return Err(common_error("IoT Hub", &answer)),
            };
            let etag = identity["etag"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| {
                    CloudError::BadGateway("IoT Hub answered a device without an etag".into())
                })?;
            identity["authentication"] = json!({
                "type": "sas",
                "symmetricKey": {
                    "primaryKey": primary.expose_base64(),
                    "secondaryKey": secondary.expose_base64(),
                },
            });
            let answer = self
                .call(hub, Method::PUT, &path, Some(&identity), Some(&etag))
                .await?;
            match answer.status {
                200 | 201 => return Ok(()),
                // Changed since it was read (a connection's state, a re-provisioning): again.
                412 => continue,
                _ => return Err(common_error("IoT Hub", &answer)),
            }
        }
        Err(CloudError::PreconditionFailed)
    }

    async fn update_desired(
        &self,
        hub: &str,
        device_id: &str,
        desired: &Map<String, Value>,
        if_match: Option<&str>,
    ) -> Result<Value, CloudError> {
        let path = format!("twins/{}", encode_component(device_id));
        let body = json!({ "properties": { "desired": desired } });
        let answer = self
            .call(
                hub,
                Method::PATCH,
                &path,
                Some(&body),
                Some(if_match.unwrap_or("\"*\"")),
            )
            .await?;
        match answer.status {
            200 => serde_json::from_str(&answer.text)
                .map_err(|_| CloudError::BadGateway("IoT Hub answered an unreadable twin".into())),
            _ => Err(common_error("IoT Hub", &answer)),
        }
    }

    async fn invoke(
        &self,
        hub: &str,
        device_id: &str,
        call: &MethodCall,
    ) -> Result<MethodAnswer, CloudError> {
        let path = format!("twins/{}/methods", encode_component(device_id));
        let body = json!({
            "methodName": call.name,
            "payload": call.payload,
            "responseTimeoutInSeconds": call.response_timeout,
            "connectTimeoutInSeconds": call.connect_timeout,
        });
        let answer = self
            .call(hub, Method::POST, &path, Some(&body), None)
            .await?;
        match answer.status {
            200 => {
                let value: Value = serde_json::from_str(&answer.text).map_err(|_| {
                    CloudError::BadGateway("IoT Hub answered an unreadable method result".into())
                })?;
                Ok(MethodAnswer {
                    status: value["status"].as_i64().unwrap_or_default(),
                    payload: value["payload"].clone(),
                })
            }
            404 if is_code(&answer, "DeviceNotOnline") || is_code(&answer, "404103") => {
                Err(CloudError::DeviceOffline)
            }
            504 => Err(CloudError::Timeout),
            _ => Err(common_error("IoT Hub", &answer)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hubs_are_found_by_host_whatever_the_port_or_case() {
        assert_eq!(host_key("127.0.0.3:8443"), "127.0.0.3");
        assert_eq!(
            host_key("My-Hub.azure-devices.net"),
            "my-hub.azure-devices.net"
        );
    }
}
