//! Writing results: rows as an aligned table or CSV, values as JSON, records as `name: value`
//! lines. Everything goes through a writer, so commands are tested without a process.

use crate::error::{Error, Result};
use comfy_table::{presets, ContentArrangement, Table};
use serde_json::Value;
use std::io::Write;

/// Rows with named columns, the shape of every list dpsctl prints.
pub struct Rows {
    /// Column headers.
    pub headers: Vec<&'static str>,
    /// One vector of cells per row, as many as there are headers.
    pub rows: Vec<Vec<String>>,
}

impl Rows {
    /// No rows yet, with these columns.
    pub fn new(headers: Vec<&'static str>) -> Self {
        Self {
            headers,
            rows: Vec::new(),
        }
    }

    /// Writes an aligned table (a header line, then the rows), or `empty` when there are none.
    pub fn write_table(&self, out: &mut dyn Write, empty: &str) -> Result<()> {
        if self.rows.is_empty() {
            return line(out, empty);
        }
        let mut table = Table::new();
        table
            .load_preset(presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(self.headers.clone());
        for row in &self.rows {
            table.add_row(row.clone());
        }
        // No margin before the first column (grep and cut see the first cell at the start of
        // the line); two spaces between columns.
        for column in table.column_iter_mut() {
            column.set_padding((0, 2));
        }
        for text in table.lines() {
            line(out, text.trim_end())?;
        }
        Ok(())
    }

    /// Writes CSV with a header row.
    pub fn write_csv(&self, out: &mut dyn Write) -> Result<()> {
        let mut writer = csv::Writer::from_writer(out);
        writer.write_record(&self.headers).map_err(csv_error)?;
        for row in &self.rows {
            writer.write_record(row).map_err(csv_error)?;
        }
        writer.flush().map_err(|source| Error::File {
            what: "writing the output".into(),
            source,
        })
    }
}

fn csv_error(error: csv::Error) -> Error {
    Error::File {
        what: "writing CSV".into(),
        source: std::io::Error::other(error.to_string()),
    }
}

/// Writes one line.
pub fn line(out: &mut dyn Write, text: &str) -> Result<()> {
    writeln!(out, "{text}").map_err(|source| Error::File {
        what: "writing the output".into(),
        source,
    })
}

/// Writes a value as indented JSON.
pub fn json(out: &mut dyn Write, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    line(out, &text)
}

/// `name: value` lines, names aligned; rows whose value is empty are left out.
pub fn fields(out: &mut dyn Write, pairs: &[(&str, String)]) -> Result<()> {
    let width = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(0);
    for (name, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        line(
            out,
            &format!("{:<width$}  {value}", format!("{name}:"), width = width + 1),
        )?;
    }
    Ok(())
}

/// A JSON value as a cell: strings bare, null empty, the rest as compact JSON.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Rows {
        let mut rows = Rows::new(vec!["ID", "CUSTOMER"]);
        rows.rows.push(vec!["dev-1".into(), "contoso".into()]);
        rows.rows.push(vec!["device-22".into(), "a, \"b\"".into()]);
        rows
    }

    #[test]
    fn a_table_aligns_its_columns_under_the_headers() {
        let mut out = Vec::new();
        sample().write_table(&mut out, "none").unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let column = lines[0].find("CUSTOMER").unwrap();
        assert_eq!(lines[1].find("contoso"), Some(column), "{text}");
        assert_eq!(lines[2].find("a, \"b\""), Some(column), "{text}");
    }

    #[test]
    fn csv_quotes_what_needs_quoting_and_an_empty_table_says_so() {
        let mut out = Vec::new();
        sample().write_csv(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ID,CUSTOMER\ndev-1,contoso\ndevice-22,\"a, \"\"b\"\"\"\n"
        );
        let mut out = Vec::new();
        Rows::new(vec!["ID"])
            .write_table(&mut out, "no devices")
            .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "no devices\n");
    }
}
