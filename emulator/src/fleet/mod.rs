//! Clients of the emulator, used by the `fleet` tool, the benchmarks (bench/) and the tests: TLS
//! that trusts the emulator's CA, the DPS service API, DPS device registration over HTTPS and
//! MQTT, device connections to the hubs, and the middleware's admin API.

pub mod admin;
pub mod clients;
pub mod device;
pub mod hub;
pub mod hub_device;
pub mod load;
pub mod service;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::sync::Arc;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA certificate could not be used.
    #[error("the CA certificate is unusable: {0}")]
    Certificate(String),
    /// The service refused the credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The service answered with an error status.
    #[error("the service answered {status}: {message}")]
    Refused {
        /// HTTP (or DPS MQTT) status.
        status: u16,
        /// The service's message.
        message: String,
    },
    /// The registration ended without an assignment (status failed or disabled).
    #[error("the registration ended {status}: {message}")]
    NotAssigned {
        /// `failed` or `disabled`.
        status: String,
        /// Why, when the service said.
        message: String,
    },
    /// The network or protocol failed.
    #[error("transport failure: {0}")]
    Transport(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// TLS settings that trust exactly the given CA (the emulator's), with the ring provider.
pub fn client_tls(ca_pem: &str) -> Result<ClientConfig, ClientError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| ClientError::Certificate(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Certificate(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ClientError::Certificate(
            "no certificate in the PEM text".into(),
        ));
    }
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Certificate(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// How long the fleet's HTTPS clients wait: a whole request as long as before (30 s); a
/// connection, which has never needed more than a loopback handshake, 10 s of that.
const HTTPS_TIMEOUTS: iot_io::https::Timeouts = iot_io::https::Timeouts {
    connect: std::time::Duration::from_secs(10),
    request: std::time::Duration::from_secs(30),
};

/// An HTTPS client that trusts the emulator's CA, built as every HTTPS client of the workspace
/// is (iot_io's builder: the public roots plus the one extra CA).
pub fn https_client(ca_pem: &str) -> Result<reqwest::Client, ClientError> {
    iot_io::https::client_builder(Some(ca_pem), HTTPS_TIMEOUTS)
        .map_err(ClientError::Certificate)?
        .build()
        .map_err(|e| ClientError::Transport(e.to_string()))
}

/// Reads an Azure-shaped error body (`message` or `Message`) for an error message.
pub(crate) fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("Message"))
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| body.chars().take(200).collect())
}
