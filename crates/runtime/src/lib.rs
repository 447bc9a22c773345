//! The seams to the outside world that the simulator replaces, and the small pieces every task
//! uses: the clock and seeded randomness (`clock.rs`), spawning tasks that a simulated crash can
//! abort (`spawn.rs`), retry backoff with jitter (`backoff.rs`), filesystem steps that state
//! their durability (`fs.rs`), and rate-limited warnings (`warn_limit.rs`).
//!
//! It knows nothing of messages, the journal or the network: every other sidelog crate builds
//! on it, and it on tokio alone.

mod backoff;
mod clock;
mod fs;
mod spawn;
mod warn_limit;

use std::future::Future;
use std::pin::Pin;

pub use backoff::{Backoff, JOURNAL_RETRY, retry_transient};
pub use clock::{Clock, Entropy, SharedClock, SystemClock};
pub use fs::{create_dir_all_durably, sync_dir};
pub use spawn::{Detachable, Tracker, detachable, spawn};
pub use warn_limit::{WARN_EVERY, WarnLimit};

/// A boxed future, as the hops' traits (`Handler`, `Sink`) return it.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
