//! What one run is: its seed, its mode, its size, and a deliberate bug to plant.

use sidelog::{LoggingMode, ReplayPolicy};

/// A deliberate bug, to show that the checkers catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The journal acks durable writes without fsync.
    AckBeforeFsync,
    /// The journal retries a failed fsync once and trusts the retry.
    RetryFailedFsync,
    /// sidelog takes traffic on start without replaying its journal.
    SkipReplay,
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub mode: LoggingMode,
    pub messages: usize,
    pub producers: usize,
    pub batch_max: usize,
    pub crashes: usize,
    /// Multiplies every fault rate; 0 turns faults but crashes off.
    pub fault_scale: f64,
    /// The chance that one fsync of the journal fails (before `fault_scale`).
    pub sync_error_rate: f64,
    pub bug: Option<Bug>,
    /// No handler: each input is its own output (sidelog's default). Without the flag, a
    /// quarter of the seeds run this way.
    pub pass_through: bool,
    /// How a start replays: a third of the seeds `interleave` (traffic at once, the backlog
    /// paced beside it), the rest `first`.
    pub replay_policy: ReplayPolicy,
    /// `replay.max_age_ms` (0: none): a quarter of the seeds dead-letter what stayed
    /// undelivered for 5 virtual seconds.
    pub replay_max_age_ms: u64,
    /// `dedup.window_count`: a fifth of the seeds keep only 300 ids, so that ids are evicted
    /// while their producers may still retry them; the others keep every id of the run.
    pub dedup_window_count: u64,
    /// `handling.max_attempts` and `delivery.max_attempts`: 0 (no limit, the default) on two
    /// thirds of the seeds, so that an outage of any length dead-letters nothing; 8 on the
    /// others, an operator's limit.
    pub max_attempts: u64,
    /// `journal.wal_bytes`: a sixth of the seeds run without the redo log (every durable
    /// commit fsyncs the database); the others with a small one (96 KiB), so that a full log
    /// brings checkpoints often.
    pub wal_bytes: u64,
}

impl SimConfig {
    pub fn new(seed: u64, mode: LoggingMode) -> SimConfig {
        SimConfig {
            seed,
            mode,
            messages: 1000,
            producers: 4,
            batch_max: 20,
            crashes: 10,
            fault_scale: 1.0,
            sync_error_rate: 0.005,
            bug: None,
            pass_through: seed.is_multiple_of(4),
            replay_policy: if seed % 3 == 1 {
                ReplayPolicy::Interleave
            } else {
                ReplayPolicy::First
            },
            replay_max_age_ms: if seed % 4 == 2 { 5_000 } else { 0 },
            dedup_window_count: if seed % 5 == 3 { 300 } else { 10_000_000 },
            wal_bytes: if seed % 6 == 5 { 0 } else { 96 << 10 },
            max_attempts: if seed % 3 == 2 { 8 } else { 0 },
        }
    }

    /// The command that repeats this run.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "cargo run -p sidelog-sim --release -- --mode {} --seed {} --messages {} --producers {} --crashes {} --fault-scale {}",
            self.mode, self.seed, self.messages, self.producers, self.crashes, self.fault_scale
        );
        if self.pass_through {
            cmd.push_str(" --pass-through");
        }
        match self.bug {
            Some(Bug::AckBeforeFsync) => cmd.push_str(" --bug ack-before-fsync"),
            Some(Bug::RetryFailedFsync) => cmd.push_str(" --bug retry-failed-fsync"),
            Some(Bug::SkipReplay) => cmd.push_str(" --bug skip-replay"),
            None => {}
        }
        cmd
    }
}
