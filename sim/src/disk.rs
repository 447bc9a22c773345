//! The simulated disk: a redb `StorageBackend` with a page cache that a crash can lose.
//!
//! Two images: `volatile` is what reads see (every write lands there at once, as in a page
//! cache), `durable` is what survives a crash (updated by a successful `sync_data`). A crash
//! keeps all, none, or a random subset of the pages written since the last sync (torn writes).
//! Writes and syncs can fail with I/O errors, and growing the file past the capacity fails as a
//! full disk.
//!
//! A failed sync is pessimistic, as Linux is after a writeback error (PostgreSQL's "fsyncgate"):
//! the pages it covered are dropped from the way to the disk. Reads still see them (the page
//! cache keeps them, marked clean), a later sync succeeds without them, and a crash reveals the
//! old contents. Software that retries the fsync and trusts the retry has lost data.
//!
//! Each incarnation of sidelog gets a backend tagged with the disk's epoch; a crash bumps the
//! epoch, so whatever the dead incarnation's objects still try to write (redb's `Drop`, say) is
//! refused and cannot change the disk after its death.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use rand::{RngExt, SeedableRng, rngs::StdRng};

const PAGE: u64 = 4096;

/// Fault rates of the disk, per operation.
#[derive(Debug, Clone, Copy)]
pub struct DiskFaults {
    pub write_error: f64,
    pub sync_error: f64,
    /// Bytes the file may grow to; past it, `set_len` fails as a full disk.
    pub capacity: u64,
}

/// How a full disk treats writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// ext4, xfs: overwriting a page that holds data works; a never-written page needs a block.
    InPlace,
    /// btrfs, zfs: every write needs a new block.
    CopyOnWrite,
}

/// What a crash does to the pages written since the last sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashLoss {
    All,
    None,
    Torn,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct DiskStats {
    pub syncs: u64,
    pub write_errors: u64,
    pub sync_errors: u64,
    pub full_errors: u64,
    pub torn_pages_lost: u64,
}

/// One file's images.
#[derive(Debug, Default)]
struct Image {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    dirty: BTreeSet<u64>,
    /// Pages that have ever held data: a full disk still lets those be overwritten, but a
    /// never-written page of a sparse file needs a new block (ENOSPC on ext4 or xfs).
    allocated: BTreeSet<u64>,
}

/// The disk's files: the journal, and its redo log.
const JOURNAL: usize = 0;
const WAL: usize = 1;

#[derive(Debug)]
struct State {
    files: [Image; 2],
    full: Option<Full>,
    /// The journal file exists (its creation was published by a rename); before that the
    /// image holds only a journal being built, which a restart starts over.
    exists: bool,
    epoch: u64,
    faults: DiskFaults,
    rng: StdRng,
    stats: DiskStats,
}

/// A journal file an operator moved aside ([`SimDisk::set_journal_aside`]).
#[derive(Debug)]
pub struct JournalAside {
    image: Image,
    exists: bool,
}

/// The disk, shared by the incarnations of one simulated machine.
#[derive(Debug, Clone)]
pub struct SimDisk(Arc<Mutex<State>>);

impl SimDisk {
    pub fn new(seed: u64, faults: DiskFaults) -> SimDisk {
        SimDisk(Arc::new(Mutex::new(State {
            files: Default::default(),
            full: None,
            exists: false,
            epoch: 0,
            faults,
            rng: StdRng::seed_from_u64(seed),
            stats: DiskStats::default(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0
            .lock()
            .expect("the disk mutex is never held across a panic")
    }

    /// A backend of the journal file for the current incarnation.
    pub fn backend(&self) -> SimBackend {
        self.backend_of(JOURNAL)
    }

    fn backend_of(&self, file: usize) -> SimBackend {
        SimBackend {
            disk: self.clone(),
            epoch: self.lock().epoch,
            file,
        }
    }

    /// The machine loses power: unsynced pages are lost as `loss` says, and every backend of
    /// the dead incarnation is fenced off.
    pub fn crash(&self, loss: CrashLoss) {
        let mut s = self.lock();
        s.epoch += 1;
        let State {
            files, rng, stats, ..
        } = &mut *s;
        for f in files.iter_mut() {
            let dirty: Vec<u64> = std::mem::take(&mut f.dirty).into_iter().collect();
            let mut image = f.durable.clone();
            let mut kept_len = image.len();
            for page in dirty {
                let keep = match loss {
                    CrashLoss::All => false,
                    CrashLoss::None => true,
                    CrashLoss::Torn => rng.random_bool(0.5),
                };
                if !keep {
                    stats.torn_pages_lost += 1;
                    continue;
                }
                let start = (page * PAGE) as usize;
                let end = (start + PAGE as usize).min(f.volatile.len());
                if start >= end {
                    continue;
                }
                if image.len() < end {
                    image.resize(end, 0);
                }
                image[start..end].copy_from_slice(&f.volatile[start..end]);
                kept_len = kept_len.max(end);
            }
            if loss == CrashLoss::None {
                kept_len = f.volatile.len();
            }
            image.resize(kept_len, 0);
            f.durable = image.clone();
            f.volatile = image;
        }
    }

    /// A backend of the redo log for the current incarnation (for reading it as an operator
    /// would, with `sidelog inspect wal`).
    pub fn wal_backend(&self) -> SimBackend {
        self.backend_of(WAL)
    }

    /// Damage that reached the disk: one byte of the redo log changes, in what reads see and
    /// in what a crash keeps. Changing it again undoes it.
    pub fn flip_wal_byte(&self, offset: u64) {
        let mut s = self.lock();
        let f = &mut s.files[WAL];
        let at = offset as usize;
        for image in [&mut f.volatile, &mut f.durable] {
            if let Some(b) = image.get_mut(at) {
                *b ^= 0x20;
            }
        }
    }

    /// An operator moves the journal file aside (the redo log stays): the directory has no
    /// journal until it is put back.
    pub fn set_journal_aside(&self) -> JournalAside {
        let mut s = self.lock();
        let image = std::mem::take(&mut s.files[JOURNAL]);
        let exists = std::mem::replace(&mut s.exists, false);
        JournalAside { image, exists }
    }

    /// The journal set aside comes back, replacing whatever the directory holds.
    pub fn put_journal_back(&self, aside: JournalAside) {
        let mut s = self.lock();
        s.files[JOURNAL] = aside.image;
        s.exists = aside.exists;
    }

    pub fn set_faults(&self, faults: DiskFaults) {
        self.lock().faults = faults;
    }

    /// The disk fills up: the file may not grow, and writes that need a new block fail.
    pub fn fill_up(&self, kind: Full) {
        self.lock().full = Some(kind);
    }

    /// Space returns.
    pub fn free_space(&self) {
        self.lock().full = None;
    }

    pub fn stats(&self) -> DiskStats {
        self.lock().stats
    }

    /// The journal file's length.
    pub fn len(&self) -> u64 {
        self.lock().files[JOURNAL].volatile.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl sidelog::journal::JournalStore for SimDisk {
    fn exists(&self) -> std::io::Result<bool> {
        Ok(self.lock().exists)
    }

    fn open(&self) -> std::io::Result<Box<dyn redb::StorageBackend>> {
        Ok(Box::new(self.backend()))
    }

    fn create_temp(&self) -> std::io::Result<Box<dyn redb::StorageBackend>> {
        self.lock().files[JOURNAL] = Image::default();
        Ok(Box::new(self.backend()))
    }

    fn publish_temp(&self) -> std::io::Result<()> {
        self.lock().exists = true;
        Ok(())
    }

    /// The log is a file of its own on the same disk: a crash loses its unsynced pages as it
    /// does the journal's, independently of them.
    fn open_wal(&self) -> std::io::Result<Box<dyn redb::StorageBackend>> {
        Ok(Box::new(self.backend_of(WAL)))
    }

    fn room(&self) -> std::io::Result<u64> {
        let s = self.lock();
        Ok(match s.full {
            Some(_) => 0,
            None => s
                .faults
                .capacity
                .saturating_sub(s.files[JOURNAL].volatile.len() as u64),
        })
    }
}

/// One incarnation's view of the disk.
#[derive(Debug)]
pub struct SimBackend {
    disk: SimDisk,
    epoch: u64,
    /// Which of the disk's files this is.
    file: usize,
}

fn io(kind: std::io::ErrorKind, msg: &str) -> std::io::Error {
    std::io::Error::new(kind, msg.to_owned())
}

impl SimBackend {
    fn live(&self) -> Result<std::sync::MutexGuard<'_, State>, std::io::Error> {
        let s = self.disk.lock();
        if s.epoch != self.epoch {
            return Err(io(
                std::io::ErrorKind::BrokenPipe,
                "the process that opened this file has crashed",
            ));
        }
        Ok(s)
    }
}

impl redb::StorageBackend for SimBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.live()?.files[self.file].volatile.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let s = self.live()?;
        let f = &s.files[self.file];
        let start = offset as usize;
        let end = start + out.len();
        if end > f.volatile.len() {
            return Err(io(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end of the file",
            ));
        }
        out.copy_from_slice(&f.volatile[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut s = self.live()?;
        let old = s.files[self.file].volatile.len() as u64;
        if len > s.faults.capacity || (s.full.is_some() && len > old) {
            s.stats.full_errors += 1;
            return Err(io(
                std::io::ErrorKind::StorageFull,
                "simulated disk is full",
            ));
        }
        let f = &mut s.files[self.file];
        f.volatile.resize(len as usize, 0);
        // The changed length is part of what the next sync makes durable.
        let (lo, hi) = (old.min(len), old.max(len));
        let mut page = lo / PAGE;
        while page * PAGE < hi {
            f.dirty.insert(page);
            page += 1;
        }
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut s = self.live()?;
        let p = s.faults.sync_error;
        if p > 0.0 && s.rng.random_bool(p) {
            s.stats.sync_errors += 1;
            // The writeback failed: these pages will never reach the disk, and the next sync
            // does not try them again.
            s.files[self.file].dirty.clear();
            return Err(io(std::io::ErrorKind::Other, "simulated fsync failure"));
        }
        let f = &mut s.files[self.file];
        let dirty: Vec<u64> = std::mem::take(&mut f.dirty).into_iter().collect();
        let len = f.volatile.len();
        f.durable.resize(len, 0);
        for page in dirty {
            let start = (page * PAGE) as usize;
            let end = (start + PAGE as usize).min(len);
            if start < end {
                f.durable[start..end].copy_from_slice(&f.volatile[start..end]);
            }
        }
        s.stats.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut s = self.live()?;
        let p = s.faults.write_error;
        if p > 0.0 && s.rng.random_bool(p) {
            s.stats.write_errors += 1;
            return Err(io(std::io::ErrorKind::Other, "simulated write failure"));
        }
        let start = offset as usize;
        let end = start + data.len();
        if end > s.files[self.file].volatile.len() {
            return Err(io(
                std::io::ErrorKind::InvalidInput,
                "write past the end of the file",
            ));
        }
        let pages = (offset / PAGE)..(end as u64).div_ceil(PAGE);
        let needs_block = match s.full {
            None => false,
            Some(Full::CopyOnWrite) => true,
            Some(Full::InPlace) => pages
                .clone()
                .any(|p| !s.files[self.file].allocated.contains(&p)),
        };
        if needs_block {
            s.stats.full_errors += 1;
            return Err(io(
                std::io::ErrorKind::StorageFull,
                "simulated disk is full",
            ));
        }
        let f = &mut s.files[self.file];
        f.volatile[start..end].copy_from_slice(data);
        for page in pages {
            f.dirty.insert(page);
            f.allocated.insert(page);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend;

    fn disk() -> SimDisk {
        SimDisk::new(
            1,
            DiskFaults {
                write_error: 0.0,
                sync_error: 0.0,
                capacity: 1 << 30,
            },
        )
    }

    #[test]
    fn unsynced_writes_are_lost_and_synced_ones_kept() {
        let d = disk();
        let b = d.backend();
        b.set_len(2 * PAGE).unwrap();
        b.write(0, b"synced").unwrap();
        b.sync_data().unwrap();
        b.write(PAGE, b"lost").unwrap();
        d.crash(CrashLoss::All);
        let b2 = d.backend();
        let mut buf = [0u8; 6];
        b2.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"synced");
        let mut buf = [0u8; 4];
        b2.read(PAGE, &mut buf).unwrap();
        assert_eq!(&buf, &[0; 4]);
        assert!(b.write(0, b"x").is_err(), "a dead incarnation cannot write");
    }

    #[test]
    fn a_failed_sync_drops_its_pages_and_a_later_sync_does_not_save_them() {
        let d = SimDisk::new(
            1,
            DiskFaults {
                write_error: 0.0,
                sync_error: 1.0,
                capacity: 1 << 30,
            },
        );
        let b = d.backend();
        b.set_len(PAGE).unwrap();
        b.write(0, b"gone").unwrap();
        assert!(b.sync_data().is_err());
        let mut buf = [0u8; 4];
        b.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"gone", "the page cache still shows the write");
        d.set_faults(DiskFaults {
            write_error: 0.0,
            sync_error: 0.0,
            capacity: 1 << 30,
        });
        b.sync_data().unwrap();
        d.crash(CrashLoss::None);
        let b2 = d.backend();
        let mut buf = [0u8; 4];
        b2.read(0, &mut buf).unwrap();
        assert_eq!(
            &buf, &[0; 4],
            "the data of the failed sync never reached the disk"
        );
    }

    #[test]
    fn the_disk_fills_up() {
        let d = SimDisk::new(
            1,
            DiskFaults {
                write_error: 0.0,
                sync_error: 0.0,
                capacity: 10 * PAGE,
            },
        );
        let b = d.backend();
        assert!(b.set_len(5 * PAGE).is_ok());
        let err = b.set_len(11 * PAGE).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull);
    }
}
