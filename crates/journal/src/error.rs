//! The journal's errors: [`JournalError`] is what callers see, each variant saying whether it
//! is retryable. Inside the module, redb's errors travel as [`Failure`] through `?` and are
//! turned into a `JournalError` once, where the file's path is known ([`Failure::at`]).

use std::path::{Path, PathBuf};

use super::record::FILE_FORMAT;

/// Errors of the journal. `StorageFull` and `Io` are operating conditions (retryable);
/// `Corrupted` and `Format` need an operator; `Closed` means the process is stopping.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// The disk, or the journal's size limit, is full. Retryable once space returns.
    #[error("journal storage is full: {0}")]
    StorageFull(String),
    /// Another I/O error. Retryable: the writer reopens the file before the next commit.
    #[error("journal I/O error: {0}")]
    Io(String),
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
            redb::Error::Io(io) => Self::from_io(&io),
            redb::Error::PreviousIo => {
                JournalError::Io("an earlier I/O error left the file to be reopened".into())
            }
            redb::Error::Corrupted(reason) => JournalError::Corrupted {
                path: path.to_owned(),
                reason,
            },
            redb::Error::DatabaseAlreadyOpen => JournalError::InUse {
                path: path.to_owned(),
            },
            other => JournalError::Io(other.to_string()),
        }
    }

    pub(super) fn from_io(io: &std::io::Error) -> Self {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        if io.kind() == std::io::ErrorKind::StorageFull
            || matches!(io.raw_os_error(), Some(ENOSPC | EDQUOT))
        {
            JournalError::StorageFull(io.to_string())
        } else {
            JournalError::Io(io.to_string())
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
