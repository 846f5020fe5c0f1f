//! Listeners: HTTPS (hyper over rustls) and MQTT over TLS, each serving one protocol handler.

pub mod https;
pub mod mqtt;
pub mod mqtt_codec;

use std::time::Duration;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
