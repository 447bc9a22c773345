//! sidelog-sim: the deterministic fault-injection simulator of sidelog.
//!
//! It drives sidelog's own code (the pipeline `serve` builds: journal, modes, delivery, retries,
//! replay, dedup) on one current-thread tokio runtime with paused time, against a simulated disk
//! (a redb `StorageBackend` that loses unsynced pages on a crash and injects I/O errors), a
//! simulated handler and sink that crash, slow down and fail, and links that drop, delay,
//! duplicate and partition. One seed fixes all of it; the run's event trace has a hash that two
//! runs of one seed must agree on. Checkers then compare what reached the sink with what was
//! acknowledged. In the spirit of FoundationDB's simulation and TigerBeetle's VOPR.
//!
//! `run.rs` runs one seed; `world.rs` holds its world and starts sidelog in it; `disk.rs`,
//! `net.rs` and `hops.rs` are the simulated disk, links, handler and sink; `check.rs` the
//! checkers; `model.rs` a model-based test of the journal through crashes; `trace.rs` the clock
//! and the trace; `settings.rs` and `report.rs` what goes in and
//! what comes out.

mod check;
pub mod disk;
mod hops;
#[cfg(test)]
mod model;
mod net;
mod report;
mod run;
mod settings;
mod trace;
mod world;

pub use report::{Coverage, FaultCounts, Report};
pub use run::run;
pub use settings::{Bug, SimConfig};
