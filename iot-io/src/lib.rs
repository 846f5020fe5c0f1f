//! Files and connections that every program of the workspace (the handler, the device, the
//! emulator) opens the same way, so that each rule has one home.
//!
//! Layout:
//! - [`atomic_file`]: replacing a file so that a reader or a crash sees the old bytes or the new,
//!   never a mix, and the new ones are on disk when the call returns.
//! - [`https`]: the HTTPS client builder that trusts the public roots plus one extra CA (the
//!   emulator's, in development), with the timeouts a caller names.

pub mod atomic_file;
pub mod https;
