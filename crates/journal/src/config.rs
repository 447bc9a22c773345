//! The journal's validated settings (built from the configuration by the `sidelog` crate's `node.rs`).

/// How large and how old the dedup window may grow: one rule for the window in memory (the
/// publish path's) and the one the journal keeps. Each evicts its oldest entry while it would
/// still hold `count` ids without it, or that entry is older than `age_ms`. The journal's
/// entries are commits' runs of ids, so it keeps at least the ids the memory window keeps, and
/// a restart forgets none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupBounds {
    pub count: u64,
    pub age_ms: i64,
}

impl DedupBounds {
    /// Whether the oldest entry, recorded at `at_ms`, goes, with `left` ids staying without it.
    pub fn evicts(&self, left: u64, at_ms: i64, now_ms: i64) -> bool {
        left >= self.count || self.expired(at_ms, now_ms)
    }

    /// Whether an id recorded at `at_ms` is past the window's age.
    pub fn expired(&self, at_ms: i64, now_ms: i64) -> bool {
        at_ms < now_ms.saturating_sub(self.age_ms)
    }
}

/// Validated settings of the journal.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Records applied in one transaction at most.
    pub commit_max_records: usize,
    /// Longest a non-durable change waits for the next durable commit.
    pub sync_interval_ms: u64,
    /// Size of the redo log (`wal.rs`); 0: none, durable commits fsync the database.
    pub wal_bytes: u64,
    /// For this start only: a redo log that would refuse the open (another journal's, newer
    /// than the journal, damaged where it was durable) has its unusable frames discarded,
    /// counted in the log, instead (`serve --discard-wal`).
    pub discard_wal: bool,
    /// Seeds the journal's identity and the redo log's salts; `None`: the operating system's
    /// randomness (production). The simulator seeds it, so that its runs repeat.
    pub entropy_seed: Option<u64>,
    /// Message ids the dedup window keeps at most.
    pub dedup_window_count: u64,
    /// Age after which a message id leaves the dedup window.
    pub dedup_window_age_ms: i64,
    /// The journal file's size limit; writes past it fail as `StorageFull`.
    pub max_file_bytes: Option<u64>,
    /// Added to every fsync, to measure the modes as on a slow disk (benchmarks only).
    pub simulated_fsync_latency_us: u64,
    /// Where the writer runs.
    pub writer: WriterRuntime,
    /// A deliberate bug for the simulator's self-test: commits that must be durable are made
    /// without fsync, so acks can precede durability. Never set outside the simulator.
    #[doc(hidden)]
    pub bug_ack_before_fsync: bool,
    /// A deliberate bug for the simulator's self-test: a failed fsync is retried once and the
    /// retry trusted, though the failed writeback may have dropped the pages. Never set
    /// outside the simulator.
    #[doc(hidden)]
    pub bug_retry_failed_fsync: bool,
    /// A deliberate bug for the power-loss test: the file's fsync returns at once without
    /// syncing (see [`FileStore`](super::FileStore)). Never set outside that test.
    #[doc(hidden)]
    pub unsafe_skip_fsync: bool,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            commit_max_records: 8192,
            sync_interval_ms: 1000,
            wal_bytes: 32 << 20,
            discard_wal: false,
            entropy_seed: None,
            dedup_window_count: 100_000,
            dedup_window_age_ms: 3_600_000,
            max_file_bytes: None,
            simulated_fsync_latency_us: 0,
            writer: WriterRuntime::Thread,
            bug_ack_before_fsync: false,
            bug_retry_failed_fsync: false,
            unsafe_skip_fsync: false,
        }
    }
}

/// Where the journal's writer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterRuntime {
    /// Its own OS thread (production): redb's blocking calls never stall the runtime.
    Thread,
    /// A task on the current tokio runtime (the simulator): deterministic scheduling, and a
    /// crash (aborting the process's tasks) stops it like the rest.
    Task,
}

impl JournalConfig {
    /// The dedup window's bounds.
    pub fn dedup_bounds(&self) -> DedupBounds {
        DedupBounds {
            count: self.dedup_window_count,
            age_ms: self.dedup_window_age_ms,
        }
    }
}
