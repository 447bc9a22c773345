//! The simulated ingest server's handler and the simulated next tier, each behind its link.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sidelog::proto::Message;
use sidelog::runtime::BoxFuture;
use sidelog::sink::{Batch, Receipt, SEQ_HEADER, Sink, SinkError};
use sidelog::{Handler, HandlerError};

use crate::net::{Hop, LOST_AFTER, Link};

/// The outputs the simulated handler makes of an input: 0 to 3, decided by its id.
pub fn outputs_of(id: &str, payload: &[u8]) -> Vec<(String, Bytes)> {
    let n = id
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 4;
    (0..n)
        .map(|i| {
            let mut p = payload.to_vec();
            p.extend(format!("#{i}").bytes());
            (format!("{id}/{i}"), Bytes::from(p))
        })
        .collect()
}

/// The simulated ingest server's handler, behind its link.
pub(crate) struct SimHandler {
    pub(crate) link: Arc<Link>,
    pub(crate) hop: Arc<Mutex<Hop>>,
}

impl Handler for SimHandler {
    fn handle(
        &self,
        message: Message,
        _attempt: u32,
        _call: sidelog::Call,
    ) -> BoxFuture<'_, Result<Vec<Message>, HandlerError>> {
        let fate = self.link.fate();
        let (link, hop) = (self.link.clone(), self.hop.clone());
        Box::pin(async move {
            tokio::time::sleep(fate.delay_out).await;
            if fate.drop_request {
                tokio::time::sleep(LOST_AFTER).await;
                return Err(HandlerError::Failed(format!("{}: request lost", link.name)));
            }
            let epoch = {
                let h = hop.lock().expect("never held across a panic");
                if Hop::until(h.down_until) {
                    return Err(HandlerError::Failed("connection refused".into()));
                }
                h.epoch
            };
            if Hop::until(hop.lock().expect("never held across a panic").slow_until) {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            if Hop::until(hop.lock().expect("never held across a panic").failing_until) {
                return Err(HandlerError::Failed("handler is failing".into()));
            }
            let outputs = outputs_of(&message.id, &message.payload)
                .into_iter()
                .map(|(_, payload)| Message {
                    id: "overwritten-by-sidelog".into(),
                    payload,
                    ..Default::default()
                })
                .collect();
            tokio::time::sleep(fate.delay_back).await;
            if fate.drop_response || hop.lock().expect("never held across a panic").epoch != epoch {
                tokio::time::sleep(LOST_AFTER).await;
                return Err(HandlerError::Failed(format!(
                    "{}: response lost",
                    link.name
                )));
            }
            Ok(outputs)
        })
    }
}

/// One message as the sink stored it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) id: String,
    pub(crate) key: String,
    pub(crate) payload: Bytes,
    pub(crate) seq: Option<u64>,
}

/// The simulated next tier, behind its link. What it stores survives its crashes.
pub(crate) struct SimSink {
    pub(crate) link: Arc<Link>,
    pub(crate) hop: Arc<Mutex<Hop>>,
    pub(crate) stored: Arc<Mutex<Vec<Stored>>>,
}

impl Sink for SimSink {
    fn deliver(&self, batch: Batch) -> BoxFuture<'static, Result<Receipt, SinkError>> {
        let fate = self.link.fate();
        let (link, hop, stored) = (self.link.clone(), self.hop.clone(), self.stored.clone());
        Box::pin(async move {
            tokio::time::sleep(fate.delay_out).await;
            if fate.drop_request {
                tokio::time::sleep(LOST_AFTER).await;
                return Err(SinkError::retry(format!("{}: request lost", link.name)));
            }
            let epoch = {
                let h = hop.lock().expect("never held across a panic");
                if Hop::until(h.down_until) {
                    return Err(SinkError::retry("connection refused"));
                }
                h.epoch
            };
            if Hop::until(hop.lock().expect("never held across a panic").slow_until) {
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            {
                let h = hop.lock().expect("never held across a panic");
                if Hop::until(h.failing_until) {
                    return Err(SinkError::retry("sink is failing"));
                }
                if h.epoch != epoch {
                    return Err(SinkError::retry("sink crashed before storing"));
                }
            }
            let copies = if fate.duplicate { 2 } else { 1 };
            {
                let mut s = stored.lock().expect("never held across a panic");
                for _ in 0..copies {
                    for m in batch.messages.iter() {
                        s.push(Stored {
                            id: m.id.clone(),
                            key: m.key.clone(),
                            payload: m.payload.clone(),
                            seq: m.headers.get(SEQ_HEADER).and_then(|v| v.parse().ok()),
                        });
                    }
                }
            }
            tokio::time::sleep(fate.delay_back).await;
            if fate.drop_response || hop.lock().expect("never held across a panic").epoch != epoch {
                tokio::time::sleep(LOST_AFTER).await;
                return Err(SinkError::retry(format!("{}: response lost", link.name)));
            }
            Ok(Receipt::none())
        })
    }
}
