//! Apache Kafka as a peer in the bench table: each producer its own idempotent `acks=all`
//! producer (librdkafka, as the Kafka sink uses), every message of a request sent, then every
//! delivery report awaited: a request counts as answered when Kafka acknowledged all of it.
//! The topic is made for the run (one partition, like one JetStream stream) and deleted
//! afterwards. Whether Kafka fsyncs before the ack is the broker's `log.flush.interval.messages`
//! (by default it does not); `benches/kafka-peer.sh` starts one broker of each kind.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::time::Instant;

use super::load::{Send1, Target};
use super::nats::{Peer, measure, peer_result, warm_up};
use super::{BenchArgs, ModeResult};
use sidelog::proto::Message;

/// A producer's own Kafka producer.
#[derive(Clone)]
pub(super) struct Publisher {
    producer: FutureProducer,
    topic: String,
}

impl Publisher {
    pub(super) fn connect(bootstrap: &str, topic: &str) -> anyhow::Result<Publisher> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .create()
            .with_context(|| format!("a Kafka producer for {bootstrap}"))?;
        Ok(Publisher {
            producer,
            topic: topic.to_owned(),
        })
    }
}

impl Send1 for Publisher {
    async fn send(&mut self, messages: Vec<Message>) -> Result<usize, ()> {
        let mut reports = Vec::with_capacity(messages.len());
        for m in &messages {
            let mut record = FutureRecord::to(&self.topic)
                .payload(m.payload.as_ref())
                .key(m.key.as_bytes());
            loop {
                match self.producer.send_result(record) {
                    Ok(report) => {
                        reports.push(report);
                        break;
                    }
                    Err((_, back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }
        let mut ok = 0;
        for report in reports {
            if matches!(report.await, Ok(Ok(_))) {
                ok += 1;
            }
        }
        if ok == 0 { Err(()) } else { Ok(ok) }
    }
}

fn admin(bootstrap: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .with_context(|| format!("a Kafka admin client for {bootstrap}"))
}

/// Runs the workload against one Kafka cluster and reports it like a mode.
pub(super) async fn run_peer(
    args: &BenchArgs,
    peer: &Peer,
    base: Instant,
) -> anyhow::Result<ModeResult> {
    let tag: String = peer
        .label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let topic = format!("sidelog-bench-{}-{tag}", std::process::id());
    let admin = admin(&peer.addr)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .with_context(|| format!("creating topic {topic} on {}", peer.addr))?
    {
        result.map_err(|(name, e)| anyhow::anyhow!("creating topic {name}: {e}"))?;
    }
    let target = Target::Kafka {
        bootstrap: peer.addr.clone(),
        topic: topic.clone(),
    };
    warm_up(args, &target, peer, base).await?;
    let (run, cpu_us_per_msg, peak_rss) = measure(args, &target, peer, base).await?;
    let _ = admin.delete_topics(&[&topic], &options).await;
    // Bytes per message on the broker's disk are not read here (0 in the table).
    Ok(peer_result(
        args,
        &peer.label,
        &run,
        0.0,
        cpu_us_per_msg,
        peak_rss,
    ))
}
