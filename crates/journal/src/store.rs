//! Where the journal's file lives: the real filesystem ([`FileStore`], with an optional size
//! limit), or the simulator's disk; and opening the database in it.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redb::Database;
use tracing::{info, warn};

use super::config::JournalConfig;
use super::error::{Failure, JournalError, Result};
use super::record::FILE_FORMAT;
use super::tables::{META, META_FORMAT, META_JOURNAL_ID};

/// The file name of the journal inside the data directory.
pub const FILE_NAME: &str = "journal.redb";

/// Where the journal's file lives: the real filesystem, or the simulator's disk.
///
/// A journal is created atomically: initialized under a temporary name, synced, then renamed
/// into place. So the journal file either does not exist or is a complete database, and a
/// crash (or I/O error) during the very first start cannot leave a half-made file that every
/// later start would have to refuse as damaged.
pub trait JournalStore: Send + 'static {
    /// Whether the journal file exists.
    fn exists(&self) -> std::io::Result<bool>;
    /// A backend for the existing journal file.
    fn open(&self) -> std::io::Result<Box<dyn redb::StorageBackend>>;
    /// A backend for an empty temporary file (replacing any leftover) to build a new journal in.
    fn create_temp(&self) -> std::io::Result<Box<dyn redb::StorageBackend>>;
    /// Makes the temporary file the journal file, atomically and durably.
    fn publish_temp(&self) -> std::io::Result<()>;
    /// A backend for the redo log (`journal.wal`), created empty (and durably) when missing,
    /// and held by this process alone (`ResourceBusy` when another has it).
    fn open_wal(&self) -> std::io::Result<Box<dyn redb::StorageBackend>>;
    /// Bytes the journal file may still grow by: its disk's free space, and what its size
    /// limit leaves.
    fn room(&self) -> std::io::Result<u64>;
    /// The byte ranges of the journal file that hold data, its holes left out; `None` when the
    /// store cannot tell (every page is then taken to hold data).
    fn data_ranges(&self) -> std::io::Result<Option<Vec<(u64, u64)>>> {
        Ok(None)
    }
    /// Lets the file grow into the headroom kept past its size limit (`on`), or not. The writer
    /// turns it on only to commit completion marks after the journal filled up: removing
    /// entries needs new pages (copy-on-write), and without headroom a full journal could never
    /// drain. Stores without a size limit ignore it.
    fn set_reserve(&self, _on: bool) {}
}

/// The headroom past `limits.max_journal_bytes` that only completion marks may use: 1/16 of
/// the limit, between 256 KiB and 64 MiB.
pub fn reserve_bytes(max_file_bytes: u64) -> u64 {
    (max_file_bytes / 16).clamp(256 << 10, 64 << 20)
}

/// The journal file on the real filesystem, optionally size-limited.
#[derive(Debug, Clone)]
pub struct FileStore {
    pub path: PathBuf,
    pub max_file_bytes: Option<u64>,
    /// Added to every fsync (benchmarks: a slow disk on a fast machine).
    pub fsync_latency: Duration,
    /// Whether the file may grow into its headroom now (see [`JournalStore::set_reserve`]).
    pub reserve: Arc<std::sync::atomic::AtomicBool>,
    /// A planted bug for the power-loss test: fsync returns at once without syncing, so data
    /// is written (and survives a SIGKILL in the page cache) but not durable.
    #[doc(hidden)]
    pub unsafe_skip_fsync: bool,
}

impl FileStore {
    /// `journal.redb` in `data_dir`, which is created if missing.
    pub fn in_dir(data_dir: &Path, config: &JournalConfig) -> Result<FileStore> {
        sidelog_runtime::create_dir_all_durably(data_dir).map_err(|e| {
            JournalError::io(
                format!("cannot create data directory {}", data_dir.display()),
                e,
            )
        })?;
        Ok(FileStore {
            path: data_dir.join(FILE_NAME),
            max_file_bytes: config.max_file_bytes,
            fsync_latency: Duration::from_micros(config.simulated_fsync_latency_us),
            reserve: Arc::default(),
            unsafe_skip_fsync: config.unsafe_skip_fsync,
        })
    }

    fn temp_path(&self) -> PathBuf {
        self.path.with_extension("redb.new")
    }

    /// The redo log's path: `journal.wal` beside the journal.
    pub fn wal_path(&self) -> PathBuf {
        self.path.with_file_name(super::wal::WAL_FILE_NAME)
    }

    fn backend(&self, path: &Path, create: bool) -> std::io::Result<Box<dyn redb::StorageBackend>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(path)
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
            })?;
        if !create {
            back_every_page(&file, path);
        }
        // The same open file: `set_len` reserves a growth's blocks through it.
        let blocks = file.try_clone()?;
        let inner = redb::backends::FileBackend::new(file).map_err(std::io::Error::other)?;
        Ok(Box::new(QuotaBackend {
            inner,
            blocks,
            max_len: self.max_file_bytes.unwrap_or(u64::MAX),
            fsync_latency: self.fsync_latency,
            reserve: self.reserve.clone(),
            skip_fsync: self.unsafe_skip_fsync,
        }))
    }
}

impl JournalStore for FileStore {
    fn exists(&self) -> std::io::Result<bool> {
        self.path.try_exists()
    }

    fn open(&self) -> std::io::Result<Box<dyn redb::StorageBackend>> {
        self.backend(&self.path, false)
    }

    fn create_temp(&self) -> std::io::Result<Box<dyn redb::StorageBackend>> {
        self.backend(&self.temp_path(), true)
    }

    fn set_reserve(&self, on: bool) {
        self.reserve.store(on, Ordering::Relaxed);
    }

    fn publish_temp(&self) -> std::io::Result<()> {
        std::fs::rename(self.temp_path(), &self.path)?;
        sidelog_runtime::sync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }

    fn room(&self) -> std::io::Result<u64> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let fs = rustix::fs::statvfs(dir)?;
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        Ok(match self.max_file_bytes {
            Some(max) => {
                let len = std::fs::metadata(&self.path).map_or(0, |m| m.len());
                free.min(max.saturating_sub(len))
            }
            None => free,
        })
    }

    /// `SEEK_DATA`/`SEEK_HOLE` (a filesystem without holes answers the whole file as data).
    fn data_ranges(&self) -> std::io::Result<Option<Vec<(u64, u64)>>> {
        use rustix::fs::{SeekFrom, seek};
        let file = std::fs::File::open(&self.path)?;
        let len = file.metadata()?.len();
        let mut ranges = Vec::new();
        let mut at = 0;
        while at < len {
            let start = match seek(&file, SeekFrom::Data(at)) {
                Ok(start) => start,
                Err(rustix::io::Errno::NXIO) => break,
                Err(e) => return Err(e.into()),
            };
            let end = seek(&file, SeekFrom::Hole(start))?.min(len);
            ranges.push((start, end));
            at = end;
        }
        Ok(Some(ranges))
    }

    fn open_wal(&self) -> std::io::Result<Box<dyn redb::StorageBackend>> {
        let path = self.wal_path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        // One process at a time: the lock is taken before anything is read or written, and
        // held as long as the file is open.
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| match e {
                rustix::io::Errno::WOULDBLOCK => std::io::Error::new(
                    std::io::ErrorKind::ResourceBusy,
                    format!("{} is locked by another process", path.display()),
                ),
                e => std::io::Error::from(e),
            },
        )?;
        // Whether this open or an earlier one that crashed before its own sync created the
        // file, its directory entry is made durable before a frame in it can be acknowledged.
        sidelog_runtime::sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        let blocks = file.try_clone()?;
        let inner = redb::backends::FileBackend::new(file).map_err(std::io::Error::other)?;
        // Not under the journal's size limit: the log is allocated once, at its full size.
        Ok(Box::new(QuotaBackend {
            inner,
            blocks,
            max_len: u64::MAX,
            fsync_latency: self.fsync_latency,
            reserve: Arc::default(),
            skip_fsync: self.unsafe_skip_fsync,
        }))
    }
}

/// How an open treats pages a failed fsync may have dropped (see [`open_database`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rewrite {
    /// At start: a process that died after a failed fsync may have left the page cache showing
    /// pages the disk never got. Rewrite; if the disk is too full to (a copy-on-write
    /// filesystem needs new blocks even for the same bytes), say so and go on.
    AtStart,
    /// After a failed fsync in this process: rewrite, and fail if that fails.
    AfterFailedFsync,
    /// After another I/O error (a failed write, a full disk): nothing was dropped.
    No,
}

/// Opens the journal database in `store`, building a new one first when there is none.
///
/// Once redb holds the file's locks the file may be rewritten through (every page that holds
/// data read from the cache, written back, then fsynced): a failed fsync may have dropped pages
/// on their way to the disk while the page cache still shows them (Linux after a writeback
/// error), and a later fsync would succeed without them. Writing the cache again makes the disk
/// hold what redb builds on. A start after a clean stop skips it (the redo log's header holds
/// the fingerprint the stop left, `wal.rs`); so does the open that creates the file.
///
/// The rewrite comes before redb's first change to the file, whenever that is: redb may repair
/// and commit while it opens, and a commit on top of pages the disk never got, made durable
/// before them, leaves a file no root of which verifies (the simulator found this). Until the
/// rewrite has succeeded, every write and sync redb asks for tries it first and fails with it.
pub(super) fn open_database(
    store: &dyn JournalStore,
    path: &Path,
    fsync: Fsync,
    rewrite: Rewrite,
    identity: u64,
) -> Result<Database> {
    let io = |e: std::io::Error| JournalError::from_io(e);
    let mut rewrite = rewrite;
    if !store.exists().map_err(io)? {
        create_database(store, identity).map_err(|e| e.at(path))?;
        info!(path = %path.display(), "created a new journal");
        // Written and synced just now by this process: the disk holds what the cache shows.
        rewrite = Rewrite::No;
    }
    let backend = store.open().map_err(io)?;
    let corrupted = |reason: String| JournalError::Corrupted {
        path: path.to_owned(),
        reason,
    };
    // redb would format an empty file as a new database. sidelog never leaves an empty
    // journal behind (a new one is built under a temporary name and renamed into place), so
    // an empty journal.redb was truncated: starting on it would silently drop the backlog.
    if backend.len().map_err(io)? == 0 {
        return Err(corrupted(
            "the file is empty (0 bytes): it was truncated or replaced".into(),
        ));
    }
    let backend: Arc<dyn redb::StorageBackend> = Arc::from(backend);
    // The holes are read now, before redb writes a byte: the rewrite leaves them alone.
    let holes_known = if rewrite == Rewrite::No {
        None
    } else {
        store.data_ranges().map_err(io)?
    };
    let pending = Arc::new(PendingRewrite::new(rewrite, path).with_data(holes_known));
    match redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create_with_backend(BoxedBackend(backend.clone(), fsync, pending.clone()))
    {
        // Rewritten once redb holds the file's locks (a concurrent open, inspect beside a
        // running sidelog, is refused before it could write a byte), and before redb changes
        // anything: if opening wrote nothing, now.
        Ok(db) => {
            pending.ensure(backend.as_ref()).map_err(io)?;
            Ok(db)
        }
        Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason))) => {
            Err(corrupted(reason))
        }
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(JournalError::InUse {
            path: path.to_owned(),
        }),
        Err(redb::DatabaseError::UpgradeRequired(v)) => Err(JournalError::Format {
            path: path.to_owned(),
            found: u64::from(v),
        }),
        Err(e) => match redb::Error::from(e) {
            redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                Err(corrupted(io.to_string()))
            }
            other => Err(JournalError::from_redb(other, path)),
        },
    }
}

/// redb's page cache (its default is 1 GiB). It holds the pages a commit writes until they are
/// flushed (at most half of it) and recently read pages: a replay reads each block once, and a
/// commit's pages are a few dozen, so a cache that grew with the backlog bought nothing and
/// made the replay of a 2 GiB journal hold ~270 MiB.
const CACHE_BYTES: usize = 32 << 20;

/// Reads the file's data and writes it back, then fsyncs: what the page cache shows becomes
/// what the disk holds. `data` lists the byte ranges that hold data (holes left out; `None`:
/// the whole file). Returns the bytes rewritten.
///
/// Pages of zeros in the data are written too: a page that a commit rewrote to zeros, whose
/// write-back failed, would otherwise keep its old bytes on the disk. Holes are not: nothing
/// was ever written there, they read as zeros whatever happens, and writing them would take
/// space (a full disk has none). Without the map, a page of zeros whose write fails for lack
/// of space is taken as a hole (ext4 and xfs need a new block only for a hole; an allocated
/// block is overwritten in place).
fn rewrite_through(
    backend: &dyn redb::StorageBackend,
    data: Option<&[(u64, u64)]>,
) -> std::io::Result<u64> {
    const STEP: u64 = 1 << 20;
    const PAGE: u64 = 4096;
    let len = backend.len()?;
    let whole = [(0, len)];
    let ranges = data.unwrap_or(&whole);
    let mut buf = vec![0u8; STEP.min(len) as usize];
    let mut written = 0;
    for &(start, end) in ranges {
        // Whole pages: a range's ends need not be page-aligned.
        let mut offset = start / PAGE * PAGE;
        let end = end.div_ceil(PAGE).saturating_mul(PAGE).min(len);
        while offset < end {
            let n = STEP.min(end - offset) as usize;
            backend.read(offset, &mut buf[..n])?;
            if data.is_some() {
                // Every page here holds data: one write for the whole step (a write a page
                // was ~2 µs of syscall per 4 KiB, 1.5 s of a 2 GiB journal's start).
                backend.write(offset, &buf[..n])?;
            } else {
                for (i, page) in buf[..n].chunks(PAGE as usize).enumerate() {
                    let at = offset + i as u64 * PAGE;
                    match backend.write(at, page) {
                        Err(e) if page.iter().all(|b| *b == 0) && super::error::disk_full(&e) => {}
                        other => other?,
                    }
                }
            }
            written += n as u64;
            offset += n as u64;
        }
    }
    backend.sync_data()?;
    Ok(written)
}

/// A new journal with this identity: built and synced under a temporary name, then renamed
/// into place.
fn create_database(store: &dyn JournalStore, identity: u64) -> std::result::Result<(), Failure> {
    let io = |e: std::io::Error| Failure::Journal(JournalError::from_io(e));
    let db = redb::Builder::new().create_with_backend(BoxedBackend(
        Arc::from(store.create_temp().map_err(io)?),
        Fsync {
            failure: FsyncFailure::Fail,
            failed: Arc::default(),
        },
        Arc::new(PendingRewrite::new(Rewrite::No, Path::new("(new journal)"))),
    ))?;
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        meta.insert(META_FORMAT, FILE_FORMAT)?;
        meta.insert(META_JOURNAL_ID, identity)?;
    }
    txn.commit()?;
    drop(db);
    store.publish_temp().map_err(io)
}

/// redb's file backend with a size limit: growing the file past `max_len` fails as
/// `StorageFull`, exactly as a full disk would. Every growth is backed by disk blocks before
/// redb can write into it ([`allocate`]). It can also make fsync slower, to benchmark the
/// modes as on a real disk (fsync on a virtual disk takes ~40 µs, on real ones 0.1–10 ms).
#[derive(Debug)]
struct QuotaBackend {
    inner: redb::backends::FileBackend,
    /// The file `inner` writes, to reserve blocks in.
    blocks: std::fs::File,
    max_len: u64,
    fsync_latency: Duration,
    reserve: Arc<std::sync::atomic::AtomicBool>,
    skip_fsync: bool,
}

impl redb::StorageBackend for QuotaBackend {
    fn len(&self) -> std::result::Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::result::Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::result::Result<(), std::io::Error> {
        let limit = if self.reserve.load(Ordering::Relaxed) {
            self.max_len.saturating_add(reserve_bytes(self.max_len))
        } else {
            self.max_len
        };
        if len > limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("journal size limit of {} bytes reached", self.max_len),
            ));
        }
        let now = self.inner.len()?;
        if len > now {
            allocate(&self.blocks, now, len)?;
        }
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::result::Result<(), std::io::Error> {
        if self.skip_fsync {
            return Ok(());
        }
        if !self.fsync_latency.is_zero() {
            // The writer runs on its own thread: sleeping here stalls only the journal.
            std::thread::sleep(self.fsync_latency);
        }
        let started = tokio::time::Instant::now();
        let result = self.inner.sync_data();
        metrics::histogram!(crate::metrics::JOURNAL_FSYNC_SECONDS)
            .record(started.elapsed().as_secs_f64());
        result
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::result::Result<(), std::io::Error> {
        self.inner.write(offset, data)
    }
    fn close(&self) -> std::result::Result<(), std::io::Error> {
        self.inner.close()
    }
    fn try_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> std::result::Result<bool, redb::BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> std::result::Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn unlock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> std::result::Result<(), redb::BackendError> {
        self.inner.unlock_range(start, end)
    }
}

/// Reserves the disk blocks of `[from, to)` of the journal file, growing it to `to`.
///
/// redb grows its file by setting a larger length, which on Linux leaves a hole: the blocks
/// are taken only when a page is first written. On a full disk that write fails, and redb's
/// allocator hands out the same never-written page again on every retry, even after delivered
/// entries have freed pages that do have blocks: a journal that filled its disk never took
/// writes again (the full-disk test found it, one run in eight on a busy machine). With every
/// page backed, a full disk fails only the growth itself, and pages freed inside the file are
/// there to reuse. The price is disk held for pages redb has not used yet (up to the last
/// growth: redb doubles the file up to 4 GiB, then adds 4 GiB at a time).
///
/// A filesystem that cannot reserve blocks (`EOPNOTSUPP`) is left to grow the file sparse,
/// as before.
fn allocate(file: &std::fs::File, from: u64, to: u64) -> std::io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), from, to - from) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                warn!("the journal's filesystem cannot reserve blocks (fallocate): the file grows sparse, and a disk that fills up may refuse the journal's writes until space is freed outside it");
            });
            Ok(())
        }
        Err(e) => {
            let e = std::io::Error::from(e);
            // Linux may have taken some of the blocks before it ran out: give them back.
            let _ = file.set_len(from);
            Err(std::io::Error::new(
                e.kind(),
                format!(
                    "cannot reserve disk space to grow the journal from {from} to {to} bytes: {e}"
                ),
            ))
        }
    }
}

/// Backs every page of an existing journal file with disk blocks (see [`allocate`]): a file
/// that an earlier version grew sparse, or that was copied with holes, gets its blocks now,
/// while the disk may still have them. A disk without room for them is only warned about:
/// the journal runs as before, sparse.
fn back_every_page(file: &std::fs::File, path: &Path) {
    let len = match file.metadata() {
        Ok(meta) => meta.len(),
        Err(_) => return,
    };
    if len == 0 {
        return;
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, len) {
        Ok(()) | Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {}
        Err(e) => warn!(
            path = %path.display(),
            error = %std::io::Error::from(e),
            "cannot reserve disk blocks for the whole journal file; pages never written yet take them when first written, and a full disk fails those writes"
        ),
    }
}

/// Lets a boxed backend (chosen at run time) be handed to redb, which takes `impl StorageBackend`;
/// makes its fsyncs as [`Fsync`] says, and lets nothing change the file before a pending
/// rewrite-through has succeeded.
#[derive(Debug)]
struct BoxedBackend(Arc<dyn redb::StorageBackend>, Fsync, Arc<PendingRewrite>);

/// A rewrite-through that must happen before the file changes (see [`open_database`]).
#[derive(Debug)]
struct PendingRewrite {
    /// The file's data ranges when the store knows them (`None`: every page).
    data: Option<Vec<(u64, u64)>>,
    /// Cleared once done (or not needed): the fast path of every write.
    needed: std::sync::atomic::AtomicBool,
    kind: Rewrite,
    path: std::path::PathBuf,
    /// Held while rewriting, so that one write waits for another's rewrite.
    running: std::sync::Mutex<()>,
}

impl PendingRewrite {
    /// Rewrites only these byte ranges (the file's data, its holes left out).
    fn with_data(mut self, data: Option<Vec<(u64, u64)>>) -> PendingRewrite {
        self.data = data;
        self
    }

    fn new(kind: Rewrite, path: &Path) -> PendingRewrite {
        PendingRewrite {
            data: None,
            needed: std::sync::atomic::AtomicBool::new(kind != Rewrite::No),
            kind,
            path: path.to_owned(),
            running: std::sync::Mutex::new(()),
        }
    }

    /// Rewrites `inner` through unless that is done; an error leaves it pending.
    fn ensure(&self, inner: &dyn redb::StorageBackend) -> std::io::Result<()> {
        if !self.needed.load(Ordering::Acquire) {
            return Ok(());
        }
        let _running = self
            .running
            .lock()
            .expect("rewrite_through does not panic while this is held");
        if !self.needed.load(Ordering::Acquire) {
            return Ok(());
        }
        let started = tokio::time::Instant::now();
        match rewrite_through(inner, self.data.as_deref()) {
            Ok(bytes) => info!(
                path = %self.path.display(),
                bytes,
                ms = started.elapsed().as_millis() as u64,
                "rewrote the journal through (the last stop was not clean): what the page cache shows is what the disk holds"
            ),
            Err(e) if self.kind == Rewrite::AtStart && super::error::disk_full(&e) => {
                warn!(path = %self.path.display(), error = %e, "cannot rewrite the journal through at start (the disk is full); going on without");
            }
            Err(e) => return Err(e),
        }
        self.needed.store(false, Ordering::Release);
        Ok(())
    }
}

/// How the journal's fsyncs are made and watched.
#[derive(Debug, Clone)]
pub(super) struct Fsync {
    pub failure: FsyncFailure,
    /// Set when an fsync fails: the next reopen rewrites the file through.
    pub failed: Arc<std::sync::atomic::AtomicBool>,
}

/// What a failed fsync does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FsyncFailure {
    /// It fails the commit (the writer reopens the file and acks nothing of it): after a
    /// writeback error the kernel may have dropped the pages, and a retry that succeeds does
    /// not bring them back.
    Fail,
    /// The simulator's planted bug: retry once and report success, as if the retry had
    /// saved the pages.
    RetryAndTrust,
}

impl redb::StorageBackend for BoxedBackend {
    fn len(&self) -> std::result::Result<u64, std::io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::result::Result<(), std::io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::result::Result<(), std::io::Error> {
        self.2.ensure(self.0.as_ref())?;
        self.0.set_len(len)
    }
    fn sync_data(&self) -> std::result::Result<(), std::io::Error> {
        self.2.ensure(self.0.as_ref())?;
        match (self.0.sync_data(), self.1.failure) {
            (Err(_), FsyncFailure::RetryAndTrust) => self.0.sync_data(),
            (Err(e), FsyncFailure::Fail) => {
                self.1.failed.store(true, Ordering::Relaxed);
                Err(e)
            }
            (ok, _) => ok,
        }
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::result::Result<(), std::io::Error> {
        self.2.ensure(self.0.as_ref())?;
        self.0.write(offset, data)
    }
    fn close(&self) -> std::result::Result<(), std::io::Error> {
        self.0.close()
    }
    fn try_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> std::result::Result<bool, redb::BackendError> {
        self.0.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> std::result::Result<bool, redb::BackendError> {
        self.0.try_lock_shared_range(start, end)
    }
    fn unlock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> std::result::Result<(), redb::BackendError> {
        self.0.unlock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend as _;
    use std::sync::Mutex;

    /// A file in memory that records which pages were written, and answers writes of the
    /// pages in `holes` as a full disk answers a write into a hole.
    #[derive(Debug, Default)]
    struct Recording {
        data: Mutex<Vec<u8>>,
        written: Mutex<Vec<u64>>,
        holes: Vec<u64>,
    }

    impl redb::StorageBackend for Recording {
        fn len(&self) -> std::io::Result<u64> {
            Ok(self.data.lock().unwrap().len() as u64)
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            let data = self.data.lock().unwrap();
            out.copy_from_slice(&data[offset as usize..offset as usize + out.len()]);
            Ok(())
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.data.lock().unwrap().resize(len as usize, 0);
            Ok(())
        }
        fn sync_data(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            let page = offset / 4096;
            if self.holes.contains(&page) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "no space for a new block",
                ));
            }
            self.written.lock().unwrap().push(page);
            self.data.lock().unwrap()[offset as usize..offset as usize + data.len()]
                .copy_from_slice(data);
            Ok(())
        }
        fn close(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The map of a sparse file: what was written is data; on a filesystem with holes (ext4,
    /// xfs, tmpfs) the never-written middle is not.
    #[test]
    fn a_file_stores_map_covers_what_was_written() {
        use std::io::{Seek as _, Write as _};
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::in_dir(dir.path(), &crate::JournalConfig::default()).unwrap();
        let mut file = std::fs::File::create(&store.path).unwrap();
        file.set_len(8 << 20).unwrap();
        file.seek(std::io::SeekFrom::Start(4 << 20)).unwrap();
        file.write_all(&[1; 4096]).unwrap();
        file.sync_all().unwrap();
        let ranges = store
            .data_ranges()
            .unwrap()
            .expect("a file store knows its map");
        assert!(
            ranges
                .iter()
                .any(|&(a, b)| a <= 4 << 20 && (4 << 20) + 4096 <= b),
            "{ranges:?}"
        );
        assert!(
            ranges.iter().all(|&(a, b)| a < b && b <= 8 << 20),
            "{ranges:?}"
        );
    }

    /// Every page of the journal file has its disk blocks before redb writes into it: a file
    /// opened with holes (an earlier version grew it sparse) gets them at the open, a growth
    /// before it is handed to redb. Without them a full disk failed the first write of a
    /// page, forever (see [`allocate`]).
    #[test]
    fn the_journal_files_pages_have_their_blocks_before_redb_writes_one() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::in_dir(dir.path(), &crate::JournalConfig::default()).unwrap();
        let held = |path: &Path| std::fs::metadata(path).unwrap().blocks() * 512;
        let file = std::fs::File::create(&store.path).unwrap();
        file.set_len(1 << 20).unwrap();
        drop(file);
        assert!(held(&store.path) < 1 << 20, "the file was made sparse");
        let backend = store.open().unwrap();
        assert!(held(&store.path) >= 1 << 20, "{}", held(&store.path));
        backend.set_len(3 << 20).unwrap();
        assert_eq!(backend.len().unwrap(), 3 << 20);
        assert!(held(&store.path) >= 3 << 20, "{}", held(&store.path));
        // Shrinking gives blocks back as before.
        backend.set_len(2 << 20).unwrap();
        assert_eq!(backend.len().unwrap(), 2 << 20);
    }

    /// A page a commit rewrote to zeros, whose write-back failed, would keep its old bytes on
    /// the disk if the rewrite skipped it: every page is written, zeros included. A page of
    /// zeros the full disk has no block for is a hole, which reads as zeros anyway.
    #[test]
    fn the_rewrite_through_writes_pages_of_zeros_and_leaves_holes_on_a_full_disk() {
        let file = Recording {
            holes: vec![2],
            ..Recording::default()
        };
        file.set_len(4 * 4096).unwrap();
        file.write(3 * 4096, &[7; 4096]).unwrap();
        file.written.lock().unwrap().clear();
        assert_eq!(rewrite_through(&file, None).unwrap(), 4 * 4096);
        assert_eq!(*file.written.lock().unwrap(), [0, 1, 3]);
        // With the file's map, the hole is not even tried, and zeros in the data are written
        // (pages 0 and 1 in one write, then page 3).
        file.written.lock().unwrap().clear();
        let data = [(0, 2 * 4096 - 100), (3 * 4096 + 5, 4 * 4096)];
        assert_eq!(rewrite_through(&file, Some(&data)).unwrap(), 3 * 4096);
        assert_eq!(*file.written.lock().unwrap(), [0, 3]);
        // A page with data that cannot be written fails the rewrite.
        let file = Recording {
            holes: vec![1],
            ..Recording::default()
        };
        file.set_len(2 * 4096).unwrap();
        file.data.lock().unwrap()[4096] = 1;
        assert!(rewrite_through(&file, None).is_err());
    }
}
