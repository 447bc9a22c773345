//! Journal group commit: records per second against the number of concurrent appenders.
//!
//! Each appender waits for its own durable ack (one fsync per commit), as a publish does; the
//! single writer gathers whatever is waiting into one transaction. With more appenders, more
//! records share each fsync: the throughput should grow with concurrency.
//!
//! `cargo bench --bench journal`

// A benchmark measures real time; the clock seam is for the code under test.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sidelog::journal::{Journal, JournalConfig, Seq};
use sidelog::proto::Message;
use sidelog::runtime::SystemClock;

const RECORDS_PER_APPENDER: u64 = 200;

fn group_commit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let journal = open(dir.path());
    let payload: bytes::Bytes = vec![b'x'; 256].into();
    let mut group = c.benchmark_group("journal_append_256B");
    group.measurement_time(Duration::from_secs(5));
    for appenders in [1u64, 8, 64] {
        group.throughput(Throughput::Elements(appenders * RECORDS_PER_APPENDER));
        group.bench_with_input(
            BenchmarkId::from_parameter(appenders),
            &appenders,
            |b, &appenders| {
                b.to_async(&runtime).iter_custom(|iters| {
                    let (journal, payload) = (journal.clone(), payload.clone());
                    async move {
                        let start = Instant::now();
                        for i in 0..iters {
                            let tasks: Vec<_> = (0..appenders)
                                .map(|a| {
                                    let (journal, payload) = (journal.clone(), payload.clone());
                                    tokio::spawn(async move {
                                        for r in 0..RECORDS_PER_APPENDER {
                                            let m = Message {
                                                id: format!("{i}-{a}-{r}"),
                                                payload: payload.clone(),
                                                ..Default::default()
                                            };
                                            journal
                                                .append_inputs(vec![m], 0)
                                                .await
                                                .expect("append");
                                        }
                                    })
                                })
                                .collect();
                            for t in tasks {
                                t.await.expect("appender");
                            }
                        }
                        start.elapsed()
                    }
                });
            },
        );
    }
    group.finish();
}

fn open(dir: &std::path::Path) -> Journal {
    Journal::open(
        dir,
        JournalConfig {
            commit_max_records: 8192,
            sync_interval_ms: 1000,
            dedup_window_count: 10_000,
            dedup_window_age_ms: 3_600_000,
            max_file_bytes: None,
            ..JournalConfig::default()
        },
        Arc::new(SystemClock),
    )
    .expect("open the journal")
}

fn messages(prefix: &str, n: usize, payload: &bytes::Bytes) -> Vec<Message> {
    (0..n)
        .map(|r| Message {
            id: format!("{prefix}-{r}"),
            payload: payload.clone(),
            ..Default::default()
        })
        .collect()
}

/// One appender, many records per call (a `--batch N` publish): records/s against the batch
/// size, one transaction and one fsync per call.
fn batch_size(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let journal = open(dir.path());
    let payload: bytes::Bytes = vec![b'x'; 256].into();
    let mut group = c.benchmark_group("journal_batch_256B");
    group.measurement_time(Duration::from_secs(5));
    let mut call = 0u64;
    for batch in [1usize, 16, 256, 4096] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.to_async(&runtime).iter(|| {
                call += 1;
                let inputs = messages(&format!("b{call}"), batch, &payload);
                let journal = journal.clone();
                async move { journal.append_inputs(inputs, 0).await.expect("append") }
            })
        });
    }
    group.finish();
}

/// Reading the backlog back as replay does (1,024-entry scans): entries/s for a backlog of
/// 100 k 100-byte inputs.
fn backlog_scan(c: &mut Criterion) {
    const ENTRIES: usize = 100_000;
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let journal = open(dir.path());
    let payload: bytes::Bytes = vec![b'x'; 100].into();
    runtime.block_on(async {
        for chunk in 0..ENTRIES / 10_000 {
            let inputs = messages(&format!("scan{chunk}"), 10_000, &payload);
            journal.append_inputs(inputs, 0).await.expect("append");
        }
    });
    let mut group = c.benchmark_group("backlog_scan_100B");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(10);
    group.throughput(Throughput::Elements(ENTRIES as u64));
    group.bench_function(BenchmarkId::from_parameter(ENTRIES), |b| {
        b.to_async(&runtime).iter(|| {
            let journal = journal.clone();
            async move {
                let (mut from, mut seen) = (Seq(0), 0);
                loop {
                    let page = journal.scan_inputs(from, 1024).await.expect("scan");
                    let Some(last) = page.last() else { break };
                    from = Seq(last.seq.0 + 1);
                    seen += page.len();
                }
                assert_eq!(seen, ENTRIES, "the whole backlog is read");
            }
        })
    });
    group.finish();
}

criterion_group!(benches, group_commit, batch_size, backlog_scan);
criterion_main!(benches);
