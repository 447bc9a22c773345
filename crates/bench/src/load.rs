//! The producers: closed loop, open loop (a fixed schedule, latency from the intended send
//! time) or streaming, against a sidelog or a JetStream subject.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use sidelog::proto::ingest_client::IngestClient;
use sidelog::proto::{Message, PublishRequest, ack};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use super::harness::histogram;
use super::{BenchArgs, OPEN_LOOP_IN_FLIGHT, SENT_HEADER, STREAM_WINDOW, mqtt, nats};

/// What one load phase measured.
pub(super) struct Load {
    pub ack: Histogram<u64>,
    /// Open loop: how late each request started after its intended send time, µs (empty in
    /// a closed loop).
    pub late: Histogram<u64>,
    pub acked: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Load {
    /// Says how late an open loop's requests started. Its acks are timed from each request's
    /// intended send time (against coordinated omission), so the producers' own lateness (the
    /// pacer's wake-up, a task per request, two shared cores) is inside them.
    pub fn report_lateness(&self, label: &str) {
        if !self.late.is_empty() {
            eprintln!(
                "bench: {label}: open loop: requests started {} µs (p50), {} µs (p99) after \
                 their intended times; the ack latencies include it",
                self.late.value_at_quantile(0.5),
                self.late.value_at_quantile(0.99)
            );
        }
    }
}

/// Where the producers send.
pub(super) enum Target {
    /// A sidelog `Ingest` service.
    Sidelog(SocketAddr),
    /// A JetStream subject (each producer opens its own connection).
    Nats { addr: String, subject: String },
    /// A Kafka topic (each producer has its own producer).
    Kafka { bootstrap: String, topic: String },
    /// A sidelog HTTP door (`POST /v1/publish`).
    Http(SocketAddr),
    /// MQTT devices publishing to a broker sidelog subscribes to.
    Mqtt(mqtt::Devices),
    /// sidelog's OTLP logs service, on its gRPC listener.
    Otlp(SocketAddr),
    /// A sidelog forward door.
    Forward(SocketAddr),
}

/// Runs the producers against `target` for `duration` (or until `messages` are sent).
/// Producer ids start at `first_id`, so phases never reuse a message id.
pub(super) async fn load(
    args: &BenchArgs,
    target: &Target,
    label: &str,
    base: Instant,
    first_id: usize,
    duration: Option<Duration>,
    messages: u64,
) -> anyhow::Result<Load> {
    let ack = Arc::new(Mutex::new(histogram()));
    let late = Arc::new(Mutex::new(histogram()));
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let budget = Arc::new(AtomicU64::new(messages));
    let started = Instant::now();
    let deadline = started + duration.unwrap_or(Duration::from_secs(3600));
    let mut tasks = Vec::new();
    let label: Arc<str> = label.into();
    let pacer = args.rate.map(|_| Pacer::start());
    for p in 0..args.producers {
        let ctx = Producer {
            id: first_id + p,
            label: label.clone(),
            base,
            size: args.size,
            batch: args.batch,
            deadline,
            budget: budget.clone(),
            ack: ack.clone(),
            late: late.clone(),
            acked: acked.clone(),
            errors: errors.clone(),
            pacer: pacer.clone(),
        };
        let per_producer = args
            .rate
            .map(|rate| (rate as f64 / args.producers as f64).max(1e-3));
        tasks.push(spawn_producer(ctx, target, args, per_producer).await?);
    }
    for t in tasks {
        t.await.context("a producer failed")?;
    }
    let elapsed = started.elapsed();
    let ack = ack.lock().expect("never held across a panic").clone();
    let late = late.lock().expect("never held across a panic").clone();
    Ok(Load {
        ack,
        late,
        acked: acked.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
    })
}

/// Starts one producer against `target`: closed loop, or open at `rate` msgs/s.
async fn spawn_producer(
    ctx: Producer,
    target: &Target,
    args: &BenchArgs,
    rate: Option<f64>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    Ok(match target {
        Target::Sidelog(listen) => {
            let channel = Endpoint::from_shared(format!("http://{listen}"))?
                .tcp_nodelay(true)
                .connect()
                .await
                .context("connecting a producer")?;
            if args.stream && rate.is_none() {
                tokio::spawn(ctx.stream(channel))
            } else {
                paced(ctx, IngestClient::new(channel), rate)
            }
        }
        Target::Http(addr) => {
            anyhow::ensure!(!args.stream, "--stream is gRPC's: not with --door http");
            paced(ctx, HttpPublisher::new(*addr), rate)
        }
        Target::Otlp(listen) => {
            anyhow::ensure!(
                !args.stream,
                "--stream is sidelog's API: not with --door otlp"
            );
            let channel = Endpoint::from_shared(format!("http://{listen}"))?
                .tcp_nodelay(true)
                .connect()
                .await
                .context("connecting an OTLP exporter")?;
            paced(ctx, super::doors::OtlpPublisher::new(channel), rate)
        }
        Target::Forward(addr) => {
            anyhow::ensure!(
                !args.stream,
                "--stream is sidelog's API: not with --door forward"
            );
            paced(ctx, super::doors::ForwardPublisher::new(*addr), rate)
        }
        Target::Mqtt(devices) => {
            anyhow::ensure!(
                !args.stream && args.rate.is_none(),
                "--stream and --rate are not with --door mqtt (devices publish through the \
                 broker, each waiting for its PUBACKs)"
            );
            let publisher = mqtt::Publisher::connect(devices, &ctx.label, ctx.id).await?;
            tokio::spawn(ctx.closed_loop(publisher))
        }
        Target::Kafka { bootstrap, topic } => paced(
            ctx,
            super::kafka::Publisher::connect(bootstrap, topic)?,
            rate,
        ),
        Target::Nats { addr, subject } => {
            paced(ctx, nats::Publisher::connect(addr, subject).await?, rate)
        }
    })
}

/// A producer's task: open loop at `rate` msgs/s, or closed loop without one.
fn paced(ctx: Producer, publisher: impl Send1, rate: Option<f64>) -> tokio::task::JoinHandle<()> {
    match rate {
        Some(rate) => tokio::spawn(ctx.open_loop(publisher, rate)),
        None => tokio::spawn(ctx.closed_loop(publisher)),
    }
}

/// One producer's share of the workload.
/// One way to send a request of messages and wait for its acks: sidelog's unary `Publish`, or
/// a JetStream publish-with-ack of each message.
pub(super) trait Send1: Clone + Send + Sync + 'static {
    /// Sends `messages`; returns how many were acknowledged (the rest count as errors), or an
    /// error if none were.
    fn send(
        &mut self,
        messages: Vec<Message>,
    ) -> impl std::future::Future<Output = Result<usize, ()>> + Send;
}

impl Send1 for IngestClient<Channel> {
    async fn send(&mut self, messages: Vec<Message>) -> Result<usize, ()> {
        let acks = self
            .publish(PublishRequest { messages })
            .await
            .map_err(|_| ())?
            .into_inner()
            .acks;
        Ok(acks.iter().filter(|a| is_ok(a)).count())
    }
}

/// A producer on the HTTP door: the proto3 JSON of a `PublishRequest` per request, as a
/// browser or a script sends it; the acks read from the JSON answer.
#[derive(Clone)]
pub(super) struct HttpPublisher {
    client: reqwest::Client,
    url: String,
}

impl HttpPublisher {
    fn new(addr: SocketAddr) -> Self {
        HttpPublisher {
            client: reqwest::Client::new(),
            url: format!("http://{addr}/v1/publish"),
        }
    }
}

impl Send1 for HttpPublisher {
    async fn send(&mut self, messages: Vec<Message>) -> Result<usize, ()> {
        use base64::Engine as _;
        let messages: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id,
                    "key": m.key,
                    "payload": base64::engine::general_purpose::STANDARD.encode(&m.payload),
                    "headers": m.headers,
                })
            })
            .collect();
        let body = serde_json::json!({ "messages": messages }).to_string();
        let answer = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|_| ())?;
        if !answer.status().is_success() {
            return Err(());
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&answer.bytes().await.map_err(|_| ())?).map_err(|_| ())?;
        let acks = answer["acks"].as_array().ok_or(())?;
        Ok(acks
            .iter()
            .filter(|a| a["status"] == "ACCEPTED" || a["status"] == "DUPLICATE")
            .count())
    }
}

fn is_ok(a: &sidelog::proto::Ack) -> bool {
    a.status == ack::Status::Accepted as i32 || a.status == ack::Status::Duplicate as i32
}

pub(super) struct Producer {
    id: usize,
    label: Arc<str>,
    base: Instant,
    size: usize,
    batch: usize,
    deadline: Instant,
    budget: Arc<AtomicU64>,
    ack: Arc<Mutex<Histogram<u64>>>,
    /// Open loop: how late each request started after its intended send time, µs.
    late: Arc<Mutex<Histogram<u64>>>,
    acked: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    /// Open loop: wakes the producer at each intended send time.
    pacer: Option<Arc<Pacer>>,
}

impl Producer {
    /// Takes up to `batch` messages from the budget; 0 once the run is over.
    fn take(&self) -> usize {
        if Instant::now() >= self.deadline {
            return 0;
        }
        let want = self.batch as u64;
        let mut left = self.budget.load(Ordering::Relaxed);
        loop {
            let n = want.min(left);
            if n == 0 {
                return 0;
            }
            match self
                .budget
                .compare_exchange(left, left - n, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return n as usize,
                Err(now) => left = now,
            }
        }
    }

    fn messages(&self, seq: &mut u64, n: usize, payload: &bytes::Bytes) -> Vec<Message> {
        let sent = self.base.elapsed().as_micros().to_string();
        (0..n)
            .map(|_| {
                *seq += 1;
                let mut headers = BTreeMap::new();
                headers.insert(SENT_HEADER.to_owned(), sent.clone());
                Message {
                    id: format!("{}-{}-{}", self.label, self.id, seq),
                    key: format!("k{}", *seq % 64),
                    payload: payload.clone(),
                    headers,
                    event_time_ms: 0,
                }
            })
            .collect()
    }

    /// Records one answered request of `n` messages, `ok` of them acknowledged.
    fn record(&self, latency: Duration, n: usize, ok: usize) {
        self.ack
            .lock()
            .expect("never held across a panic")
            .saturating_record_n(latency.as_micros().max(1) as u64, n as u64);
        self.acked.fetch_add(ok as u64, Ordering::Relaxed);
        self.errors
            .fetch_add(n.saturating_sub(ok) as u64, Ordering::Relaxed);
    }

    async fn closed_loop(self, mut client: impl Send1) {
        let payload = bytes::Bytes::from(vec![b'x'; self.size]);
        let mut seq = 0;
        loop {
            let n = self.take();
            if n == 0 {
                break;
            }
            let messages = self.messages(&mut seq, n, &payload);
            let t0 = Instant::now();
            match client.send(messages).await {
                Ok(ok) => self.record(t0.elapsed(), n, ok),
                Err(_) => {
                    self.errors.fetch_add(n as u64, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn stream(self, channel: Channel) {
        let mut client = IngestClient::new(channel);
        let payload = bytes::Bytes::from(vec![b'x'; self.size]);
        let (req_tx, req_rx) = tokio::sync::mpsc::channel(STREAM_WINDOW);
        let (sent_tx, mut sent_rx) = tokio::sync::mpsc::channel::<(Instant, usize)>(STREAM_WINDOW);
        let mut responses = match client
            .publish_stream(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let this = Arc::new(self);
        let sender = {
            let this = this.clone();
            tokio::spawn(async move {
                let mut seq = 0;
                loop {
                    let n = this.take();
                    if n == 0 {
                        break;
                    }
                    let request = PublishRequest {
                        messages: this.messages(&mut seq, n, &payload),
                    };
                    // The window: a slot in `sent` before the request goes out.
                    if sent_tx.send((Instant::now(), n)).await.is_err()
                        || req_tx.send(request).await.is_err()
                    {
                        break;
                    }
                }
            })
        };
        while let Some((t0, n)) = sent_rx.recv().await {
            match responses.message().await {
                Ok(Some(r)) => {
                    this.record(t0.elapsed(), n, r.acks.iter().filter(|a| is_ok(a)).count())
                }
                _ => {
                    this.errors.fetch_add(n as u64, Ordering::Relaxed);
                    break;
                }
            }
        }
        let _ = sender.await;
    }

    async fn open_loop(self, client: impl Send1, msgs_per_s: f64) {
        let payload = bytes::Bytes::from(vec![b'x'; self.size]);
        let interval = Duration::from_secs_f64(self.batch as f64 / msgs_per_s);
        let permits = Arc::new(tokio::sync::Semaphore::new(OPEN_LOOP_IN_FLIGHT));
        let this = Arc::new(self);
        let start = Instant::now();
        let mut seq = 0;
        let mut k: u32 = 0;
        let mut in_flight = Vec::new();
        loop {
            let intended = start + interval * k;
            k += 1;
            match &this.pacer {
                Some(pacer) => pacer.until(intended).await,
                None => tokio::time::sleep_until(intended).await,
            }
            let n = this.take();
            if n == 0 {
                break;
            }
            let messages = this.messages(&mut seq, n, &payload);
            let permit = permits.clone().acquire_owned().await.expect("never closed");
            let (this, mut client) = (this.clone(), client.clone());
            in_flight.push(tokio::spawn(async move {
                this.late
                    .lock()
                    .expect("never held across a panic")
                    .saturating_record(intended.elapsed().as_micros() as u64);
                match client.send(messages).await {
                    // From the intended send time: a late send is latency too.
                    Ok(ok) => this.record(intended.elapsed(), n, ok),
                    Err(_) => {
                        this.errors.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
                drop(permit);
            }));
            in_flight.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
        }
        for t in in_flight {
            let _ = t.await;
        }
    }
}

/// Wakes open-loop producers at their intended send times from a thread of its own. Tokio's
/// timer fires on 1 ms ticks: with it every request started up to 1 ms late (0.7–0.8 ms at
/// p50), and that lateness is inside the ack latencies the open loop reports. A thread
/// sleeping on the system's high-resolution timer wakes within tens of microseconds.
pub(super) struct Pacer {
    wakes: std::sync::mpsc::Sender<(Instant, tokio::sync::oneshot::Sender<()>)>,
}

impl Pacer {
    /// Starts the pacing thread; it ends once every handle is dropped.
    fn start() -> Arc<Pacer> {
        use std::sync::mpsc::RecvTimeoutError;
        type Wake = (Instant, tokio::sync::oneshot::Sender<()>);
        let (wakes, rx) = std::sync::mpsc::channel::<Wake>();
        std::thread::Builder::new()
            .name("bench-pacer".into())
            .spawn(move || {
                // Whom to wake, by (when, arrival order).
                let mut due = std::collections::BTreeMap::new();
                let mut arrivals: u64 = 0;
                loop {
                    let now = Instant::now();
                    while let Some(entry) = due.first_entry() {
                        let &(at, _) = entry.key();
                        if at > now {
                            break;
                        }
                        let tx: tokio::sync::oneshot::Sender<()> = entry.remove();
                        let _ = tx.send(());
                    }
                    let received = match due.keys().next() {
                        Some(&(at, _)) => rx.recv_timeout(at - now),
                        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    };
                    match received {
                        Ok((at, tx)) => {
                            due.insert((at, arrivals), tx);
                            arrivals += 1;
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .expect("the bench can start a thread");
        Arc::new(Pacer { wakes })
    }

    /// Returns at `at`, or at once if that has passed.
    async fn until(&self, at: Instant) {
        if at <= Instant::now() {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.wakes.send((at, tx)).is_err() {
            return tokio::time::sleep_until(at).await;
        }
        let _ = rx.await;
    }
}
