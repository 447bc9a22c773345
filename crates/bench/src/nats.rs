//! The peers in the bench table (`--peer`): NATS JetStream here, publish with ack, under the
//! same workload; Apache Kafka in `kafka.rs`.
//!
//! Each producer opens its own connection (as each sidelog producer has its own gRPC channel)
//! and publishes every message of a request with `Nats-Msg-Id` set to the message id (JetStream
//! then de-duplicates like sidelog does), then waits for every `PubAck`: a request counts as
//! answered when all its messages are stored, which is when JetStream acknowledges them. The
//! stream is a fresh file-storage stream, deleted afterwards. Whether JetStream fsyncs before the
//! `PubAck` is the server's `sync_interval` setting, not ours: `benches/nats-peer.sh` starts one
//! server of each kind.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use tokio::time::Instant;

use super::load::{Load, Send1, Target, load};
use super::{BenchArgs, ModeResult};
use sidelog::proto::Message;
use sidelog_testkit::proc_usage;

/// `--peer nats://HOST:PORT[?label=NAME&pid=PID]` or `--peer kafka://HOST:PORT[?...]`.
#[derive(Debug, Clone)]
pub struct Peer {
    pub kind: PeerKind,
    /// Its row's name in the table.
    pub label: String,
    /// `HOST:PORT` (Kafka: the bootstrap servers, comma-separated).
    pub addr: String,
    /// The server's process id, to read its CPU time and peak RSS from /proc.
    pub pid: Option<u32>,
}

/// Which server a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    Nats,
    Kafka,
}

impl Peer {
    pub fn parse(s: &str) -> Result<Peer, String> {
        let (kind, rest) = match (s.strip_prefix("nats://"), s.strip_prefix("kafka://")) {
            (Some(rest), _) => (PeerKind::Nats, rest),
            (_, Some(rest)) => (PeerKind::Kafka, rest),
            _ => {
                return Err(format!(
                    "{s:?}: a peer is nats://HOST:PORT or kafka://HOST:PORT, with \
                     [?label=NAME&pid=PID]"
                ));
            }
        };
        let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
        if addr.is_empty() || !addr.contains(':') {
            return Err(format!("{s:?}: give the server as HOST:PORT"));
        }
        let mut peer = Peer {
            kind,
            label: match kind {
                PeerKind::Nats => "nats".into(),
                PeerKind::Kafka => "kafka".into(),
            },
            addr: addr.to_owned(),
            pid: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("label", v)) if !v.is_empty() => peer.label = v.to_owned(),
                Some(("pid", v)) => {
                    peer.pid = Some(
                        v.parse()
                            .map_err(|_| format!("{s:?}: pid {v:?} is not a number"))?,
                    )
                }
                _ => return Err(format!("{s:?}: unknown option {pair:?} (label=, pid=)")),
            }
        }
        Ok(peer)
    }
}

/// A producer's connection: publishes with ack on one subject.
#[derive(Clone)]
pub(super) struct Publisher {
    js: jetstream::Context,
    subject: async_nats::Subject,
}

impl Publisher {
    pub(super) async fn connect(addr: &str, subject: &str) -> anyhow::Result<Publisher> {
        let client = async_nats::connect(addr)
            .await
            .with_context(|| format!("connecting to NATS at {addr}"))?;
        Ok(Publisher {
            js: jetstream::new(client),
            subject: subject.into(),
        })
    }
}

impl Send1 for Publisher {
    async fn send(&mut self, messages: Vec<Message>) -> Result<usize, ()> {
        // Pipelined: every publish goes out before the first ack is awaited.
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            let publish = PublishMessage::build().payload(m.payload).message_id(m.id);
            match self.js.send_publish(self.subject.clone(), publish).await {
                Ok(ack) => pending.push(ack),
                Err(_) => break,
            }
        }
        let mut ok = 0;
        for ack in pending {
            if ack.await.is_ok() {
                ok += 1;
            }
        }
        if ok == 0 { Err(()) } else { Ok(ok) }
    }
}

/// Runs the workload against one peer server and reports it like a mode.
pub(super) async fn run_peer(
    args: &BenchArgs,
    peer: &Peer,
    base: Instant,
) -> anyhow::Result<ModeResult> {
    match peer.kind {
        PeerKind::Nats => run_nats(args, peer, base).await,
        PeerKind::Kafka => super::kafka::run_peer(args, peer, base).await,
    }
}

/// Runs the workload against one JetStream server and reports it like a mode.
async fn run_nats(args: &BenchArgs, peer: &Peer, base: Instant) -> anyhow::Result<ModeResult> {
    let (js, name, mut stream, target) = create_stream(peer).await?;
    warm_up(args, &target, peer, base).await?;
    let before = stream
        .info()
        .await
        .context("reading stream info")?
        .state
        .clone();
    let (run, cpu_us_per_msg, peak_rss) = measure(args, &target, peer, base).await?;
    let after = stream
        .info()
        .await
        .context("reading stream info")?
        .state
        .clone();
    let _ = js.delete_stream(&name).await;

    let stored = after.messages.saturating_sub(before.messages);
    let bytes_per_msg = if stored == 0 {
        0.0
    } else {
        after.bytes.saturating_sub(before.bytes) as f64 / stored as f64
    };
    Ok(peer_result(
        args,
        &peer.label,
        &run,
        bytes_per_msg,
        cpu_us_per_msg,
        peak_rss,
    ))
}

/// A peer's warm-up: the workload for a fifth of the run (0.2-1 s), ids of their own.
pub(super) async fn warm_up(
    args: &BenchArgs,
    target: &Target,
    peer: &Peer,
    base: Instant,
) -> anyhow::Result<()> {
    let warmup = (args.duration / 5).clamp(Duration::from_millis(200), Duration::from_secs(1));
    load(
        args,
        target,
        &peer.label,
        base,
        1_000_000,
        Some(warmup),
        u64::MAX,
    )
    .await?;
    Ok(())
}

/// A peer's measured run, with the server's CPU µs per acked message and peak RSS when its
/// pid was given.
pub(super) async fn measure(
    args: &BenchArgs,
    target: &Target,
    peer: &Peer,
    base: Instant,
) -> anyhow::Result<(Load, Option<f64>, Option<u64>)> {
    let (cpu_before, _) = peer.pid.map(proc_usage).unwrap_or((0, 0));
    let run = load(
        args,
        target,
        &peer.label,
        base,
        0,
        args.messages.is_none().then_some(args.duration),
        args.messages.unwrap_or(u64::MAX),
    )
    .await?;
    run.report_lateness(&peer.label);
    let usage = peer.pid.map(proc_usage);
    let cpu_us_per_msg =
        usage.map(|(cpu, _)| cpu.saturating_sub(cpu_before) as f64 / (run.acked.max(1)) as f64);
    Ok((run, cpu_us_per_msg, usage.map(|(_, rss)| rss)))
}

/// A fresh stream for this run, and the target its producers publish to.
async fn create_stream(
    peer: &Peer,
) -> anyhow::Result<(jetstream::Context, String, stream::Stream, Target)> {
    let client = async_nats::connect(&peer.addr)
        .await
        .with_context(|| format!("connecting to NATS at {}", peer.addr))?;
    let js = jetstream::new(client);
    let tag: String = peer
        .label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let name = format!("SIDELOG_BENCH_{}_{tag}", std::process::id());
    let subject = format!("sidelog-bench.{}.{tag}", std::process::id());
    let _ = js.delete_stream(&name).await;
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating the JetStream stream {name} (is JetStream on?)"))?;
    let target = Target::Nats {
        addr: peer.addr.clone(),
        subject,
    };
    Ok((js, name, stream, target))
}

/// The peer's row: what its producers measured and what was read from the server.
pub(super) fn peer_result(
    args: &BenchArgs,
    label: &str,
    run: &Load,
    bytes_per_msg: f64,
    cpu_us_per_msg: Option<f64>,
    peak_rss_bytes: Option<u64>,
) -> ModeResult {
    let secs = run.elapsed.as_secs_f64().max(1e-9);
    ModeResult {
        mode: label.to_owned(),
        messages: run.acked,
        msgs_per_s: run.acked as f64 / secs,
        sink_per_s: None,
        mib_per_s: run.acked as f64 * args.size as f64 / secs / (1024.0 * 1024.0),
        ack_p50_us: run.ack.value_at_quantile(0.5),
        ack_p99_us: run.ack.value_at_quantile(0.99),
        ack_p999_us: run.ack.value_at_quantile(0.999),
        e2e_p50_us: None,
        e2e_p99_us: None,
        records_per_commit: None,
        fsyncs_per_1k: None,
        bytes_per_msg,
        cpu_us_per_msg,
        peak_rss_bytes,
        journal_peak_bytes: None,
        journal_end_bytes: None,
        ratio_to_none: None,
        errors: run.errors,
    }
}

#[cfg(test)]
mod tests {
    use super::Peer;

    #[test]
    fn parses_peer_urls() {
        let p = Peer::parse("nats://127.0.0.1:4222?label=nats-always&pid=42").unwrap();
        assert_eq!(
            (p.label.as_str(), p.addr.as_str(), p.pid),
            ("nats-always", "127.0.0.1:4222", Some(42))
        );
        let p = Peer::parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!((p.label.as_str(), p.pid), ("nats", None));
        let p = Peer::parse("kafka://127.0.0.1:9092?label=kafka-fsync&pid=7").unwrap();
        assert_eq!(
            (p.kind, p.label.as_str(), p.addr.as_str(), p.pid),
            (
                super::PeerKind::Kafka,
                "kafka-fsync",
                "127.0.0.1:9092",
                Some(7)
            )
        );
        assert!(Peer::parse("http://127.0.0.1:4222").is_err());
        assert!(Peer::parse("nats://127.0.0.1").is_err());
        assert!(Peer::parse("nats://127.0.0.1:4222?color=red").is_err());
        assert!(Peer::parse("nats://127.0.0.1:4222?pid=x").is_err());
    }
}
