//! Entry points for fuzzing the decoders of outside bytes: pgoutput
//! messages off a replication slot, binary COPY rows off PostgreSQL, and
//! CSV and JSONL files. Each takes arbitrary bytes, drives one decoder the
//! way the agent does and drops the result: a decoder may refuse the bytes,
//! never panic. The coverage-guided fuzzer (`fuzz/`, `tools/fuzz.sh`) and
//! the never-panic property tests call the same functions, so both exercise
//! the same paths.
//!
//! Built only for tests and with the `fuzzing` feature.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use arbor_record::{DatasetKeys, ValueKind};

use crate::keyset::ChunkContext;
use crate::pgbinary::{BinaryContext, Field, close_cut, split_rows};
use crate::pglogical::{LogicalCapture, LogicalOptions};
use crate::{ColumnMapping, FileSource, Format, Mapping, Source};

/// The relation id the fuzzed capture follows.
pub const FUZZ_RELID: u32 = 42;

/// The columns the fuzzed capture and files map, one of each kind, with
/// an integer key `id` first.
pub const COLUMNS: [(&str, ValueKind); 11] = [
    ("id", ValueKind::Integer),
    ("name", ValueKind::Text),
    ("amount", ValueKind::Decimal),
    ("meta", ValueKind::Json),
    ("at", ValueKind::Timestamp),
    ("raw", ValueKind::Bytes),
    ("flag", ValueKind::Bool),
    ("day", ValueKind::Date),
    ("ratio", ValueKind::Float),
    ("uid", ValueKind::Uuid),
    ("code", ValueKind::Integer),
];

/// A mapping keyed by the first column, if its kind can be a key.
fn mapping(columns: &[(&str, ValueKind)]) -> Option<Mapping> {
    let column = |&(name, kind): &(&str, ValueKind)| ColumnMapping::new(name, name, kind);
    Mapping::new(
        columns[..1].iter().map(column).collect(),
        columns[1..].iter().map(column).collect(),
    )
    .ok()
}

/// The mapping of [`COLUMNS`].
fn columns_mapping() -> Mapping {
    mapping(&COLUMNS).expect("the fuzz columns map")
}

/// Feeds pgoutput messages to a capture of relation [`FUZZ_RELID`] mapped
/// by [`COLUMNS`]. The input is a sequence of messages, each a big-endian
/// `u16` length then that many bytes; a short last one takes what is left.
pub fn pgoutput(data: &[u8]) {
    let mut capture = LogicalCapture::new(
        "postgres://fuzz@localhost/db",
        "t",
        false,
        columns_mapping(),
        LogicalOptions {
            slot: "s".into(),
            publication: "p".into(),
            create: false,
            statement_timeout: Duration::from_secs(1),
        },
    );
    capture.relid = Some(FUZZ_RELID);
    let (mut open, mut out) = (None, Vec::new());
    for message in frames(data) {
        let _ = capture.decode(message, &mut open, &mut out);
    }
}

/// Splits `data` into `u16`-length-prefixed frames.
pub fn frames(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.len() < 2 {
            return None;
        }
        let len = u16::from_be_bytes([data[0], data[1]]) as usize;
        let end = (2 + len).min(data.len());
        let frame = &data[2..end];
        data = &data[end..];
        Some(frame)
    })
}

/// Every way a binary COPY column is read, with the kind it yields.
const FIELDS: [(Field, ValueKind); 16] = [
    (Field::Integer(2), ValueKind::Integer),
    (Field::Integer(4), ValueKind::Integer),
    (Field::Integer(8), ValueKind::Integer),
    (Field::IntegerDecimal(8), ValueKind::Decimal),
    (Field::Bool, ValueKind::Bool),
    (Field::Numeric, ValueKind::Decimal),
    (Field::NumericInteger, ValueKind::Integer),
    (Field::Float4, ValueKind::Float),
    (Field::Float8, ValueKind::Float),
    (Field::Text, ValueKind::Text),
    (Field::Bytea, ValueKind::Bytes),
    (Field::Date, ValueKind::Date),
    (Field::Timestamp, ValueKind::Timestamp),
    (Field::Uuid, ValueKind::Uuid),
    (Field::Json, ValueKind::Json),
    (Field::Jsonb, ValueKind::Json),
];

/// Most columns a fuzzed binary COPY layout has.
const MAX_FIELDS: usize = 6;

/// Reads a binary COPY stream as a chunk of a scan does. The first byte
/// gives the number of columns (1 to [`MAX_FIELDS`]), the next one per
/// column picks its type (the first is the key); the rest is the stream,
/// cut anywhere.
pub fn binary_copy(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = 1 + n as usize % MAX_FIELDS;
    if rest.len() < n {
        return;
    }
    let (layout, stream) = rest.split_at(n);
    let picked: Vec<(Field, ValueKind)> = layout
        .iter()
        .map(|&b| FIELDS[b as usize % FIELDS.len()])
        .collect();
    let names = ["k", "a", "b", "c", "d", "e"];
    let columns: Vec<(&str, ValueKind)> = picked
        .iter()
        .zip(names)
        .map(|(&(_, kind), name)| (name, kind))
        .collect();
    // A layout whose key kind cannot be a key is refused by the config.
    let Some(mapping) = mapping(&columns) else {
        return;
    };
    let context = BinaryContext {
        chunk: ChunkContext {
            mapping,
            dataset: "fuzz".into(),
        },
        fields: picked.iter().map(|&(field, _)| field).collect(),
    };
    let mut raw = stream.to_vec();
    if close_cut(&mut raw, n).is_err() {
        return;
    }
    let Ok(rows) = split_rows(&raw, n) else {
        return;
    };
    for &at in &rows {
        if let Ok(values) = context.values(&raw, at, None) {
            let _ = context.chunk.record(values);
        }
    }
    let keys = fuzz_keys();
    let _ = context.hash_rows(keys, &raw, &rows);
}

fn fuzz_keys() -> &'static DatasetKeys {
    static KEYS: OnceLock<DatasetKeys> = OnceLock::new();
    KEYS.get_or_init(|| DatasetKeys::derive(b"fuzz"))
}

/// Scans `data` as a CSV file mapped by [`COLUMNS`].
pub fn csv(data: &[u8]) {
    scan_file(Format::Csv, data);
}

/// Scans `data` as a JSONL file mapped by [`COLUMNS`].
pub fn jsonl(data: &[u8]) {
    scan_file(Format::Jsonl, data);
}

/// A directory of this process's own for the fuzzed file.
fn file_dir(format: Format) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "arbor-fuzz-{}-{}",
        std::process::id(),
        format.extension()
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory for the fuzzed file");
    dir
}

fn scan_file(format: Format, data: &[u8]) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    let (csv, jsonl) = DIRS.get_or_init(|| (file_dir(Format::Csv), file_dir(Format::Jsonl)));
    let dir = match format {
        Format::Csv => csv,
        Format::Jsonl => jsonl,
    };
    let file = dir.join(format!("data.{}", format.extension()));
    std::fs::write(&file, data).expect("the fuzzed file is written");
    let mut source = FileSource::new(dir, format, columns_mapping(), None);
    let _ = source.scan(&mut |_| Ok(()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_on_their_lengths_and_keep_a_short_tail() {
        let data = [0, 2, b'a', b'b', 0, 0, 0, 9, b'c'];
        let got: Vec<&[u8]> = frames(&data).collect();
        assert_eq!(got, vec![&b"ab"[..], &b""[..], &b"c"[..]]);
    }

    proptest::proptest! {
        #[test]
        fn binary_copy_never_panics(data in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..200)) {
            binary_copy(&data);
        }
    }
}
