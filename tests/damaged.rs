//! A damaged journal (truncated, emptied, or overwritten) against the real binary: sidelog
//! refuses to start, names the file and says what to do, and never starts on an empty journal
//! in its place; where redb can still open the file, nothing acknowledged is missing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Sidelog, TestSink, free_port, produce, wait_for_ids};

/// A journal holding a backlog of `n` acked messages (the sink was down), and their ids.
async fn journal_with_backlog(data: &Path, sink: std::net::SocketAddr, n: usize) -> Vec<String> {
    let mut sidelog = Sidelog::new(
        data,
        &["--mode", "rbml", "--sink", &format!("http://{sink}")],
    );
    sidelog.start().await;
    let log = produce(sidelog.url(), "d".into(), 2, n, 10, Duration::ZERO).await;
    assert_eq!(log.acked.len(), n);
    sidelog.kill9().await;
    log.acked.into_keys().collect()
}

/// Runs `serve` on `data` and expects a refusal that names the journal and the way out.
fn assert_refused(data: &Path, sink: std::net::SocketAddr, what: &str) {
    let journal = data.join("journal.redb");
    let before = std::fs::read(&journal).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sidelog"))
        .env("SIDELOG_ADMIN_LISTEN", "127.0.0.1:0")
        .args(["serve", "--mode", "rbml", "--data-dir"])
        .arg(data)
        .args(["--listen", &free_port().to_string()])
        .args(["--sink", &format!("http://{sink}")])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A refusal is immediate; a sidelog still running after 20 s has started on the file.
    let mut polls = 0;
    while child.try_wait().unwrap().is_none() {
        polls += 1;
        if polls > 400 {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            panic!("{what}: sidelog started on a damaged journal:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{what}: exit 0 on a damaged journal:\n{stderr}"
    );
    let named = stderr.contains(&journal.display().to_string());
    assert!(named, "{what}: the file is not named:\n{stderr}");
    let advice = stderr.contains("damaged") && stderr.contains("restore");
    assert!(advice, "{what}: no advice:\n{stderr}");
    // redb's crash repair may have rewritten header bytes before it gave up; what matters is
    // that the file was not replaced by a fresh, empty journal.
    let after = std::fs::read(&journal).unwrap();
    assert!(
        after.len() >= before.len(),
        "{what}: the damaged file was replaced or cut"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidelog"))
        .env("SIDELOG_ADMIN_LISTEN", "127.0.0.1:0")
        .args(["inspect", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{what}: inspect read a damaged journal as fine"
    );
    assert!(
        stderr.contains("damaged"),
        "{what}: inspect says:\n{stderr}"
    );
    // What can still be said of the file: its size and whether redb's header is there.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let size = std::fs::metadata(data.join("journal.redb")).unwrap().len();
    assert!(
        stdout.contains(&format!("file bytes    {size}"))
            && stdout.contains("redb header")
            && stdout.contains("readable      "),
        "{what}: inspect reports:\n{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_emptied_journal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sink = free_port();
    journal_with_backlog(&data, sink, 300).await;
    let journal = data.join("journal.redb");
    let full = std::fs::read(&journal).unwrap();

    for (num, den) in [(1, 4), (1, 2), (3, 4), (9, 10)] {
        std::fs::write(&journal, &full[..full.len() * num / den]).unwrap();
        assert_refused(&data, sink, &format!("truncated to {num}/{den}"));
    }
    std::fs::write(&journal, b"").unwrap();
    assert_refused(&data, sink, "truncated to 0 bytes");
    let mut header_gone = full.clone();
    header_gone[..512].fill(0);
    std::fs::write(&journal, &header_gone).unwrap();
    assert_refused(&data, sink, "header overwritten");
}

/// Garbage over a region in the middle: redb either refuses the file or opens it (the region
/// held no live data); if it opens, every acked message is still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_middle_is_refused_or_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sink_addr = free_port();
    let acked = journal_with_backlog(&data, sink_addr, 300).await;
    let journal = data.join("journal.redb");
    let mut bytes = std::fs::read(&journal).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 8192].fill(0xff);
    std::fs::write(&journal, &bytes).unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidelog"))
        .env("SIDELOG_ADMIN_LISTEN", "127.0.0.1:0")
        .args(["inspect", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    if !out.status.success() {
        assert_refused(&data, sink_addr, "garbage in the middle");
        return;
    }
    let sink = TestSink::default();
    let mut sink_server = sink.start(sink_addr).await;
    let mut sidelog = Sidelog::new(
        &data,
        &["--mode", "rbml", "--sink", &format!("http://{sink_addr}")],
    );
    sidelog.start().await;
    let want = acked.into_iter().collect();
    let missing = wait_for_ids(&sink, &want, Duration::from_secs(30)).await;
    assert!(
        missing.is_empty(),
        "opened a damaged journal and lost {missing:?}"
    );
    sidelog.kill9().await;
    sink_server.stop().await;
}

/// A journal in use by a running sidelog is not a damaged one: the second start says another
/// sidelog holds the data directory, without the damaged-file advice, and the first one is
/// unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_in_use_is_refused_with_the_right_advice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut first = Sidelog::new(&data, &["--mode", "rbml"]);
    first.start().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidelog"))
        .args(["serve", "--admin-listen", "off", "--data-dir"])
        .arg(&data)
        .args(["--listen", &free_port().to_string()])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("another sidelog is running on this data directory"),
        "{stderr}"
    );
    assert!(!stderr.contains("damaged"), "wrong advice: {stderr}");
    assert_eq!(
        first.health().await,
        Some(true),
        "the first one still serves"
    );
    first.kill9().await;
}
