//! Whether a hop (the handler, the sink) is down, since when, and one warning per period while
//! it is: which hop, since when, how many entries wait in the journal, how many were
//! dead-lettered and how to re-queue them, the last error. When it answers again, one line says
//! it is back. Failures that heal are retried for as long as it takes; these lines are what an
//! operator watches meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;
use tracing::{info, warn};

use sidelog_journal::Backlog;
use sidelog_runtime::{SharedClock, WARN_EVERY, WarnLimit};

/// One hop's outage, if it is in one.
pub struct Outage {
    hop: &'static str,
    /// What waits in the journal (`None` in tests that have no journal).
    backlog: Option<Arc<Backlog>>,
    clock: SharedClock,
    down: Mutex<Option<Down>>,
    /// Whether `down` holds an outage: a success reads this alone (once per delivered batch).
    is_down: AtomicBool,
    warn: WarnLimit,
}

struct Down {
    since: Instant,
    since_ms: i64,
    failures: u64,
}

impl std::fmt::Debug for Outage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outage").field("hop", &self.hop).finish()
    }
}

impl Outage {
    pub fn new(hop: &'static str, backlog: Option<Arc<Backlog>>, clock: SharedClock) -> Outage {
        Outage {
            hop,
            backlog,
            clock,
            down: Mutex::new(None),
            is_down: AtomicBool::new(false),
            warn: WarnLimit::new(WARN_EVERY),
        }
    }

    /// A call to the hop failed in a way that can heal (it is retried).
    pub fn failed(&self, error: &str) {
        let (since, since_ms, failures) = {
            let mut down = self.down.lock().expect("never held across a panic");
            let d = down.get_or_insert_with(|| Down {
                since: Instant::now(),
                since_ms: self.clock.now_ms(),
                failures: 0,
            });
            d.failures += 1;
            self.is_down.store(true, Ordering::Release);
            (d.since, d.since_ms, d.failures)
        };
        // The first failure of an outage is always said; then one line per period.
        if self.warn.check().is_none() && failures > 1 {
            return;
        }
        let down_s = since.elapsed().as_secs();
        let since = chrono::DateTime::from_timestamp_millis(since_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        let (waiting, dead) = self
            .backlog
            .as_ref()
            .map_or((0, 0), |b| (b.entries(), b.dead_letters()));
        let hop = self.hop;
        let dead_letters = if dead > 0 {
            format!(", {dead} dead letters wait for `sidelog inspect requeue --all`")
        } else {
            String::new()
        };
        warn!(
            hop,
            since,
            down_s,
            failures,
            waiting_entries = waiting,
            dead_letters = dead,
            error,
            "the {hop} is down; retrying for as long as it takes, {waiting} entries wait in the journal{dead_letters}"
        );
    }

    /// A call to the hop succeeded: if it was down, it is back.
    pub fn succeeded(&self) {
        if !self.is_down.load(Ordering::Acquire) {
            return;
        }
        let was = {
            let mut down = self.down.lock().expect("never held across a panic");
            self.is_down.store(false, Ordering::Release);
            down.take()
        };
        if let Some(d) = was {
            info!(
                hop = self.hop,
                down_s = d.since.elapsed().as_secs(),
                failures = d.failures,
                "the {} is back",
                self.hop
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn down_from_the_first_failure_until_a_success() {
        let clock: SharedClock = Arc::new(sidelog_runtime::SystemClock);
        let outage = Outage::new("sink", None, clock);
        outage.succeeded();
        assert!(outage.down.lock().unwrap().is_none());
        outage.failed("refused");
        tokio::time::advance(std::time::Duration::from_secs(3)).await;
        outage.failed("refused");
        {
            let down = outage.down.lock().unwrap();
            let d = down.as_ref().expect("down");
            assert_eq!((d.failures, d.since.elapsed().as_secs()), (2, 3));
        }
        outage.succeeded();
        assert!(outage.down.lock().unwrap().is_none());
    }
}
