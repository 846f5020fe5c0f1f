//! The `Outbox` table: notifications waiting for delivery (partition `pending`, one row per
//! notification id, `NextAttempt` zero-padded so text order is time order). Claims are
//! etag-guarded so one caller of several sends each attempt.

use super::documents::{first_page, from_json, insert_ignoring_existing, json_of, DataRow};
use super::failures::{failed, status_of};
use super::TableRegistry;
use crate::domain::journal::Notification;
use crate::storage::StoreError;
use azure_data_tables::prelude::*;

const OUTBOX_PARTITION: &str = "pending";

fn outbox_row(notification: &Notification) -> Result<DataRow, StoreError> {
    Ok(DataRow {
        partition_key: OUTBOX_PARTITION.into(),
        row_key: notification.id.clone(),
        data: json_of(notification)?,
        next_attempt: Some(next_attempt_text(notification.next_attempt_ms)),
    })
}

fn next_attempt_text(ms: i64) -> String {
    format!("{:016}", ms.max(0))
}

impl TableRegistry {
    pub(super) async fn enqueue_notification(
        &self,
        notification: &Notification,
    ) -> Result<(), StoreError> {
        self.ensure_tables().await?;
        let row = outbox_row(notification)?;
        insert_ignoring_existing(&self.outbox, &row).await
    }

    pub(super) async fn due_notifications(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError> {
        self.ensure_tables().await?;
        let filter = format!(
            "PartitionKey eq '{OUTBOX_PARTITION}' and NextAttempt le '{}'",
            next_attempt_text(now_ms)
        );
        first_page(&self.outbox, azure_data_tables::Filter::new(filter), limit).await
    }

    pub(super) async fn claim_notification(
        &self,
        id: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        self.ensure_tables().await?;
        let client = self
            .outbox
            .partition_key_client(OUTBOX_PARTITION)
            .entity_client(id);
        let current = match client.get::<DataRow>().await {
            Ok(response) => response,
            Err(e) if status_of(&e) == Some(404) => return Ok(false),
            Err(e) => return Err(failed(e)),
        };
        let mut notification: Notification = from_json(&current.entity)?;
        if notification.next_attempt_ms > now_ms {
            return Ok(false);
        }
        notification.next_attempt_ms = until_ms;
        // Only the caller whose read is still current wins; the others see 412 (or 404 once it
        // was delivered).
        match client
            .update(
                &outbox_row(&notification)?,
                IfMatchCondition::Etag(current.etag),
            )
            .map_err(failed)?
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if matches!(status_of(&e), Some(404 | 412)) => Ok(false),
            Err(e) => Err(failed(e)),
        }
    }

    pub(super) async fn reschedule_notification(
        &self,
        notification: &Notification,
    ) -> Result<(), StoreError> {
        self.ensure_tables().await?;
        let row = outbox_row(notification)?;
        // An update, not an upsert: a notification another pass delivered (and deleted) in the
        // meantime must not be queued again.
        match self
            .outbox
            .partition_key_client(OUTBOX_PARTITION)
            .entity_client(&notification.id)
            .update(&row, IfMatchCondition::Any)
            .map_err(failed)?
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(failed(e)),
        }
    }

    pub(super) async fn remove_notification(&self, id: &str) -> Result<(), StoreError> {
        self.ensure_tables().await?;
        match self
            .outbox
            .partition_key_client(OUTBOX_PARTITION)
            .entity_client(id)
            .delete()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(failed(e)),
        }
    }
}
