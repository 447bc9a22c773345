//! The seams to the outside world that the simulator replaces, and the small pieces every task
//! uses: the clock and seeded randomness (`clock.rs`), spawning tasks that a simulated crash can
//! abort (`spawn.rs`), and retry backoff with jitter (`backoff.rs`).

mod backoff;
mod clock;
mod spawn;

use std::future::Future;
use std::pin::Pin;

pub use backoff::{Backoff, JOURNAL_RETRY, retry_transient};
pub use clock::{Clock, Entropy, SharedClock, SystemClock};
pub use spawn::{Tracker, spawn};

/// A boxed future, as the hops' traits ([`Handler`](crate::Handler),
/// [`Sink`](crate::sink::Sink)) return it.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
