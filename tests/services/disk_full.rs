//! A full disk on a real filesystem: a small tmpfs that `.ci/run` mounts (as root) and names in
//! `SIDELOG_TEST_TMPFS`. The tests here share it, one at a time.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use tonic::Code;

use super::{Missing, Outcome};
use crate::common::{Sidelog, fill_then_resume, free_port, msg, publish, summary_field};

/// The tmpfs is small: two journals in it at once would fill it for each other.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn tmpfs() -> Result<PathBuf, Missing> {
    std::env::var_os("SIDELOG_TEST_TMPFS")
        .map(PathBuf::from)
        .ok_or_else(|| {
            Missing(
                "no small tmpfs: set SIDELOG_TEST_TMPFS to an empty 4-16 MiB tmpfs mount (.ci/run \
                 mounts one when run as root)"
                    .into(),
            )
        })
}

/// The full-journal test of tests/api.rs on a filesystem that really fills up (ENOSPC), with
/// no size limit of sidelog's own.
pub async fn a_full_disk_resumes_by_itself_when_the_sink_returns() -> Outcome {
    let tmpfs = tmpfs()?;
    let _alone = ALONE.lock().await;
    let logs = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir_in(&tmpfs).unwrap();
    // The log stays off the full filesystem. The redo log is allocated in full when sidelog
    // starts (32 MiB by default): 1 MiB of the 6 MiB.
    let sidelog = Sidelog::new(
        &data.path().join("data"),
        &["--journal-wal-bytes", "1048576"],
    )
    .with_log(logs.path().join("sidelog.log"));
    fill_then_resume(sidelog, &[]).await;
    Ok(())
}

/// Another process fills the disk while sidelog runs. The journal keeps taking messages into
/// the pages its file already holds (every page of it has its disk blocks: none is a hole that
/// a first write would need a block for); once those are used, intake is refused as full, and
/// resumes when the space comes back. Every message acked meanwhile survives a SIGKILL.
pub async fn a_disk_filled_by_another_process_leaves_the_journal_its_file() -> Outcome {
    let tmpfs = tmpfs()?;
    let _alone = ALONE.lock().await;
    let logs = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir_in(&tmpfs).unwrap();
    // Nothing listens at the sink: every message stays in the journal.
    let sink = format!("http://{}", free_port());
    let args = [
        "--journal-wal-bytes",
        "1048576",
        "--mode",
        "rbml",
        "--sink",
        &sink,
        "--delivery-max-attempts",
        "1000000",
        // The restart serves before the backlog is delivered (never, here).
        "--replay-policy",
        "interleave",
    ];
    let mut sidelog =
        Sidelog::new(&data.path().join("data"), &args).with_log(logs.path().join("sidelog.log"));
    sidelog.start().await;
    let mut acked = 0u64;
    let mut next = 0;
    let mut one = |size: usize| {
        next += 1;
        vec![msg(&format!("m{next}"), &vec![b'x'; size])]
    };
    // Until the file has grown past its first size: redb doubles it, and the new half is
    // free pages.
    let journal = data.path().join("data").join("journal.redb");
    let first = std::fs::metadata(&journal).unwrap().len();
    while std::fs::metadata(&journal).unwrap().len() == first {
        publish(&sidelog, one(1024)).await.unwrap();
        acked += 1;
    }

    let filler = fill(data.path());
    let mut after_fill = 0u64;
    let refusal = loop {
        match publish(&sidelog, one(1024)).await {
            Ok(_) => after_fill += 1,
            Err(status) => break status,
        }
        assert!(after_fill < 100_000, "the disk never filled");
    };
    acked += after_fill;
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal}");
    // Refused only once the file's pages are used and it must grow: no write into the file
    // failed (a page without its blocks fails as a bare "No space left on device").
    assert!(
        refusal
            .message()
            .contains("storage is full: cannot reserve disk space to grow the journal"),
        "{refusal}; log:\n{}",
        sidelog.log_tail()
    );
    assert!(after_fill > 0, "the journal took nothing on the full disk");

    // Space freed outside sidelog is found at the next try, at most 2 s after the last.
    std::fs::remove_file(&filler).unwrap();
    let freed = tokio::time::Instant::now();
    loop {
        match publish(&sidelog, one(1024)).await {
            Ok(_) => break,
            Err(e) => assert!(
                freed.elapsed() < std::time::Duration::from_secs(10),
                "intake did not resume once the disk had room: {e}; log:\n{}",
                sidelog.log_tail()
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    acked += 1;

    sidelog.kill9().await;
    sidelog.start().await;
    let summary = sidelog.inspect(&[]).await.unwrap();
    assert_eq!(
        summary_field(&summary, "backlog inputs"),
        acked,
        "{summary}"
    );
    sidelog.kill9().await;
    println!("full disk from another process: {after_fill} 1 KiB messages taken after the fill");
    Ok(())
}

/// Writes a file into `dir` until its filesystem has no block left; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    for chunk in [1 << 20, 64 << 10, 4 << 10, 512] {
        let zeros = vec![0u8; chunk];
        while file.write_all(&zeros).is_ok() {}
    }
    // tmpfs takes whole pages: a page that is part-written is taken already.
    path
}
