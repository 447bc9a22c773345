//! Exactly once into Kafka: one transactional producer per sidecar, and progress records.
//!
//! Every lane's batches go to one driver task, which runs one transaction at a time, as the
//! journal runs group commits: it begins a transaction, produces every batch that is waiting,
//! adds a progress record (the ids of the journaled messages in it, `progress.rs`) and commits.
//! Batches that arrive during a commit wait for the next transaction, so transactions grow
//! with the load. A batch is acked to its lane only once its transaction is committed; the
//! receipt it carries counts its marks into the position the journal stores ([`Tracker`]).
//!
//! At start the driver calls `init_transactions` with the sidecar's `transactional.id`, which
//! aborts whatever transaction the crashed process left open and fences any other producer
//! with that id, commits a start marker, and reads the progress partition back at
//! `read_committed` from the stored position to that marker: the ids it lists are what the
//! topic holds. A replayed message with one of them is acked without being sent again.
//!
//! Failures: a transaction that must abort is aborted; the batches with a record the broker
//! refuses get that refusal (dead letters), the others go into the next transaction, or, when
//! nothing was refused (broker down), back to their lanes to be retried with backoff. A commit
//! whose outcome is unknown (the coordinator does not answer) is asked again until it is
//! known: a batch is never in two transactions that could both commit. A producer fenced by
//! another sidecar halts delivery for this process and says so; another fatal error makes a
//! new producer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::progress::{self, Held, Record, Tracker};
use super::{KafkaSinkConfig, build_record, refused};
use crate::runtime::{Backoff, Entropy};
use crate::sink::{Batch, Receipt, SinkError};

/// Times the driver lets other tasks run before it gathers a transaction's batches.
const GATHER_YIELDS: usize = 8;

/// Where the progress records of this sidecar go and what the journal stored about them.
#[derive(Debug, Clone)]
pub(super) struct ProgressLog {
    pub topic: String,
    pub partition: i32,
    /// The journal's identity, in every record.
    pub identity: u64,
    /// Read back from here (the stored position, or the partition's start).
    pub from: Offset,
}

/// One batch waiting for a transaction.
struct Job {
    batch: Batch,
    reply: oneshot::Sender<Result<Receipt, SinkError>>,
    /// Its messages the topic holds already (indices), once looked up: a batch put back
    /// after an abort keeps them, since their copies were claimed.
    skip: Option<Vec<usize>>,
}

/// What the sink's handle and the driver share.
pub(super) struct Shared {
    pub tracker: Mutex<Tracker>,
    /// What the topic holds already, until the start's replay is over.
    held: Mutex<Option<Held>>,
    /// Why delivery halted (fenced), once it has.
    halted: Mutex<Option<String>>,
    /// Replayed messages acked without being sent (the topic held them).
    skipped: std::sync::atomic::AtomicU64,
}

/// The sink's side: queues batches for the driver.
#[derive(Clone)]
pub(super) struct Transactions {
    jobs: mpsc::UnboundedSender<Job>,
    shared: Arc<Shared>,
}

impl Transactions {
    /// Starts the driver. With `journal` (its identity and stored position) it writes and
    /// reads progress records; the progress topic is looked up (made if missing) when Kafka
    /// answers.
    pub fn start(
        producer: FutureProducer,
        config: Arc<KafkaSinkConfig>,
        journal: Option<crate::journal::DeliveryState>,
        timeout: Duration,
    ) -> Transactions {
        let client = config.client_config(timeout);
        let shared = Arc::new(Shared {
            tracker: Mutex::new(Tracker::new(0, 0, 0)),
            held: Mutex::new(None),
            halted: Mutex::new(None),
            skipped: Default::default(),
        });
        let (jobs, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            producer,
            config,
            client,
            journal,
            progress: None,
            shared: shared.clone(),
            timeout,
            next_txn: 0,
            waiting: VecDeque::new(),
            rx,
            backoff: Backoff {
                initial_ms: 100,
                max_ms: 5_000,
                max_attempts: 0,
            },
            entropy: Entropy::from_clock(&crate::runtime::SystemClock),
        };
        crate::runtime::spawn(driver.run());
        Transactions { jobs, shared }
    }

    /// Queues `batch` for the next transaction (in call order).
    pub fn deliver(
        &self,
        batch: Batch,
    ) -> crate::runtime::BoxFuture<'static, Result<Receipt, SinkError>> {
        let halted = self
            .shared
            .halted
            .lock()
            .expect("never held across a panic")
            .clone();
        if let Some(reason) = halted {
            return Box::pin(async move { Err(SinkError::halted(reason)) });
        }
        let (reply, answer) = oneshot::channel();
        let queued = self.jobs.send(Job {
            batch,
            reply,
            skip: None,
        });
        Box::pin(async move {
            queued.map_err(|_| SinkError::retry("the Kafka transaction driver has stopped"))?;
            answer.await.unwrap_or_else(|_| {
                Err(SinkError::retry("the Kafka transaction driver has stopped"))
            })
        })
    }

    /// The start's replay is over: what was held is not needed any more.
    pub fn replayed(&self) -> Option<crate::journal::DeliveryProgress> {
        let held = self
            .shared
            .held
            .lock()
            .expect("never held across a panic")
            .take();
        let skipped = self
            .shared
            .skipped
            .load(std::sync::atomic::Ordering::Relaxed);
        if let Some(held) = held.filter(|h| skipped > 0 || !h.is_empty()) {
            info!(
                skipped,
                unclaimed = held.len(),
                "replay over: replayed messages the topic held were acked without a copy; \
                 the progress records listed the unclaimed ones, marked in the journal already"
            );
        }
        self.shared
            .tracker
            .lock()
            .expect("never held across a panic")
            .replayed()
    }
}

/// How a commit ended.
enum Outcome {
    Committed,
    /// Aborted (or never begun): the batches may go into another transaction.
    Aborted(String),
    /// The producer cannot go on.
    Fatal(KafkaError),
}

struct Driver {
    producer: FutureProducer,
    config: Arc<KafkaSinkConfig>,
    client: ClientConfig,
    /// The journal's state, until the progress topic is looked up.
    journal: Option<crate::journal::DeliveryState>,
    progress: Option<ProgressLog>,
    shared: Arc<Shared>,
    timeout: Duration,
    next_txn: u64,
    /// Batches put back after an abort they did not cause, ahead of the queue.
    waiting: VecDeque<Job>,
    rx: mpsc::UnboundedReceiver<Job>,
    backoff: Backoff,
    entropy: Entropy,
}

/// A batch in the transaction under way: what was sent of it, and its delivery reports.
struct Sending {
    job: Job,
    reports: Vec<DeliveryFuture>,
    /// The error that stopped the sending of this batch, if one did.
    failed: Option<SinkError>,
}

impl Sending {
    /// Waits for the delivery report of each of its records; a record the broker did not take
    /// fails the batch (a refusal is kept over a later transient failure).
    async fn await_reports(&mut self) {
        for report in self.reports.drain(..) {
            let failure = match report.await {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) if refused(&e) => {
                    SinkError::refused(format!("Kafka refuses a message: {e}"))
                }
                Ok(Err((e, _))) => SinkError::retry(format!("Kafka did not take a message: {e}")),
                Err(_) => SinkError::retry("the Kafka producer dropped a delivery report"),
            };
            if !self.failed.as_ref().is_some_and(|f| f.refused) {
                self.failed = Some(failure);
            }
        }
    }
}

/// The offset of the transaction's progress record once the broker took it; if it did not,
/// the last batch fails (the transaction is aborted and retried).
async fn progress_taken(report: DeliveryFuture, batches: &mut [Sending]) -> Option<u64> {
    let reason = match report.await {
        Ok(Ok(delivery)) => return Some(delivery.offset as u64),
        Ok(Err((e, _))) => e.to_string(),
        Err(_) => "its delivery report was dropped".into(),
    };
    if let Some(last) = batches.last_mut() {
        last.failed.get_or_insert(SinkError::retry(format!(
            "Kafka did not take the progress record: {reason}"
        )));
    }
    None
}

/// Whether `e` says another producer has taken this `transactional.id`.
fn fenced(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
        )
    )
}

fn is_fatal(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_fatal())
}

fn is_retriable(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_retriable())
}

impl Driver {
    async fn run(mut self) {
        if !self.start().await {
            return;
        }
        loop {
            let first = match self.waiting.pop_front() {
                Some(job) => job,
                None => match self.rx.recv().await {
                    Some(job) => job,
                    None => break,
                },
            };
            let mut jobs = vec![first];
            jobs.extend(self.waiting.drain(..));
            // The lanes acked by the last commit send their next batches at once: let them
            // run before the transaction is begun, so that it takes all of them, not the
            // first one alone (one transaction per batch cost a third of the throughput).
            for _ in 0..GATHER_YIELDS {
                tokio::task::yield_now().await;
            }
            while let Ok(job) = self.rx.try_recv() {
                jobs.push(job);
            }
            let (gone, live): (Vec<Job>, Vec<Job>) =
                jobs.into_iter().partition(|j| j.reply.is_closed());
            for job in gone {
                self.refuse(job, SinkError::retry("nobody waits for it"));
            }
            let jobs = live;
            if !self.transaction(jobs).await {
                return;
            }
        }
        // Every handle is gone: nothing more to send. An open transaction does not exist here.
    }

    /// Runs a blocking producer call off the runtime's threads.
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&FutureProducer) -> T + Send + 'static,
    ) -> T {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || call(&producer))
            .await
            .expect("a producer call does not panic")
    }

    /// `init_transactions` until the cluster answers, then (with progress records) the start
    /// marker and the read-back. `false`: delivery has halted.
    async fn start(&mut self) -> bool {
        let mut attempt = 1;
        loop {
            if let Some(journal) = self.journal {
                match super::progress_log(&self.config, Some(journal)).await {
                    Ok((progress, tracker)) => {
                        self.progress = progress;
                        self.journal = None;
                        let mut t = self
                            .shared
                            .tracker
                            .lock()
                            .expect("never held across a panic");
                        let replayed = t.is_replayed();
                        *t = tracker;
                        if replayed {
                            // The replay had nothing to do; the floor comes with the marker.
                            let _ = t.replayed();
                        }
                    }
                    Err(e) => {
                        self.down(
                            &format!("cannot set up the Kafka progress records: {e}"),
                            attempt,
                        )
                        .await;
                        attempt += 1;
                        continue;
                    }
                }
            }
            let timeout = self.timeout.max(Duration::from_secs(10));
            match self.blocking(move |p| p.init_transactions(timeout)).await {
                Ok(()) => {}
                Err(e) if fenced(&e) => return self.halt(&e),
                Err(e) => {
                    self.down(
                        &format!("cannot start a Kafka transaction producer: {e}"),
                        attempt,
                    )
                    .await;
                    attempt += 1;
                    if is_fatal(&e) {
                        self.renew();
                    }
                    continue;
                }
            }
            let Some(log) = self.progress.clone() else {
                return true;
            };
            match self.read_back(&log).await {
                Ok(()) => return true,
                Err(Some(e)) if fenced(&e) => return self.halt(&e),
                Err(e) => {
                    let reason = e
                        .as_ref()
                        .map_or_else(|| "aborted".to_string(), |e| e.to_string());
                    self.down(
                        &format!("cannot read the progress records back: {reason}"),
                        attempt,
                    )
                    .await;
                    attempt += 1;
                    if e.as_ref().is_some_and(is_fatal) {
                        self.renew();
                    }
                }
            }
        }
    }

    /// Commits this start's marker, then reads the progress partition up to it.
    async fn read_back(&mut self, log: &ProgressLog) -> Result<(), Option<KafkaError>> {
        let nonce = self.entropy.next_u64();
        let marker = progress::encode_start(log.identity, &self.config.topic, nonce);
        self.producer.begin_transaction().map_err(Some)?;
        let report = self
            .producer
            .send_result(
                FutureRecord::to(&log.topic)
                    .partition(log.partition)
                    .key(self.config.transactional_id.as_bytes())
                    .payload(&marker),
            )
            .map_err(|(e, _)| Some(e))?;
        match self.commit().await {
            Outcome::Committed => {}
            Outcome::Aborted(_) => return Err(None),
            Outcome::Fatal(e) => return Err(Some(e)),
        }
        let offset = match report.await {
            Ok(Ok(delivery)) => delivery.offset,
            Ok(Err((e, _))) => return Err(Some(e)),
            Err(_) => return Err(None),
        };
        let client = self.config.admin_config();
        let topic = self.config.topic.clone();
        let log = log.clone();
        let read = tokio::task::spawn_blocking(move || read_progress(&client, &log, &topic, nonce))
            .await
            .expect("the read-back does not panic");
        let held = read.map_err(Some)?;
        info!(
            messages = held.len(),
            marker = offset,
            "read the Kafka progress records back; the replay skips what the topic holds"
        );
        *self.shared.held.lock().expect("never held across a panic") = Some(held);
        self.shared
            .tracker
            .lock()
            .expect("never held across a panic")
            .started(offset as u64);
        Ok(())
    }

    /// Commits the open transaction, asking again while its outcome is unknown; aborts it when
    /// it must be.
    async fn commit(&mut self) -> Outcome {
        let mut attempt = 1;
        loop {
            let timeout = self.timeout;
            match self.blocking(move |p| p.commit_transaction(timeout)).await {
                Ok(()) => return Outcome::Committed,
                Err(e) if is_fatal(&e) => return Outcome::Fatal(e),
                Err(e) if is_retriable(&e) => {
                    self.down(
                        &format!("Kafka transaction commit not confirmed: {e}"),
                        attempt,
                    )
                    .await;
                    attempt += 1;
                }
                Err(e) => return self.abort(e.to_string()).await,
            }
        }
    }

    /// Aborts the open transaction (asking again while the coordinator does not answer).
    async fn abort(&mut self, reason: String) -> Outcome {
        let mut attempt = 1;
        loop {
            let timeout = self.timeout;
            match self.blocking(move |p| p.abort_transaction(timeout)).await {
                Ok(()) => return Outcome::Aborted(reason),
                Err(e) if is_fatal(&e) => return Outcome::Fatal(e),
                Err(e) => {
                    self.down(
                        &format!("Kafka transaction abort not confirmed: {e}"),
                        attempt,
                    )
                    .await;
                    attempt += 1;
                }
            }
        }
    }

    /// Looks up which messages of `job` the topic holds already (once per job).
    fn examine(&self, job: &mut Job) {
        if job.skip.is_some() {
            return;
        }
        let mut skip = Vec::new();
        let mut held = self.shared.held.lock().expect("never held across a panic");
        if let (Some(held), Some(_)) = (held.as_mut(), &self.progress) {
            let batch = &job.batch;
            for (i, (m, seq)) in batch.messages.iter().zip(batch.seqs.iter()).enumerate() {
                // Only journaled messages are listed, and only they are replayed.
                if seq.is_some() && held.take(progress::id_hash(&m.id)) {
                    skip.push(i);
                }
            }
        }
        self.shared
            .skipped
            .fetch_add(skip.len() as u64, std::sync::atomic::Ordering::Relaxed);
        job.skip = Some(skip);
    }

    /// Answers `job` with an error: the copies it claimed go back, for the retry to claim.
    fn refuse(&self, job: Job, error: SinkError) {
        if let Some(skip) = &job.skip {
            let mut held = self.shared.held.lock().expect("never held across a panic");
            if let Some(held) = held.as_mut() {
                let ids: Vec<u128> = skip
                    .iter()
                    .map(|&i| progress::id_hash(&job.batch.messages[i].id))
                    .collect();
                held.add(&ids);
                self.shared
                    .skipped
                    .fetch_sub(ids.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        drop(job.reply.send(Err(error)));
    }

    /// One transaction over `jobs`. `false`: delivery has halted.
    async fn transaction(&mut self, jobs: Vec<Job>) -> bool {
        let mut queue = self.not_held(jobs);
        if queue.is_empty() {
            return true;
        }
        let started = tokio::time::Instant::now();
        if let Err(e) = self.producer.begin_transaction() {
            return self.fail_all(queue.into(), Vec::new(), e).await;
        }
        let mut batches: Vec<Sending> = Vec::with_capacity(queue.len());
        let mut delivered_ids = Vec::new();
        while let Some(job) = queue.pop_front() {
            let mut s = Sending {
                job,
                reports: Vec::new(),
                failed: None,
            };
            self.produce(&mut s, &mut delivered_ids).await;
            let stop = s.failed.is_some();
            batches.push(s);
            if stop {
                // Not reached: into the next transaction, after those this one puts back.
                self.waiting.extend(queue.drain(..));
                break;
            }
        }
        let progress_report = self.queue_progress(&delivered_ids, &mut batches);
        let produced = started.elapsed();
        // Every record acked before the commit is asked for: rdkafka's commit_transaction
        // first flushes by polling in 100 ms steps while the producer's own thread takes the
        // delivery reports, so a commit with records in flight waited ~100 ms, most of each
        // transaction. A record the broker did not take fails its batch here.
        for b in &mut batches {
            b.await_reports().await;
        }
        let progress_offset = match progress_report {
            Some(report) => progress_taken(report, &mut batches).await,
            None => None,
        };
        let acked = started.elapsed();
        let any_failed = batches.iter().any(|b| b.failed.is_some());
        let outcome = if any_failed {
            self.abort("a record was not taken".into()).await
        } else {
            self.commit().await
        };
        debug!(
            batches = batches.len(),
            records = delivered_ids.len(),
            produce_us = produced.as_micros() as u64,
            acked_us = (acked - produced).as_micros() as u64,
            commit_us = (started.elapsed() - acked).as_micros() as u64,
            "Kafka transaction"
        );
        match outcome {
            Outcome::Committed => {
                self.committed(batches, progress_offset);
                true
            }
            Outcome::Aborted(reason) => {
                self.aborted(batches, reason);
                true
            }
            Outcome::Fatal(e) => self.fail_all(Vec::new(), batches, e).await,
        }
    }

    /// The jobs whose records are not all in the topic already; the others are answered here.
    fn not_held(&mut self, jobs: Vec<Job>) -> VecDeque<Job> {
        let mut queue = VecDeque::with_capacity(jobs.len());
        for mut job in jobs {
            self.examine(&mut job);
            if job
                .skip
                .as_ref()
                .is_some_and(|s| s.len() == job.batch.len())
            {
                // All of it is in the topic already.
                drop(job.reply.send(Ok(Receipt::none())));
            } else {
                queue.push_back(job);
            }
        }
        queue
    }

    /// Queues the progress record of the journaled ids this transaction delivers (if the sink
    /// keeps progress records and there are any); a record that cannot be queued fails the
    /// last batch.
    fn queue_progress(&self, ids: &[u128], batches: &mut [Sending]) -> Option<DeliveryFuture> {
        let log = self.progress.as_ref().filter(|_| !ids.is_empty())?;
        let value = progress::encode_delivered(log.identity, &self.config.topic, ids);
        match self.producer.send_result(
            FutureRecord::to(&log.topic)
                .partition(log.partition)
                .key(self.config.transactional_id.as_bytes())
                .payload(&value),
        ) {
            Ok(report) => Some(report),
            Err((e, _)) => {
                if let Some(last) = batches.last_mut() {
                    last.failed.get_or_insert(SinkError::retry(format!(
                        "cannot queue the progress record: {e}"
                    )));
                }
                None
            }
        }
    }

    /// Produces the records of `s` but those the topic holds, adding the ids of journaled ones
    /// to `ids`; stops at the first that cannot be queued, saying why in `s.failed`.
    async fn produce(&self, s: &mut Sending, ids: &mut Vec<u128>) {
        let batch = &s.job.batch;
        let no_skip = Vec::new();
        let mut skip = s.job.skip.as_ref().unwrap_or(&no_skip).iter().peekable();
        for (i, (m, seq)) in batch.messages.iter().zip(batch.seqs.iter()).enumerate() {
            if skip.peek() == Some(&&i) {
                skip.next();
                continue;
            }
            if seq.is_some() && self.progress.is_some() {
                ids.push(progress::id_hash(&m.id));
            }
            let mut record = build_record(&self.config.topic, m, *seq);
            let report = loop {
                match self.producer.send_result(record) {
                    Ok(report) => break report,
                    Err((e, back))
                        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                    {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        s.failed = Some(if refused(&e) {
                            SinkError::refused(format!("Kafka refuses message {}: {e}", m.id))
                        } else {
                            SinkError::retry(format!(
                                "cannot queue message {} for Kafka: {e}",
                                m.id
                            ))
                        });
                        return;
                    }
                }
            };
            s.reports.push(report);
        }
    }

    fn committed(&mut self, batches: Vec<Sending>, offset: Option<u64>) {
        metrics::gauge!(crate::metrics::SINK_UP).set(1.0);
        let txn = self.next_txn;
        self.next_txn += 1;
        if let Some(offset) = offset {
            self.shared
                .tracker
                .lock()
                .expect("never held across a panic")
                .committed(txn, batches.len(), offset);
        }
        for b in batches {
            let shared = self.shared.clone();
            let receipt = match offset {
                Some(_) => Receipt::new(move || {
                    shared
                        .tracker
                        .lock()
                        .expect("never held across a panic")
                        .marked(txn)
                }),
                None => Receipt::none(),
            };
            drop(b.job.reply.send(Ok(receipt)));
        }
    }

    /// The transaction was aborted: a batch with a refused record gets the refusal; when one
    /// did, the others go into the next transaction, else they go back to their lanes.
    fn aborted(&mut self, batches: Vec<Sending>, reason: String) {
        let verdicts: Vec<(Job, Option<SinkError>)> =
            batches.into_iter().map(|b| (b.job, b.failed)).collect();
        let someone_refused = verdicts
            .iter()
            .any(|(_, v)| v.as_ref().is_some_and(|v| v.refused));
        for (job, verdict) in verdicts.into_iter().rev() {
            match verdict {
                Some(v) if v.refused => self.refuse(job, v),
                _ if someone_refused => self.waiting.push_front(job),
                Some(v) => self.refuse(job, v),
                None => self.refuse(
                    job,
                    SinkError::retry(format!("Kafka transaction aborted: {reason}")),
                ),
            }
        }
        metrics::gauge!(crate::metrics::SINK_UP).set(if someone_refused { 1.0 } else { 0.0 });
    }

    /// A fatal producer error: fenced halts; anything else makes a new producer, and every
    /// batch goes back to its lane.
    async fn fail_all(&mut self, jobs: Vec<Job>, batches: Vec<Sending>, e: KafkaError) -> bool {
        // A batch put back earlier in this transaction goes back to its lane too.
        let jobs: Vec<Job> = jobs.into_iter().chain(self.waiting.drain(..)).collect();
        let all = jobs.into_iter().chain(batches.into_iter().map(|b| b.job));
        if fenced(&e) {
            let reason = self.halt_reason(&e);
            for job in all {
                drop(job.reply.send(Err(SinkError::halted(reason.clone()))));
            }
            return self.halt(&e);
        }
        for job in all {
            self.refuse(job, SinkError::retry(format!("Kafka producer failed: {e}")));
        }
        if is_fatal(&e) {
            error!(error = %e, "the Kafka producer failed for good; making a new one");
            self.renew();
            return self.start().await;
        }
        // Not in a transaction after all (a failed begin): abort whatever librdkafka holds.
        let _ = self.abort(e.to_string()).await;
        true
    }

    fn halt_reason(&self, e: &KafkaError) -> String {
        format!(
            "another producer with transactional id {:?} has taken over ({e}); this sidecar \
             stops delivering to Kafka: its backlog stays in the journal until it is restarted \
             with a transactional id of its own",
            self.config.transactional_id
        )
    }

    /// Halts delivery for this process: said once, loudly. Always `false`.
    fn halt(&mut self, e: &KafkaError) -> bool {
        let reason = self.halt_reason(e);
        error!("{reason}");
        metrics::gauge!(crate::metrics::SINK_UP).set(0.0);
        *self
            .shared
            .halted
            .lock()
            .expect("never held across a panic") = Some(reason.clone());
        // Batches still queued learn it too.
        while let Ok(job) = self.rx.try_recv() {
            drop(job.reply.send(Err(SinkError::halted(reason.clone()))));
        }
        for job in self.waiting.drain(..) {
            drop(job.reply.send(Err(SinkError::halted(reason.clone()))));
        }
        let shared = self.shared.clone();
        let mut rx = std::mem::replace(&mut self.rx, mpsc::unbounded_channel().1);
        crate::runtime::spawn(async move {
            while let Some(job) = rx.recv().await {
                let reason = shared
                    .halted
                    .lock()
                    .expect("never held across a panic")
                    .clone()
                    .unwrap_or_default();
                drop(job.reply.send(Err(SinkError::halted(reason))));
            }
        });
        false
    }

    /// A new producer in place of one that failed fatally.
    fn renew(&mut self) {
        match self.client.create::<FutureProducer>() {
            Ok(producer) => self.producer = producer,
            Err(e) => {
                error!(error = %e, "cannot make a new Kafka producer; retrying with the old one")
            }
        }
    }

    /// Says the cluster is not answering (at most once per 10 s), and waits before the next try.
    async fn down(&self, reason: &str, attempt: u32) {
        metrics::gauge!(crate::metrics::SINK_UP).set(0.0);
        if attempt == 1 || attempt.is_multiple_of(20) {
            warn!(attempt, "{reason}; retrying");
        }
        tokio::time::sleep(self.backoff.delay(attempt, &self.entropy)).await;
    }
}

/// Reads the progress partition from `log.from` up to this start's marker (`nonce`), at
/// `read_committed`, gathering the ids of this journal's messages in `topic`. `client`: the
/// brokers and how to reach them.
fn read_progress(
    client: &ClientConfig,
    log: &ProgressLog,
    topic: &str,
    nonce: u64,
) -> Result<Held, KafkaError> {
    let mut c = client.clone();
    let consumer: BaseConsumer = c
        .set("group.id", "sidelog-progress-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&log.topic, log.partition, log.from)?;
    consumer.assign(&assignment)?;
    let mut held = Held::default();
    let started = tokio::time::Instant::now();
    let mut said = tokio::time::Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => match m.payload().and_then(progress::decode) {
                Some(Record::Start {
                    identity, nonce: n, ..
                }) if identity == log.identity && n == nonce => return Ok(held),
                Some(Record::Delivered {
                    identity,
                    topic: t,
                    ids,
                }) if identity == log.identity && t == topic => held.add(&ids),
                _ => {}
            },
            Some(Err(e)) => warn!(error = %e, "reading the progress records back"),
            None => {}
        }
        if said.elapsed() >= Duration::from_secs(5) {
            said = tokio::time::Instant::now();
            info!(
                seconds = started.elapsed().as_secs(),
                held = held.len(),
                "still reading the Kafka progress records back (a transaction of another producer may hold the partition until it ends)"
            );
        }
    }
}
