//! The emulator's own certificate authority and the server certificate it issues at each start.
//!
//! Official SDKs check server certificates like any TLS client, so they are given one extra root:
//! the CA created on first start and kept in the state directory (`ca.pem`, key in `ca.key.pem`,
//! readable by the owner only). The server certificate is re-issued at every start for the
//! addresses being served, so changing addresses never leaves a stale certificate behind.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

const CA_COMMON_NAME: &str = "Azure IoT provisioning emulator local CA";
const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key.pem";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing the CA files failed.
    #[error("cannot use the CA files in {dir}: {source}")]
    Io {
        /// The state directory.
        dir: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Generating or parsing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the certificate.
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The local CA: its key signs server certificates; its PEM is what clients trust.
pub struct LocalCa {
    key: KeyPair,
    pem: String,
    path: PathBuf,
}

impl LocalCa {
    /// Loads the CA from `state_dir`, creating it on first start.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, TlsError> {
        let io_err = |source| TlsError::Io {
            dir: state_dir.to_owned(),
            source,
        };
        fs::create_dir_all(state_dir).map_err(io_err)?;
        let cert_path = state_dir.join(CA_FILE);
        let key_path = state_dir.join(CA_KEY_FILE);
        if cert_path.exists() && key_path.exists() {
            let key_pem = fs::read_to_string(&key_path).map_err(io_err)?;
            let pem = fs::read_to_string(&cert_path).map_err(io_err)?;
            return Ok(Self {
                key: KeyPair::from_pem(&key_pem)?,
                pem,
                path: cert_path,
            });
        }
        let key = KeyPair::generate()?;
        let now = OffsetDateTime::now_utc();
        let mut params = ca_params();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        let pem = params.self_signed(&key)?.pem();
        write_private(&key_path, key.serialize_pem().as_bytes()).map_err(io_err)?;
        fs::write(&cert_path, &pem).map_err(io_err)?;
        Ok(Self {
            key,
            pem,
            path: cert_path,
        })
    }

    /// Absolute path of the CA certificate (PEM), as published in endpoints.json.
    pub fn certificate_path(&self) -> &Path {
        &self.path
    }

    /// The CA certificate in PEM form.
    pub fn certificate_pem(&self) -> &str {
        &self.pem
    }

    /// Issues a server certificate for `addresses` (plus `localhost`) and builds the rustls
    /// configuration that serves it. ALPN offers `protocols` (e.g. `http/1.1`; empty for MQTT).
    pub fn server_config(
        &self,
        addresses: &[IpAddr],
        protocols: &[&[u8]],
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let (certificate, key) = self.issue_server_certificate(addresses)?;
        let chain = vec![certificate.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// Writes a server certificate for `addresses` and its private key as PEM files, for another
    /// TLS server (the benchmark's reference broker) to serve under this CA.
    pub fn write_server_certificate(
        &self,
        addresses: &[IpAddr],
        cert: &Path,
        key: &Path,
    ) -> Result<(), TlsError> {
        let (certificate, private) = self.issue_server_certificate(addresses)?;
        let io_err = |source| TlsError::Io {
            dir: cert.to_owned(),
            source,
        };
        fs::write(cert, certificate.pem()).map_err(io_err)?;
        write_private(key, private.serialize_pem().as_bytes()).map_err(io_err)
    }

    fn issue_server_certificate(
        &self,
        addresses: &[IpAddr],
    ) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
        // rcgen signs with a certificate object; rebuilding the CA's from the same name and key
        // gives the issuer name and key identifier that the published ca.pem carries.
        let issuer = ca_params().self_signed(&self.key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .subject_alt_names
            .extend(addresses.iter().map(|a| SanType::IpAddress(*a)));
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Azure IoT provisioning emulator");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(365);
        let cert = params.signed_by(&key, &issuer, &self.key)?;
        Ok((cert, key))
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Writes a file only its owner can read (the CA key).
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    io::Write::write_all(&mut options.open(path)?, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalCa::load_or_create(dir.path()).unwrap();
        let second = LocalCa::load_or_create(dir.path()).unwrap();
        assert_eq!(first.certificate_pem(), second.certificate_pem());
        assert!(first
            .certificate_pem()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the CA key must be private to its owner");
        }
    }

    #[test]
    fn a_server_configuration_can_be_built_for_loopback_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path()).unwrap();
        let config = ca
            .server_config(&["127.0.0.2".parse().unwrap()], &[b"http/1.1"])
            .unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
