//! `verify`: recompute every stored node from the records and compare.
//!
//! One ordered scan of the records feeds an [`Aggregator`]; the nodes it
//! emits come out in prefix order per level, so each level is merge-joined
//! against its own cursor over the stored nodes. Memory is O(depth) whatever
//! the size. Each record is also checked on its own: a well-formed key whose
//! position is the keyed hash of its canonical key, and a 32-byte digest.

use arbor_record::decode_tuple;
use arbor_tree::{Aggregator, MAX_LEVEL, Node, Prefix};
use tracing::{info, instrument, warn};

use crate::cf;
use crate::error::IndexError;
use crate::store::Index;

/// Problems kept in a [`VerifyReport`] at most (the counts are exact).
pub const MAX_REPORTED_PROBLEMS: usize = 100;

/// A stored node whose value is not the sum of its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMismatch {
    /// Which node.
    pub prefix: Prefix,
    /// What is stored (empty if absent).
    pub stored: Node,
    /// What the records add up to (empty if none).
    pub computed: Node,
}

/// A record entry that cannot be right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// The entry's key, hex.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The outcome of [`Index::verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records scanned.
    pub records: u64,
    /// Stored nodes compared.
    pub nodes: u64,
    /// Node mismatches found in all.
    pub node_mismatches: u64,
    /// Bad record entries found in all.
    pub bad_records: u64,
    /// The first node mismatches.
    pub mismatches: Vec<NodeMismatch>,
    /// The first bad records.
    pub records_with_problems: Vec<BadRecord>,
}

impl VerifyReport {
    /// Whether the index is consistent.
    pub fn is_ok(&self) -> bool {
        self.node_mismatches == 0 && self.bad_records == 0
    }

    fn mismatch(&mut self, prefix: Prefix, stored: Node, computed: Node) {
        self.node_mismatches += 1;
        if self.mismatches.len() < MAX_REPORTED_PROBLEMS {
            self.mismatches.push(NodeMismatch {
                prefix,
                stored,
                computed,
            });
        }
    }

    fn bad_record(&mut self, key: &[u8], reason: String) {
        self.bad_records += 1;
        if self.records_with_problems.len() < MAX_REPORTED_PROBLEMS {
            self.records_with_problems.push(BadRecord {
                key: hex::encode(&key[..key.len().min(64)]),
                reason,
            });
        }
    }
}

/// Walks the stored nodes of one level in prefix order.
struct LevelCursor<'a> {
    it: rocksdb::DBRawIteratorWithThreadMode<'a, rocksdb::DB>,
    level: u8,
}

impl LevelCursor<'_> {
    /// The next stored node of this level, if any.
    fn peek(&self) -> Result<Option<(Prefix, Node)>, IndexError> {
        match (self.it.key(), self.it.value()) {
            (Some(k), Some(v)) if k.first() == Some(&self.level) => {
                Ok(Some((cf::split_node_key(k)?, cf::node_value(k, v)?)))
            }
            _ => Ok(None),
        }
    }

    /// Reports stored nodes before `until` (all, if `None`) as having no records.
    fn drain_before(
        &mut self,
        until: Option<Prefix>,
        report: &mut VerifyReport,
    ) -> Result<(), IndexError> {
        while let Some((p, stored)) = self.peek()? {
            if until.is_some_and(|u| p >= u) {
                break;
            }
            report.nodes += 1;
            if !stored.is_empty() {
                report.mismatch(p, stored, Node::EMPTY);
            }
            self.it.next();
        }
        Ok(())
    }

    fn check(
        &mut self,
        prefix: Prefix,
        computed: Node,
        report: &mut VerifyReport,
    ) -> Result<(), IndexError> {
        self.drain_before(Some(prefix), report)?;
        match self.peek()? {
            Some((p, stored)) if p == prefix => {
                report.nodes += 1;
                if stored != computed {
                    report.mismatch(prefix, stored, computed);
                }
                self.it.next();
            }
            _ => report.mismatch(prefix, Node::EMPTY, computed),
        }
        Ok(())
    }
}

impl Index {
    /// Recomputes every stored node from the records and reports every
    /// difference, plus malformed or misplaced records. Reads one snapshot.
    #[instrument(skip_all, fields(path = %self.path.display()))]
    pub fn verify(&self) -> Result<VerifyReport, IndexError> {
        let snapshot = self.snapshot()?;
        let depth = snapshot.depth();
        let keys = &self.config.keys;
        let mut report = VerifyReport::default();

        let nodes_cf = self.cf(cf::NODES);
        let cursor_at = |level: u8| {
            let mut ro = rocksdb::ReadOptions::default();
            ro.set_snapshot(snapshot.raw());
            let mut it = self.db.raw_iterator_cf_opt(nodes_cf, ro);
            it.seek(cf::node_key(
                Prefix::new(level, 0).expect("prefix 0 fits every level"),
            ));
            LevelCursor { it, level }
        };
        let mut cursors: Vec<LevelCursor<'_>> = (0..=depth).map(cursor_at).collect();

        let mut aggregator = Aggregator::new(depth);
        let mut emitted: Vec<(Prefix, Node)> = Vec::new();
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_snapshot(snapshot.raw());
        ro.fill_cache(false);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf::RECORDS), ro);
        it.seek_to_first();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            report.records += 1;
            let parsed = cf::split_record_key(k)
                .and_then(|(pos, key)| Ok((pos, key, cf::record_digest(k, v)?)));
            let (position, key, digest) = match parsed {
                Ok(p) => p,
                Err(e) => {
                    report.bad_record(k, e.to_string());
                    it.next();
                    continue;
                }
            };
            if let Err(e) = decode_tuple(key) {
                report.bad_record(k, format!("key is not a canonical tuple: {e}"));
            } else if keys.position_of_encoded_key(key) != position {
                report.bad_record(k, "stored under a position that is not its key's".into());
            }
            aggregator.push(position, Node::of_digest(&digest.0), |p, n| {
                emitted.push((p, n))
            });
            for (p, n) in emitted.drain(..) {
                cursors[p.level() as usize].check(p, n, &mut report)?;
            }
            it.next();
        }
        it.status().map_err(IndexError::storage("scan records"))?;
        aggregator.finish(|p, n| emitted.push((p, n)));
        for (p, n) in emitted.drain(..) {
            if p == Prefix::ROOT && n.is_empty() {
                // An empty index may or may not store an empty root.
                cursors[0].drain_before(None, &mut report)?;
                continue;
            }
            cursors[p.level() as usize].check(p, n, &mut report)?;
        }
        for c in cursors.iter_mut() {
            c.drain_before(None, &mut report)?;
        }
        // Nothing may be stored below the stored depth.
        if depth < MAX_LEVEL {
            let mut deeper = cursor_at(depth + 1);
            while let (Some(k), Some(v)) = (deeper.it.key(), deeper.it.value()) {
                let p = cf::split_node_key(k)?;
                let n = cf::node_value(k, v)?;
                if !n.is_empty() {
                    report.mismatch(p, n, Node::EMPTY);
                }
                deeper.it.next();
            }
        }
        if report.is_ok() {
            info!(
                records = report.records,
                nodes = report.nodes,
                "index verified"
            );
        } else {
            warn!(
                node_mismatches = report.node_mismatches,
                bad_records = report.bad_records,
                "index verification found problems"
            );
        }
        Ok(report)
    }
}
