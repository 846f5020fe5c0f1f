//! The service API for enrollments: create or update (with If-Match), get, delete, fetch the
//! attestation (keys), query with paging, and bulk operations. Individual enrollments and
//! enrollment groups behave alike; [`EnrollmentKind`] says where each kind lives.

use super::error::DpsError;
use super::model::{
    AllocationPolicy, AttestationType, BulkItemError, BulkMode, DeviceRegistrationState,
    EnrollmentGroup, EnrollmentSettings, IndividualEnrollment, QuerySpecification,
    SymmetricKeyAttestation,
};
use super::{validate, Dps};
use crate::azure_format;
use crate::cloud_state::{id_key, Change, CloudState};
use iot_credentials::SharedAccessKey;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Azure's cap on items per bulk call.
pub const BULK_LIMIT: usize = 10;
/// Page size when the client names none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Length of keys DPS generates (bytes).
const GENERATED_KEY_BYTES: usize = 64;

/// Individual enrollments or enrollment groups.
pub trait EnrollmentKind {
    /// The record.
    type Record: Clone + Serialize + DeserializeOwned + Send + 'static;
    /// Name of the id field on the wire.
    const ID_FIELD: &'static str;
    /// `x-ms-item-type` of query answers.
    const ITEM_TYPE: &'static str;
    /// The record's id.
    fn id(record: &Self::Record) -> &str;
    /// The shared settings.
    fn settings(record: &Self::Record) -> &EnrollmentSettings;
    /// The shared settings, mutably.
    fn settings_mut(record: &mut Self::Record) -> &mut EnrollmentSettings;
    /// Where records of this kind live.
    fn table(state: &CloudState) -> &BTreeMap<String, Self::Record>;
    /// The change that stores a record.
    fn put(record: Self::Record) -> Change;
    /// The changes that delete a record (and what goes with it).
    fn delete(state: &CloudState, key: &str) -> Vec<Change>;
    /// The error for a missing record.
    fn not_found(id: &str) -> DpsError;
    /// The error for a record that exists already (bulk `create`, and `update` without etag).
    fn exists() -> DpsError;
    /// Checks beyond the shared settings.
    fn validate(record: &Self::Record) -> Result<(), DpsError>;
    /// Drops read-only members a client may have sent back (they are never stored).
    fn strip_derived(record: &mut Self::Record);
    /// The record as GET returns it: no `symmetricKey` member, plus derived read-only fields.
    fn present(state: &CloudState, record: &Self::Record) -> Self::Record;
    /// The record as a query returns it: no `symmetricKey` member and nothing derived.
    fn listed(record: &Self::Record) -> Self::Record {
        let mut shown = record.clone();
        let settings = Self::settings_mut(&mut shown);
        settings.attestation = settings.attestation.without_secrets();
        shown
    }
}

/// Individual enrollments.
pub struct Individual;
/// Enrollment groups.
pub struct Group;

impl EnrollmentKind for Individual {
    type Record = IndividualEnrollment;
    const ID_FIELD: &'static str = "registrationId";
    const ITEM_TYPE: &'static str = "Enrollment";

    fn id(record: &Self::Record) -> &str {
        &record.registration_id
    }
    fn settings(record: &Self::Record) -> &EnrollmentSettings {
        &record.settings
    }
    fn settings_mut(record: &mut Self::Record) -> &mut EnrollmentSettings {
        &mut record.settings
    }
    fn table(state: &CloudState) -> &BTreeMap<String, Self::Record> {
        &state.enrollments
    }
    fn put(mut record: Self::Record) -> Change {
        Self::strip_derived(&mut record);
        Change::PutEnrollment(Box::new(record))
    }
    fn delete(state: &CloudState, key: &str) -> Vec<Change> {
        // An individual enrollment's registration record goes with it; DPS leaves the device
        // identity in its hub alone (deprovisioning a hub device is a separate step).
        let mut changes = vec![Change::DeleteEnrollment(key.to_owned())];
        if state.registrations.contains_key(key) {
            changes.push(Change::DeleteRegistration(key.to_owned()));
        }
        changes
    }
    fn not_found(id: &str) -> DpsError {
        DpsError::EnrollmentNotFound(format!("no enrollment with registration id {id:?}"))
    }
    fn exists() -> DpsError {
        // Azure's own words (errorStatus of a bulk item).
        DpsError::Conflict("Enrollment already exists.".into())
    }
    fn validate(record: &Self::Record) -> Result<(), DpsError> {
        match &record.device_id {
            Some(device_id) => validate::device_id(device_id),
            None => Ok(()),
        }
    }
    fn strip_derived(record: &mut Self::Record) {
        record.registration_state = None;
    }
    fn present(state: &CloudState, record: &Self::Record) -> Self::Record {
        // GET joins the registration record; a device that never registered shows
        // `{registrationId, status: "unassigned"}` (recorded live traffic, see docs/emulator.md).
        let mut shown = Self::listed(record);
        shown.registration_state = Some(
            state
                .registrations
                .get(&id_key(&record.registration_id))
                .map(DeviceRegistrationState::for_service)
                .unwrap_or_else(|| DeviceRegistrationState::unassigned(&record.registration_id)),
        );
        shown
    }
}

impl EnrollmentKind for Group {
    type Record = EnrollmentGroup;
    const ID_FIELD: &'static str = "enrollmentGroupId";
    const ITEM_TYPE: &'static str = "EnrollmentGroup";

    fn id(record: &Self::Record) -> &str {
        &record.enrollment_group_id
    }
    fn settings(record: &Self::Record) -> &EnrollmentSettings {
        &record.settings
    }
    fn settings_mut(record: &mut Self::Record) -> &mut EnrollmentSettings {
        &mut record.settings
    }
    fn table(state: &CloudState) -> &BTreeMap<String, Self::Record> {
        &state.groups
    }
    fn put(record: Self::Record) -> Change {
        Change::PutGroup(Box::new(record))
    }
    fn delete(_: &CloudState, key: &str) -> Vec<Change> {
        // Deleting a group keeps its devices' registration records, as Azure does.
        vec![Change::DeleteGroup(key.to_owned())]
    }
    fn not_found(id: &str) -> DpsError {
        DpsError::GroupNotFound(format!("no enrollment group with id {id:?}"))
    }
    fn exists() -> DpsError {
        DpsError::GroupConflict("EnrollmentGroup already exists.".into())
    }
    fn validate(_: &Self::Record) -> Result<(), DpsError> {
        Ok(())
    }
    fn strip_derived(_: &mut Self::Record) {}
    fn present(_: &CloudState, record: &Self::Record) -> Self::Record {
        Self::listed(record)
    }
}

/// The answer to a bulk operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkOutcome {
    /// Failed items (an empty list means every item succeeded).
    pub errors: Vec<BulkItemError>,
}

/// One page of a query.
#[derive(Debug)]
pub struct Page<T> {
    /// The records.
    pub items: Vec<T>,
    /// Token for the next page, if any.
    pub continuation: Option<String>,
}

/// Checks an `If-Match` header against a record's current etag (None: the record is missing).
pub(super) fn check_if_match(
    if_match: Option<&str>,
    current: Option<&str>,
    id: &str,
) -> Result<(), DpsError> {
    match (if_match, current) {
        (None, _) => Ok(()),
        (Some(wanted), Some(etag)) if azure_format::etag_matches(wanted, etag) => Ok(()),
        (Some(_), Some(_)) => Err(DpsError::PreconditionFailed(format!(
            "the etag of {id:?} has changed; read it again and retry"
        ))),
        (Some(_), None) => Err(DpsError::PreconditionFailed(format!(
            "If-Match was given but {id:?} does not exist"
        ))),
    }
}

impl Dps {
    /// Checks the shared settings against Azure's rules and this instance's linked hubs.
    fn check_settings(&self, settings: &EnrollmentSettings) -> Result<(), DpsError> {
        let attestation = &settings.attestation;
        match attestation.kind {
            AttestationType::SymmetricKey => {
                if let Some(keys) = &attestation.symmetric_key {
                    for (name, key) in [
                        ("primaryKey", &keys.primary_key),
                        ("secondaryKey", &keys.secondary_key),
                    ] {
                        match key.as_deref() {
                            Some(key) if !key.is_empty() => validate::symmetric_key(name, key)?,
                            _ => {}
                        }
                    }
                }
            }
            AttestationType::Tpm if attestation.tpm.is_none() => {
                return Err(DpsError::BadRequest(
                    "attestation of type tpm needs a tpm object".into(),
                ))
            }
            AttestationType::X509 if attestation.x509.is_none() => {
                return Err(DpsError::BadRequest(
                    "attestation of type x509 needs an x509 object".into(),
                ))
            }
            _ => {}
        }
        let linked = |host: &str| -> Result<(), DpsError> {
            if self.linked_hub(host).is_some() {
                Ok(())
            } else {
                let names: Vec<&str> = self
                    .settings
                    .linked_hubs
                    .iter()
                    .map(|h| h.host_name.as_str())
                    .collect();
                Err(DpsError::BadRequest(format!(
                    "IoT hub {host:?} is not linked to this provisioning service (linked: {})",
                    names.join(", ")
                )))
            }
        };
        for hub in settings.iot_hubs.iter().flatten() {
            linked(hub)?;
        }
        if let Some(hub) = &settings.iot_hub_host_name {
            linked(hub)?;
        }
        match settings.allocation_policy {
            Some(AllocationPolicy::Static) => {
                let mut named: Vec<String> = settings
                    .iot_hubs
                    .iter()
                    .flatten()
                    .chain(settings.iot_hub_host_name.iter())
                    .map(|h| h.to_ascii_lowercase())
                    .collect();
                named.sort();
                named.dedup();
                // DPS accepts `static` with no hub named (recorded live traffic: such a group's
                // device went to the one linked hub); two different hubs make no sense.
                if named.len() > 1 {
                    return Err(DpsError::BadRequest(
                        "static allocation takes one hub in iotHubs (or iotHubHostName), not \
                            several"
                            .into(),
                    ));
                }
            }
            Some(AllocationPolicy::Custom) => {
                let definition =
                    settings
                        .custom_allocation_definition
                        .as_ref()
                        .ok_or_else(|| {
                            DpsError::BadRequest(
                                "custom allocation needs customAllocationDefinition".into(),
                            )
                        })?;
                let url = reqwest::Url::parse(&definition.webhook_url).map_err(|_| {
                    DpsError::BadRequest(
                        "customAllocationDefinition.webhookUrl is not a URL".into(),
                    )
                })?;
                if !matches!(url.scheme(), "http" | "https")
                    || definition.api_version.trim().is_empty()
                {
                    return Err(DpsError::BadRequest(
                        "customAllocationDefinition needs an http(s) webhookUrl and an apiVersion"
                            .into(),
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn check_record<K: EnrollmentKind>(&self, record: &K::Record) -> Result<(), DpsError> {
        validate::registration_id(K::id(record))?;
        self.check_settings(K::settings(record))?;
        K::validate(record)
    }

    /// Creates or replaces an enrollment, answering the stored record with its keys (given or
    /// generated), as DPS does. Keys left empty are generated on creation and kept on update,
    /// so a record read (without keys) and written back keeps its keys.
    pub async fn put_enrollment<K: EnrollmentKind>(
        &self,
        path_id: &str,
        if_match: Option<&str>,
        record: K::Record,
    ) -> Result<K::Record, DpsError> {
        validate::registration_id(path_id)?;
        if !K::id(&record).eq_ignore_ascii_case(path_id) {
            return Err(DpsError::BadRequest(format!(
                "{} in the body must equal the id in the URL",
                K::ID_FIELD
            )));
        }
        self.check_record::<K>(&record)?;
        let key = id_key(path_id);
        let fresh = (
            SharedAccessKey::generate(GENERATED_KEY_BYTES),
            SharedAccessKey::generate(GENERATED_KEY_BYTES),
        );
        let stored = self
            .store
            .transact(|state| {
                let existing = K::table(state).get(&key);
                check_if_match(
                    if_match,
                    existing.and_then(|e| K::settings(e).etag.as_deref()),
                    path_id,
                )?;
                let stored = stamp::<K>(record, existing, &fresh);
                Ok::<_, DpsError>((stored.clone(), vec![K::put(stored)]))
            })
            .await?;
        Ok(stored)
    }

    /// Reads an enrollment (without the `symmetricKey` member).
    pub fn get_enrollment<K: EnrollmentKind>(&self, id: &str) -> Result<K::Record, DpsError> {
        self.store.read(|state| {
            K::table(state)
                .get(&id_key(id))
                .map(|record| K::present(state, record))
                .ok_or_else(|| K::not_found(id))
        })
    }

    /// Reads an enrollment's attestation, keys included.
    pub fn get_attestation<K: EnrollmentKind>(
        &self,
        id: &str,
    ) -> Result<super::model::AttestationMechanism, DpsError> {
        self.store.read(|state| {
            K::table(state)
                .get(&id_key(id))
                .map(|record| K::settings(record).attestation.clone())
                .ok_or_else(|| K::not_found(id))
        })
    }

    /// Deletes an enrollment.
    pub async fn delete_enrollment<K: EnrollmentKind>(
        &self,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<(), DpsError> {
        let key = id_key(id);
        self.store
            .transact(|state| {
                let existing = K::table(state).get(&key).ok_or_else(|| K::not_found(id))?;
                check_if_match(if_match, K::settings(existing).etag.as_deref(), id)?;
                Ok::<_, DpsError>(((), K::delete(state, &key)))
            })
            .await
    }

    /// One page of all enrollments of a kind, ordered by id.
    pub fn query_enrollments<K: EnrollmentKind>(
        &self,
        spec: &QuerySpecification,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<Page<K::Record>, DpsError> {
        check_query(&spec.query)?;
        let after = decode_continuation(continuation)?;
        Ok(self
            .store
            .read(|state| page_of(K::table(state), after.as_deref(), page_size, K::listed)))
    }

    /// Runs a bulk operation of at most [`BULK_LIMIT`] items; every item succeeds or fails on
    /// its own.
    pub async fn bulk_enrollments<K: EnrollmentKind>(
        &self,
        mode: BulkMode,
        items: Vec<K::Record>,
    ) -> Result<BulkOutcome, DpsError> {
        if items.is_empty() || items.len() > BULK_LIMIT {
            return Err(DpsError::BadRequest(format!(
                "a bulk operation takes 1 to {BULK_LIMIT} items, not {}",
                items.len()
            )));
        }
        let mut errors = Vec::new();
        let mut valid = Vec::new();
        for item in items {
            let checked = if mode == BulkMode::Delete {
                validate::registration_id(K::id(&item))
            } else {
                self.check_record::<K>(&item)
            };
            match checked {
                Ok(()) => valid.push(item),
                Err(error) => errors.push(item_error(K::id(&item), &error)),
            }
        }
        let fresh: Vec<_> = valid
            .iter()
            .map(|_| {
                (
                    SharedAccessKey::generate(GENERATED_KEY_BYTES),
                    SharedAccessKey::generate(GENERATED_KEY_BYTES),
                )
            })
            .collect();
        let more_errors = self
            .store
            .transact(|state| {
                // What earlier items of this batch did, so later items see it.
                let mut batch: HashMap<String, Option<K::Record>> = HashMap::new();
                let mut changes = Vec::new();
                let mut errors = Vec::new();
                for (item, fresh) in valid.into_iter().zip(&fresh) {
                    let id = K::id(&item).to_owned();
                    if let Err(error) =
                        bulk_item::<K>(state, mode, item, fresh, &mut batch, &mut changes)
                    {
                        errors.push(item_error(&id, &error));
                    }
                }
                Ok::<_, DpsError>((errors, changes))
            })
            .await?;
        errors.extend(more_errors);
        Ok(BulkOutcome { errors })
    }
}

/// One item of a bulk operation, inside the operation's transaction: checks it against the
/// stored record (or what an earlier item of the batch left in `batch`) and adds its changes.
fn bulk_item<K: EnrollmentKind>(
    state: &CloudState,
    mode: BulkMode,
    item: K::Record,
    fresh: &(SharedAccessKey, SharedAccessKey),
    batch: &mut HashMap<String, Option<K::Record>>,
    changes: &mut Vec<Change>,
) -> Result<(), DpsError> {
    let id = K::id(&item).to_owned();
    let key = id_key(&id);
    let existing = match batch.get(&key) {
        Some(seen) => seen.clone(),
        None => K::table(state).get(&key).cloned(),
    };
    match (mode, &existing) {
        // `update` without an etag refuses an existing record as `create` does:
        // the live service answers 409201/409202 "… already exists." there
        // (recorded bulk operations, see docs/emulator.md).
        (BulkMode::Create, Some(_)) => Err(K::exists()),
        (BulkMode::Update, Some(_)) if K::settings(&item).etag.is_none() => Err(K::exists()),
        (BulkMode::Update, Some(current))
            if !K::settings(current).etag.as_deref().is_some_and(|etag| {
                K::settings(&item)
                    .etag
                    .as_deref()
                    .is_some_and(|wanted| azure_format::etag_matches(wanted, etag))
            }) =>
        {
            Err(DpsError::PreconditionFailed(format!(
                "the etag of {id:?} does not match"
            )))
        }
        (BulkMode::Delete, None) => Err(K::not_found(&id)),
        (BulkMode::Delete, Some(_)) => {
            changes.extend(K::delete(state, &key));
            batch.insert(key, None);
            Ok(())
        }
        (BulkMode::UpdateIfMatchETag, _) => {
            let wanted = K::settings(&item).etag.clone();
            match (
                wanted,
                existing.as_ref().and_then(|e| K::settings(e).etag.clone()),
            ) {
                (Some(wanted), Some(current)) if azure_format::etag_matches(&wanted, &current) => {
                    Ok(())
                }
                (None, None) => Ok(()),
                _ => Err(DpsError::PreconditionFailed(format!(
                    "the etag of {id:?} does not match"
                ))),
            }
            .map(|()| {
                let stored = stamp::<K>(item, existing.as_ref(), fresh);
                batch.insert(key, Some(stored.clone()));
                changes.push(K::put(stored));
            })
        }
        (BulkMode::Create | BulkMode::Update, _) => {
            let stored = stamp::<K>(item, existing.as_ref(), fresh);
            batch.insert(key, Some(stored.clone()));
            changes.push(K::put(stored));
            Ok(())
        }
    }
}

/// Sets the service-owned fields of a record about to be stored.
fn stamp<K: EnrollmentKind>(
    mut record: K::Record,
    existing: Option<&K::Record>,
    fresh: &(SharedAccessKey, SharedAccessKey),
) -> K::Record {
    let now = azure_format::now();
    let previous = existing.map(K::settings);
    K::strip_derived(&mut record);
    let settings = K::settings_mut(&mut record);
    settings.etag = Some(azure_format::etag());
    settings.created_date_time_utc = previous
        .and_then(|p| p.created_date_time_utc.clone())
        .or_else(|| Some(now.clone()));
    settings.last_updated_date_time_utc = Some(now);
    if settings.attestation.kind == AttestationType::SymmetricKey {
        let old = previous
            .filter(|p| p.attestation.kind == AttestationType::SymmetricKey)
            .and_then(|p| p.attestation.symmetric_key.clone())
            .unwrap_or_default();
        let given = settings
            .attestation
            .symmetric_key
            .take()
            .unwrap_or_default();
        let pick = |given: Option<String>, old: Option<String>, fresh: &SharedAccessKey| {
            given
                .filter(|k| !k.is_empty())
                .or(old)
                .unwrap_or_else(|| fresh.expose_base64().to_owned())
        };
        settings.attestation.symmetric_key = Some(SymmetricKeyAttestation {
            primary_key: Some(pick(given.primary_key, old.primary_key, &fresh.0)),
            secondary_key: Some(pick(given.secondary_key, old.secondary_key, &fresh.1)),
        });
    }
    record
}

fn item_error(id: &str, error: &DpsError) -> BulkItemError {
    BulkItemError {
        id: id.to_owned(),
        error_code: error.code(),
        error_status: error.to_string(),
    }
}

/// DPS accepts `*` (all records); `SELECT *` (what the Python SDK's tests send, in either
/// case) and `SELECT * FROM <collection>` are accepted as the same thing.
fn check_query(query: &str) -> Result<(), DpsError> {
    let words: Vec<String> = query
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let all = matches!(words.as_slice(), [star] if star == "*")
        || matches!(words.as_slice(), [select, star] if select == "select" && star == "*")
        || matches!(words.as_slice(), [select, star, from, _] if select == "select" && star == "*" && from == "from");
    if all {
        Ok(())
    } else {
        Err(DpsError::BadRequest(
            "only the query \"*\" (all records) is supported".into(),
        ))
    }
}

/// Continuation tokens are opaque to clients: the hex of the last key returned.
pub fn decode_continuation(token: Option<&str>) -> Result<Option<String>, DpsError> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let invalid =
        || DpsError::BadRequest("the continuation token is not one this service issued".into());
    if token.len() % 2 != 0 {
        return Err(invalid());
    }
    let bytes: Result<Vec<u8>, _> = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or(())
        })
        .collect();
    String::from_utf8(bytes.map_err(|()| invalid())?)
        .map(Some)
        .map_err(|_| invalid())
}

fn encode_continuation(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

/// One page of `table` after the key `after`.
pub fn page_of<T, U>(
    table: &BTreeMap<String, T>,
    after: Option<&str>,
    page_size: usize,
    present: impl Fn(&T) -> U,
) -> Page<U> {
    page_of_filtered(table, after, page_size, |_| true, present)
}

/// One page of the records of `table` that pass `keep`, after the key `after`.
pub fn page_of_filtered<T, U>(
    table: &BTreeMap<String, T>,
    after: Option<&str>,
    page_size: usize,
    keep: impl Fn(&T) -> bool,
    present: impl Fn(&T) -> U,
) -> Page<U> {
    use std::ops::Bound;
    let start = match after {
        Some(key) => Bound::Excluded(key.to_owned()),
        None => Bound::Unbounded,
    };
    let mut matching = table
        .range((start, Bound::Unbounded))
        .filter(|(_, record)| keep(record));
    let mut items = Vec::new();
    let mut last_key = None;
    for (key, record) in matching.by_ref().take(page_size) {
        items.push(present(record));
        last_key = Some(key.clone());
    }
    let continuation = match (matching.next(), last_key) {
        (Some(_), Some(last)) => Some(encode_continuation(&last)),
        _ => None,
    };
    Page {
        items,
        continuation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_tokens_round_trip_and_reject_forgeries() {
        let token = encode_continuation("device-01");
        assert_eq!(
            decode_continuation(Some(&token)).unwrap().as_deref(),
            Some("device-01")
        );
        assert!(decode_continuation(Some("zz")).is_err());
        assert!(decode_continuation(Some("abc")).is_err());
        assert_eq!(decode_continuation(None).unwrap(), None);
    }

    #[test]
    fn queries_other_than_all_records_are_refused_clearly() {
        check_query("*").unwrap();
        check_query("SELECT *").unwrap();
        check_query("select *").unwrap();
        check_query("SELECT * FROM enrollments").unwrap();
        assert!(check_query("SELECT * FROM enrollments WHERE x = 1").is_err());
    }

    #[test]
    fn paging_walks_every_record_once() {
        let table: BTreeMap<String, u32> = (0..25).map(|i| (format!("k{i:03}"), i)).collect();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = page_of(&table, after.as_deref(), 10, |v| *v);
            seen.extend(page.items);
            match page.continuation {
                Some(token) => after = decode_continuation(Some(&token)).unwrap(),
                None => break,
            }
        }
        assert_eq!(seen, (0..25).collect::<Vec<_>>());
    }
}
