//! The handler hop: the ingest server's business logic, which turns one input into outputs.
//!
//! [`Handler`] is the seam (a gRPC client in production, the `sidelog` crate's `handler.rs`;
//! anything in the simulator);
//! [`HandlerRunner`] adds what every call needs: a concurrency limit, a timeout, retries with
//! backoff and jitter, and, after `max_attempts` or an explicit refusal, a dead letter.
//!
//! Output ids are deterministic (ARCHITECTURE.md, the crash contract): the i-th output of input `X` gets id `X/i`, so a
//! replay produces the same ids and the next tier can drop the duplicate. Without a handler
//! (pass-through) the input is its own single output and keeps its id. An output with an empty
//! key inherits the input's key, and one with no event time inherits the input's.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::debug;

use sidelog_proto::v1::Message;
use sidelog_runtime::{Backoff, BoxFuture, Entropy};

/// Why a handler call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandlerError {
    /// The handler refused this message (`INVALID_ARGUMENT`, `FAILED_PRECONDITION`,
    /// `OUT_OF_RANGE`): a poison message. Not retried; it goes to the dead-letter table.
    #[error("the handler refused the message: {0}")]
    Refused(String),
    /// The handler is down, slow or failing. Retried with backoff.
    #[error("the handler call failed: {0}")]
    Failed(String),
}

/// Why the handler is called for an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// A message just received.
    Live,
    /// A journaled input replayed after a restart (its earlier call's outputs were lost).
    Replay,
}

/// One call of the business logic.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        message: Message,
        attempt: u32,
        call: Call,
    ) -> BoxFuture<'_, Result<Vec<Message>, HandlerError>>;
}

/// No handler: each message is its own single output.
#[derive(Debug, Default)]
pub struct PassThrough;

impl Handler for PassThrough {
    fn handle(
        &self,
        message: Message,
        _: u32,
        _: Call,
    ) -> BoxFuture<'_, Result<Vec<Message>, HandlerError>> {
        Box::pin(async move { Ok(vec![message]) })
    }
}

/// What became of an input after the handler was called as often as allowed.
#[derive(Debug, Clone, PartialEq)]
pub enum HandleOutcome {
    /// The outputs, with their deterministic ids.
    Outputs(Vec<Message>),
    /// The input goes to the dead-letter table.
    Dead { reason: String, attempts: u32 },
}

/// Calls the handler with a concurrency limit, a timeout and retries.
pub struct HandlerRunner {
    handler: Arc<dyn Handler>,
    permits: Semaphore,
    timeout: Duration,
    backoff: Backoff,
    entropy: Entropy,
    ids: OutputIds,
    /// The handler's outage, said in the log while it lasts.
    outage: Option<crate::outage::Outage>,
}

/// How outputs are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputIds {
    /// A handler's i-th output of input `X` gets id `X/i` (deterministic across replays).
    Derived,
    /// Pass-through: the input is its own single output and keeps its id.
    Kept,
}

impl std::fmt::Debug for HandlerRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerRunner")
            .field("timeout", &self.timeout)
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl HandlerRunner {
    pub fn new(
        handler: Arc<dyn Handler>,
        ids: OutputIds,
        concurrency: usize,
        timeout: Duration,
        backoff: Backoff,
        entropy: Entropy,
    ) -> Self {
        HandlerRunner {
            handler,
            permits: Semaphore::new(concurrency),
            timeout,
            backoff,
            entropy,
            ids,
            outage: None,
        }
    }

    /// Says the handler's outages in the log (once per period while one lasts).
    pub fn watched(mut self, outage: crate::outage::Outage) -> Self {
        self.outage = Some(outage);
        self
    }

    /// Whether each input is its own single output (no handler).
    pub fn is_pass_through(&self) -> bool {
        self.ids == OutputIds::Kept
    }

    pub async fn run(&self, input: &Message, call: Call) -> HandleOutcome {
        let mut attempt = 1u32;
        loop {
            let result = {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .expect("the handler semaphore is never closed");
                let started = tokio::time::Instant::now();
                let result = tokio::time::timeout(
                    self.timeout,
                    self.handler.handle(input.clone(), attempt, call),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(HandlerError::Failed(format!(
                        "timed out after {:?}",
                        self.timeout
                    )))
                });
                if !self.is_pass_through() {
                    let label = match &result {
                        Ok(_) => "ok",
                        Err(HandlerError::Refused(_)) => "refused",
                        Err(HandlerError::Failed(_)) => "error",
                    };
                    metrics::histogram!(crate::metrics::HANDLER_CALL_SECONDS, "outcome" => label)
                        .record(started.elapsed().as_secs_f64());
                }
                result
            };
            let error = match result {
                Ok(outputs) => {
                    if let Some(outage) = &self.outage {
                        outage.succeeded();
                    }
                    return HandleOutcome::Outputs(self.finish(input, outputs));
                }
                Err(refused @ HandlerError::Refused(_)) => {
                    return HandleOutcome::Dead {
                        reason: refused.to_string(),
                        attempts: attempt,
                    };
                }
                Err(HandlerError::Failed(reason)) => reason,
            };
            if self.backoff.exhausted(attempt) {
                return HandleOutcome::Dead {
                    reason: format!("handler failed {attempt} times; last error: {error}"),
                    attempts: attempt,
                };
            }
            let delay = self.backoff.delay(attempt, &self.entropy);
            debug!(id = %input.id, attempt, error = %error, ?delay, "handler call failed; retrying");
            if let Some(outage) = &self.outage {
                outage.failed(&error);
            }
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    fn finish(&self, input: &Message, mut outputs: Vec<Message>) -> Vec<Message> {
        for (i, out) in outputs.iter_mut().enumerate() {
            if self.ids == OutputIds::Derived {
                out.id = output_id(&input.id, i);
            }
            if out.key.is_empty() {
                out.key.clone_from(&input.key);
            }
            if out.event_time_ms == 0 {
                out.event_time_ms = input.event_time_ms;
            }
        }
        outputs
    }
}

/// The id of the i-th output of input `input_id`.
pub fn output_id(input_id: &str, i: usize) -> String {
    format!("{input_id}/{i}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Flaky {
        fail_first: u32,
        calls: AtomicU32,
        refuse: bool,
    }

    impl Handler for Flaky {
        fn handle(
            &self,
            m: Message,
            _: u32,
            _: Call,
        ) -> BoxFuture<'_, Result<Vec<Message>, HandlerError>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if self.refuse {
                    return Err(HandlerError::Refused("bad".into()));
                }
                if n < self.fail_first {
                    return Err(HandlerError::Failed("down".into()));
                }
                Ok(vec![
                    m.clone(),
                    Message {
                        key: "k2".into(),
                        ..m
                    },
                ])
            })
        }
    }

    fn runner(fail_first: u32, refuse: bool, max_attempts: u32) -> HandlerRunner {
        HandlerRunner::new(
            Arc::new(Flaky {
                fail_first,
                calls: AtomicU32::new(0),
                refuse,
            }),
            OutputIds::Derived,
            4,
            Duration::from_secs(1),
            Backoff {
                initial_ms: 1,
                max_ms: 10,
                max_attempts,
            },
            Entropy::from_seed(1),
        )
    }

    fn input() -> Message {
        Message {
            id: "x".into(),
            key: "k".into(),
            event_time_ms: 5,
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn outputs_get_deterministic_ids_after_retries() {
        let HandleOutcome::Outputs(out) = runner(2, false, 5).run(&input(), Call::Live).await
        else {
            panic!("should succeed on the third attempt");
        };
        let ids: Vec<_> = out.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["x/0", "x/1"]);
        assert_eq!(out[0].key, "k");
        assert_eq!(out[1].key, "k2");
        assert_eq!(out[1].event_time_ms, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_handler_dead_letters_after_max_attempts() {
        let outcome = runner(100, false, 3).run(&input(), Call::Live).await;
        assert!(
            matches!(outcome, HandleOutcome::Dead { attempts: 3, .. }),
            "{outcome:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_message_is_dead_lettered_at_once() {
        let outcome = runner(0, true, 9).run(&input(), Call::Live).await;
        assert!(
            matches!(outcome, HandleOutcome::Dead { attempts: 1, .. }),
            "{outcome:?}"
        );
    }
}
