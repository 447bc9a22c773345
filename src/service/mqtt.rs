//! The MQTT door (`mqtt_source`): devices publish to an MQTT broker and sidelog subscribes, as
//! an IoT ingest tier does. MQTT 5, QoS 1, a persistent session (clean start off,
//! a session expiry) and **manual acknowledgement**: a message's PUBACK goes to the broker only
//! once the pipeline has accepted it per its mode (journaled and fsynced in rbml/sbml/hml), or
//! answered it `DUPLICATE`. A crash before the PUBACK leaves the message with the broker, which
//! sends it again when sidelog's session resumes.
//!
//! The topic becomes the key; MQTT 5 user properties become headers, and a user property `id`
//! the message id, so a device's own retry is de-duplicated. Without one an id is assigned and
//! delivery is at-least-once: a message taken but not yet acknowledged at a crash comes again
//! under a new id.
//!
//! Backpressure reaches the broker: while the pipeline refuses (backlog full, replaying) the
//! batch waits and is retried, nothing is acknowledged, and the broker stops at the receive
//! maximum (the in-flight window) instead of sidelog buffering without bound. A message the
//! limits refuse (oversize, a bad `id`), or a malformed one (flagged UTF-8 and not), is
//! dead-lettered with the reason, then acknowledged: kept for an operator, never acked and
//! lost, never redelivered forever.
//!
//! Two tasks: the connection (it owns rumqttc's event loop, which must be polled without pause
//! for keep-alives, and every PUBACK) and the intake (batches, the pipeline, dead letters).
//! PUBACKs are sent only for a publish of the *current* connection whose packet id has not been
//! reused since: after a reconnect the broker sends the unacknowledged messages again under
//! their packet ids, and an old copy's PUBACK could otherwise acknowledge a newer message that
//! reuses the id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::MqttSource;
use crate::journal::NewDeadLetter;
use crate::pipeline::{Door, IngestError, Pipeline};
use crate::proto::{Message, ack};
use crate::runtime::{Backoff, WARN_EVERY, WarnLimit};

/// How long a stop waits for the batch under way to be answered and acknowledged.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// Pauses between polls of a failed connection (rumqttc reconnects on the next poll): 0.2 s,
/// doubling, at most 3 s. No jitter: one client, one broker.
const RECONNECT: Backoff = Backoff {
    initial_ms: 200,
    max_ms: 3_000,
    max_attempts: u32::MAX,
};

/// Pauses before a batch the pipeline did not accept is offered again: 0.1 s, doubling, at
/// most 2 s, never giving up (nothing is acknowledged meanwhile, so the broker holds back).
const INTAKE_RETRY: Backoff = Backoff {
    initial_ms: 100,
    max_ms: 2_000,
    max_attempts: u32::MAX,
};

/// The user property whose value becomes the message id.
pub const ID_PROPERTY: &str = "id";

/// A publish taken from the broker, tagged with the connection it came on.
struct Taken {
    /// Which connection (counted from 1 at each CONNACK).
    connection: u64,
    /// The number this packet id was given when it arrived (see [`Connection::inflight`]).
    generation: u64,
    publish: Publish,
}

/// The running door.
pub struct MqttDoor {
    stop: oneshot::Sender<()>,
    connection: JoinHandle<()>,
    intake: JoinHandle<()>,
}

impl MqttDoor {
    /// Connects (in the background: a broker that is down is retried, with a warning) and
    /// starts taking messages. Intake waits while the pipeline is not serving.
    pub fn start(
        source: &MqttSource,
        pipeline: Arc<Pipeline>,
        max_message_bytes: usize,
    ) -> anyhow::Result<MqttDoor> {
        let options = options(source, max_packet_bytes(max_message_bytes))?;
        // Room for a PUBACK for every packet id there is, and the subscriptions: queuing a
        // PUBACK never fails (the connection task cannot wait: it must keep polling). Sized by
        // the receive maximum instead, the queue overflowed under load: rumqttc takes requests
        // only between the packets it read in a burst, and a PUBACK that could not be queued
        // held its window slot until the next reconnect, until no slot was left and intake
        // stopped. The queue holds only what is pending (it allocates as it fills).
        let (client, eventloop) = AsyncClient::new(options, usize::from(u16::MAX) + 64);
        let (taken_tx, taken_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = oneshot::channel();
        crate::metrics::zero_intake(Door::Mqtt);
        let connection = Connection {
            client,
            topics: source.topics.clone(),
            number: 0,
            inflight: HashMap::new(),
            generation: 0,
            taken: taken_tx,
        };
        // A batch is at most what the broker may have in flight.
        let max_batch = usize::from(source.receive_maximum);
        let connection = tokio::spawn(connection.run(eventloop, done_rx, stop_rx));
        let intake = tokio::spawn(intake(pipeline, taken_rx, done_tx, max_batch));
        info!(broker = %format!("{}:{}", source.host, source.port), topics = ?source.topics,
            client_id = %source.client_id, "MQTT door subscribing");
        Ok(MqttDoor {
            stop,
            connection,
            intake,
        })
    }

    /// Disconnects; what was taken and not acknowledged stays with the broker.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.connection.await;
        self.intake.abort();
        let _ = self.intake.await;
    }
}

/// The Maximum Packet Size sidelog announces in CONNECT, and the largest packet it reads:
/// room for a message at `max_message_bytes` (and over it, up to twice, so that such a message
/// is taken and dead-lettered with the reason) plus topic and properties. Left at the client's
/// default (10 KiB, not announced), a larger message broke the connection each time the broker
/// sent it again: the session stuck behind it. Larger packets the broker does not send (MQTT 5,
/// 3.1.2.11.4: it discards them), which the README says.
pub fn max_packet_bytes(max_message_bytes: usize) -> u32 {
    const MQTT_MAX: usize = 268_435_455; // the largest remaining length MQTT can encode
    max_message_bytes
        .saturating_mul(2)
        .saturating_add(64 * 1024)
        .min(MQTT_MAX) as u32
}

fn options(source: &MqttSource, max_packet_bytes: u32) -> anyhow::Result<MqttOptions> {
    use anyhow::Context as _;
    let mut options = MqttOptions::new(&source.client_id, &source.host, source.port);
    options
        .set_keep_alive(Duration::from_secs(u64::from(source.keep_alive_s)))
        .set_clean_start(false)
        .set_session_expiry_interval(Some(source.session_expiry_s))
        .set_receive_maximum(Some(source.receive_maximum))
        .set_manual_acks(true)
        .set_max_packet_size(Some(max_packet_bytes));
    if let Some((user, password)) = &source.user {
        options.set_credentials(user.clone(), password.clone());
    }
    if source.tls {
        let transport = match &source.ca {
            Some(ca) => {
                let ca = std::fs::read(ca)
                    .with_context(|| format!("mqtt_source: cannot read ca {}", ca.display()))?;
                rumqttc::Transport::tls(ca, None, None)
            }
            None => rumqttc::Transport::tls_with_default_config(),
        };
        options.set_transport(transport);
    }
    Ok(options)
}

/// The connection task's state.
struct Connection {
    client: AsyncClient,
    topics: Vec<String>,
    /// The current connection's number; 0 before the first CONNACK.
    number: u64,
    /// Packet ids taken on this connection and not yet acknowledged, with the generation each
    /// was given on arrival: a PUBACK is sent only for the copy that holds it now.
    inflight: HashMap<u16, u64>,
    generation: u64,
    taken: mpsc::UnboundedSender<Taken>,
}

static BROKER_DOWN: WarnLimit = WarnLimit::new(WARN_EVERY);

impl Connection {
    async fn run(
        mut self,
        mut eventloop: EventLoop,
        mut done: mpsc::UnboundedReceiver<Vec<Taken>>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut failures: u32 = 0;
        loop {
            tokio::select! {
                event = eventloop.poll() => match event {
                    Ok(event) => {
                        failures = 0;
                        self.on_event(event);
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        // Nothing taken on the lost connection is acknowledged from now on:
                        // the broker sends it again when the session resumes, and that copy
                        // is acknowledged (a queued PUBACK would reach the next connection).
                        self.inflight.clear();
                        if let Some(held) = BROKER_DOWN.check() {
                            warn!(error = %e, held_back = held,
                                "MQTT broker unreachable or the connection failed; retrying");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(RECONNECT.ceiling(failures)) => {}
                            _ = &mut stop => break,
                        }
                    }
                },
                Some(batch) = done.recv() => self.acknowledge(batch),
                _ = &mut stop => break,
            }
        }
        // A batch the pipeline is answering now gets its PUBACKs if it is done soon (else
        // its messages come again: DUPLICATE with an id, a second copy without).
        let grace = tokio::time::sleep(STOP_GRACE);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                event = eventloop.poll() => if let Ok(event) = event { self.on_event(event) } else { break },
                Some(batch) = done.recv() => self.acknowledge(batch),
                _ = &mut grace => break,
            }
        }
        // The session stays (clean start off): its messages wait for the next start.
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while eventloop.poll().await.is_ok() {}
        })
        .await;
    }

    fn on_event(&mut self, event: Event) {
        let Event::Incoming(packet) = event else {
            return;
        };
        match packet {
            Packet::ConnAck(connack) => {
                self.number += 1;
                self.inflight.clear();
                info!(
                    session_present = connack.session_present,
                    connection = self.number,
                    "MQTT connected"
                );
                if !connack.session_present {
                    let filters: Vec<Filter> = self
                        .topics
                        .iter()
                        .map(|t| Filter::new(t.clone(), QoS::AtLeastOnce))
                        .collect();
                    if let Err(e) = self.client.try_subscribe_many(filters) {
                        warn!(error = %e, "cannot queue the MQTT subscription");
                    }
                }
            }
            Packet::SubAck(suback) => {
                for (topic, code) in self.topics.iter().zip(&suback.return_codes) {
                    let granted = matches!(
                        code,
                        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                    );
                    if granted {
                        debug!(topic, "MQTT subscribed");
                    } else {
                        warn!(topic, code = ?code, "the MQTT broker refused the subscription");
                    }
                }
            }
            Packet::Publish(publish) => {
                self.generation += 1;
                self.inflight.insert(publish.pkid, self.generation);
                let taken = Taken {
                    connection: self.number,
                    generation: self.generation,
                    publish,
                };
                // The intake task lives as long as this one.
                let _ = self.taken.send(taken);
            }
            Packet::Disconnect(disconnect) => {
                warn!(reason = ?disconnect.reason_code, "the MQTT broker disconnected sidelog");
            }
            _ => {}
        }
    }

    /// Sends the PUBACKs of a batch the pipeline has answered, for the copies that still hold
    /// their packet id on this connection.
    fn acknowledge(&mut self, batch: Vec<Taken>) {
        for taken in batch {
            // A QoS 0 publish (the device's choice: the broker downgrades to it) has nothing
            // to acknowledge.
            if taken.publish.qos == QoS::AtMostOnce {
                continue;
            }
            let current = taken.connection == self.number
                && self.inflight.get(&taken.publish.pkid) == Some(&taken.generation);
            if !current {
                // From an earlier connection: the broker sent it again, and that copy is
                // acknowledged when its own turn comes.
                continue;
            }
            self.inflight.remove(&taken.publish.pkid);
            if let Err(e) = self.client.try_ack(&taken.publish) {
                warn!(error = %e, "cannot queue a PUBACK; the broker will send the message again");
            }
        }
    }
}

static INTAKE_REFUSED: WarnLimit = WarnLimit::new(WARN_EVERY);

/// Takes what the connection received, in batches (whatever arrived while the previous batch
/// was being accepted), through the pipeline; answered batches go back to be acknowledged.
async fn intake(
    pipeline: Arc<Pipeline>,
    mut taken: mpsc::UnboundedReceiver<Taken>,
    done: mpsc::UnboundedSender<Vec<Taken>>,
    max_batch: usize,
) {
    let mut failures: u32 = 0;
    while let Some(first) = taken.recv().await {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match taken.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // Retried until answered: nothing is acknowledged before, so the broker's window fills
        // and it stops sending (backpressure), and nothing is lost.
        loop {
            match accept(&pipeline, &batch).await {
                Ok(()) => {
                    failures = 0;
                    break;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if let Some(held) = INTAKE_REFUSED.check() {
                        warn!(error = %e, messages = batch.len(), held_back = held,
                            "MQTT messages not accepted yet; not acknowledged, retrying");
                    }
                    tokio::time::sleep(INTAKE_RETRY.ceiling(failures)).await;
                }
            }
        }
        if done.send(batch).is_err() {
            return;
        }
    }
}

/// One batch through the pipeline; messages the limits refuse, and malformed ones, go to the
/// dead-letter table.
async fn accept(pipeline: &Arc<Pipeline>, batch: &[Taken]) -> Result<(), IngestError> {
    let mut letters = Vec::new();
    let mut messages = Vec::with_capacity(batch.len());
    for taken in batch {
        let mut message = message(&taken.publish);
        match malformed(&taken.publish) {
            None => messages.push(message),
            Some(reason) => {
                if message.id.is_empty() {
                    message.id = pipeline.assign_id();
                }
                letters.push(refused(message, reason));
            }
        }
    }
    let acks = if messages.is_empty() {
        Vec::new()
    } else {
        pipeline.publish(messages.clone(), Door::Mqtt).await?
    };
    for (ack, mut message) in acks.into_iter().zip(messages) {
        if ack.status == ack::Status::Rejected as i32 {
            message.id = ack.id;
            letters.push(refused(message, &ack.reason));
        }
    }
    if !letters.is_empty() {
        warn!(
            count = letters.len(),
            "MQTT messages refused (limits, malformed): dead-lettered, then acknowledged"
        );
        pipeline.dead_letter_refused(letters).await?;
    }
    Ok(())
}

/// A dead letter for a message the door refused, with why.
fn refused(message: Message, reason: &str) -> NewDeadLetter {
    super::refused_letter("MQTT", message, reason)
}

/// Why a publish is malformed, if it is: MQTT 5 (3.3.2.3.2) says a payload whose format
/// indicator is 1 is UTF-8; a broker may pass one that is not (Mosquitto does).
fn malformed(publish: &Publish) -> Option<&'static str> {
    let utf8 = publish
        .properties
        .as_ref()
        .and_then(|p| p.payload_format_indicator)
        == Some(1);
    (utf8 && std::str::from_utf8(&publish.payload).is_err()).then_some(
        "payload_format_invalid: the payload format indicator says UTF-8, the payload is not",
    )
}

/// The message an MQTT publish becomes: topic → key, user properties → headers, the `id`
/// property → id (empty: assigned by the pipeline).
fn message(publish: &Publish) -> Message {
    let mut message = Message {
        key: String::from_utf8_lossy(&publish.topic).into_owned(),
        payload: publish.payload.clone(),
        ..Default::default()
    };
    if let Some(properties) = &publish.properties {
        for (name, value) in &properties.user_properties {
            if name == ID_PROPERTY {
                message.id = value.clone();
            } else {
                message.headers.insert(name.clone(), value.clone());
            }
        }
        if let Some(content_type) = &properties.content_type {
            message
                .headers
                .entry("content-type".into())
                .or_insert_with(|| content_type.clone());
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_becomes_a_message() {
        let mut publish = Publish::new("devices/7/temp", QoS::AtLeastOnce, "21.5", None);
        publish.properties = Some(rumqttc::v5::mqttbytes::v5::PublishProperties {
            user_properties: vec![("id".into(), "dev7-42".into()), ("unit".into(), "C".into())],
            ..Default::default()
        });
        let m = message(&publish);
        assert_eq!(m.id, "dev7-42");
        assert_eq!(m.key, "devices/7/temp");
        assert_eq!(&m.payload[..], b"21.5");
        assert_eq!(m.headers.get("unit").map(String::as_str), Some("C"));
        assert!(!m.headers.contains_key("id"));
        let plain = Publish::new("t", QoS::AtLeastOnce, "x", None);
        assert!(message(&plain).id.is_empty());
    }
}
