//! Every log line of a test, kept in memory and searched for secrets: the stand-in and
//! emulator, the handler it supervises (its output comes through the stand-in), and whatever
//! else logs in the test's process, at trace level.

use std::sync::Arc;

/// Log output kept in memory, for the whole test.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<std::sync::Mutex<Vec<u8>>>);

/// Keeps a capture in place; dropping it ends the capture.
pub struct Capturing {
    _default: tracing::subscriber::DefaultGuard,
    _second: tracing::Dispatch,
}

impl LogCapture {
    /// Makes this capture the test thread's subscriber, at trace level, until the guard drops.
    /// The runtime of a plain #[tokio::test] is this thread, so everything in process logs here.
    pub fn install(&self) -> Capturing {
        // Dependencies that log through the `log` crate (rumqttc, rustls) are heard too. Another
        // test may have installed the bridge already; either way it forwards to this capture.
        let _ = tracing_log::LogTracer::init();
        let default = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(self.clone())
                .finish(),
        );
        // With a single dispatcher registered, tracing-core decides each new callsite's
        // interest by the default of the thread that reaches it first (tracing-core
        // src/callsite.rs, `Rebuilder::JustOne`): a sender running on another test's thread,
        // with no subscriber, would switch this capture's callsites off for good. A second
        // registered dispatcher makes it ask every dispatcher instead.
        let second = tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(std::io::sink)
                .finish(),
        );
        Capturing {
            _default: default,
            _second: second,
        }
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

/// The log lines that hold a secret, named: each known secret in the forms it travels in
/// (base64, URL-safe base64 without padding, percent-encoded), and anything shaped like a SAS
/// signature or an unredacted connection-string key, whoever created it.
pub fn find_secrets(text: &str, secrets: &[(String, String)]) -> Vec<(String, String)> {
    let mut leaks = Vec::new();
    for line in text.lines() {
        for (name, secret) in secrets {
            let url_safe = secret
                .trim_end_matches('=')
                .replace('+', "-")
                .replace('/', "_");
            let percent = secret
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D");
            if [secret.as_str(), &url_safe, &percent]
                .iter()
                .any(|form| form.len() >= 16 && line.contains(form))
            {
                leaks.push((name.clone(), line.to_owned()));
            }
        }
        let lower = line.to_ascii_lowercase();
        for marker in ["sig=", "sharedaccesskey=", "accountkey="] {
            let mut rest = lower.as_str();
            while let Some(at) = rest.find(marker) {
                let value = &rest[at + marker.len()..];
                let shown: String = value
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || "%+/=-_".contains(*c))
                    .collect();
                if shown.len() >= 8 {
                    leaks.push((format!("a value after {marker}"), line.to_owned()));
                }
                rest = value;
            }
        }
    }
    leaks
}
