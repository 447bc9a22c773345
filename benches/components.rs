//! The pieces on every message's path, one at a time: the dedup window (a claim per publish)
//! and journal record encoding and decoding.
//!
//! `cargo bench --bench components`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sidelog::journal::{Seq, decode_record, encode_input, encode_record};
use sidelog::proto::Message;
use sidelog::proto::journal::InputEntry;
use sidelog::runtime::SystemClock;
use sidelog::{Claim, DedupWindow};

/// A claim per publish against a full window: fresh ids (claim, commit, evict the oldest) and
/// retried ids (found, answered DUPLICATE), for windows of 10 k and 1 M ids.
fn dedup(c: &mut Criterion) {
    let mut group = c.benchmark_group("dedup_claim");
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(1));
    for size in [10_000u64, 1_000_000] {
        let window = DedupWindow::new(size, i64::MAX / 2, Arc::new(SystemClock));
        for i in 0..size {
            if let Claim::Fresh(guard) = window.claim(&format!("warm-{i}")) {
                guard.commit(Seq(i + 1));
            }
        }
        let mut next = 0u64;
        group.bench_with_input(BenchmarkId::new("fresh", size), &size, |b, _| {
            b.iter(|| {
                next += 1;
                match window.claim(&format!("fresh-{next}")) {
                    Claim::Fresh(guard) => guard.commit(Seq(size + next)),
                    _ => unreachable!("every id is new"),
                }
            })
        });
        // Ids still in the window: the newest `size / 2` fresh ones are certainly there.
        let mut k = 0u64;
        group.bench_with_input(BenchmarkId::new("duplicate", size), &size, |b, _| {
            b.iter(|| {
                k = k % (size / 2) + 1;
                match window.claim(&format!("fresh-{}", next - k + 1)) {
                    Claim::Duplicate(seq) => seq,
                    _ => unreachable!("the id is in the window"),
                }
            })
        });
    }
    group.finish();
}

fn message(size: usize) -> Message {
    let mut headers = BTreeMap::new();
    headers.insert("content-type".to_owned(), "application/json".to_owned());
    headers.insert(
        "trace-id".to_owned(),
        "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
    );
    Message {
        id: "0192f7a4-8c31-7c2e-9d5b-3f1e2a4b6c8d".into(),
        key: "device-1234".into(),
        payload: vec![b'x'; size].into(),
        headers,
        event_time_ms: 1_763_000_000_000,
    }
}

/// An input record written (from the borrowed message, as the writer does; and through a
/// cloned `InputEntry`, the obvious way) and read back.
fn encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("record");
    group.measurement_time(Duration::from_secs(3));
    for size in [100usize, 1024, 16 * 1024] {
        let m = message(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("encode_borrowed", size), &m, |b, m| {
            b.iter(|| encode_input(m, 1_763_000_000_123))
        });
        group.bench_with_input(BenchmarkId::new("encode_cloned", size), &m, |b, m| {
            b.iter(|| {
                encode_record(&InputEntry {
                    message: Some(m.clone()),
                    received_at_ms: 1_763_000_000_123,
                })
            })
        });
        let bytes = encode_input(&m, 1_763_000_000_123);
        group.bench_with_input(BenchmarkId::new("decode", size), &bytes, |b, bytes| {
            b.iter_batched(
                || bytes.clone(),
                |bytes| decode_record::<InputEntry>("inputs", 1, &bytes).expect("decodes"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, dedup, encoding);
criterion_main!(benches);
