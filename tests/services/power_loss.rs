//! Power loss on the real binary.
//!
//! A SIGKILL keeps the kernel's page cache, so the kill tests (tests/crash.rs) would pass even if
//! sidelog acked before its fsync. Here sidelog's whole data directory (the journal and the file
//! sink's chunks) lives on `sidelog-lazyfs`, a FUSE filesystem that keeps every write in memory
//! until it is fsynced and, at a "power cut", throws away everything that was not. Producers
//! publish under load; at progress points sidelog is SIGKILLed, the power is cut, the filesystem
//! is mounted again and sidelog restarted. At the end every message that was acked must be in a
//! chunk of the file sink.
//!
//! After each cut sidelog starts with another `journal.wal_bytes` (off, larger, smaller): the
//! redo log the cut left is applied whatever the setting says now.
//!
//! The planted bug `SIDELOG_UNSAFE_SKIP_FSYNC=1` (the journal's fsync returns without syncing,
//! so acks come before durability) must make the same run lose acked messages: that is what
//! shows the test can fail. The same bug with SIGKILLs alone loses nothing, which is why this
//! test exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sidelog::proto::{Message, PublishRequest, ack};
use sidelog_lazyfs::{CutReport, LazyFs, Mounted};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::{Missing, Outcome};
use crate::common::{Sidelog, poll_until};

/// Power cuts per run.
const CUTS: usize = 3;
/// Messages acked between two cuts (the progress a cut waits for).
const ACKS_PER_CUT: usize = 300;
const BATCH: usize = 10;
/// `journal.wal_bytes` of the start after each cut.
const WAL_BYTES_AFTER_CUT: [&str; 3] = ["0", "67108864", "1048576"];

pub async fn every_ack_survives_power_loss_in_rbml() -> Outcome {
    every_ack_survives("rbml").await
}

pub async fn every_ack_survives_power_loss_in_sbml() -> Outcome {
    every_ack_survives("sbml").await
}

pub async fn every_ack_survives_power_loss_in_hml() -> Outcome {
    every_ack_survives("hml").await
}

async fn every_ack_survives(mode: &str) -> Outcome {
    let run = power_loss_run(mode, Fsync::Real, Crash::PowerCut).await?;
    assert_eq!(
        run.refused, None,
        "{mode}: sidelog did not start after a power cut"
    );
    eprintln!(
        "power loss, {mode}: {} acked, {} lost, {CUTS} cuts dropping {:?}",
        run.acked,
        run.lost.len(),
        run.cuts
    );
    assert!(
        run.lost.is_empty(),
        "{mode}: {} of {} acked messages are lost after power cuts, e.g. {:?}",
        run.lost.len(),
        run.acked,
        run.lost.iter().take(5).collect::<Vec<_>>()
    );
    Ok(())
}

pub async fn skipped_fsyncs_lose_acked_messages_at_a_power_cut_in_rbml() -> Outcome {
    bug_is_caught("rbml").await
}

pub async fn skipped_fsyncs_lose_acked_messages_at_a_power_cut_in_sbml() -> Outcome {
    bug_is_caught("sbml").await
}

pub async fn skipped_fsyncs_lose_acked_messages_at_a_power_cut_in_hml() -> Outcome {
    bug_is_caught("hml").await
}

/// The planted bug is caught: with the journal never fsynced, a power cut loses acked messages.
async fn bug_is_caught(mode: &str) -> Outcome {
    let run = power_loss_run(mode, Fsync::Skipped, Crash::PowerCut).await?;
    eprintln!(
        "power loss, {mode} with skipped fsyncs: {} acked, {} lost, cuts dropping {:?}; {}",
        run.acked,
        run.lost.len(),
        run.cuts,
        run.refused
            .as_deref()
            .and_then(|e| e.lines().last())
            .unwrap_or("sidelog started after every cut")
    );
    assert!(
        !run.lost.is_empty(),
        "{mode}: skipped fsyncs lost nothing across {CUTS} power cuts ({} acked): the test \
         cannot see a missing fsync",
        run.acked
    );
    Ok(())
}

/// Why this test exists: the same bug under SIGKILLs alone (the page cache survives them)
/// loses nothing, so the kill tests cannot see it.
pub async fn a_sigkill_alone_cannot_see_skipped_fsyncs() -> Outcome {
    let run = power_loss_run("hml", Fsync::Skipped, Crash::KillOnly).await?;
    assert_eq!(run.refused, None, "sidelog did not start after a SIGKILL");
    eprintln!(
        "SIGKILL only, hml with skipped fsyncs: {} acked, {} lost",
        run.acked,
        run.lost.len()
    );
    assert!(
        run.lost.is_empty(),
        "SIGKILLs alone lost {} acked messages with skipped fsyncs: the bug is not the one this \
         test is about",
        run.lost.len()
    );
    Ok(())
}

/// Whether the journal's fsync syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fsync {
    Real,
    /// `SIDELOG_UNSAFE_SKIP_FSYNC=1`.
    Skipped,
}

/// What each crash is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    /// SIGKILL, then what was not synced is lost.
    PowerCut,
    /// SIGKILL alone: written data stays.
    KillOnly,
}

/// What one run saw.
struct Run {
    acked: usize,
    lost: Vec<String>,
    cuts: Vec<CutReport>,
    /// Why sidelog refused to start again after a cut, if it did (a journal left damaged).
    refused: Option<String>,
}

async fn power_loss_run(mode: &str, fsync: Fsync, crash: Crash) -> Result<Run, Missing> {
    let mut disk = Disk::mount()?;
    let data = disk.root().join("data");
    let mut sidelog = Sidelog::new(&data, &["--mode", mode])
        .with_log(disk.outside().join(format!("sidelog-{mode}.log")));
    if fsync == Fsync::Skipped {
        sidelog = sidelog.with_env("SIDELOG_UNSAFE_SKIP_FSYNC", "1");
    }
    sidelog.start().await;
    let producer = Producer::start(sidelog.url());
    let mut cuts = Vec::new();
    let mut refused = None;
    for cut in 1..=CUTS {
        let want = cut * ACKS_PER_CUT;
        poll_until(
            Duration::from_secs(120),
            || format!("{want} acks before cut {cut}; log:\n{}", sidelog.log_tail()),
            || async { (producer.acked_count() >= want).then_some(()) },
        )
        .await;
        sidelog.kill9().await;
        if crash == Crash::PowerCut {
            cuts.push(disk.power_cut());
        }
        // An operator changes the redo log's size between the cut and the start: off (the
        // log the cut left must still be applied), larger, smaller.
        let wal_bytes = WAL_BYTES_AFTER_CUT[(cut - 1) % WAL_BYTES_AFTER_CUT.len()];
        sidelog = sidelog.with_env("SIDELOG_JOURNAL_WAL_BYTES", wal_bytes);
        sidelog.spawn();
        if let Err(e) = sidelog.try_wait_serving(Duration::from_secs(60)).await {
            refused = Some(e);
            break;
        }
    }
    let acked = producer.stop().await;
    // A sidelog that refused to start delivers nothing more: look once.
    let patience = if refused.is_some() {
        Duration::ZERO
    } else {
        Duration::from_secs(60)
    };
    let lost = wait_for_chunks(&data.join("out"), &acked, &sidelog, patience).await;
    sidelog.kill9().await;
    Ok(Run {
        acked: acked.len(),
        lost,
        cuts,
        refused,
    })
}

/// Polls the file sink's chunks until every acked id is in one, or `patience` passes; returns
/// the acked ids that are not.
async fn wait_for_chunks(
    out: &Path,
    acked: &BTreeSet<String>,
    sidelog: &Sidelog,
    patience: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + patience;
    loop {
        let mut found = BTreeSet::new();
        for chunk in sidelog::sink::list_chunks(out).unwrap_or_default() {
            let messages = sidelog::sink::read_chunk(&chunk).unwrap_or_else(|e| {
                panic!(
                    "{} is damaged: {e}; log:\n{}",
                    chunk.display(),
                    sidelog.log_tail()
                )
            });
            found.extend(messages.into_iter().map(|m| m.id));
        }
        let missing: Vec<String> = acked.difference(&found).cloned().collect();
        if missing.is_empty() || Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The lazy filesystem, mounted at a temporary directory.
struct Disk {
    fs: LazyFs,
    dir: tempfile::TempDir,
    mounted: Option<Mounted>,
}

impl Disk {
    fn mount() -> Result<Disk, Missing> {
        if !Path::new("/dev/fuse").exists() {
            return Err(Missing("no /dev/fuse: FUSE is not available here".into()));
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir(dir.path().join("mnt")).expect("a mountpoint");
        let fs = LazyFs::new();
        let mounted = fs.mount(&dir.path().join("mnt")).map_err(|e| {
            Missing(format!(
                "cannot mount a FUSE filesystem: {e} (needs /dev/fuse and fusermount3, Debian's \
                 fuse3; .ci/run installs it)"
            ))
        })?;
        Ok(Disk {
            fs,
            dir,
            mounted: Some(mounted),
        })
    }

    /// Where sidelog's data goes: on the lazy filesystem.
    fn root(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// A directory beside the mount (logs), on the ordinary disk.
    fn outside(&self) -> &Path {
        self.dir.path()
    }

    /// Unmounts (nothing of the old mount stays in the kernel), drops what was not synced, and
    /// mounts again: a machine that lost power and restarted.
    fn power_cut(&mut self) -> CutReport {
        if let Some(mounted) = self.mounted.take() {
            mounted.unmount().expect("unmount the lazy filesystem");
        }
        let report = self.fs.power_cut();
        self.mounted = Some(self.fs.mount(&self.root()).expect("mount it again"));
        report
    }
}

/// Publishes batches of new messages, each retried with the same ids until it is acked, as a
/// real client does; records every id acked ACCEPTED or DUPLICATE.
struct Producer {
    acked: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Producer {
    fn start(url: String) -> Producer {
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(produce(url, acked.clone(), stop.clone()));
        Producer { acked, stop, task }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().expect("no panic under this lock").len()
    }

    /// Stops after the batch under way is acked (or at once, if it is failing); every id acked.
    async fn stop(self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the producer task");
        std::mem::take(&mut *self.acked.lock().expect("no panic under this lock"))
    }
}

async fn produce(url: String, acked: Arc<Mutex<BTreeSet<String>>>, stop: Arc<AtomicBool>) {
    let channel = Channel::from_shared(url)
        .expect("a loopback URL")
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let mut client = sidelog::proto::ingest_client::IngestClient::new(channel);
    let mut next = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let messages: Vec<Message> = (next..next + BATCH)
            .map(|i| Message {
                id: format!("pl-{i}"),
                key: format!("k{}", i % 5),
                payload: format!("payload {i}").into_bytes().into(),
                ..Default::default()
            })
            .collect();
        next += BATCH;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let request = PublishRequest {
                messages: messages.clone(),
            };
            match client.publish(request).await {
                Ok(r) => {
                    let mut a = acked.lock().expect("no panic under this lock");
                    let acks = r.into_inner().acks;
                    assert_eq!(acks.len(), BATCH, "every message gets exactly one ack");
                    for ack in acks {
                        let status = ack::Status::try_from(ack.status);
                        assert!(
                            matches!(status, Ok(ack::Status::Accepted | ack::Status::Duplicate)),
                            "unexpected ack {status:?} for {}: {}",
                            ack.id,
                            ack.reason
                        );
                        a.insert(ack.id);
                    }
                    break;
                }
                Err(status) => {
                    if stop.load(Ordering::Relaxed) {
                        // Told to stop while sidelog is down: the batch stays unacked, and
                        // unacked messages promise nothing.
                        return;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "a batch was never acked: {status}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
