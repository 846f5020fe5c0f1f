//! The enrollment as a client sends it (`POST /api/enrollments`, one import row) and the rules
//! it must keep that need nothing but the request itself: identifiers, text lengths, the asset's
//! and the initial twin's size and names. Whether a named hub is linked is the handler's to say.

use crate::ids::{CustomerId, DeviceId, HubName, InvalidId, RegistrationId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Limits that keep a record inside one Table Storage property (64 KiB of UTF-16) and an
/// enrollment inside DPS's.
const MAX_TWIN_BYTES: usize = 16 * 1024;
const MAX_ASSET_BYTES: usize = 8 * 1024;
const MAX_TEXT: usize = 256;
const MAX_ATTRIBUTES: usize = 64;

/// Why a request was refused. The message says what to fix and is safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<InvalidId> for Invalid {
    fn from(error: InvalidId) -> Self {
        Self(error.0)
    }
}

fn invalid(message: impl Into<String>) -> Invalid {
    Invalid(message.into())
}

/// The customer the device was sold to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    /// The CRM's customer id.
    pub id: CustomerId,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What the device is, as the CRM knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Asset {
    /// Serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// Model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Anything else the CRM sends, as strings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// The twin a device starts with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct InitialTwin {
    /// Twin tags.
    #[serde(default)]
    pub tags: Map<String, Value>,
    /// Desired properties.
    #[serde(default)]
    pub desired_properties: Map<String, Value>,
}

/// The customer as the client sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomerInput {
    /// CRM customer id.
    pub id: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /api/enrollments`: one device to enroll.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewEnrollment {
    /// DPS registration id.
    pub registration_id: String,
    /// IoT Hub device id (default: the registration id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Owner.
    pub customer: CustomerInput,
    /// Serial number, model, other CRM fields.
    #[serde(default)]
    pub asset: Asset,
    /// Twin tags and desired properties to start with.
    #[serde(default)]
    pub initial_twin: InitialTwin,
    /// Whether the device may register (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// A hub to pin the device to (default: DPS's hashed allocation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_hub: Option<String>,
}

/// A [`NewEnrollment`] that keeps every rule the request alone can be held to.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedEnrollment {
    /// DPS registration id.
    pub registration_id: RegistrationId,
    /// IoT Hub device id (the registration id unless one was given).
    pub device_id: DeviceId,
    /// Owner.
    pub customer: Customer,
    /// Asset, trimmed.
    pub asset: Asset,
    /// Initial twin.
    pub initial_twin: InitialTwin,
    /// Whether the device may register.
    pub enabled: bool,
    /// The hub asked for, as a well-formed host name (not yet known to be linked).
    pub iot_hub: Option<HubName>,
}

fn text_field(name: &str, value: Option<String>) -> Result<Option<String>, Invalid> {
    match value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) {
        Some(v) if v.chars().count() > MAX_TEXT => Err(invalid(format!(
            "{name} is longer than {MAX_TEXT} characters"
        ))),
        Some(v) if v.chars().any(char::is_control) => {
            Err(invalid(format!("{name} contains control characters")))
        }
        other => Ok(other),
    }
}

/// The customer, checked.
pub fn customer_of(input: CustomerInput) -> Result<Customer, Invalid> {
    Ok(Customer {
        id: CustomerId::parse(input.id.trim())?,
        name: text_field("customer.name", input.name)?,
    })
}

/// The asset, trimmed and checked against the size and name rules.
pub fn check_asset(asset: Asset) -> Result<Asset, Invalid> {
    if asset.attributes.len() > MAX_ATTRIBUTES {
        return Err(invalid(format!(
            "asset.attributes has more than {MAX_ATTRIBUTES} entries"
        )));
    }
    let mut attributes = BTreeMap::new();
    for (name, value) in asset.attributes {
        let name = name.trim().to_owned();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(invalid(format!(
                "asset attribute name {name:?} must be 1 to 64 printable characters"
            )));
        }
        if value.chars().count() > 1024 {
            return Err(invalid(format!(
                "asset attribute {name:?} is longer than 1024 characters"
            )));
        }
        attributes.insert(name, value);
    }
    let asset = Asset {
        serial_number: text_field("asset.serialNumber", asset.serial_number)?,
        model: text_field("asset.model", asset.model)?,
        attributes,
    };
    let size = serde_json::to_string(&asset).map_or(0, |s| s.len());
    if size > MAX_ASSET_BYTES {
        return Err(invalid(format!(
            "asset is {size} bytes as JSON; the limit is {MAX_ASSET_BYTES}"
        )));
    }
    Ok(asset)
}

/// Whether the initial twin fits and names its properties as IoT Hub allows.
pub fn check_twin(twin: &InitialTwin) -> Result<(), Invalid> {
    let size = serde_json::to_string(twin).map_or(0, |s| s.len());
    if size > MAX_TWIN_BYTES {
        return Err(invalid(format!(
            "initialTwin is {size} bytes as JSON; the limit is {MAX_TWIN_BYTES}"
        )));
    }
    for (name, map) in [
        ("tags", &twin.tags),
        ("desiredProperties", &twin.desired_properties),
    ] {
        // IoT Hub reserves names starting with `$` and refuses some characters in property names.
        if let Some(bad) = map
            .keys()
            .find(|k| k.is_empty() || k.starts_with('$') || k.contains(['.', ' ']))
        {
            return Err(invalid(format!(
                "initialTwin.{name} has an invalid name {bad:?} (no '$' start, '.' or spaces)"
            )));
        }
    }
    Ok(())
}

/// A hub name as given: empty means none; otherwise a well-formed host name.
pub fn hub_of(hub: Option<String>) -> Result<Option<HubName>, Invalid> {
    match hub.map(|h| h.trim().to_owned()).filter(|h| !h.is_empty()) {
        None => Ok(None),
        Some(hub) => Ok(Some(HubName::parse(&hub)?)),
    }
}

impl NewEnrollment {
    /// Checks the request against every rule it can be held to without the registry.
    pub fn check(self) -> Result<CheckedEnrollment, Invalid> {
        let registration_id = RegistrationId::parse(self.registration_id.trim())?;
        let device_id = match self
            .device_id
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty())
        {
            Some(d) => DeviceId::parse(&d)?,
            None => DeviceId::parse(registration_id.as_str())?,
        };
        check_twin(&self.initial_twin)?;
        Ok(CheckedEnrollment {
            registration_id,
            device_id,
            customer: customer_of(self.customer)?,
            asset: check_asset(self.asset)?,
            initial_twin: self.initial_twin,
            enabled: self.enabled.unwrap_or(true),
            iot_hub: hub_of(self.iot_hub)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(value: Value) -> NewEnrollment {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_request_is_checked_into_typed_parts_with_the_registration_id_as_device_id() {
        let checked = request(json!({
            "registrationId": " therm-1 ", "customer": { "id": "contoso", "name": " Contoso " },
            "asset": { "serialNumber": "SN-1" }, "iotHub": "Hub-1.azure-devices.net",
        }))
        .check()
        .unwrap();
        assert_eq!(checked.registration_id.as_str(), "therm-1");
        assert_eq!(checked.device_id.as_str(), "therm-1");
        assert_eq!(checked.customer.name.as_deref(), Some("Contoso"));
        assert!(checked.enabled);
        assert_eq!(checked.iot_hub.unwrap().as_str(), "hub-1.azure-devices.net");
    }

    #[test]
    fn each_rule_the_request_breaks_is_named() {
        let cases = [
            (
                json!({ "registrationId": "a b", "customer": { "id": "c" } }),
                "registrationId",
            ),
            (
                json!({ "registrationId": "a", "deviceId": "a/b", "customer": { "id": "c" } }),
                "deviceId",
            ),
            (
                json!({ "registrationId": "a", "customer": { "id": "c#" } }),
                "customer id",
            ),
            (
                json!({ "registrationId": "a", "customer": { "id": "c" }, "asset": { "model": "x".repeat(300) } }),
                "asset.model",
            ),
            (
                json!({ "registrationId": "a", "customer": { "id": "c" }, "initialTwin": { "tags": { "$x": 1 } } }),
                "initialTwin.tags",
            ),
            (
                json!({ "registrationId": "a", "customer": { "id": "c" }, "iotHub": "hub/x" }),
                "IoT hub host name",
            ),
        ];
        for (body, named) in cases {
            let error = request(body).check().unwrap_err();
            assert!(error.0.contains(named), "{error} should name {named}");
        }
    }
}
