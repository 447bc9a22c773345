//! Loopback ports, in-process gRPC servers, and asking a server's health.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, Server};

/// A free loopback port: bound, read and released, so that a test can reuse it across
/// restarts of what listens there.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`), from which the system
/// hands out the ports of outgoing connections and of binds to port 0: a port from there, once
/// released, can be taken by another test's connection before the child process binds it
/// ("Address already in use", seen in CI). Calls in one process take the next port of one
/// sequence, which starts at a place set by the process id: parallel tests of a process never
/// get the same port, and two test processes rarely meet.
pub fn free_port() -> std::io::Result<SocketAddr> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let high = ephemeral_start().unwrap_or(32_768).max(LOW + 1_000);
    let span = high - LOW;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (start + n) % span).unwrap_or(u16::MAX);
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr();
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The first port of the kernel's ephemeral range (Linux), if it says.
fn ephemeral_start() -> Option<u32> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// How long [`serve_on`] retries a bind while the previous server on the port lets go of it.
const REBIND_LIMIT: Duration = Duration::from_secs(10);

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

/// Serves `routes` on `addr` (Nagle off, as sidelog's own listeners). A port still held by the
/// previous server is retried for a while; a port held by anything else fails.
pub async fn serve_on(
    addr: SocketAddr,
    routes: tonic::service::Routes,
) -> std::io::Result<Restartable> {
    let deadline = tokio::time::Instant::now() + REBIND_LIMIT;
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            })
            .await;
    });
    Ok(Restartable {
        addr,
        stop: Some(stop_tx),
        task: Some(task),
    })
}

/// `Some(true)` when the gRPC health service at `addr` says SERVING, `Some(false)` when it
/// answers otherwise, `None` when nothing answers.
pub async fn is_serving(addr: SocketAddr) -> Option<bool> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .ok()?
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
    Some(
        r.into_inner().status
            == tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
    )
}
