//! The run's clock (tokio's paused clock from a fixed epoch) and its event trace, whose hash
//! identifies the run: two runs of one seed must agree on it.

use std::sync::{Arc, Mutex};

use sidelog::runtime::Clock;
use tokio::time::Instant;

const EPOCH_MS: i64 = 1_800_000_000_000;

/// The simulation's clock: tokio's paused clock, from a fixed epoch.
#[derive(Debug)]
pub(crate) struct SimClock {
    pub(crate) start: Instant,
}

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        EPOCH_MS + self.start.elapsed().as_millis() as i64
    }
}

/// The event history; its hash identifies the run.
#[derive(Debug)]
pub(crate) struct Trace {
    pub(crate) start: Instant,
    pub(crate) events: Mutex<Vec<String>>,
}

impl Trace {
    pub(crate) fn log(&self, event: impl Into<String>) {
        let ms = self.start.elapsed().as_millis();
        self.events
            .lock()
            .expect("never held across a panic")
            .push(format!("{ms:>8} ms  {}", event.into()));
    }

    pub(crate) fn hash_and_tail(&self, tail: usize) -> (u64, Vec<String>) {
        let events = self.events.lock().expect("never held across a panic");
        if let Ok(path) = std::env::var("SIDELOG_SIM_TRACE_FILE") {
            let _ = std::fs::write(path, events.join("\n"));
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for e in events.iter() {
            for b in e.bytes().chain([b'\n']) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        (h, events[events.len().saturating_sub(tail)..].to_vec())
    }
}

/// Writes sidelog's tracing events into the trace.
#[derive(Clone)]
pub(crate) struct TraceWriter(pub(crate) Arc<Trace>);

impl std::io::Write for TraceWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        let line = line.trim_end();
        if !line.is_empty() {
            self.0.log(format!("sidelog: {line}"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for TraceWriter {
    type Writer = TraceWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
