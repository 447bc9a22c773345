//! The FUSE side: each request reads or changes [`State`] under its lock.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::state::{Node, State};

/// Attributes and entries are not cached by the kernel: sizes change under it.
const TTL: Duration = Duration::ZERO;

pub(crate) struct Fuse {
    state: Arc<Mutex<State>>,
    /// Who owns every file (the mountpoint's owner).
    owner: (u32, u32),
}

impl Fuse {
    pub fn new(state: Arc<Mutex<State>>, owner: (u32, u32)) -> Fuse {
        Fuse { state, owner }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("no panic under this lock")
    }

    fn attr(&self, state: &State, ino: u64) -> Option<FileAttr> {
        let (kind, size, perm, nlink) = match state.nodes.get(&ino)? {
            Node::File(f) => (FileType::RegularFile, f.data.len() as u64, 0o644, 1),
            Node::Dir(_) => (FileType::Directory, 0, 0o755, 2),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn entry(&self, state: &State, ino: u64, reply: ReplyEntry) {
        match self.attr(state, ino) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// Creates `name` in `parent` (a file, or a directory with `dir`).
    fn add(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(u64, FileAttr), Errno> {
        let mut state = self.state();
        if state.dir(parent.0).is_none() {
            return Err(Errno::ENOTDIR);
        }
        if state.lookup(parent.0, name).is_some() {
            return Err(Errno::EEXIST);
        }
        let ino = state.add(parent.0, name, dir);
        let attr = self.attr(&state, ino).expect("just added");
        Ok((ino, attr))
    }

    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let mut state = self.state();
        let ino = state.lookup(parent.0, name).ok_or(Errno::ENOENT)?;
        match (state.nodes.get(&ino), dir) {
            (Some(Node::Dir(d)), true) if !d.entries.is_empty() => return Err(Errno::ENOTEMPTY),
            (Some(Node::Dir(_)), false) => return Err(Errno::EISDIR),
            (Some(Node::File(_)), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        state
            .dir_mut(parent.0)
            .expect("looked up in it")
            .entries
            .remove(name);
        Ok(())
    }
}

impl Filesystem for Fuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let state = self.state();
        match state.lookup(parent.0, name) {
            Some(ino) => self.entry(&state, ino, reply),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(&self.state(), ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.state();
        if let Some(size) = size {
            match state.file_mut(ino.0) {
                Some(f) => f.set_len(size as usize),
                None => return reply.error(Errno::EISDIR),
            }
        }
        match self.attr(&state, ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// Reserving blocks (the journal backs every page it grows by): memory has no blocks to
    /// run out of, so mode 0 only grows the file as `set_len` would (not durable before an
    /// fsync), and `FALLOC_FL_KEEP_SIZE` does nothing. Other modes (punching holes) are
    /// refused.
    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        const KEEP_SIZE: i32 = 1;
        let mut state = self.state();
        let Some(file) = state.file_mut(ino.0) else {
            return reply.error(Errno::EISDIR);
        };
        match mode {
            0 => {
                let end = offset.saturating_add(length) as usize;
                if end > file.len() {
                    file.set_len(end);
                }
                reply.ok()
            }
            KEEP_SIZE => reply.ok(),
            _ => reply.error(Errno::EOPNOTSUPP),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.add(parent, name, true) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.add(parent, name, false) {
            Ok((ino, attr)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(ino),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let Some(ino) = state.lookup(parent.0, name) else {
            return reply.error(Errno::ENOENT);
        };
        if state.dir(newparent.0).is_none() {
            return reply.error(Errno::ENOTDIR);
        }
        state
            .dir_mut(parent.0)
            .expect("looked up in it")
            .entries
            .remove(name);
        state
            .dir_mut(newparent.0)
            .expect("checked above")
            .entries
            .insert(newname.to_owned(), ino);
        if let Some(d) = state.dir_mut(ino) {
            d.parent = newparent.0;
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().nodes.get(&ino.0) {
            Some(Node::File(_)) => reply.opened(FileHandle(ino.0), FopenFlags::FOPEN_DIRECT_IO),
            Some(Node::Dir(_)) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut state = self.state();
        let Some(f) = state.file_mut(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let start = (offset as usize).min(f.data.len());
        let end = (start + size as usize).min(f.data.len());
        reply.data(&f.data[start..end]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        let Some(f) = state.file_mut(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        f.write(offset as usize, data);
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.state().file_mut(ino.0) {
            Some(f) => {
                f.sync();
                reply.ok();
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().nodes.get(&ino.0) {
            Some(Node::Dir(_)) => reply.opened(FileHandle(ino.0), FopenFlags::empty()),
            Some(Node::File(_)) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.state();
        let Some(dir) = state.dir(ino.0) else {
            return reply.error(Errno::ENOTDIR);
        };
        let mut entries: Vec<(u64, FileType, &OsStr)> = vec![
            (ino.0, FileType::Directory, OsStr::new(".")),
            (dir.parent, FileType::Directory, OsStr::new("..")),
        ];
        for (name, child) in &dir.entries {
            let kind = match state.nodes.get(child) {
                Some(Node::Dir(_)) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            entries.push((*child, kind, name.as_os_str()));
        }
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.state().dir_mut(ino.0) {
            Some(d) => {
                d.sync();
                reply.ok();
            }
            None => reply.error(Errno::ENOTDIR),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20, 4096, 255, 4096);
    }
}
