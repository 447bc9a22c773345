//! Reading what is left of a journal file that does not open normally, without writing to it
//! (`sidelog inspect` on a damaged file).

use std::path::Path;

use redb::{ReadTransaction, ReadableDatabase as _, ReadableTable as _};

use super::block::{self, Head, Kind};
use super::idlog;
use super::record::decode_record;
use super::tables::{BLOCKS, DEAD_LETTERS, DEDUP_LOG, HEADS};
use sidelog_proto::journal::{DeadLetter, InputEntry, OutputEntry};

/// What can still be read of one table of a damaged journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalvagedTable {
    pub table: &'static str,
    /// Entries read (and, for records, decoded) before the first failure.
    pub readable: u64,
    /// Why reading stopped early, if it did.
    pub error: Option<String>,
}

/// Reads what it can of a journal file that does not open normally, without writing to it:
/// redb's read-only open (no repair), then the live inputs and outputs block by block, the
/// dead letters and the dedup window, each up to its first unreadable entry. Fails when even
/// that open fails (a file that needs repair, or a damaged header).
pub fn salvage(path: &Path) -> std::result::Result<Vec<SalvagedTable>, String> {
    let db = redb::Builder::new()
        .open_read_only(path)
        .map_err(|e| match e {
            redb::DatabaseError::RepairAborted => {
                "the file was not closed cleanly and needs redb's repair, which a read-only look \
                 does not do"
                    .to_owned()
            }
            e => e.to_string(),
        })?;
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let mut inputs = SalvagedTable::new("inputs");
    let mut outputs = SalvagedTable::new("outputs");
    if let Err(e) = entries(&txn, &mut inputs.readable, &mut outputs.readable) {
        inputs.error = Some(e.clone());
        outputs.error = Some(e);
    }
    let mut dead = SalvagedTable::new("dead_letters");
    dead.error = (|| -> std::result::Result<(), String> {
        let table = txn.open_table(DEAD_LETTERS).map_err(|e| e.to_string())?;
        for row in table.iter().map_err(|e| e.to_string())? {
            let (k, v) = row.map_err(|e| e.to_string())?;
            decode_record::<DeadLetter>("dead_letters", k.value(), v.value())
                .map_err(|e| e.to_string())?;
            dead.readable += 1;
        }
        Ok(())
    })()
    .err();
    let mut dedup = SalvagedTable::new("dedup");
    dedup.error = (|| -> std::result::Result<(), String> {
        let table = txn.open_table(DEDUP_LOG).map_err(|e| e.to_string())?;
        let mut ids = Vec::new();
        for row in table.iter().map_err(|e| e.to_string())? {
            let (k, v) = row.map_err(|e| e.to_string())?;
            idlog::read(k.value(), v.value(), &mut ids).map_err(|e| e.to_string())?;
            dedup.readable = ids.len() as u64;
        }
        Ok(())
    })()
    .err();
    Ok(vec![inputs, outputs, dead, dedup])
}

impl SalvagedTable {
    fn new(table: &'static str) -> Self {
        SalvagedTable {
            table,
            readable: 0,
            error: None,
        }
    }
}

/// Counts the live inputs and outputs that decode, block by block, until the first failure.
fn entries(
    txn: &ReadTransaction,
    inputs: &mut u64,
    outputs: &mut u64,
) -> std::result::Result<(), String> {
    let heads = txn.open_table(HEADS).map_err(|e| e.to_string())?;
    let blocks = txn.open_table(BLOCKS).map_err(|e| e.to_string())?;
    for row in heads.iter().map_err(|e| e.to_string())? {
        let (k, v) = row.map_err(|e| e.to_string())?;
        let first = k.value();
        let head = Head::decode(first, v.value()).map_err(|e| e.to_string())?;
        let block = blocks
            .get(first)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the block of head {first} is missing"))?;
        for entry in block::entries(first, block.value()) {
            let entry = entry.map_err(|e| e.to_string())?;
            match head.kind(entry.seq) {
                Kind::Input => {
                    decode_record::<InputEntry>("blocks", entry.seq, entry.record)
                        .map_err(|e| e.to_string())?;
                    *inputs += 1;
                }
                Kind::Output => {
                    decode_record::<OutputEntry>("blocks", entry.seq, entry.record)
                        .map_err(|e| e.to_string())?;
                    *outputs += 1;
                }
                Kind::Gone => {}
            }
        }
    }
    Ok(())
}
