//! The forward door: Fluentd's `forward` protocol (v1), as Fluent Bit's and Fluentd's `forward`
//! outputs and the `fluent-logger` libraries speak it, on its own TCP listener
//! (`forward_listen`, 24224 by Fluentd's convention), TLS when `tls_cert_file` is set, the
//! shared-key handshake when `forward_shared_key_file` is (`handshake.rs`), and a UDP heartbeat
//! answered on the same port.
//!
//! **One event, one message.** The key is the event's tag; the payload its record as JSON
//! (`forward_payload = json`, see [`frame::to_json`]) or the record's msgpack exactly as sent
//! (`msgpack`); the event time its time. The frame's four modes (Message, Forward,
//! PackedForward, CompressedPackedForward) are read by `frame.rs`.
//!
//! **The ack is the promise.** A frame with the `chunk` option is answered `{ack: chunk}` only
//! once every one of its events is as durable as the mode promises; its events' ids are
//! `fwd-{chunk}-{position}`, so a chunk the client sends again (it heard no ack) is
//! `DUPLICATE`, not stored twice. When sidelog cannot take a frame now (backlog or disk full,
//! replaying, stopping), it sends no ack and closes the connection: the client sends the chunk
//! again, after its own backoff. Records the limits refuse (over `max_message_bytes`) go to the
//! dead-letter table, then the chunk is acked: resending would not change them. A frame
//! without `chunk` (the client asked for no ack: at most once) gets ids sidelog assigns, and
//! is held, its connection unread, until it can be taken: its client cannot send it again.
//!
//! A malformed frame closes its connection with the reason in the log; other connections do
//! not notice. Frames over `max_request_bytes` are malformed; a frame must arrive within
//! `forward_read_timeout_ms` once it has begun; an idle connection stays open.

pub mod frame;
mod handshake;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rmpv::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::ForwardPayload as Payload;
use crate::pipeline::{Door, IngestError, Pipeline};
use crate::proto::{Message, ack};
use crate::runtime::WarnLimit;

/// What the door is configured with.
#[derive(Debug, Clone)]
pub struct ForwardDoor {
    pub pipeline: Arc<Pipeline>,
    pub payload: Payload,
    /// `forward_shared_key_file`: clients must pass the handshake.
    pub shared_key: Option<Arc<str>>,
    /// This host's name in the handshake's `PONG`.
    pub hostname: String,
    /// The handshake's nonces (seeded by the operating system).
    pub nonces: crate::runtime::Entropy,
    /// `max_request_bytes`: the largest frame, and a compressed one's expanded entries.
    pub max_frame_bytes: usize,
    /// `max_messages_per_request`: a larger frame is published in parts.
    pub max_messages: usize,
    pub max_connections: usize,
    /// How long a frame may take to arrive once it has begun (and the TLS handshake).
    pub read_timeout: Duration,
}

/// The running door: its listeners stop when told.
pub struct ForwardRunning {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ForwardRunning {
    /// Stops taking connections and closes the open ones (a frame being accepted finishes
    /// first; what was not acked, the clients send again).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

static REFUSED: WarnLimit = WarnLimit::new(Duration::from_secs(10));

impl ForwardDoor {
    /// Binds `addr` (TCP, and UDP for heartbeats) and serves until stopped.
    pub async fn start(
        self,
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<ForwardRunning> {
        let listener = TcpListener::bind(addr).await?;
        let udp = UdpSocket::bind(listener.local_addr()?).await?;
        let (stop, stopped) = watch::channel(false);
        crate::metrics::zero_intake(Door::Forward);
        info!(addr = %listener.local_addr()?, tls = tls.is_some(),
            handshake = self.shared_key.is_some(), "forward door listening");
        let door = Arc::new(self);
        crate::runtime::spawn(heartbeats(udp, stopped.clone()));
        let task = tokio::spawn(door.accept_loop(listener, tls, stopped));
        Ok(ForwardRunning { stop, task })
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let permits = Arc::new(tokio::sync::Semaphore::new(self.max_connections));
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        warn!(error = %e, "forward door cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stopped.changed() => break,
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                if let Some(held) = REFUSED.check() {
                    warn!(%peer, max = self.max_connections, held_back = held,
                        "forward door: connection over forward_max_connections closed");
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            let door = self.clone();
            let tls = tls.clone();
            let stopped = stopped.clone();
            connections.spawn(async move {
                let _permit = permit;
                let ended = match tls {
                    None => door.serve(stream, stopped).await,
                    Some(tls) => {
                        match tokio::time::timeout(door.read_timeout, tls.accept(stream)).await {
                            Ok(Ok(stream)) => door.serve(stream, stopped).await,
                            Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
                            Err(_) => Err("no TLS handshake within forward_read_timeout_ms".into()),
                        }
                    }
                };
                if let Err(reason) = ended {
                    warn!(%peer, reason, "forward door: connection closed");
                }
            });
        }
        drop(listener);
        while connections.join_next().await.is_some() {}
    }

    /// One connection, until the client closes it, a frame is malformed, a frame cannot be
    /// taken, or the door stops.
    async fn serve<S>(&self, stream: S, stopped: watch::Receiver<bool>) -> Result<(), String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut conn = Connection {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            scan: frame::Scan::default(),
            stopped,
            max_frame_bytes: self.max_frame_bytes,
            read_timeout: self.read_timeout,
        };
        if let Some(key) = &self.shared_key {
            let mut nonce = [0u8; 16];
            nonce[..8].copy_from_slice(&self.nonces.next_u64().to_le_bytes());
            nonce[8..].copy_from_slice(&self.nonces.next_u64().to_le_bytes());
            let handshake = handshake::Handshake::new(key.clone(), self.hostname.clone(), nonce);
            conn.write(&handshake.helo()).await?;
            let Some(ping) = conn.next_frame().await? else {
                return Ok(());
            };
            match handshake.answer(&ping) {
                Ok(pong) => conn.write(&pong).await?,
                Err((why, pong)) => {
                    let _ = conn.write(&pong).await;
                    return Err(format!("handshake refused: {why}"));
                }
            }
        }
        while let Some(value) = conn
            .next_frame()
            .await
            .inspect_err(|_| refused("invalid_argument"))?
        {
            let frame = frame::parse(value, self.max_frame_bytes)
                .inspect_err(|_| refused("invalid_argument"))?;
            let Some(chunk) = frame.chunk.clone() else {
                if !self.hold(self.messages(frame), &mut conn.stopped).await {
                    return Ok(());
                }
                continue;
            };
            match self.accept(self.messages(frame)).await {
                Ok(()) => {
                    let ack = Value::Map(vec![(Value::from("ack"), Value::from(chunk))]);
                    conn.write(&handshake::encode(&ack)).await?;
                }
                Err((e, _)) => {
                    // No ack: the client sends the chunk again; closing makes it do so now
                    // rather than at its ack timeout.
                    refused(super::ingest::refusal_code(&e));
                    debug!(error = %e, "forward chunk not taken; closing without an ack");
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// A frame that asked for no ack cannot be sent again by its client, so it is offered
    /// until it is taken, the connection unread meanwhile (TCP holds the client back):
    /// backpressure, not loss. `false` when the door stops first (the frame is lost with the
    /// connection, as the client chose by asking no ack).
    async fn hold(&self, mut messages: Vec<Message>, stopped: &mut watch::Receiver<bool>) -> bool {
        let mut failures = 0;
        loop {
            match self.accept(messages).await {
                Ok(()) => return true,
                Err((e, rest)) => {
                    refused(super::ingest::refusal_code(&e));
                    if matches!(e, IngestError::Malformed(_)) {
                        warn!(error = %e, "forward frame without ack refused; dropped");
                        return true;
                    }
                    failures += 1;
                    if let Some(held) = HELD.check() {
                        warn!(error = %e, messages = rest.len(), held_back = held,
                            "forward frame (no ack asked) not taken yet; holding its connection");
                    }
                    messages = rest;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(HOLD_RETRY.ceiling(failures)) => {}
                _ = stopped.changed() => return false,
            }
        }
    }

    /// Publishes a frame's messages, in parts of `max_messages`; the ones the limits refuse
    /// go to the dead-letter table. On failure, the messages not yet taken come back with
    /// the error (a part taken before it is answered `DUPLICATE` when offered again).
    async fn accept(&self, messages: Vec<Message>) -> Result<(), (IngestError, Vec<Message>)> {
        let mut rest = messages;
        let mut letters = Vec::new();
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(self.max_messages));
            let acks = match self.pipeline.publish(rest.clone(), Door::Forward).await {
                Ok(acks) => acks,
                Err(e) => {
                    rest.extend(tail);
                    return Err((e, rest));
                }
            };
            for (ack, mut message) in acks.into_iter().zip(rest) {
                if ack.status == ack::Status::Rejected as i32 {
                    message.id = ack.id;
                    letters.push(super::refused_letter("forward", message, &ack.reason));
                }
            }
            rest = tail;
        }
        if !letters.is_empty() {
            warn!(
                count = letters.len(),
                "forward records refused (limits): dead-lettered, then acknowledged"
            );
            let refused: Vec<Message> = letters.iter().map(|l| l.message.clone()).collect();
            // Offered again, they are refused again and dead-lettered then.
            self.pipeline
                .dead_letter_refused(letters)
                .await
                .map_err(|e| (e, refused))?;
        }
        Ok(())
    }

    /// The messages of a frame's events (see the module's docs).
    fn messages(&self, frame: frame::Frame) -> Vec<Message> {
        let content_type = match self.payload {
            Payload::Json => "application/json",
            Payload::Msgpack => "application/msgpack",
        };
        let mut messages = Vec::with_capacity(frame.events.len());
        for (position, event) in frame.events.into_iter().enumerate() {
            let Some(event) = event else { continue };
            let payload = match self.payload {
                Payload::Json => frame::to_json(&event.record).to_string().into_bytes(),
                Payload::Msgpack => handshake::encode(&event.record),
            };
            messages.push(Message {
                id: frame
                    .chunk
                    .as_ref()
                    .map(|chunk| format!("fwd-{chunk}-{position}"))
                    .unwrap_or_default(),
                key: frame.tag.clone(),
                payload: payload.into(),
                headers: [("content-type".to_owned(), content_type.to_owned())].into(),
                event_time_ms: i64::try_from(event.nanos / 1_000_000).unwrap_or(i64::MAX),
            });
        }
        messages
    }
}

/// Pauses before a held frame is offered again: 0.05 s, doubling, at most 1 s.
const HOLD_RETRY: crate::runtime::Backoff = crate::runtime::Backoff {
    initial_ms: 50,
    max_ms: 1_000,
    max_attempts: u32::MAX,
};

static HELD: WarnLimit = WarnLimit::new(Duration::from_secs(10));

/// Counts a frame the door did not take, as every door counts its refused requests.
fn refused(code: &'static str) {
    super::ingest::count_refused(Door::Forward, code);
}

/// A connection's bytes and the frames in them.
struct Connection<S> {
    stream: S,
    buf: BytesMut,
    /// Where the frame at the front of `buf` has been walked to.
    scan: frame::Scan,
    stopped: watch::Receiver<bool>,
    max_frame_bytes: usize,
    read_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// The next whole frame; `None` when the client closes between frames or the door stops.
    async fn next_frame(&mut self) -> Result<Option<Value>, String> {
        loop {
            if !self.buf.is_empty() {
                if let Some(end) = self.scan.advance(&self.buf) {
                    let whole = self.buf.split_to(end);
                    self.scan = frame::Scan::default();
                    let (value, _) = frame::next_value(&whole)?
                        .ok_or("a frame the scan found whole does not decode")?;
                    return Ok(Some(value));
                }
                if self.buf.len() > self.max_frame_bytes {
                    return Err(format!(
                        "a frame over {} bytes (max_request_bytes)",
                        self.max_frame_bytes
                    ));
                }
            }
            let begun = !self.buf.is_empty();
            self.buf.reserve(64 * 1024);
            let (stream, buf, timeout) = (&mut self.stream, &mut self.buf, self.read_timeout);
            let read = async move {
                if begun {
                    tokio::time::timeout(timeout, stream.read_buf(buf))
                        .await
                        .map_err(|_| "a frame did not arrive within forward_read_timeout_ms")
                } else {
                    Ok(stream.read_buf(buf).await)
                }
            };
            let read = tokio::select! {
                read = read => read?,
                _ = self.stopped.changed() => return Ok(None),
            };
            match read {
                Ok(0) if begun => return Err("the client closed in the middle of a frame".into()),
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(format!("cannot read: {e}")),
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("cannot answer: {e}"))?;
        self.stream
            .flush()
            .await
            .map_err(|e| format!("cannot answer: {e}"))
    }
}

/// Answers every UDP heartbeat (any datagram) with one byte `0x00`, as `in_forward` does.
async fn heartbeats(udp: UdpSocket, mut stopped: watch::Receiver<bool>) {
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            received = udp.recv_from(&mut buf) => {
                if let Ok((_, peer)) = received {
                    let _ = udp.send_to(&[0], peer).await;
                }
            }
            _ = stopped.changed() => return,
        }
    }
}

/// This host's name, for the handshake (`/proc/sys/kernel/hostname`, else `sidelog`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sidelog".into())
}
