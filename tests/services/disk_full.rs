//! A full disk on a real filesystem: a small tmpfs that `.ci/run` mounts (as root) and names in
//! `SIDELOG_TEST_TMPFS`.

use super::{Missing, Outcome};
use crate::common::{Sidelog, fill_then_resume};

/// The full-journal test of tests/api.rs on a filesystem that really fills up (ENOSPC), with
/// no size limit of sidelog's own.
pub async fn a_full_disk_resumes_by_itself_when_the_sink_returns() -> Outcome {
    let tmpfs = std::env::var_os("SIDELOG_TEST_TMPFS").ok_or_else(|| {
        Missing(
            "no small tmpfs: set SIDELOG_TEST_TMPFS to an empty 4-16 MiB tmpfs mount (.ci/run \
             mounts one when run as root)"
                .into(),
        )
    })?;
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
