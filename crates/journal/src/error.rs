//! The journal's errors: [`JournalError`] is what callers see, each variant saying whether it
//! is retryable. Inside the module, redb's errors travel as [`Failure`] through `?` and are
//! turned into a `JournalError` once, where the file's path is known ([`Failure::at`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record::FILE_FORMAT;

/// Errors of the journal. `StorageFull` and `Io` are operating conditions (retryable);
/// `Corrupted` and `Format` need an operator; `Closed` means the process is stopping.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// The disk, or the journal's size limit, is full. Retryable once space returns.
    #[error("journal storage is full: {0}")]
    StorageFull(IoFailure),
    /// Another I/O error. Retryable: the writer reopens the file before the next commit.
    #[error("journal I/O error: {0}")]
    Io(IoFailure),
    /// The file is damaged. Not retryable: an operator must restore or move it.
    #[error("journal {path} is damaged: {reason}")]
    Corrupted { path: PathBuf, reason: String },
    /// The file was written by an incompatible version. Not retryable.
    #[error("journal {path} has format {found}, this sidelog reads format {FILE_FORMAT}")]
    Format { path: PathBuf, found: u64 },
    /// A record could not be decoded: a bug or damage. Not retryable.
    #[error("journal record {table}/{key} cannot be decoded: {reason}")]
    Decode {
        table: &'static str,
        key: u64,
        reason: String,
    },
    /// The writer has stopped. Not retryable in this process.
    #[error("journal is closed")]
    Closed,
    /// The redo log beside the journal cannot be applied to it (another journal's, newer than
    /// it, or damaged where it was durable). Not retryable: an operator must decide.
    #[error("the redo log {path} is not applied: {reason}")]
    WalRefused { path: PathBuf, reason: String },
    /// Another process (a running sidelog) has the file open.
    #[error("journal {path} is in use by another process (a running sidelog)")]
    InUse { path: PathBuf },
}

impl JournalError {
    pub(super) fn from_redb(err: impl Into<redb::Error>, path: &Path) -> Self {
        match err.into() {
            // A read past the end: the file is shorter than its own pages say.
            redb::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                JournalError::Corrupted {
                    path: path.to_owned(),
                    reason: format!("the file ends early, it was truncated ({io})"),
                }
            }
            redb::Error::Io(io) => Self::from_io(io),
            redb::Error::PreviousIo => JournalError::Io(IoFailure::new(
                "an earlier I/O error left the file to be reopened",
            )),
            redb::Error::Corrupted(reason) => JournalError::Corrupted {
                path: path.to_owned(),
                reason,
            },
            redb::Error::DatabaseAlreadyOpen => JournalError::InUse {
                path: path.to_owned(),
            },
            other => JournalError::Io(IoFailure::new(other.to_string())),
        }
    }

    /// The operating system's error `io`, as it is.
    pub(super) fn from_io(io: std::io::Error) -> Self {
        Self::io("", io)
    }

    /// The operating system's error `io`, met while doing `what` ("cannot create the data
    /// directory x"): `StorageFull` for a full disk or quota, else `Io`.
    pub fn io(what: impl Into<String>, io: std::io::Error) -> Self {
        let full = disk_full(&io);
        let failure = IoFailure {
            what: what.into(),
            os: Some(Arc::new(io)),
            advice: None,
        };
        if full {
            JournalError::StorageFull(failure)
        } else {
            JournalError::Io(failure)
        }
    }

    /// The operating system's error behind an I/O failure, when there is one: its
    /// [`kind`](std::io::Error::kind) and OS error number, not only its text.
    pub fn os_error(&self) -> Option<&std::io::Error> {
        match self {
            JournalError::StorageFull(f) | JournalError::Io(f) => f.os.as_deref(),
            _ => None,
        }
    }

    /// Whether the disk (or the journal's size limit) is full.
    pub fn is_full(&self) -> bool {
        matches!(self, JournalError::StorageFull(_))
    }

    /// Whether the same operation may succeed later in this process.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            JournalError::StorageFull(_) | JournalError::Io(_) | JournalError::InUse { .. }
        )
    }
}

pub type Result<T, E = JournalError> = std::result::Result<T, E>;

/// Whether `io` says the disk (or a quota) is full.
pub(super) fn disk_full(io: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    io.kind() == std::io::ErrorKind::StorageFull
        || matches!(io.raw_os_error(), Some(ENOSPC | EDQUOT))
}

/// An I/O failure: what the journal was doing, and the operating system's error when one
/// caused it (kept as it is, shared: the writer answers every command of a failed commit with
/// the same error). Shown as "what: OS error; advice"; its `Debug` is that text, quoted, as
/// the `String` it replaces was (the simulator's traces, and their hashes, print it).
#[derive(Clone)]
pub struct IoFailure {
    what: String,
    os: Option<Arc<std::io::Error>>,
    advice: Option<&'static str>,
}

impl IoFailure {
    /// A failure with no operating system error behind it (a timeout, a full size limit).
    pub fn new(what: impl Into<String>) -> IoFailure {
        IoFailure {
            what: what.into(),
            os: None,
            advice: None,
        }
    }

    /// The same failure with what the operator can do about it after the error.
    pub(super) fn advising(self, advice: &'static str) -> IoFailure {
        IoFailure {
            advice: Some(advice),
            ..self
        }
    }
}

impl std::fmt::Debug for IoFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.to_string(), f)
    }
}

impl std::fmt::Display for IoFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.os, self.what.is_empty()) {
            (Some(os), true) => write!(f, "{os}")?,
            (Some(os), false) => write!(f, "{}: {os}", self.what)?,
            (None, _) => f.write_str(&self.what)?,
        }
        match self.advice {
            Some(advice) => write!(f, "; {advice}"),
            None => Ok(()),
        }
    }
}

/// The OS error is part of the message (see `Display`), so the chain goes on from its own
/// source.
impl std::error::Error for IoFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.os.as_deref().and_then(std::error::Error::source)
    }
}

/// An error inside the journal before it is given the file's path: redb's, or one of ours
/// (a record that does not decode). Every redb error type converts into it, so the writer's
/// code uses `?` and converts once at its boundary.
#[derive(Debug)]
pub(super) enum Failure {
    Redb(redb::Error),
    Journal(JournalError),
}

impl Failure {
    /// The error callers see, naming `path` where the cause is the file itself.
    pub(super) fn at(self, path: &Path) -> JournalError {
        match self {
            Failure::Redb(e) => JournalError::from_redb(e, path),
            Failure::Journal(e) => e,
        }
    }
}

impl From<JournalError> for Failure {
    fn from(e: JournalError) -> Self {
        Failure::Journal(e)
    }
}

/// redb has one error type per operation; each converts into `redb::Error`.
macro_rules! from_redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Self {
                Failure::Redb(e.into())
            }
        }
    )*};
}
from_redb_errors!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError
);

#[cfg(test)]
mod tests {
    use super::JournalError;
    use std::io::{Error, ErrorKind};

    #[test]
    fn an_io_error_keeps_the_os_error_and_says_what_was_done() {
        const ENOSPC: i32 = 28;
        let e = JournalError::io("cannot open x", Error::from_raw_os_error(ENOSPC));
        assert!(e.is_full() && e.is_retryable());
        assert_eq!(e.os_error().and_then(Error::raw_os_error), Some(ENOSPC));
        assert!(
            e.to_string()
                .starts_with("journal storage is full: cannot open x: "),
            "{e}"
        );
        let e = JournalError::io("", Error::from(ErrorKind::PermissionDenied));
        assert_eq!(
            e.os_error().map(Error::kind),
            Some(ErrorKind::PermissionDenied)
        );
        assert!(!e.is_full());
        assert!(JournalError::Closed.os_error().is_none());
    }
}
