//! Azure's naming rules, checked before anything is stored.

use super::error::DpsError;

/// Registration and enrollment group ids: up to 128 characters of ASCII letters, digits and
/// `- . _ :`, starting and ending with a letter or digit (DPS service API, 2021-10-01).
pub fn registration_id(id: &str) -> Result<(), DpsError> {
    let valid = iot_credentials::ids::is_registration_id(id);
    if valid {
        Ok(())
    } else {
        Err(DpsError::BadRequest(format!(
            "invalid id {:?}: use 1 to 128 letters, digits, '-', '.', '_' or ':', starting and \
                ending with a letter or digit",
            truncate(id)
        )))
    }
}

/// IoT Hub device ids: up to 128 ASCII letters, digits and `- . % _ * ? ! ( ) , : = @ $ '`.
pub fn device_id(id: &str) -> Result<(), DpsError> {
    let valid = iot_credentials::ids::is_device_id(id);
    if valid {
        Ok(())
    } else {
        Err(DpsError::BadRequest(format!(
            "invalid deviceId {:?}: use 1 to 128 letters, digits or - . % _ * ? ! ( ) , : = @ $ '",
            truncate(id)
        )))
    }
}

/// Symmetric keys must be base64 of 16 to 64 bytes.
pub fn symmetric_key(which: &str, key: &str) -> Result<(), DpsError> {
    match iot_credentials::SharedAccessKey::from_base64(key) {
        Ok(key) if (16..=64).contains(&key.len()) => Ok(()),
        _ => Err(DpsError::BadRequest(format!(
            "{which} must be base64 encoding 16 to 64 bytes"
        ))),
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(140).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_ids_follow_the_dps_rules() {
        for ok in ["a", "device-01", "Thermostat.A_01:rev-2", &"x".repeat(128)] {
            registration_id(ok).unwrap();
        }
        for bad in [
            "",
            "-lead",
            "trail.",
            "has space",
            "slash/",
            &"x".repeat(129),
            "ünïcode",
        ] {
            assert!(registration_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn device_ids_follow_the_hub_rules() {
        device_id("sensor-01:(a)=b@c$'!").unwrap();
        assert!(device_id("has space").is_err());
        assert!(device_id("").is_err());
        assert!(device_id("slash/").is_err());
    }

    #[test]
    fn keys_must_be_base64_of_sensible_length() {
        symmetric_key(
            "primaryKey",
            iot_credentials::SharedAccessKey::generate(32).expose_base64(),
        )
        .unwrap();
        assert!(symmetric_key("primaryKey", "c2hvcnQ=").is_err());
        assert!(symmetric_key("primaryKey", "not base64").is_err());
    }
}
