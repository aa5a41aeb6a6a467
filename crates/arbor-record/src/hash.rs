//! Keyed hashing: positions, row digests, column digests and key ids.
//!
//! One dataset secret yields three independent blake3 keys through
//! `blake3::derive_key`, one per role, so a position can never be mistaken for
//! a digest and knowing one reveals nothing of the others:
//!
//! ```text
//! k_pos = derive_key("arbor 2026-11 canonical v1 position", secret)
//! k_row = derive_key("arbor 2026-11 canonical v1 row digest", secret)
//! k_col = derive_key("arbor 2026-11 canonical v1 column digest", secret)
//! key id = derive_key("arbor 2026-11 key id", secret)[..8]
//!
//! position(key)     = u64::from_be_bytes(blake3_keyed(k_pos, canon(key))[..8])
//! digest(record)    = blake3_keyed(k_row, canon(key) ‖ canon(values))
//! column(key, c, v) = blake3_keyed(k_col, canon(key) ‖ varint(len c) ‖ c ‖ canon(v))
//! ```
//!
//! The encoding version is part of every derivation context, so a peer on
//! another version computes other hashes; peers still compare versions and key
//! ids explicitly first so a mismatch is an error, never "everything differs".

use std::fmt;

use crate::encode::{encode_tuple, encode_value, put_varint};
use crate::value::Value;

/// A 32-byte row or column digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Length of a digest in bytes.
    pub const LEN: usize = 32;

    /// Reads a digest from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Digest> {
        bytes.try_into().ok().map(Digest)
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Names a dataset secret without revealing it: the first 8 bytes of a
/// derivation of the secret. Two peers compare key ids before anything else.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", hex::encode(self.0))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

const CONTEXT_POSITION: &str = "arbor 2026-11 canonical v1 position";
const CONTEXT_ROW: &str = "arbor 2026-11 canonical v1 row digest";
const CONTEXT_COLUMN: &str = "arbor 2026-11 canonical v1 column digest";
const CONTEXT_KEY_ID: &str = "arbor 2026-11 key id";

/// The hashing keys of one dataset, derived from its secret.
///
/// `Debug` prints only the key id: the keys themselves never reach a log.
#[derive(Clone)]
pub struct DatasetKeys {
    position: [u8; 32],
    row: [u8; 32],
    column: [u8; 32],
    key_id: KeyId,
}

impl fmt::Debug for DatasetKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatasetKeys")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl DatasetKeys {
    /// Derives the keys of every role from a dataset secret (any length; use
    /// at least 32 random bytes in production).
    pub fn derive(secret: &[u8]) -> DatasetKeys {
        let id = blake3::derive_key(CONTEXT_KEY_ID, secret);
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&id[..8]);
        DatasetKeys {
            position: blake3::derive_key(CONTEXT_POSITION, secret),
            row: blake3::derive_key(CONTEXT_ROW, secret),
            column: blake3::derive_key(CONTEXT_COLUMN, secret),
            key_id: KeyId(key_id),
        }
    }

    /// The id naming this secret.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The position of an already encoded key.
    pub fn position_of_encoded_key(&self, canonical_key: &[u8]) -> u64 {
        let h = blake3::keyed_hash(&self.position, canonical_key);
        let mut top = [0u8; 8];
        top.copy_from_slice(&h.as_bytes()[..8]);
        u64::from_be_bytes(top)
    }

    /// The row digest of an encoded key and encoded values.
    pub fn digest_of_encoded(&self, canonical_key: &[u8], canonical_values: &[u8]) -> Digest {
        let mut h = blake3::Hasher::new_keyed(&self.row);
        h.update(canonical_key);
        h.update(canonical_values);
        Digest(*h.finalize().as_bytes())
    }

    /// The positions of many encoded keys, into `out` (same order); the
    /// same as [`DatasetKeys::position_of_encoded_key`] of each, hashed many
    /// at a time (see [`crate::many`]).
    pub fn positions_of_encoded_keys(&self, keys: &[&[u8]], out: &mut Vec<u64>) {
        let mut hashes = vec![[0u8; 32]; keys.len()];
        crate::many::keyed_hash_many(&self.position, keys, &mut hashes);
        out.extend(
            hashes
                .iter()
                .map(|h| u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])),
        );
    }

    /// The row digests of many encoded rows, into `out` (same order): each
    /// row is an encoded key and encoded values side by side, and its
    /// digest that of [`DatasetKeys::digest_of_encoded`] of the two, hashed
    /// many at a time (see [`crate::many`]).
    pub fn digests_of_encoded_rows(&self, rows: &[&[u8]], out: &mut Vec<Digest>) {
        let mut hashes = vec![[0u8; 32]; rows.len()];
        crate::many::keyed_hash_many(&self.row, rows, &mut hashes);
        out.extend(hashes.into_iter().map(Digest));
    }

    /// Hashes one record: its canonical key, position and row digest.
    ///
    /// `scratch` is reused between calls to keep the hot path free of
    /// allocations other than the returned key.
    pub fn hash_record(
        &self,
        key: &[Value],
        values: &[Value],
        scratch: &mut Vec<u8>,
    ) -> HashedRecord {
        let mut canonical_key = Vec::with_capacity(16);
        encode_tuple(&mut canonical_key, key);
        scratch.clear();
        encode_tuple(scratch, values);
        HashedRecord {
            position: self.position_of_encoded_key(&canonical_key),
            digest: self.digest_of_encoded(&canonical_key, scratch),
            key: canonical_key,
        }
    }

    /// The digest of one column of a record, for naming the columns that
    /// differ in a changed record without moving values.
    pub fn column_digest(&self, canonical_key: &[u8], column: &str, value: &Value) -> Digest {
        let mut buf = Vec::with_capacity(canonical_key.len() + column.len() + 16);
        buf.extend_from_slice(canonical_key);
        put_varint(&mut buf, column.len() as u64);
        buf.extend_from_slice(column.as_bytes());
        encode_value(&mut buf, value);
        Digest(*blake3::keyed_hash(&self.column, &buf).as_bytes())
    }
}

/// A record reduced to what the index stores: where it sits, its canonical
/// key and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HashedRecord {
    /// Position in the tree, from the keyed hash of the canonical key.
    pub position: u64,
    /// The canonical encoding of the key tuple.
    pub key: Vec<u8>,
    /// The row digest.
    pub digest: Digest,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_secrets_are_independent() {
        let a = DatasetKeys::derive(b"secret a");
        let b = DatasetKeys::derive(b"secret b");
        assert_ne!(a.key_id(), b.key_id());
        let key = [Value::Integer(42)];
        let mut s = Vec::new();
        let ra = a.hash_record(&key, &[Value::text("x")], &mut s);
        let rb = b.hash_record(&key, &[Value::text("x")], &mut s);
        assert_eq!(ra.key, rb.key);
        assert_ne!(ra.position, rb.position);
        assert_ne!(ra.digest, rb.digest);
        // The position is not simply the digest's prefix.
        assert_ne!(ra.position.to_be_bytes(), ra.digest.0[..8]);
    }

    #[test]
    fn rows_hashed_many_at_a_time_have_the_digest_and_position_of_their_parts() {
        let k = DatasetKeys::derive(b"s");
        // 40 rows (two SIMD groups and a remainder) of 9..1,209 bytes.
        let rows: Vec<Vec<u8>> = (0..40usize)
            .map(|i| (0..9 + i * 30).map(|b| (b * 7 + i) as u8).collect())
            .collect();
        let slices: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
        let keys: Vec<&[u8]> = rows.iter().map(|r| &r[..9]).collect();
        let (mut digests, mut positions) = (Vec::new(), Vec::new());
        k.digests_of_encoded_rows(&slices, &mut digests);
        k.positions_of_encoded_keys(&keys, &mut positions);
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(
                digests[i],
                k.digest_of_encoded(&row[..9], &row[9..]),
                "row {i}"
            );
            assert_eq!(
                positions[i],
                k.position_of_encoded_key(&row[..9]),
                "row {i}"
            );
        }
    }

    #[test]
    fn key_and_values_boundary_is_unambiguous() {
        let k = DatasetKeys::derive(b"s");
        let mut s = Vec::new();
        let one = k.hash_record(&[Value::text("ab")], &[Value::text("c")], &mut s);
        let two = k.hash_record(&[Value::text("a")], &[Value::text("bc")], &mut s);
        assert_ne!(one.digest, two.digest);
    }

    #[test]
    fn column_digests_name_the_changed_column() {
        let k = DatasetKeys::derive(b"s");
        let key = crate::encode::tuple_bytes(&[Value::Integer(1)]);
        let a = k.column_digest(&key, "email", &Value::text("a@x"));
        assert_eq!(a, k.column_digest(&key, "email", &Value::text("a@x")));
        assert_ne!(a, k.column_digest(&key, "email", &Value::text("b@x")));
        assert_ne!(a, k.column_digest(&key, "mail", &Value::text("a@x")));
    }

    #[test]
    fn debug_never_prints_keys() {
        let k = DatasetKeys::derive(b"s");
        let shown = format!("{k:?}");
        assert!(!shown.contains(&hex::encode(k.row)));
        assert!(shown.contains(&k.key_id().to_string()));
    }
}
