//! The service API for registration records: get, delete (with If-Match), and query the
//! records of one enrollment group.

use super::enrollments::{check_if_match, decode_continuation, page_of_filtered, Page};
use super::error::DpsError;
use super::model::{DeviceRegistrationState, QuerySpecification};
use super::Dps;
use crate::cloud_state::{id_key, Change};

fn not_found(id: &str) -> DpsError {
    DpsError::RegistrationNotFound(format!("no registration record for {id:?}"))
}

impl Dps {
    /// Reads a registration record, as the service API shows it.
    pub fn get_registration(&self, id: &str) -> Result<DeviceRegistrationState, DpsError> {
        self.store
            .read(|state| {
                state
                    .registrations
                    .get(&id_key(id))
                    .map(DeviceRegistrationState::for_service)
            })
            .ok_or_else(|| not_found(id))
    }

    /// Deletes a registration record. The device identity stays in its hub, as in Azure.
    pub async fn delete_registration(
        &self,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<(), DpsError> {
        let key = id_key(id);
        self.store
            .transact(|state| {
                let record = state.registrations.get(&key).ok_or_else(|| not_found(id))?;
                check_if_match(
                    if_match,
                    Some(record.etag.as_deref().unwrap_or_default()),
                    id,
                )?;
                Ok(((), vec![Change::DeleteRegistration(key.clone())]))
            })
            .await
    }

    /// One page of the registration records of devices admitted by enrollment group `group_id`.
    /// The query specification may be left out: the Python SDK posts an empty body.
    pub fn query_group_registrations(
        &self,
        group_id: &str,
        _spec: Option<&QuerySpecification>,
        page_size: usize,
        continuation: Option<&str>,
    ) -> Result<Page<DeviceRegistrationState>, DpsError> {
        let after = decode_continuation(continuation)?;
        Ok(self.store.read(|state| {
            page_of_filtered(
                &state.registrations,
                after.as_deref(),
                page_size,
                |record| {
                    record
                        .symmetric_key
                        .as_ref()
                        .and_then(|k| k.enrollment_group_id.as_deref())
                        .is_some_and(|g| g.eq_ignore_ascii_case(group_id))
                },
                DeviceRegistrationState::for_service,
            )
        }))
    }
}
