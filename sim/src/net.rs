//! The links between the hops (drops, delays, duplicates, partitions) and the state of a hop
//! that can crash, slow down or fail.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{RngExt, SeedableRng, rngs::StdRng};
use tokio::time::Instant;

use crate::report::FaultCounts;

/// How long a caller waits for a lost request or response before it gives up.
pub(crate) const LOST_AFTER: Duration = Duration::from_secs(3);

/// Fault rates of a link.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LinkFaults {
    pub(crate) drop_request: f64,
    pub(crate) drop_response: f64,
    pub(crate) duplicate: f64,
    pub(crate) delay_max_ms: u64,
}

/// What the link does to one call, drawn up front so the draw order is fixed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fate {
    pub(crate) delay_out: Duration,
    pub(crate) delay_back: Duration,
    pub(crate) drop_request: bool,
    pub(crate) drop_response: bool,
    pub(crate) duplicate: bool,
}

/// A network link between two hops.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) name: &'static str,
    pub(crate) rng: Mutex<StdRng>,
    pub(crate) faults: Mutex<LinkFaults>,
    pub(crate) partitioned_until: Mutex<Option<Instant>>,
    pub(crate) counts: Arc<Mutex<FaultCounts>>,
}

impl Link {
    pub(crate) fn new(
        name: &'static str,
        seed: u64,
        faults: LinkFaults,
        counts: Arc<Mutex<FaultCounts>>,
    ) -> Arc<Link> {
        Arc::new(Link {
            name,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            faults: Mutex::new(faults),
            partitioned_until: Mutex::new(None),
            counts,
        })
    }

    pub(crate) fn fate(&self) -> Fate {
        let f = *self.faults.lock().expect("never held across a panic");
        let mut rng = self.rng.lock().expect("never held across a panic");
        let partitioned = self
            .partitioned_until
            .lock()
            .expect("never held across a panic")
            .is_some_and(|until| Instant::now() < until);
        let fate = Fate {
            delay_out: Duration::from_millis(rng.random_range(0..=f.delay_max_ms)),
            delay_back: Duration::from_millis(rng.random_range(0..=f.delay_max_ms)),
            drop_request: partitioned || rng.random_bool(f.drop_request),
            drop_response: rng.random_bool(f.drop_response),
            duplicate: rng.random_bool(f.duplicate),
        };
        let mut c = self.counts.lock().expect("never held across a panic");
        c.dropped_requests += u64::from(fate.drop_request && !partitioned);
        c.dropped_responses += u64::from(fate.drop_response);
        c.duplicated_requests += u64::from(fate.duplicate);
        fate
    }

    pub(crate) fn partition(&self, until: Instant) {
        *self
            .partitioned_until
            .lock()
            .expect("never held across a panic") = Some(until);
    }

    pub(crate) fn heal(&self) {
        *self.faults.lock().expect("never held across a panic") = LinkFaults::default();
        *self
            .partitioned_until
            .lock()
            .expect("never held across a panic") = None;
    }
}

/// The state of a hop (handler or sink) that can crash, slow down or fail.
#[derive(Debug, Default)]
pub(crate) struct Hop {
    pub(crate) down_until: Option<Instant>,
    pub(crate) slow_until: Option<Instant>,
    pub(crate) failing_until: Option<Instant>,
    /// Bumped by each crash: a call in progress across a crash gets no answer.
    pub(crate) epoch: u64,
}

impl Hop {
    pub(crate) fn until(t: Option<Instant>) -> bool {
        t.is_some_and(|t| Instant::now() < t)
    }
}
