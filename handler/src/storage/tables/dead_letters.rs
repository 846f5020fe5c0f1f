//! The `DeadLetters` table: events that cannot be applied, newest first (row keys are inverted
//! times), kept for operators.

use super::documents::{first_page, insert_ignoring_existing, json_of, partition_filter, DataRow};
use super::TableRegistry;
use crate::domain::journal::DeadLetter;
use crate::storage::StoreError;

const DEAD_PARTITION: &str = "dead";

impl TableRegistry {
    pub(super) async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        self.ensure_tables().await?;
        let letter = &letter.clone().fitted();
        let nanos = i64::try_from(letter.at.nanos()).unwrap_or(i64::MAX).max(0);
        let row = DataRow {
            partition_key: DEAD_PARTITION.into(),
            row_key: format!(
                "{:019}~{}",
                i64::MAX - nanos,
                letter.key.replace(['/', '\\', '#', '?'], "_")
            ),
            data: json_of(letter)?,
            next_attempt: None,
        };
        insert_ignoring_existing(&self.dead_letters, &row).await
    }

    pub(super) async fn newest_dead_letters(
        &self,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.ensure_tables().await?;
        first_page(&self.dead_letters, partition_filter(DEAD_PARTITION), limit).await
    }
}
