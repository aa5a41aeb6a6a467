//! Synthetic data shared by the benches: customer-like rows of about 200
//! canonical bytes, and indexes built from them in temp dirs.

#![allow(dead_code)]

use arbor::arbor_index::{Index, IndexConfig, IndexError};
use arbor::arbor_record::{
    Column, DatasetKeys, Decimal, Record, Schema, Timestamp, Value, ValueKind,
};
use tempfile::TempDir;

/// The bench schema: an integer id and seven typed value columns.
pub fn schema() -> Schema {
    Schema::new(
        vec![Column::new("id", ValueKind::Integer)],
        vec![
            Column::new("address", ValueKind::Text),
            Column::new("balance", ValueKind::Decimal),
            Column::new("created_at", ValueKind::Timestamp),
            Column::new("email", ValueKind::Text),
            Column::new("name", ValueKind::Text),
            Column::new("status", ValueKind::Text),
            Column::new("visits", ValueKind::Integer),
        ],
    )
    .expect("bench schema is valid")
}

pub fn config() -> IndexConfig {
    IndexConfig {
        keys: DatasetKeys::derive(b"bench secret"),
        schema_fingerprint: schema().fingerprint(),
    }
}

/// Row `id` in `version` (bumping the version changes its values).
pub fn row(id: u64, version: u64) -> Record {
    let x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version;
    Record::new(
        vec![Value::Integer(id.into())],
        vec![
            Value::Text(format!(
                "{} Orchard Lane, Building {}, Apartment {}, Springfield Heights, OR 97{:03}, United States",
                x % 9999,
                x % 13,
                x % 97,
                x % 1000
            )),
            Value::Decimal(
                Decimal::parse(&format!("{}.{:02}", x % 100_000, x % 100)).expect("bench decimal"),
            ),
            Value::Timestamp(Timestamp(
                1_600_000_000_000_000 + (x % 100_000_000_000) as i64,
            )),
            Value::Text(format!("customer.{id}.{}@example-mail.com", x % 1000)),
            Value::Text(format!("Customer Number {id} of segment {}", x % 7919)),
            Value::text(if x.is_multiple_of(3) {
                "active"
            } else {
                "dormant"
            }),
            Value::Integer((x % 10_000).into()),
        ],
    )
}

/// Canonical bytes of a bench row (key + values), to state the row size.
pub fn row_bytes(r: &Record) -> usize {
    arbor::arbor_record::tuple_bytes(&r.key).len()
        + arbor::arbor_record::tuple_bytes(&r.values).len()
}

/// An index of rows `0..n` in a fresh temp dir.
pub fn built(n: u64) -> (TempDir, Index) {
    let dir = TempDir::new().expect("temp dir");
    let index = Index::open(dir.path().join("index"), config()).expect("open bench index");
    index
        .build((0..n).map(|i| Ok::<_, IndexError>(row(i, 0))), None)
        .expect("build bench index");
    (dir, index)
}

/// Peak resident set of this process so far, in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
