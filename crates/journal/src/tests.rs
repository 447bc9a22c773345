//! Tests of the journal: reopening, crashes, damaged files, and a model-based property test.

use std::collections::BTreeMap;

use proptest::prelude::*;

use std::path::Path;
use std::sync::Arc;

use super::*;
use sidelog_proto::journal::{InputEntry, OutputEntry, dead_letter};
use sidelog_proto::v1::Message;
use sidelog_runtime::SystemClock;

fn config() -> JournalConfig {
    JournalConfig {
        commit_max_records: 64,
        sync_interval_ms: 1000,
        dedup_window_count: 1000,
        dedup_window_age_ms: 3_600_000,
        max_file_bytes: None,
        ..JournalConfig::default()
    }
}

fn open(dir: &Path) -> Journal {
    Journal::open(dir, config(), Arc::new(SystemClock)).expect("open the journal")
}

fn msg(id: &str) -> Message {
    Message {
        id: id.into(),
        payload: id.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

async fn all_inputs(j: &Journal) -> Vec<StoredInput> {
    j.scan_inputs(Seq(0), usize::MAX).await.unwrap()
}

async fn all_outputs(j: &Journal) -> Vec<StoredOutput> {
    j.scan_outputs(Seq(0), usize::MAX).await.unwrap()
}

#[tokio::test]
async fn entries_survive_reopen_and_finished_ones_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let seqs = j
        .append_inputs(vec![msg("a"), msg("b"), msg("c")], 1)
        .await
        .unwrap();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequences ascend: {seqs:?}"
    );
    // hml: "a" gets two outputs, "b" none (it is complete at once).
    let rec = j
        .record_outputs(
            vec![
                OutputGroup {
                    input_seq: Some(seqs[0]),
                    dedup_id: None,
                    outputs: vec![msg("a/0"), msg("a/1")],
                    dead: None,
                },
                OutputGroup {
                    input_seq: Some(seqs[1]),
                    dedup_id: None,
                    outputs: vec![],
                    dead: None,
                },
            ],
            false,
        )
        .await
        .unwrap();
    assert_eq!(rec[0].output_seqs.len(), 2);
    assert_eq!(j.backlog().entries(), 4, "a, c and a's two outputs");
    j.complete(vec![rec[0].output_seqs[0]], vec![])
        .await
        .unwrap();
    j.close().await.unwrap();

    let j = open(dir.path());
    let inputs = all_inputs(&j).await;
    let states: Vec<_> = inputs
        .iter()
        .map(|i| (i.entry.message.as_ref().unwrap().id.clone(), i.state))
        .collect();
    assert_eq!(
        states,
        [
            ("a".to_string(), InputState::OutputsPending),
            ("c".to_string(), InputState::Unhandled)
        ]
    );
    let outputs = all_outputs(&j).await;
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].entry.input_seq, seqs[0].0);
    // a/1 dead-lettered without its completion mark: replay sees "a" as finished.
    j.dead_letter(vec![NewDeadLetter {
        kind: dead_letter::Kind::Output,
        message: msg("a/1"),
        reason: "test".into(),
        attempts: 3,
        input_seq: Some(seqs[0]),
        remove: Some(EntryRef::Output(outputs[0].seq)),
        complete_input: None,
    }])
    .await
    .unwrap();
    assert_eq!(all_inputs(&j).await[0].state, InputState::Finished);
    j.complete(vec![], vec![seqs[0], seqs[2]]).await.unwrap();
    j.sync().await.unwrap();
    assert_eq!(j.backlog().entries(), 0);
    assert_eq!(j.backlog().bytes(), 0);
    let summary = j.summary().await.unwrap();
    assert_eq!(
        (summary.inputs, summary.outputs, summary.dead_letters),
        (0, 0, 1)
    );
    let next = summary.next_seq;
    j.close().await.unwrap();

    // Sequences are never reused after a reopen.
    let j = open(dir.path());
    let more = j.append_inputs(vec![msg("d")], 1).await.unwrap();
    assert!(more[0].0 >= next, "{more:?} reuses a sequence below {next}");
    let dedup: Vec<_> = j
        .load_dedup()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(dedup, ["a", "b", "c", "d"]);
}

/// The borrowed-message encoders write exactly what prost writes for the entries.
#[test]
fn entries_encode_without_a_clone_to_the_same_bytes() {
    let mut headers = std::collections::BTreeMap::new();
    headers.insert("sidelog-seq".to_string(), "7".to_string());
    headers.insert("a".to_string(), String::new());
    let full = Message {
        id: "x/1".into(),
        key: "k".into(),
        payload: vec![0, 1, 2, 255].into(),
        headers,
        event_time_ms: -5,
    };
    for m in [full, Message::default()] {
        for at in [0, 1, -1, i64::MAX] {
            let entry = InputEntry {
                message: Some(m.clone()),
                received_at_ms: at,
            };
            assert_eq!(encode_input(&m, at), encode_record(&entry));
            for input_seq in [0, 3, u64::MAX] {
                let entry = OutputEntry {
                    message: Some(m.clone()),
                    input_seq,
                    recorded_at_ms: at,
                };
                assert_eq!(encode_output(&m, input_seq, at), encode_record(&entry));
            }
        }
    }
}

/// Acked commits are in the redo log until a checkpoint; after a clean close `journal.redb`
/// alone holds everything (a copy of it is a whole backup). The close checkpoints, and redb
/// also persists its commits without fsync when it closes cleanly.
#[tokio::test]
async fn a_clean_close_leaves_everything_in_the_journal_file() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let wal = dir.path().join(WAL_FILE_NAME);
    assert_eq!(
        std::fs::metadata(&wal).unwrap().len(),
        4096 + config().wal_bytes,
        "the log is allocated in full"
    );
    j.append_inputs(vec![msg("a"), msg("b")], 1).await.unwrap();
    j.append_inputs(vec![msg("c")], 2).await.unwrap();
    j.close().await.unwrap();
    std::fs::remove_file(&wal).unwrap();
    let j = open(dir.path());
    let ids: Vec<String> = all_inputs(&j)
        .await
        .into_iter()
        .map(|i| i.entry.message.unwrap().id)
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    j.close().await.unwrap();
}

/// Replay's scans read on to the end of a block, so each block is read once; other scans
/// stop at their limit.
#[tokio::test]
async fn a_scan_by_block_ends_with_its_block() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    // Two commits, two blocks of 10.
    let ids = |from: usize| (from..from + 10).map(|i| msg(&format!("m{i}"))).collect();
    let first = j.append_inputs(ids(0), 1).await.unwrap();
    j.append_inputs(ids(10), 1).await.unwrap();
    let outputs = j
        .record_outputs(
            vec![OutputGroup {
                input_seq: None,
                dedup_id: None,
                outputs: (0..10).map(|i| msg(&format!("o{i}"))).collect(),
                dead: None,
            }],
            false,
        )
        .await
        .unwrap();
    let lens = |v: &[StoredInput]| v.len();
    assert_eq!(lens(&j.scan_inputs(Seq(0), 3).await.unwrap()), 3);
    assert_eq!(
        lens(
            &j.scan_inputs(Seq(0), ScanLimit::to_block_end(3))
                .await
                .unwrap()
        ),
        10
    );
    assert_eq!(
        lens(
            &j.scan_inputs(first[3], ScanLimit::to_block_end(3))
                .await
                .unwrap()
        ),
        7
    );
    assert_eq!(
        lens(
            &j.scan_inputs(Seq(0), ScanLimit::to_block_end(11))
                .await
                .unwrap()
        ),
        20
    );
    let scanned: Vec<Seq> = j
        .scan_inputs(first[9], ScanLimit::to_block_end(1))
        .await
        .unwrap()
        .iter()
        .map(|i| i.seq)
        .collect();
    assert_eq!(scanned, [first[9]], "the rest of the first block only");
    let first_output = outputs[0].output_seqs[0];
    assert_eq!(j.scan_outputs(first_output, 2).await.unwrap().len(), 2);
    assert_eq!(
        j.scan_outputs(first_output, ScanLimit::to_block_end(2))
            .await
            .unwrap()
            .len(),
        10
    );
    j.close().await.unwrap();
}

#[tokio::test]
async fn a_damaged_file_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    j.append_inputs(vec![msg("a")], 1).await.unwrap();
    j.close().await.unwrap();
    let path = dir.path().join(FILE_NAME);
    let mut bytes = std::fs::read(&path).unwrap();
    let n = 4096.min(bytes.len());
    bytes[..n].fill(0xA5);
    std::fs::write(&path, &bytes).unwrap();
    let err = Journal::open(dir.path(), config(), Arc::new(SystemClock)).unwrap_err();
    assert!(err.to_string().contains(FILE_NAME), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_completes_the_input_it_finishes_in_the_same_commit() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let seqs = j.append_inputs(vec![msg("a")], 1).await.unwrap();
    j.dead_letter(vec![NewDeadLetter {
        kind: dead_letter::Kind::Output,
        message: msg("a"),
        reason: "sink failed".into(),
        attempts: 1,
        input_seq: Some(seqs[0]),
        remove: None,
        complete_input: Some(seqs[0]),
    }])
    .await
    .unwrap();
    assert!(all_inputs(&j).await.is_empty());
    assert_eq!(j.backlog().entries(), 0);
    assert_eq!(j.scan_dead_letters(Seq(0), 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salvage_reads_a_cleanly_closed_file_without_writing_it() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    j.append_inputs(vec![msg("a"), msg("b"), msg("c")], 1)
        .await
        .unwrap();
    j.close().await.unwrap();
    drop(j);
    let path = dir.path().join(FILE_NAME);
    let before = std::fs::read(&path).unwrap();
    let tables = salvage(&path).unwrap();
    assert_eq!(tables[0].table, "inputs");
    assert_eq!((tables[0].readable, tables[0].error.clone()), (3, None));
    assert_eq!(tables[3].table, "dedup");
    assert_eq!(tables[3].readable, 3);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "salvage wrote to the file"
    );
}

/// A first start that died while creating the journal (power cut, I/O error) leaves only a
/// half-built temporary file: the next start builds a new journal instead of refusing a
/// "damaged" one forever.
#[tokio::test]
async fn a_half_created_journal_is_built_again() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("journal.redb.new"), b"half a header").unwrap();
    let j = open(dir.path());
    j.append_inputs(vec![msg("a")], 1).await.unwrap();
    j.close().await.unwrap();
    assert!(!dir.path().join("journal.redb.new").exists());
    let j = open(dir.path());
    assert_eq!(all_inputs(&j).await.len(), 1);
}

#[tokio::test]
async fn the_persisted_dedup_window_is_bounded_by_count() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(
        dir.path(),
        JournalConfig {
            dedup_window_count: 3,
            ..config()
        },
        Arc::new(SystemClock),
    )
    .unwrap();
    for id in ["a", "b", "c", "d", "e"] {
        j.append_inputs(vec![msg(id)], 1).await.unwrap();
    }
    let ids: Vec<_> = j
        .load_dedup()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["c", "d", "e"]);
}

/// Operations of the model test.
#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    /// Record `n` outputs for the i-th live input (hml), durably or not.
    Record {
        input: usize,
        n: u8,
        durable: bool,
    },
    /// Record `n` outputs with no input (sbml).
    RecordAlone(u8),
    CompleteOutput(usize),
    CompleteInput(usize),
    DeadLetterOutput(usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..4).prop_map(Op::Append),
        2 => (any::<usize>(), 0u8..3, any::<bool>()).prop_map(|(input, n, durable)| Op::Record { input, n, durable }),
        1 => (0u8..3).prop_map(Op::RecordAlone),
        2 => any::<usize>().prop_map(Op::CompleteOutput),
        1 => any::<usize>().prop_map(Op::CompleteInput),
        1 => any::<usize>().prop_map(Op::DeadLetterOutput),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The journal against a BTreeMap model: after any sequence of operations (with
    /// reopens in between), the entries, the backlog counters and sequence order agree.
    #[test]
    fn the_journal_matches_a_simple_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut j = open(dir.path());
            let mut inputs: BTreeMap<u64, String> = BTreeMap::new();
            let mut outputs: BTreeMap<u64, (String, u64)> = BTreeMap::new();
            let mut recorded: BTreeMap<u64, ()> = BTreeMap::new();
            let mut dead = 0u64;
            let mut last_seq = 0u64;
            let mut n = 0u32;
            for op in ops {
                match op {
                    Op::Append(k) => {
                        let ms: Vec<Message> = (0..k).map(|_| { n += 1; msg(&format!("m{n}")) }).collect();
                        let seqs = j.append_inputs(ms.clone(), 1).await.unwrap();
                        for (m, s) in ms.iter().zip(&seqs) {
                            prop_assert!(s.0 > last_seq);
                            last_seq = s.0;
                            inputs.insert(s.0, m.id.clone());
                        }
                    }
                    Op::Record { input, n: k, durable } => {
                        let unrecorded: Vec<u64> = inputs.keys().copied().filter(|s| !recorded.contains_key(s)).collect();
                        if unrecorded.is_empty() { continue; }
                        let s = unrecorded[input % unrecorded.len()];
                        let outs: Vec<Message> = (0..k).map(|i| msg(&format!("{}/{i}", inputs[&s]))).collect();
                        let rec = j.record_outputs(vec![OutputGroup { input_seq: Some(Seq(s)), dedup_id: None, outputs: outs.clone(), dead: None }], durable).await.unwrap();
                        if outs.is_empty() {
                            inputs.remove(&s);
                        } else {
                            recorded.insert(s, ());
                        }
                        for (m, o) in outs.iter().zip(&rec[0].output_seqs) {
                            prop_assert!(o.0 > last_seq);
                            last_seq = o.0;
                            outputs.insert(o.0, (m.id.clone(), s));
                        }
                    }
                    Op::RecordAlone(k) => {
                        n += 1;
                        let outs: Vec<Message> = (0..k).map(|i| msg(&format!("s{n}/{i}"))).collect();
                        let rec = j.record_outputs(vec![OutputGroup { input_seq: None, dedup_id: Some(format!("s{n}")), outputs: outs.clone(), dead: None }], true).await.unwrap();
                        prop_assert!(rec[0].ack_seq.0 > last_seq);
                        last_seq = rec[0].ack_seq.0.max(rec[0].output_seqs.last().map_or(0, |s| s.0));
                        for (m, o) in outs.iter().zip(&rec[0].output_seqs) {
                            outputs.insert(o.0, (m.id.clone(), 0));
                        }
                    }
                    Op::CompleteOutput(i) => {
                        if outputs.is_empty() { continue; }
                        let s = *outputs.keys().nth(i % outputs.len()).unwrap();
                        outputs.remove(&s);
                        j.complete(vec![Seq(s)], vec![]).await.unwrap();
                    }
                    Op::CompleteInput(i) => {
                        if inputs.is_empty() { continue; }
                        let s = *inputs.keys().nth(i % inputs.len()).unwrap();
                        inputs.remove(&s);
                        recorded.remove(&s);
                        j.complete(vec![], vec![Seq(s)]).await.unwrap();
                    }
                    Op::DeadLetterOutput(i) => {
                        if outputs.is_empty() { continue; }
                        let s = *outputs.keys().nth(i % outputs.len()).unwrap();
                        let (id, input) = outputs.remove(&s).unwrap();
                        let d = j.dead_letter(vec![NewDeadLetter {
                            kind: dead_letter::Kind::Output,
                            message: msg(&id),
                            reason: "model".into(),
                            attempts: 1,
                            input_seq: (input != 0).then_some(Seq(input)),
                            remove: Some(EntryRef::Output(Seq(s))),
                            complete_input: None,
                        }]).await.unwrap();
                        last_seq = last_seq.max(d[0].0);
                        dead += 1;
                    }
                    Op::Reopen => {
                        j.close().await.unwrap();
                        j = open(dir.path());
                    }
                }
                let got_inputs: Vec<(u64, String)> = all_inputs(&j).await.into_iter()
                    .map(|i| (i.seq.0, i.entry.message.unwrap().id)).collect();
                let want_inputs: Vec<(u64, String)> = inputs.iter().map(|(k, v)| (*k, v.clone())).collect();
                prop_assert_eq!(got_inputs, want_inputs);
                let got_outputs: Vec<(u64, String, u64)> = all_outputs(&j).await.into_iter()
                    .map(|o| (o.seq.0, o.entry.message.unwrap().id, o.entry.input_seq)).collect();
                let want_outputs: Vec<(u64, String, u64)> = outputs.iter().map(|(k, (id, i))| (*k, id.clone(), *i)).collect();
                prop_assert_eq!(got_outputs, want_outputs);
                // Completions are fire-and-forget: a read after them sees them (one writer).
                let summary = j.summary().await.unwrap();
                prop_assert_eq!(j.backlog().entries(), (inputs.len() + outputs.len()) as u64);
                prop_assert_eq!(summary.dead_letters, dead);
                prop_assert!(summary.next_seq > last_seq);
            }
            Ok(())
        })?;
    }
}

/// A file written by a sidelog of format 1 (one row per record) is rewritten when it is
/// opened: its backlog, dead letters and dedup window come through, and it is format 2 after.
#[tokio::test]
async fn a_format_1_file_is_rewritten_keeping_everything() {
    use redb::{ReadableDatabase as _, TableDefinition};
    const INPUTS: TableDefinition<u64, &[u8]> = TableDefinition::new("inputs");
    const OUTPUTS: TableDefinition<u64, &[u8]> = TableDefinition::new("outputs");
    const RECORDED: TableDefinition<u64, (u64, u32)> = TableDefinition::new("recorded");
    const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
    const DEDUP: TableDefinition<&str, (u64, i64)> = TableDefinition::new("dedup");
    const ORDER: TableDefinition<u64, &str> = TableDefinition::new("dedup_order");
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("format", 1).unwrap();
            meta.insert("seq_floor", 100).unwrap();
            let mut inputs = txn.open_table(INPUTS).unwrap();
            inputs
                .insert(3, encode_input(&msg("a"), 11).as_slice())
                .unwrap();
            inputs
                .insert(5, encode_input(&msg("b"), 12).as_slice())
                .unwrap();
            txn.open_table(RECORDED).unwrap().insert(5, (6, 1)).unwrap();
            let mut outputs = txn.open_table(OUTPUTS).unwrap();
            outputs
                .insert(6, encode_output(&msg("b/0"), 5, 13).as_slice())
                .unwrap();
            let letter = sidelog_proto::journal::DeadLetter {
                kind: dead_letter::Kind::Output as i32,
                message: Some(msg("z/0")),
                reason: "refused".into(),
                ..Default::default()
            };
            txn.open_table(DEAD)
                .unwrap()
                .insert(4, encode_record(&letter).as_slice())
                .unwrap();
            let mut dedup = txn.open_table(DEDUP).unwrap();
            let mut order = txn.open_table(ORDER).unwrap();
            for (id, seq, at) in [("a", 3, 11), ("b", 5, 12), ("old", 1, 10)] {
                dedup.insert(id, (seq, at)).unwrap();
                order.insert(seq, id).unwrap();
            }
            // A stale position: "b" was remembered again later.
            order.insert(2, "b").unwrap();
        }
        txn.commit().unwrap();
    }
    let j = open(dir.path());
    let inputs = all_inputs(&j).await;
    let got: Vec<_> = inputs.iter().map(|i| (i.seq.0, i.state)).collect();
    assert_eq!(
        got,
        [(3, InputState::Unhandled), (5, InputState::OutputsPending)]
    );
    assert_eq!(inputs[0].entry.message.as_ref().unwrap().id, "a");
    let outputs = all_outputs(&j).await;
    assert_eq!(outputs.len(), 1);
    assert_eq!((outputs[0].seq, outputs[0].entry.input_seq), (Seq(6), 5));
    assert_eq!(j.scan_dead_letters(Seq(0), 10).await.unwrap().len(), 1);
    let ids: Vec<_> = j
        .load_dedup()
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d.seq.0, d.recorded_at_ms))
        .collect();
    assert_eq!(
        ids,
        [
            ("old".to_string(), 1, 10),
            ("a".into(), 3, 11),
            ("b".into(), 5, 12)
        ]
    );
    let summary = j.summary().await.unwrap();
    assert_eq!((summary.inputs, summary.outputs), (2, 1));
    // New records take sequences above the old floor, and completing works on the old entries.
    let new = j.append_inputs(vec![msg("c")], 14).await.unwrap();
    assert!(new[0].0 >= 100, "{new:?}");
    j.complete(vec![Seq(6)], vec![Seq(5)]).await.unwrap();
    j.close().await.unwrap();
    let j = open(dir.path());
    let left: Vec<_> = all_inputs(&j).await.iter().map(|i| i.seq.0).collect();
    assert_eq!(left, [3, new[0].0]);
    assert!(all_outputs(&j).await.is_empty());
    j.close().await.unwrap();
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let format = txn
        .open_table(META)
        .unwrap()
        .get("format")
        .unwrap()
        .unwrap()
        .value();
    assert_eq!(format, FILE_FORMAT);
}
