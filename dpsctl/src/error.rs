//! What can go wrong, in words an administrator can act on, and the exit status of each. No
//! message ever holds the function key: it lives in [`crate::config::ApiKey`], which prints
//! nothing, and the API's own messages never echo it.

use std::process::ExitCode;

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line or the configuration is incomplete or wrong.
    #[error("{0}")]
    Usage(String),
    /// The admin API could not be reached.
    #[error("cannot reach the admin API at {url}: {cause}")]
    Unreachable {
        /// The URL that was asked.
        url: String,
        /// Why, from the innermost error (connection refused, DNS, TLS, timeout).
        cause: String,
    },
    /// The admin API answered with an error.
    #[error("{method} {path} was refused: {status}{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Api {
        /// The request's method.
        method: String,
        /// The request's path below the API's base URL.
        path: String,
        /// The HTTP status (shown with its reason).
        status: reqwest::StatusCode,
        /// The API's error code, when it sent one.
        code: Option<String>,
        /// The API's message, or what the status means.
        message: String,
    },
    /// The admin API answered something that is not what its description promises.
    #[error("{0}")]
    Unexpected(String),
    /// A local file could not be read or written.
    #[error("{what}: {source}")]
    File {
        /// Which file and what was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Some rows of an import (or a dry run) were not enrolled; the table says which.
    #[error("{0}")]
    RowsNotEnrolled(String),
}

impl Error {
    /// The process's exit status: 2 for usage, 3 for an import with rows left over, 1 otherwise.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_) => ExitCode::from(2),
            Error::RowsNotEnrolled(_) => ExitCode::from(3),
            _ => ExitCode::from(1),
        }
    }
}

/// The result of a command.
pub type Result<T, E = Error> = std::result::Result<T, E>;
