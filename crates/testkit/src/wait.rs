//! Waiting for observed progress, with a deadline.

use std::time::Duration;

use tokio::time::Instant;

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
/// Must be used: a wait whose outcome nobody checks lets a test pass without its condition.
#[must_use = "assert it, or say with `let _ =` that a check follows"]
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Calls `check` every 100 ms until it answers `Some`, and returns that; panics after
/// `timeout` with `what()` (which may say what was seen last).
pub async fn poll_until<T, F, Fut>(timeout: Duration, what: impl Fn() -> String, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out: {}", what());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
