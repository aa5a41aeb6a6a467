//! Consistent reads: everything a peer asks during one compare comes from
//! one RocksDB snapshot, so the root, the nodes and the leaves it reports
//! describe the same state of the dataset even while changes are applied.

use std::sync::Arc;

use arbor_record::{Digest, ENCODING_VERSION, KeyId};
use arbor_tree::{FANOUT, MAX_LEVEL, Node, Prefix};
use rocksdb::{DB, DBRawIteratorWithThreadMode, ReadOptions, Snapshot};

use crate::cf::{self, meta};
use crate::error::IndexError;
use crate::store::Index;

/// Ranges at this level or deeper (at most 1/65,536 of the positions) are
/// narrow: scans of them go through the block cache.
const NARROW_LEVEL: u8 = 4;

/// What a dataset's index says about itself: enough for a peer to check that
/// a compare is meaningful and to know whether anything differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// Canonical encoding version of the digests.
    pub encoding_version: u32,
    /// Id of the secret the hashes are keyed with.
    pub key_id: KeyId,
    /// Fingerprint of the dataset's schema.
    pub schema_fingerprint: [u8; 32],
    /// Deepest stored node level.
    pub stored_depth: u8,
    /// The root node: sum of all digests and the record count.
    pub root: Node,
    /// How far the index has followed its source, if it tracks that.
    pub watermark: Option<Vec<u8>>,
}

impl Description {
    /// Records in the dataset.
    pub fn count(&self) -> u64 {
        self.root.count
    }
}

/// One record as a peer exchanges it at the leaves: no values, only where it
/// sits, its key and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Leaf {
    /// Position in the tree.
    pub position: u64,
    /// Canonical key bytes.
    pub key: Vec<u8>,
    /// Row digest.
    pub digest: Digest,
}

/// A read-only view of an index at one point in time.
pub struct IndexSnapshot<'a> {
    index: &'a Index,
    snap: Snapshot<'a>,
    depth: u8,
}

impl Index {
    /// Takes a snapshot to read from. Fails on an index whose full build did
    /// not commit.
    pub fn snapshot(&self) -> Result<IndexSnapshot<'_>, IndexError> {
        let snap = self.db.snapshot();
        let get = |k: &'static [u8]| -> Result<Vec<u8>, IndexError> {
            snap.get_cf(self.cf(cf::META), k)
                .map_err(IndexError::storage("read index metadata"))?
                .ok_or_else(|| IndexError::corrupt(cf::META, k, "missing metadata entry"))
        };
        if get(meta::STATE)? != meta::STATE_READY {
            return Err(IndexError::IncompleteBuild {
                path: self.path.clone(),
            });
        }
        let depth = match get(meta::DEPTH)?.as_slice() {
            [d] if (1..=arbor_tree::MAX_STORED_DEPTH).contains(d) => *d,
            _ => {
                return Err(IndexError::corrupt(
                    cf::META,
                    meta::DEPTH,
                    "depth is not one byte in 1..=6",
                ));
            }
        };
        Ok(IndexSnapshot {
            index: self,
            snap,
            depth,
        })
    }
}

impl<'a> IndexSnapshot<'a> {
    pub(crate) fn raw(&self) -> &Snapshot<'a> {
        &self.snap
    }

    /// Deepest stored level; nodes below it are computed from records.
    pub fn depth(&self) -> u8 {
        self.depth
    }

    /// The index's description at this snapshot.
    pub fn describe(&self) -> Result<Description, IndexError> {
        let watermark = self
            .snap
            .get_cf(self.index.cf(cf::META), meta::WATERMARK)
            .map_err(IndexError::storage("read the watermark"))?;
        Ok(Description {
            encoding_version: ENCODING_VERSION,
            key_id: self.index.config.keys.key_id(),
            schema_fingerprint: self.index.config.schema_fingerprint,
            stored_depth: self.depth,
            root: self.root()?,
            watermark,
        })
    }

    /// The root node.
    pub fn root(&self) -> Result<Node, IndexError> {
        self.stored_node(Prefix::ROOT)
    }

    /// A raw iterator over a column family at this snapshot (seek before use).
    fn cursor(&self, name: &'static str, fill_cache: bool) -> DBRawIteratorWithThreadMode<'a, DB> {
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&self.snap);
        ro.fill_cache(fill_cache);
        self.index.db.raw_iterator_cf_opt(self.index.cf(name), ro)
    }

    /// The non-empty children of each parent, in parent order then child
    /// order. Parents above the stored depth read stored nodes; deeper ones
    /// are summed from a range scan of their records. One iterator serves
    /// all parents (they come sorted), which matters when a level has
    /// thousands of differing parents.
    pub fn children(&self, parents: &[Prefix]) -> Result<Vec<(Prefix, Node)>, IndexError> {
        if let Some(p) = parents.iter().find(|p| p.level() >= MAX_LEVEL) {
            return Err(IndexError::InvalidRequest(format!(
                "{p} is at the deepest level and has no children"
            )));
        }
        let mut out = Vec::new();
        let (stored, computed): (Vec<Prefix>, Vec<Prefix>) =
            parents.iter().partition(|p| p.level() < self.depth);
        if !stored.is_empty() {
            self.stored_children(&stored, &mut out)?;
        }
        if !computed.is_empty() {
            self.computed_children(&computed, &mut out)?;
        }
        if !stored.is_empty() && !computed.is_empty() {
            out.sort_by_key(|(p, _)| (p.level(), p.value()));
        }
        Ok(out)
    }

    fn stored_children(
        &self,
        parents: &[Prefix],
        out: &mut Vec<(Prefix, Node)>,
    ) -> Result<(), IndexError> {
        let mut it = self.cursor(cf::NODES, true);
        for parent in parents {
            let first = parent.child(0).expect("checked above the deepest level");
            let last = parent
                .child(FANOUT as u8 - 1)
                .expect("checked above the deepest level");
            let last_key = cf::node_key(last);
            it.seek(cf::node_key(first));
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                if k > last_key.as_slice() {
                    break;
                }
                let prefix = cf::split_node_key(k)?;
                let node = cf::node_value(k, v)?;
                if !node.is_empty() {
                    out.push((prefix, node));
                }
                it.next();
            }
            it.status().map_err(IndexError::storage("read nodes"))?;
        }
        Ok(())
    }

    fn computed_children(
        &self,
        parents: &[Prefix],
        out: &mut Vec<(Prefix, Node)>,
    ) -> Result<(), IndexError> {
        let mut sums = vec![[Node::EMPTY; FANOUT]; parents.len()];
        self.scan_ranges(parents, |i, position, _, digest| {
            let level = parents[i].level() + 1;
            let child = Prefix::of(position, level).value() as usize % FANOUT;
            sums[i][child] += Node::of_digest(&digest.0);
            Ok(())
        })?;
        for (parent, children) in parents.iter().zip(sums) {
            for (i, n) in children.into_iter().enumerate() {
                if !n.is_empty() {
                    out.push((
                        parent
                            .child(i as u8)
                            .expect("checked above the deepest level"),
                        n,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Visits every record under `range` in (position, key) order.
    pub fn scan_range(
        &self,
        range: Prefix,
        mut visit: impl FnMut(u64, &[u8], Digest) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        self.scan_ranges(&[range], |_, position, key, digest| {
            visit(position, key, digest)
        })
    }

    /// Visits every record under each range (sorted and disjoint), in
    /// (position, key) order, with one iterator; `visit` gets the range's
    /// index. Narrow ranges (a descent's deep nodes and leaves, which the
    /// next level and the leaf exchange read again) go through the block
    /// cache; wide scans read each block once and stay out of it, so they
    /// do not evict the hot set of incremental updates.
    pub fn scan_ranges(
        &self,
        ranges: &[Prefix],
        mut visit: impl FnMut(usize, u64, &[u8], Digest) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        let narrow = ranges.iter().all(|r| r.level() >= NARROW_LEVEL);
        let mut it = self.cursor(cf::RECORDS, narrow);
        for (i, range) in ranges.iter().enumerate() {
            let span = range.range();
            it.seek(span.start().to_be_bytes());
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                let (position, key) = cf::split_record_key(k)?;
                if position > *span.end() {
                    break;
                }
                visit(i, position, key, cf::record_digest(k, v)?)?;
                it.next();
            }
            it.status().map_err(IndexError::storage("scan records"))?;
        }
        Ok(())
    }

    /// The leaves under each range, ranges in the order given.
    pub fn leaves(&self, ranges: &[Prefix]) -> Result<Vec<Leaf>, IndexError> {
        let mut out = Vec::new();
        self.scan_ranges(ranges, |_, position, key, digest| {
            out.push(Leaf {
                position,
                key: key.to_vec(),
                digest,
            });
            Ok(())
        })?;
        Ok(out)
    }

    /// The stored node at `prefix` (empty if absent). Only levels up to the
    /// stored depth are stored.
    pub fn stored_node(&self, prefix: Prefix) -> Result<Node, IndexError> {
        let key = cf::node_key(prefix);
        match self
            .snap
            .get_cf(self.index.cf(cf::NODES), key)
            .map_err(IndexError::storage("read a node"))?
        {
            Some(v) => cf::node_value(&key, &v),
            None => Ok(Node::EMPTY),
        }
    }
}

self_cell::self_cell!(
    struct SharedSnapshotCell {
        owner: Arc<Index>,
        #[covariant]
        dependent: IndexSnapshot,
    }
);

/// A snapshot that owns a handle on its index, so it can outlive the call
/// that took it: an agent pins one per compare session, across many RPCs.
pub struct SharedSnapshot(SharedSnapshotCell);

impl SharedSnapshot {
    /// Snapshots a shared index.
    pub fn new(index: Arc<Index>) -> Result<SharedSnapshot, IndexError> {
        SharedSnapshotCell::try_new(index, |i| i.snapshot()).map(SharedSnapshot)
    }

    /// The snapshot.
    pub fn get(&self) -> &IndexSnapshot<'_> {
        self.0.borrow_dependent()
    }
}

impl std::fmt::Debug for SharedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSnapshot")
            .field("index", &self.0.borrow_owner().path())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Change, IndexConfig};
    use arbor_record::{DatasetKeys, Record, Value};

    #[test]
    fn a_shared_snapshot_outlives_its_caller_and_stays_put() {
        let dir = tempfile::TempDir::new().unwrap();
        let config = IndexConfig {
            keys: DatasetKeys::derive(b"s"),
            schema_fingerprint: [0; 32],
        };
        let index = Arc::new(Index::open(dir.path(), config).unwrap());
        let rec = |k: i64| Record::new(vec![Value::Integer(k.into())], vec![]);
        index.apply(&[Change::Upsert(rec(1))], None).unwrap();
        let shared = {
            let i = Arc::clone(&index);
            SharedSnapshot::new(i).unwrap()
        };
        index.apply(&[Change::Upsert(rec(2))], None).unwrap();
        let moved = std::thread::spawn(move || shared.get().root().unwrap().count)
            .join()
            .unwrap();
        assert_eq!(moved, 1);
        assert_eq!(index.snapshot().unwrap().root().unwrap().count, 2);
    }
}
