//! Retry policy: capped exponential backoff with full jitter (the AWS architecture blog's
//! "full jitter"), used for handler calls and sink deliveries alike.

use std::time::Duration;

use crate::Entropy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial_ms: u64,
    pub max_ms: u64,
    /// Attempts in all, the first included; after the last one the message is dead-lettered.
    pub max_attempts: u32,
}

impl Backoff {
    /// The delay before attempt `attempt + 1`, given that `attempt` (1-based) just failed:
    /// uniform in `[0, min(max, initial * 2^(attempt-1))]`.
    pub fn delay(&self, attempt: u32, entropy: &Entropy) -> Duration {
        let exp = attempt.saturating_sub(1).min(32);
        let ceiling = self.initial_ms.saturating_mul(1u64 << exp).min(self.max_ms);
        Duration::from_millis(entropy.below(ceiling + 1))
    }

    /// The delay before attempt `attempt + 1` without jitter: `min(max, initial * 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(32);
        Duration::from_millis(self.initial_ms.saturating_mul(1u64 << exp).min(self.max_ms))
    }

    pub fn exhausted(&self, attempt: u32) -> bool {
        attempt >= self.max_attempts
    }
}

/// Retrying a journal call that failed for a transient reason (an I/O error the writer recovers
/// from by reopening the file, a full disk that drains): no jitter, since the one writer is the
/// only contender, and no limit, since giving up would leave entries in the backlog.
pub const JOURNAL_RETRY: Backoff = Backoff {
    initial_ms: 10,
    max_ms: 5000,
    max_attempts: u32::MAX,
};

/// Calls `op` until it succeeds or fails for good (`transient` is false), waiting
/// [`Backoff::ceiling`] between attempts and logging `what` at each failure.
pub async fn retry_transient<T, E, Fut>(
    backoff: Backoff,
    what: &'static str,
    mut op: impl FnMut() -> Fut,
    transient: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if transient(&e) && !backoff.exhausted(attempt) => {
                tracing::warn!(error = %e, "{what}");
                tokio::time::sleep(backoff.ceiling(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_is_capped_and_grows() {
        let b = Backoff {
            initial_ms: 10,
            max_ms: 1000,
            max_attempts: 5,
        };
        let e = Entropy::from_seed(7);
        for attempt in 1..40 {
            let d = b.delay(attempt, &e).as_millis() as u64;
            let ceiling = (10u64 << (attempt - 1).min(32)).min(1000);
            assert!(d <= ceiling, "attempt {attempt}: {d} > {ceiling}");
        }
        assert!(!b.exhausted(4));
        assert!(b.exhausted(5));
    }

    /// Full jitter: the delays spread over the whole of `[0, ceiling]`, so retries of many
    /// clients do not fall into step.
    #[test]
    fn the_delay_is_spread_over_the_whole_range() {
        let b = Backoff {
            initial_ms: 10,
            max_ms: 1000,
            max_attempts: 5,
        };
        let e = Entropy::from_seed(11);
        let delays: Vec<u64> = (0..2000)
            .map(|_| b.delay(5, &e).as_millis() as u64)
            .collect();
        let mean = delays.iter().sum::<u64>() as f64 / delays.len() as f64;
        assert!((70.0..=90.0).contains(&mean), "mean {mean}, ceiling 160");
        assert!(delays.iter().any(|d| *d < 16), "none in the lowest tenth");
        assert!(delays.iter().any(|d| *d > 144), "none in the highest tenth");
    }
}
