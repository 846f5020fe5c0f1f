//! Etags, identifiers and timestamps in the forms Azure uses.

use time::OffsetDateTime;

/// Now as Azure writes it: ISO 8601 UTC with seven fractional digits, e.g.
/// `2022-07-15T21:02:29.5922255Z`.
pub fn now() -> String {
    format_time(OffsetDateTime::now_utc())
}

/// Formats a UTC time the way [`now`] does.
pub fn format_time(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond() / 100
    )
}

/// A fresh DPS etag in the live service's form: the base64 of a quoted GUID, e.g.
/// `IjBhMDBiNzQyLTAwMDAtMDgwMC0wMDAwLTY0NjgwMWY1MDAwMCI=` for
/// `"0a00b742-0000-0800-0000-646801f50000"` (Azure/azure-sdk-for-python
/// sdk/iothub/azure-iot-deviceprovisioning/tests/recordings/).
pub fn etag() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\"{}\"", uuid::Uuid::new_v4()))
}

/// A fresh IoT Hub etag: plain base64 (`AAAAAAAAAAE=`), without the quotes DPS embeds.
pub fn hub_etag() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(&uuid::Uuid::new_v4().as_bytes()[..8])
}

/// Whether an `If-Match` value matches a record's etag: `*` matches anything; quotes and a weak
/// prefix are ignored, since clients pass etags back in either form (azure-iothub even quotes
/// the star: `"*"`).
pub fn etag_matches(if_match: &str, etag: &str) -> bool {
    fn bare(value: &str) -> &str {
        let value = value.trim();
        let value = value.strip_prefix("W/").unwrap_or(value);
        value.trim_matches('"')
    }
    bare(if_match) == "*" || bare(if_match) == bare(etag)
}

/// An identifier for an error report.
pub fn tracking_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_seven_fractional_digits() {
        let t = time::macros::datetime!(2022-07-15 21:02:29.592225512 UTC);
        assert_eq!(format_time(t), "2022-07-15T21:02:29.5922255Z");
    }

    #[test]
    fn etags_match_with_or_without_quotes() {
        let tag = etag();
        assert!(etag_matches(&tag, &tag));
        assert!(etag_matches(tag.trim_matches('"'), &tag));
        assert!(etag_matches("*", &tag));
        assert!(etag_matches("\"*\"", &tag));
        let hub = hub_etag();
        assert!(etag_matches(&format!("\"{hub}\""), &hub));
        assert!(!hub.contains('"'));
        assert!(!etag_matches(&etag(), &tag));
    }
}
