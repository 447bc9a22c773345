//! Rate-limited warnings: a sink or handler that is down fails every batch, and a WARN per
//! failure would bury the log (and fill the disk it is on). A [`WarnLimit`] lets one warning of
//! its kind through per period; the next one that gets through says how many were held back.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One kind of warning, let through at most once per period.
#[derive(Debug)]
pub struct WarnLimit {
    every: Duration,
    /// When one was last let through, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

/// The period of sidelog's rate-limited warnings.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

impl WarnLimit {
    pub const fn new(every: Duration) -> Self {
        WarnLimit {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last one)` when this warning is to be logged, `None` when it
    /// is held back (and counted).
    pub fn check(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self
            .state
            .lock()
            .expect("the warning limit is never held across a panic");
        match state.0 {
            Some(last) if now.duration_since(last) < self.every => {
                state.1 += 1;
                None
            }
            _ => {
                let held = std::mem::take(&mut state.1);
                state.0 = Some(now);
                Some(held)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_per_period_then_the_count_of_those_held_back() {
        let limit = WarnLimit::new(Duration::from_secs(10));
        assert_eq!(limit.check(), Some(0));
        for _ in 0..5 {
            assert_eq!(limit.check(), None);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(limit.check(), Some(5));
        assert_eq!(limit.check(), None);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(limit.check(), Some(1));
    }
}
