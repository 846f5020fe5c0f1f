//! Azurite reached directly, through the same table library and HTTP client as the handler, for
//! the raw rates the handler's figures stand next to.

use azure_data_tables::clients::{TableServiceClient, TableServiceClientBuilder};
use azure_data_tables::prelude::TableClient;
use azure_storage::{CloudLocation, StorageCredentials};
use futures_util::StreamExt;
use iot_credentials::StorageConnectionString;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// A row of the raw tables: a key and an opaque payload.
#[derive(Serialize, Deserialize)]
pub struct RawRow {
    /// The partition.
    #[serde(rename = "PartitionKey")]
    pub partition_key: String,
    /// The row within it.
    #[serde(rename = "RowKey")]
    pub row_key: String,
    /// The payload.
    #[serde(rename = "Data")]
    pub data: String,
}

/// A table service client on Azurite with the handler's pooled HTTP client and no retries (a
/// retry would hide the cost being measured).
pub fn table_service(storage: &StorageConnectionString) -> TableServiceClient {
    let credentials = StorageCredentials::access_key(
        storage.account_name().to_owned(),
        storage.account_key().expose_base64().to_owned(),
    );
    let location = CloudLocation::Custom {
        account: storage.account_name().to_owned(),
        uri: storage.table_endpoint().to_owned(),
    };
    TableServiceClientBuilder::with_location(location, credentials)
        .transport(azure_core::TransportOptions::new(Arc::new(
            handler::storage::tables::http_client(),
        )))
        .retry(azure_core::RetryOptions::none())
        .build()
}

/// Scans every record row (`RowKey eq 'record'`) of `table`, 1,000 a page, with only the
/// `select` columns when given; true when it read exactly `expected` rows.
pub async fn scan_records(
    table: &TableClient,
    select: Option<&'static str>,
    expected: usize,
) -> bool {
    let mut query = table
        .query()
        .filter(azure_data_tables::Filter::new("RowKey eq 'record'"))
        .top(azure_data_tables::prelude::Top::new(1000));
    if let Some(select) = select {
        query = query.select(azure_data_tables::prelude::Select::new(select));
    }
    let mut pages = query.into_stream::<Value>();
    let mut rows = 0;
    while let Some(page) = pages.next().await {
        match page {
            Ok(page) => rows += page.entities.len(),
            Err(_) => return false,
        }
    }
    rows == expected
}
