//! Finishing DPS changes that a failure interrupted. A record whose `sync` is not `complete`
//! holds the intent; DPS calls are idempotent here, so finishing twice is harmless. The repair
//! pass also moves key rotations on (`super::rotation`): it hands a waiting key to a device that
//! has come back, and finishes interrupted DPS steps.

use super::rotation::Delivery;
use super::{Service, ServiceError};
use crate::cloud::CloudError;
use crate::domain::{DpsSync, Filter};
use crate::storage::Stored;

/// What a repair pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Records brought into agreement with DPS (or removed, for deletes).
    pub repaired: usize,
    /// Records that still could not be finished.
    pub failed: usize,
}

impl Service {
    /// Finishes the record's pending DPS change. Answers the record as it now is, or `None` if
    /// it was being deleted and is gone.
    pub async fn settle(&self, stored: Stored) -> Result<Option<Stored>, ServiceError> {
        let id = stored.record.registration_id.clone();
        match stored.record.sync {
            DpsSync::Complete => return Ok(Some(stored)),
            DpsSync::PendingDelete => {
                self.finish_delete(&stored).await?;
                return Ok(None);
            }
            DpsSync::PendingCreate => {
                // Created, or not, before the interruption: either way, end with DPS matching.
                match self.dps.create(&stored.record).await {
                    Ok(()) => {}
                    Err(CloudError::Conflict(_)) => self
                        .dps
                        .update(&stored.record)
                        .await
                        .map_err(ServiceError::dps)?,
                    Err(e) => return Err(ServiceError::dps(e)),
                }
            }
            DpsSync::PendingUpdate => self
                .dps
                .update(&stored.record)
                .await
                .map_err(ServiceError::dps)?,
        }
        tracing::info!(registration.id = %id, "finished an interrupted DPS change");
        self.complete(&stored).await.map(Some)
    }

    /// Like [`Service::settle`] for reads: if DPS cannot be reached the record is answered as
    /// it is (its status shows the pending change) rather than failing the read.
    pub(super) async fn settle_for_read(
        &self,
        stored: Stored,
    ) -> Result<Option<Stored>, ServiceError> {
        if stored.record.sync == DpsSync::Complete {
            return Ok(Some(stored));
        }
        let fallback = stored.clone();
        match self.settle(stored).await {
            Ok(settled) => Ok(settled),
            Err(error) => {
                tracing::warn!(
                    registration.id = %fallback.record.registration_id,
                    %error,
                    "an interrupted DPS change is still unfinished"
                );
                Ok(Some(fallback))
            }
        }
    }

    /// Removes the device everywhere, in an order that lets it never come back half-way and lets
    /// a retry pick up where a failure stopped: the enrollment first (so the device cannot
    /// register again), then its hub identity, then its registration state (which names the
    /// hub), then the record.
    pub(super) async fn finish_delete(&self, stored: &Stored) -> Result<(), ServiceError> {
        let record = &stored.record;
        let id = record.registration_id.as_str();
        // DPS knows the hub even when the registry has not heard of the registration yet.
        let registration = self.dps.registration(id).await.map_err(ServiceError::dps)?;
        let hub = registration
            .as_ref()
            .and_then(|r| r.assigned_hub.clone())
            .or_else(|| record.assigned_hub().map(str::to_owned));
        let hub_device = registration
            .as_ref()
            .and_then(|r| r.device_id.clone())
            .unwrap_or_else(|| record.device_id.to_string());
        self.dps.delete(id).await.map_err(ServiceError::dps)?;
        if let Some(hub) = hub {
            if self.hubs.knows(&hub) {
                self.hubs
                    .delete_device(&hub, &hub_device)
                    .await
                    .map_err(ServiceError::hub)?;
            } else {
                tracing::warn!(
                    registration.id = %id,
                    hub = %hub,
                    "the device's hub is not linked; its identity there was left"
                );
            }
        }
        // Last of DPS's: until it is gone, a retry can still learn the hub from it.
        self.dps
            .delete_registration(id)
            .await
            .map_err(ServiceError::dps)?;
        // Events (the hub reporting the removal, the connection closing) may still be writing to
        // the record; while it stays marked for deletion, delete the newest copy.
        let mut current = stored.clone();
        for _ in 0..5 {
            match self.store.delete(&current).await {
                Ok(()) => return Ok(()),
                Err(crate::storage::StoreError::PreconditionFailed) => match self
                    .store
                    .get(&record.registration_id)
                    .await?
                {
                    None => return Ok(()),
                    Some(fresh) if fresh.record.sync == DpsSync::PendingDelete => current = fresh,
                    Some(_) => {
                        return Err(ServiceError::PreconditionFailed(
                            "the record changed while it was being deleted; read it again".into(),
                        ))
                    }
                },
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::PreconditionFailed(
            "the record kept changing while it was being deleted; retry".into(),
        ))
    }

    /// Finishes every pending DPS change and moves every key rotation on (what a timer runs);
    /// bounded by `limit` records.
    pub async fn repair_pending(&self, limit: usize) -> Result<RepairReport, ServiceError> {
        let mut report = RepairReport::default();
        let mut continuation = None;
        let mut seen = 0;
        loop {
            let page = self
                .store
                .list(&Filter::unsynced(), 100, continuation.as_deref())
                .await?;
            for stored in page.items {
                seen += 1;
                let id = stored.record.registration_id.clone();
                let changing = stored.record.sync != DpsSync::Complete;
                let outcome = match self.settle(stored).await {
                    Ok(Some(settled)) if settled.record.key_rotation.is_some() => {
                        let step = |s: &Stored| s.record.key_rotation.as_ref().map(|r| r.step);
                        let before = step(&settled);
                        self.advance_rotation(settled, Delivery::Now)
                            .await
                            // A rotation still waiting on an offline device is not a repair.
                            .map(|after| changing || step(&after) != before)
                    }
                    Ok(_) => Ok(true),
                    Err(error) => Err(error),
                };
                match outcome {
                    Ok(true) => report.repaired += 1,
                    Ok(false) => {}
                    Err(error) => {
                        report.failed += 1;
                        tracing::warn!(
                            registration.id = %id,
                            %error,
                            "an interrupted DPS change or key rotation could not be finished yet"
                        );
                    }
                }
            }
            continuation = page.continuation;
            if continuation.is_none() || seen >= limit {
                return Ok(report);
            }
        }
    }
}
