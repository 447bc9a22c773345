//! The object-storage sink against a real S3-compatible server: `moto_server` (PyPI
//! `moto[server]`), started here on loopback. `.ci/run` installs it into `target/moto-venv`;
//! `SIDELOG_TEST_MOTO` may name another `moto_server`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{Missing, Outcome, s3_proxy};
use crate::common::{self, Sidelog, free_port, poll_until, produce};
use futures_util::StreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore as _, ObjectStoreExt as _};
use sidelog::proto::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn moto_server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SIDELOG_TEST_MOTO") {
        return Some(path.into());
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/moto-venv/bin/moto_server");
    if venv.exists() {
        return Some(venv);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("moto_server"))
        .find(|p| p.exists())
}

struct Moto {
    addr: SocketAddr,
    _child: tokio::process::Child,
}

impl Moto {
    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn client(&self, bucket: &str) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .build()
            .expect("an S3 client for moto")
    }

    /// Creates a bucket (moto takes an unsigned PUT).
    async fn create_bucket(&self, bucket: &str) {
        let mut conn = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let request = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        );
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}

/// moto takes any credentials, but the S3 client wants some.
fn with_moto_credentials(sidelog: Sidelog) -> Sidelog {
    sidelog
        .with_env("AWS_ACCESS_KEY_ID", "test")
        .with_env("AWS_SECRET_ACCESS_KEY", "test")
}

async fn moto() -> Result<Moto, Missing> {
    let Some(binary) = moto_server_binary() else {
        return Err(Missing(
            "no moto_server (pip install 'moto[server]', or set SIDELOG_TEST_MOTO; .ci/run \
             installs it into target/moto-venv)"
                .into(),
        ));
    };
    let addr = free_port();
    let child = tokio::process::Command::new(&binary)
        .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "moto_server did not listen on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Moto {
        addr,
        _child: child,
    })
}

/// Every object under `prefix`: its name, ETag and messages (each parsed whole, CRCs checked).
async fn read_back(store: &AmazonS3, prefix: &str) -> Vec<(String, String, Vec<Message>)> {
    let metas: Vec<_> = store
        .list(Some(&ObjectPath::from(prefix)))
        .collect::<Vec<_>>()
        .await;
    let mut objects = Vec::new();
    for meta in metas {
        let meta = meta.expect("listing the bucket");
        let bytes = store
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let messages = sidelog::sink::parse_chunk(&bytes)
            .unwrap_or_else(|e| panic!("object {} is not a whole chunk: {e}", meta.location));
        objects.push((
            meta.location.to_string(),
            meta.e_tag.unwrap_or_default(),
            messages,
        ));
    }
    objects
}

/// Each id's number of copies across the objects.
fn copies(objects: &[(String, String, Vec<Message>)]) -> BTreeMap<String, u32> {
    let mut n = BTreeMap::new();
    for (_, _, messages) in objects {
        for m in messages {
            *n.entry(m.id.clone()).or_default() += 1;
        }
    }
    n
}

/// Names are `raw/YYYY/MM/DD/HH/<first-seq>-<last-seq>.sdlc` and hold only sequences in range.
fn check_names(objects: &[(String, String, Vec<Message>)]) {
    for (name, _, messages) in objects {
        let parts: Vec<&str> = name.split('/').collect();
        assert_eq!(parts.len(), 6, "{name}");
        assert_eq!(parts[0], "raw", "{name}");
        for (part, len) in parts[1..5].iter().zip([4, 2, 2, 2]) {
            assert!(
                part.len() == len && part.chars().all(|c| c.is_ascii_digit()),
                "{name}"
            );
        }
        let (first, last) = parts[5]
            .strip_suffix(".sdlc")
            .and_then(|s| s.split_once('-'))
            .unwrap_or_else(|| panic!("{name}"));
        let (first, last): (u64, u64) = (first.parse().unwrap(), last.parse().unwrap());
        assert!(!messages.is_empty(), "{name} is empty");
        for m in messages {
            let seq: u64 = m.headers["sidelog-seq"].parse().unwrap();
            assert!((first..=last).contains(&seq), "{name} holds seq {seq}");
        }
    }
}

pub async fn sigkills_during_uploads_lose_nothing_and_every_object_is_whole() -> Outcome {
    let moto = moto().await?;
    moto.create_bucket("logs").await;
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("s3://logs/raw?endpoint={}", moto.endpoint());
    let mut sidelog = with_moto_credentials(Sidelog::new(
        &dir.path().join("data"),
        &[
            "--mode",
            "hml",
            "--sink",
            &sink,
            "--file-sink-chunk-max-age-ms",
            "100",
            "--delivery-backoff-max-ms",
            "200",
            "--delivery-max-attempts",
            "1000000",
            // Completion marks stay un-synced, and without the redo log a SIGKILL loses them
            // (with it, they are in the page cache): the last SIGKILL makes the restart re-send
            // what was uploaded already.
            "--journal-sync-interval-ms",
            "60000",
            "--journal-wal-bytes",
            "0",
        ],
    ));
    sidelog.start().await;

    let producers = tokio::spawn(produce(
        sidelog.url(),
        "s3".into(),
        4,
        3000,
        10,
        Duration::from_millis(20),
    ));
    // Killed twice while uploads go on: once the bucket holds 300, then 1,200 messages.
    let store = moto.client("logs");
    for at in [300usize, 1200] {
        poll_until(
            Duration::from_secs(60),
            || format!("the bucket never held {at} messages"),
            || async {
                let held: usize = read_back(&store, "raw")
                    .await
                    .iter()
                    .map(|(_, _, m)| m.len())
                    .sum();
                (held >= at || producers.is_finished()).then_some(())
            },
        )
        .await;
        sidelog.kill9().await;
        sidelog.start().await;
    }
    let log = producers.await.unwrap();
    let acked: HashSet<String> = log.acked.keys().cloned().collect();
    assert_eq!(acked.len(), 3000);

    poll_until(
        Duration::from_secs(60),
        || {
            format!(
                "acked messages never reached the bucket; log:\n{}",
                sidelog.log_tail()
            )
        },
        || async {
            let have: HashSet<String> = copies(&read_back(&store, "raw").await)
                .into_keys()
                .collect();
            acked.is_subset(&have).then_some(())
        },
    )
    .await;
    // Uploaded and acked, but the acks' marks were not yet durable: the restart sends again.
    let replays = sidelog.log().matches("replaying the journal").count();
    sidelog.kill9().await;
    sidelog.start().await;
    assert_eq!(
        sidelog.log().matches("replaying the journal").count(),
        replays + 1,
        "the last restart had nothing to re-send; log:\n{}",
        sidelog.log_tail()
    );
    let summary = sidelog.wait_summary("backlog inputs", 0).await;
    assert_eq!(common::summary_field(&summary, "dead letters"), 0);

    let objects = read_back(&store, "raw").await;
    check_names(&objects);
    let copies = copies(&objects);
    let unknown: Vec<&String> = copies.keys().filter(|id| !acked.contains(*id)).collect();
    assert!(unknown.is_empty(), "never published: {unknown:?}");
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !copies.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "acked but not in the bucket: {missing:?}"
    );
    // The re-sent ones were found in the bucket before the replay and acked, not uploaded
    // again: every acked message is there exactly once.
    assert!(
        sidelog
            .log()
            .contains("found replayed messages already stored"),
        "{}",
        sidelog.log_tail()
    );
    let duplicated: Vec<(&String, &u32)> = copies.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "{} objects; {} of {} messages in more than one object",
        objects.len(),
        duplicated.len(),
        acked.len()
    );
    assert!(duplicated.is_empty(), "stored twice: {duplicated:?}");
    // Read back with the documented rule (drop a repeated sidelog-seq), every acked message is
    // there exactly once: one sequence per id, and one id per sequence.
    let mut by_seq: BTreeMap<String, String> = BTreeMap::new();
    for (_, _, messages) in &objects {
        for m in messages {
            let seq = m.headers["sidelog-seq"].clone();
            let previous = by_seq.insert(seq.clone(), m.id.clone());
            assert!(
                previous.is_none_or(|p| p == m.id),
                "sequence {seq} names two messages"
            );
        }
    }
    assert_eq!(by_seq.len(), acked.len(), "one sequence per acked message");
    Ok(())
}

pub async fn a_large_chunk_is_uploaded_in_parts_and_read_back_whole() -> Outcome {
    let moto = moto().await?;
    moto.create_bucket("big").await;
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("s3://big/raw?endpoint={}", moto.endpoint());
    let mut sidelog = with_moto_credentials(Sidelog::new(
        &dir.path().join("data"),
        &[
            "--mode",
            "rbml",
            "--sink",
            &sink,
            "--file-sink-chunk-max-age-ms",
            "3000",
        ],
    ));
    sidelog.start().await;
    let mut client = sidelog.client().await;
    let payload = vec![7u8; 1_000_000];
    let mut ids = HashSet::new();
    for i in 0..20 {
        let id = format!("big-{i}");
        let request = sidelog::proto::PublishRequest {
            messages: vec![Message {
                id: id.clone(),
                payload: payload.clone().into(),
                ..Default::default()
            }],
        };
        client.publish(request).await.unwrap();
        ids.insert(id);
    }
    let store = moto.client("big");
    let objects = poll_until(
        Duration::from_secs(60),
        || format!("the chunk never arrived; log:\n{}", sidelog.log_tail()),
        || async {
            let objects = read_back(&store, "raw").await;
            (copies(&objects).len() == ids.len()).then_some(objects)
        },
    )
    .await;
    check_names(&objects);
    assert_eq!(objects.len(), 1, "one chunk of 20 MB");
    let (name, etag, messages) = &objects[0];
    // S3 gives a multipart object an ETag of "<md5 of md5s>-<parts>".
    assert!(
        etag.trim_matches('"').ends_with("-3"),
        "{name}: ETag {etag} is not of a 3-part upload"
    );
    assert!(messages.iter().all(|m| m.payload.len() == 1_000_000));
    Ok(())
}

pub async fn parquet_objects_hold_every_acked_message_across_a_sigkill() -> Outcome {
    let moto = moto().await?;
    moto.create_bucket("columns").await;
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "s3://columns/raw?endpoint={}&format=parquet",
        moto.endpoint()
    );
    let mut sidelog = with_moto_credentials(Sidelog::new(
        &dir.path().join("data"),
        &[
            "--mode",
            "sbml",
            "--sink",
            &sink,
            "--file-sink-chunk-max-age-ms",
            "100",
            "--delivery-max-attempts",
            "1000000",
        ],
    ));
    sidelog.start().await;
    let producers = tokio::spawn(produce(
        sidelog.url(),
        "pq".into(),
        2,
        1000,
        10,
        Duration::from_millis(10),
    ));
    // Killed once uploads are under way: the first object is in the bucket.
    let store = moto.client("columns");
    common::poll_until(
        Duration::from_secs(30),
        || "no Parquet object was ever uploaded".into(),
        || async {
            let listed: Vec<_> = store.list(Some(&ObjectPath::from("raw"))).collect().await;
            (!listed.is_empty()).then_some(())
        },
    )
    .await;
    sidelog.kill9().await;
    sidelog.start().await;
    let acked: HashSet<String> = producers.await.unwrap().acked.into_keys().collect();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut rows = Vec::new();
        let metas: Vec<_> = store
            .list(Some(&ObjectPath::from("raw")))
            .collect::<Vec<_>>()
            .await;
        for meta in metas {
            let meta = meta.unwrap();
            assert!(
                meta.location.as_ref().ends_with(".parquet"),
                "{}",
                meta.location
            );
            let bytes = store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            rows.extend(
                sidelog::sink::parquet::ids_and_sequences(bytes.to_vec())
                    .unwrap_or_else(|e| panic!("{} is not whole Parquet: {e}", meta.location)),
            );
        }
        let ids: HashSet<String> = rows.iter().map(|(id, _)| id.clone()).collect();
        assert!(
            ids.is_subset(&acked),
            "never published: {:?}",
            ids.difference(&acked)
        );
        assert!(
            rows.iter().all(|(_, seq)| *seq > 0),
            "every row has its sequence"
        );
        if ids == acked {
            // Exactly once: the replay read back what the bucket held before re-sending.
            let mut copies: HashMap<&str, u32> = HashMap::new();
            let mut seqs: HashSet<u64> = HashSet::new();
            for (id, seq) in &rows {
                *copies.entry(id.as_str()).or_default() += 1;
                assert!(seqs.insert(*seq), "sequence {seq} in two rows");
            }
            let twice: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
            assert!(twice.is_empty(), "rows stored twice: {twice:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} acked messages never reached the bucket; log:\n{}",
            acked.difference(&ids).count(),
            sidelog.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// A bucket behind the fault proxy, and a started rbml sidelog whose object sink goes through
/// it, rolling chunks after `chunk_age_ms`. The temporary directory lives as long as sidelog.
async fn behind_the_proxy(
    moto: &Moto,
    bucket: &str,
    chunk_age_ms: &str,
    faults: std::sync::Arc<s3_proxy::Faults>,
) -> (Sidelog, tempfile::TempDir) {
    moto.create_bucket(bucket).await;
    let proxy = s3_proxy::start(moto.addr, faults).await;
    let dir = tempfile::tempdir().unwrap();
    let mut sidelog = with_moto_credentials(Sidelog::new(
        &dir.path().join("data"),
        &[
            "--mode",
            "rbml",
            "--sink",
            &format!("s3://{bucket}/raw?endpoint={proxy}"),
            "--file-sink-chunk-max-age-ms",
            chunk_age_ms,
        ],
    ));
    sidelog.start().await;
    (sidelog, dir)
}

/// An upload whose answer is lost after the object was stored (a timeout, a dropped
/// connection) is checked with HEAD: the object is there, whole, so the batch is not uploaded
/// again and no message is stored twice.
pub async fn a_lost_upload_answer_is_checked_with_head_and_nothing_is_stored_twice() -> Outcome {
    let moto = moto().await?;
    let faults = std::sync::Arc::new(s3_proxy::Faults::default());
    // The first attempt and the client's two quick retries all lose their answers.
    faults
        .lose_put_answers
        .store(3, std::sync::atomic::Ordering::SeqCst);
    let (mut sidelog, _dir) = behind_the_proxy(&moto, "lossy", "100", faults.clone()).await;
    let batch: Vec<Message> = (0..50)
        .map(|i| common::msg(&format!("lost-answer-{i}"), b"payload"))
        .collect();
    let ids: HashSet<String> = batch.iter().map(|m| m.id.clone()).collect();
    common::publish(&sidelog, batch).await.unwrap();
    let store = moto.client("lossy");
    let objects = poll_until(
        Duration::from_secs(30),
        || format!("the messages never arrived; log:\n{}", sidelog.log_tail()),
        || async {
            let objects = read_back(&store, "raw").await;
            (copies(&objects).len() == ids.len()).then_some(objects)
        },
    )
    .await;
    sidelog
        .wait_log(
            "the upload's answer was lost but the object is stored",
            Duration::from_secs(10),
        )
        .await;
    let seen = faults.seen();
    assert!(
        seen.iter().any(|l| l.contains("answer lost")),
        "the proxy lost no answer: {seen:?}"
    );
    assert!(
        seen.iter().any(|l| l.starts_with("HEAD ")),
        "sidelog never asked: {seen:?}"
    );
    check_names(&objects);
    let twice: Vec<_> = copies(&objects)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    sidelog.kill9().await;
    Ok(())
}

/// A multipart upload whose part fails is aborted (no parts left behind in the bucket), and
/// the chunk is uploaded again, whole.
pub async fn a_failed_part_aborts_the_multipart_upload() -> Outcome {
    let moto = moto().await?;
    let faults = std::sync::Arc::new(s3_proxy::Faults::default());
    // Part 1 fails on its first attempt and the client's two quick retries.
    faults
        .fail_parts
        .store(3, std::sync::atomic::Ordering::SeqCst);
    let (mut sidelog, _dir) = behind_the_proxy(&moto, "parts", "3000", faults.clone()).await;
    let mut client = sidelog.client().await;
    let mut ids = HashSet::new();
    for i in 0..20 {
        let id = format!("part-{i}");
        let request = sidelog::proto::PublishRequest {
            messages: vec![Message {
                id: id.clone(),
                payload: vec![7u8; 1_000_000].into(),
                ..Default::default()
            }],
        };
        client.publish(request).await.unwrap();
        ids.insert(id);
    }
    let store = moto.client("parts");
    let objects = poll_until(
        Duration::from_secs(60),
        || format!("the chunk never arrived; log:\n{}", sidelog.log_tail()),
        || async {
            let objects = read_back(&store, "raw").await;
            (copies(&objects).len() == ids.len()).then_some(objects)
        },
    )
    .await;
    let seen = faults.seen();
    assert!(
        seen.iter().any(|l| l.contains("failed by the proxy")),
        "no part failed: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("DELETE ") && l.contains("uploadId=")),
        "the failed upload was never aborted: {seen:?}"
    );
    // Nothing in progress is left in the bucket.
    let mut conn = tokio::net::TcpStream::connect(moto.addr).await.unwrap();
    let request = format!(
        "GET /parts?uploads HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        moto.addr
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut listing = String::new();
    conn.read_to_string(&mut listing).await.unwrap();
    assert!(listing.starts_with("HTTP/1.1 200"), "{listing}");
    assert!(
        !listing.contains("<Upload>"),
        "a multipart upload was left in progress: {listing}"
    );
    check_names(&objects);
    let twice: Vec<_> = copies(&objects)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    assert!(
        objects
            .iter()
            .all(|(_, _, messages)| messages.iter().all(|m| m.payload.len() == 1_000_000))
    );
    sidelog.kill9().await;
    Ok(())
}

/// An object sink whose bucket is missing is not refused (it may be made later) but said at
/// start; an existing bucket is confirmed.
pub async fn a_missing_bucket_is_reported_at_start() -> Outcome {
    let moto = moto().await?;
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_port();
    let mut sidelog = with_moto_credentials(Sidelog::new(
        &dir.path().join("data"),
        &[
            "--sink",
            &format!("s3://no-such-bucket/raw?endpoint={}", moto.endpoint()),
            "--metrics-listen",
            &metrics.to_string(),
        ],
    ));
    sidelog.start().await;
    sidelog
        .wait_log("cannot reach the bucket", Duration::from_secs(20))
        .await;
    // And a metric an alert can watch.
    let text = common::scrape(metrics).await;
    assert!(text.contains("\nsidelog_sink_up 0"), "{text}");
    assert!(
        !sidelog.log().contains("<?xml"),
        "S3's XML is not logged whole: {}",
        sidelog.log_tail()
    );
    sidelog.kill9().await;
    moto.create_bucket("there").await;
    let dir = tempfile::tempdir().unwrap();
    let mut sidelog = with_moto_credentials(Sidelog::new(
        &dir.path().join("data"),
        &[
            "--sink",
            &format!("s3://there/raw?endpoint={}", moto.endpoint()),
        ],
    ));
    sidelog.start().await;
    sidelog
        .wait_log("the bucket answers", Duration::from_secs(20))
        .await;
    sidelog.kill9().await;
    Ok(())
}
