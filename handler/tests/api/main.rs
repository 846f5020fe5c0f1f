//! The admin API end to end: requests through the Functions host stand-in (function keys,
//! forwarding) to the real handler, which talks to the emulator's DPS and hubs and stores in
//! Azurite. `make test` starts Azurite and sets AZURITE_TABLE_ENDPOINT.
// In a test crate a panic, with the failing call's message, is the failure report.
#![allow(clippy::unwrap_used)]

/// The handler cargo built for this run, which helpers.rs lays a function app out around when
/// `FUNCTION_APP` names no package.
const HANDLER_BINARY: Option<&str> = Some(env!("CARGO_BIN_EXE_handler"));

mod bad_input;
mod dashboard;
mod dependencies;
mod devices;
mod emulator_restart;
mod enrollments;
mod events;
mod faults;
mod helpers;
mod identity;
mod import;
mod keys;
mod logs;
mod mission;
mod poison;
mod rotation;
mod spans;
#[path = "../../../device/tests/support/webdriver.rs"]
mod webdriver;
