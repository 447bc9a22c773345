//! What a run prints: the table, the workload's line, and reading a Prometheus endpoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{BenchArgs, ModeResult};

/// Reads a Prometheus text endpoint into `series → value`.
pub(super) async fn scrape(addr: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect())
}

/// One line naming the workload, for the table and the plot.
pub(super) fn workload(args: &BenchArgs) -> String {
    format!(
        "{} producers, {} B messages, {} per request, {}{}{}{}",
        args.producers,
        args.size,
        args.batch,
        match (args.door, args.stream) {
            (super::Door::Http, _) => "HTTP door (JSON)",
            (super::Door::Mqtt, _) => "MQTT 5 QoS 1 through the broker (ack: the broker's PUBACK)",
            (super::Door::Otlp, _) => "OTLP logs Export (gRPC)",
            (super::Door::Forward, _) => "forward protocol (PackedForward, acked chunks)",
            (_, true) => "PublishStream",
            _ => "unary Publish",
        },
        args.rate
            .map(|r| format!(", open loop at {r} msg/s"))
            .unwrap_or_default(),
        args.handler_outputs
            .map(|k| format!(", handler with {k} outputs"))
            .unwrap_or_else(|| ", pass-through".into()),
        if args.fsync_latency.is_zero() {
            String::new()
        } else {
            format!(", fsync +{:?}", args.fsync_latency)
        },
    )
}

pub(super) fn print_table(args: &BenchArgs, results: &[ModeResult]) {
    fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
        v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
    }
    fn opt1(v: Option<f64>) -> String {
        v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
    }
    let width = results
        .iter()
        .map(|r| r.mode.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!("workload: {}", workload(args));
    println!(
        "{:<width$} {:>10} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>10} {:>8} {:>6}",
        "mode",
        "messages",
        "msgs/s",
        "sink/s",
        "MiB/s",
        "ack p50",
        "ack p99",
        "ack p99.9",
        "e2e p50",
        "e2e p99",
        "rec/commit",
        "fsync/1k",
        "B/msg",
        "cpu us/msg",
        "RSS MiB",
        "x none"
    );
    for r in results {
        println!(
            "{:<width$} {:>10} {:>10.0} {:>10} {:>8.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9.0} {:>10} {:>8} {:>6}",
            r.mode,
            r.messages,
            r.msgs_per_s,
            r.sink_per_s
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "-".into()),
            r.mib_per_s,
            r.ack_p50_us,
            r.ack_p99_us,
            r.ack_p999_us,
            opt(r.e2e_p50_us),
            opt(r.e2e_p99_us),
            opt1(r.records_per_commit),
            opt1(r.fsyncs_per_1k),
            r.bytes_per_msg,
            opt1(r.cpu_us_per_msg),
            opt1(r.peak_rss_bytes.map(|b| b as f64 / (1024.0 * 1024.0))),
            r.ratio_to_none
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    print_notes(results);
}

/// Under the table: each mode's journal file size, where intake outran delivery, the legend.
fn print_notes(results: &[ModeResult]) {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    for r in results {
        if let (Some(peak), Some(end)) = (r.journal_peak_bytes, r.journal_end_bytes) {
            println!(
                "{}: journal file {:.1} MiB at most, {:.1} MiB at the end ({} messages)",
                r.mode,
                mib(peak),
                mib(end),
                r.messages
            );
        }
    }
    for r in results {
        if let Some(sink) = r.sink_per_s.filter(|s| *s < 0.9 * r.msgs_per_s) {
            println!(
                "{}: intake outran delivery (the backlog grew during the run): {:.0} msgs/s acked, \
                 {sink:.0} msgs/s sustained to the sink",
                r.mode, r.msgs_per_s
            );
        }
    }
    println!(
        "latencies in µs; ack = publish→ack, e2e = publish→sink; msgs/s = acks per second of the \
         run, sink/s = the same messages per second of the run and the drain until the sink had \
         them all; errors: {}",
        results
            .iter()
            .map(|r| format!("{} {}", r.mode, r.errors))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
