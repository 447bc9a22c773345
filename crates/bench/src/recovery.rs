//! `sidelog-bench --recovery N`: how fast a restart drains a large backlog, and in how much
//! memory.
//!
//! The backlog is built the way a sidelog whose sink was down would have left it: N inputs
//! appended through the same journal code `serve` uses (in large group commits, so that ten
//! million entries take a minute, not the hours that publishing them one by one would), with
//! nothing delivered. Then a real `sidelog serve` child starts on that journal with an idle
//! in-process sink; it replays before it reports SERVING, so the time from its start to
//! SERVING, with every entry at the sink, is the recovery time. Replay streams the journal in
//! 1,024-entry scans and bounded queues, so peak RSS must not grow with N.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use super::BenchArgs;
use super::harness::{bench_sink, file_len, histogram, serve_sink, sidelog_child, usage};
use sidelog::Config;
use sidelog::LoggingMode;
use sidelog::journal::Journal;
use sidelog::proto::Message;
use sidelog::runtime::SystemClock;

/// Inputs per append while building the backlog (one transaction each).
const BUILD_BATCH: u64 = 20_000;

/// What the targets table reads of a recovery run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Recovered {
    pub entries_per_s: f64,
    pub peak_rss_bytes: u64,
}

pub(super) async fn run(args: &BenchArgs, entries: u64) -> anyhow::Result<Recovered> {
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
    let journal_file = data.join(sidelog::journal::FILE_NAME);
    let built = build_backlog(&data, entries, args.size).await?;
    let before_bytes = file_len(&journal_file);
    eprintln!(
        "bench: built a backlog of {entries} {}-byte inputs in {:.1} s ({:.0} entries/s), journal {:.1} MiB",
        args.size,
        built.as_secs_f64(),
        entries as f64 / built.as_secs_f64().max(1e-9),
        mib(before_bytes),
    );
    // The other binary's restarts first, on a copy (it writes the redo log its own way).
    let compared = match &args.recovery_compare_binary {
        Some(program) => {
            let copy = std::env::temp_dir()
                .join(format!("sidelog-recovery-compare-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&copy);
            std::fs::create_dir_all(copy.join("data"))?;
            for file in [sidelog::journal::FILE_NAME, sidelog::journal::WAL_FILE_NAME] {
                std::fs::copy(data.join(file), copy.join("data").join(file))
                    .with_context(|| format!("copying {file} for the compared binary"))?;
            }
            let clean = restart(&copy, mode, 0, Some(program)).await?;
            let killed = restart(&copy, mode, 1, Some(program)).await?;
            let _ = std::fs::remove_dir_all(&copy);
            Some((program.clone(), clean, killed))
        }
        None => None,
    };
    // Restarts before anything is delivered (the sink refuses): after the clean stop the
    // build ended with, then after a SIGKILL.
    let clean = restart(&dir, mode, 0, None).await?;
    let killed = restart(&dir, mode, 1, None).await?;
    let probes = 2;
    let replay = replay_backlog(&dir, mode).await?;
    let after_bytes = file_len(&journal_file);
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(
        replay.delivered >= entries + probes,
        "replay reported done but the sink has only {} of {entries} entries",
        replay.delivered
    );
    let report = Report {
        mode,
        entries,
        probes,
        clean,
        killed,
        compared,
        entry_bytes: args.size,
        built,
        replay,
        before_bytes,
        after_bytes,
    };
    report.print();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)
            .with_context(|| format!("writing {} (--json)", path.display()))?;
    }
    Ok(Recovered {
        entries_per_s: report.entries_per_s(),
        peak_rss_bytes: report.replay.peak_rss,
    })
}

/// Step 1, the backlog: `entries` inputs of `size` bytes appended to a journal in `data`, in large
/// group commits, with nothing delivered. Returns how long that took.
async fn build_backlog(data: &Path, entries: u64, size: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let journal = Journal::open(
        data,
        sidelog::journal_config(&Config::default()),
        Arc::new(SystemClock),
    )
    .with_context(|| format!("creating a journal in {}", data.display()))?;
    let payload = bytes::Bytes::from(vec![b'x'; size]);
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
    Ok(started.elapsed())
}

/// How soon a restart on the backlog took traffic and began replaying it.
struct Restart {
    /// From the process's start to its first accepted publish (`replay.policy = interleave`).
    first_publish: Duration,
    /// From the process's start to the replay's start (its log line).
    replay_start: Duration,
    /// The rewrite-through at start, if its log says it did one: bytes and milliseconds.
    rewrite: Option<(u64, u64)>,
}

/// Starts sidelog on the backlog with `replay.policy = interleave` and a sink that refuses
/// (nothing is delivered, the backlog stays whole), publishes one probe message until it is
/// accepted, waits for the replay to start, and SIGKILLs it.
async fn restart(
    dir: &Path,
    mode: LoggingMode,
    probe: u64,
    program: Option<&std::path::PathBuf>,
) -> anyhow::Result<Restart> {
    let nowhere = sidelog_testkit::free_port().context("binding a loopback port")?;
    let (child, _metrics) = sidelog_child(
        dir,
        mode,
        &format!("http://{nowhere}"),
        None,
        Duration::ZERO,
    )?;
    let mut child = child.with_env("RUST_LOG", "info");
    if let Some(program) = program {
        child = child.with_program(program.clone());
    }
    // The backlog may be past the default backlog limit (10 M × 100 B is 1.2 GiB): the probe
    // must be accepted, not refused for it.
    child.add_args(&[
        "--replay-policy",
        "interleave",
        "--limits-max-backlog-bytes",
        "1099511627776",
    ]);
    let log = dir.join("sidelog.log");
    let log_before = file_len(&log) as usize;
    let started = Instant::now();
    child.spawn();
    let deadline = started + Duration::from_secs(900);
    let (mut first_publish, mut replay_start) = (None, None);
    while first_publish.is_none() || replay_start.is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the restart did not take traffic and start its replay within 900 s; log:\n{}",
            child.log_tail()
        );
        if replay_start.is_none() {
            let text = std::fs::read(&log).unwrap_or_default();
            let text = String::from_utf8_lossy(text.get(log_before..).unwrap_or_default());
            if text.contains("replaying the journal") {
                replay_start = Some(started.elapsed());
            }
        }
        if first_publish.is_none() && probe_accepted(child.url(), probe).await {
            first_publish = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill9().await;
    // What the start spent rewriting the journal through, as its log says (a build that
    // does not say it, an earlier version, shows none).
    let text = std::fs::read(&log).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(log_before..).unwrap_or_default());
    let field = |line: &str, name: &str| -> Option<u64> {
        let at = line.find(&format!(" {name}="))? + name.len() + 2;
        line[at..].split(' ').next()?.parse().ok()
    };
    let rewrite = text
        .lines()
        .find(|l| l.contains("rewrote the journal through"))
        .and_then(|l| Some((field(l, "bytes")?, field(l, "ms")?)));
    Ok(Restart {
        first_publish: first_publish.unwrap_or_default(),
        replay_start: replay_start.unwrap_or_default(),
        rewrite,
    })
}

/// Whether sidelog at `url` accepts the restart's probe message now.
async fn probe_accepted(url: String, probe: u64) -> bool {
    use sidelog::proto::ingest_client::IngestClient;
    let Ok(mut client) = IngestClient::connect(url).await else {
        return false;
    };
    let message = Message {
        id: format!("restart-probe-{probe}"),
        payload: b"probe".to_vec().into(),
        ..Default::default()
    };
    let request = sidelog::proto::PublishRequest {
        messages: vec![message],
    };
    client.publish(request).await.is_ok_and(|r| {
        r.into_inner()
            .acks
            .first()
            .is_some_and(|a| a.status == sidelog::proto::ack::Status::Accepted as i32)
    })
}

/// What the restart did.
struct Replay {
    elapsed: Duration,
    cpu_us: u64,
    peak_rss: u64,
    delivered: u64,
}

/// Step 2, the restart on that journal, with an idle in-process sink: from the child's start to
/// SERVING, every entry at the sink.
async fn replay_backlog(dir: &Path, mode: LoggingMode) -> anyhow::Result<Replay> {
    let delivered = Arc::new(AtomicU64::new(0));
    let e2e = Arc::new(Mutex::new(histogram()));
    let sink = bench_sink(Instant::now(), &delivered, &e2e, Duration::ZERO);
    let sink_server = serve_sink(&sink).await?;
    let (mut child, _metrics) = sidelog_child(dir, mode, &sink_server.url(), None, Duration::ZERO)?;
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
    let elapsed = started.elapsed();
    let (cpu_us, peak_rss) = usage(&child);
    child.kill9().await;
    Ok(Replay {
        elapsed,
        cpu_us,
        peak_rss,
        delivered: delivered.load(Ordering::Relaxed),
    })
}

/// The figures of one recovery run.
struct Report {
    mode: LoggingMode,
    entries: u64,
    /// Messages the restarts published.
    probes: u64,
    clean: Restart,
    killed: Restart,
    /// The restarts of `--recovery-compare-binary`.
    compared: Option<(std::path::PathBuf, Restart, Restart)>,
    entry_bytes: usize,
    built: Duration,
    replay: Replay,
    before_bytes: u64,
    after_bytes: u64,
}

impl Report {
    fn entries_per_s(&self) -> f64 {
        self.entries as f64 / self.replay.elapsed.as_secs_f64().max(1e-9)
    }

    fn cpu_us_per_entry(&self) -> f64 {
        self.replay.cpu_us as f64 / self.entries as f64
    }

    fn print(&self) {
        let r = &self.replay;
        println!(
            "recovery: mode {}, {} entries of {} B, idle sink",
            self.mode, self.entries, self.entry_bytes
        );
        let mut runs = vec![("this binary", &self.clean, &self.killed)];
        if let Some((program, clean, killed)) = &self.compared {
            runs.push((
                program.to_str().unwrap_or("the compared binary"),
                clean,
                killed,
            ));
        }
        for (who, clean, killed) in runs {
            for (when, r) in [("after a clean stop", clean), ("after a SIGKILL", killed)] {
                let rewrite = match r.rewrite {
                    Some((bytes, ms)) => {
                        format!("; rewrote {:.1} MiB through in {ms} ms", mib(bytes))
                    }
                    None => String::new(),
                };
                println!(
                    "restart {when} ({who}): first publish accepted {:.3} s, replay started {:.3} s after the process started (replay.policy interleave){rewrite}",
                    r.first_publish.as_secs_f64(),
                    r.replay_start.as_secs_f64(),
                );
            }
        }
        println!(
            "replay (start to SERVING, all delivered): {:.2} s, {:.0} entries/s, peak RSS {:.1} MiB, CPU {:.1} µs/entry, {} delivered ({} duplicates), journal {:.1} MiB before, {:.1} MiB after",
            r.elapsed.as_secs_f64(),
            self.entries_per_s(),
            mib(r.peak_rss),
            self.cpu_us_per_entry(),
            r.delivered,
            r.delivered - self.entries - self.probes,
            mib(self.before_bytes),
            mib(self.after_bytes),
        );
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "recovery": {
            "mode": self.mode.as_str(),
            "entries": self.entries,
            "entry_bytes": self.entry_bytes,
            "build_s": self.built.as_secs_f64(),
            "replay_s": self.replay.elapsed.as_secs_f64(),
            "entries_per_s": self.entries_per_s(),
            "peak_rss_bytes": self.replay.peak_rss,
            "cpu_us_per_entry": self.cpu_us_per_entry(),
            "delivered": self.replay.delivered,
            "journal_bytes_before": self.before_bytes,
            "journal_bytes_after": self.after_bytes,
            "restart_after_clean_stop": {
                "first_publish_s": self.clean.first_publish.as_secs_f64(),
                "replay_start_s": self.clean.replay_start.as_secs_f64(),
            },
            "restart_after_sigkill": {
                "first_publish_s": self.killed.first_publish.as_secs_f64(),
                "replay_start_s": self.killed.replay_start.as_secs_f64(),
            },
        }})
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
