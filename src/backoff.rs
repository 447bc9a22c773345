//! Retry policy: capped exponential backoff with full jitter (the AWS architecture blog's
//! "full jitter"), used for handler calls and sink deliveries alike.

use std::time::Duration;

use crate::clock::Entropy;

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

    pub fn exhausted(&self, attempt: u32) -> bool {
        attempt >= self.max_attempts
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
}
