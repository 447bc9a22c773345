//! The task-spawning seam.
//!
//! Library code spawns through [`spawn`]. In production it is `tokio::spawn`. Inside
//! [`Tracker::scope`] every task spawned (and every task those spawn) is registered with the
//! tracker, so that [`Tracker::abort_all`] stops all of them at once: the simulator's crash of a
//! sidelog process. An aborted task is never polled again, exactly as if the process had died.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::task::{AbortHandle, JoinHandle};

tokio::task_local! {
    static TRACKER: Tracker;
}

/// Every task of one simulated process.
#[derive(Debug, Clone, Default)]
pub struct Tracker(Arc<Mutex<Vec<AbortHandle>>>);

/// Finished handles are pruned once the list grows past this.
const PRUNE_AT: usize = 4096;

impl Tracker {
    /// Runs `fut` so that what it spawns is tracked.
    pub async fn scope<F: Future>(&self, fut: F) -> F::Output {
        TRACKER.scope(self.clone(), fut).await
    }

    fn add(&self, handle: AbortHandle) {
        let mut handles = self.0.lock().expect("never held across a panic");
        if handles.len() >= PRUNE_AT {
            handles.retain(|h| !h.is_finished());
        }
        handles.push(handle);
    }

    /// Spawns `fut` as a task of this tracker, as a server spawns a task per request.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = tokio::spawn(TRACKER.scope(self.clone(), fut));
        self.add(handle.abort_handle());
        handle
    }

    /// Stops every tracked task.
    pub fn abort_all(&self) {
        for h in self.0.lock().expect("never held across a panic").drain(..) {
            h.abort();
        }
    }
}

/// Spawns a task, tracked when called inside [`Tracker::scope`].
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match TRACKER.try_with(Tracker::clone) {
        Ok(tracker) => tracker.spawn(fut),
        Err(_) => tokio::spawn(fut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn abort_all_stops_nested_tasks() {
        let tracker = Tracker::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tracker
            .scope(async {
                spawn(async move {
                    spawn(async move {
                        loop {
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            if tx.send(()).is_err() {
                                break;
                            }
                        }
                    });
                });
            })
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(35)).await;
        assert!(rx.try_recv().is_ok(), "the nested task ran");
        tracker.abort_all();
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        while rx.try_recv().is_ok() {}
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err(), "an aborted task ran again");
    }
}
