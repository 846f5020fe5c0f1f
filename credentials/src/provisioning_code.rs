//! The provisioning code: one string a customer copies (or scans) into the device's portal, holding
//! everything the device needs to provision itself through DPS.
//!
//! Version 1: `DP1~<idScope>~<registrationId>~<deviceKey>~<endpoint>~<check>`, where the key is
//! base64url without padding and `check` is the first 6 hex digits of SHA-256 over everything
//! before it, so a mistyped code is caught before it reaches DPS. `~` appears in none of the
//! fields (ID scopes, registration ids, host names and base64url never contain it). A future
//! version gets a new prefix; parsers refuse prefixes they do not know.

use crate::key::SharedAccessKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;

const PREFIX_V1: &str = "DP1";
const SEPARATOR: char = '~';

/// Why a text is not a provisioning code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Not a code this program understands.
    #[error("this is not a provisioning code (it should start with {PREFIX_V1}~)")]
    UnknownFormat,
    /// Parts are missing or extra.
    #[error("the provisioning code is incomplete; copy it again in full")]
    Incomplete,
    /// The checksum does not match: a typo.
    #[error("the provisioning code has a typo (its check digits do not match)")]
    Mistyped,
    /// A field is empty or malformed.
    #[error("the provisioning code's {0} is not valid")]
    BadField(&'static str),
}

/// What a provisioning code carries. The key never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct ProvisioningCode {
    /// The DPS ID scope.
    pub id_scope: String,
    /// The device's registration id.
    pub registration_id: String,
    /// The device's symmetric key.
    pub device_key: SharedAccessKey,
    /// The DPS device endpoint (`global.azure-devices-provisioning.net`, or the emulator's).
    pub endpoint: String,
}

fn check_digits(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    digest[..3].iter().map(|b| format!("{b:02x}")).collect()
}

fn field_ok(text: &str) -> bool {
    !text.is_empty() && !text.contains(SEPARATOR) && !text.chars().any(char::is_whitespace)
}

impl ProvisioningCode {
    /// The code text. Contains the device key: hand it only to the device's owner.
    pub fn expose(&self) -> String {
        let key = URL_SAFE_NO_PAD.encode(self.device_key_bytes());
        let body = [
            PREFIX_V1,
            &self.id_scope,
            &self.registration_id,
            &key,
            &self.endpoint,
        ]
        .join("~");
        format!("{body}~{}", check_digits(&body))
    }

    fn device_key_bytes(&self) -> Vec<u8> {
        // The key text is standard base64 by construction.
        base64::engine::general_purpose::STANDARD
            .decode(self.device_key.expose_base64())
            .unwrap_or_default()
    }

    /// Parses a code as typed or pasted (surrounding whitespace is ignored).
    pub fn parse(text: &str) -> Result<Self, CodeError> {
        let text = text.trim();
        let parts: Vec<&str> = text.split(SEPARATOR).collect();
        if parts
            .first()
            .is_none_or(|p| !p.eq_ignore_ascii_case(PREFIX_V1))
        {
            return Err(CodeError::UnknownFormat);
        }
        let [prefix, scope, registration, key, endpoint, check] = parts.as_slice() else {
            return Err(CodeError::Incomplete);
        };
        let body = [*prefix, scope, registration, key, endpoint].join("~");
        if !check.eq_ignore_ascii_case(&check_digits(&body)) {
            return Err(CodeError::Mistyped);
        }
        for (name, value) in [
            ("ID scope", scope),
            ("registration id", registration),
            ("endpoint", endpoint),
        ] {
            if !field_ok(value) {
                return Err(CodeError::BadField(name));
            }
        }
        let key_bytes = URL_SAFE_NO_PAD
            .decode(key)
            .map_err(|_| CodeError::BadField("device key"))?;
        let device_key = SharedAccessKey::from_bytes(key_bytes)
            .map_err(|_| CodeError::BadField("device key"))?;
        Ok(Self {
            id_scope: (*scope).to_owned(),
            registration_id: (*registration).to_owned(),
            device_key,
            endpoint: (*endpoint).to_owned(),
        })
    }
}

impl fmt::Debug for ProvisioningCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvisioningCode")
            .field("id_scope", &self.id_scope)
            .field("registration_id", &self.registration_id)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProvisioningCode {
        ProvisioningCode {
            id_scope: "0ne00EMU001".into(),
            registration_id: "Thermostat.A_01:rev-2".into(),
            device_key: SharedAccessKey::generate(64),
            endpoint: "global.azure-devices-provisioning.net".into(),
        }
    }

    #[test]
    fn codes_round_trip() {
        let code = sample();
        let text = code.expose();
        assert!(text.starts_with("DP1~0ne00EMU001~Thermostat.A_01:rev-2~"));
        assert_eq!(
            ProvisioningCode::parse(&format!("  {text}\n")).unwrap(),
            code
        );
    }

    #[test]
    fn typos_and_truncations_are_caught_before_reaching_dps() {
        let text = sample().expose();
        let mut typo = text.clone().into_bytes();
        let middle = text.find("~Thermostat").unwrap() + 3;
        typo[middle] = if typo[middle] == b'h' { b'x' } else { b'h' };
        assert_eq!(
            ProvisioningCode::parse(&String::from_utf8(typo).unwrap()),
            Err(CodeError::Mistyped)
        );
        assert_eq!(
            ProvisioningCode::parse(&text[..text.len() - 8]),
            Err(CodeError::Incomplete)
        );
        assert_eq!(
            ProvisioningCode::parse("HostName=x;DeviceId=y"),
            Err(CodeError::UnknownFormat)
        );
    }

    #[test]
    fn debug_output_hides_the_key() {
        let code = sample();
        let key = URL_SAFE_NO_PAD.encode(code.device_key_bytes());
        assert!(!format!("{code:?}").contains(&key));
    }
}
