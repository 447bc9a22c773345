//! `sidelog inspect chunk FILE|DIR...`: what the file sink stored, record by record, read from
//! its chunk files (sidelog's record format, `.sdlc`, or Parquet) without a journal or a server.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;

use sidelog::proto::Message;
use sidelog::sink::{CHUNK_MAGIC, list_chunks, parquet, parse_chunk, sequence_of};

/// Prints every record of `paths` (a directory: its sealed chunks, oldest first): as text, or
/// with `json` one JSON object a line (`jq`-friendly).
pub fn print(paths: &[PathBuf], json: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let chunks = list_chunks(path)
                .with_context(|| format!("cannot list the chunks in {}", path.display()))?;
            if chunks.is_empty() {
                tracing::warn!(dir = %path.display(), "no sealed chunk (chunk-*.sdlc or .parquet) in this directory");
            }
            files.extend(chunks);
        } else {
            files.push(path.clone());
        }
    }
    let mut out = std::io::stdout().lock();
    let written = files.iter().try_for_each(|file| -> anyhow::Result<()> {
        let messages = read(file)?;
        if !json {
            writeln!(out, "# {}: {} records", file.display(), messages.len())?;
        }
        for m in &messages {
            if json {
                writeln!(out, "{}", record_json(file, m))?;
            } else {
                write_text(&mut out, m)?;
            }
        }
        Ok(())
    });
    match written {
        // `| head`: the reader has what it wanted.
        Err(e) if broken_pipe(&e) => Ok(()),
        other => other.and_then(|()| Ok(out.flush()?)),
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// The messages of one chunk file, by its first bytes: sidelog's record format or Parquet.
fn read(file: &Path) -> anyhow::Result<Vec<Message>> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    if bytes.starts_with(b"PAR1") {
        parquet::decode(bytes)
            .with_context(|| format!("{}: not a Parquet chunk of sidelog's", file.display()))
    } else if bytes.starts_with(CHUNK_MAGIC.as_slice()) {
        parse_chunk(&bytes).with_context(|| format!("{}: a damaged chunk", file.display()))
    } else {
        anyhow::bail!(
            "{}: not a chunk of sidelog's file sink (neither its record format nor Parquet)",
            file.display()
        )
    }
}

fn record_json(file: &Path, m: &Message) -> serde_json::Value {
    serde_json::json!({
        "chunk": file.file_name().map(|n| n.to_string_lossy()),
        "id": m.id,
        "key": m.key,
        "sequence": sequence_of(m),
        "event_time_ms": (m.event_time_ms != 0).then_some(m.event_time_ms),
        "headers": m.headers,
        "payload_text": std::str::from_utf8(&m.payload).ok(),
        "payload_base64": base64::engine::general_purpose::STANDARD.encode(&m.payload),
    })
}

/// One record as text: a line of its fields, then its payload (text, escaped where it is not
/// printable; base64 when it is not UTF-8).
fn write_text(out: &mut impl std::io::Write, m: &Message) -> std::io::Result<()> {
    let sequence = sequence_of(m).map_or_else(|| "-".to_owned(), |s| s.to_string());
    write!(out, "sequence={sequence} id={} key={:?}", m.id, m.key)?;
    if m.event_time_ms != 0 {
        match chrono::DateTime::from_timestamp_millis(m.event_time_ms) {
            Some(t) => write!(
                out,
                " event_time={}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )?,
            None => write!(out, " event_time_ms={}", m.event_time_ms)?,
        }
    }
    for (name, value) in m
        .headers
        .iter()
        .filter(|(n, _)| *n != sidelog::sink::SEQ_HEADER)
    {
        write!(out, " {name}={value:?}")?;
    }
    match std::str::from_utf8(&m.payload) {
        Ok(text) => writeln!(out, "\n  {}", printable(text)),
        Err(_) => writeln!(
            out,
            "\n  base64:{}",
            base64::engine::general_purpose::STANDARD.encode(&m.payload)
        ),
    }
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`), so one payload is one line.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
