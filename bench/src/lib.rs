//! The benchmarks of `make bench`, apart from the product crates they measure.
//!
//! # Layout
//! - `bin/handler-bench.rs`: the handler next to Azurite (start-up, memory, request rates,
//!   events, the dashboard).
//! - `bin/bench/`: the `bench` tool, one file per command (DPS, hub, event latency, import,
//!   storm, soak) against a running emulator.
//!
//! The modules below hold what they are built from:
//! - [`drive`]: an operation run many times with clients in flight, timed.
//! - [`figures`]: rates, percentiles and the Markdown rows the reports print.
//! - [`memory`]: a process's resident memory from /proc.
//! - [`handler_process`]: the handler started as the Functions host starts it.
//! - [`event_mix`]: the `OnHubEvents` invocations the events phase sends.
//! - [`dashboard_fleet`]: the dashboard's fleet, written through the handler's storage code.
//! - [`azurite`]: Azurite's raw rates, the ceiling under the handler's.
//! - [`hub_load`]: many device connections and telemetry bursts, to the emulator or a broker.
//! - [`storm`]: a provisioning storm, every device powered on at once.
//! - [`soak`]: a fleet kept busy while the servers' memory is sampled.
//! - [`memory_chart`]: the soak's samples as CSV, growth figures and an SVG chart.

pub mod azurite;
pub mod dashboard_fleet;
pub mod drive;
pub mod event_mix;
pub mod figures;
pub mod handler_process;
pub mod hub_load;
pub mod memory;
pub mod memory_chart;
pub mod soak;
pub mod storm;
