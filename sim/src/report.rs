//! What a run found: the faults it injected, by kind, and the checkers' verdicts.

use sidelog::LoggingMode;

use crate::settings::SimConfig;

/// Faults injected, by kind.
#[derive(Debug, Default, Clone)]
pub struct FaultCounts {
    pub crashes: u64,
    pub torn_crashes: u64,
    pub hop_outages: u64,
    /// Hop outages longer than the retry budget used to be (15-35 s).
    pub long_outages: u64,
    pub slow_periods: u64,
    pub failing_periods: u64,
    pub partitions: u64,
    pub disk_full_periods: u64,
    pub dropped_requests: u64,
    pub dropped_responses: u64,
    pub duplicated_requests: u64,
    pub disk_write_errors: u64,
    pub disk_sync_errors: u64,
    pub disk_full_errors: u64,
}

impl FaultCounts {
    /// Every kind, by name.
    pub fn kinds(&self) -> [(&'static str, u64); 14] {
        [
            ("crashes", self.crashes),
            ("torn_crashes", self.torn_crashes),
            ("hop_outages", self.hop_outages),
            ("long_outages", self.long_outages),
            ("slow_periods", self.slow_periods),
            ("failing_periods", self.failing_periods),
            ("partitions", self.partitions),
            ("disk_full_periods", self.disk_full_periods),
            ("dropped_requests", self.dropped_requests),
            ("dropped_responses", self.dropped_responses),
            ("duplicated_requests", self.duplicated_requests),
            ("disk_write_errors", self.disk_write_errors),
            ("disk_sync_errors", self.disk_sync_errors),
            ("disk_full_errors", self.disk_full_errors),
        ]
    }

    /// Adds another run's counts.
    pub fn add(&mut self, o: &FaultCounts) {
        self.crashes += o.crashes;
        self.torn_crashes += o.torn_crashes;
        self.hop_outages += o.hop_outages;
        self.long_outages += o.long_outages;
        self.slow_periods += o.slow_periods;
        self.failing_periods += o.failing_periods;
        self.partitions += o.partitions;
        self.disk_full_periods += o.disk_full_periods;
        self.dropped_requests += o.dropped_requests;
        self.dropped_responses += o.dropped_responses;
        self.duplicated_requests += o.duplicated_requests;
        self.disk_write_errors += o.disk_write_errors;
        self.disk_sync_errors += o.disk_sync_errors;
        self.disk_full_errors += o.disk_full_errors;
    }

    pub fn total(&self) -> u64 {
        self.crashes
            + self.hop_outages
            + self.slow_periods
            + self.failing_periods
            + self.partitions
            + self.disk_full_periods
            + self.dropped_requests
            + self.dropped_responses
            + self.duplicated_requests
            + self.disk_write_errors
            + self.disk_sync_errors
            + self.disk_full_errors
    }
}

/// Behaviours a run exercised beyond the faults: the configurations some seeds run with, seen
/// to do something.
#[derive(Debug, Default, Clone)]
pub struct Coverage {
    /// Starts with a backlog replayed beside fresh traffic (`replay.policy = interleave`).
    pub interleaved_replays: u64,
    /// Dead letters for staying undelivered longer than `replay.max_age_ms`.
    pub expired_dead_letters: u64,
    /// Ids accepted a second time after the dedup window (300 ids on some seeds) let them go.
    pub reaccepted_ids: u64,
    /// Starts whose `journal.wal_bytes` differs from the start before (after a crash).
    pub wal_bytes_changes: u64,
    /// Starts on a new journal beside the old one's redo log, refused.
    pub foreign_logs_refused: u64,
    /// Starts on a redo log damaged where an fsync had covered it, refused.
    pub damaged_logs_refused: u64,
    /// Clean stops whose record the next start reads (it skips the rewrite-through).
    pub clean_stops: u64,
}

impl Coverage {
    pub fn kinds(&self) -> [(&'static str, u64); 7] {
        [
            ("interleaved_replays", self.interleaved_replays),
            ("expired_dead_letters", self.expired_dead_letters),
            ("reaccepted_ids", self.reaccepted_ids),
            ("wal_bytes_changes", self.wal_bytes_changes),
            ("foreign_logs_refused", self.foreign_logs_refused),
            ("damaged_logs_refused", self.damaged_logs_refused),
            ("clean_stops", self.clean_stops),
        ]
    }

    pub fn add(&mut self, o: &Coverage) {
        self.interleaved_replays += o.interleaved_replays;
        self.expired_dead_letters += o.expired_dead_letters;
        self.reaccepted_ids += o.reaccepted_ids;
        self.wal_bytes_changes += o.wal_bytes_changes;
        self.foreign_logs_refused += o.foreign_logs_refused;
        self.damaged_logs_refused += o.damaged_logs_refused;
        self.clean_stops += o.clean_stops;
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub config: SimConfig,
    pub inputs_acked: usize,
    pub acks: u64,
    pub restarts: u64,
    pub faults: FaultCounts,
    pub coverage: Coverage,
    pub sink_messages: usize,
    pub sink_duplicates: usize,
    pub dead_letters: usize,
    /// Outputs of acknowledged inputs that never reached the sink (nor the dead letters).
    pub losses: Vec<String>,
    /// Broken promises other than loss (phantoms, acks without durability, no drain).
    pub violations: Vec<String>,
    pub trace_hash: u64,
    pub trace_tail: Vec<String>,
    pub virtual_ms: u64,
}

impl Report {
    /// Whether the run kept every promise of its mode (mode none promises nothing on loss).
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
            && (self.losses.is_empty() || self.config.mode == LoggingMode::None)
    }
}
