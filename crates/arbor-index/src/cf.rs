//! Column families and the byte layout of their keys and values: the one
//! place that says what is stored where.
//!
//! | CF        | key                                   | value                              |
//! |-----------|---------------------------------------|------------------------------------|
//! | `records` | position (u64 BE) ‖ canonical key     | row digest (32 bytes)              |
//! | `nodes`   | level (u8) ‖ prefix (u64 BE)          | sum (32 bytes LE) ‖ count (u64 LE), merged by addition |
//! | `meta`    | ASCII name (see [`meta`])             | per name                           |
//! | `scan`    | a record key seen by a running rescan | empty                              |
//! | `tombstones` | record key of a deleted record     | deletion time (i64 µs since the Unix epoch, BE) |
//! | `changed` | record key of a record an incremental change inserted or updated | that change's time (i64 µs, BE) |
//!
//! Record keys start with the position, so the records of a tree node are one
//! contiguous range; node keys sort by level, then prefix, so the children of
//! a node are contiguous too.

use arbor_record::Digest;
use arbor_tree::{MAX_LEVEL, Node, Prefix};

use crate::error::IndexError;

/// Records: position ‖ canonical key → digest.
pub const RECORDS: &str = "records";
/// Stored tree nodes, levels `0..=stored depth`, values combined by [`NODE_MERGE_OPERATOR`].
pub const NODES: &str = "nodes";
/// Index metadata.
pub const META: &str = "meta";
/// Record keys seen by the rescan in progress (record key → empty); cleared
/// when a rescan starts and ends.
pub const SCAN: &str = "scan";
/// Records an incremental change removed, and when (record key → µs BE):
/// two-way sync propagates these deletes instead of copying the row back.
/// An upsert of the key removes its tombstone.
pub const TOMBSTONES: &str = "tombstones";
/// Records an incremental change (capture, rescan, repair) last inserted or
/// updated, and when (record key → µs BE): two-way sync weighs a delete on
/// one side against the latest write on the other. A delete removes it.
pub const CHANGED: &str = "changed";
/// Every column family, in creation order.
pub const ALL: [&str; 6] = [RECORDS, NODES, META, SCAN, TOMBSTONES, CHANGED];

/// Name of the merge operator that adds node deltas (part of the on-disk
/// format: RocksDB refuses to open a CF whose operator name changed).
pub const NODE_MERGE_OPERATOR: &str = "arbor.node.add.v1";

/// Bytes of the position at the start of a record key.
pub const POSITION_LEN: usize = 8;
/// Bytes of a node key.
pub const NODE_KEY_LEN: usize = 9;

/// Keys of the `meta` column family.
pub mod meta {
    /// On-disk format version (u32 LE).
    pub const FORMAT: &[u8] = b"format";
    /// Canonical encoding version of the records (u32 LE).
    pub const ENCODING_VERSION: &[u8] = b"encoding_version";
    /// Key id of the dataset secret (8 bytes).
    pub const KEY_ID: &[u8] = b"key_id";
    /// Schema fingerprint (32 bytes).
    pub const SCHEMA: &[u8] = b"schema";
    /// Deepest stored node level (1 byte).
    pub const DEPTH: &[u8] = b"depth";
    /// `ready`, or `building` while a full build has not committed.
    pub const STATE: &[u8] = b"state";
    /// Opaque watermark of the source's changes the index reflects.
    pub const WATERMARK: &[u8] = b"watermark";
    /// When the index was last known current (i64 µs since the Unix epoch,
    /// BE): it held every change its system had committed before then, so a
    /// change a rescan finds later was made after it.
    pub const CURRENT_AS_OF: &[u8] = b"current_as_of";
    /// `STATE` value of a usable index.
    pub const STATE_READY: &[u8] = b"ready";
    /// `STATE` value while a full build runs.
    pub const STATE_BUILDING: &[u8] = b"building";
}

/// The key of a record in [`RECORDS`].
pub fn record_key(position: u64, canonical_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(POSITION_LEN + canonical_key.len());
    put_record_key(&mut k, position, canonical_key);
    k
}

/// Appends the key of a record in [`RECORDS`] to `out`.
pub fn put_record_key(out: &mut Vec<u8>, position: u64, canonical_key: &[u8]) {
    out.extend_from_slice(&position.to_be_bytes());
    out.extend_from_slice(canonical_key);
}

/// Splits a [`RECORDS`] key into position and canonical key.
pub fn split_record_key(key: &[u8]) -> Result<(u64, &[u8]), IndexError> {
    if key.len() <= POSITION_LEN {
        return Err(IndexError::corrupt(
            RECORDS,
            key,
            "record key shorter than a position and a key",
        ));
    }
    let (pos, rest) = key.split_at(POSITION_LEN);
    let mut b = [0u8; POSITION_LEN];
    b.copy_from_slice(pos);
    Ok((u64::from_be_bytes(b), rest))
}

/// Reads a [`RECORDS`] value.
pub fn record_digest(key: &[u8], value: &[u8]) -> Result<Digest, IndexError> {
    Digest::from_slice(value).ok_or_else(|| {
        IndexError::corrupt(
            RECORDS,
            key,
            format!("digest has {} bytes, expected 32", value.len()),
        )
    })
}

/// The key of a node in [`NODES`].
pub fn node_key(prefix: Prefix) -> [u8; NODE_KEY_LEN] {
    let mut k = [0u8; NODE_KEY_LEN];
    k[0] = prefix.level();
    k[1..].copy_from_slice(&prefix.value().to_be_bytes());
    k
}

/// Reads a [`NODES`] key.
pub fn split_node_key(key: &[u8]) -> Result<Prefix, IndexError> {
    if key.len() != NODE_KEY_LEN || key[0] > MAX_LEVEL {
        return Err(IndexError::corrupt(NODES, key, "malformed node key"));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[1..]);
    Prefix::new(key[0], u64::from_be_bytes(b))
        .map_err(|e| IndexError::corrupt(NODES, key, e.to_string()))
}

/// Reads a [`NODES`] value.
pub fn node_value(key: &[u8], value: &[u8]) -> Result<Node, IndexError> {
    Node::from_bytes(value).map_err(|e| IndexError::corrupt(NODES, key, e.to_string()))
}

/// The merge operator of [`NODES`]: the group sum of the existing value and
/// every operand. A malformed operand or value makes the merge fail, which
/// RocksDB reports as corruption on read instead of storing a wrong sum.
pub fn merge_nodes(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    let mut acc = match existing {
        Some(v) => Node::from_bytes(v).ok()?,
        None => Node::EMPTY,
    };
    for op in operands {
        acc += Node::from_bytes(op).ok()?;
    }
    Some(acc.to_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn record_keys_round_trip(pos in any::<u64>(), key in proptest::collection::vec(any::<u8>(), 1..40)) {
            let k = record_key(pos, &key);
            let (p, rest) = split_record_key(&k).unwrap();
            prop_assert_eq!(p, pos);
            prop_assert_eq!(rest, &key[..]);
        }

        #[test]
        fn node_keys_round_trip(pos in any::<u64>(), level in 0u8..=MAX_LEVEL) {
            let p = Prefix::of(pos, level);
            prop_assert_eq!(split_node_key(&node_key(p)).unwrap(), p);
        }

        #[test]
        fn random_bytes_never_panic(key in proptest::collection::vec(any::<u8>(), 0..20), value in proptest::collection::vec(any::<u8>(), 0..50)) {
            let _ = split_record_key(&key);
            let _ = record_digest(&key, &value);
            let _ = split_node_key(&key);
            let _ = node_value(&key, &value);
        }
    }

    #[test]
    fn node_key_order_is_level_then_prefix() {
        let a = node_key(Prefix::new(1, 15).unwrap());
        let b = node_key(Prefix::new(2, 0).unwrap());
        let c = node_key(Prefix::new(2, 1).unwrap());
        assert!(a < b && b < c);
    }
}
