//! The clock and randomness seams.
//!
//! Everything in sidelog that reads time or draws a random number does it through here, so that
//! the simulator can replace both and replay a run from its seed. Wall-clock time (`now_ms`) is
//! only used for values that are stored or reported (dedup ages, dead-letter times, chunk names);
//! durations (timeouts, backoff, linger) use tokio's clock, which tests and the simulator can
//! pause and advance. `clippy.toml` forbids the direct calls everywhere else.

use std::sync::{Arc, Mutex};

use rand::{RngExt, SeedableRng, rngs::StdRng};

/// The source of wall-clock time, in unix milliseconds.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now_ms(&self) -> i64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place that reads the system clock
    fn now_ms(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// A seeded random number generator shared by the components that need jitter.
///
/// A mutex around one generator keeps the sequence of draws reproducible for a given sequence of
/// calls; contention is negligible because draws happen only on retries and id assignment.
#[derive(Debug, Clone)]
pub struct Entropy(Arc<Mutex<StdRng>>);

impl Entropy {
    pub fn from_seed(seed: u64) -> Self {
        Entropy(Arc::new(Mutex::new(StdRng::seed_from_u64(seed))))
    }

    /// A generator seeded from the operating system's randomness: what must differ between
    /// runs that share a clock's millisecond (the journal's identity, the redo log's salts).
    pub fn from_os() -> std::io::Result<Self> {
        let rng = StdRng::try_from_rng(&mut rand::rngs::SysRng).map_err(std::io::Error::other)?;
        Ok(Entropy(Arc::new(Mutex::new(rng))))
    }

    /// A generator seeded from the system clock, for production runs.
    pub fn from_clock(clock: &dyn Clock) -> Self {
        Self::from_seed(clock.now_ms() as u64 ^ u64::from(std::process::id()).rotate_left(32))
    }

    /// A uniformly distributed value in `[0, upper)`; 0 when `upper` is 0.
    pub fn below(&self, upper: u64) -> u64 {
        if upper == 0 {
            return 0;
        }
        let mut rng = self
            .0
            .lock()
            .expect("the rng mutex is never held across a panic");
        rng.random_range(0..upper)
    }

    pub fn next_u64(&self) -> u64 {
        let mut rng = self
            .0
            .lock()
            .expect("the rng mutex is never held across a panic");
        rng.random()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two generators seeded from the operating system in the same millisecond differ (the
    /// clock-seeded ones of two processes that start together may not): what the journal's
    /// identity and the redo log's salts are drawn from in production.
    #[test]
    fn generators_seeded_from_the_os_differ_where_the_clock_is_the_same() {
        let (a, b) = (Entropy::from_os().unwrap(), Entropy::from_os().unwrap());
        assert_ne!(a.next_u64(), b.next_u64());
        let (c, d) = (Entropy::from_seed(5), Entropy::from_seed(5));
        assert_eq!(c.next_u64(), d.next_u64());
    }
}
