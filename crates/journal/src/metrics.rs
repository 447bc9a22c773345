//! The journal's metric names (the `sidelog` crate describes and serves them with the rest).

/// Journal commits, by durability: fsync or none.
pub const JOURNAL_COMMITS: &str = "sidelog_journal_commits_total";
/// Journal commits that failed, by cause: `full` (the disk or the size limit), `io`, `other`.
/// Each is followed by a reopen of the file.
pub const JOURNAL_COMMIT_FAILURES: &str = "sidelog_journal_commit_failures_total";
/// Records written to the journal (inputs, outputs, dead letters).
pub const JOURNAL_RECORDS: &str = "sidelog_journal_records_total";
/// Encoded bytes of the records written to the journal.
pub const JOURNAL_RECORD_BYTES: &str = "sidelog_journal_record_bytes_total";
/// Records per commit.
pub const JOURNAL_RECORDS_PER_COMMIT: &str = "sidelog_journal_records_per_commit";
/// Seconds a commit took, fsync included.
pub const JOURNAL_COMMIT_SECONDS: &str = "sidelog_journal_commit_seconds";
/// Seconds an fsync of the journal file took (part of a durable commit's time).
pub const JOURNAL_FSYNC_SECONDS: &str = "sidelog_journal_fsync_seconds";
/// Undelivered entries and bytes in the journal.
pub const BACKLOG_ENTRIES: &str = "sidelog_backlog_entries";
pub const BACKLOG_BYTES: &str = "sidelog_backlog_bytes";
/// Dead letters waiting for an operator (`sidelog inspect requeue` / `purge`).
pub const DEAD_LETTERS: &str = "sidelog_dead_letters";
