//! IoT Hub's events about a device, as the registry reads them: lifecycle, twin changes,
//! connection state and telemetry. Parsed from the Functions host's invocation by
//! `crate::api::functions`; applied to records by [`super::live`].

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::fmt;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A point in time as Azure wrote it, comparable. Serialized as the original text.
#[derive(Debug, Clone)]
pub struct Stamp {
    text: String,
    nanos: i128,
}

impl Stamp {
    /// Parses RFC 3339, or the offset-less form .NET writes for UTC (`2026-11-26T13:47:12.893`).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let parsed = OffsetDateTime::parse(text, &Rfc3339)
            .or_else(|_| OffsetDateTime::parse(&format!("{text}Z"), &Rfc3339))
            .ok()?;
        Some(Self {
            text: text.to_owned(),
            nanos: parsed.unix_timestamp_nanos(),
        })
    }

    /// Now.
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            text: now.format(&Rfc3339).unwrap_or_default(),
            nanos: now.unix_timestamp_nanos(),
        }
    }

    /// The start of its minute, in UTC.
    pub fn floor_minute(&self) -> Self {
        let minute = 60_000_000_000_i128;
        let nanos = self.nanos.div_euclid(minute) * minute;
        let text = OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| self.text.clone());
        Self { text, nanos }
    }

    /// Nanoseconds since the epoch.
    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    /// As written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for Stamp {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}
impl Eq for Stamp {}
impl PartialOrd for Stamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Stamp {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Stamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Stamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Stamp::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a time")))
    }
}

/// Where an event sits in its hub's stream. The same on every redelivery of the event, so it
/// names the event (history rows, notifications) and orders events of one partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventKey {
    /// The stream (the hub's name).
    pub stream: String,
    /// Partition id.
    pub partition: String,
    /// Sequence number in the partition.
    pub sequence: i64,
}

impl fmt::Display for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}~{}~{}", self.stream, self.partition, self.sequence)
    }
}

/// A device-to-cloud sequence number of a connection event: hex, compared as a number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnectionSequence(String);

impl ConnectionSequence {
    /// Parses a hex string (any length; Azure's are 64 digits).
    pub fn parse(text: &str) -> Option<Self> {
        let trimmed = text.trim();
        if trimmed.is_empty() || !trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let digits = trimmed.trim_start_matches('0').to_ascii_uppercase();
        Some(Self(if digits.is_empty() {
            "0".into()
        } else {
            digits
        }))
    }

    /// The smallest sequence: any real event is newer.
    pub fn zero() -> Self {
        Self("0".into())
    }

    /// The next number: newer than this one, older than any later real event.
    pub fn successor(&self) -> Self {
        let mut digits: Vec<u8> = self.0.bytes().collect();
        for digit in digits.iter_mut().rev() {
            match *digit {
                b'F' => *digit = b'0',
                b'9' => {
                    *digit = b'A';
                    return Self(String::from_utf8_lossy(&digits).into_owned());
                }
                other => {
                    *digit = other + 1;
                    return Self(String::from_utf8_lossy(&digits).into_owned());
                }
            }
        }
        Self(format!("1{}", String::from_utf8_lossy(&digits)))
    }
}

impl PartialOrd for ConnectionSequence {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ConnectionSequence {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.cmp(&other.0))
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The device identity was created on the hub (DPS assignment or the service API); the
    /// body is the twin, so its reported properties come along.
    Created {
        /// The twin's reported properties and their version, if any.
        reported: Option<(Map<String, Value>, u64)>,
    },
    /// The identity was deleted from the hub.
    Deleted,
    /// The twin changed.
    Twin {
        /// Reported properties in the change and the reported version after it.
        reported: Option<(Map<String, Value>, u64)>,
        /// The whole reported section was replaced (absent keys are removed).
        replaced: bool,
    },
    /// The device connected.
    Connected(ConnectionSequence),
    /// The device disconnected.
    Disconnected(ConnectionSequence),
    /// The device sent telemetry.
    Telemetry,
}

/// One event, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct HubEvent {
    /// Its place in the stream.
    pub key: EventKey,
    /// The device.
    pub device_id: String,
    /// The hub's host name, as DPS names hubs.
    pub hub: String,
    /// When it happened (operationTimestamp; the enqueued time for telemetry).
    pub at: Stamp,
    /// When the hub enqueued it.
    pub enqueued: Stamp,
    /// What happened.
    pub change: Change,
}

/// The reported properties the registry keeps: provisioning status, firmware, the last status
/// report, the desired-properties version the device has applied, and the device's answer to a
/// key rotation (`super::rotation`). The rest of the twin stays in the hub.
pub const KEPT_REPORTED: &[&str] = &[
    "provisioning",
    "firmware",
    "status",
    "acknowledgedDesiredVersion",
    super::rotation::REPORTED_PROPERTY,
];

/// Reads `properties.reported` of a twin (or twin change) body: the kept keys and `$version`.
pub fn reported_section(body: &Value) -> Option<(Map<String, Value>, u64)> {
    let reported = body.pointer("/properties/reported")?.as_object()?;
    let version = reported.get("$version").and_then(Value::as_u64)?;
    let kept = reported
        .iter()
        .filter(|(k, _)| KEPT_REPORTED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some((kept, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_compare_as_times_whatever_their_form() {
        let a = Stamp::parse("2026-11-26T13:47:12Z").unwrap();
        let b = Stamp::parse("2026-11-26T13:47:12.5Z").unwrap();
        let c = Stamp::parse("2026-11-26T13:47:12.9").unwrap();
        assert!(a < b && b < c);
        assert!(Stamp::parse("yesterday").is_none());
    }

    #[test]
    fn connection_sequences_compare_as_numbers() {
        let small = ConnectionSequence::parse(
            "000000000000000001D4132452F67CE200000002000000000000000000000001",
        )
        .unwrap();
        let large = ConnectionSequence::parse(
            "000000000000000001D4132452F67CE200000002000000000000000000000002",
        )
        .unwrap();
        assert!(small < large);
        assert!(
            ConnectionSequence::parse("FF").unwrap() > ConnectionSequence::parse("0000F0").unwrap()
        );
        assert!(ConnectionSequence::parse("xyz").is_none());
        for (n, next) in [("0", "1"), ("9", "A"), ("1F", "20"), ("FF", "100")] {
            assert_eq!(
                ConnectionSequence::parse(n).unwrap().successor(),
                ConnectionSequence::parse(next).unwrap()
            );
        }
    }

    mod properties {
        //! Event fields from any text: times and connection sequence numbers parse without a
        //! panic and compare as the values they write. A fixed seed keeps every run the same.
        use super::super::*;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, RngSeed};

        fn config() -> Config {
            Config {
                cases: 256,
                failure_persistence: None,
                rng_seed: RngSeed::Fixed(0x5eed_0014),
                ..Config::default()
            }
        }

        /// Nanoseconds within the years 1 to 9999, the range RFC 3339 can write.
        fn nanos() -> impl Strategy<Value = i128> {
            -62_135_596_800_000_000_000i128..253_402_300_799_999_999_999i128
        }

        fn written(nanos: i128) -> String {
            OffsetDateTime::from_unix_timestamp_nanos(nanos)
                .unwrap()
                .format(&Rfc3339)
                .unwrap()
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn stamps_parse_any_text_without_a_panic(text in ".{0,40}", digits in "[0-9T:.Z+-]{0,35}") {
                for text in [text, digits] {
                    if let Some(stamp) = Stamp::parse(&text) {
                        let _ = stamp.floor_minute();
                        prop_assert_eq!(stamp.as_str(), text.trim());
                    }
                }
            }

            #[test]
            fn stamps_read_back_the_instant_written_and_order_as_times(a in nanos(), b in nanos()) {
                let (sa, sb) = (Stamp::parse(&written(a)).unwrap(), Stamp::parse(&written(b)).unwrap());
                prop_assert_eq!(sa.nanos(), a);
                prop_assert_eq!(sa.cmp(&sb), a.cmp(&b));
                // .NET's offset-less UTC form reads as the same instant.
                let bare = written(a);
                let bare = bare.trim_end_matches('Z');
                prop_assert_eq!(Stamp::parse(bare).unwrap(), sa.clone());
                let floor = sa.floor_minute();
                prop_assert!(floor <= sa && sa.nanos() - floor.nanos() < 60_000_000_000);
            }

            #[test]
            fn connection_sequences_parse_any_text_and_compare_as_numbers(
                text in ".{0,70}", a in any::<u128>(), b in any::<u128>(), zeros in 0usize..5,
            ) {
                let _ = ConnectionSequence::parse(&text);
                let pad = "0".repeat(zeros);
                let sa = ConnectionSequence::parse(&format!("{pad}{a:x}")).unwrap();
                let sb = ConnectionSequence::parse(&format!("{b:X}")).unwrap();
                prop_assert_eq!(sa.cmp(&sb), a.cmp(&b));
                prop_assert!(sa.successor() > sa);
                if let Some(next) = a.checked_add(1) {
                    prop_assert_eq!(sa.successor(), ConnectionSequence::parse(&format!("{next:x}")).unwrap());
                }
                prop_assert!(ConnectionSequence::zero() <= sa);
            }
        }
    }
}
