//! The chunk format (stable; see the README):
//!
//! ```text
//! chunk    = magic record*
//! magic    = "SLCHUNK" 0x01                      8 bytes: format name and version 1
//! record   = len:u32le crc:u32le body[len]
//! body     = protobuf sidelog.v1.Message         its headers carry "sidelog-seq"
//! crc      = CRC-32 (IEEE, as zlib's crc32) of body
//! ```

use std::path::{Path, PathBuf};

use prost::Message as _;

use crate::proto::Message;
use crate::sink::SinkError;

/// The first bytes of every chunk file.
pub const CHUNK_MAGIC: &[u8; 8] = b"SLCHUNK\x01";

/// Appends one chunk record (`len crc body`) for `message` to `out`.
pub fn encode_chunk_record(message: &Message, out: &mut Vec<u8>) -> Result<(), SinkError> {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    message
        .encode(out)
        .expect("encoding into a Vec cannot run out of space");
    let body = &out[start + 8..];
    let len = u32::try_from(body.len()).map_err(|_| SinkError::refused("message over 4 GiB"))?;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Errors reading a chunk file.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a sidelog chunk (bad magic)")]
    BadMagic,
    #[error("record {index} at byte {offset}: {reason}")]
    BadRecord {
        index: usize,
        offset: usize,
        reason: String,
    },
}

/// Reads every message of a chunk file, checking each record's CRC.
pub fn read_chunk(path: &Path) -> Result<Vec<Message>, ChunkError> {
    parse_chunk(&std::fs::read(path)?)
}

/// Every message of a chunk's bytes (a file, an object), checking each record's CRC.
pub fn parse_chunk(bytes: &[u8]) -> Result<Vec<Message>, ChunkError> {
    let body = bytes
        .strip_prefix(CHUNK_MAGIC.as_slice())
        .ok_or(ChunkError::BadMagic)?;
    let mut messages = Vec::new();
    let mut rest = body;
    let mut offset = CHUNK_MAGIC.len();
    while !rest.is_empty() {
        let bad = |reason: &str| ChunkError::BadRecord {
            index: messages.len(),
            offset,
            reason: reason.to_owned(),
        };
        if rest.len() < 8 {
            return Err(bad("truncated record header"));
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let record = rest
            .get(8..8 + len)
            .ok_or_else(|| bad("truncated record body"))?;
        if crc32fast::hash(record) != crc {
            return Err(bad("CRC mismatch"));
        }
        messages.push(Message::decode(record).map_err(|e| bad(&e.to_string()))?);
        rest = &rest[8 + len..];
        offset += 8 + len;
    }
    Ok(messages)
}

/// The sealed chunk files in `dir`, in name (time) order.
pub fn list_chunks(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut chunks: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("chunk-") && (n.ends_with(".sdlc") || n.ends_with(".parquet"))
            })
        })
        .collect();
    chunks.sort();
    Ok(chunks)
}
