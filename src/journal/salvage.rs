//! Reading what is left of a journal file that does not open normally, without writing to it
//! (`sidelog inspect` on a damaged file).

use std::path::Path;

use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};

use super::record::decode_record;
use super::tables::{DEAD_LETTERS, DEDUP, INPUTS, OUTPUTS};
use crate::proto::journal::{DeadLetter, InputEntry, OutputEntry};

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
/// redb's read-only open (no repair), then each table in key order up to its first unreadable
/// entry. Fails when even that open fails (a file that needs repair, or a damaged header).
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
    let mut out = Vec::new();
    let records: [(&'static str, TableDefinition<u64, &[u8]>); 3] = [
        ("inputs", INPUTS),
        ("outputs", OUTPUTS),
        ("dead_letters", DEAD_LETTERS),
    ];
    for (name, def) in records {
        let mut t = SalvagedTable {
            table: name,
            readable: 0,
            error: None,
        };
        let result = (|| -> std::result::Result<(), String> {
            let table = txn.open_table(def).map_err(|e| e.to_string())?;
            for row in table.iter().map_err(|e| e.to_string())? {
                let (k, v) = row.map_err(|e| e.to_string())?;
                let decoded = match name {
                    "inputs" => decode_record::<InputEntry>(name, k.value(), v.value()).map(drop),
                    "outputs" => decode_record::<OutputEntry>(name, k.value(), v.value()).map(drop),
                    _ => decode_record::<DeadLetter>(name, k.value(), v.value()).map(drop),
                };
                decoded.map_err(|e| e.to_string())?;
                t.readable += 1;
            }
            Ok(())
        })();
        t.error = result.err();
        out.push(t);
    }
    let mut t = SalvagedTable {
        table: "dedup",
        readable: 0,
        error: None,
    };
    let result = (|| -> std::result::Result<(), String> {
        let table = txn.open_table(DEDUP).map_err(|e| e.to_string())?;
        for row in table.iter().map_err(|e| e.to_string())? {
            row.map_err(|e| e.to_string())?;
            t.readable += 1;
        }
        Ok(())
    })();
    t.error = result.err();
    out.push(t);
    Ok(out)
}
