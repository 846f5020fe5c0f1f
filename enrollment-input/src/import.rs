//! Bulk enrollment files: a CRM export as CSV (header row) or a JSON array of enrollments, read
//! into rows, each with its row number and its enrollment or the reason it is unusable; the
//! check for ids a file repeats; and the per-row results an import answers. The handler parses
//! import bodies with this, and `dpsctl import --dry-run` checks a file with the same code.

use crate::ids::{DeviceId, RegistrationId};
use crate::request::{CustomerInput, Invalid, NewEnrollment};
use crate::{Asset, InitialTwin};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;

/// Rows one import request may carry.
pub const MAX_ROWS: usize = 10_000;
/// Bytes one import request's body may hold.
pub const MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// One row as parsed: where it came from and the enrollment it asks for, or why it is unusable.
#[derive(Debug, Clone)]
pub struct ImportRow {
    /// 1-based row number (CSV: data rows after the header; JSON: array position).
    pub row: usize,
    /// The registration id, when the row has one.
    pub registration_id: Option<String>,
    /// The request, or the reason it is invalid.
    pub input: Result<NewEnrollment, String>,
}

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Enrolled.
    Created,
    /// Already enrolled (in the registry, or in DPS without a record).
    Exists,
    /// The row breaks a rule; the message says which.
    Invalid,
    /// A service failed; retrying the import will finish it.
    Failed,
}

impl Outcome {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Exists => "exists",
            Outcome::Invalid => "invalid",
            Outcome::Failed => "failed",
        }
    }
}

/// One row's result, as the import answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RowResult {
    /// The row number.
    pub row: usize,
    /// Its registration id, if it had one.
    pub registration_id: Option<String>,
    /// What happened.
    #[serde(rename = "result")]
    pub outcome: Outcome,
    /// Why, for anything but `created`.
    pub message: Option<String>,
}

/// Columns with a fixed meaning, matched ignoring case, spaces, `_` and `-`.
fn column_role(header: &str) -> Option<&'static str> {
    let normalized: String = header
        .chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-'))
        .collect::<String>()
        .to_ascii_lowercase();
    Some(match normalized.as_str() {
        "registrationid" => "registrationId",
        "deviceid" => "deviceId",
        "customerid" => "customerId",
        "customername" => "customerName",
        "serialnumber" | "serial" => "serialNumber",
        "model" => "model",
        "enabled" => "enabled",
        "iothub" | "hub" => "iotHub",
        _ => return None,
    })
}

/// A CSV cell for a twin value: numbers and booleans written canonically become JSON values,
/// everything else stays text (so `00123` remains a string).
fn twin_value(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(value @ (Value::Number(_) | Value::Bool(_))) if value.to_string().as_str() == text => {
            value
        }
        _ => Value::String(text.to_owned()),
    }
}

fn parse_enabled(text: &str) -> Result<Option<bool>, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "true" | "yes" | "1" | "enabled" => Ok(Some(true)),
        "false" | "no" | "0" | "disabled" => Ok(Some(false)),
        other => Err(format!("enabled must be true or false, not {other:?}")),
    }
}

/// Parses a CSV export with a header row, as one import request: at most [`MAX_ROWS`] rows.
/// Needs `registrationId` and `customerId` columns; `tag.<name>` and `desired.<name>` columns
/// fill the initial twin; unknown columns become asset attributes.
pub fn parse_csv(body: &[u8]) -> Result<Vec<ImportRow>, Invalid> {
    csv_rows(body, MAX_ROWS)
}

/// Parses a whole CSV file, of any number of rows, as [`parse_csv`] reads a request.
pub fn parse_csv_file(body: &[u8]) -> Result<Vec<ImportRow>, Invalid> {
    csv_rows(body, usize::MAX)
}

fn csv_rows(body: &[u8], max_rows: usize) -> Result<Vec<ImportRow>, Invalid> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(body);
    let headers = reader
        .headers()
        .map_err(|e| Invalid(format!("the CSV header row is unreadable: {e}")))?
        .clone();
    let roles: Vec<Option<&str>> = headers.iter().map(column_role).collect();
    for required in ["registrationId", "customerId"] {
        if !roles.contains(&Some(required)) {
            return Err(Invalid(format!(
                "the CSV header row has no {required} column"
            )));
        }
    }
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let row = index + 1;
        if row > max_rows {
            return Err(Invalid(format!(
                "an import holds at most {MAX_ROWS} rows; split the file"
            )));
        }
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                rows.push(ImportRow {
                    row,
                    registration_id: None,
                    input: Err(format!("unreadable CSV row: {e}")),
                });
                continue;
            }
        };
        if record.iter().all(str::is_empty) {
            continue;
        }
        let mut fields: HashMap<&str, &str> = HashMap::new();
        let mut asset = Asset::default();
        let mut twin = InitialTwin::default();
        for (header, (role, value)) in headers.iter().zip(roles.iter().zip(record.iter())) {
            if value.is_empty() {
                continue;
            }
            match role {
                Some(role) => {
                    fields.insert(role, value);
                }
                None => {
                    if let Some(name) = header.strip_prefix("tag.") {
                        twin.tags.insert(name.to_owned(), twin_value(value));
                    } else if let Some(name) = header.strip_prefix("desired.") {
                        twin.desired_properties
                            .insert(name.to_owned(), twin_value(value));
                    } else {
                        asset.attributes.insert(header.to_owned(), value.to_owned());
                    }
                }
            }
        }
        let registration_id = fields.get("registrationId").map(|s| (*s).to_owned());
        let input = (|| {
            let registration_id = registration_id.clone().ok_or("registrationId is empty")?;
            let customer_id = fields.get("customerId").ok_or("customerId is empty")?;
            asset.serial_number = fields.get("serialNumber").map(|s| (*s).to_owned());
            asset.model = fields.get("model").map(|s| (*s).to_owned());
            Ok::<_, String>(NewEnrollment {
                registration_id,
                device_id: fields.get("deviceId").map(|s| (*s).to_owned()),
                customer: CustomerInput {
                    id: (*customer_id).to_owned(),
                    name: fields.get("customerName").map(|s| (*s).to_owned()),
                },
                asset: asset.clone(),
                initial_twin: twin.clone(),
                enabled: parse_enabled(fields.get("enabled").copied().unwrap_or(""))?,
                iot_hub: fields.get("iotHub").map(|s| (*s).to_owned()),
            })
        })();
        rows.push(ImportRow {
            row,
            registration_id,
            input,
        });
    }
    Ok(rows)
}

/// Parses a JSON array of enrollments (the shape `POST /api/enrollments` takes), as one import
/// request: at most [`MAX_ROWS`] items.
pub fn parse_json(body: &[u8]) -> Result<Vec<ImportRow>, Invalid> {
    let items = json_items(body)?;
    if items.len() > MAX_ROWS {
        return Err(Invalid(format!(
            "an import holds at most {MAX_ROWS} rows; split it"
        )));
    }
    Ok(json_rows(items))
}

/// The items of a JSON array of enrollments, of any length (a file to split into requests).
pub fn json_items(body: &[u8]) -> Result<Vec<Value>, Invalid> {
    serde_json::from_slice(body)
        .map_err(|e| Invalid(format!("the body is not a JSON array of enrollments: {e}")))
}

/// One row per item: its position, its registration id if it names one, its enrollment or why
/// it is not one.
pub fn json_rows(items: Vec<Value>) -> Vec<ImportRow> {
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| ImportRow {
            row: index + 1,
            registration_id: item
                .get("registrationId")
                .and_then(Value::as_str)
                .map(str::to_owned),
            input: serde_json::from_value::<NewEnrollment>(item).map_err(|e| e.to_string()),
        })
        .collect()
}

/// Finds ids a file repeats: the second row with a registration id (compared as DPS does,
/// ignoring case) or a device id would overwrite the first, so it is refused.
#[derive(Debug, Default)]
pub struct Repeats {
    registrations: HashMap<String, usize>,
    devices: HashMap<String, usize>,
}

impl Repeats {
    /// Notes the row's ids; refuses them, naming the earlier row, when one was seen before.
    pub fn check(
        &mut self,
        row: usize,
        registration_id: &RegistrationId,
        device_id: &DeviceId,
    ) -> Result<(), String> {
        if let Some(first) = self.registrations.get(&registration_id.key()) {
            return Err(format!("registrationId repeats row {first}"));
        }
        if let Some(first) = self.devices.get(device_id.as_str()) {
            return Err(format!("deviceId repeats row {first}"));
        }
        self.registrations.insert(registration_id.key(), row);
        self.devices.insert(device_id.as_str().to_owned(), row);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crm_export_maps_known_columns_and_keeps_the_rest_as_attributes() {
        let csv = "Registration ID,customer_id,Customer Name,Serial Number,Model,enabled,tag.site,desired.interval,Warranty\n\
                   dev-1,contoso,Contoso,SN1,T-100,no,berlin,30,2029\n\
                   ,contoso,,,,,,,\n\
                   dev-3,fabrikam,,,,maybe,,,\n";
        let rows = parse_csv(csv.as_bytes()).unwrap();
        assert_eq!(rows.len(), 3);
        let first = rows[0].input.as_ref().unwrap();
        assert_eq!(first.registration_id, "dev-1");
        assert_eq!(first.customer.name.as_deref(), Some("Contoso"));
        assert_eq!(first.asset.serial_number.as_deref(), Some("SN1"));
        assert_eq!(
            first.asset.attributes.get("Warranty").map(String::as_str),
            Some("2029")
        );
        assert_eq!(first.enabled, Some(false));
        assert_eq!(first.initial_twin.tags["site"], "berlin");
        assert_eq!(first.initial_twin.desired_properties["interval"], 30);
        assert!(rows[1]
            .input
            .as_ref()
            .unwrap_err()
            .contains("registrationId"));
        assert!(rows[2].input.as_ref().unwrap_err().contains("enabled"));
    }

    #[test]
    fn a_repeated_id_names_the_first_row_that_had_it() {
        let mut repeats = Repeats::default();
        let id = |text| RegistrationId::parse(text).unwrap();
        let device = |text| DeviceId::parse(text).unwrap();
        assert!(repeats.check(1, &id("Dev-1"), &device("d1")).is_ok());
        assert_eq!(
            repeats.check(2, &id("dev-1"), &device("d2")),
            Err("registrationId repeats row 1".into())
        );
        assert_eq!(
            repeats.check(3, &id("dev-3"), &device("d1")),
            Err("deviceId repeats row 1".into())
        );
        assert!(repeats.check(4, &id("dev-4"), &device("d4")).is_ok());
    }

    #[test]
    fn a_csv_without_the_key_columns_is_refused_whole() {
        let error = parse_csv(b"serial,model\nSN1,T\n").unwrap_err();
        assert!(error.to_string().contains("registrationId"), "{error}");
    }

    #[test]
    fn twin_cells_become_numbers_only_when_written_canonically() {
        assert_eq!(twin_value("30"), Value::from(30));
        assert_eq!(twin_value("true"), Value::Bool(true));
        assert_eq!(twin_value("00123"), Value::String("00123".into()));
        assert_eq!(twin_value("1e3"), Value::String("1e3".into()));
    }

    #[test]
    fn json_rows_keep_their_ids_even_when_invalid() {
        let rows =
            parse_json(br#"[{"registrationId":"a","customer":{"id":"c"}},{"registrationId":"b"}]"#)
                .unwrap();
        assert!(rows[0].input.is_ok());
        assert_eq!(rows[1].registration_id.as_deref(), Some("b"));
        assert!(rows[1].input.as_ref().unwrap_err().contains("customer"));
    }

    mod properties {
        //! Import bodies from any bytes: CSV and JSON parse without a panic, and every row a
        //! CSV writer writes (quotes, commas and line breaks inside cells) reads back as the
        //! enrollment it describes. A fixed seed keeps every run the same.
        use super::super::*;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, RngSeed};

        fn config() -> Config {
            Config {
                cases: 128,
                failure_persistence: None,
                rng_seed: RngSeed::Fixed(0x5eed_0016),
                ..Config::default()
            }
        }

        /// A cell: no blanks at either end (the parser trims them), anything CSV must quote
        /// inside; empty means "not given".
        fn cell() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(String::new()),
                "[a-zA-Z0-9,\"é;.-]([a-zA-Z0-9 ,\"\n\ré;.-]{0,12}[a-zA-Z0-9,\"é;.-])?",
            ]
        }

        fn required() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9,\"é.-]([a-zA-Z0-9 ,\"\né.-]{0,12}[a-zA-Z0-9,\"é.-])?"
        }

        type Row = (String, String, String, String, String, String, String);

        fn row() -> impl Strategy<Value = Row> {
            (
                required(),
                required(),
                cell(),
                cell(),
                cell(),
                prop_oneof![Just(""), Just("yes"), Just("no"), Just("TRUE"), Just("0")]
                    .prop_map(|s: &str| s.to_owned()),
                cell(),
            )
        }

        fn given(cell: &str) -> Option<String> {
            (!cell.is_empty()).then(|| cell.to_owned())
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn any_bytes_parse_as_csv_or_json_without_a_panic(
                body in prop::collection::vec(any::<u8>(), 0..300),
                text in "registrationId,customerId\n[a-z,\"\n\r ]{0,100}",
            ) {
                let _ = parse_json(&body);
                let _ = parse_csv(&body);
                let rows = parse_csv(text.as_bytes()).unwrap();
                prop_assert!(rows.windows(2).all(|w| w[0].row < w[1].row));
            }

            #[test]
            fn every_written_csv_row_reads_back_as_its_enrollment(rows in prop::collection::vec(row(), 1..6)) {
                let mut writer = csv::Writer::from_writer(Vec::new());
                writer.write_record(["Registration ID", "customer_id", "Serial", "model", "tag.site", "enabled", "Warranty"]).unwrap();
                for (id, customer, serial, model, site, enabled, warranty) in &rows {
                    writer.write_record([id, customer, serial, model, site, enabled, warranty]).unwrap();
                }
                let body = writer.into_inner().unwrap();
                let parsed = parse_csv(&body).unwrap();
                prop_assert_eq!(parsed.len(), rows.len());
                for (i, (row, (id, customer, serial, model, site, enabled, warranty))) in parsed.iter().zip(&rows).enumerate() {
                    prop_assert_eq!(row.row, i + 1);
                    prop_assert_eq!(row.registration_id.as_deref(), Some(id.as_str()));
                    let input = row.input.as_ref().unwrap();
                    prop_assert_eq!(&input.registration_id, id);
                    prop_assert_eq!(&input.customer.id, customer);
                    prop_assert_eq!(&input.asset.serial_number, &given(serial));
                    prop_assert_eq!(&input.asset.model, &given(model));
                    let site = given(site).map(|s| twin_value(&s));
                    prop_assert_eq!(input.initial_twin.tags.get("site"), site.as_ref());
                    let warranty = given(warranty);
                    prop_assert_eq!(input.asset.attributes.get("Warranty"), warranty.as_ref());
                    prop_assert_eq!(input.enabled, parse_enabled(enabled).unwrap());
                }
            }

            #[test]
            fn a_json_array_gives_one_row_per_item_with_its_id(
                items in prop::collection::vec(prop_oneof![
                    "[a-z0-9-]{0,10}".prop_map(|id| serde_json::json!({ "registrationId": id, "customer": { "id": "c" } })),
                    any::<i64>().prop_map(|n| serde_json::json!({ "registrationId": n })),
                    Just(Value::Null),
                ], 0..6),
            ) {
                let rows = parse_json(&serde_json::to_vec(&items).unwrap()).unwrap();
                prop_assert_eq!(rows.len(), items.len());
                for (row, item) in rows.iter().zip(&items) {
                    prop_assert_eq!(row.registration_id.as_deref(), item["registrationId"].as_str());
                    prop_assert_eq!(row.input.is_ok(), item["customer"].is_object());
                }
            }
        }
    }
}
