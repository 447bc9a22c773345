//! The Kafka sink against a real Apache Kafka: a single node in KRaft mode (broker and
//! controller in one JVM) on free loopback ports, from the jars `kafka/fetch.sh` puts in
//! `target/kafka/lib` (Maven Central). What the topic holds is read back with Kafka's own
//! console consumer, not with sidelog's client.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use super::{Missing, Outcome};
use crate::common::{Sidelog, free_port, produce};

/// A Kafka node of the test's own, killed when dropped.
pub struct Kafka {
    pub bootstrap: String,
    /// `target/kafka/lib/*`, found (and fetched) once at start.
    cp: String,
    child: Option<Child>,
    properties: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// `target/kafka/lib`, fetched by `kafka/fetch.sh` when missing (Maven and Java needed).
fn kafka_lib() -> Result<PathBuf, Missing> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = root.join("target/kafka/lib");
    let java = Command::new("java").arg("-version").output();
    if !java.is_ok_and(|o| o.status.success()) {
        return Err(Missing("no java (17 or later) to run Apache Kafka".into()));
    }
    if !lib.join(".complete").exists() {
        let fetched = Command::new(root.join("tests/services/kafka/fetch.sh"))
            .output()
            .map_err(|e| Missing(format!("cannot run tests/services/kafka/fetch.sh: {e}")))?;
        if !fetched.status.success() {
            return Err(Missing(format!(
                "Apache Kafka is not in target/kafka and tests/services/kafka/fetch.sh could not \
                 fetch it from Maven Central: {}",
                String::from_utf8_lossy(&fetched.stderr)
            )));
        }
    }
    Ok(lib)
}

fn classpath() -> Result<String, Missing> {
    Ok(format!("{}/*", kafka_lib()?.display()))
}

impl Kafka {
    /// Formats a new node's storage and starts it; waits until it answers.
    pub async fn start() -> Result<Kafka, Missing> {
        Kafka::start_with(None).await
    }

    /// A node with a second listener, SASL over TLS (SCRAM-SHA-512 and PLAIN, user `alice`
    /// with password `alice-secret`), its certificate made by the JDK's keytool for
    /// 127.0.0.1; answers the node, that listener's address and the CA file (PEM) to trust.
    pub async fn start_secured() -> Result<(Kafka, String, PathBuf), Missing> {
        let secured = free_port().port();
        let kafka = Kafka::start_with(Some(secured)).await?;
        let ca = kafka._dir.path().join("ca.pem");
        Ok((kafka, format!("127.0.0.1:{secured}"), ca))
    }

    async fn start_with(secured: Option<u16>) -> Result<Kafka, Missing> {
        let cp = classpath()?;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (port, controller) = (free_port().port(), free_port().port());
        let properties = dir.path().join("server.properties");
        let mut listeners = format!("PLAINTEXT://127.0.0.1:{port}");
        let mut protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".to_string();
        let mut extra = String::new();
        if let Some(secured) = secured {
            let keystore = dir.path().join("broker.p12");
            let keytool = |args: &[&str]| {
                let out = Command::new("keytool")
                    .args(args)
                    .output()
                    .expect("run the JDK's keytool");
                assert!(
                    out.status.success(),
                    "keytool: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            let ks = keystore.to_str().unwrap();
            keytool(&[
                "-genkeypair",
                "-alias",
                "broker",
                "-keyalg",
                "RSA",
                "-keysize",
                "2048",
                "-dname",
                "CN=localhost",
                "-ext",
                "SAN=IP:127.0.0.1,DNS:localhost",
                "-validity",
                "2",
                "-keystore",
                ks,
                "-storetype",
                "PKCS12",
                "-storepass",
                "changeit",
                "-keypass",
                "changeit",
            ]);
            let ca = dir.path().join("ca.pem");
            keytool(&[
                "-exportcert",
                "-rfc",
                "-alias",
                "broker",
                "-keystore",
                ks,
                "-storepass",
                "changeit",
                "-file",
                ca.to_str().unwrap(),
            ]);
            listeners.push_str(&format!(",SASL_SSL://127.0.0.1:{secured}"));
            protocols.push_str(",SASL_SSL:SASL_SSL");
            extra = format!(
                "sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN\n\
                 listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
                 org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
                 listener.name.sasl_ssl.plain.sasl.jaas.config=\
                 org.apache.kafka.common.security.plain.PlainLoginModule required \
                 user_alice=\"alice-secret\";\n\
                 ssl.keystore.location={ks}\n\
                 ssl.keystore.password=changeit\n\
                 ssl.keystore.type=PKCS12\n"
            );
        }
        std::fs::write(
            &properties,
            format!(
                "process.roles=broker,controller\n\
                 node.id=1\n\
                 controller.quorum.voters=1@127.0.0.1:{controller}\n\
                 listeners={listeners},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners={listeners}\n\
                 controller.listener.names=CONTROLLER\n\
                 listener.security.protocol.map={protocols}\n\
                 log.dirs={}\n\
                 auto.create.topics.enable=false\n\
                 offsets.topic.replication.factor=1\n\
                 transaction.state.log.replication.factor=1\n\
                 transaction.state.log.min.isr=1\n\
                 group.initial.rebalance.delay.ms=0\n{extra}",
                dir.path().join("data").display()
            ),
        )
        .expect("write server.properties");
        let mut format = Command::new("java");
        format
            .args(["-cp", &cp, "kafka.tools.StorageTool", "format", "-t"])
            .arg("c2lkZWxvZy10ZXN0LWthZmthLWNsdXN0ZXI") // any 22-character base64 cluster id
            .arg("-c")
            .arg(&properties);
        if secured.is_some() {
            format.args([
                "--add-scram",
                "SCRAM-SHA-512=[name=alice,password=alice-secret]",
            ]);
        }
        let format = format.output().expect("run Kafka's storage tool");
        assert!(
            format.status.success(),
            "kafka-storage format failed: {}",
            String::from_utf8_lossy(&format.stderr)
        );
        let mut kafka = Kafka {
            bootstrap: format!("127.0.0.1:{port}"),
            cp: cp.clone(),
            child: None,
            log: dir.path().join("kafka.log"),
            properties,
            _dir: dir,
        };
        kafka.run().await;
        Ok(kafka)
    }

    async fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the Kafka log");
        let child = Command::new("java")
            .args(["-Xmx512m", "-cp", &self.cp, "kafka.Kafka"])
            .arg(&self.properties)
            .stdout(Stdio::from(log.try_clone().expect("a second handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start Kafka");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(&self.bootstrap)
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Kafka did not listen within 60 s: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills the node (SIGKILL), leaving its data for [`Kafka::resume`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again on the same ports and data.
    pub async fn resume(&mut self) {
        self.run().await;
    }

    /// Stops the node as an operator's restart does (SIGTERM: a controlled shutdown) and
    /// starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        self.run().await;
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("an admin client");
        let created = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
            )
            .await
            .expect("create the topic");
        for result in created {
            result.unwrap_or_else(|(name, e)| panic!("creating topic {name}: {e}"));
        }
    }

    /// Every committed record of `topic`, read by Kafka's own console consumer.
    pub fn read_back(&self, topic: &str) -> Vec<Record> {
        let out = Command::new("java")
            .args(["-cp", &self.cp])
            .arg("org.apache.kafka.tools.consumer.ConsoleConsumer")
            .args(["--bootstrap-server", &self.bootstrap, "--topic", topic])
            .args(["--from-beginning", "--isolation-level", "read_committed"])
            .args(["--timeout-ms", "8000"])
            .args(["--property", "print.partition=true"])
            .args(["--property", "print.offset=true"])
            .args(["--property", "print.headers=true"])
            .args(["--property", "print.key=true"])
            .output()
            .expect("run Kafka's console consumer");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(Record::parse)
            .collect()
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One record as the console consumer printed it.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: u32,
    pub offset: u64,
    pub headers: HashMap<String, String>,
    pub key: String,
    pub value: String,
}

impl Record {
    /// `Partition:P\tOffset:O\th1:v1,h2:v2\tKEY\tVALUE`.
    fn parse(line: &str) -> Option<Record> {
        let mut fields = line.splitn(5, '\t');
        let partition = fields.next()?.strip_prefix("Partition:")?.parse().ok()?;
        let offset = fields.next()?.strip_prefix("Offset:")?.parse().ok()?;
        let headers = fields
            .next()?
            .split(',')
            .filter_map(|h| h.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Some(Record {
            partition,
            offset,
            headers,
            key: fields.next()?.to_owned(),
            value: fields.next()?.to_owned(),
        })
    }

    fn id(&self) -> &str {
        self.headers.get("sidelog-id").map_or("", String::as_str)
    }

    fn seq(&self) -> u64 {
        self.headers
            .get("sidelog-seq")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// Publishes 3000 messages through sidelog into a 3-partition topic while sidelog is
/// SIGKILLed twice (while batches are in transactions) and the broker restarts once, then
/// reads the topic back with Kafka's own consumer at `read_committed`. Then a quiet burst of
/// 400 and a SIGKILL as soon as the journal has marked it delivered: with no redo log and a
/// sync every 5 s, the marks are lost with the process, so without the progress records the
/// replay sends the burst again (started with 3 delivery lanes instead of 8).
///
/// Checks every acked message is in the topic, none unknown, with its id and sequence as
/// headers and its payload as the value; each key's records in one partition, in the order
/// each producer had them acked. Answers the records and how many messages were acked.
async fn through_crashes(progress: bool) -> Result<(Vec<Record>, usize), Missing> {
    let mut kafka = Kafka::start().await?;
    let topic = "sidelog-events";
    kafka.create_topic(topic, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("kafka://{}/{topic}?linger_ms=2", kafka.bootstrap);
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &[
            "--mode",
            "hml",
            "--sink",
            &sink,
            "--delivery-backoff-max-ms",
            "500",
            "--journal-wal-bytes",
            "0",
            "--journal-sync-interval-ms",
            "5000",
        ],
    );
    if !progress {
        sidelog = sidelog.with_env(sidelog::sink::KAFKA_NO_PROGRESS_VAR, "1");
    }
    sidelog.start().await;
    let producer = tokio::spawn(produce(
        sidelog.url(),
        "k".into(),
        4,
        3000,
        20,
        Duration::from_millis(3),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sidelog.kill9().await;
    sidelog.start().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    kafka.restart().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sidelog.kill9().await;
    sidelog.start().await;
    let mut log = producer.await.unwrap();

    // A quiet burst: with no appends after it, its marks wait for the next sync (5 s) while
    // the topic already holds it; the SIGKILL comes as soon as the journal has marked it.
    sidelog.wait_summary("backlog inputs", 0).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let burst: Vec<_> = (0..400)
        .map(|i| {
            let mut m = crate::common::msg(&format!("b-{i}"), format!("burst {i}").as_bytes());
            m.key = "burst".into();
            m
        })
        .collect();
    for m in &burst {
        log.sent.insert(m.id.clone(), m.payload.to_vec());
    }
    let acks = crate::common::publish(&sidelog, burst.clone())
        .await
        .unwrap();
    assert_eq!(acks.len(), burst.len());
    for m in burst {
        log.acked.insert(m.id, m.payload.to_vec());
    }
    sidelog.wait_summary("backlog inputs", 0).await;
    sidelog.kill9().await;
    // A setting changed between the crash and the next start: another number of delivery
    // lanes, so the replayed messages meet other batches and transactions.
    sidelog.add_args(&["--delivery-lanes", "3"]);
    sidelog.start().await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let records = kafka.read_back(topic);
        let have: std::collections::HashSet<&str> = records.iter().map(Record::id).collect();
        if log.acked.keys().all(|id| have.contains(id.as_str()))
            || tokio::time::Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Whatever was still under way has landed (a late copy would show now).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = kafka.read_back(topic);
    sidelog.kill9().await;

    let mut by_id: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in &records {
        by_id.entry(r.id()).or_default().push(r);
    }
    let missing: Vec<&String> = log
        .acked
        .keys()
        .filter(|id| !by_id.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acked messages missing from the topic: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    for (id, copies) in &by_id {
        let sent = log
            .sent
            .get(*id)
            .unwrap_or_else(|| panic!("a record nobody sent: {id}"));
        for r in copies {
            assert_eq!(
                r.value.as_bytes(),
                &sent[..],
                "{id}: the payload is the value"
            );
            assert!(r.seq() > 0, "{id}: the journal sequence is a header");
        }
    }
    // One partition per key, and within it the order in which sidelog acked them: a producer's
    // messages of one key, each sent after the one before was acked, appear (their first copy)
    // in that order. (Two producers sending the same key at once have no order between them.)
    let mut per_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in &records {
        per_key.entry(r.key.as_str()).or_default().push(r);
    }
    for (key, mut rs) in per_key {
        let partitions: std::collections::BTreeSet<u32> = rs.iter().map(|r| r.partition).collect();
        assert_eq!(
            partitions.len(),
            1,
            "key {key} is in partitions {partitions:?}"
        );
        rs.sort_by_key(|r| r.offset);
        let mut seen = std::collections::HashSet::new();
        let mut firsts: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for r in rs.iter().filter(|r| seen.insert(r.id())) {
            // Ids are "k-<n>"; produce() gives n to producer n % 4, in rising n (the burst's
            // "b-<n>" are one request's, in rising n too).
            let n: u64 = r.id().rsplit('-').next().unwrap().parse().unwrap();
            firsts.entry(n % 4).or_default().push(n);
        }
        for (producer, ns) in firsts {
            assert!(
                ns.windows(2).all(|w| w[0] < w[1]),
                "key {key}, producer {producer}: records out of the order they were acked: {ns:?}"
            );
        }
    }
    eprintln!(
        "progress records {}: {} records in the topic for {} messages, {} producer retries",
        if progress { "on" } else { "off" },
        records.len(),
        by_id.len(),
        log.errors
    );
    let acked = log.acked.len();
    Ok((records, acked))
}

/// Exactly once across sidelog's crashes: with the progress records (the default), every
/// acked message is in the topic once.
pub async fn sigkills_and_a_broker_restart_leave_every_acked_message_once() -> Outcome {
    let (records, _) = through_crashes(true).await?;
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &records {
        *copies.entry(r.id()).or_default() += 1;
    }
    let twice: Vec<(&&str, &usize)> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} messages are in the topic more than once: {:?}",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    Ok(())
}

/// The same run with the progress records switched off (a test-only switch) leaves
/// duplicates: the test above can see them, and the progress records are what keeps them out.
pub async fn without_progress_records_the_same_crashes_leave_duplicates() -> Outcome {
    let (records, messages) = through_crashes(false).await?;
    assert!(
        records.len() > messages,
        "{} records for {messages} messages: no duplicates, so the exactly-once test proves nothing",
        records.len()
    );
    Ok(())
}

/// Two sidecars given one `transactional_id`: the second one's start fences the first, which
/// says so once and stops delivering (its acked messages stay in its journal, nothing is
/// retried in a loop, the second delivers undisturbed); restarted alone, the first delivers
/// its backlog, and the topic holds every message once.
pub async fn a_second_sidecar_with_the_same_transactional_id_fences_the_first() -> Outcome {
    let kafka = Kafka::start().await?;
    let topic = "fenced";
    kafka.create_topic(topic, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "kafka://{}/{topic}?transactional_id=shared&linger_ms=1",
        kafka.bootstrap
    );
    let messages = |prefix: &str, range: std::ops::Range<u32>| -> Vec<_> {
        range
            .map(|i| crate::common::msg(&format!("{prefix}-{i}"), b"x"))
            .collect()
    };
    let mut first = Sidelog::new(&dir.path().join("first"), &["--sink", &sink]);
    first.start().await;
    crate::common::publish(&first, messages("a", 0..50))
        .await
        .unwrap();
    first.wait_summary("backlog inputs", 0).await;

    let mut second = Sidelog::new(&dir.path().join("second"), &["--sink", &sink]);
    second.start().await;
    crate::common::publish(&second, messages("b", 0..10))
        .await
        .unwrap();
    second.wait_summary("backlog inputs", 0).await;

    // Acked (journaled), never delivered: the first has been fenced.
    let acks = crate::common::publish(&first, messages("a", 50..100))
        .await
        .unwrap();
    assert_eq!(acks.len(), 50);
    first
        .wait_log("has taken over", Duration::from_secs(30))
        .await;
    crate::common::publish(&second, messages("b", 10..20))
        .await
        .unwrap();
    second.wait_summary("backlog inputs", 0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summary = first.inspect(&[]).await.unwrap();
    assert_eq!(
        sidelog_testkit::summary_field(&summary, "backlog inputs"),
        50,
        "the fenced sidecar keeps its backlog: {summary}"
    );
    let halts = first.log().matches("has taken over").count();
    assert_eq!(
        halts,
        1,
        "said once, not retried in a loop:\n{}",
        first.log_tail()
    );
    assert!(
        second.log().matches("has taken over").count() == 0,
        "the second goes on: {}",
        second.log_tail()
    );

    // The first alone again: it takes the id back and delivers what it kept.
    second.kill9().await;
    first.kill9().await;
    first.start().await;
    first.wait_summary("backlog inputs", 0).await;
    let records = kafka.read_back(topic);
    let mut ids: Vec<&str> = records.iter().map(Record::id).collect();
    ids.sort_unstable();
    let mut want: Vec<String> = (0..100)
        .map(|i| format!("a-{i}"))
        .chain((0..20).map(|i| format!("b-{i}")))
        .collect();
    want.sort_unstable();
    assert_eq!(ids, want, "every message once");
    first.kill9().await;
    Ok(())
}

/// A cluster that is down when sidelog starts holds the delivery, not the start: sidelog
/// serves and journals, and once Kafka is back the progress topic is made, read back, and
/// everything is delivered once.
pub async fn a_cluster_down_at_start_holds_delivery_not_the_start() -> Outcome {
    let mut kafka = Kafka::start().await?;
    kafka.create_topic("later", 1).await;
    kafka.kill();
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("kafka://{}/later", kafka.bootstrap);
    let mut sidelog = Sidelog::new(&dir.path().join("data"), &["--sink", &sink]);
    sidelog.start().await;
    let messages = (0..50)
        .map(|i| crate::common::msg(&format!("later-{i}"), b"held"))
        .collect();
    let acks = crate::common::publish(&sidelog, messages).await.unwrap();
    assert_eq!(acks.len(), 50);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let summary = sidelog.inspect(&[]).await.unwrap();
    assert_eq!(
        sidelog_testkit::summary_field(&summary, "backlog inputs"),
        50,
        "{summary}"
    );
    kafka.resume().await;
    sidelog.wait_summary("backlog inputs", 0).await;
    let mut ids: Vec<String> = kafka
        .read_back("later")
        .iter()
        .map(|r| r.id().to_owned())
        .collect();
    ids.sort_unstable();
    let mut want: Vec<String> = (0..50).map(|i| format!("later-{i}")).collect();
    want.sort_unstable();
    assert_eq!(ids, want);
    sidelog.kill9().await;
    Ok(())
}

/// TLS with the broker's own CA and SASL (SCRAM-SHA-512, and PLAIN) reach a secured listener,
/// and deliver exactly once; a wrong password, or TLS without the CA, fails `--check-config`
/// and the start with what to fix; the password shows nowhere (config, log).
pub async fn tls_and_sasl_reach_a_secured_broker_and_a_wrong_password_is_named() -> Outcome {
    let (kafka, secured, ca) = Kafka::start_secured().await?;
    kafka.create_topic("secured", 1).await;
    let sink = |mechanism: &str, password: &str, with_ca: bool| {
        let tls = if with_ca {
            format!("ca_file={}", ca.display())
        } else {
            "tls=true".to_string()
        };
        format!(
            "kafka://{secured}/secured?{tls}&sasl_mechanism={mechanism}&username=alice&password={password}"
        )
    };
    let check = |sink: String| {
        Command::new(env!("CARGO_BIN_EXE_sidelog"))
            .args(["serve", "--check-config", "--sink", &sink])
            .output()
            .unwrap()
    };
    let out = check(sink("SCRAM-SHA-512", "wrong", true));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("credentials were refused"), "{stderr}");
    let out = check(sink("SCRAM-SHA-512", "alice-secret", false));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("TLS failed"), "{stderr}");
    let out = check(sink("SCRAM-SHA-512", "alice-secret", true));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("has topic secured"), "{stderr}");
    assert!(
        !stdout.contains("alice-secret") && !stderr.contains("alice-secret"),
        "the password is redacted: {stdout}{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sidelog"))
        .args(["serve", "--admin-listen", "off", "--listen"])
        .arg(free_port().to_string())
        .arg("--data-dir")
        .arg(dir.path().join("refused"))
        .args(["--sink", &sink("SCRAM-SHA-512", "wrong", true)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("credentials were refused"), "{stderr}");

    for (n, mechanism) in ["SCRAM-SHA-512", "PLAIN"].into_iter().enumerate() {
        let mut sidelog = Sidelog::new(
            &dir.path().join(mechanism),
            &["--sink", &sink(mechanism, "alice-secret", true)],
        );
        sidelog.start().await;
        let messages = (0..20)
            .map(|i| crate::common::msg(&format!("{mechanism}-{i}"), b"over TLS"))
            .collect();
        crate::common::publish(&sidelog, messages).await.unwrap();
        sidelog.wait_summary("backlog inputs", 0).await;
        assert!(!sidelog.log().contains("alice-secret"), "{}", sidelog.log());
        sidelog.kill9().await;
        let records = kafka.read_back("secured");
        assert_eq!(records.len(), 20 * (n + 1), "{records:?}");
    }
    Ok(())
}

/// A topic that does not exist fails the start, naming it, as `--check-config` does (which
/// also names a cluster that does not answer); a record over the sink's
/// `max_record_bytes` is refused by Kafka and dead-lettered with the reason, not retried.
pub async fn a_missing_topic_fails_the_start_and_a_record_too_large_is_dead_lettered() -> Outcome {
    let kafka = Kafka::start().await?;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_sidelog"))
        .args(["serve", "--admin-listen", "off", "--listen"])
        .arg(free_port().to_string())
        .arg("--data-dir")
        .arg(&data)
        .arg("--sink")
        .arg(format!("kafka://{}/no-such-topic", kafka.bootstrap))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the Kafka topic no-such-topic does not exist"),
        "{stderr}"
    );

    // --check-config asks the cluster too: the missing topic, and a host nothing answers on.
    let check = |sink: String| {
        Command::new(env!("CARGO_BIN_EXE_sidelog"))
            .args(["serve", "--check-config", "--sink", &sink])
            .output()
            .unwrap()
    };
    let out = check(format!("kafka://{}/no-such-topic", kafka.bootstrap));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the Kafka topic no-such-topic does not exist"),
        "{stderr}"
    );
    let out = check(format!("kafka://127.0.0.1:{}/t", free_port().port()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not answer within 5 s"), "{stderr}");

    kafka.create_topic("small", 1).await;
    let out = check(format!("kafka://{}/small", kafka.bootstrap));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("has topic small (1 partitions)"));
    let sink = format!("kafka://{}/small?max_record_bytes=2000", kafka.bootstrap);
    let mut sidelog = Sidelog::new(&data, &["--sink", &sink]);
    sidelog.start().await;
    let acks = crate::common::publish(
        &sidelog,
        vec![
            crate::common::msg("fits", b"small"),
            crate::common::msg("too-large", &[b'x'; 5000]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(acks.len(), 2);
    sidelog
        .wait_log("dead-letter", Duration::from_secs(30))
        .await;
    let inspect = Command::new(env!("CARGO_BIN_EXE_sidelog"))
        .args(["inspect", "--json", "--admin"])
        .arg(format!(
            "http://{}",
            sidelog.admin.expect("the harness serves admin")
        ))
        .arg("dead-letters")
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&inspect.stdout);
    assert!(listed.contains("too-large"), "{listed}");
    assert!(
        listed.to_lowercase().contains("too large"),
        "the reason: {listed}"
    );
    let records = kafka.read_back("small");
    assert!(records.iter().any(|r| r.id() == "fits"), "{records:?}");
    assert!(!records.iter().any(|r| r.id() == "too-large"));
    sidelog.kill9().await;
    Ok(())
}
