//! `import`: a file of any size, checked locally, sent in batches the API takes, with progress
//! and one result per row of the file.

use crate::api::Body;
use crate::cli::{ImportArgs, Output};
use crate::error::{Error, Result};
use crate::import_file::{self, Batch, CheckedRow, Verdict};
use crate::output::{json, Rows};
use crate::progress::Progress;
use crate::Context;
use enrollment_input::import::{Outcome, RowResult};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::Duration;

/// Attempts at a batch the API could not take for now (429, 503, no connection). Importing a
/// row twice is safe: the second time it `exists`.
const ATTEMPTS: u32 = 3;

/// `dpsctl import`.
pub async fn import(ctx: &mut Context<'_>, args: ImportArgs) -> Result<()> {
    let body = read(&args.file)?;
    let format = import_file::format_of(&args.file, args.format, &body);
    if args.dry_run {
        return dry_run(ctx, &args, format, &body);
    }
    let plan = import_file::plan(format, &body, usize::from(args.batch_rows))?;
    let total = plan.checked.len();
    let mut results: Vec<RowResult> = plan
        .checked
        .iter()
        .filter_map(|row| match &row.verdict {
            Verdict::Repeat(message) => Some(RowResult {
                row: row.row,
                registration_id: row.registration_id.clone(),
                outcome: Outcome::Invalid,
                message: Some(message.clone()),
            }),
            _ => None,
        })
        .collect();
    let progress = Progress::start(total as u64, ctx.stderr_terminal);
    progress.advance(results.len() as u64, &counts(&results));
    let mut any_sent = false;
    for batch in &plan.batches {
        match send(ctx, batch).await {
            Ok(answered) => {
                any_sent = true;
                results.extend(answered);
            }
            // The key or the URL is wrong: every other batch would fail the same way.
            Err(
                e @ Error::Api {
                    status: StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND,
                    ..
                },
            ) => {
                progress.finish();
                return Err(e);
            }
            Err(e) if !any_sent => {
                progress.finish();
                return Err(e);
            }
            Err(e) => results.extend(batch.failed(&plan.checked, &e.to_string())),
        }
        progress.advance(results.len() as u64, &counts(&results));
    }
    progress.finish();
    results.sort_by_key(|r| r.row);
    let summary = summary(&results);
    write_results(ctx, &args, &results, &summary)?;
    let problems =
        summary["invalid"].as_u64().unwrap_or(0) + summary["failed"].as_u64().unwrap_or(0);
    let line = format!("imported {total} rows: {}", counts(&results));
    if problems > 0 {
        return Err(Error::RowsNotEnrolled(format!(
            "{line}; {problems} not enrolled (see the table; failed rows finish when the same \
                import runs again)"
        )));
    }
    let _ = writeln!(std::io::stderr(), "{line}");
    Ok(())
}

/// Sends one batch, trying again while the API asks to wait; answers the file's rows' results.
async fn send(ctx: &Context<'_>, batch: &Batch) -> Result<Vec<RowResult>> {
    let mut attempt = 1;
    loop {
        let outcome = ctx
            .api
            .send(
                Method::POST,
                "/enrollments/import",
                Body::Raw(batch.content_type, batch.body.clone()),
                None,
            )
            .await;
        let retry = match &outcome {
            Err(Error::Api { status, .. }) => {
                *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::SERVICE_UNAVAILABLE
            }
            Err(Error::Unreachable { .. }) => true,
            _ => false,
        };
        if retry && attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_secs(2u64.pow(attempt))).await;
            attempt += 1;
            continue;
        }
        let answer = outcome?;
        let results: Vec<RowResult> = serde_json::from_value(answer.body["results"].clone())
            .map_err(|e| {
                Error::Unexpected(format!(
                    "the import answered results dpsctl cannot read: {e}"
                ))
            })?;
        return batch.renumber(results);
    }
}

/// `--dry-run`: every row's local verdict; nothing is sent.
fn dry_run(
    ctx: &mut Context<'_>,
    args: &ImportArgs,
    format: crate::cli::FileFormat,
    body: &[u8],
) -> Result<()> {
    let checked = import_file::check(format, body)?;
    let invalid = checked
        .iter()
        .filter(|r| r.verdict != Verdict::Valid)
        .count();
    let lines: Vec<(usize, Option<String>, &str, Option<String>)> = checked
        .iter()
        .filter(|r| !args.problems || r.verdict != Verdict::Valid)
        .map(|r: &CheckedRow| match &r.verdict {
            Verdict::Valid => (r.row, r.registration_id.clone(), "valid", None),
            Verdict::Invalid(m) | Verdict::Repeat(m) => {
                (r.row, r.registration_id.clone(), "invalid", Some(m.clone()))
            }
        })
        .collect();
    match args.output {
        Output::Json => json(
            ctx.out,
            &json!({
                "summary": { "rows": checked.len(), "valid": checked.len() - invalid, "invalid": invalid },
                "results": lines.iter().map(|(row, id, result, message)| json!({
                    "row": row, "registrationId": id, "result": result, "message": message,
                })).collect::<Vec<_>>(),
            }),
        )?,
        Output::Csv => result_rows(&lines).write_csv(ctx.out)?,
        Output::Table => result_rows(&lines).write_table(ctx.out, "no rows to show")?,
    }
    let line = format!(
        "dry run: {} rows, {} valid, {invalid} invalid; nothing was sent (whether a hub is linked \
            or a device is already enrolled only the API can tell)",
        checked.len(),
        checked.len() - invalid
    );
    if invalid > 0 {
        return Err(Error::RowsNotEnrolled(line));
    }
    let _ = writeln!(std::io::stderr(), "{line}");
    Ok(())
}

fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let outcome = if path.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut body).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut body).map(|_| ()))
    };
    outcome.map_err(|source| Error::File {
        what: format!("reading {}", path.display()),
        source,
    })?;
    Ok(body)
}

fn count(results: &[RowResult], outcome: Outcome) -> usize {
    results.iter().filter(|r| r.outcome == outcome).count()
}

fn counts(results: &[RowResult]) -> String {
    format!(
        "{} created, {} exists, {} invalid, {} failed",
        count(results, Outcome::Created),
        count(results, Outcome::Exists),
        count(results, Outcome::Invalid),
        count(results, Outcome::Failed)
    )
}

/// The summary as the API writes it.
fn summary(results: &[RowResult]) -> Value {
    json!({
        "rows": results.len(),
        "created": count(results, Outcome::Created),
        "exists": count(results, Outcome::Exists),
        "invalid": count(results, Outcome::Invalid),
        "failed": count(results, Outcome::Failed),
    })
}

fn result_rows(lines: &[(usize, Option<String>, &str, Option<String>)]) -> Rows {
    let mut rows = Rows::new(vec!["ROW", "REGISTRATION ID", "RESULT", "MESSAGE"]);
    for (row, id, result, message) in lines {
        rows.rows.push(vec![
            row.to_string(),
            id.clone().unwrap_or_default(),
            (*result).to_owned(),
            message.clone().unwrap_or_default(),
        ]);
    }
    rows
}

fn write_results(
    ctx: &mut Context<'_>,
    args: &ImportArgs,
    results: &[RowResult],
    summary: &Value,
) -> Result<()> {
    if args.output == Output::Json {
        return json(ctx.out, &json!({ "summary": summary, "results": results }));
    }
    let lines: Vec<(usize, Option<String>, &str, Option<String>)> = results
        .iter()
        .filter(|r| !args.problems || r.outcome != Outcome::Created)
        .map(|r| {
            (
                r.row,
                r.registration_id.clone(),
                r.outcome.as_str(),
                r.message.clone(),
            )
        })
        .collect();
    let rows = result_rows(&lines);
    match args.output {
        Output::Csv => rows.write_csv(ctx.out),
        _ => rows.write_table(ctx.out, "every row was created"),
    }
}
