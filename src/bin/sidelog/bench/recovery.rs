//! `sidelog bench --recovery N`: how fast a restart drains a large backlog, and in how much
//! memory.
//!
//! The backlog is built the way a sidelog whose sink was down would have left it: N inputs
//! appended through the same journal code `serve` uses (in large group commits, so that ten
//! million entries take a minute, not the hours that publishing them one by one would), with
//! nothing delivered. Then a real `sidelog serve` child starts on that journal with an idle
//! in-process sink; it replays before it reports SERVING, so the time from its start to
//! SERVING, with every entry at the sink, is the recovery time. Replay streams the journal in
//! 1,024-entry scans and bounded queues, so peak RSS must not grow with N.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use super::BenchArgs;
use super::harness::{bench_sink, histogram, serve_sink, sidelog_child, usage};
use sidelog::Config;
use sidelog::LoggingMode;
use sidelog::journal::Journal;
use sidelog::proto::Message;
use sidelog::runtime::SystemClock;

/// Inputs per append while building the backlog (one transaction each).
const BUILD_BATCH: u64 = 20_000;

pub(super) async fn run(args: &BenchArgs, entries: u64) -> anyhow::Result<()> {
    anyhow::ensure!(entries >= 1, "--recovery needs at least 1 entry");
    let mode = args
        .modes
        .iter()
        .copied()
        .find(|m| *m != LoggingMode::None)
        .unwrap_or(LoggingMode::Hybrid);
    let dir = std::env::temp_dir().join(format!("sidelog-recovery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");

    // 1. The backlog.
    let started = Instant::now();
    let journal = Journal::open(
        &data,
        sidelog::journal_config(&Config::default()),
        Arc::new(SystemClock),
    )
    .with_context(|| format!("creating a journal in {}", data.display()))?;
    let payload = bytes::Bytes::from(vec![b'x'; args.size]);
    let mut next = 0u64;
    while next < entries {
        let n = BUILD_BATCH.min(entries - next);
        let inputs = (next..next + n)
            .map(|i| Message {
                id: format!("r-{i}"),
                key: format!("k{}", i % 64),
                payload: payload.clone(),
                ..Default::default()
            })
            .collect();
        journal
            .append_inputs(inputs, 0)
            .await
            .context("building the backlog")?;
        next += n;
    }
    journal.close().await.context("closing the built journal")?;
    drop(journal);
    let built = started.elapsed();
    let file_bytes = std::fs::metadata(data.join("journal.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    eprintln!(
        "bench: built a backlog of {entries} {}-byte inputs in {:.1} s ({:.0} entries/s), journal {:.1} MiB",
        args.size,
        built.as_secs_f64(),
        entries as f64 / built.as_secs_f64().max(1e-9),
        file_bytes as f64 / (1024.0 * 1024.0),
    );

    // 2. The restart, with an idle sink.
    let delivered = Arc::new(AtomicU64::new(0));
    let e2e = Arc::new(Mutex::new(histogram()));
    let sink = bench_sink(Instant::now(), &delivered, &e2e, Duration::ZERO);
    let sink_server = serve_sink(&sink).await?;
    let (mut child, _metrics) =
        sidelog_child(&dir, mode, &sink_server.url(), None, Duration::ZERO)?;
    let started = Instant::now();
    child.spawn();
    // Sample the delivered count while waiting, for the progress line.
    let progress = {
        let delivered = delivered.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                eprintln!(
                    "bench: replay: {} delivered after {:.0} s",
                    delivered.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64()
                );
            }
        })
    };
    let served = child.try_wait_serving(Duration::from_secs(3600)).await;
    progress.abort();
    served
        .map_err(anyhow::Error::msg)
        .context("waiting for the replay to finish")?;
    let replayed = started.elapsed();
    let (cpu_us, peak_rss) = usage(&child);
    child.kill9().await;
    let after_bytes = std::fs::metadata(data.join("journal.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    let got = delivered.load(Ordering::Relaxed);
    anyhow::ensure!(
        got >= entries,
        "replay reported done but the sink has only {got} of {entries} entries"
    );

    println!(
        "recovery: mode {mode}, {entries} entries of {} B, idle sink",
        args.size
    );
    println!(
        "replay (start to SERVING, all delivered): {:.2} s, {:.0} entries/s, peak RSS {:.1} MiB, CPU {:.1} µs/entry, {} delivered ({} duplicates), journal {:.1} MiB before, {:.1} MiB after",
        replayed.as_secs_f64(),
        entries as f64 / replayed.as_secs_f64().max(1e-9),
        peak_rss as f64 / (1024.0 * 1024.0),
        cpu_us as f64 / entries as f64,
        got,
        got - entries,
        file_bytes as f64 / (1024.0 * 1024.0),
        after_bytes as f64 / (1024.0 * 1024.0),
    );
    if let Some(path) = &args.json {
        let json = serde_json::json!({ "recovery": {
            "mode": mode.as_str(),
            "entries": entries,
            "entry_bytes": args.size,
            "build_s": built.as_secs_f64(),
            "replay_s": replayed.as_secs_f64(),
            "entries_per_s": entries as f64 / replayed.as_secs_f64().max(1e-9),
            "peak_rss_bytes": peak_rss,
            "cpu_us_per_entry": cpu_us as f64 / entries as f64,
            "delivered": got,
            "journal_bytes_before": file_bytes,
            "journal_bytes_after": after_bytes,
        }});
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {} (--json)", path.display()))?;
    }
    Ok(())
}
