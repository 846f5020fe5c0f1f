//! Direct methods: the service calls a method on a connected device (or module) and waits for
//! its answer.

use super::sessions::{self, MethodReply};
use super::{publish, Hub, HubError};
use crate::net::mqtt_codec::QoS;
use bytes::Bytes;
use serde_json::Value;
use std::time::Duration;

impl Hub {
    /// Invokes a direct method and waits for the device's answer.
    pub async fn invoke_method(
        &self,
        device_id: &str,
        method: &str,
        payload: &Value,
        response_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<MethodReply, HubError> {
        if self.device(device_id).is_none() {
            return Err(HubError::DeviceNotFound(device_id.to_owned()));
        }
        self.call_session(
            &sessions::session_key(device_id, None),
            method,
            payload,
            response_timeout,
            connect_timeout,
        )
        .await
    }

    /// Sends a method call to the session filed under `key` (a device's or a module's), waiting
    /// up to `connect_timeout` for it to listen, and waits for the answer.
    pub(super) async fn call_session(
        &self,
        key: &str,
        method: &str,
        payload: &Value,
        response_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<MethodReply, HubError> {
        let session = tokio::time::timeout(connect_timeout, async {
            loop {
                let changed = self.sessions.changed.notified();
                if let Some(session) = self
                    .sessions
                    .by_key(key)
                    .filter(|s| s.subscriptions().methods.is_some())
                {
                    return session;
                }
                changed.await;
            }
        })
        .await
        .map_err(|_| HubError::DeviceNotOnline)?;
        let qos = session.subscriptions().methods.unwrap_or(QoS::AtMostOnce);
        let (rid, reply) = session.start_method();
        publish(
            &session,
            format!("$iothub/methods/POST/{method}/?$rid={rid}"),
            qos,
            Bytes::from(payload.to_string()),
        );
        match tokio::time::timeout(response_timeout, reply).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(HubError::DeviceNotOnline),
            Err(_) => {
                session.abandon_method(&rid);
                Err(HubError::Timeout)
            }
        }
    }
}
