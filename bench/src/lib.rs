//! The benchmarks of `make bench`, apart from the product crates they measure.
//!
//! # Layout
//! - `bin/handler-bench.rs`: the handler next to Azurite (start-up, memory, request rates,
//!   events, the dashboard); the modules below hold what it is built from.
//! - [`drive`]: an operation run many times with clients in flight, timed.
//! - [`figures`]: rates, percentiles and the Markdown rows the reports print.
//! - [`memory`]: a process's resident memory from /proc.
//! - [`handler_process`]: the handler started as the Functions host starts it.
//! - [`event_mix`]: the `OnHubEvents` invocations the events phase sends.
//! - [`dashboard_fleet`]: the dashboard's fleet, written through the handler's storage code.
//! - [`azurite`]: Azurite's raw rates, the ceiling under the handler's.

pub mod azurite;
pub mod dashboard_fleet;
pub mod drive;
pub mod event_mix;
pub mod figures;
pub mod handler_process;
pub mod memory;
