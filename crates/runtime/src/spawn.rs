//! The task-spawning seam.
//!
//! Library code spawns through [`spawn`]. In production it is `tokio::spawn`. Inside
//! [`Tracker::scope`] every task spawned (and every task those spawn) is registered with the
//! tracker, so that [`Tracker::abort_all`] stops all of them at once: the simulator's crash of a
//! sidelog process. An aborted task is never polled again, exactly as if the process had died.
//!
//! [`detachable`] runs work in the calling task that must not stop halfway when the caller is
//! dropped (a producer that went away): only then does the rest get a task of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::task::{AbortHandle, JoinHandle};

tokio::task_local! {
    static TRACKER: Tracker;
}

/// Every task of one simulated process.
#[derive(Debug, Clone, Default)]
pub struct Tracker(Arc<Tracked>);

#[derive(Debug, Default)]
struct Tracked {
    handles: Mutex<Vec<AbortHandle>>,
    /// Set by [`Tracker::abort_all`]: the process is dead, and what it spawns never runs.
    aborted: AtomicBool,
}

/// Finished handles are pruned once the list grows past this.
const PRUNE_AT: usize = 4096;

impl Tracker {
    /// Runs `fut` so that what it spawns is tracked.
    pub async fn scope<F: Future>(&self, fut: F) -> F::Output {
        TRACKER.scope(self.clone(), fut).await
    }

    fn add(&self, handle: AbortHandle) {
        if self.is_aborted() {
            handle.abort();
            return;
        }
        let mut handles = self.0.handles.lock().expect("never held across a panic");
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

    /// Stops every tracked task, and every task spawned from now on.
    pub fn abort_all(&self) {
        self.0.aborted.store(true, Ordering::SeqCst);
        for h in self
            .0
            .handles
            .lock()
            .expect("never held across a panic")
            .drain(..)
        {
            h.abort();
        }
    }

    fn is_aborted(&self) -> bool {
        self.0.aborted.load(Ordering::SeqCst)
    }
}

/// Runs `work` in the calling task: no task, no hand-over, no wake-up between tasks. If the
/// caller is dropped before `work` has finished, the rest of it runs in a task of its own
/// (tracked like any spawn; never once its simulated process was aborted, and not at all when
/// the runtime is gone), and its output is dropped.
pub fn detachable<F>(work: F) -> Detachable<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Detachable {
        work: Some(Box::pin(work)),
        tracker: TRACKER.try_with(Tracker::clone).ok(),
    }
}

/// See [`detachable`].
pub struct Detachable<T: Send + 'static> {
    work: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
    tracker: Option<Tracker>,
}

impl<T: Send + 'static> Future for Detachable<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(work) = self.work.as_mut() else {
            panic!("a Detachable polled after it finished");
        };
        let output = std::task::ready!(work.as_mut().poll(cx));
        self.work = None;
        Poll::Ready(output)
    }
}

impl<T: Send + 'static> Drop for Detachable<T> {
    fn drop(&mut self) {
        let Some(work) = self.work.take() else {
            return;
        };
        let rest = async move {
            work.await;
        };
        match &self.tracker {
            Some(tracker) if tracker.is_aborted() => {}
            Some(tracker) => drop(tracker.spawn(rest)),
            None => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    drop(runtime.spawn(rest));
                }
            }
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
    async fn detachable_work_finishes_in_a_task_when_its_caller_is_dropped() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let work = |tx: tokio::sync::mpsc::UnboundedSender<&'static str>| async move {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            let _ = tx.send("finished");
            7
        };
        // Awaited: finishes in the caller's task, with its output.
        assert_eq!(detachable(work(tx.clone())).await, 7);
        assert_eq!(rx.try_recv(), Ok("finished"));
        // Dropped halfway: finishes anyway.
        let caller = tokio::time::timeout(
            std::time::Duration::from_millis(5),
            detachable(work(tx.clone())),
        );
        assert!(caller.await.is_err(), "the caller gave up first");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(rx.try_recv(), Ok("finished"));
        // Dropped in a process that was aborted: never runs.
        let tracker = Tracker::default();
        let tx2 = tx.clone();
        let caller = tracker.spawn(async move { detachable(work(tx2)).await });
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        tracker.abort_all();
        assert!(caller.await.is_err(), "aborted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(rx.try_recv().is_err(), "an aborted process's work ran");
    }

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
