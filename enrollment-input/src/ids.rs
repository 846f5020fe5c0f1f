//! Identifiers, parsed once at the edge: a value of these types is valid by construction.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an identifier was refused. The message is safe to return to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(pub String);

/// A DPS registration id: 1 to 128 ASCII letters, digits and `- . _ :`, starting and ending with a
/// letter or digit. DPS compares them case-insensitively; [`RegistrationId::key`] is the form used
/// as a storage key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RegistrationId(String);

impl RegistrationId {
    /// Parses a registration id.
    pub fn parse(text: &str) -> Result<Self, InvalidId> {
        let valid = iot_credentials::ids::is_registration_id(text);
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidId(format!(
                "registrationId {:?} is invalid: use 1 to 128 letters, digits, '-', '.', '_' or \
                    ':', starting and ending with a letter or digit",
                shorten(text)
            )))
        }
    }

    /// As given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-insensitive key.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

/// An IoT Hub device id: 1 to 128 ASCII letters, digits and `- . % _ * ? ! ( ) , : = @ $ '`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    /// Parses a device id.
    pub fn parse(text: &str) -> Result<Self, InvalidId> {
        let valid = iot_credentials::ids::is_device_id(text);
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidId(format!(
                "deviceId {:?} is invalid: use 1 to 128 letters, digits or - . % _ * ? ! ( ) , : \
                    = @ $ '",
                shorten(text)
            )))
        }
    }

    /// As given (device ids are case-sensitive).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A customer id from the CRM: 1 to 128 letters, digits and `- . _ : @`, usable as a storage key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerId(String);

impl CustomerId {
    /// Parses a customer id.
    pub fn parse(text: &str) -> Result<Self, InvalidId> {
        let valid = !text.is_empty()
            && text.len() <= 128
            && text.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'@')
            });
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidId(format!(
                "customer id {:?} is invalid: use 1 to 128 letters, digits, '-', '.', '_', ':' or \
                    '@'",
                shorten(text)
            )))
        }
    }

    /// As given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An IoT hub host name, as DPS and the hubs' connection strings name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HubName(String);

impl HubName {
    /// Parses a host name (letters, digits, `-` and `.`; compared case-insensitively).
    pub fn parse(text: &str) -> Result<Self, InvalidId> {
        let valid = !text.is_empty()
            && text.len() <= 253
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
        if valid {
            Ok(Self(text.to_ascii_lowercase()))
        } else {
            Err(InvalidId(format!(
                "{:?} is not an IoT hub host name",
                shorten(text)
            )))
        }
    }

    /// The host name, lower case.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn shorten(text: &str) -> String {
    text.chars().take(140).collect()
}

macro_rules! string_conversions {
    ($($name:ident),*) => {$(
        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(text: String) -> Result<Self, InvalidId> {
                Self::parse(&text)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}
string_conversions!(RegistrationId, DeviceId, CustomerId, HubName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_ids_follow_dps_and_compare_case_insensitively() {
        let id = RegistrationId::parse("Thermostat.A_01:rev-2").unwrap();
        assert_eq!(id.key(), "thermostat.a_01:rev-2");
        for bad in ["", "-x", "x-", "a b", "a/b", &"x".repeat(129)] {
            assert!(RegistrationId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn device_and_customer_ids_refuse_characters_that_break_keys_or_topics() {
        assert!(DeviceId::parse("dev-1:(a)").is_ok());
        assert!(DeviceId::parse("dev/1").is_err());
        assert!(CustomerId::parse("contoso@eu").is_ok());
        for bad in ["", "a/b", "a#b", "a?b", "a b"] {
            assert!(CustomerId::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            HubName::parse("My-Hub.azure-devices.net").unwrap().as_str(),
            "my-hub.azure-devices.net"
        );
        assert!(HubName::parse("hub/x").is_err());
    }
}
