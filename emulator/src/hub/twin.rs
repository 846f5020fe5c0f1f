//! Twin rules: JSON merge-patch (`null` deletes), IoT Hub's limits on names, depth and size, and
//! the JSON shapes of twins and device identities on the wire (api-version 2021-04-12).

use super::registry::{DeviceIdentity, PropertySet, Twin};
use serde_json::{json, Map, Value};

/// Largest desired or reported section, as serialized (IoT Hub: 32 KB each).
pub const MAX_SECTION_BYTES: usize = 32 * 1024;
/// Deepest nesting of objects in tags and properties (IoT Hub: 10 levels).
pub const MAX_DEPTH: usize = 10;

/// Why a twin change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwinError {
    /// The patch is not a JSON object.
    #[error("a twin patch must be a JSON object")]
    NotAnObject,
    /// A property name IoT Hub forbids.
    #[error(
        "property name {0:?} is not allowed: names must be non-empty and may not contain '.', \
        '$', '#' or spaces"
    )]
    BadName(String),
    /// Nested too deeply.
    #[error("twin objects may be nested at most {MAX_DEPTH} levels")]
    TooDeep,
    /// The result would be too large.
    #[error("the twin section would exceed {MAX_SECTION_BYTES} bytes")]
    TooLarge,
}

fn check_names(value: &Value, depth: usize) -> Result<(), TwinError> {
    if depth > MAX_DEPTH {
        return Err(TwinError::TooDeep);
    }
    if let Value::Object(map) = value {
        for (name, inner) in map {
            if name.is_empty() || name.contains(['.', '$', '#', ' ']) {
                return Err(TwinError::BadName(name.chars().take(64).collect()));
            }
            check_names(inner, depth + 1)?;
        }
    }
    Ok(())
}

/// Merges `patch` into `target` as RFC 7386 does (`json_patch::merge`: objects merge
/// recursively, `null` removes, anything else replaces), then drops every object the patch
/// reached that is left empty.
///
/// The dropping is the twin's rule beyond RFC 7386 (which would leave `{}`), kept here because
/// `json_patch` has no such option: a patch that removes an object's last member removes the
/// object too, so a twin never holds an object a patch has emptied.
pub fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    let mut document = Value::Object(std::mem::take(target));
    json_patch::merge(&mut document, &Value::Object(patch.clone()));
    if let Value::Object(merged) = document {
        *target = merged;
    }
    drop_emptied_objects(target, patch);
}

/// Removes, deepest first, the members of `target` that `patch` merged an object into and that
/// are now empty objects. Objects the patch did not reach are left as they are.
fn drop_emptied_objects(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (name, value) in patch {
        let Value::Object(inner) = value else {
            continue;
        };
        if let Some(Value::Object(existing)) = target.get_mut(name) {
            drop_emptied_objects(existing, inner);
            if existing.is_empty() {
                target.remove(name);
            }
        }
    }
}

/// Checks a patch for a section (tags, desired or reported) and returns it as an object.
/// `$`-prefixed members (`$version`, `$metadata`) that SDKs echo back are ignored.
pub fn validated_patch(patch: &Value) -> Result<Map<String, Value>, TwinError> {
    let Value::Object(map) = patch else {
        return Err(TwinError::NotAnObject);
    };
    let cleaned: Map<String, Value> = map
        .iter()
        .filter(|(name, _)| !name.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    check_names(&Value::Object(cleaned.clone()), 1)?;
    Ok(cleaned)
}

/// Applies a validated patch to a property set, bumping its version; refuses oversize results.
pub fn apply_to_set(set: &mut PropertySet, patch: &Map<String, Value>) -> Result<(), TwinError> {
    let mut values = set.values.clone();
    merge(&mut values, patch);
    if serde_json::to_vec(&values).map_or(0, |v| v.len()) > MAX_SECTION_BYTES {
        return Err(TwinError::TooLarge);
    }
    set.values = values;
    set.version += 1;
    set.last_updated = crate::azure_format::now();
    Ok(())
}

/// A property set as the service sees it: values plus `$metadata` and `$version`.
pub fn service_section(set: &PropertySet, desired: bool) -> Value {
    let mut values = set.values.clone();
    let mut metadata = Map::new();
    metadata.insert("$lastUpdated".into(), json!(set.last_updated));
    if desired {
        metadata.insert("$lastUpdatedVersion".into(), json!(set.version));
    }
    values.insert("$metadata".into(), Value::Object(metadata));
    values.insert("$version".into(), json!(set.version));
    Value::Object(values)
}

/// A property set as a device receives it over MQTT: values plus `$version`.
pub fn device_section(set: &PropertySet) -> Value {
    let mut values = set.values.clone();
    values.insert("$version".into(), json!(set.version));
    Value::Object(values)
}

/// Runtime facts about a device that the registry does not store.
#[derive(Debug, Clone, Default)]
pub struct Presence {
    /// Whether a session is open now.
    pub connected: bool,
    /// When the connection state last changed.
    pub connection_state_updated: Option<String>,
    /// When the device last sent anything.
    pub last_activity: Option<String>,
    /// Messages queued for the device.
    pub cloud_to_device_message_count: usize,
}

const NEVER: &str = "0001-01-01T00:00:00Z";

fn connection_state(presence: &Presence) -> &'static str {
    if presence.connected {
        "Connected"
    } else {
        "Disconnected"
    }
}

/// A device identity in the registry's shape (keys included, as IoT Hub returns them to a
/// registry-read policy).
pub fn device_json(device: &DeviceIdentity, presence: &Presence) -> Value {
    json!({
        "deviceId": device.device_id,
        "moduleId": null,
        "generationId": device.generation_id,
        "etag": device.etag,
        "connectionState": connection_state(presence),
        "status": device.status,
        "statusReason": device.status_reason,
        "connectionStateUpdatedTime": presence.connection_state_updated.as_deref().unwrap_or(NEVER),
        "statusUpdatedTime": device.last_updated,
        "lastActivityTime": presence.last_activity.as_deref().unwrap_or(NEVER),
        "cloudToDeviceMessageCount": presence.cloud_to_device_message_count,
        "authentication": {
            "symmetricKey": { "primaryKey": device.primary_key, "secondaryKey": device.secondary_key },
            "x509Thumbprint": { "primaryThumbprint": null, "secondaryThumbprint": null },
            "type": "sas"
        },
        "capabilities": { "iotEdge": device.iot_edge }
    })
}

/// A device twin in the service's shape.
pub fn twin_json(device: &DeviceIdentity, presence: &Presence) -> Value {
    let twin: &Twin = &device.twin;
    json!({
        "deviceId": device.device_id,
        "etag": twin.etag,
        "deviceEtag": device.etag,
        "status": device.status,
        "statusUpdateTime": device.last_updated,
        "connectionState": connection_state(presence),
        "lastActivityTime": presence.last_activity.as_deref().unwrap_or(NEVER),
        "cloudToDeviceMessageCount": presence.cloud_to_device_message_count,
        "authenticationType": "sas",
        "x509Thumbprint": { "primaryThumbprint": null, "secondaryThumbprint": null },
        "modelId": "",
        "version": twin.version,
        "tags": twin.tags,
        "properties": {
            "desired": service_section(&twin.desired, true),
            "reported": service_section(&twin.reported, false),
        },
        "capabilities": { "iotEdge": device.iot_edge },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn merge_patch_merges_objects_replaces_values_and_deletes_nulls() {
        let mut target = map(json!({ "a": 1, "b": { "x": 1, "y": 2 }, "c": "keep" }));
        merge(
            &mut target,
            &map(json!({ "a": 2, "b": { "x": null, "z": 3 }, "d": [1, 2] })),
        );
        assert_eq!(
            Value::Object(target.clone()),
            json!({ "a": 2, "b": { "y": 2, "z": 3 }, "c": "keep", "d": [1, 2] })
        );
        merge(&mut target, &map(json!({ "b": { "y": null, "z": null } })));
        assert!(!target.contains_key("b"), "an emptied object disappears");
    }

    #[test]
    fn only_objects_the_patch_empties_disappear() {
        let mut target = map(json!({ "kept": {}, "b": { "x": 1 } }));
        merge(&mut target, &map(json!({ "new": {}, "b": { "x": null } })));
        assert_eq!(Value::Object(target), json!({ "kept": {} }));
    }

    #[test]
    fn patches_with_forbidden_names_or_depth_are_refused() {
        assert!(matches!(
            validated_patch(&json!({ "a.b": 1 })),
            Err(TwinError::BadName(_))
        ));
        assert!(matches!(
            validated_patch(&json!({ "has space": 1 })),
            Err(TwinError::BadName(_))
        ));
        assert_eq!(validated_patch(&json!([1])), Err(TwinError::NotAnObject));
        let mut deep = json!(1);
        for _ in 0..12 {
            deep = json!({ "n": deep });
        }
        assert_eq!(validated_patch(&deep), Err(TwinError::TooDeep));
        assert_eq!(
            validated_patch(&json!({ "$version": 4, "ok": 1 })).unwrap(),
            map(json!({ "ok": 1 }))
        );
    }

    #[test]
    fn oversize_sections_are_refused_and_leave_the_set_unchanged() {
        let mut set = PropertySet::new(Map::new());
        let big = map(json!({ "blob": "x".repeat(MAX_SECTION_BYTES) }));
        assert_eq!(apply_to_set(&mut set, &big), Err(TwinError::TooLarge));
        assert_eq!(set.version, 1);
        apply_to_set(&mut set, &map(json!({ "small": true }))).unwrap();
        assert_eq!(set.version, 2);
    }

    mod properties {
        //! Twin patches from any JSON: validation never panics, merging is RFC 7386's (null
        //! removes, scalars replace, applying a patch twice changes nothing more). A fixed seed
        //! keeps every run the same.
        use super::super::*;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, RngSeed};

        fn config() -> Config {
            Config {
                cases: 256,
                failure_persistence: None,
                rng_seed: RngSeed::Fixed(0x5eed_0013),
                ..Config::default()
            }
        }

        /// Any JSON value, names drawn to collide often and to break IoT Hub's rules sometimes.
        pub(crate) fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                "[a-z0-9 ]{0,8}".prop_map(Value::String),
            ];
            leaf.prop_recursive(12, 64, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                    prop::collection::btree_map("[a-c$.# ]{0,2}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Every leaf of `patch` with its path: (path, value).
        fn leaves(
            patch: &Map<String, Value>,
            path: &mut Vec<String>,
            out: &mut Vec<(Vec<String>, Value)>,
        ) {
            for (name, value) in patch {
                path.push(name.clone());
                match value {
                    Value::Object(inner) if !inner.is_empty() => leaves(inner, path, out),
                    Value::Object(_) => {}
                    other => out.push((path.clone(), other.clone())),
                }
                path.pop();
            }
        }

        fn at<'a>(map: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
            let (first, rest) = path.split_first()?;
            let value = map.get(first)?;
            if rest.is_empty() {
                Some(value)
            } else {
                at(value.as_object()?, rest)
            }
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn validation_never_panics_and_accepts_only_objects_with_allowed_names(patch in json_value()) {
                match validated_patch(&patch) {
                    Ok(cleaned) => {
                        prop_assert!(patch.is_object());
                        prop_assert!(cleaned.keys().all(|k| !k.starts_with('$')));
                        let mut found = Vec::new();
                        leaves(&cleaned, &mut Vec::new(), &mut found);
                        for (path, _) in found {
                            prop_assert!(path.len() <= MAX_DEPTH);
                            prop_assert!(path.iter().all(|n| !n.is_empty() && !n.contains(['.', '$', '#', ' '])));
                        }
                    }
                    Err(TwinError::NotAnObject) => prop_assert!(!patch.is_object()),
                    Err(_) => prop_assert!(patch.is_object()),
                }
            }

            #[test]
            fn a_merge_sets_every_leaf_removes_every_null_and_is_idempotent(
                target in json_value(), patch in json_value(),
            ) {
                let (Value::Object(target), Value::Object(patch)) = (target, patch) else {
                    return Ok(());
                };
                let mut once = target.clone();
                merge(&mut once, &patch);
                let mut twice = once.clone();
                merge(&mut twice, &patch);
                prop_assert_eq!(&twice, &once);
                let mut found = Vec::new();
                leaves(&patch, &mut Vec::new(), &mut found);
                for (path, value) in found {
                    if value.is_null() {
                        prop_assert_eq!(at(&once, &path), None);
                    } else {
                        prop_assert_eq!(at(&once, &path), Some(&value));
                    }
                }
            }
        }
    }
}
