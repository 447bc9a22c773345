//! The filesystem's contents: every inode in two versions, as written and as durable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};

/// Granularity of dirty tracking: an fsync copies only the pages written since the last one.
const PAGE: usize = 4096;

pub(crate) const ROOT: u64 = 1;

/// What a power cut threw away (or what one would throw away now).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files whose data or size differed from their durable version.
    pub files: u64,
    /// Pages of file data that were written but not synced.
    pub pages: u64,
    /// Directories whose entries differed from their durable version.
    pub dirs: u64,
}

#[derive(Debug)]
pub(crate) struct File {
    pub data: Vec<u8>,
    durable: Vec<u8>,
    dirty: BTreeSet<usize>,
}

#[derive(Debug)]
pub(crate) struct Dir {
    pub entries: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
    pub parent: u64,
}

#[derive(Debug)]
pub(crate) enum Node {
    File(File),
    Dir(Dir),
}

#[derive(Debug)]
pub(crate) struct State {
    pub nodes: HashMap<u64, Node>,
    next_ino: u64,
}

impl Default for State {
    fn default() -> Self {
        let root = Dir {
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
            parent: ROOT,
        };
        State {
            nodes: HashMap::from([(ROOT, Node::Dir(root))]),
            next_ino: ROOT + 1,
        }
    }
}

impl File {
    /// Writes `data` at `offset`, growing the file (with zeros) as needed.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let end = offset + data.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[offset..end].copy_from_slice(data);
        if !data.is_empty() {
            self.dirty.extend(offset / PAGE..=(end - 1) / PAGE);
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn set_len(&mut self, len: usize) {
        if len > self.data.len() {
            self.dirty.extend(self.data.len() / PAGE..=len / PAGE);
        }
        self.data.resize(len, 0);
    }

    /// fsync: the data and the size as written become durable.
    pub fn sync(&mut self) {
        self.durable.resize(self.data.len(), 0);
        for page in std::mem::take(&mut self.dirty) {
            let start = page * PAGE;
            if start >= self.data.len() {
                continue;
            }
            let end = (start + PAGE).min(self.data.len());
            self.durable[start..end].copy_from_slice(&self.data[start..end]);
        }
    }

    fn is_synced(&self) -> bool {
        self.dirty.is_empty() && self.durable.len() == self.data.len()
    }
}

impl Dir {
    pub fn sync(&mut self) {
        self.durable.clone_from(&self.entries);
    }
}

impl State {
    fn next(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    pub fn dir(&self, ino: u64) -> Option<&Dir> {
        match self.nodes.get(&ino) {
            Some(Node::Dir(d)) => Some(d),
            _ => None,
        }
    }

    pub fn dir_mut(&mut self, ino: u64) -> Option<&mut Dir> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir(d)) => Some(d),
            _ => None,
        }
    }

    pub fn file_mut(&mut self, ino: u64) -> Option<&mut File> {
        match self.nodes.get_mut(&ino) {
            Some(Node::File(f)) => Some(f),
            _ => None,
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.dir(parent)?.entries.get(name).copied()
    }

    /// A new empty file or directory named `name` in `parent` (not yet durable there).
    pub fn add(&mut self, parent: u64, name: &OsStr, dir: bool) -> u64 {
        let ino = self.next();
        let node = if dir {
            Node::Dir(Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
                parent,
            })
        } else {
            Node::File(File {
                data: Vec::new(),
                durable: Vec::new(),
                dirty: BTreeSet::new(),
            })
        };
        self.nodes.insert(ino, node);
        self.dir_mut(parent)
            .expect("the caller checked the parent")
            .entries
            .insert(name.to_owned(), ino);
        ino
    }

    pub fn unsynced(&self) -> CutReport {
        let mut report = CutReport::default();
        for node in self.nodes.values() {
            match node {
                Node::File(f) if !f.is_synced() => {
                    report.files += 1;
                    report.pages += f.dirty.len() as u64;
                }
                Node::Dir(d) if d.entries != d.durable => report.dirs += 1,
                _ => {}
            }
        }
        report
    }

    pub fn power_cut(&mut self) -> CutReport {
        let report = self.unsynced();
        for node in self.nodes.values_mut() {
            match node {
                Node::File(f) => {
                    f.data.clone_from(&f.durable);
                    f.dirty.clear();
                }
                Node::Dir(d) => d.entries.clone_from(&d.durable),
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_keeps_synced_data_and_entries_and_drops_the_rest() {
        let mut s = State::default();
        let a = s.add(ROOT, OsStr::new("a"), false);
        s.file_mut(a).unwrap().write(0, b"hello");
        s.file_mut(a).unwrap().sync();
        s.dir_mut(ROOT).unwrap().sync();
        s.file_mut(a).unwrap().write(5000, b"world");
        let b = s.add(ROOT, OsStr::new("b"), false);
        s.file_mut(b).unwrap().write(0, b"lost");
        s.file_mut(b).unwrap().sync(); // data synced, but its entry is not
        let report = s.power_cut();
        assert_eq!(
            report,
            CutReport {
                files: 1,
                pages: 1,
                dirs: 1
            }
        );
        assert_eq!(s.lookup(ROOT, OsStr::new("a")), Some(a));
        assert_eq!(s.lookup(ROOT, OsStr::new("b")), None);
        assert_eq!(s.file_mut(a).unwrap().data, b"hello");
    }

    #[test]
    fn fsync_copies_only_dirty_pages_and_the_size() {
        let mut f = File {
            data: Vec::new(),
            durable: Vec::new(),
            dirty: BTreeSet::new(),
        };
        f.write(0, &[1; 10_000]);
        f.sync();
        f.set_len(100);
        f.write(50, &[2; 10]);
        f.sync();
        assert_eq!(f.durable.len(), 100);
        assert_eq!(
            &f.durable[48..62],
            &[1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1]
        );
        assert!(f.is_synced());
    }
}
