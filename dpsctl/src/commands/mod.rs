//! One module per group of verbs. Each takes the [`Context`] and its own arguments.
//!
//! - [`enrollments`]: `enroll`, `enable`, `disable`, `delete`.
//! - [`import`]: `import`, with `--dry-run`.
//! - [`list`]: `list enrollments|devices`.
//! - [`devices`]: `show`, `desired`, `command`.
//! - [`code`]: `code`, the provisioning code and its QR code.

pub mod code;
pub mod devices;
pub mod enrollments;
pub mod import;
pub mod list;

use crate::error::{Error, Result};
use serde_json::{Map, Value};

/// A value given on the command line: JSON when it parses as JSON, else the text itself.
pub fn json_or_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// `NAME=VALUE` split at the first `=`.
pub fn pair(text: &str) -> Result<(String, &str)> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => Ok((name.trim().to_owned(), value)),
        _ => Err(Error::Usage(format!(
            "{text:?} is not NAME=VALUE (for example interval=30)"
        ))),
    }
}

/// `NAME=VALUE` pairs as a JSON object, values read by [`json_or_text`].
pub fn json_pairs(pairs: &[String]) -> Result<Map<String, Value>> {
    pairs
        .iter()
        .map(|text| pair(text).map(|(name, value)| (name, json_or_text(value))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_json_when_they_parse_and_text_otherwise() {
        let pairs = [
            "a=30",
            "b=eco",
            "c={\"x\":1}",
            "d=null",
            "e=\"30\"",
            "f=",
            "g=x=y",
        ]
        .map(str::to_owned);
        assert_eq!(
            Value::Object(json_pairs(&pairs).unwrap()),
            json!({ "a": 30, "b": "eco", "c": { "x": 1 }, "d": null, "e": "30", "f": "", "g": "x=y" })
        );
        assert!(json_pairs(&["novalue".to_owned()]).is_err());
        assert!(json_pairs(&["=1".to_owned()]).is_err());
    }
}
