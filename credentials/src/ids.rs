//! Azure's naming rules for the ids every program checks: DPS registration ids and IoT Hub
//! device ids. One copy, so the emulator, the middleware and the device agree.

/// A DPS registration id (or enrollment group id): 1 to 128 ASCII letters, digits and
/// `- . _ :`, starting and ending with a letter or digit (DPS service API, 2021-10-01).
pub fn is_registration_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// An IoT Hub device id: 1 to 128 ASCII letters, digits and `- . % _ * ? ! ( ) , : = @ $ '`.
pub fn is_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'%'
                        | b'_'
                        | b'*'
                        | b'?'
                        | b'!'
                        | b'('
                        | b')'
                        | b','
                        | b':'
                        | b'='
                        | b'@'
                        | b'$'
                        | b'\''
                )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_and_device_ids_follow_azure() {
        assert!(is_registration_id("Thermostat.A_01:rev-2"));
        for bad in ["", "-x", "x-", "a b", "a/b", &"x".repeat(129)] {
            assert!(!is_registration_id(bad), "{bad:?}");
        }
        assert!(is_device_id("dev-1:(a)$'"));
        for bad in ["", "dev/1", "a#b", "a b"] {
            assert!(!is_device_id(bad), "{bad:?}");
        }
    }
}
