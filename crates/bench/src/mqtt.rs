//! `--door mqtt`: producers are MQTT 5 devices publishing QoS 1 to a broker, and sidelog takes
//! the messages from its subscription, as it does in front of real devices.
//!
//! A device's PUBACK comes from the broker, not from sidelog, so the ack columns are the
//! broker's; sidelog's own acceptance shows in the publish→sink latency and the throughput. So
//! that devices cannot outrun sidelog (the broker would queue, then drop), every producer waits
//! while more than [`WINDOW`] messages are published but not yet at the sink.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use sidelog::proto::Message;
use tokio::sync::Semaphore;

use super::load::Send1;

/// Messages published and not yet delivered, across all producers, before they wait. Below
/// Mosquitto's default queue per session (1,000 beyond the in-flight window), so the broker
/// never drops what sidelog has not taken yet.
pub(super) const WINDOW: u64 = 1000;

/// Where the devices publish, and what they watch to stay within the window.
#[derive(Clone)]
pub(super) struct Devices {
    pub host: String,
    pub port: u16,
    /// Each producer publishes to `<prefix>/<producer>`; sidelog subscribes to `<prefix>/#`.
    pub prefix: String,
    pub sent: Arc<AtomicU64>,
    pub delivered: Arc<AtomicU64>,
    /// Deliveries per message (a handler's outputs).
    pub outputs: u64,
}

/// A Mosquitto the bench starts for `--door mqtt` when no `--mqtt-broker` is given: on a free
/// loopback port, in memory, with `set_tcp_nodelay true`. Mosquitto's default (Nagle on) holds
/// each PUBACK to a device for the device's delayed ACK, ~40 ms a request on this machine,
/// and the run would measure that instead of sidelog.
pub(super) struct OwnBroker {
    child: std::process::Child,
    dir: std::path::PathBuf,
    pub port: u16,
}

impl OwnBroker {
    pub async fn start() -> anyhow::Result<OwnBroker> {
        let binary = sidelog_testkit::find_program(&["mosquitto"]).context(
            "--door mqtt without --mqtt-broker starts a Mosquitto, and there is none \
                 (Debian: apt-get install mosquitto), or name a broker with --mqtt-broker",
        )?;
        let port = sidelog_testkit::free_port()
            .context("binding a loopback port")?
            .port();
        let dir = std::env::temp_dir().join(format!("sidelog-bench-mqtt-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n\
                 persistence false\nmax_queued_messages 0\nmax_queued_bytes 1073741824\n"
            ),
        )?;
        let child = std::process::Command::new(&binary)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let broker = OwnBroker { child, dir, port };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(broker);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("{} did not listen on {port} within 5 s", binary.display())
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Parses `--mqtt-broker mqtt://HOST:PORT`.
pub fn parse_broker(s: &str) -> Result<(String, u16), String> {
    let rest = s
        .strip_prefix("mqtt://")
        .ok_or_else(|| format!("{s:?}: expected mqtt://HOST:PORT"))?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: expected mqtt://HOST:PORT"))?;
    let port = port
        .parse()
        .map_err(|_| format!("{s:?}: {port:?} is not a port"))?;
    Ok((host.to_owned(), port))
}

/// One device: its own connection, its PUBACKs counted as permits.
#[derive(Clone)]
pub(super) struct Publisher {
    client: AsyncClient,
    topic: String,
    acked: Arc<Semaphore>,
    devices: Devices,
}

impl Publisher {
    /// Connects device `id` (`label` keeps client ids apart across modes and runs).
    pub async fn connect(devices: &Devices, label: &str, id: usize) -> anyhow::Result<Publisher> {
        let client_id = format!("sidelog-bench-{}-{label}-{id}", std::process::id());
        let mut options = MqttOptions::new(client_id, devices.host.clone(), devices.port);
        options.set_clean_start(true);
        options.set_keep_alive(Duration::from_secs(30));
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        let (client, mut events) = AsyncClient::new(options, 64);
        // The first event is the CONNACK, or why there is none.
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {}
            Ok(Ok(other)) => anyhow::bail!("the MQTT broker answered {other:?} to CONNECT"),
            Ok(Err(e)) => {
                return Err(e).with_context(|| {
                    format!(
                        "no MQTT broker at {}:{} (--door mqtt publishes through one; \
                         --mqtt-broker mqtt://HOST:PORT)",
                        devices.host, devices.port
                    )
                });
            }
            Err(_) => anyhow::bail!("the MQTT broker did not answer CONNECT within 10 s"),
        }
        let acked = Arc::new(Semaphore::new(0));
        let counter = acked.clone();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => counter.add_permits(1),
                    Ok(_) => {}
                    // The client was dropped (the run is over) or the broker went away.
                    Err(_) => return,
                }
            }
        });
        Ok(Publisher {
            client,
            topic: format!("{}/{id}", devices.prefix),
            acked,
            devices: devices.clone(),
        })
    }

    /// Waits while the window is full; false if it stays full for 10 s (sidelog stopped
    /// taking messages: the run ends with errors instead of hanging).
    async fn wait_for_room(&self, n: u64) -> bool {
        let d = &self.devices;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while (d.sent.load(Ordering::Relaxed) + n) * d.outputs
            > d.delivered.load(Ordering::Relaxed) + WINDOW * d.outputs
        {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        true
    }
}

impl Send1 for Publisher {
    /// Publishes `messages` (QoS 1, the id and headers as user properties) and waits for the
    /// broker's PUBACKs.
    async fn send(&mut self, messages: Vec<Message>) -> Result<usize, ()> {
        let n = messages.len();
        if !self.wait_for_room(n as u64).await {
            return Err(());
        }
        self.devices.sent.fetch_add(n as u64, Ordering::Relaxed);
        for m in messages {
            let mut user_properties = vec![("id".to_owned(), m.id)];
            user_properties.extend(m.headers);
            let properties = PublishProperties {
                user_properties,
                ..Default::default()
            };
            self.client
                .publish_with_properties(
                    &self.topic,
                    QoS::AtLeastOnce,
                    false,
                    m.payload,
                    properties,
                )
                .await
                .map_err(|_| ())?;
        }
        let acks = tokio::time::timeout(Duration::from_secs(30), self.acked.acquire_many(n as u32))
            .await
            .map_err(|_| ())?
            .map_err(|_| ())?;
        acks.forget();
        Ok(n)
    }
}

/// Waits until sidelog's subscription takes messages: what is published before it exists has
/// no session to be queued for. Probes go to the sink like any message (and count there).
pub(super) async fn wait_subscribed(devices: &Devices) -> anyhow::Result<()> {
    let mut probe = Publisher::connect(devices, "probe", 0).await?;
    let before = devices.delivered.load(Ordering::Relaxed);
    for k in 0..150 {
        let message = Message {
            id: format!("probe-{}-{k}", std::process::id()),
            payload: bytes::Bytes::from_static(b"probe"),
            ..Default::default()
        };
        probe
            .send(vec![message])
            .await
            .map_err(|()| anyhow::anyhow!("the broker did not acknowledge a probe"))?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if devices.delivered.load(Ordering::Relaxed) > before {
            devices.sent.store(0, Ordering::Relaxed);
            return Ok(());
        }
    }
    anyhow::bail!("sidelog took nothing from its MQTT subscription within 30 s")
}
