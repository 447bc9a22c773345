//! Filesystem steps that state their durability.

use std::io;
use std::path::Path;

/// Creates `dir` and any missing parents, and makes each new entry durable: the directory
/// holding a created directory is fsynced after it, so a power loss right after cannot take
/// the new directory (and the journal inside it) away. What existed is left alone.
pub fn create_dir_all_durably(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        create_dir_all_durably(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        // Another process made it meanwhile: its creator syncs it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_dir(parent.unwrap_or(Path::new(".")))
}

/// fsync of a directory: what was created, renamed or removed in it becomes durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_missing_levels_and_leaves_existing_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        create_dir_all_durably(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all_durably(&deep).unwrap();
        std::fs::write(tmp.path().join("file"), b"x").unwrap();
        assert!(create_dir_all_durably(&tmp.path().join("file/sub")).is_err());
    }
}
