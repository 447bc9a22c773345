//! Shared harness of the integration tests: the real `sidelog` binary as a child process, and
//! in-process gRPC servers for the handler and the sink that a test can stop, restart on the
//! same port, slow down or make fail.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sidelog::proto::handler_server::{Handler, HandlerServer};
use sidelog::proto::ingest_client::IngestClient;
use sidelog::proto::sink_server::{Sink, SinkServer};
use sidelog::proto::{
    DeliverRequest, DeliverResponse, HandleRequest, HandleResponse, Message, PublishRequest, ack,
};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

/// A free loopback port (bound, read, released; the test reuses it across restarts).
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local addr")
}

/// A gRPC server of the test that can be stopped and started again on the same address.
pub struct Restartable {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Restartable {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

async fn serve_on(addr: SocketAddr, routes: tonic::service::Routes) -> Restartable {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // The port may still be held for a moment by the previous server: retry the bind.
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        let _ = Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            })
            .await;
    });
    Restartable {
        addr,
        stop: Some(stop_tx),
        task: Some(task),
    }
}

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub id: String,
    pub payload: Vec<u8>,
    pub seq: Option<u64>,
    pub at: Instant,
}

/// A `Sink` that records what it receives.
#[derive(Clone, Default)]
pub struct TestSink {
    pub arrivals: Arc<Mutex<Vec<Arrival>>>,
    /// Milliseconds each Deliver takes before it answers.
    pub delay_ms: Arc<AtomicU64>,
    /// When set, Deliver answers UNAVAILABLE and records nothing.
    pub failing: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl Sink for TestSink {
    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.failing.load(Ordering::Relaxed) {
            return Err(Status::unavailable("test sink is failing"));
        }
        let now = Instant::now();
        let mut arrivals = self.arrivals.lock().unwrap();
        for m in request.into_inner().messages {
            arrivals.push(Arrival {
                seq: m.headers.get("sidelog-seq").and_then(|s| s.parse().ok()),
                id: m.id,
                payload: m.payload.to_vec(),
                at: now,
            });
        }
        Ok(Response::new(DeliverResponse {}))
    }
}

impl TestSink {
    pub async fn start(&self, addr: SocketAddr) -> Restartable {
        serve_on(
            addr,
            tonic::service::Routes::new(
                SinkServer::new(self.clone()).max_decoding_message_size(usize::MAX),
            ),
        )
        .await
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().unwrap().clone()
    }

    pub fn ids(&self) -> HashSet<String> {
        self.arrivals
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.id.clone())
            .collect()
    }
}

/// The outputs the test handler makes of an input: 0, 1, 2 or 3 of them, decided by the id,
/// so the test can predict them; payload `<input payload>#<i>`.
pub fn expected_outputs(id: &str, payload: &[u8]) -> Vec<(String, Vec<u8>)> {
    let n = id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % 4;
    (0..n)
        .map(|i| {
            let mut p = payload.to_vec();
            p.extend(format!("#{i}").bytes());
            (format!("{id}/{i}"), p)
        })
        .collect()
}

/// A deterministic `Handler`: see [`expected_outputs`].
#[derive(Clone, Default)]
pub struct TestHandler {
    pub calls: Arc<AtomicU64>,
    pub failing: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl Handler for TestHandler {
    async fn handle(
        &self,
        request: Request<HandleRequest>,
    ) -> Result<Response<HandleResponse>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.failing.load(Ordering::Relaxed) {
            return Err(Status::unavailable("test handler is failing"));
        }
        let m = request.into_inner().message.unwrap_or_default();
        if m.id.contains("poison") {
            return Err(Status::invalid_argument("test handler refuses poison"));
        }
        let outputs = expected_outputs(&m.id, &m.payload)
            .into_iter()
            .map(|(_, payload)| Message {
                // sidelog overwrites the id; a wrong one here proves it does.
                id: "set-by-sidelog".into(),
                payload: payload.into(),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(HandleResponse { outputs }))
    }
}

impl TestHandler {
    pub async fn start(&self, addr: SocketAddr) -> Restartable {
        serve_on(
            addr,
            tonic::service::Routes::new(HandlerServer::new(self.clone())),
        )
        .await
    }
}

/// The real `sidelog serve`, as a child process.
pub struct Sidelog {
    pub addr: SocketAddr,
    /// The admin service's address (`inspect --admin`).
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    envs: Vec<(String, String)>,
    pub starts: u32,
}

impl Sidelog {
    pub fn new(data_dir: &Path, args: &[&str]) -> Sidelog {
        Sidelog {
            addr: free_port(),
            admin: free_port(),
            data_dir: data_dir.to_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
            log: data_dir.with_extension("log"),
            envs: Vec::new(),
            starts: 0,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts the process; does not wait for it to serve.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the process log");
        let child = Command::new(env!("CARGO_BIN_EXE_sidelog"))
            .arg("serve")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--admin-listen")
            .arg(self.admin.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sidelog");
        self.child = Some(child);
    }

    /// Writes the process's log to `path` instead of beside the data directory.
    pub fn with_log(mut self, path: PathBuf) -> Sidelog {
        self.log = path;
        self
    }

    /// An environment variable for every start.
    pub fn with_env(mut self, name: &str, value: &str) -> Sidelog {
        self.envs.push((name.to_owned(), value.to_owned()));
        self
    }

    /// More flags for the next start.
    pub fn add_args(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(|s| s.to_string()));
    }

    /// Runs `sidelog inspect` against this process's admin service; its stdout, or the
    /// stderr of a failure as `Err`.
    pub async fn inspect(&self, args: &[&str]) -> Result<String, String> {
        inspect(&[&["--admin", &format!("http://{}", self.admin)][..], args].concat()).await
    }

    /// Starts the process and waits until it is serving (replay done).
    pub async fn start(&mut self) {
        self.spawn();
        self.wait_serving(Duration::from_secs(60)).await;
    }

    pub async fn wait_serving(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.health().await == Some(true) {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "sidelog exited with {status} before serving; log:\n{}",
                        self.log_tail()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "sidelog did not serve in time; log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `Some(true)` when health says SERVING, `Some(false)` when it answers otherwise, `None`
    /// when nothing answers.
    pub async fn health(&self) -> Option<bool> {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let channel = Channel::from_shared(self.url())
            .unwrap()
            .connect_timeout(Duration::from_millis(200))
            .connect()
            .await
            .ok()?;
        let r = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        Some(r.into_inner().status == 1)
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("SIGKILL sidelog");
            let _ = child.wait().await;
        }
    }

    /// SIGTERM and wait for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit().await
    }

    /// Sends a signal by name (TERM, INT, ...) without waiting.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id().expect("pid");
        // std has no kill(2); `kill` is in every base system.
        let ok = std::process::Command::new("kill")
            .args(["-s", name, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -s {name} {pid}");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        child.wait().await.expect("wait")
    }

    /// The whole process log (every start appends to it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub async fn client(&self) -> IngestClient<Channel> {
        let channel = Channel::from_shared(self.url())
            .unwrap()
            .connect_timeout(Duration::from_millis(500))
            .connect_lazy();
        IngestClient::new(channel)
    }
}

/// What producers learned from their acks.
#[derive(Debug, Default)]
pub struct ProducerLog {
    /// id → payload, for every message acked ACCEPTED or DUPLICATE.
    pub acked: BTreeMap<String, Vec<u8>>,
    /// Every id ever sent, with its payload.
    pub sent: HashMap<String, Vec<u8>>,
    pub errors: u64,
}

/// Publishes `count` messages as `producers` concurrent producers, `batch` per request, each
/// retrying a batch with the same ids until it is acked, as a real client does.
pub async fn produce(
    url: String,
    run: String,
    producers: usize,
    count: usize,
    batch: usize,
    pause: Duration,
) -> ProducerLog {
    let log = Arc::new(Mutex::new(ProducerLog::default()));
    let mut tasks = Vec::new();
    for p in 0..producers {
        let (url, log, run) = (url.clone(), log.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            let channel = Channel::from_shared(url)
                .unwrap()
                .connect_timeout(Duration::from_millis(300))
                .timeout(Duration::from_secs(5))
                .connect_lazy();
            let mut client = IngestClient::new(channel);
            let mine: Vec<usize> = (0..count).filter(|i| i % producers == p).collect();
            for chunk in mine.chunks(batch) {
                let messages: Vec<Message> = chunk
                    .iter()
                    .map(|i| Message {
                        id: format!("{run}-{i}"),
                        key: format!("key-{}", i % 7),
                        payload: format!("payload {i}").into_bytes().into(),
                        ..Default::default()
                    })
                    .collect();
                {
                    let mut l = log.lock().unwrap();
                    for m in &messages {
                        l.sent.insert(m.id.clone(), m.payload.to_vec());
                    }
                }
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    match client
                        .publish(PublishRequest {
                            messages: messages.clone(),
                        })
                        .await
                    {
                        Ok(r) => {
                            let mut l = log.lock().unwrap();
                            for (a, m) in r.into_inner().acks.iter().zip(&messages) {
                                assert_eq!(a.id, m.id, "acks come in request order");
                                match ack::Status::try_from(a.status) {
                                    Ok(ack::Status::Accepted | ack::Status::Duplicate) => {
                                        l.acked.insert(m.id.clone(), m.payload.to_vec());
                                    }
                                    other => panic!(
                                        "unexpected ack {other:?} for {}: {}",
                                        a.id, a.reason
                                    ),
                                }
                            }
                            break;
                        }
                        Err(status) => {
                            log.lock().unwrap().errors += 1;
                            assert!(
                                matches!(
                                    status.code(),
                                    tonic::Code::Unavailable
                                        | tonic::Code::ResourceExhausted
                                        | tonic::Code::DeadlineExceeded
                                        | tonic::Code::Unknown
                                        | tonic::Code::Cancelled
                                ),
                                "unexpected error: {status}"
                            );
                            assert!(
                                Instant::now() < deadline,
                                "a batch was never acked: {status}"
                            );
                            tokio::time::sleep(Duration::from_millis(30)).await;
                        }
                    }
                }
                tokio::time::sleep(pause).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("producer task");
    }
    std::mem::take(&mut *log.lock().unwrap())
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the sink holds every id in `want`, or the timeout passes.
pub async fn wait_for_ids(
    sink: &TestSink,
    want: &HashSet<String>,
    timeout: Duration,
) -> HashSet<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let have = sink.ids();
        let missing: HashSet<String> = want.difference(&have).cloned().collect();
        if missing.is_empty() || Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `sidelog inspect ARGS`; its stdout, or its stderr as `Err` when it fails.
pub async fn inspect(args: &[&str]) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_sidelog"))
        .arg("inspect")
        .args(args)
        .output()
        .await
        .expect("run sidelog inspect");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{}{stdout}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The number after `name` in `inspect`'s summary (`dead letters    5`).
pub fn summary_field(summary: &str, name: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name:?} in the summary:\n{summary}"))
}

/// A [`TestSink`] that fails every delivery until told otherwise, serving on a free port.
pub async fn failing_sink() -> (TestSink, Restartable) {
    let sink = TestSink::default();
    sink.failing.store(true, Ordering::Relaxed);
    let server = sink.start(free_port()).await;
    (sink, server)
}

/// Calls `check` every 100 ms until it answers `Some`, and returns that; panics after
/// `timeout` with `what()` (which may say what was seen last).
pub async fn poll_until<T, F, Fut>(timeout: Duration, what: impl Fn() -> String, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out: {}", what());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Sidelog {
    /// Polls `inspect`'s summary until `field` reads `want`; returns that summary.
    pub async fn wait_summary(&self, field: &str, want: u64) -> String {
        poll_until(
            Duration::from_secs(30),
            || format!("{field} never reached {want}; log:\n{}", self.log_tail()),
            || async {
                let summary = self.inspect(&[]).await.expect("inspect summary");
                (summary_field(&summary, field) == want).then_some(summary)
            },
        )
        .await
    }
}
