//! Records as arbor hashes them: typed values, the versioned canonical
//! encoding, and keyed blake3 hashing. No IO.
//!
//! A connector reads a row, applies the dataset's mapping and produces a
//! [`Record`]: a key tuple and a values tuple of [`Value`]s in the order of the
//! dataset's [`Schema`]. From there everything is deterministic:
//!
//! ```text
//!   Record ──canon──▶ canon(key), canon(values)          (encode)
//!          ──keyed blake3──▶ position: u64, digest: [u8; 32]   (hash)
//! ```
//!
//! so the same logical row read from PostgreSQL, MySQL, SQLite or a CSV file
//! has the same position and digest. The rules, version 1
//! ([`ENCODING_VERSION`]):
//!
//! * **Values are normalised on construction**: decimals lose leading and
//!   trailing zeros (`1.10` = `1.1`), floats fold `-0.0` into `0.0` and every
//!   NaN into one, timestamps are UTC microseconds, JSON is re-serialised with
//!   sorted keys and integral numbers as integers. NULL and `""` stay distinct.
//!   Transforms that lose information (trimming, case folding, rounding) are
//!   the mapping's job, never the encoding's.
//! * **Bytes** are specified in [`encode`]: one tag byte per value, fixed-width
//!   big-endian for dates, timestamps and floats, minimal two's complement for
//!   integers, LEB128-length-prefixed text. The decoder accepts exactly the
//!   canonical form and never panics.
//! * **Hashes** are specified in [`hash`]: three keys derived from the dataset
//!   secret, one per role (position, row digest, column digest), and a key id.
//!
//! Test vectors in `tests/vectors/canonical-v2.json` pin all of this; any
//! connector or port must reproduce them.

pub mod batch;
pub mod encode;
pub mod error;
pub mod hash;
pub mod many;
pub mod schema;
pub mod typed;
pub mod value;

pub use batch::{BatchEntry, EncodedRows, HASH_PART_RECORDS, HashedBatch};
pub use encode::{
    ENCODING_VERSION, decode_tuple, display_canonical_tuple, display_tuple, encode_tuple,
    tuple_bytes,
};
pub use error::{DecodeError, SchemaError, ValueError};
pub use hash::{DatasetKeys, Digest, HashedRecord, KeyId};
pub use schema::{Column, Schema};
pub use typed::TypedValue;
pub use value::{CanonicalF64, CanonicalJson, Date, Decimal, Timestamp, Value, ValueKind};

/// One record: its key tuple and its values tuple, in schema order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Record {
    /// Key column values, in key order.
    pub key: Vec<Value>,
    /// Compared column values, in canonical column order.
    pub values: Vec<Value>,
}

impl Record {
    /// A record.
    pub fn new(key: Vec<Value>, values: Vec<Value>) -> Record {
        Record { key, values }
    }

    /// Bytes this record occupies in memory (see [`Value::mem_bytes`]).
    pub fn mem_bytes(&self) -> usize {
        std::mem::size_of::<Record>()
            + self
                .key
                .iter()
                .chain(&self.values)
                .map(Value::mem_bytes)
                .sum::<usize>()
    }

    /// Hashes this record with a dataset's keys.
    pub fn hash(&self, keys: &DatasetKeys, scratch: &mut Vec<u8>) -> HashedRecord {
        keys.hash_record(&self.key, &self.values, scratch)
    }
}
