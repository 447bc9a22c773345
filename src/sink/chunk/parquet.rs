//! Chunks as Parquet files (`format=parquet` on the object-storage sink), for readers that want
//! columns: duckdb, pyarrow, Spark, Athena.
//!
//! One row group per chunk, Snappy-compressed, schema:
//! ```text
//! message sidelog {
//!   required binary id (STRING);
//!   required binary key (STRING);
//!   required binary payload;
//!   required group headers (MAP) { repeated group key_value {
//!     required binary key (STRING); required binary value (STRING); } }
//!   required int64 event_time_ms;
//!   required int64 sequence;          // the journal sequence (sidelog-seq); 0 in mode none
//! }
//! ```

use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader as _, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::RowAccessor as _;
use parquet::schema::parser::parse_message_type;

use crate::proto::Message;

const SCHEMA: &str = "
message sidelog {
  required binary id (STRING);
  required binary key (STRING);
  required binary payload;
  required group headers (MAP) {
    repeated group key_value {
      required binary key (STRING);
      required binary value (STRING);
    }
  }
  required int64 event_time_ms;
  required int64 sequence;
}";

/// Writes one column's values into its column writer.
type WriteColumn<'a> = dyn Fn(&mut parquet::file::writer::SerializedColumnWriter<'_>) -> parquet::errors::Result<()>
    + 'a;

/// Encodes `messages` as one Parquet file.
/// The `headers` map's columns: one definition/repetition level per entry, or one empty slot
/// per message without headers.
struct Headers {
    names: Vec<ByteArray>,
    values: Vec<ByteArray>,
    def: Vec<i16>,
    rep: Vec<i16>,
}

impl Headers {
    fn of(messages: &[Message]) -> Headers {
        let mut h = Headers {
            names: Vec::new(),
            values: Vec::new(),
            def: Vec::new(),
            rep: Vec::new(),
        };
        for m in messages {
            if m.headers.is_empty() {
                h.def.push(0);
                h.rep.push(0);
            }
            for (i, (k, v)) in m.headers.iter().enumerate() {
                h.names.push(ByteArray::from(k.as_str()));
                h.values.push(ByteArray::from(v.as_str()));
                h.def.push(1);
                h.rep.push(i16::from(i > 0));
            }
        }
        h
    }
}

pub fn encode(messages: &[Message]) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let schema = Arc::new(parse_message_type(SCHEMA)?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("sidelog {}", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    let mut out = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut out, schema, props)?;
    let mut group = writer.next_row_group()?;
    let bytes = |f: fn(&Message) -> &[u8]| -> Vec<ByteArray> {
        messages
            .iter()
            .map(|m| ByteArray::from(f(m).to_vec()))
            .collect()
    };
    let Headers {
        names,
        values,
        def,
        rep,
    } = Headers::of(messages);
    let columns: [&WriteColumn<'_>; 7] = [
        &|c| {
            c.typed::<ByteArrayType>()
                .write_batch(&bytes(|m| m.id.as_bytes()), None, None)
                .map(drop)
        },
        &|c| {
            c.typed::<ByteArrayType>()
                .write_batch(&bytes(|m| m.key.as_bytes()), None, None)
                .map(drop)
        },
        &|c| {
            c.typed::<ByteArrayType>()
                .write_batch(&bytes(|m| &m.payload), None, None)
                .map(drop)
        },
        &|c| {
            c.typed::<ByteArrayType>()
                .write_batch(&names, Some(&def), Some(&rep))
                .map(drop)
        },
        &|c| {
            c.typed::<ByteArrayType>()
                .write_batch(&values, Some(&def), Some(&rep))
                .map(drop)
        },
        &|c| {
            let v: Vec<i64> = messages.iter().map(|m| m.event_time_ms).collect();
            c.typed::<Int64Type>().write_batch(&v, None, None).map(drop)
        },
        &|c| {
            let v: Vec<i64> = messages
                .iter()
                .map(|m| crate::sink::sequence_of(m).unwrap_or(0) as i64)
                .collect();
            c.typed::<Int64Type>().write_batch(&v, None, None).map(drop)
        },
    ];
    for write in columns {
        let mut column = group
            .next_column()?
            .expect("the schema has exactly these seven leaf columns");
        write(&mut column)?;
        column.close()?;
    }
    group.close()?;
    writer.close()?;
    Ok(out)
}

/// Every message of a Parquet chunk, as [`encode`] wrote it (the sequence back in the
/// `sidelog-seq` header, as the chunk format keeps it).
pub fn decode(bytes: Vec<u8>) -> Result<Vec<Message>, parquet::errors::ParquetError> {
    use parquet::record::Field;
    let reader = SerializedFileReader::new(bytes::Bytes::from(bytes))?;
    let mut messages = Vec::new();
    for row in reader.get_row_iter(None)? {
        let row = row?;
        let mut headers = std::collections::BTreeMap::new();
        for (name, value) in row.get_map(3)?.entries() {
            if let (Field::Str(name), Field::Str(value)) = (name, value) {
                headers.insert(name.clone(), value.clone());
            }
        }
        let mut message = Message {
            id: row.get_string(0)?.clone(),
            key: row.get_string(1)?.clone(),
            payload: row.get_bytes(2)?.data().to_vec().into(),
            headers,
            event_time_ms: row.get_long(4)?,
        };
        let sequence = row.get_long(5)?;
        if sequence > 0 {
            crate::sink::set_seq_header(&mut message, sequence as u64);
        }
        messages.push(message);
    }
    Ok(messages)
}

/// `(id, sequence)` of every row of a Parquet chunk (for tests and tools).
pub fn ids_and_sequences(
    bytes: Vec<u8>,
) -> Result<Vec<(String, u64)>, parquet::errors::ParquetError> {
    let reader = SerializedFileReader::new(bytes::Bytes::from(bytes))?;
    let mut rows = Vec::new();
    for row in reader.get_row_iter(None)? {
        let row = row?;
        rows.push((row.get_string(0)?.clone(), row.get_long(5)? as u64));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SEQ_HEADER;

    #[test]
    fn messages_round_trip_through_parquet() {
        let messages: Vec<Message> = (0..5)
            .map(|i| Message {
                id: format!("m{i}"),
                key: format!("k{}", i % 2),
                payload: vec![i as u8; i].into(),
                headers: (0..i % 3)
                    .map(|h| (format!("h{h}"), format!("v{h}")))
                    .chain([(SEQ_HEADER.to_owned(), (100 + i).to_string())])
                    .filter(|_| i != 4)
                    .collect(),
                event_time_ms: 1_000 + i as i64,
            })
            .collect();
        let bytes = encode(&messages).unwrap();
        assert_eq!(&bytes[..4], b"PAR1");
        assert_eq!(decode(bytes.clone()).unwrap(), messages, "read back whole");
        let rows = ids_and_sequences(bytes.clone()).unwrap();
        assert_eq!(
            rows,
            vec![
                ("m0".into(), 100),
                ("m1".into(), 101),
                ("m2".into(), 102),
                ("m3".into(), 103),
                ("m4".into(), 0)
            ]
        );
        // Headers as a map, payload as bytes.
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        let rows: Vec<_> = reader
            .get_row_iter(None)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(rows[2].get_map(3).unwrap().len(), 3);
        assert_eq!(rows[4].get_map(3).unwrap().len(), 0);
        assert_eq!(rows[3].get_bytes(2).unwrap().data(), &[3u8; 3]);
        assert_eq!(rows[1].get_long(4).unwrap(), 1_001);
    }
}
