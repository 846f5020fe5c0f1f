//! The HTTPS client builder: rustls, the public roots (what Azure's certificates chain to), and
//! one extra CA when the configuration names one (the emulator's, in development).

use std::time::Duration;

/// How long a client waits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For a TCP and TLS connection.
    pub connect: Duration,
    /// For a whole request, answer included.
    pub request: Duration,
}

/// A client builder trusting the public roots and every certificate of `extra_ca_pem` (a PEM
/// bundle). Callers add what is theirs (pool sizes, a user agent) and build it.
pub fn client_builder(
    extra_ca_pem: Option<&str>,
    timeouts: Timeouts,
) -> Result<reqwest::ClientBuilder, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(timeouts.connect)
        .timeout(timeouts.request);
    if let Some(pem) = extra_ca_pem {
        let certificates = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| format!("the extra CA is not a PEM certificate bundle: {e}"))?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        connect: Duration::from_secs(1),
        request: Duration::from_secs(1),
    };

    #[test]
    fn without_an_extra_ca_the_client_builds() {
        assert!(client_builder(None, TIMEOUTS).unwrap().build().is_ok());
    }

    #[test]
    fn a_broken_certificate_in_the_extra_ca_is_refused_in_plain_words() {
        let broken = "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n";
        let error = client_builder(Some(broken), TIMEOUTS).unwrap_err();
        assert!(error.contains("extra CA"), "{error}");
    }
}
