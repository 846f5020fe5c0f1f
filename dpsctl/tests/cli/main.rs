//! dpsctl end to end: the real binary against the function app package running in the
//! emulator's Functions host stand-in, storing in the Azurite that `make test` started, with the
//! handler's own API-test harness (handler/tests/api/helpers.rs). `make test` sets
//! AZURITE_TABLE_ENDPOINT and FUNCTION_APP.
// In a test crate a panic, with the failing call's message, is the failure report.
#![allow(clippy::unwrap_used)]

/// Cargo builds no handler for this crate: the tests run the package `FUNCTION_APP` names.
const HANDLER_BINARY: Option<&str> = None;

mod devices;
mod enrollments;
// The handler's harness, shared; this crate uses only part of it.
#[allow(dead_code)]
#[path = "../../../handler/tests/api/helpers.rs"]
mod helpers;
mod import;
mod run;
mod terminal;
