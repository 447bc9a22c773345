//! A filesystem that loses what was not synced, for power-loss tests (after Jepsen's LazyFS).
//!
//! A SIGKILL keeps the kernel's page cache: data written but never fsynced survives it, so a
//! kill test cannot tell "acked after fsync" from "acked after write". This filesystem, mounted
//! with FUSE, keeps every file's data and every directory's entries in memory in two versions:
//! what was written, and what was made durable:
//!
//! - a file's data and size become durable with `fsync`/`fdatasync` of that file;
//! - a directory's entries (a file created, renamed or removed in it) become durable with
//!   `fsync` of that directory, as POSIX requires and as a careful program does (create a temp
//!   file, fsync it, rename it, fsync the directory);
//! - [`LazyFs::power_cut`] throws away everything not durable: every file goes back to its
//!   durable data, every directory to its durable entries.
//!
//! Files are served with direct I/O (no kernel page cache), so what a reader sees after a cut
//! is exactly what survived it. Unmount before a cut and mount again after it, as a machine
//! would restart: the kernel then holds nothing of the old mount.

mod fs;
mod state;

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub use state::CutReport;

/// The filesystem's contents, shared by its mounts and the test that cuts the power.
#[derive(Clone, Default)]
pub struct LazyFs {
    state: Arc<Mutex<state::State>>,
}

/// A mounted [`LazyFs`]; unmounted when dropped.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
}

impl LazyFs {
    pub fn new() -> LazyFs {
        LazyFs::default()
    }

    /// Mounts the filesystem at `mountpoint` (an empty directory). Needs `/dev/fuse` and
    /// `fusermount3` (Debian's `fuse3`).
    pub fn mount(&self, mountpoint: &Path) -> io::Result<Mounted> {
        let owner = {
            use std::os::unix::fs::MetadataExt as _;
            let m = std::fs::metadata(mountpoint)?;
            (m.uid(), m.gid())
        };
        let fs = fs::Fuse::new(self.state.clone(), owner);
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("sidelog-lazyfs".into()),
            fuser::MountOption::DefaultPermissions,
        ];
        let session = fuser::spawn_mount(fs, mountpoint, &config)?;
        Ok(Mounted {
            session: Some(session),
        })
    }

    /// Drops every write not made durable (see the crate's doc) and reports how much was lost.
    pub fn power_cut(&self) -> CutReport {
        self.state
            .lock()
            .expect("no panic under this lock")
            .power_cut()
    }

    /// Bytes and entries written but not yet durable, now.
    pub fn unsynced(&self) -> CutReport {
        self.state
            .lock()
            .expect("no panic under this lock")
            .unsynced()
    }
}

impl Mounted {
    /// Unmounts and waits for the FUSE session to end.
    pub fn unmount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(session) => session.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}
