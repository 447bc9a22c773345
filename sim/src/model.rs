//! The journal against a model, with crashes: random sequences of appends, recorded outputs
//! (durable or not), completions, syncs and crashes on the simulated disk (losing all, none or
//! a random part of what was not fsynced), checked after every step.
//!
//! Between crashes the journal must hold exactly what the model holds. After a crash it must
//! hold the state after one of the steps since the last durable call (commits are atomic and in
//! order; a non-durable one may have been made durable by the background sync, and is then
//! kept): never less than the last durable call left, never a mix. Sequences are never handed
//! out twice, crash or not. `SIDELOG_MODEL_CASES` sets the number of cases (1,000 by default); a failure
//! names its case, which `SIDELOG_MODEL_CASE=<n>` runs alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sidelog::journal::{Journal, JournalConfig, OutputGroup, Seq, WriterRuntime};
use sidelog::proto::Message;
use sidelog::runtime::SystemClock;

use crate::disk::{CrashLoss, DiskFaults, SimDisk};

/// An entry as the model and the journal see it: id, and for an output its input's sequence.
type Entries = BTreeMap<u64, (String, u64)>;

#[derive(Debug, Clone, Copy)]
enum Op {
    Append(u8),
    Record { pick: usize, n: u8, durable: bool },
    CompleteOutput(usize),
    CompleteInput(usize),
    Sync,
    Crash(CrashLoss),
}

fn random_op(rng: &mut StdRng) -> Op {
    match rng.random_range(0..14) {
        0..=2 => Op::Append(rng.random_range(1..4)),
        3..=6 => Op::Record {
            pick: rng.random_range(0..1000),
            n: rng.random_range(0..3),
            durable: rng.random_bool(0.3),
        },
        7..=8 => Op::CompleteOutput(rng.random_range(0..1000)),
        9 => Op::CompleteInput(rng.random_range(0..1000)),
        10 => Op::Sync,
        _ => Op::Crash(match rng.random_range(0..3) {
            0 => CrashLoss::All,
            1 => CrashLoss::None,
            _ => CrashLoss::Torn,
        }),
    }
}

fn msg(id: &str) -> Message {
    Message {
        id: id.into(),
        payload: id.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn open(disk: &SimDisk, bug_ack_before_fsync: bool) -> Journal {
    Journal::open_storage(
        Box::new(disk.clone()),
        "model/journal.redb".into(),
        JournalConfig {
            writer: WriterRuntime::Task,
            bug_ack_before_fsync,
            wal_bytes: 64 << 10,
            ..JournalConfig::default()
        },
        Arc::new(SystemClock),
    )
    .expect("the journal opens on the simulated disk")
}

/// What the journal holds: inputs (input seq 0) and outputs, in one map.
async fn read(j: &Journal) -> (Entries, Entries) {
    let inputs = j
        .scan_inputs(Seq(0), 1 << 20)
        .await
        .expect("scan inputs")
        .into_iter()
        .map(|i| (i.seq.0, (i.entry.message.unwrap_or_default().id, 0)))
        .collect();
    let outputs = j
        .scan_outputs(Seq(0), 1 << 20)
        .await
        .expect("scan outputs")
        .into_iter()
        .map(|o| {
            let id = o.entry.message.unwrap_or_default().id;
            (o.seq.0, (id, o.entry.input_seq))
        })
        .collect();
    (inputs, outputs)
}

async fn run_case(case: u64, bug_ack_before_fsync: bool) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(case);
    let disk = SimDisk::new(
        case,
        DiskFaults {
            write_error: 0.0,
            sync_error: 0.0,
            capacity: 1 << 30,
        },
    );
    let mut model = Model {
        j: Some(open(&disk, bug_ack_before_fsync)),
        disk,
        bug_ack_before_fsync,
        inputs: Entries::new(),
        outputs: Entries::new(),
        since_durable: vec![(Entries::new(), Entries::new())],
        issued: 0,
        n: 0,
    };
    let steps = rng.random_range(1..40);
    let mut history = Vec::new();
    for _ in 0..steps {
        let op = random_op(&mut rng);
        history.push(op);
        let fail = |e: String| format!("{e}\n  after {history:?}");
        let durable_point = match model.step(op).await.map_err(fail)? {
            Some(durable_point) => durable_point,
            None => continue,
        };
        model.check(durable_point).await.map_err(fail)?;
    }
    Ok(())
}

/// The journal under test and what it must hold.
struct Model {
    disk: SimDisk,
    /// `None` only while a crash reopens it.
    j: Option<Journal>,
    bug_ack_before_fsync: bool,
    inputs: Entries,
    outputs: Entries,
    /// The states after each step since the last durable one, that one first: a crash must
    /// leave one of them.
    since_durable: Vec<(Entries, Entries)>,
    /// The highest sequence ever handed out.
    issued: u64,
    /// Messages made so far (their ids).
    n: u32,
}

impl Model {
    fn j(&self) -> &Journal {
        self.j.as_ref().expect("open between steps")
    }

    /// Does `op` to the journal and the model; answers whether the state after it is durable,
    /// or `None` when there was nothing to do.
    async fn step(&mut self, op: Op) -> Result<Option<bool>, String> {
        let e = |e: sidelog::journal::JournalError| e.to_string();
        match op {
            Op::Append(k) => {
                let ms: Vec<Message> = (0..k)
                    .map(|_| {
                        self.n += 1;
                        msg(&format!("m{}", self.n))
                    })
                    .collect();
                let seqs = self.j().append_inputs(ms.clone(), 1).await.map_err(e)?;
                for (m, s) in ms.iter().zip(&seqs) {
                    self.hand_out(s.0)?;
                    self.inputs.insert(s.0, (m.id.clone(), 0));
                }
                Ok(Some(true))
            }
            Op::Record { pick, n, durable } => self.record(pick, n, durable).await,
            Op::CompleteOutput(i) => {
                let nth = i % self.outputs.len().max(1);
                if let Some(s) = self.outputs.keys().nth(nth).copied() {
                    self.outputs.remove(&s);
                    self.j().complete(vec![Seq(s)], vec![]).await.map_err(e)?;
                }
                Ok(Some(false))
            }
            Op::CompleteInput(i) => {
                let nth = i % self.inputs.len().max(1);
                if let Some(s) = self.inputs.keys().nth(nth).copied() {
                    self.inputs.remove(&s);
                    self.j().complete(vec![], vec![Seq(s)]).await.map_err(e)?;
                }
                Ok(Some(false))
            }
            Op::Sync => {
                self.j().sync().await.map_err(e)?;
                Ok(Some(true))
            }
            Op::Crash(loss) => self.crash(loss).await.map(Some),
        }
    }

    /// A sequence the journal handed out: above every one before it.
    fn hand_out(&mut self, seq: u64) -> Result<(), String> {
        if seq <= self.issued {
            return Err(format!("sequence {seq} handed out again"));
        }
        self.issued = seq;
        Ok(())
    }

    /// Records `k` outputs of an input that has none yet (the `pick`th).
    async fn record(&mut self, pick: usize, k: u8, durable: bool) -> Result<Option<bool>, String> {
        let unrecorded: Vec<u64> = self
            .inputs
            .keys()
            .copied()
            .filter(|s| !self.outputs.values().any(|(_, i)| i == s))
            .collect();
        if unrecorded.is_empty() {
            return Ok(None);
        }
        let s = unrecorded[pick % unrecorded.len()];
        let outs: Vec<Message> = (0..k)
            .map(|i| msg(&format!("{}/{i}", self.inputs[&s].0)))
            .collect();
        let group = OutputGroup {
            input_seq: Some(Seq(s)),
            dedup_id: None,
            outputs: outs.clone(),
            dead: None,
        };
        let rec = self
            .j()
            .record_outputs(vec![group], durable)
            .await
            .map_err(|e| e.to_string())?;
        if outs.is_empty() {
            self.inputs.remove(&s); // an input with no outputs is complete
        }
        for (m, o) in outs.iter().zip(&rec[0].output_seqs) {
            self.hand_out(o.0)?;
            self.outputs.insert(o.0, (m.id.clone(), s));
        }
        Ok(Some(durable))
    }

    /// Cuts the power (`loss`), reopens the journal, and checks that it holds a state some
    /// step since the last durable one left, and hands out no sequence again.
    async fn crash(&mut self, loss: CrashLoss) -> Result<bool, String> {
        self.disk.crash(loss);
        drop(self.j.take());
        self.j = Some(open(&self.disk, self.bug_ack_before_fsync));
        let got = read(self.j()).await;
        if !self.since_durable.contains(&got) {
            return Err(format!(
                "after the crash the journal holds {got:?}, which no step left; the last \
                 durable one left {:?}",
                self.since_durable[0]
            ));
        }
        (self.inputs, self.outputs) = got;
        let next = self
            .j()
            .summary()
            .await
            .map_err(|e| e.to_string())?
            .next_seq;
        if next <= self.issued {
            return Err(format!(
                "after the crash the next sequence is {next}, but {} was handed out",
                self.issued
            ));
        }
        // What survived is what the file holds now.
        Ok(true)
    }

    /// Keeps the states a crash may leave, and checks that without a crash the journal holds
    /// exactly the model (one writer: a read follows the completions queued before it).
    async fn check(&mut self, durable_point: bool) -> Result<(), String> {
        if durable_point {
            self.since_durable.clear();
        }
        self.since_durable
            .push((self.inputs.clone(), self.outputs.clone()));
        let (got_inputs, got_outputs) = read(self.j()).await;
        if got_inputs != self.inputs || got_outputs != self.outputs {
            return Err(format!(
                "the journal holds inputs {got_inputs:?} outputs {got_outputs:?}, the model {:?} {:?}",
                self.inputs, self.outputs
            ));
        }
        Ok(())
    }
}

#[test]
fn the_journal_matches_a_model_through_crashes() {
    let cases: u64 = std::env::var("SIDELOG_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let only: Option<u64> = std::env::var("SIDELOG_MODEL_CASE")
        .ok()
        .and_then(|v| v.parse().ok());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut passed = 0;
    for case in only.map_or(0..cases, |c| c..c + 1) {
        if let Err(e) = rt.block_on(run_case(case, false)) {
            panic!("case {case} (SIDELOG_MODEL_CASE={case}): {e}");
        }
        passed += 1;
    }
    println!("{passed} cases of the journal model with crashes passed");
}

/// The model can fail: with the journal acking before its fsync, a crash loses what was acked.
#[test]
fn the_model_catches_a_journal_that_acks_before_fsync() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let caught = (0..200).find_map(|case| rt.block_on(run_case(case, true)).err());
    let caught = caught.expect("200 cases with ack-before-fsync and none failed");
    assert!(caught.contains("no step left"), "{caught}");
}
