//! Hashed records in bulk: the unit a full build moves from the connector
//! that reads and hashes rows to the index that sorts and stores them.
//!
//! A [`HashedBatch`] holds every canonical key of its records in one byte
//! buffer, so hashing a million rows allocates a few buffers rather than a
//! million keys (allocation and the page faults of fresh memory were a
//! fifth of a build's time when each record owned its key).

use crate::Record;
use crate::encode::encode_tuple;
use crate::hash::{DatasetKeys, Digest, HashedRecord};

/// Records one rayon task hashes (in [`HashedBatch::hash_records`], and
/// in connectors that hash rows from the wire): enough to amortise the
/// task, few enough to spread a chunk over every core.
pub const HASH_PART_RECORDS: usize = 2_048;

/// One record of a [`HashedBatch`]: where it sits, its digest, and where its
/// canonical key lies in the batch's key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEntry {
    /// Position in the tree.
    pub position: u64,
    /// The row digest.
    pub digest: Digest,
    key_start: usize,
    key_len: usize,
}

fn entry_key<'k>(keys: &'k [u8], e: &BatchEntry) -> &'k [u8] {
    &keys[e.key_start..e.key_start + e.key_len]
}

/// Rows in canonical encoding (`canon(key) ‖ canon(values)`), side by
/// side in one buffer until they are hashed together.
#[derive(Debug, Default, Clone)]
pub struct EncodedRows {
    bytes: Vec<u8>,
    /// Per row: where it starts in `bytes`, and its key's length.
    rows: Vec<(usize, usize)>,
}

impl EncodedRows {
    /// The row size buffers are first sized for (rows of a few hundred
    /// bytes are the common case; longer ones make the buffer grow).
    pub const TYPICAL_ROW_BYTES: usize = 256;

    /// Room for `rows` rows of [`EncodedRows::TYPICAL_ROW_BYTES`].
    pub fn with_capacity(rows: usize) -> EncodedRows {
        EncodedRows {
            bytes: Vec::with_capacity(rows * Self::TYPICAL_ROW_BYTES),
            rows: Vec::with_capacity(rows),
        }
    }

    /// Appends one row: the key tuple (its first `key_len` bytes), then the
    /// values tuple.
    pub fn push(&mut self, row: &[u8], key_len: usize) {
        self.rows.push((self.bytes.len(), key_len.min(row.len())));
        self.bytes.extend_from_slice(row);
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Each row's key bytes and whole bytes, in order.
    pub fn rows(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let ends = self
            .rows
            .iter()
            .skip(1)
            .map(|&(start, _)| start)
            .chain(std::iter::once(self.bytes.len()));
        self.rows.iter().zip(ends).map(|(&(start, key_len), end)| {
            let row = &self.bytes[start..end];
            (&row[..key_len], row)
        })
    }
}

/// Hashed records sharing one buffer of canonical keys.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HashedBatch {
    entries: Vec<BatchEntry>,
    keys: Vec<u8>,
}

impl HashedBatch {
    /// An empty batch with room for `records` records of ~16-byte keys.
    pub fn with_capacity(records: usize) -> HashedBatch {
        HashedBatch {
            entries: Vec::with_capacity(records),
            keys: Vec::with_capacity(records * 16),
        }
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends a record already hashed.
    pub fn push(&mut self, position: u64, key: &[u8], digest: Digest) {
        let key_start = self.keys.len();
        self.keys.extend_from_slice(key);
        self.entries.push(BatchEntry {
            position,
            digest,
            key_start,
            key_len: key.len(),
        });
    }

    /// Hashes rows in canonical encoding, many at a time (see
    /// [`crate::many`]), in their order.
    pub fn hash_rows(keys: &DatasetKeys, rows: &EncodedRows) -> HashedBatch {
        let key_slices: Vec<&[u8]> = rows.rows().map(|(key, _)| key).collect();
        let row_slices: Vec<&[u8]> = rows.rows().map(|(_, row)| row).collect();
        let mut positions = Vec::with_capacity(rows.len());
        keys.positions_of_encoded_keys(&key_slices, &mut positions);
        let mut digests = Vec::with_capacity(rows.len());
        keys.digests_of_encoded_rows(&row_slices, &mut digests);
        let mut batch = HashedBatch::with_capacity(rows.len());
        for ((key, position), digest) in key_slices.iter().zip(positions).zip(digests) {
            batch.push(position, key, digest);
        }
        batch
    }

    /// Hashes records on the rayon pool, in their order.
    pub fn hash_records(keys: &DatasetKeys, records: &[Record]) -> HashedBatch {
        use rayon::prelude::*;
        let parts: Vec<HashedBatch> = records
            .par_chunks(HASH_PART_RECORDS)
            .map(|part| {
                let mut rows = EncodedRows::with_capacity(part.len());
                let mut row = Vec::new();
                for r in part {
                    row.clear();
                    encode_tuple(&mut row, &r.key);
                    let key_len = row.len();
                    encode_tuple(&mut row, &r.values);
                    rows.push(&row, key_len);
                }
                HashedBatch::hash_rows(keys, &rows)
            })
            .collect();
        HashedBatch::concat(parts)
    }

    /// One batch of the records of `parts`, in order.
    fn concat(parts: Vec<HashedBatch>) -> HashedBatch {
        if parts.len() == 1 {
            return parts.into_iter().next().unwrap_or_default();
        }
        let mut all = HashedBatch {
            entries: Vec::with_capacity(parts.iter().map(|p| p.entries.len()).sum()),
            keys: Vec::with_capacity(parts.iter().map(|p| p.keys.len()).sum()),
        };
        for p in &parts {
            all.append(p);
        }
        all
    }

    /// Appends every record of `other`.
    pub fn append(&mut self, other: &HashedBatch) {
        let shift = self.keys.len();
        self.keys.extend_from_slice(&other.keys);
        self.entries
            .extend(other.entries.iter().map(|e| BatchEntry {
                key_start: e.key_start + shift,
                ..*e
            }));
    }

    /// The records, in the batch's current order.
    pub fn entries(&self) -> &[BatchEntry] {
        &self.entries
    }

    /// The canonical key of one of this batch's entries.
    pub fn key(&self, entry: &BatchEntry) -> &[u8] {
        entry_key(&self.keys, entry)
    }

    /// The records as [`HashedRecord`]s (each owning its key).
    pub fn to_records(&self) -> Vec<HashedRecord> {
        self.entries
            .iter()
            .map(|e| HashedRecord {
                position: e.position,
                key: self.key(e).to_vec(),
                digest: e.digest,
            })
            .collect()
    }
}

impl FromIterator<HashedRecord> for HashedBatch {
    fn from_iter<I: IntoIterator<Item = HashedRecord>>(iter: I) -> HashedBatch {
        let mut batch = HashedBatch::default();
        for r in iter {
            batch.push(r.position, &r.key, r.digest);
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;

    #[test]
    fn hashed_records_hash_like_records() {
        let keys = DatasetKeys::derive(b"s");
        let records: Vec<Record> = (0..5000)
            .map(|i| Record::new(vec![Value::Integer(i)], vec![Value::text(format!("v{i}"))]))
            .collect();
        let mut scratch = Vec::new();
        let want: Vec<HashedRecord> = records
            .iter()
            .map(|r| r.hash(&keys, &mut scratch))
            .collect();
        assert_eq!(
            HashedBatch::hash_records(&keys, &records).to_records(),
            want
        );
    }

    #[test]
    fn append_keeps_the_order_and_each_records_key() {
        let d = |b: u8| Digest([b; 32]);
        let mut a = HashedBatch::default();
        a.push(5, b"k", d(1));
        a.push(1, b"z", d(2));
        let mut b = HashedBatch::default();
        b.push(5, b"k", d(3));
        b.push(5, b"a", d(4));
        a.append(&b);
        let got: Vec<(u64, Vec<u8>, u8)> = a
            .entries()
            .iter()
            .map(|e| (e.position, a.key(e).to_vec(), e.digest.0[0]))
            .collect();
        assert_eq!(
            got,
            vec![
                (5, b"k".to_vec(), 1),
                (1, b"z".to_vec(), 2),
                (5, b"k".to_vec(), 3),
                (5, b"a".to_vec(), 4),
            ]
        );
    }
}
