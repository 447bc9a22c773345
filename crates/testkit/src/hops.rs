//! A test sink and a test handler, served in process over gRPC: what the next tier and the
//! ingest server are to a sidelog under test or under benchmark.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::net::{Restartable, serve_on};
use sidelog::proto::handler_server::{Handler, HandlerServer};
use sidelog::proto::sink_server::{Sink, SinkServer};
use sidelog::proto::{DeliverRequest, DeliverResponse, HandleRequest, HandleResponse, Message};
use sidelog::sink::sequence_of;

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub id: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub seq: Option<u64>,
    pub at: Instant,
}

/// Sees every batch the test sink accepts (a benchmark measures latency here).
pub type BatchObserver = Arc<dyn Fn(&[Message]) + Send + Sync>;

/// A `Sink` that records what it receives (or, for benchmarks, only counts it), and can be
/// slowed down or made to fail.
#[derive(Clone, Default)]
pub struct TestSink {
    pub arrivals: Arc<Mutex<Vec<Arrival>>>,
    /// Microseconds each Deliver takes before it answers.
    pub delay_us: Arc<AtomicU64>,
    /// When set, Deliver answers UNAVAILABLE and records nothing.
    pub failing: Arc<AtomicBool>,
    /// Messages accepted so far.
    pub delivered: Arc<AtomicU64>,
    /// Count only, keep no arrivals: a benchmark's millions of messages.
    pub count_only: bool,
    pub observer: Option<BatchObserver>,
    /// Ids the sink refuses: a request holding one is answered `INVALID_ARGUMENT`, as a next
    /// tier answers a message it will never take.
    pub refuse: Arc<Mutex<std::collections::HashSet<String>>>,
}

#[tonic::async_trait]
impl Sink for TestSink {
    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        let delay = self.delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        if self.failing.load(Ordering::Relaxed) {
            return Err(Status::unavailable("test sink is failing"));
        }
        let messages = request.into_inner().messages;
        {
            let refuse = self.refuse.lock().expect("never held across a panic");
            if let Some(m) = messages.iter().find(|m| refuse.contains(&m.id)) {
                return Err(Status::invalid_argument(format!(
                    "message {} is refused by the test sink",
                    m.id
                )));
            }
        }
        if let Some(observe) = &self.observer {
            observe(&messages);
        }
        self.delivered
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        if !self.count_only {
            let now = Instant::now();
            let mut arrivals = self.arrivals.lock().expect("never held across a panic");
            for m in messages {
                arrivals.push(Arrival {
                    seq: sequence_of(&m),
                    id: m.id,
                    key: m.key,
                    payload: m.payload.to_vec(),
                    at: now,
                });
            }
        }
        Ok(Response::new(DeliverResponse {}))
    }
}

impl TestSink {
    /// Serves the sink on `addr`; panics if it cannot (a test's set-up failed).
    pub async fn start(&self, addr: SocketAddr) -> Restartable {
        self.serve(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot serve the test sink on {addr}: {e}"))
    }

    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<Restartable> {
        let server = SinkServer::new(self.clone()).max_decoding_message_size(usize::MAX);
        serve_on(addr, tonic::service::Routes::new(server)).await
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals
            .lock()
            .expect("never held across a panic")
            .clone()
    }

    pub fn ids(&self) -> HashSet<String> {
        self.arrivals
            .lock()
            .expect("never held across a panic")
            .iter()
            .map(|a| a.id.clone())
            .collect()
    }
}

/// The outputs the test handler makes of an input: 0, 1, 2 or 3 of them, decided by the id,
/// so the test can predict them; payload `<input payload>#<i>`.
pub fn expected_outputs(id: &str, payload: &[u8]) -> Vec<(String, Vec<u8>)> {
    let n = id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 4;
    (0..n)
        .map(|i| {
            let mut p = payload.to_vec();
            p.extend(format!("#{i}").bytes());
            (format!("{id}/{i}"), p)
        })
        .collect()
}

/// What the test handler makes of an input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HandlerOutputs {
    /// [`expected_outputs`]: deterministic, predictable by the test; an id containing
    /// `poison` is refused (`INVALID_ARGUMENT`).
    #[default]
    Expected,
    /// This many copies of the input, headers kept (a benchmark's load).
    Copies(u32),
    /// Like `Expected`, but each call stamps its own number into the payloads (`…#i@call`): a
    /// handler whose outputs differ from call to call (it reads a clock, a counter, a database).
    Stamped,
}

/// A `Handler` for tests and benchmarks; see [`HandlerOutputs`].
#[derive(Clone, Default)]
pub struct TestHandler {
    pub calls: Arc<AtomicU64>,
    pub failing: Arc<AtomicBool>,
    /// Microseconds each call takes.
    pub delay_us: Arc<AtomicU64>,
    pub outputs: HandlerOutputs,
}

#[tonic::async_trait]
impl Handler for TestHandler {
    async fn handle(
        &self,
        request: Request<HandleRequest>,
    ) -> Result<Response<HandleResponse>, Status> {
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let delay = self.delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        if self.failing.load(Ordering::Relaxed) {
            return Err(Status::unavailable("test handler is failing"));
        }
        let m = request.into_inner().message.unwrap_or_default();
        let outputs = match self.outputs {
            HandlerOutputs::Copies(n) => (0..n).map(|_| m.clone()).collect(),
            HandlerOutputs::Expected | HandlerOutputs::Stamped => {
                if m.id.contains("poison") {
                    return Err(Status::invalid_argument("test handler refuses poison"));
                }
                let stamp = (self.outputs == HandlerOutputs::Stamped).then_some(call);
                expected_outputs(&m.id, &m.payload)
                    .into_iter()
                    .map(|(_, mut payload)| {
                        if let Some(call) = stamp {
                            payload.extend(format!("@{call}").bytes());
                        }
                        Message {
                            // sidelog overwrites the id; a wrong one here proves it does.
                            id: "set-by-sidelog".into(),
                            payload: payload.into(),
                            ..Default::default()
                        }
                    })
                    .collect()
            }
        };
        Ok(Response::new(HandleResponse { outputs }))
    }
}

impl TestHandler {
    /// Serves the handler on `addr`; panics if it cannot (a test's set-up failed).
    pub async fn start(&self, addr: SocketAddr) -> Restartable {
        self.serve(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot serve the test handler on {addr}: {e}"))
    }

    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<Restartable> {
        let server = HandlerServer::new(self.clone());
        serve_on(addr, tonic::service::Routes::new(server)).await
    }
}
