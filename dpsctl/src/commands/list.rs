//! `list enrollments|devices`: every page, as a table, JSON or CSV.

use crate::cli::{ListArgs, ListKind, Output};
use crate::error::Result;
use crate::output::json;
use crate::{records, Context};
use serde_json::Value;

/// `dpsctl list`.
pub async fn list(ctx: &mut Context<'_>, args: ListArgs) -> Result<()> {
    let mut query = Vec::new();
    for (name, value) in [
        ("customer", &args.customer),
        ("status", &args.status),
        ("hub", &args.hub),
    ] {
        if let Some(value) = value {
            query.push((name, value.clone()));
        }
    }
    let (path, noun) = match args.kind {
        ListKind::Enrollments => ("/enrollments", "enrollments"),
        ListKind::Devices => ("/devices", "devices"),
    };
    let items = ctx.api.list_all(path, &query, args.page_size).await?;
    let rows = match args.kind {
        ListKind::Enrollments => records::enrollment_rows(&items),
        ListKind::Devices => records::device_rows(&items),
    };
    match args.output {
        Output::Json => json(ctx.out, &Value::Array(items)),
        Output::Csv => rows.write_csv(ctx.out),
        Output::Table => rows.write_table(ctx.out, &format!("no {noun}")),
    }
}
