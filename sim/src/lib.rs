//! sidelog-sim: the deterministic fault-injection simulator of sidelog.
//!
//! It drives sidelog's own code (the pipeline `serve` builds: journal, modes, delivery, retries,
//! replay, dedup) on one current-thread tokio runtime with paused time, against a simulated disk
//! (a redb `StorageBackend` that loses unsynced pages on a crash and injects I/O errors), a
//! simulated handler and sink that crash, slow down and fail, and links that drop, delay,
//! duplicate and partition. One seed fixes all of it; the run's event trace has a hash that two
//! runs of one seed must agree on. Checkers then compare what reached the sink with what was
//! acknowledged. In the spirit of FoundationDB's simulation and TigerBeetle's VOPR.

pub mod disk;
pub mod world;

pub use world::{Bug, Report, SimConfig, run};
