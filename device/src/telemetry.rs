//! Where telemetry comes from: a JSON-lines file replayed in a loop, with `$UTC_TIME$` replaced
//! by the current time (the format the old demo used), or a simulated sensor.

use serde_json::json;
use std::path::Path;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The placeholder replaced in file lines.
pub(crate) const TIME_PLACEHOLDER: &str = "$UTC_TIME$";

/// A telemetry source.
#[derive(Debug)]
pub enum Source {
    /// Lines of a file, in a loop.
    File {
        /// The lines (non-empty).
        lines: Vec<String>,
        /// The next one.
        next: usize,
    },
    /// A sensor drifting slowly.
    Simulated {
        /// Temperature, °C.
        temperature: f64,
        /// Relative humidity, %.
        humidity: f64,
        /// Readings so far.
        count: u64,
    },
}

fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// A number in [-1, 1] from the OS generator.
fn wobble() -> f64 {
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    f64::from(byte[0]) / 127.5 - 1.0
}

impl Source {
    /// The lines of a JSON-lines file; each must be a JSON document once the placeholder is filled.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let lines: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if lines.is_empty() {
            return Err(format!("{} has no lines", path.display()));
        }
        for (n, line) in lines.iter().enumerate() {
            serde_json::from_str::<serde_json::Value>(&line.replace(TIME_PLACEHOLDER, &now()))
                .map_err(|e| format!("{} line {}: not JSON: {e}", path.display(), n + 1))?;
        }
        Ok(Source::File { lines, next: 0 })
    }

    /// A simulated temperature and humidity sensor.
    pub fn simulated() -> Self {
        Source::Simulated {
            temperature: 21.0,
            humidity: 45.0,
            count: 0,
        }
    }

    /// The next message body.
    pub(crate) fn next_body(&mut self) -> String {
        match self {
            Source::File { lines, next } => {
                let line = lines[*next % lines.len()].replace(TIME_PLACEHOLDER, &now());
                *next += 1;
                line
            }
            Source::Simulated {
                temperature,
                humidity,
                count,
            } => {
                *temperature = (*temperature + wobble() * 0.2).clamp(-20.0, 60.0);
                *humidity = (*humidity + wobble() * 0.5).clamp(0.0, 100.0);
                *count += 1;
                json!({
                    "temperature": (*temperature * 100.0).round() / 100.0,
                    "humidity": (*humidity * 100.0).round() / 100.0,
                    "reading": count,
                    "time": now(),
                })
                .to_string()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_lines_loop_with_the_time_filled_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, "{\"t\":1,\"at\":\"$UTC_TIME$\"}\n\n{\"t\":2}\n").unwrap();
        let mut source = Source::from_file(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(&source.next_body()).unwrap();
        assert!(first["at"].as_str().unwrap().starts_with("20"));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&source.next_body()).unwrap()["t"],
            2
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&source.next_body()).unwrap()["t"],
            1
        );
        std::fs::write(&path, "not json\n").unwrap();
        assert!(Source::from_file(&path).unwrap_err().contains("line 1"));
    }

    #[test]
    fn the_simulated_sensor_produces_readings() {
        let mut source = Source::simulated();
        let reading: serde_json::Value = serde_json::from_str(&source.next_body()).unwrap();
        assert_eq!(reading["reading"], 1);
        assert!(reading["temperature"].as_f64().is_some());
    }
}
