//! The MQTT door against a real broker: Mosquitto (Debian's `mosquitto`), started by the test
//! on a free loopback port with persistence, so that it can be restarted; devices are played by
//! `mosquitto_pub` (Debian's `mosquitto-clients`) and by Python programs on `paho-mqtt` (PyPI),
//! MQTT 5, QoS 1.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Missing, Outcome};
use crate::common::{Sidelog, crash_while_sending, eventually, free_port, scrape};

fn find(tool: &str) -> Option<PathBuf> {
    sidelog_testkit::find_program(&[tool])
}

/// A Mosquitto of the test's own, its state in `dir`, on one port across restarts.
struct Broker {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    fn start(dir: &Path) -> Result<Broker, Missing> {
        Broker::start_with(dir, |_| "allow_anonymous true\n".to_owned())
    }

    /// A broker whose listener is configured by `settings(its directory)` (TLS, passwords).
    fn start_with(dir: &Path, settings: impl FnOnce(&Path) -> String) -> Result<Broker, Missing> {
        let binary = find("mosquitto").ok_or_else(|| {
            Missing("no mosquitto (Debian: apt-get install mosquitto mosquitto-clients)".into())
        })?;
        if find("mosquitto_pub").is_none() {
            return Err(Missing(
                "no mosquitto_pub (Debian: apt-get install mosquitto-clients)".into(),
            ));
        }
        let port = free_port().port();
        // Started as root, mosquitto drops to its own user: its state directory must let it
        // write (else it cannot save the sessions a restart is to keep).
        let dir = dir.join("broker");
        std::fs::create_dir_all(&dir).expect("the broker's directory");
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("a directory the broker can write");
        let dir = dir.as_path();
        let settings = settings(dir);
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "per_listener_settings true\npersistence true\n\
                 persistence_location {}/\nmax_queued_messages 0\nmax_queued_bytes 1073741824\n\
                 listener {port} 127.0.0.1\n{settings}",
                dir.display()
            ),
        )
        .expect("the broker's configuration");
        let mut broker = Broker {
            binary,
            dir: dir.to_owned(),
            port,
            child: None,
        };
        broker.run()?;
        Ok(broker)
    }

    fn run(&mut self) -> Result<(), Missing> {
        let log = std::fs::File::create(self.dir.join("mosquitto.log")).expect("a log file");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(log.try_clone().expect("a second handle"))
            .stderr(log)
            .spawn()
            .map_err(|e| Missing(format!("cannot start mosquitto: {e}")))?;
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "mosquitto did not listen on {}: {}",
            self.port,
            std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
        );
    }

    /// Stops it as an operator would (SIGTERM: it saves its state) and starts it again.
    fn restart(&mut self) {
        self.stop();
        self.run().expect("mosquitto starts again");
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    fn source(&self, client_id: &str) -> String {
        format!(
            "mqtt://127.0.0.1:{}?topics=devices/%23&client_id={client_id}&receive_maximum=32",
            self.port
        )
    }

    /// A device's publish: QoS 1, MQTT 5, with an `id` user property when given. Retried (as
    /// a device does) until the broker has it.
    fn publish(&self, topic: &str, payload: &str, id: Option<&str>) {
        for _ in 0..50 {
            let mut pub_ = Command::new("mosquitto_pub");
            pub_.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-V", "5", "-q", "1", "-t", topic, "-m", payload])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(id) = id {
                pub_.args(["-D", "publish", "user-property", "id", id]);
            }
            if pub_.status().is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("mosquitto_pub could not publish {topic} {payload}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until the log (appended to across starts) says `needle` at least `times` times.
async fn wait_said(sidelog: &Sidelog, needle: &str, times: usize) {
    crate::common::poll_until(
        Duration::from_secs(30),
        || {
            format!(
                "the log never said {needle:?} {times} times:\n{}",
                sidelog.log_tail()
            )
        },
        || async { (sidelog.log().matches(needle).count() >= times).then_some(()) },
    )
    .await
}

/// (id, key, payload, headers) of every message in the file sink's chunks, duplicates kept.
fn delivered(out: &Path) -> Vec<(String, String, String, HashMap<String, String>)> {
    sidelog::sink::list_chunks(out)
        .unwrap_or_default()
        .iter()
        .flat_map(|p| sidelog::sink::read_chunk(p).expect("a readable chunk"))
        .map(|m| {
            (
                m.id,
                m.key,
                String::from_utf8_lossy(&m.payload).into_owned(),
                m.headers.into_iter().collect(),
            )
        })
        .collect()
}

/// QoS 1 messages published while sidelog refuses (sink down, backlog full), is SIGKILLed, is
/// down, and is started again all reach the sink: nothing is acknowledged to the broker before
/// it is accepted, and the broker keeps the rest for sidelog's session. The topic is the key,
/// an `id` property the id.
pub async fn mqtt_messages_survive_sigkills_of_sidelog() -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path())?;
    let data = dir.path().join("data");
    let source = broker.source("sidelog-kill");
    let args = ["--mode", "hml", "--mqtt-source", &source];
    // First the sink is down and the backlog small: the pipeline soon refuses, and what the
    // door took meanwhile must stay unacknowledged (backpressure reaches the broker) so that a
    // SIGKILL loses none of it. An early PUBACK fails here deterministically.
    let full = [
        &args[..],
        &[
            "--sink",
            "http://127.0.0.1:1",
            "--limits-max-backlog-bytes",
            "20000",
        ],
    ]
    .concat();
    let mut sidelog = Sidelog::new(&data, &full);
    sidelog.start().await;
    wait_said(&sidelog, "MQTT connected", 1).await;

    // Two devices: one streams 3,000 readings as fast as the broker takes them (no ids:
    // at-least-once, checked by payload), one publishes 100 with `id` properties.
    let total = 3000;
    let lines: String = (0..total).map(|i| format!("reading {i}\n")).collect();
    let mut stream = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-V", "5", "-q", "1", "-t", "devices/stream", "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_pub starts");
    let mut stdin = stream.stdin.take().expect("its stdin");
    let feeder = std::thread::spawn(move || {
        use std::io::Write as _;
        // ~1,000 a second, so that the kills below fall in the middle of the stream.
        for chunk in lines.lines().collect::<Vec<_>>().chunks(20) {
            stdin
                .write_all(format!("{}\n", chunk.join("\n")).as_bytes())
                .expect("mosquitto_pub reads");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let with_ids = {
        let port = broker.port;
        let dir = broker.dir.clone();
        let binary = broker.binary.clone();
        std::thread::spawn(move || {
            let device = Broker {
                binary,
                dir,
                port,
                child: None,
            };
            for i in 0..100 {
                device.publish(
                    &format!("devices/d{}", i % 3),
                    &format!("id'd {i}"),
                    Some(&format!("m-{i}")),
                );
            }
        })
    };
    let out = data.join("out");
    let payloads = |out: &Path| -> HashSet<String> {
        delivered(out).into_iter().map(|(_, _, p, _)| p).collect()
    };
    wait_said(&sidelog, "MQTT messages not accepted yet", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sidelog.kill9().await;
    // Then with its sink, killed under load twice; the second time it stays down a while.
    let mut sidelog = Sidelog::new(&data, &args);
    sidelog.start().await;
    assert!(eventually(Duration::from_secs(60), || payloads(&out).len() >= 500).await);
    sidelog.kill9().await;
    sidelog.start().await;
    assert!(eventually(Duration::from_secs(60), || payloads(&out).len() >= 1500).await);
    sidelog.kill9().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sidelog.start().await;
    feeder.join().expect("the lines were fed");
    let _ = stream.wait();
    with_ids.join().expect("the devices published");
    let want: HashSet<String> = (0..total)
        .map(|i| format!("reading {i}"))
        .chain((0..100).map(|i| format!("id'd {i}")))
        .collect();
    let complete = eventually(Duration::from_secs(60), || {
        payloads(&out).is_superset(&want)
    })
    .await;
    assert!(
        complete,
        "{} readings acknowledged to the broker never reached the sink",
        want.difference(&payloads(&out)).count()
    );
    for (id, key, payload, _) in delivered(&out) {
        if let Some(i) = payload.strip_prefix("id'd ") {
            let i: usize = i.parse().unwrap();
            assert_eq!((id, key), (format!("m-{i}"), format!("devices/d{}", i % 3)));
        } else {
            assert_eq!(key, "devices/stream");
        }
    }
    sidelog.kill9().await;
    drop(broker.child.take());
    Ok(())
}

/// A device's retry (same `id` property) is delivered once; other user properties become
/// headers; a message without an id gets one; a broker restart is survived; a message the
/// limits refuse is dead-lettered with its reason and acknowledged (not redelivered forever).
pub async fn mqtt_ids_dedup_broker_restarts_and_bad_messages_are_dead_lettered() -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path())?;
    let data = dir.path().join("data");
    let source = broker.source("sidelog-props");
    let metrics = free_port();
    let metrics_arg = metrics.to_string();
    let args = [
        "--mqtt-source",
        &source,
        "--limits-max-message-bytes",
        "1024",
        "--metrics-listen",
        &metrics_arg,
    ];
    let mut sidelog = Sidelog::new(&data, &args);
    sidelog.start().await;
    wait_said(&sidelog, "MQTT connected", 1).await;
    let out = data.join("out");

    broker.publish("devices/a", "first", Some("dev-a-1"));
    broker.publish("devices/a", "first", Some("dev-a-1")); // the device retries
    let mut with_header = Command::new("mosquitto_pub");
    with_header
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-V", "5", "-q", "1", "-t", "devices/b", "-m", "no id"])
        .args(["-D", "publish", "user-property", "unit", "celsius"]);
    assert!(with_header.status().unwrap().success());
    assert!(eventually(Duration::from_secs(20), || delivered(&out).len() >= 2).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = delivered(&out);
    assert_eq!(
        got.iter().filter(|(id, ..)| id == "dev-a-1").count(),
        1,
        "{got:?}"
    );
    let no_id = got
        .iter()
        .find(|(_, key, ..)| key == "devices/b")
        .expect("the message without an id");
    assert!(!no_id.0.is_empty(), "an id was assigned");
    assert_eq!(
        no_id.3.get("unit").map(String::as_str),
        Some("celsius"),
        "{no_id:?}"
    );

    // The broker restarts; sidelog reconnects to its session and takes what comes next.
    broker.restart();
    wait_said(&sidelog, "session_present=true", 1).await;
    broker.publish("devices/a", "after restart", Some("dev-a-2"));
    assert!(
        eventually(Duration::from_secs(30), || {
            delivered(&out).iter().any(|(id, ..)| id == "dev-a-2")
        })
        .await,
        "nothing taken after the broker's restart"
    );

    // Over max_message_bytes: dead-lettered with the reason, and acknowledged: after a
    // restart of sidelog it is not taken (and dead-lettered) a second time.
    broker.publish("devices/c", &"x".repeat(2000), Some("too-big"));
    broker.publish("devices/c", "small", Some("dev-c-1"));
    assert!(
        eventually(Duration::from_secs(20), || {
            delivered(&out).iter().any(|(id, ..)| id == "dev-c-1")
        })
        .await
    );
    let letters = sidelog.inspect(&["dead-letters"]).await.expect("inspect");
    assert!(
        letters.contains("too-big") && letters.contains("max_message_bytes"),
        "{letters}"
    );
    // Counted as every other dead letter is.
    let scraped = scrape(metrics).await;
    assert!(
        scraped
            .lines()
            .any(|l| l.starts_with("sidelog_dead_lettered_total ") && !l.ends_with(" 0")),
        "the door's dead letter is counted:\n{scraped}"
    );
    sidelog.terminate().await;
    sidelog.start().await;
    wait_said(&sidelog, "MQTT connected", 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let letters = sidelog.inspect(&["dead-letters"]).await.expect("inspect");
    assert_eq!(letters.matches("too-big").count(), 1, "{letters}");
    sidelog.kill9().await;
    Ok(())
}

/// TLS with a private CA and a username/password, as brokers in production take them: with the
/// right password sidelog connects and takes messages; with a wrong one it retries and says
/// so; the password never appears in the printed configuration.
pub async fn mqtt_over_tls_with_a_password() -> Outcome {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    if find("mosquitto_passwd").is_none() {
        return Err(Missing(
            "no mosquitto_passwd (Debian: apt-get install mosquitto)".into(),
        ));
    }
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let device_port = free_port().port();
    let broker = Broker::start_with(dir.path(), |dir| {
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), server_cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
        let passwd = dir.join("passwd");
        let made = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwd)
            .args(["sidelog", "s3cret-pass"])
            .status()
            .unwrap();
        assert!(made.success());
        std::fs::set_permissions(&passwd, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        // The devices' side: a plain listener of its own (the test is of sidelog's TLS).
        format!(
            "cafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n\
             allow_anonymous false\npassword_file {0}/passwd\n\
             listener {1} 127.0.0.1\nallow_anonymous true\n",
            dir.display(),
            device_port
        )
    })?;
    let ca = broker.dir.join("ca.pem");
    let url = |client: &str, password: &str| {
        format!(
            "mqtts://127.0.0.1:{}?topics=devices/%23&client_id={client}&user=sidelog\
             &password={password}&ca={}",
            broker.port,
            ca.display()
        )
    };

    // The printed configuration hides the password.
    let good = url("tls-good", "s3cret-pass");
    let checked = Command::new(sidelog_testkit::binary())
        .args(["serve", "--check-config", "--mqtt-source", &good])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{printed}");
    assert!(printed.contains("password=<redacted>"), "{printed}");
    assert!(!printed.contains("s3cret-pass"), "{printed}");

    let data = dir.path().join("data");
    let mut sidelog = Sidelog::new(&data, &["--mqtt-source", &good]);
    sidelog.start().await;
    wait_said(&sidelog, "MQTT connected", 1).await;
    let published = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &device_port.to_string()])
        .args([
            "-V",
            "5",
            "-q",
            "1",
            "-t",
            "devices/secure",
            "-m",
            "over tls",
        ])
        .args(["-D", "publish", "user-property", "id", "tls-1"])
        .output()
        .unwrap();
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let out = data.join("out");
    assert!(
        eventually(Duration::from_secs(20), || {
            delivered(&out).iter().any(|(id, ..)| id == "tls-1")
        })
        .await,
        "the message over TLS never reached the sink"
    );
    sidelog.kill9().await;

    let mut refused = Sidelog::new(
        &dir.path().join("wrong"),
        &["--mqtt-source", &url("tls-wrong", "wrong-pass")],
    );
    refused.start().await;
    wait_said(
        &refused,
        "MQTT broker unreachable or the connection failed",
        1,
    )
    .await;
    assert!(
        !refused.log().contains("MQTT connected"),
        "{}",
        refused.log_tail()
    );
    refused.kill9().await;
    Ok(())
}

/// A Python with `paho-mqtt` (PyPI; `.ci/run` installs it into `target/paho-venv`), or
/// `SIDELOG_TEST_PAHO_PYTHON`.
fn paho_python() -> Result<PathBuf, Missing> {
    let candidates = std::env::var_os("SIDELOG_TEST_PAHO_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([Path::new(env!("CARGO_MANIFEST_DIR")).join("target/paho-venv/bin/python")])
        .chain(find("python3"));
    for python in candidates {
        let has_paho = Command::new(&python)
            .args(["-c", "import paho.mqtt.client"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if has_paho {
            return Ok(python);
        }
    }
    Err(Missing(
        "no Python with paho-mqtt (python3 -m venv target/paho-venv && \
         target/paho-venv/bin/pip install 'paho-mqtt==2.*')"
            .into(),
    ))
}

/// Devices written with paho-mqtt (the Eclipse client most device code uses), MQTT 5, QoS 1:
/// three devices publish with `id`, a unit property and a content type while sidelog is
/// SIGKILLed; every reading reaches the sink once per id with its headers, a 200 KB one too
/// (over the MQTT client's default packet limit, under `max_message_bytes`). A reading whose
/// payload format indicator says UTF-8 and whose bytes are not (Mosquitto passes it on) is
/// dead-lettered with the reason, never delivered, never lost.
pub async fn paho_devices_through_a_sigkill_and_a_malformed_payload() -> Outcome {
    let python = paho_python()?;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path())?;
    let data = dir.path().join("data");
    let source = broker.source("sidelog-paho");
    let mut sidelog = Sidelog::new(&data, &["--mode", "hml", "--mqtt-source", &source]);
    sidelog.start().await;
    wait_said(&sidelog, "MQTT connected", 1).await;

    let per_device = 400;
    let script = dir.path().join("devices.py");
    std::fs::write(
        &script,
        r#"
import sys, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

port, per_device = int(sys.argv[1]), int(sys.argv[2])

def device(name, malformed=False):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    sent = []
    for i in range(per_device):
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("id", f"{name}-{i}"), ("unit", "celsius")]
        props.ContentType = "application/json"
        payload = f'{{"device":"{name}","i":{i},"t":21.5}}'.encode()
        sent.append(client.publish(f"devices/{name}/temp", payload, qos=1, properties=props))
        time.sleep(0.003)
    if name == "paho1":
        # Over rumqttc's default packet limit (10 KiB), well under max_message_bytes (1 MiB).
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("id", f"{name}-big"), ("unit", "celsius")]
        props.ContentType = "application/json"
        big = '{"samples":"' + "7" * 200_000 + '"}'
        sent.append(client.publish(f"devices/{name}/temp", big.encode(), qos=1, properties=props))
    if malformed:
        props = Properties(PacketTypes.PUBLISH)
        props.PayloadFormatIndicator = 1
        props.UserProperty = [("id", f"{name}-malformed")]
        sent.append(client.publish(f"devices/{name}/temp", b"\xff\xfe\x00 not UTF-8", qos=1, properties=props))
    for info in sent:
        info.wait_for_publish(60)
        assert info.is_published(), f"{name}: the broker did not take a reading"
    client.loop_stop()
    client.disconnect()

threads = [threading.Thread(target=device, args=(f"paho{d}", d == 0)) for d in range(3)]
for t in threads: t.start()
for t in threads: t.join()
print("published")
"#,
    )
    .expect("the device script");
    let devices = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(broker.port.to_string())
        .arg(per_device.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");

    let out = data.join("out");
    crash_while_sending(&mut sidelog, "the devices' readings", || {
        delivered(&out).len() >= 300
    })
    .await;
    let finished = devices.wait_with_output().await.expect("python ran");
    assert!(
        finished.status.success(),
        "the paho devices failed: {}",
        String::from_utf8_lossy(&finished.stderr)
    );

    let want: HashSet<String> = (0..3)
        .flat_map(|d| (0..per_device).map(move |i| format!("paho{d}-{i}")))
        .chain(["paho1-big".to_owned()])
        .collect();
    let ids = |out: &Path| -> HashSet<String> { delivered(out).into_iter().map(|m| m.0).collect() };
    assert!(
        eventually(Duration::from_secs(60), || ids(&out).is_superset(&want)).await,
        "{} readings the broker took never reached the sink",
        want.difference(&ids(&out)).count()
    );
    // Unique ids: what came again after the kill was answered DUPLICATE, not delivered twice
    // (a delivery retried across the kill may repeat: the file sink is at-least-once).
    for (id, key, payload, headers) in delivered(&out) {
        assert!(
            want.contains(&id),
            "unexpected at the sink: {id} {payload:?}"
        );
        let device = id.rsplit_once('-').expect("name-i").0;
        assert_eq!(key, format!("devices/{device}/temp"));
        assert_eq!(headers.get("unit").map(String::as_str), Some("celsius"));
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
    }
    let letters = sidelog.inspect(&["dead-letters"]).await.expect("inspect");
    assert!(
        letters.contains("paho0-malformed") && letters.contains("payload_format_invalid"),
        "the malformed reading is dead-lettered with why: {letters}"
    );
    sidelog.kill9().await;
    Ok(())
}

/// A flood from paho devices (4 × 5,000 QoS 1 messages of 1 KiB, 100 in flight each) reaches
/// the sink whole, and every PUBACK is queued: one that cannot be holds its slot of the broker's
/// window until a reconnect, and enough of them stop intake (they did, with a PUBACK queue
/// sized by the receive maximum).
pub async fn a_flood_of_devices_never_stalls_the_door() -> Outcome {
    let python = paho_python()?;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path())?;
    let data = dir.path().join("data");
    let source = format!(
        "mqtt://127.0.0.1:{}?topics=flood/%23&client_id=sidelog-flood",
        broker.port
    );
    let mut sidelog = Sidelog::new(&data, &["--mode", "hml", "--mqtt-source", &source]);
    sidelog.start().await;
    wait_said(&sidelog, "MQTT connected", 1).await;
    let script = dir.path().join("flood.py");
    std::fs::write(
        &script,
        r#"
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

port, per_device, devices = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

def device(d):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"flood{d}", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    sent = []
    for i in range(per_device):
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("id", f"flood{d}-{i}")]
        sent.append(client.publish(f"flood/{d}", b"x" * 1024, qos=1, properties=props))
    for info in sent:
        info.wait_for_publish(120)
        assert info.is_published()
    client.loop_stop()

threads = [threading.Thread(target=device, args=(d,)) for d in range(devices)]
for t in threads: t.start()
for t in threads: t.join()
"#,
    )
    .expect("the flood script");
    let (per_device, devices) = (5000, 4);
    let status = tokio::process::Command::new(&python)
        .arg(&script)
        .args([
            broker.port.to_string(),
            per_device.to_string(),
            devices.to_string(),
        ])
        .status()
        .await
        .expect("python runs");
    assert!(status.success(), "the paho devices failed");
    let out = data.join("out");
    let want = per_device * devices;
    let ids = |out: &Path| -> HashSet<String> { delivered(out).into_iter().map(|m| m.0).collect() };
    assert!(
        eventually(Duration::from_secs(60), || ids(&out).len() >= want).await,
        "{} of {want} messages at the sink; log:\n{}",
        ids(&out).len(),
        sidelog.log_tail()
    );
    assert!(
        !sidelog.log().contains("cannot queue a PUBACK"),
        "a PUBACK could not be queued: {}",
        sidelog.log_tail()
    );
    sidelog.kill9().await;
    Ok(())
}
