//! Shared access signature tokens, as DPS and IoT Hub define them:
//! `SharedAccessSignature sr=<url-encoded resource>&sig=<url-encoded signature>&se=<expiry>[&skn=<policy>]`
//! where the signature is base64(HMAC-SHA256(key, "<url-encoded resource>\n<expiry>")).

use crate::key::SharedAccessKey;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

const PREFIX: &str = "SharedAccessSignature ";

/// What `encodeURIComponent`-style encoders leave alone: the RFC 3986 unreserved characters.
/// Both official SDKs used as oracles (Node's `encodeUriComponentStrict`, Python's
/// `urllib.parse.quote(safe="")`) encode everything else, with upper-case hex digits.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// URL-encodes one component the way the official SDKs do (upper-case `%2F`, case kept).
pub fn encode_component(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// Seconds since the Unix epoch, the unit of `se`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why a token was refused. The messages are safe to return to a client: they never echo the
/// signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    /// The text does not start with `SharedAccessSignature `.
    #[error("the credential is not a SharedAccessSignature token")]
    NotASasToken,
    /// A required field is missing, repeated or unreadable.
    #[error("malformed SharedAccessSignature token: {0}")]
    Malformed(&'static str),
    /// `se` lies in the past.
    #[error(
        "the SharedAccessSignature token expired at {expiry} (Unix time); check the device \
        clock or renew the token"
    )]
    Expired {
        /// The token's expiry, seconds since the Unix epoch.
        expiry: u64,
    },
    /// No key produces this signature.
    #[error("the SharedAccessSignature signature does not match any key")]
    SignatureMismatch,
    /// The token is for another resource than the one accessed.
    #[error("the SharedAccessSignature token was issued for another resource")]
    WrongResource,
}

/// A token this program signed. The text is a credential, so `Debug` and `Display` hide it.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken {
    text: String,
    expiry: u64,
}

impl SasToken {
    /// Signs `resource` (unencoded, e.g. `0ne00000001/registrations/dev-1`) until `expiry`.
    ///
    /// `key_name` is the policy name (`skn`): `registration` for DPS devices, a shared access
    /// policy such as `iothubowner` for services, none for IoT Hub devices.
    pub fn sign(
        resource: &str,
        key: &SharedAccessKey,
        key_name: Option<&str>,
        expiry: u64,
    ) -> Self {
        let encoded_resource = encode_component(resource);
        let signature = key.sign(format!("{encoded_resource}\n{expiry}").as_bytes());
        let mut text = format!(
            "{PREFIX}sr={encoded_resource}&sig={}&se={expiry}",
            encode_component(&signature)
        );
        if let Some(name) = key_name {
            text.push_str("&skn=");
            text.push_str(&encode_component(name));
        }
        Self { text, expiry }
    }

    /// The full token text, for an `Authorization` header or an MQTT password.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// When the token stops being accepted, seconds since the Unix epoch.
    pub fn expiry(&self) -> u64 {
        self.expiry
    }
}

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SasToken(<redacted>, expires {})", self.expiry)
    }
}

impl fmt::Display for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted SAS token>")
    }
}

/// A token received from a client: parsed but not yet trusted.
///
/// Verification recomputes the signature over the `sr` value exactly as it appears in the token
/// (still URL-encoded), because SDKs disagree on encoding details (upper- or lower-case hex,
/// lower-cased or case-kept resource). What the token grants is then decided on the decoded
/// resource, case-insensitively.
#[derive(Clone)]
pub struct SignedSas {
    encoded_resource: String,
    resource: String,
    signature: Vec<u8>,
    expiry_text: String,
    expiry: u64,
    key_name: Option<String>,
}

impl SignedSas {
    /// Parses the text of an `Authorization` header or MQTT password.
    pub fn parse(text: &str) -> Result<Self, SasError> {
        let fields = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(SasError::NotASasToken)?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for field in fields.split('&') {
            let (name, value) = field.split_once('=').ok_or(SasError::Malformed(
                "every field must have the form name=value",
            ))?;
            let slot = match name {
                "sr" => &mut sr,
                "sig" => &mut sig,
                "se" => &mut se,
                "skn" => &mut skn,
                // Unknown fields are ignored, as Azure does, so future SDK additions still work.
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(SasError::Malformed("a field appears twice"));
            }
        }
        let encoded_resource = sr.ok_or(SasError::Malformed("the sr field is missing"))?;
        let resource = percent_decode_str(encoded_resource)
            .decode_utf8()
            .map_err(|_| SasError::Malformed("sr is not valid URL-encoded UTF-8"))?
            .into_owned();
        let sig = sig.ok_or(SasError::Malformed("the sig field is missing"))?;
        let sig = percent_decode_str(sig)
            .decode_utf8()
            .map_err(|_| SasError::Malformed("sig is not valid URL-encoded text"))?;
        let signature = STANDARD
            .decode(sig.as_bytes())
            .map_err(|_| SasError::Malformed("sig is not base64"))?;
        let expiry_text = se.ok_or(SasError::Malformed("the se field is missing"))?;
        let expiry = expiry_text
            .parse::<u64>()
            .map_err(|_| SasError::Malformed("se is not a whole number of seconds"))?;
        let key_name = match skn {
            Some(name) => Some(
                percent_decode_str(name)
                    .decode_utf8()
                    .map_err(|_| SasError::Malformed("skn is not valid URL-encoded UTF-8"))?
                    .into_owned(),
            ),
            None => None,
        };
        Ok(Self {
            encoded_resource: encoded_resource.to_owned(),
            resource,
            signature,
            expiry_text: expiry_text.to_owned(),
            expiry,
            key_name,
        })
    }

    /// The decoded resource the token was issued for.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The policy name (`skn`), if any.
    pub fn key_name(&self) -> Option<&str> {
        self.key_name.as_deref()
    }

    /// The expiry, seconds since the Unix epoch.
    pub fn expiry(&self) -> u64 {
        self.expiry
    }

    /// Checks the signature against each key in turn (primary, then secondary) and the expiry
    /// against `now`. Expiry is strict: a device that works against this check also works
    /// against Azure, whatever skew the cloud tolerates.
    pub fn verify(&self, keys: &[&SharedAccessKey], now: u64) -> Result<(), SasError> {
        let message = format!("{}\n{}", self.encoded_resource, self.expiry_text);
        if !keys
            .iter()
            .any(|key| key.verify(message.as_bytes(), &self.signature))
        {
            return Err(SasError::SignatureMismatch);
        }
        if self.expiry <= now {
            return Err(SasError::Expired {
                expiry: self.expiry,
            });
        }
        Ok(())
    }

    /// Whether the token's resource covers `accessed` (unencoded): the same resource, or a
    /// parent of it at a `/` boundary, compared case-insensitively. A token for `myhub.host`
    /// covers `myhub.host/devices/d1`; a token for `myhub.host/devices/d1` does not cover `d2`.
    pub fn grants(&self, accessed: &str) -> bool {
        let granted = normalize(&self.resource);
        let accessed = normalize(accessed);
        accessed == granted
            || (accessed.len() > granted.len()
                && accessed.starts_with(&granted)
                && accessed.as_bytes()[granted.len()] == b'/')
    }
}

fn normalize(resource: &str) -> String {
    let resource = resource
        .strip_prefix("https://")
        .or_else(|| resource.strip_prefix("amqps://"))
        .unwrap_or(resource);
    resource.trim_end_matches('/').to_ascii_lowercase()
}

impl fmt::Debug for SignedSas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedSas")
            .field("resource", &self.resource)
            .field("expiry", &self.expiry)
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SharedAccessKey {
        SharedAccessKey::from_base64("dGhpcyBpcyBhIHRlc3Qga2V5IGZvciB0aGUgU0FTIHRlc3Rz").unwrap()
    }

    #[test]
    fn a_signed_token_parses_and_verifies() {
        let token = SasToken::sign(
            "0ne00000001/registrations/dev-1",
            &key(),
            Some("registration"),
            2_000_000_000,
        );
        let parsed = SignedSas::parse(token.expose()).unwrap();
        assert_eq!(parsed.resource(), "0ne00000001/registrations/dev-1");
        assert_eq!(parsed.key_name(), Some("registration"));
        assert!(token
            .expose()
            .contains("sr=0ne00000001%2Fregistrations%2Fdev-1&"));
        parsed.verify(&[&key()], 1_000_000_000).unwrap();
    }

    #[test]
    fn expired_tokens_are_refused_even_with_the_right_key() {
        let token = SasToken::sign("hub.example/devices/d1", &key(), None, 1_000);
        let parsed = SignedSas::parse(token.expose()).unwrap();
        assert_eq!(
            parsed.verify(&[&key()], 1_000),
            Err(SasError::Expired { expiry: 1_000 })
        );
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let token = SasToken::sign(
            "hub.example",
            &SharedAccessKey::generate(32),
            Some("iothubowner"),
            u64::MAX / 2,
        );
        let parsed = SignedSas::parse(token.expose()).unwrap();
        assert_eq!(
            parsed.verify(&[&key()], 0),
            Err(SasError::SignatureMismatch)
        );
    }

    #[test]
    fn the_secondary_key_is_accepted_too() {
        let secondary = SharedAccessKey::generate(32);
        let token = SasToken::sign("hub.example", &secondary, None, 10);
        SignedSas::parse(token.expose())
            .unwrap()
            .verify(&[&key(), &secondary], 1)
            .unwrap();
    }

    #[test]
    fn lower_case_percent_encoding_and_lower_cased_resources_verify() {
        // Some SDKs lower-case the resource and the hex digits; the signature covers the
        // text as sent, so it verifies, and the resource still matches case-insensitively.
        let encoded = "hub.example%2fdevices%2fmydevice";
        let sig = key().sign(format!("{encoded}\n99").as_bytes());
        let text = format!(
            "SharedAccessSignature sr={encoded}&sig={}&se=99",
            encode_component(&sig)
        );
        let parsed = SignedSas::parse(&text).unwrap();
        parsed.verify(&[&key()], 1).unwrap();
        assert!(parsed.grants("HUB.example/devices/MyDevice"));
    }

    #[test]
    fn grants_covers_children_only_at_a_path_boundary() {
        let token = SasToken::sign("hub.example/devices/d1", &key(), None, 10);
        let parsed = SignedSas::parse(token.expose()).unwrap();
        assert!(parsed.grants("hub.example/devices/d1"));
        assert!(parsed.grants("hub.example/devices/d1/modules/m"));
        assert!(!parsed.grants("hub.example/devices/d10"));
        assert!(!parsed.grants("hub.example/devices/d2"));
        assert!(!parsed.grants("hub.example"));
    }

    #[test]
    fn malformed_tokens_give_a_reason_and_never_panic() {
        for text in [
            "",
            "Bearer abc",
            "SharedAccessSignature ",
            "SharedAccessSignature sr=a&se=1",
            "SharedAccessSignature sr=a&sig=%%%&se=1",
            "SharedAccessSignature sr=a&sig=abc&se=soon",
            "SharedAccessSignature sr=a&sr=b&sig=abc=&se=1",
            "SharedAccessSignature sr=%FF&sig=YQ==&se=1",
            "SharedAccessSignature novalue",
        ] {
            assert!(
                SignedSas::parse(text).is_err(),
                "{text:?} should be refused"
            );
        }
    }

    #[test]
    fn debug_output_never_contains_the_signature() {
        let token = SasToken::sign("hub.example", &key(), Some("iothubowner"), 10);
        let sig_part = token
            .expose()
            .split("sig=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_owned();
        assert!(!format!("{token:?}").contains(&sig_part));
        assert!(!format!("{token}").contains(&sig_part));
        let parsed = SignedSas::parse(token.expose()).unwrap();
        assert!(!format!("{parsed:?}").contains(&sig_part));
    }
}
