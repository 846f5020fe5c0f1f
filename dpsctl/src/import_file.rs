//! An import file, read locally: every row checked with the handler's own parser and rules
//! (enrollment-input), and the file cut into batches the API takes in one request (at most
//! [`MAX_ROWS`] rows and [`MAX_BODY_BYTES`] bytes), each remembering which of the file's rows it
//! carries so the API's per-batch row numbers become the file's again.
//!
//! A CSV batch is the file's header line followed by its rows' own bytes, unchanged. A JSON
//! batch is an array of the file's items. Ids a file repeats are refused here, across the whole
//! file: the API can only see the repeats inside one request.

use crate::cli::FileFormat;
use crate::error::{Error, Result};
use enrollment_input::import::{
    json_items, json_rows, parse_csv_file, Outcome, Repeats, RowResult, MAX_BODY_BYTES, MAX_ROWS,
};
use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;

/// A batch's room left for anything but rows (the header line, JSON brackets).
const BODY_MARGIN: usize = 64 * 1024;

/// What the local check says of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It keeps every rule that can be checked without the registry.
    Valid,
    /// It breaks a rule; the API would refuse it the same way.
    Invalid(String),
    /// It repeats an id an earlier row has; it is not sent.
    Repeat(String),
}

/// One row of the file as the local check sees it.
#[derive(Debug, Clone)]
pub struct CheckedRow {
    /// The file's row number (CSV: data rows after the header, from 1; JSON: position from 1).
    pub row: usize,
    /// Its registration id, when it has one.
    pub registration_id: Option<String>,
    /// The verdict.
    pub verdict: Verdict,
}

/// One request's worth of rows.
#[derive(Debug)]
pub struct Batch {
    /// `text/csv` or `application/json`.
    pub content_type: &'static str,
    /// The request body.
    pub body: Vec<u8>,
    /// The file row number of each row in the body, in order.
    pub rows: Vec<usize>,
}

/// A file, checked and cut into batches.
#[derive(Debug)]
pub struct Plan {
    /// Every row's local verdict, in file order.
    pub checked: Vec<CheckedRow>,
    /// The requests to send (rows refused as repeats are in none of them).
    pub batches: Vec<Batch>,
}

/// The format of `path`: as asked, else from its extension, else from its first character.
pub fn format_of(path: &Path, asked: Option<FileFormat>, body: &[u8]) -> FileFormat {
    if let Some(format) = asked {
        return format;
    }
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("csv") => FileFormat::Csv,
        Some("json") => FileFormat::Json,
        _ if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') => FileFormat::Json,
        _ => FileFormat::Csv,
    }
}

/// Checks every row of the file.
pub fn check(format: FileFormat, body: &[u8]) -> Result<Vec<CheckedRow>> {
    let rows = match format {
        FileFormat::Csv => parse_csv_file(body),
        FileFormat::Json => json_items(body).map(json_rows),
    }
    .map_err(|e| Error::Usage(format!("the file cannot be imported: {e}")))?;
    let mut repeats = Repeats::default();
    Ok(rows
        .into_iter()
        .map(|row| {
            let verdict = match row.input.map(|input| input.check()) {
                Err(message) => Verdict::Invalid(message),
                Ok(Err(invalid)) => Verdict::Invalid(invalid.0),
                Ok(Ok(checked)) => {
                    match repeats.check(row.row, &checked.registration_id, &checked.device_id) {
                        Ok(()) => Verdict::Valid,
                        Err(message) => Verdict::Repeat(message),
                    }
                }
            };
            CheckedRow {
                row: row.row,
                registration_id: row.registration_id,
                verdict,
            }
        })
        .collect())
}

/// Checks the file and cuts it into batches of at most `batch_rows` rows.
pub fn plan(format: FileFormat, body: &[u8], batch_rows: usize) -> Result<Plan> {
    plan_within(
        format,
        body,
        batch_rows,
        MAX_BODY_BYTES as usize - BODY_MARGIN,
    )
}

fn plan_within(
    format: FileFormat,
    body: &[u8],
    batch_rows: usize,
    max_bytes: usize,
) -> Result<Plan> {
    let checked = check(format, body)?;
    let send: HashSet<usize> = checked
        .iter()
        .filter(|r| !matches!(r.verdict, Verdict::Repeat(_)))
        .map(|r| r.row)
        .collect();
    let batch_rows = batch_rows.clamp(1, MAX_ROWS);
    let batches = match format {
        FileFormat::Csv => csv_batches(body, &send, batch_rows, max_bytes)?,
        FileFormat::Json => json_batches(body, &send, batch_rows, max_bytes)?,
    };
    Ok(Plan { checked, batches })
}

/// Cuts `pieces` (file row, bytes) into runs within the limits.
fn group(
    pieces: Vec<(usize, Vec<u8>)>,
    batch_rows: usize,
    max_bytes: usize,
) -> Vec<Vec<(usize, Vec<u8>)>> {
    let mut groups: Vec<Vec<(usize, Vec<u8>)>> = Vec::new();
    let mut size = 0;
    for piece in pieces {
        let full = groups
            .last()
            .is_none_or(|g| g.len() >= batch_rows || size + piece.1.len() > max_bytes);
        if full {
            groups.push(Vec::new());
            size = 0;
        }
        size += piece.1.len();
        if let Some(last) = groups.last_mut() {
            last.push(piece);
        }
    }
    groups
}

/// The header line's and each record's byte ranges, as the csv crate reads records (the same
/// reader settings as the handler's parser, so record `i` is row `i + 1` there too).
fn csv_ranges(body: &[u8]) -> Result<(Range<usize>, Vec<Range<usize>>)> {
    let unreadable = |e: csv::Error| Error::Usage(format!("the CSV file is unreadable: {e}"));
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(false)
        .from_reader(body);
    let mut record = csv::ByteRecord::new();
    if !reader.read_byte_record(&mut record).map_err(unreadable)? {
        return Err(Error::Usage("the CSV file is empty".into()));
    }
    let header = 0..boundary(body, &reader);
    let mut ranges = Vec::new();
    loop {
        let start = boundary(body, &reader);
        if !reader.read_byte_record(&mut record).map_err(unreadable)? {
            break;
        }
        ranges.push(start..boundary(body, &reader));
    }
    Ok((header, ranges))
}

/// Where the reader stands, past a whole CRLF: after a record it stops between `\r` and `\n`.
fn boundary(body: &[u8], reader: &csv::Reader<&[u8]>) -> usize {
    let at = usize::try_from(reader.position().byte()).unwrap_or(body.len());
    match (at.checked_sub(1).map(|i| body[i]), body.get(at)) {
        (Some(b'\r'), Some(b'\n')) => at + 1,
        _ => at.min(body.len()),
    }
}

/// Bytes ending in a line break.
fn terminated(bytes: &[u8]) -> Vec<u8> {
    let mut owned = bytes.to_vec();
    if !matches!(owned.last(), Some(b'\n' | b'\r')) {
        owned.push(b'\n');
    }
    owned
}

fn csv_batches(
    body: &[u8],
    send: &HashSet<usize>,
    batch_rows: usize,
    max_bytes: usize,
) -> Result<Vec<Batch>> {
    let (header, ranges) = csv_ranges(body)?;
    let header = terminated(&body[header]);
    let pieces = ranges
        .into_iter()
        .enumerate()
        .filter(|(index, _)| send.contains(&(index + 1)))
        .map(|(index, range)| (index + 1, terminated(&body[range])))
        .collect();
    Ok(
        group(pieces, batch_rows, max_bytes.saturating_sub(header.len()))
            .into_iter()
            .map(|group| {
                let mut bytes = header.clone();
                let mut rows = Vec::with_capacity(group.len());
                for (row, piece) in group {
                    bytes.extend_from_slice(&piece);
                    rows.push(row);
                }
                Batch {
                    content_type: "text/csv",
                    body: bytes,
                    rows,
                }
            })
            .collect(),
    )
}

fn json_batches(
    body: &[u8],
    send: &HashSet<usize>,
    batch_rows: usize,
    max_bytes: usize,
) -> Result<Vec<Batch>> {
    let items =
        json_items(body).map_err(|e| Error::Usage(format!("the file cannot be imported: {e}")))?;
    let pieces = items
        .iter()
        .enumerate()
        .filter(|(index, _)| send.contains(&(index + 1)))
        .map(|(index, item)| (index + 1, serde_json::to_vec(item).unwrap_or_default()))
        .collect();
    Ok(group(pieces, batch_rows, max_bytes)
        .into_iter()
        .map(|group| {
            let mut bytes = vec![b'['];
            let mut rows = Vec::with_capacity(group.len());
            for (i, (row, piece)) in group.into_iter().enumerate() {
                if i > 0 {
                    bytes.push(b',');
                }
                bytes.extend_from_slice(&piece);
                rows.push(row);
            }
            bytes.push(b']');
            Batch {
                content_type: "application/json",
                body: bytes,
                rows,
            }
        })
        .collect())
}

impl Batch {
    /// The API's results for this batch with the file's row numbers.
    pub fn renumber(&self, results: Vec<RowResult>) -> Result<Vec<RowResult>> {
        results
            .into_iter()
            .map(|mut result| {
                let row = result
                    .row
                    .checked_sub(1)
                    .and_then(|index| self.rows.get(index))
                    .ok_or_else(|| {
                        Error::Unexpected(format!(
                            "the import answered a result for row {} of a batch of {} rows",
                            result.row,
                            self.rows.len()
                        ))
                    })?;
                result.row = *row;
                Ok(result)
            })
            .collect()
    }

    /// Every row of the batch as failed, when its request failed as a whole.
    pub fn failed(&self, checked: &[CheckedRow], reason: &str) -> Vec<RowResult> {
        self.rows
            .iter()
            .map(|row| RowResult {
                row: *row,
                registration_id: checked
                    .iter()
                    .find(|c| c.row == *row)
                    .and_then(|c| c.registration_id.clone()),
                outcome: Outcome::Failed,
                message: Some(format!("{reason}; run the import again to finish this row")),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv_file(rows: usize) -> String {
        let mut text = String::from("registrationId,customerId,Serial Number\n");
        for i in 1..=rows {
            text.push_str(&format!("dev-{i},acme,SN{i}\n"));
        }
        text
    }

    #[test]
    fn a_csv_file_is_cut_into_batches_that_keep_the_header_and_the_rows_bytes() {
        let text = "registrationId,customerId,note\r\na,acme,\"two\nlines\"\r\n\r\nb,acme,\"x,y\"\r\nc,acme,last";
        let plan = plan(FileFormat::Csv, text.as_bytes(), 2).unwrap();
        assert_eq!(plan.batches.len(), 2);
        assert_eq!(plan.batches[0].rows, vec![1, 2]);
        assert_eq!(plan.batches[1].rows, vec![3]);
        let first = String::from_utf8(plan.batches[0].body.clone()).unwrap();
        assert_eq!(
            first,
            "registrationId,customerId,note\r\na,acme,\"two\nlines\"\r\n\r\nb,acme,\"x,y\"\r\n"
        );
        let second = String::from_utf8(plan.batches[1].body.clone()).unwrap();
        assert_eq!(second, "registrationId,customerId,note\r\nc,acme,last\n");
        // The handler reads each batch into the rows the file holds.
        let parsed = enrollment_input::import::parse_csv(&plan.batches[0].body).unwrap();
        assert_eq!(parsed[1].registration_id.as_deref(), Some("b"));
    }

    #[test]
    fn twenty_five_thousand_rows_go_in_requests_the_api_accepts_numbered_as_in_the_file() {
        let text = csv_file(25_000);
        let plan = plan(FileFormat::Csv, text.as_bytes(), 10_000).unwrap();
        let sizes: Vec<usize> = plan.batches.iter().map(|b| b.rows.len()).collect();
        assert_eq!(sizes, vec![10_000, 10_000, 5_000]);
        let last = &plan.batches[2];
        assert_eq!(last.rows[0], 20_001);
        let parsed = enrollment_input::import::parse_csv(&last.body).unwrap();
        assert_eq!(parsed.len(), 5_000);
        assert_eq!(parsed[0].registration_id.as_deref(), Some("dev-20001"));
        let answered = vec![RowResult {
            row: 1,
            registration_id: Some("dev-20001".into()),
            outcome: Outcome::Created,
            message: None,
        }];
        assert_eq!(last.renumber(answered).unwrap()[0].row, 20_001);
        let beyond = vec![RowResult {
            row: 5_001,
            registration_id: None,
            outcome: Outcome::Created,
            message: None,
        }];
        assert!(last.renumber(beyond).is_err());
    }

    #[test]
    fn batches_stay_under_the_byte_limit() {
        let text = csv_file(100);
        let plan = plan_within(FileFormat::Csv, text.as_bytes(), 1000, 400).unwrap();
        assert!(plan.batches.len() > 1);
        assert!(
            plan.batches.iter().all(|b| b.body.len() <= 400 + 64),
            "{:?}",
            plan.batches
                .iter()
                .map(|b| b.body.len())
                .collect::<Vec<_>>()
        );
        let rows: Vec<usize> = plan.batches.iter().flat_map(|b| b.rows.clone()).collect();
        assert_eq!(rows, (1..=100).collect::<Vec<_>>());
    }

    #[test]
    fn an_id_repeated_in_another_batch_is_refused_here_and_not_sent() {
        let text = "registrationId,customerId\na,acme\nb,acme\nA,acme\nbad id,acme\n";
        let plan = plan(FileFormat::Csv, text.as_bytes(), 2).unwrap();
        assert_eq!(
            plan.checked[2].verdict,
            Verdict::Repeat("registrationId repeats row 1".into())
        );
        assert!(
            matches!(&plan.checked[3].verdict, Verdict::Invalid(m) if m.contains("registrationId"))
        );
        let sent: Vec<usize> = plan.batches.iter().flat_map(|b| b.rows.clone()).collect();
        assert_eq!(
            sent,
            vec![1, 2, 4],
            "the invalid row still goes, for the API's verdict"
        );
    }

    #[test]
    fn a_json_file_is_cut_into_arrays() {
        let text = r#"[{"registrationId":"a","customer":{"id":"c"}},{"registrationId":"b","customer":{"id":"c"}},{"registrationId":"c"}]"#;
        let plan = plan(FileFormat::Json, text.as_bytes(), 2).unwrap();
        assert_eq!(plan.batches.len(), 2);
        let second: serde_json::Value = serde_json::from_slice(&plan.batches[1].body).unwrap();
        assert_eq!(second[0]["registrationId"], "c");
        assert_eq!(plan.batches[1].rows, vec![3]);
        assert!(matches!(&plan.checked[2].verdict, Verdict::Invalid(m) if m.contains("customer")));
    }

    #[test]
    fn the_format_comes_from_the_extension_or_the_first_character() {
        assert_eq!(format_of(Path::new("x.JSON"), None, b"a"), FileFormat::Json);
        assert_eq!(format_of(Path::new("-"), None, b"  [{}]"), FileFormat::Json);
        assert_eq!(
            format_of(Path::new("export.txt"), None, b"registrationId"),
            FileFormat::Csv
        );
        assert_eq!(
            format_of(Path::new("x.json"), Some(FileFormat::Csv), b"["),
            FileFormat::Csv
        );
    }
}
