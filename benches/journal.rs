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
use sidelog::clock::SystemClock;
use sidelog::journal::{Journal, JournalConfig};
use sidelog::proto::Message;

const RECORDS_PER_APPENDER: u64 = 200;

fn group_commit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let journal = Journal::open(
        dir.path(),
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
    .expect("open the journal");
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

criterion_group!(benches, group_commit);
criterion_main!(benches);
