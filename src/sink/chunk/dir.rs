//! The built-in file sink's store: chunk files in a directory.
//!
//! A chunk is written to `DIR/.tmp-<name>`, fsynced, renamed to `DIR/<name>` and the directory
//! fsynced; only then are the messages in it acked. So a visible chunk is always complete, and
//! a crash leaves at most a `.tmp-` file, which is removed on start (its messages were never
//! acked and are re-sent). Names are `chunk-<opened unix ms>-<process nonce>-<counter>.sdlc`:
//! they sort by time and never collide across restarts.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use super::{ChunkFormat, ChunkInfo, ChunkSettings, ChunkSink, ChunkStore};
use crate::runtime::{BoxFuture, Entropy, SharedClock};
use crate::sink::{SinkError, SinkSetupError};

/// Settings of the file sink.
#[derive(Debug, Clone)]
pub struct FileSinkConfig {
    pub dir: PathBuf,
    pub chunk_max_bytes: u64,
    pub chunk_max_age_ms: u64,
    pub format: ChunkFormat,
}

/// The built-in sink's store: chunk files in a directory. A chunk is written to
/// `DIR/.tmp-<name>`, fsynced, renamed to `DIR/<name>`, and the directory fsynced.
#[derive(Debug, Clone)]
pub struct ChunkDir {
    dir: PathBuf,
}

impl ChunkDir {
    /// Creates the directory and removes chunks a crash left half-written (their messages were
    /// never acked and are re-sent).
    pub fn open(dir: &Path) -> std::io::Result<ChunkDir> {
        crate::runtime::create_dir_all_durably(dir)?;
        // Said at start, not at the first chunk (after messages were acked): the directory
        // must take files.
        let probe = dir.join(format!(".tmp-probe-{}", std::process::id()));
        std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot write a file in it: {e}"))
            })?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                info!(file = %entry.path().display(), "removing a chunk left unfinished by a crash; its messages are re-sent");
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(ChunkDir {
            dir: dir.to_owned(),
        })
    }
}

impl ChunkStore for ChunkDir {
    fn name(&self, info: &ChunkInfo) -> String {
        format!(
            "chunk-{:013}-{:08x}-{:06}.{}",
            info.opened_at_ms,
            info.nonce,
            info.counter,
            info.format.extension()
        )
    }

    fn put(&self, name: String, body: Vec<u8>) -> BoxFuture<'static, Result<(), SinkError>> {
        let dir = self.dir.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let tmp_path = dir.join(format!(".tmp-{name}"));
                let final_path = dir.join(&name);
                let result = (|| -> std::io::Result<()> {
                    let mut file = File::create(&tmp_path)?;
                    file.write_all(&body)?;
                    file.sync_all()?;
                    drop(file);
                    std::fs::rename(&tmp_path, &final_path)?;
                    crate::runtime::sync_dir(&dir)
                })();
                result.map_err(|e| {
                    drop(std::fs::remove_file(&tmp_path));
                    SinkError::retry(format!("cannot write chunk {}: {e}", final_path.display()))
                })
            })
            .await
            .map_err(|e| SinkError::retry(format!("chunk writing task failed: {e}")))?
        })
    }
}

/// The built-in file sink: chunks in `config.dir`.
pub struct FileSink;

impl FileSink {
    pub fn start(
        config: FileSinkConfig,
        clock: SharedClock,
        entropy: &Entropy,
    ) -> Result<Arc<ChunkSink>, SinkSetupError> {
        let store = ChunkDir::open(&config.dir).map_err(|e| {
            SinkSetupError::caused(
                format!("cannot use {} for the file sink", config.dir.display()),
                e,
            )
        })?;
        Ok(ChunkSink::start(
            Arc::new(store),
            ChunkSettings {
                max_bytes: config.chunk_max_bytes,
                max_age: Duration::from_millis(config.chunk_max_age_ms),
                format: config.format,
            },
            clock,
            entropy,
        ))
    }
}
