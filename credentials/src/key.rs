//! Symmetric keys as Azure hands them out: base64 text that must never reach a log.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Why a string is not a usable key.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The text is not valid standard base64.
    #[error("the key is not valid base64")]
    NotBase64,
    /// The key decodes to nothing.
    #[error("the key is empty")]
    Empty,
}

/// A shared access key: the decoded bytes plus the base64 text they came from.
///
/// `Debug` and `Display` never show the key; use [`SharedAccessKey::expose_base64`] where the key
/// must really be written somewhere (a connection string file, a provisioning code).
#[derive(Clone, PartialEq, Eq)]
pub struct SharedAccessKey {
    bytes: Vec<u8>,
    text: String,
}

impl SharedAccessKey {
    /// Parses base64 text, as found in connection strings and DPS attestation records.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let bytes = STANDARD.decode(text).map_err(|_| KeyError::NotBase64)?;
        if bytes.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self {
            bytes,
            text: text.to_owned(),
        })
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, KeyError> {
        if bytes.is_empty() {
            return Err(KeyError::Empty);
        }
        let text = STANDARD.encode(&bytes);
        Ok(Self { bytes, text })
    }

    /// A fresh random key of `len` bytes from the operating system's generator.
    ///
    /// DPS generates 64-byte keys for enrollments; IoT Hub generates 32-byte keys.
    pub fn generate(len: usize) -> Self {
        let mut bytes = vec![0u8; len.max(1)];
        // The OS generator failing means the machine cannot make secrets at all; nothing sensible
        // can continue, and this only happens at key creation time, never on a request path
        // that a client controls.
        #[allow(clippy::expect_used)]
        getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
        let text = STANDARD.encode(&bytes);
        Self { bytes, text }
    }

    /// Number of key bytes (Azure accepts 16 to 64 for symmetric-key attestation).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: an empty key cannot be built.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The base64 text of the key. Call only where the key must be written out.
    pub fn expose_base64(&self) -> &str {
        &self.text
    }

    /// base64(HMAC-SHA256(key, message)): the signature used by SAS tokens and key derivation.
    pub fn sign(&self, message: &[u8]) -> String {
        STANDARD.encode(self.mac(message).finalize().into_bytes())
    }

    /// Checks a raw signature against HMAC-SHA256(key, message) in constant time.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.mac(message).verify_slice(signature).is_ok()
    }

    fn mac(&self, message: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        #[allow(clippy::expect_used)]
        let mut mac = HmacSha256::new_from_slice(&self.bytes).expect("HMAC accepts any key length");
        mac.update(message);
        mac
    }
}

impl fmt::Debug for SharedAccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedAccessKey(<redacted>)")
    }
}

impl fmt::Display for SharedAccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted key>")
    }
}

/// The key of one device in a symmetric-key enrollment group:
/// base64(HMAC-SHA256(group key, registration id)).
///
/// The registration id is signed exactly as given; DPS treats registration ids
/// case-insensitively for lookups, but the derived key depends on the bytes the device uses.
pub fn derive_device_key(group_key: &SharedAccessKey, registration_id: &str) -> SharedAccessKey {
    let mac = group_key
        .mac(registration_id.as_bytes())
        .finalize()
        .into_bytes();
    let text = STANDARD.encode(mac);
    SharedAccessKey {
        bytes: mac.to_vec(),
        text,
    }
}

/// Whether two secrets (keys, passwords, tokens) are equal, in time that does not depend on
/// where they differ, so a caller cannot guess one byte at a time. Lengths are not hidden.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_equal_only_when_every_byte_is() {
        assert!(secrets_equal("key-1", "key-1"));
        assert!(!secrets_equal("key-1", "key-2"));
        assert!(!secrets_equal("key-1", "key-1 "));
        assert!(!secrets_equal("", "k"));
    }

    #[test]
    fn debug_and_display_never_show_the_key() {
        let key = SharedAccessKey::from_base64("c2VjcmV0LWtleS1tYXRlcmlhbA==").unwrap();
        assert!(!format!("{key:?}").contains("c2VjcmV0"));
        assert!(!format!("{key}").contains("c2VjcmV0"));
        assert_eq!(key.expose_base64(), "c2VjcmV0LWtleS1tYXRlcmlhbA==");
    }

    #[test]
    fn rejects_text_that_is_not_base64_or_empty() {
        assert_eq!(
            SharedAccessKey::from_base64("not base64!"),
            Err(KeyError::NotBase64)
        );
        assert_eq!(SharedAccessKey::from_base64(""), Err(KeyError::Empty));
    }

    #[test]
    fn generated_keys_have_the_requested_length_and_differ() {
        let a = SharedAccessKey::generate(64);
        let b = SharedAccessKey::generate(64);
        assert_eq!(a.len(), 64);
        assert_ne!(a.expose_base64(), b.expose_base64());
        assert_eq!(SharedAccessKey::from_base64(a.expose_base64()).unwrap(), a);
    }

    #[test]
    fn verify_accepts_its_own_signature_and_rejects_a_changed_message() {
        let key = SharedAccessKey::generate(32);
        let sig = STANDARD.decode(key.sign(b"hello")).unwrap();
        assert!(key.verify(b"hello", &sig));
        assert!(!key.verify(b"hellO", &sig));
    }
}
