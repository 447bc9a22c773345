//! The writer: the one owner of the database. It groups the commands waiting in its queue into
//! one transaction, commits once (with an fsync when any of them needs durability), and answers
//! each command only after that commit returned. It also reopens the file after an I/O error and
//! keeps a full journal draining (see [`Writer::commit`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redb::Database;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::command::{Answer, Command, Read, Write};
use super::config::{JournalConfig, WriterRuntime};
use super::error::{Failure, IoFailure, JournalError, Result};
use super::idlog::IdWindow;
use super::store::{Fsync, FsyncFailure, JournalStore, Rewrite, open_database};
use super::tables::{self, FileState, Tables};
use super::types::{Backlog, Seq, SeqRange};
use super::wal::Wal;
use sidelog_runtime::SharedClock;

/// The journal ran out of space (the disk, or its size limit). Each failed commit costs a
/// reopen, and a reopen after a failed commit repairs the file (redb walks every page of it),
/// while producers retry at once: trying every append again would spend the writer on repairs
/// that cannot succeed, and delay the very marks that free space. So after a failure, writes
/// that would grow the journal are refused with its error, without a commit, until a commit of
/// marks frees space or a wait has passed (space freed outside sidelog is found then): 50 ms
/// after the first failure, doubling with each one after it, up to 2 s.
#[derive(Debug)]
struct Full {
    /// What the last failed commit said; the refusals repeat it.
    error: JournalError,
    /// Until this time (the writer's clock, ms), growing writes are refused without a try.
    retry_at_ms: i64,
    wait_ms: i64,
}

impl Full {
    const FIRST_WAIT_MS: i64 = 50;
    const MAX_WAIT_MS: i64 = 2_000;

    fn after(last: Option<Full>, error: &JournalError, now_ms: i64) -> Full {
        let wait_ms = last.map_or(Self::FIRST_WAIT_MS, |f| {
            (f.wait_ms * 2).min(Self::MAX_WAIT_MS)
        });
        Full {
            error: error.clone(),
            retry_at_ms: now_ms.saturating_add(wait_ms),
            wait_ms,
        }
    }
}

/// Sequences reserved past each durable commit (see the module's invariants).
pub(super) const SEQ_RESERVE: u64 = 1 << 20;

/// A durable commit at least this long after the last checkpoint is made a checkpoint: redb
/// reuses the pages a commit frees only after a durable commit, so the file would grow
/// between checkpoints that only a full log brings.
const CHECKPOINT_INTERVAL_MS: i64 = 1000;

/// At most what [`Tables::store_counters`] adds to a frame (three meta ops of ≤ 26 bytes).
const COUNTERS_FRAME_BYTES: usize = 128;

/// The log is used only while the journal has room for this many times its size (checked at
/// each checkpoint and each open). Replaying it after an I/O error needs pages for what it
/// holds, and a commit that runs the disk full is followed by such a reopen: on a disk that
/// fills up, the last epoch's frames must still fit. Nearer the end, every durable commit is
/// a checkpoint, and one that frees space (removing delivered entries) can always be made.
const ROOM_PER_LOG: u64 = 2;

/// The writer's state. Owns the database.
pub(super) struct Writer {
    /// `None` after an I/O error until the file is reopened.
    db: Option<Database>,
    storage: Box<dyn JournalStore>,
    path: PathBuf,
    config: JournalConfig,
    clock: SharedClock,
    backlog: Arc<Backlog>,
    next_seq: u64,
    /// Sequences below this are covered by a durable `seq_floor`.
    durable_floor: u64,
    /// The persisted dedup window's ids (see `idlog.rs`).
    ids: IdWindow,
    /// Non-durable commits happened since the last durable one.
    dirty: bool,
    /// Completion marks whose commit failed: idempotent, so kept and applied again with the
    /// next commit instead of being lost (which would leave their entries in the backlog).
    retry_marks: Vec<Write>,
    /// Where reopening reports the records of failed commits that are in the file after all.
    ambiguous: mpsc::UnboundedSender<SeqRange>,
    /// Completion marks committed without fsync since the last durable commit. Reopening the
    /// file after an I/O error loses those commits (redb holds them in its process's write
    /// buffer), so they are applied again: otherwise their entries would come back to life.
    unsynced_marks: Vec<(Vec<Seq>, Vec<Seq>)>,
    /// The highest key found in the file by the last `load_state`.
    max_key: u64,
    last_durable_ms: i64,
    /// The last commit failed for lack of space: completion marks are committed on their own
    /// first (with the store's headroom), so that the backlog drains and frees space, and
    /// writes that would grow the journal wait (see [`Full`]).
    full: Option<Full>,
    /// How fsyncs are made, and whether one failed since the file was last rewritten through.
    fsync: Fsync,
    /// The redo log (`wal.rs`): read at every open; written while `log_use` is `Writing`.
    wal: Wal,
    /// The journal's identity (`meta.journal_id`), which the log's frames carry; before the
    /// first `load_state`, the one a database that has none is given.
    identity: u64,
    last_checkpoint_ms: i64,
    /// What this epoch does with the log.
    log_use: LogUse,
}

/// What the writer does with the redo log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogUse {
    /// The first open: the log is read (with `--discard-wal`, its unusable frames discarded)
    /// and is not yet this process's ([`Wal::start`] makes it so, once).
    Opening,
    /// Commits append their frames to it; durable ones fsync it.
    Writing,
    /// Not written this epoch: every durable commit is a checkpoint (`wal_bytes = 0`, or too
    /// little room left: see [`ROOM_PER_LOG`]).
    Idle,
}

/// What a commit is asked for beyond what its commands, the sync interval and the sequence
/// floor need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// Only that.
    Commands,
    /// A checkpoint: durable, the database itself fsynced, the log started over. At close (the
    /// next start has no log to replay), and for the removals of a full journal (the pages a
    /// commit frees are reused only once a durable commit follows it).
    Checkpoint,
}

/// How one commit reaches the disk: chosen once per commit, when its frame's size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// The database written without fsync, the commit's frame appended to the log before it;
    /// `sync`: the log fsynced (the commit is durable).
    Logged { sync: bool },
    /// The database written without fsync and no frame (the log is idle): a power cut may lose
    /// it, which its commands allow.
    Unlogged,
    /// The database fsynced itself (redb's `Immediate`); the log starts over. Durable.
    Checkpoint,
}

impl Reach {
    fn durable(self) -> bool {
        matches!(self, Reach::Logged { sync: true } | Reach::Checkpoint)
    }
}

/// A transaction's changes, before its commit: what it will be, and its frame for the log.
struct Applied {
    committed: Committed,
    redo: super::wal::Redo,
}

/// What one commit decided and changed, for the bookkeeping after it returned.
struct Committed {
    /// Rows added to the dead-letter table, less those removed.
    dead_delta: i64,
    reach: Reach,
    /// An fsync was made (not so under the simulator's planted bug, which says durable anyway).
    fsync: bool,
    next_seq: u64,
    bytes: u64,
    entries: u64,
    written_records: u64,
    written_bytes: u64,
}

impl Writer {
    /// Opens the database in `storage` and reads its counters.
    pub(super) fn open(
        storage: Box<dyn JournalStore>,
        path: PathBuf,
        config: JournalConfig,
        clock: SharedClock,
        ambiguous: mpsc::UnboundedSender<SeqRange>,
    ) -> Result<Writer> {
        let fsync = Fsync {
            failure: fsync_failure(&config),
            failed: Arc::default(),
        };
        let entropy = match config.entropy_seed {
            Some(seed) => sidelog_runtime::Entropy::from_seed(seed),
            None => sidelog_runtime::Entropy::from_os()
                .map_err(|e| JournalError::io("cannot draw random numbers", e))?,
        };
        let wal_path = path.with_file_name(super::wal::WAL_FILE_NAME);
        // The log first: it is read whatever `wal_bytes` says now, its lock keeps a second
        // process away before anything is written, and its header says whether the last
        // stop was clean.
        let mut wal = storage
            .open_wal()
            .and_then(|file| Wal::open(file, entropy.clone()))
            .map_err(|e| wal_error(&wal_path, e, "cannot open"))?;
        let rewrite = rewrite_at_start(storage.as_ref(), &wal);
        wal.clear_fingerprint()
            .map_err(|e| wal_error(&wal_path, e, "cannot write the header of"))?;
        // Never 0: that names a database from before identities.
        let identity = entropy.next_u64().max(1);
        let db = open_database(storage.as_ref(), &path, fsync.clone(), rewrite, identity)?;
        let mut writer = Writer {
            db: Some(db),
            storage,
            path,
            config,
            clock,
            backlog: Arc::new(Backlog::default()),
            next_seq: 0,
            durable_floor: 0,
            ids: IdWindow::default(),
            dirty: false,
            retry_marks: Vec::new(),
            last_durable_ms: 0,
            ambiguous,
            unsynced_marks: Vec::new(),
            max_key: 0,
            full: None,
            fsync,
            wal,
            identity,
            last_checkpoint_ms: 0,
            log_use: LogUse::Opening,
        };
        writer.load_state()?;
        let (identity, epoch, bytes) =
            (writer.identity, writer.wal.epoch(), writer.config.wal_bytes);
        writer.wal.start(identity, epoch, bytes).map_err(|e| {
            let e = wal_error(
                &wal_path,
                e,
                &format!("cannot allocate {bytes} bytes (journal.wal_bytes) for"),
            );
            match e {
                JournalError::StorageFull(failure) => JournalError::StorageFull(
                    failure.advising("free space, or set journal.wal_bytes lower (0: no log)"),
                ),
                e => e,
            }
        })?;
        writer.log_use = writer.log_use_for_epoch();
        info!(
            path = %writer.path.display(),
            next_seq = writer.next_seq,
            backlog_entries = writer.backlog.entries(),
            backlog_bytes = writer.backlog.bytes(),
            dedup_ids = writer.ids.len(),
            "journal opened"
        );
        Ok(writer)
    }

    pub(super) fn backlog(&self) -> &Arc<Backlog> {
        &self.backlog
    }

    /// Runs the writer where its config says, with the sync ticker beside it. Completion marks
    /// are committed without fsync; the ticker bounds how long they stay non-durable when no
    /// durable write comes along. It holds only a weak sender, so the writer still stops when
    /// the last handle is dropped.
    pub(super) fn start(
        self,
        rx: mpsc::Receiver<Command>,
        ticker: mpsc::WeakSender<Command>,
    ) -> Result<()> {
        let sync_interval = Duration::from_millis(self.config.sync_interval_ms.max(1));
        // A full queue means commits are happening anyway.
        let tick = move || match ticker.upgrade() {
            Some(tx) => {
                let _ = tx.try_send(Command::Write(Write::SyncIfDirty));
                true
            }
            None => false,
        };
        let cannot =
            |what: &str, e: std::io::Error| JournalError::io(format!("cannot start {what}"), e);
        match self.config.writer {
            WriterRuntime::Thread => {
                std::thread::Builder::new()
                    .name("sidelog-journal".into())
                    .spawn(move || block_on(self.run(rx)))
                    .map_err(|e| cannot("the journal writer", e))?;
                std::thread::Builder::new()
                    .name("sidelog-journal-sync".into())
                    .spawn(move || {
                        std::thread::sleep(sync_interval);
                        while tick() {
                            std::thread::sleep(sync_interval);
                        }
                    })
                    .map_err(|e| cannot("the journal sync ticker", e))?;
            }
            WriterRuntime::Task => {
                sidelog_runtime::spawn(self.run(rx));
                sidelog_runtime::spawn(async move {
                    let mut interval = tokio::time::interval(sync_interval);
                    interval.tick().await;
                    interval.tick().await;
                    while tick() {
                        interval.tick().await;
                    }
                });
            }
        }
        Ok(())
    }

    /// The writer's loop, wherever it runs: group commits until the last handle is gone, or a
    /// `Close` came (then everything after it is answered `Closed`).
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.recv().await {
            if let Some(reply) = self.group(first, &mut rx) {
                drop(reply.send(self.close()));
                while let Some(cmd) = rx.recv().await {
                    cmd.fail(JournalError::Closed);
                }
                return;
            }
        }
        self.stop();
    }

    /// Every handle is gone: make what is pending durable before the writer ends.
    fn stop(&mut self) {
        if let Err(e) = self.close() {
            error!(error = %e, "the journal's last sync failed; the last completion marks are lost and those entries will be re-sent");
        }
        debug!("journal writer stopped");
    }

    /// Handles `first` and every command already waiting, up to the record limit, as one
    /// group commit, then the reads among them. Returns the reply of a `Close` if one came.
    fn group(
        &mut self,
        first: Command,
        rx: &mut mpsc::Receiver<Command>,
    ) -> Option<super::command::Reply<()>> {
        let max_records = self.config.commit_max_records.max(1);
        let mut writes: Vec<Write> = Vec::new();
        let mut reads: Vec<Read> = Vec::new();
        let mut close = None;
        let mut next = Some(first);
        let mut records = 0;
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Close(reply) => {
                    close = Some(reply);
                    break;
                }
                Command::Read(read) => reads.push(read),
                Command::Write(write) => {
                    records += write.records();
                    writes.push(write);
                }
            }
            if records < max_records {
                next = rx.try_recv().ok();
            }
        }
        if !writes.is_empty() {
            self.commit(&mut writes, Ask::Commands);
        }
        for read in reads {
            self.read(read);
        }
        close
    }

    /// Makes pending non-durable commits durable, checkpoints the log, and releases the file.
    fn close(&mut self) -> Result<()> {
        // Frames in the log are checkpointed too: after a clean stop `journal.redb` alone holds
        // everything (a copy of it is a whole backup), and the next start replays nothing.
        let logged = self.wal.has_frames();
        let result = if self.dirty || logged {
            let (reply, mut rx) = tokio::sync::oneshot::channel();
            let mut last = vec![Write::Sync {
                answer: Answer::to(reply),
            }];
            self.commit(&mut last, Ask::Checkpoint);
            rx.try_recv().unwrap_or(Err(JournalError::Closed))
        } else {
            Ok(())
        };
        self.db = None;
        if result.is_ok() {
            // Closed by redb too (its header says so): the next start may skip the
            // rewrite-through while the file is as it is now.
            let recorded = self
                .storage
                .open()
                .and_then(|file| super::wal::DbFingerprint::of(file.as_ref()))
                .and_then(|db| self.wal.record_clean_stop(db));
            if let Err(e) = recorded {
                warn!(error = %e, "cannot record the clean stop in the redo log's header; the next start rewrites the journal through");
            }
        }
        self.wal.close();
        result
    }

    /// The open database, reopening it after an I/O error. Reopening reloads the counters, and
    /// reports the records of a commit that failed but is in the file after all.
    fn db(&mut self) -> Result<&Database> {
        if self.db.is_none() {
            warn!(path = %self.path.display(), "reopening the journal after an I/O error");
            let rewrite = if self
                .fsync
                .failed
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                Rewrite::AfterFailedFsync
            } else {
                Rewrite::No
            };
            let db = open_database(
                self.storage.as_ref(),
                &self.path,
                self.fsync.clone(),
                rewrite,
                self.identity,
            )
            .inspect_err(|_| {
                // Not rewritten yet: the next reopen tries again.
                if rewrite == Rewrite::AfterFailedFsync {
                    self.fsync
                        .failed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
            })?;
            self.db = Some(db);
            let before = self.next_seq;
            self.load_state()?;
            for (outputs, inputs) in self.unsynced_marks.drain(..) {
                self.retry_marks.push(Write::Complete {
                    outputs,
                    inputs,
                    answer: Answer::none(),
                });
            }
            if self.max_key >= before {
                let range = SeqRange {
                    from: Seq(before),
                    to: Seq(self.max_key + 1),
                };
                warn!(
                    from = before,
                    to = self.max_key + 1,
                    "a failed commit is in the journal after all; its records will be replayed"
                );
                // Nobody listening (inspect, tests): the records wait for the next start.
                let _ = self.ambiguous.send(range);
            }
        }
        Ok(self.db.as_ref().expect("just reopened"))
    }

    /// Reads the counters from `meta`, creating the tables on a new file, after applying what
    /// the redo log holds that the database lacks.
    fn load_state(&mut self) -> Result<()> {
        let db = self
            .db
            .as_ref()
            .expect("load_state runs with an open database");
        let log = tables::LogAtOpen {
            wal: &self.wal,
            // Given to a database from before identities.
            new_identity: self.identity,
            discard: self.config.discard_wal && self.log_use == LogUse::Opening,
        };
        let state: FileState =
            tables::load_state(db, &self.path, log).map_err(|e| e.at(&self.path))?;
        self.identity = state.identity;
        self.wal.reset(state.wal_epoch);
        if self.log_use != LogUse::Opening {
            self.log_use = self.log_use_for_epoch();
        }
        let wal = self.path.with_file_name(super::wal::WAL_FILE_NAME);
        if state.replayed_frames > 0 {
            info!(
                frames = state.replayed_frames,
                "applied the redo log's commits since the last checkpoint"
            );
        }
        let r = &state.recovered;
        if r.torn_bytes > 0 || r.unsynced_after > 0 {
            warn!(
                path = %wal.display(),
                offset = r.end,
                bytes = r.torn_bytes,
                unsynced_frames_after = r.unsynced_after,
                "the redo log's tail was torn by the crash and is cut off there; no fsync had covered it, so nothing in it was acknowledged"
            );
        }
        if let Some(refusal) = &state.discarded {
            warn!(
                path = %wal.display(),
                frames = refusal.frames(),
                "--discard-wal: discarded the redo log's unusable frames; what they held is lost ({})",
                refusal.describe(state.identity, state.wal_epoch)
            );
        }
        self.next_seq = state.seq_floor.max(state.max_key + 1);
        self.max_key = state.max_key;
        self.durable_floor = state.seq_floor;
        self.ids = state.ids;
        self.backlog.set(state.backlog_bytes, state.backlog_entries);
        self.backlog.set_dead_letters(state.dead_letters);
        metrics::gauge!(crate::metrics::DEAD_LETTERS).set(state.dead_letters as f64);
        metrics::gauge!(crate::metrics::BACKLOG_ENTRIES).set(state.backlog_entries as f64);
        metrics::gauge!(crate::metrics::BACKLOG_BYTES).set(state.backlog_bytes as f64);
        self.dirty = false;
        self.last_durable_ms = self.clock.now_ms();
        self.last_checkpoint_ms = self.last_durable_ms;
        Ok(())
    }

    /// Commits a group. When the last commit failed for lack of space, appends cannot succeed
    /// until entries are removed, and removing needs pages too: removals go first, alone, into
    /// the store's headroom; then the rest, unless nothing was freed and [`Full`] says to wait.
    fn commit(&mut self, cmds: &mut Vec<Write>, ask: Ask) {
        if !self.retry_marks.is_empty() {
            let mut all = std::mem::take(&mut self.retry_marks);
            all.append(cmds);
            *cmds = all;
        }
        if self.full.is_some() {
            let (mut removals, rest): (Vec<Write>, Vec<Write>) =
                cmds.drain(..).partition(Write::is_removal);
            *cmds = rest;
            if !removals.is_empty() {
                self.storage.set_reserve(true);
                self.commit_now(&mut removals, Ask::Checkpoint);
                if self.full.is_none() {
                    info!("space freed in the full journal by removing delivered entries");
                    // redb hands a commit's freed pages back to its allocator only in the next
                    // durable commit, after that commit's own pages are allocated: an append
                    // right after the removals could not use them, and on a full filesystem
                    // every append failed while the freed pages waited for a commit that never
                    // came. An empty durable commit releases them first.
                    self.commit_now(
                        &mut vec![Write::Sync {
                            answer: Answer::none(),
                        }],
                        Ask::Checkpoint,
                    );
                }
                self.storage.set_reserve(false);
            }
            if let Some(full) = &self.full
                && self.clock.now_ms() < full.retry_at_ms
            {
                // Nothing freed yet: what would grow the journal fails as the last try did,
                // without another. The rest (syncs, progress) is committed.
                let (grows, rest): (Vec<Write>, Vec<Write>) =
                    cmds.drain(..).partition(|c| c.seqs_taken() > 0);
                for cmd in grows {
                    cmd.fail(full.error.clone());
                }
                *cmds = rest;
            }
            if cmds.is_empty() {
                return;
            }
        }
        self.commit_now(cmds, ask);
    }

    fn commit_now(&mut self, cmds: &mut Vec<Write>, ask: Ask) {
        if !self.dirty && cmds.iter().all(|c| matches!(c, Write::SyncIfDirty)) {
            // Nothing pending: the ticker found the journal clean.
            cmds.clear();
            return;
        }
        let now = self.clock.now_ms();
        match self.try_commit(cmds, now, ask) {
            Ok(()) => {
                self.full = None;
                for cmd in cmds.drain(..) {
                    cmd.finish();
                }
            }
            Err(err) => {
                let cause = match &err {
                    JournalError::StorageFull(_) => "full",
                    JournalError::Io(_) => "io",
                    _ => "other",
                };
                metrics::counter!(crate::metrics::JOURNAL_COMMIT_FAILURES, "cause" => cause)
                    .increment(1);
                self.full = matches!(err, JournalError::StorageFull(_))
                    .then(|| Full::after(self.full.take(), &err, now));
                if err.is_retryable() {
                    // redb may need the file reopened after an I/O error (PreviousIo).
                    self.db = None;
                    warn!(error = %err, commands = cmds.len(), "journal commit failed; nothing in it is acknowledged");
                } else {
                    error!(error = %err, commands = cmds.len(), "journal commit failed");
                }
                for cmd in cmds.drain(..) {
                    match cmd {
                        // Marks, and the progress that follows them, in their order.
                        Write::Complete { .. } | Write::Progress { .. } if err.is_retryable() => {
                            self.retry_marks.push(cmd)
                        }
                        cmd => cmd.fail(err.clone()),
                    }
                }
            }
        }
    }

    /// Whether this group's commit must be `Immediate` (fsynced).
    fn must_be_durable(&self, cmds: &[Write], now: i64, ask: Ask) -> bool {
        let sync_due = self.dirty
            && now.saturating_sub(self.last_durable_ms) >= self.config.sync_interval_ms as i64;
        // Sequences handed out by this commit must stay below the durable floor unless the
        // commit itself is durable (module invariant). Completion marks take none: right after
        // an open (next_seq is at the floor) they stay non-durable like any others.
        let seqs: usize = cmds.iter().map(Write::seqs_taken).sum();
        let seq_exhausts_floor = seqs > 0 && self.next_seq + seqs as u64 + 1 >= self.durable_floor;
        let sync_asked = self.dirty && cmds.iter().any(|c| matches!(c, Write::SyncIfDirty));
        cmds.iter().any(Write::needs_durability)
            || ask == Ask::Checkpoint
            || sync_due
            || sync_asked
            || seq_exhausts_floor
    }

    fn try_commit(&mut self, cmds: &mut [Write], now: i64, ask: Ask) -> Result<()> {
        // Reopen first (after an I/O error): it reloads the counters read below. A commit that
        // reported failure may still be in the file, and its sequences must not be reused.
        self.db()?;
        let started = tokio::time::Instant::now();
        let durable = self.must_be_durable(cmds, now, ask);
        let committed = self
            .write_transaction(cmds, now, durable, ask)
            .map_err(|e| e.at(&self.path))?;
        self.after_commit(cmds, now, &committed);
        record_commit_metrics(&committed, started);
        let records: usize = cmds.iter().map(Write::records).sum();
        debug!(commands = cmds.len(), records, reach = ?committed.reach, "journal commit");
        Ok(())
    }

    /// Applies `cmds` in one write transaction and commits it, reaching the disk as [`Reach`]
    /// says: durable when `durable` (or a checkpoint is due or asked for).
    fn write_transaction(
        &mut self,
        cmds: &mut [Write],
        now: i64,
        durable: bool,
        ask: Ask,
    ) -> std::result::Result<Committed, Failure> {
        let db = self.db.as_ref().expect("opened at the start of try_commit");
        let mut txn = db.begin_write()?;
        tables::refresh_window(db, &mut self.ids)?;
        // Changed in the transaction: if the commit fails, read from the file again.
        self.ids.stale = true;
        let Applied {
            mut committed,
            mut redo,
        } = self.apply(&txn, cmds, now, durable, ask)?;
        let reach = committed.reach;
        let io = |e: std::io::Error| Failure::Journal(JournalError::from_io(e));
        // The simulator's deliberate bug: nothing is fsynced, though replies say durable.
        let fsync = reach.durable() && !self.config.bug_ack_before_fsync;
        let immediate = reach == Reach::Checkpoint && fsync;
        txn.set_durability(if immediate {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        })
        .map_err(|e| JournalError::Io(IoFailure::new(e.to_string())))?;
        if let Reach::Logged { sync } = reach {
            // Before the commit: the database never holds a change the log lacks.
            self.wal.append(&mut redo).map_err(io)?;
            if sync && fsync {
                self.sync_wal().map_err(io)?;
            }
        }
        if let Err(e) = txn.commit() {
            if matches!(reach, Reach::Logged { .. }) {
                // Reported failed, so not replayed by the reopen either. If this write fails
                // too, the reopen replays the frame: its records are then reported ambiguous.
                if let Err(io) = self.wal.unwrite_last() {
                    warn!(error = %io, "cannot take back the redo log frame of a failed commit");
                }
            }
            return Err(e.into());
        }
        if reach == Reach::Checkpoint {
            self.wal.reset(self.wal.epoch() + 1);
            self.log_use = self.log_use_for_epoch();
        }
        self.ids.stale = false;
        committed.fsync = fsync;
        Ok(committed)
    }

    /// Applies `cmds` to the open transaction and chooses how its commit reaches the disk,
    /// writing the counters (and the log's epoch or frame count) that choice implies.
    fn apply(
        &mut self,
        txn: &redb::WriteTransaction,
        cmds: &mut [Write],
        now: i64,
        durable: bool,
        ask: Ask,
    ) -> std::result::Result<Applied, Failure> {
        let checkpoint_due = ask == Ask::Checkpoint
            || (durable && now.saturating_sub(self.last_checkpoint_ms) >= CHECKPOINT_INTERVAL_MS);
        let mut next_seq = self.next_seq;
        let mut t = Tables::open(txn, &mut next_seq, &mut self.ids, now)?;
        if self.log_use != LogUse::Writing {
            t.redo = super::wal::Redo::off();
        }
        for cmd in cmds.iter_mut() {
            t.apply(cmd)?;
        }
        t.finish()?;
        t.evict_dedup(&self.config)?;
        let bytes = (self.backlog.bytes() as i64 + t.bytes_delta).max(0) as u64;
        let entries = (self.backlog.entries() as i64 + t.entries_delta).max(0) as u64;
        // A frame the log has no room for makes a checkpoint too (the log starts over after
        // it). Decided before the counters are written: a durable commit stores the floor.
        let reach = match self.log_use {
            LogUse::Writing
                if checkpoint_due || !self.wal.fits(t.redo.frame_len() + COUNTERS_FRAME_BYTES) =>
            {
                Reach::Checkpoint
            }
            LogUse::Writing => Reach::Logged { sync: durable },
            LogUse::Opening | LogUse::Idle if durable => Reach::Checkpoint,
            LogUse::Opening | LogUse::Idle => Reach::Unlogged,
        };
        let floor = reach.durable().then(|| *t.next_seq + SEQ_RESERVE);
        t.store_counters(bytes, entries, floor)?;
        // Every checkpoint, with the log in use or not, makes the frames before it stale.
        match reach {
            Reach::Checkpoint => t.store_wal_epoch(self.wal.epoch() + 1)?,
            Reach::Logged { .. } => t.store_wal_frames(self.wal.frames() + 1)?,
            Reach::Unlogged => {}
        }
        let redo = std::mem::take(&mut t.redo);
        let committed = Committed {
            dead_delta: t.dead_delta,
            reach,
            fsync: false,
            next_seq: *t.next_seq,
            bytes,
            entries,
            written_records: t.written_records,
            written_bytes: t.written_bytes,
        };
        Ok(Applied { committed, redo })
    }

    /// Whether the next epoch writes the log: while the journal has room for it (see
    /// [`ROOM_PER_LOG`]).
    fn log_use_for_epoch(&self) -> LogUse {
        if self.config.wal_bytes == 0 {
            return LogUse::Idle;
        }
        let need = self.config.wal_bytes.saturating_mul(ROOM_PER_LOG);
        match self.storage.room() {
            Ok(room) if room >= need => LogUse::Writing,
            Ok(room) => {
                if self.log_use == LogUse::Writing {
                    info!(
                        room,
                        need,
                        "little room left for the journal: durable commits fsync it directly, without the redo log"
                    );
                }
                LogUse::Idle
            }
            Err(e) => {
                warn!(error = %e, "cannot tell the journal's free space; durable commits fsync it directly, without the redo log");
                LogUse::Idle
            }
        }
    }

    /// fsyncs the redo log; the simulator's planted bug retries a failed one and trusts it.
    fn sync_wal(&mut self) -> std::io::Result<()> {
        match self.wal.sync() {
            Err(_) if self.fsync.failure == FsyncFailure::RetryAndTrust => self.wal.sync(),
            other => other,
        }
    }

    /// Committed: from here on the state in memory follows the file.
    fn after_commit(&mut self, cmds: &[Write], now: i64, c: &Committed) {
        if c.reach == Reach::Checkpoint {
            self.last_checkpoint_ms = now;
        }
        if c.reach.durable() {
            self.durable_floor = c.next_seq + SEQ_RESERVE;
            self.dirty = false;
            self.last_durable_ms = now;
            self.unsynced_marks.clear();
        } else {
            self.dirty = true;
            for cmd in cmds {
                match cmd {
                    Write::Complete {
                        outputs, inputs, ..
                    } => self.unsynced_marks.push((outputs.clone(), inputs.clone())),
                    // An hml input with no outputs is completed by recording its empty group.
                    Write::RecordOutputs { groups, .. } => {
                        let done: Vec<Seq> = groups
                            .iter()
                            .filter(|g| g.outputs.is_empty())
                            .filter_map(|g| g.input_seq)
                            .collect();
                        if !done.is_empty() {
                            self.unsynced_marks.push((Vec::new(), done));
                        }
                    }
                    _ => {}
                }
            }
        }
        self.next_seq = c.next_seq;
        self.backlog.set(c.bytes, c.entries);
        if c.dead_delta != 0 {
            let dead = self.backlog.dead_letters() as i64 + c.dead_delta;
            self.backlog.set_dead_letters(dead.max(0) as u64);
            metrics::gauge!(crate::metrics::DEAD_LETTERS).set(dead.max(0) as f64);
        }
    }

    fn read(&mut self, read: Read) {
        if let Err(e) = self.db() {
            read.fail(e);
            return;
        }
        let db = self.db.as_ref().expect("opened just above");
        tables::answer(db, read, self.next_seq, self.backlog.bytes(), &self.path);
    }
}

/// Runs `future` on this thread to its end, parking the thread while it waits: the writer's
/// thread runs the same loop as the simulator's task.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// Whether a start may skip the rewrite-through (`store.rs`): the log's header holds the
/// fingerprint of `journal.redb` that a clean stop left, and the file still matches it.
fn rewrite_at_start(storage: &dyn JournalStore, wal: &Wal) -> Rewrite {
    let Some(recorded) = wal.header().and_then(|h| h.db) else {
        return Rewrite::AtStart;
    };
    let now = storage.exists().and_then(|exists| {
        if !exists {
            return Ok(None);
        }
        let file = storage.open()?;
        super::wal::DbFingerprint::of(file.as_ref()).map(Some)
    });
    match now {
        Ok(Some(now)) if now == recorded => {
            info!("the journal stopped cleanly and is unchanged since: no rewrite-through");
            Rewrite::No
        }
        _ => Rewrite::AtStart,
    }
}

/// An I/O error of the redo log, naming it.
fn wal_error(path: &std::path::Path, e: std::io::Error, what: &str) -> JournalError {
    if e.kind() == std::io::ErrorKind::ResourceBusy {
        return JournalError::InUse {
            path: path.to_owned(),
        };
    }
    let what = format!("{what} the redo log {}", path.display());
    JournalError::io(what, e)
}

fn fsync_failure(config: &JournalConfig) -> FsyncFailure {
    if config.bug_retry_failed_fsync {
        FsyncFailure::RetryAndTrust
    } else {
        FsyncFailure::Fail
    }
}

fn record_commit_metrics(c: &Committed, started: tokio::time::Instant) {
    use crate::metrics as m;
    let durability = if c.fsync { "fsync" } else { "none" };
    metrics::counter!(m::JOURNAL_COMMITS, "durability" => durability).increment(1);
    metrics::counter!(m::JOURNAL_RECORDS).increment(c.written_records);
    metrics::counter!(m::JOURNAL_RECORD_BYTES).increment(c.written_bytes);
    metrics::histogram!(m::JOURNAL_RECORDS_PER_COMMIT).record(c.written_records as f64);
    metrics::histogram!(m::JOURNAL_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::gauge!(m::BACKLOG_ENTRIES).set(c.entries as f64);
    metrics::gauge!(m::BACKLOG_BYTES).set(c.bytes as f64);
}
