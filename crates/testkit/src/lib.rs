//! The test kit: what the integration tests (`tests/`) and `sidelog-bench` need to drive a real
//! sidelog from outside. Free loopback ports and in-process gRPC servers that can be stopped
//! and restarted (`net.rs`), a test sink and a test handler (`hops.rs`), the real `sidelog`
//! binary as a child process (`process.rs`), and polling with a deadline (`wait.rs`).
//!
//! The integration tests and `sidelog-bench` use it; the shipped `sidelog` binary does not
//! link it.

mod hops;
mod net;
mod process;
mod wait;

pub use hops::{Arrival, HandlerOutputs, TestHandler, TestSink, expected_outputs};
pub use net::{Restartable, free_port, is_serving, serve_on};
pub use process::{Sidelog, binary, find_program, inspect, proc_usage, summary_field};
pub use wait::{eventually, poll_until};
