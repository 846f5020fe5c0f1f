//! Bounds on what the registry keeps of what devices report, so that every row it writes stays
//! inside Table Storage's limits (`crate::storage::limits`) whatever a device sends. IoT Hub lets a
//! device report up to 32 KiB of properties; a record keeps four of them, each cut to
//! [`REPORTED_VALUE_BYTES`], with the size it had kept beside it so the cut shows.
//!
//! Sizes are bytes of JSON as serde_json writes it (UTF-8): never fewer than the UTF-16 code
//! units Table Storage counts, so a budget in bytes is a safe budget in units.

use serde_json::{Map, Value};

/// Bytes of JSON kept of one reported property.
pub const REPORTED_VALUE_BYTES: usize = 4 * 1024;
/// Bytes of JSON a record may take: its `Data` property holds 32,768 UTF-16 units; the margin
/// leaves room for the members a write adds after the check (the update time).
pub const RECORD_BYTES: usize = 30 * 1024;
/// Bytes of JSON a dead letter may take (one `Data` property as well).
pub const DEAD_LETTER_BYTES: usize = 30 * 1024;
/// Below this a value is not worth cutting further: it is dropped instead.
const SMALLEST_CUT: usize = 8;
/// Ends a cut string, so a reader sees it was cut.
const ELLIPSIS: &str = "…";

/// The size of `value` as JSON, in bytes.
pub fn json_len(value: &Value) -> usize {
    serde_json::to_string(value).map_or(usize::MAX, |text| text.len())
}

/// What a record keeps of one reported value: the value, or a cut of it that fits
/// [`REPORTED_VALUE_BYTES`] together with the size it had. The same value always gives the
/// same result, so merging stays independent of order and repetition.
pub fn reported(value: &Value) -> (Value, Option<usize>) {
    let size = json_len(value);
    if size <= REPORTED_VALUE_BYTES {
        return (value.clone(), None);
    }
    let cut = shrink(value, REPORTED_VALUE_BYTES).unwrap_or_else(|| Value::String(String::new()));
    (cut, Some(size))
}

/// A value like `value` whose JSON takes at most `budget` bytes: members and elements that fit
/// are kept whole, the first that does not is cut in turn, strings are shortened and end in
/// "…". `None` when not even an empty value of its kind fits.
pub fn shrink(value: &Value, budget: usize) -> Option<Value> {
    if json_len(value) <= budget {
        return Some(value.clone());
    }
    match value {
        Value::String(text) => shrink_text(text, budget).map(Value::String),
        Value::Array(items) => {
            let mut kept = Vec::new();
            let mut used = 2;
            for item in items {
                let comma = usize::from(!kept.is_empty());
                let Some(room) = budget.checked_sub(used + comma) else {
                    break;
                };
                let whole = json_len(item) <= room;
                let Some(item) = shrink(item, room).filter(|_| whole || room >= SMALLEST_CUT)
                else {
                    break;
                };
                used += comma + json_len(&item);
                kept.push(item);
                if !whole {
                    break;
                }
            }
            (used <= budget).then_some(Value::Array(kept))
        }
        Value::Object(members) => {
            let mut kept = Map::new();
            let mut used = 2;
            let cost = |key: &str| json_len(&Value::String(key.to_owned())) + 1;
            // Whole members first (a small `state` beside a large `log` survives), then cuts of
            // the rest into what room is left.
            for (key, item) in members {
                let comma = usize::from(!kept.is_empty());
                let size = comma + cost(key) + json_len(item);
                if used + size <= budget {
                    used += size;
                    kept.insert(key.clone(), item.clone());
                }
            }
            for (key, item) in members {
                if kept.contains_key(key) {
                    continue;
                }
                let comma = usize::from(!kept.is_empty());
                let Some(room) = budget.checked_sub(used + comma + cost(key)) else {
                    continue;
                };
                if room < SMALLEST_CUT {
                    continue;
                }
                if let Some(item) = shrink(item, room) {
                    used += comma + cost(key) + json_len(&item);
                    kept.insert(key.clone(), item);
                }
            }
            (used <= budget).then_some(Value::Object(kept))
        }
        // Numbers, booleans and null are a few bytes: they fit or they are dropped.
        _ => None,
    }
}

/// The bytes serde_json writes for `c` inside a string.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The longest start of `text` that, with the ellipsis and quotes, fits `budget` bytes of JSON.
fn shrink_text(text: &str, budget: usize) -> Option<String> {
    let mut room = budget.checked_sub(2 + ELLIPSIS.len())?;
    let mut cut = String::new();
    for c in text.chars() {
        let size = escaped_len(c);
        if size > room {
            break;
        }
        room -= size;
        cut.push(c);
    }
    cut.push_str(ELLIPSIS);
    Some(cut)
}

/// `text` shortened to at most `bytes` bytes, at a character boundary.
pub fn prefix(text: &str, bytes: usize) -> &str {
    let mut end = text.len().min(bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn small_values_are_kept_as_they_are() {
        let value = json!({ "state": "ok", "n": [1, 2, 3] });
        assert_eq!(reported(&value), (value.clone(), None));
    }

    #[test]
    fn a_large_status_is_cut_to_the_budget_keeping_its_small_members() {
        let value = json!({ "log": "x\"\n".repeat(10_000), "state": "degraded", "codes": [1, 2] });
        let (cut, original) = reported(&value);
        assert_eq!(original, Some(json_len(&value)));
        let size = json_len(&cut);
        assert!(size <= REPORTED_VALUE_BYTES, "{size}");
        assert!(size > REPORTED_VALUE_BYTES - 16, "the room is used: {size}");
        assert_eq!(cut["state"], "degraded");
        assert_eq!(cut["codes"], json!([1, 2]));
        let log = cut["log"].as_str().unwrap();
        assert!(
            log.ends_with(ELLIPSIS) && log.starts_with("x\"\n"),
            "{log:.20}"
        );
        assert_eq!(
            reported(&value),
            (cut, original),
            "the same value, the same cut"
        );
    }

    #[test]
    fn every_kind_of_value_fits_any_budget_it_can() {
        let values = [
            json!("é😀\u{1}\\".repeat(500)),
            json!((0..2000).collect::<Vec<_>>()),
            json!([{ "a": "b".repeat(300) }, "c".repeat(300), [[["d".repeat(300)]]]]),
            json!({ "a": { "b": { "c": "x".repeat(3000), "d": true } }, "e": null }),
        ];
        for value in &values {
            for budget in [0, 1, 2, 5, 8, 9, 17, 64, 100, 1000, 4096] {
                if let Some(cut) = shrink(value, budget) {
                    assert!(json_len(&cut) <= budget, "{budget}: {cut}");
                } else {
                    assert!(budget < 8, "{budget} should fit something of {value:.30}");
                }
            }
        }
    }

    #[test]
    fn prefixes_end_at_character_boundaries() {
        assert_eq!(prefix("aé", 2), "a");
        assert_eq!(prefix("abc", 10), "abc");
    }
}
