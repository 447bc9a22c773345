//! One assembly: a running sidelog built from a validated [`Config`] and a journal store.
//!
//! `serve` (on the real filesystem), the simulator (on its simulated disk) and the benchmarks
//! (through `serve`) all build sidelog here, in one order:
//!
//! 1. [`Node::open`]: open the journal and read back its dedup window;
//! 2. [`Opened::assemble`]: build the dedup window, the handler runner, delivery and the
//!    publish pipeline around it (the pipeline starts closed: `UNAVAILABLE`);
//! 3. [`Node::replay`]: replay what the journal holds (or let it run beside traffic);
//! 4. `pipeline.set_serving(true)`: take traffic.
//!
//! Between 1 and 2 a caller may look at what the journal recovered (the simulator checks that
//! every ack it saw before the crash is there).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::delivery::{Completion, Delivery, DeliveryConfig};
use crate::journal::{DedupRecord, Journal, JournalConfig, JournalError, JournalStore};
use crate::pipeline::{
    DedupWindow, Handler, HandlerRunner, Limits, OutputIds, PassThrough, Pipeline, ReplayOptions,
    ReplayStats,
};
use crate::runtime::{Entropy, SharedClock};
use crate::sink::Sink;

/// A journal just opened, with the dedup window it recovered: step 1 of the assembly.
pub struct Opened {
    journal: Journal,
    recovered: Vec<DedupRecord>,
}

/// A sidelog assembled around its journal: the pipeline (closed until told to serve) and the
/// delivery lanes behind it.
pub struct Node {
    pub journal: Journal,
    pub pipeline: Arc<Pipeline>,
    pub lanes: Vec<tokio::task::JoinHandle<()>>,
}

/// The next hops a node talks to.
pub struct Hops {
    /// The ingest server's handler; `None` is pass-through (each input is its own output).
    pub handler: Option<Arc<dyn Handler>>,
    pub sink: Arc<dyn Sink>,
}

impl Node {
    /// Opens the journal in `store` (the real file: [`FileStore`](crate::journal::FileStore)) and reads back its dedup
    /// window.
    pub async fn open(
        store: Box<dyn JournalStore>,
        path: PathBuf,
        journal: JournalConfig,
        clock: SharedClock,
    ) -> Result<Opened, JournalError> {
        let journal = Journal::open_storage(store, path, journal, clock)?;
        let recovered = journal.load_dedup().await?;
        Ok(Opened { journal, recovered })
    }

    /// Replays what the journal holds through the pipeline (see `pipeline/recovery.rs`).
    pub async fn replay(&self, options: &ReplayOptions) -> Result<ReplayStats, JournalError> {
        crate::pipeline::replay(&self.pipeline, options).await
    }
}

impl Opened {
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The dedup window as the journal held it.
    pub fn recovered(&self) -> &[DedupRecord] {
        &self.recovered
    }

    /// Builds the pipeline of `config` around the journal and the given hops.
    pub fn assemble(
        self,
        config: &Config,
        hops: Hops,
        clock: SharedClock,
        entropy: Entropy,
    ) -> Node {
        let dedup = DedupWindow::new(
            config.dedup.window_count,
            config.dedup.window_age_ms as i64,
            clock.clone(),
        );
        dedup.load(self.recovered);
        let (handler, ids): (Arc<dyn Handler>, OutputIds) = match hops.handler {
            Some(handler) => (handler, OutputIds::Derived),
            None => (Arc::new(PassThrough), OutputIds::Kept),
        };
        let runner = Arc::new(
            HandlerRunner::new(
                handler,
                ids,
                config.handling.concurrency as usize,
                Duration::from_millis(config.handling.timeout_ms),
                config.handler_backoff(),
                entropy.clone(),
            )
            .watched(crate::runtime::Outage::new(
                "handler",
                Some(self.journal.backlog().clone()),
                clock.clone(),
            )),
        );
        let completion = Completion::new(self.journal.clone());
        let sink_outage = Arc::new(crate::runtime::Outage::new(
            "sink",
            Some(self.journal.backlog().clone()),
            clock.clone(),
        ));
        let (delivery, lanes) = Delivery::start(
            hops.sink,
            completion.clone(),
            delivery_config(config, clock.clone(), sink_outage),
            entropy.clone(),
        );
        let pipeline = Pipeline::new(crate::pipeline::Parts {
            mode: config.mode,
            journal: self.journal.clone(),
            dedup,
            handler: runner,
            delivery,
            completion,
            limits: limits(config),
            clock,
            entropy,
        });
        if let Some(ranges) = self.journal.take_ambiguous_ranges() {
            crate::runtime::spawn(crate::pipeline::replay_ambiguous(pipeline.clone(), ranges));
        }
        Node {
            journal: self.journal,
            pipeline,
            lanes,
        }
    }
}

/// The journal settings of `config`.
pub fn journal_config(config: &Config) -> JournalConfig {
    JournalConfig {
        commit_max_records: config.journal.commit_max_records as usize,
        sync_interval_ms: config.journal.sync_interval_ms,
        dedup_window_count: config.dedup.window_count,
        dedup_window_age_ms: config.dedup.window_age_ms as i64,
        max_file_bytes: (config.limits.max_journal_bytes != 0)
            .then_some(config.limits.max_journal_bytes),
        simulated_fsync_latency_us: config.journal.simulated_fsync_latency_us,
        wal_bytes: config.journal.wal_bytes,
        ..JournalConfig::default()
    }
}

/// The intake limits of `config`.
fn limits(config: &Config) -> Limits {
    let l = &config.limits;
    Limits {
        max_message_bytes: l.max_message_bytes as usize,
        max_messages_per_request: l.max_messages_per_request as usize,
        max_id_bytes: l.max_id_bytes as usize,
        max_key_bytes: l.max_key_bytes as usize,
        max_headers: l.max_headers as usize,
        max_header_bytes: l.max_header_bytes as usize,
        max_backlog_bytes: l.max_backlog_bytes,
    }
}

/// The delivery settings of `config`.
/// The replay of `config`: `replay.max_age_ms`, and with the `interleave` policy a pace of
/// `replay.interleave_in_flight` entries under way.
pub fn replay_options(config: &Config) -> ReplayOptions {
    let interleave = config.replay.policy == crate::config::ReplayPolicy::Interleave;
    ReplayOptions {
        max_age_ms: config.replay.max_age_ms,
        pace: interleave
            .then(|| crate::pipeline::Pace::new(config.replay.interleave_in_flight as usize)),
    }
}

fn delivery_config(
    config: &Config,
    clock: SharedClock,
    outage: Arc<crate::runtime::Outage>,
) -> DeliveryConfig {
    DeliveryConfig {
        lanes: config.delivery.lanes as usize,
        lane_queue: (config.delivery.batch_max_messages as usize * 2).max(64),
        batch_max_messages: config.delivery.batch_max_messages as usize,
        batch_max_bytes: config.delivery.batch_max_bytes as usize,
        linger_ms: config.delivery.linger_ms,
        timeout_ms: config.delivery.timeout_ms,
        backoff: config.delivery_backoff(),
        max_age_ms: config.replay.max_age_ms,
        clock,
        outage,
    }
}
