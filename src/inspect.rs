//! `sidelog inspect`: what a journal holds, read with the server stopped.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use crate::clock::SystemClock;
use crate::journal::{Journal, JournalConfig, Seq};

/// Prints a summary of the journal in `data_dir` and its first dead letters.
pub async fn run(data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join(crate::journal::FILE_NAME);
    anyhow::ensure!(
        path.exists(),
        "no journal at {} (--data-dir)",
        path.display()
    );
    let journal = Journal::open(
        data_dir,
        JournalConfig {
            commit_max_records: 1,
            sync_interval_ms: 1000,
            dedup_window_count: u64::MAX,
            dedup_window_age_ms: i64::MAX,
            max_file_bytes: None,
            ..JournalConfig::default()
        },
        Arc::new(SystemClock),
    )
    .with_context(|| format!("cannot open {}", path.display()))?;
    let s = journal.summary().await?;
    println!("journal       {}", path.display());
    println!("inputs        {}", s.inputs);
    println!("outputs       {}", s.outputs);
    println!("backlog bytes {}", s.backlog_bytes);
    println!("dead letters  {}", s.dead_letters);
    println!("dedup ids     {}", s.dedup_ids);
    println!("next seq      {}", s.next_seq);
    for d in journal.scan_dead_letters(Seq(0), 20).await? {
        let id = d.letter.message.as_ref().map_or("", |m| m.id.as_str());
        println!(
            "dead letter {} id={} attempts={} reason={}",
            d.seq.0, id, d.letter.attempts, d.letter.reason
        );
    }
    Ok(())
}
