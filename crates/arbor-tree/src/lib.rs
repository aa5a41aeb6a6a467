//! The Merkle tree of a dataset as pure arithmetic: positions, prefixes,
//! additive node values, streaming aggregation and node-set diff. No IO.
//!
//! ```text
//! level 0                 root = Σ all digests
//!                  ┌────────┬──┴─────┬────────┐
//! level 1       node(1,0) node(1,1)  …   node(1,15)     top 4 bits of position
//!                  │
//! level 2     node(2,0x00) … node(2,0x0f)               top 8 bits
//!   …
//! level 16    one position                              all 64 bits
//! ```
//!
//! A record's [position](Prefix::of) is a `u64` from a keyed hash of its key,
//! so records spread uniformly whatever the key type. `node(L, p)` covers the
//! records whose position's top `4·L` bits equal `p`; its value is a [`Node`]:
//! the **sum of the records' digests mod 2^256** and their **count**.
//!
//! Nodes form a commutative group (component-wise wrapping addition), which
//! gives the properties the index and the descent rely on:
//!
//! * the tree is a pure function of the set of (position, digest) pairs —
//!   insertion order, batch sizes and history do not matter;
//! * an update is O(depth): add `new − old` to each ancestor, which a
//!   RocksDB merge operator can apply without reading;
//! * equal digests never cancel (unlike XOR): two identical records sum to
//!   `2·d`, not to zero, and the count differs anyway.

use std::cmp::Ordering;
use std::fmt;
use std::ops::RangeInclusive;

use thiserror::Error;

/// Bytes of a node's sum sent below the root: its [fingerprint](Sum256::fingerprint).
pub const FINGERPRINT_BYTES: usize = 8;
/// Bits of position consumed per level.
pub const FANOUT_BITS: u32 = 4;
/// Children per node.
pub const FANOUT: usize = 1 << FANOUT_BITS;
/// The deepest level: a level-16 prefix is a whole 64-bit position.
pub const MAX_LEVEL: u8 = (64 / FANOUT_BITS) as u8;
/// Records per deepest stored node the index aims for; deeper nodes are
/// computed on demand from a range scan of that many records. Small enough
/// that a compare's scans below the stored depth stay short (a differing
/// node costs one scan of at most ~64 records), large enough that an update
/// touches few levels (depth + 1 merges: 5 at 1M records, 6 at 10M).
pub const TARGET_RECORDS_PER_STORED_NODE: u64 = 64;
/// Stored depth never goes beyond this (16^6 ≈ 16.7M nodes at the bottom).
pub const MAX_STORED_DEPTH: u8 = 6;

/// Errors of decoding tree values from bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TreeError {
    /// A node value is not exactly [`Node::ENCODED_LEN`] bytes.
    #[error("node value has {0} bytes, expected {len}", len = Node::ENCODED_LEN)]
    NodeLength(usize),
    /// A prefix is out of range for its level.
    #[error("prefix {prefix:#x} does not fit level {level}")]
    Prefix {
        /// The level.
        level: u8,
        /// The offending prefix value.
        prefix: u64,
    },
    /// A level beyond [`MAX_LEVEL`].
    #[error("level {0} is beyond the deepest level {MAX_LEVEL}")]
    Level(u8),
}

/// A node of the tree: the top `4·level` bits shared by its positions.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    level: u8,
    value: u64,
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Prefix {
    /// `L3:0a7` — the level and the prefix as `level` hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "L{}:{:0width$x}",
            self.level,
            self.value,
            width = self.level as usize
        )
    }
}

impl Prefix {
    /// The root (level 0).
    pub const ROOT: Prefix = Prefix { level: 0, value: 0 };

    /// A prefix, checked: `value` must fit in `4·level` bits.
    pub fn new(level: u8, value: u64) -> Result<Prefix, TreeError> {
        if level > MAX_LEVEL {
            return Err(TreeError::Level(level));
        }
        if level < MAX_LEVEL && value >> (FANOUT_BITS * level as u32) != 0 {
            return Err(TreeError::Prefix {
                level,
                prefix: value,
            });
        }
        Ok(Prefix { level, value })
    }

    /// The level-`level` prefix containing `position`.
    pub fn of(position: u64, level: u8) -> Prefix {
        debug_assert!(level <= MAX_LEVEL);
        let value = if level == 0 {
            0
        } else {
            position >> (64 - FANOUT_BITS * level as u32)
        };
        Prefix { level, value }
    }

    /// The level.
    pub fn level(self) -> u8 {
        self.level
    }

    /// The prefix bits, right-aligned.
    pub fn value(self) -> u64 {
        self.value
    }

    /// Child `i` (0..16), one level down. `None` at [`MAX_LEVEL`].
    pub fn child(self, i: u8) -> Option<Prefix> {
        debug_assert!((i as usize) < FANOUT);
        (self.level < MAX_LEVEL).then(|| Prefix {
            level: self.level + 1,
            value: (self.value << FANOUT_BITS) | u64::from(i),
        })
    }

    /// The parent. `None` for the root.
    pub fn parent(self) -> Option<Prefix> {
        (self.level > 0).then(|| Prefix {
            level: self.level - 1,
            value: self.value >> FANOUT_BITS,
        })
    }

    /// The ancestor at `level` (itself when `level` is its own level).
    pub fn ancestor(self, level: u8) -> Prefix {
        debug_assert!(level <= self.level);
        Prefix {
            level,
            value: if level == 0 {
                0
            } else {
                self.value >> (FANOUT_BITS * (self.level - level) as u32)
            },
        }
    }

    /// The first and last position the prefix covers.
    pub fn range(self) -> RangeInclusive<u64> {
        if self.level == 0 {
            return 0..=u64::MAX;
        }
        let shift = 64 - FANOUT_BITS * self.level as u32;
        let start = self.value << shift;
        let span = if shift == 0 { 0 } else { (1u64 << shift) - 1 };
        start..=start + span
    }

    /// Whether `position` falls under this prefix.
    pub fn contains(self, position: u64) -> bool {
        Prefix::of(position, self.level) == self
    }
}

/// A 256-bit unsigned integer as four little-endian u64 limbs, with wrapping
/// arithmetic: the "sum of digests mod 2^256".
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Sum256([u64; 4]);

impl fmt::Debug for Sum256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.to_le_bytes();
        write!(f, "Sum256({}…)", hex_prefix(&b))
    }
}

fn hex_prefix(b: &[u8]) -> String {
    b.iter().take(6).map(|x| format!("{x:02x}")).collect()
}

impl Sum256 {
    /// Zero.
    pub const ZERO: Sum256 = Sum256([0; 4]);

    /// Reads 32 bytes as a little-endian integer (how digests enter sums).
    pub fn from_le_bytes(bytes: &[u8; 32]) -> Sum256 {
        let mut limbs = [0u64; 4];
        for (i, limb) in limbs.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            *limb = u64::from_le_bytes(w);
        }
        Sum256(limbs)
    }

    /// The little-endian bytes.
    pub fn to_le_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, limb) in self.0.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&limb.to_le_bytes());
        }
        out
    }

    /// `self + other mod 2^256`.
    pub fn wrapping_add(self, other: Sum256) -> Sum256 {
        let mut out = [0u64; 4];
        let mut carry = false;
        for (i, o) in out.iter_mut().enumerate() {
            let (s1, c1) = self.0[i].overflowing_add(other.0[i]);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            *o = s2;
            carry = c1 || c2;
        }
        Sum256(out)
    }

    /// The sum mod 2^64: what crosses the wire for nodes below the root.
    /// Still an additive sum, and since digests are keyed (an outsider
    /// cannot aim at a collision), two different record sets under one node
    /// share it with probability about 2^-64: below 10^-13 for a compare
    /// that looks at a million nodes. Counts are compared too, and the root
    /// always goes with its full 256-bit sum.
    pub fn fingerprint(self) -> u64 {
        self.0[0]
    }

    /// The sum with everything above its fingerprint cleared.
    pub fn truncated(self) -> Sum256 {
        Sum256([self.0[0], 0, 0, 0])
    }

    /// `-self mod 2^256`.
    pub fn wrapping_neg(self) -> Sum256 {
        let inverted = Sum256(self.0.map(|l| !l));
        inverted.wrapping_add(Sum256([1, 0, 0, 0]))
    }

    /// `self - other mod 2^256`.
    pub fn wrapping_sub(self, other: Sum256) -> Sum256 {
        self.wrapping_add(other.wrapping_neg())
    }
}

/// The value of a node: sum of digests mod 2^256 and record count mod 2^64.
///
/// Both components wrap, so a [`Node`] is also a *delta*: removing a record
/// adds `-Node::of_digest(d)`. The empty node is the group's zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Node {
    /// Sum of the digests under the node, mod 2^256.
    pub sum: Sum256,
    /// Number of records under the node (wrapping as a delta).
    pub count: u64,
}

impl Node {
    /// The empty node (and the zero delta).
    pub const EMPTY: Node = Node {
        sum: Sum256::ZERO,
        count: 0,
    };
    /// Bytes of [`Node::to_bytes`]: 32 for the sum, 8 for the count.
    pub const ENCODED_LEN: usize = 40;

    /// The node of one record with this digest.
    pub fn of_digest(digest: &[u8; 32]) -> Node {
        Node {
            sum: Sum256::from_le_bytes(digest),
            count: 1,
        }
    }

    /// What two peers compare below the root: the sum's fingerprint and
    /// the count.
    pub fn fingerprint(self) -> (u64, u64) {
        (self.sum.fingerprint(), self.count)
    }

    /// Whether this is the empty node.
    pub fn is_empty(self) -> bool {
        self == Node::EMPTY
    }

    /// `sum (32 bytes LE) ‖ count (8 bytes LE)`.
    pub fn to_bytes(self) -> [u8; Node::ENCODED_LEN] {
        let mut out = [0u8; Node::ENCODED_LEN];
        out[..32].copy_from_slice(&self.sum.to_le_bytes());
        out[32..].copy_from_slice(&self.count.to_le_bytes());
        out
    }

    /// Inverse of [`Node::to_bytes`]; any other length is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Node, TreeError> {
        if bytes.len() != Node::ENCODED_LEN {
            return Err(TreeError::NodeLength(bytes.len()));
        }
        let mut sum = [0u8; 32];
        sum.copy_from_slice(&bytes[..32]);
        let mut count = [0u8; 8];
        count.copy_from_slice(&bytes[32..]);
        Ok(Node {
            sum: Sum256::from_le_bytes(&sum),
            count: u64::from_le_bytes(count),
        })
    }
}

impl std::ops::Add for Node {
    type Output = Node;

    /// Group addition: both components wrap.
    fn add(self, other: Node) -> Node {
        Node {
            sum: self.sum.wrapping_add(other.sum),
            count: self.count.wrapping_add(other.count),
        }
    }
}

impl std::ops::AddAssign for Node {
    fn add_assign(&mut self, other: Node) {
        *self = *self + other;
    }
}

impl std::ops::Neg for Node {
    type Output = Node;

    /// Group inverse: the delta that removes `self`.
    fn neg(self) -> Node {
        Node {
            sum: self.sum.wrapping_neg(),
            count: self.count.wrapping_neg(),
        }
    }
}

impl std::ops::Sub for Node {
    type Output = Node;

    /// `self + (-other)`.
    fn sub(self, other: Node) -> Node {
        self + -other
    }
}

/// The deepest level the index stores for a dataset of `records` records:
/// the shallowest level whose nodes hold about
/// [`TARGET_RECORDS_PER_STORED_NODE`] records or fewer, at least 1 and at most
/// [`MAX_STORED_DEPTH`].
pub fn stored_depth(records: u64) -> u8 {
    let mut depth = 1u8;
    let mut nodes: u64 = FANOUT as u64;
    while depth < MAX_STORED_DEPTH && records / nodes > TARGET_RECORDS_PER_STORED_NODE {
        depth += 1;
        nodes = nodes.saturating_mul(FANOUT as u64);
    }
    depth
}

/// The `(prefix, delta)` pairs that adding `delta` at `position` makes to
/// levels `0..=depth`, root first.
pub fn ancestor_deltas(
    position: u64,
    delta: Node,
    depth: u8,
) -> impl Iterator<Item = (Prefix, Node)> {
    (0..=depth).map(move |level| (Prefix::of(position, level), delta))
}

/// Builds the nodes of levels `0..=depth` from records fed in ascending
/// position order, in memory O(depth).
///
/// Each time a prefix closes, the node is handed to the caller; nodes of one
/// level come out in ascending prefix order, the root last. Only non-empty
/// nodes are emitted.
#[derive(Debug)]
pub struct Aggregator {
    depth: u8,
    /// Per level 1..=depth: the open prefix and its running node.
    open: Vec<Option<(Prefix, Node)>>,
    root: Node,
    last: Option<u64>,
}

impl Aggregator {
    /// An aggregator for levels `0..=depth`.
    pub fn new(depth: u8) -> Aggregator {
        debug_assert!(depth <= MAX_LEVEL);
        Aggregator {
            depth,
            open: vec![None; depth as usize],
            root: Node::EMPTY,
            last: None,
        }
    }

    /// Adds a record. Positions must not decrease (equal positions are fine:
    /// distinct keys may share a position).
    ///
    /// Only the deepest open node takes the record; a node's sum reaches its
    /// parent when it closes. So a record costs one addition, not one per
    /// level (the build sums 10 M records at depth 5).
    pub fn push(&mut self, position: u64, node: Node, mut emit: impl FnMut(Prefix, Node)) {
        debug_assert!(
            self.last.is_none_or(|l| l <= position),
            "positions out of order"
        );
        self.last = Some(position);
        let depth = self.depth as usize;
        if depth == 0 {
            self.root += node;
            return;
        }
        if let Some((open, acc)) = &mut self.open[depth - 1]
            && *open == Prefix::of(position, self.depth)
        {
            *acc += node;
            return;
        }
        // The shallowest level whose open prefix differs: it and every
        // deeper one close, deepest first, each into its parent.
        let changed = (1..=depth)
            .find(|&level| {
                self.open[level - 1]
                    .is_none_or(|(open, _)| open != Prefix::of(position, level as u8))
            })
            .unwrap_or(depth);
        self.close_from(changed, &mut emit);
        for level in changed..=depth {
            self.open[level - 1] = Some((Prefix::of(position, level as u8), Node::EMPTY));
        }
        if let Some((_, acc)) = &mut self.open[depth - 1] {
            *acc += node;
        }
    }

    /// Closes the open nodes of levels `from..=depth`, deepest first, adding
    /// each to its parent (the root for level 1).
    fn close_from(&mut self, from: usize, emit: &mut impl FnMut(Prefix, Node)) {
        for level in (from..=self.depth as usize).rev() {
            if let Some((prefix, acc)) = self.open[level - 1].take() {
                emit(prefix, acc);
                match level {
                    1 => self.root += acc,
                    _ => {
                        if let Some((_, parent)) = &mut self.open[level - 2] {
                            *parent += acc;
                        }
                    }
                }
            }
        }
    }

    /// Closes every open prefix and emits the root; returns the root.
    pub fn finish(mut self, mut emit: impl FnMut(Prefix, Node)) -> Node {
        self.close_from(1, &mut emit);
        emit(Prefix::ROOT, self.root);
        self.root
    }
}

/// A node whose value differs between the two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeDiff {
    /// Which node.
    pub prefix: Prefix,
    /// Its value on the left (empty where absent).
    pub left: Node,
    /// Its value on the right (empty where absent).
    pub right: Node,
}

/// Diffs two node sets sorted by prefix; a node absent on one side counts as
/// empty there. Nodes are compared by [`Node::fingerprint`], so one side may
/// hold full sums and the other only fingerprints. Returns the differing
/// nodes in prefix order.
pub fn diff_nodes(left: &[(Prefix, Node)], right: &[(Prefix, Node)]) -> Vec<NodeDiff> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    loop {
        let ord = match (left.get(i), right.get(j)) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(l), Some(r)) => l.0.cmp(&r.0),
        };
        let (prefix, l, r) = match ord {
            Ordering::Less => {
                i += 1;
                (left[i - 1].0, left[i - 1].1, Node::EMPTY)
            }
            Ordering::Greater => {
                j += 1;
                (right[j - 1].0, Node::EMPTY, right[j - 1].1)
            }
            Ordering::Equal => {
                i += 1;
                j += 1;
                (left[i - 1].0, left[i - 1].1, right[j - 1].1)
            }
        };
        if l.fingerprint() != r.fingerprint() {
            out.push(NodeDiff {
                prefix,
                left: l,
                right: r,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn digest(seed: u64) -> [u8; 32] {
        let mut d = [0u8; 32];
        for (i, chunk) in d.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(
                &(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64).to_le_bytes(),
            );
        }
        d
    }

    #[test]
    fn prefixes_cover_their_ranges() {
        let p = Prefix::new(2, 0xab).unwrap();
        assert_eq!(p.range(), 0xab00_0000_0000_0000..=0xabff_ffff_ffff_ffff);
        assert_eq!(p.parent(), Some(Prefix::new(1, 0xa).unwrap()));
        assert_eq!(p.child(3), Some(Prefix::new(3, 0xab3).unwrap()));
        assert!(p.contains(0xab12_0000_0000_0000));
        assert!(!p.contains(0xac00_0000_0000_0000));
        let leaf = Prefix::of(42, MAX_LEVEL);
        assert_eq!(leaf.range(), 42..=42);
        assert_eq!(leaf.child(0), None);
        assert_eq!(Prefix::ROOT.range(), 0..=u64::MAX);
        assert!(Prefix::new(1, 16).is_err());
        assert!(Prefix::new(17, 0).is_err());
        assert_eq!(p.to_string(), "L2:ab");
    }

    #[test]
    fn equal_digests_do_not_cancel() {
        let d = digest(7);
        let one = Node::of_digest(&d);
        let two = one + one;
        assert_ne!(two, Node::EMPTY);
        assert_ne!(two.sum, Sum256::ZERO);
        assert_eq!(two.count, 2);
        assert_ne!(two.sum, one.sum);
        // Even ignoring counts, 2·d ≠ 0 unless d is 0 or 2^255.
        assert_ne!(one.sum.wrapping_add(one.sum), Sum256::ZERO);
    }

    #[test]
    fn node_bytes_round_trip_and_reject_bad_lengths() {
        let n = Node::of_digest(&digest(3)) + Node::of_digest(&digest(4));
        assert_eq!(Node::from_bytes(&n.to_bytes()).unwrap(), n);
        assert_eq!(Node::from_bytes(&[0; 39]), Err(TreeError::NodeLength(39)));
        assert_eq!(Node::from_bytes(&[]), Err(TreeError::NodeLength(0)));
    }

    #[test]
    fn diff_compares_fingerprints_so_truncated_sums_meet_full_ones() {
        let full = Node::of_digest(&digest(1)) + Node::of_digest(&digest(2));
        let short = Node {
            sum: full.sum.truncated(),
            count: full.count,
        };
        let p = Prefix::new(1, 3).unwrap();
        assert!(diff_nodes(&[(p, full)], &[(p, short)]).is_empty());
        let other = Node {
            sum: (full + Node::of_digest(&digest(3))).sum.truncated(),
            count: full.count,
        };
        assert_eq!(diff_nodes(&[(p, full)], &[(p, other)]).len(), 1);
        assert_eq!(full.sum.truncated().fingerprint(), full.sum.fingerprint());
    }

    #[test]
    fn stored_depth_grows_with_size() {
        assert_eq!(stored_depth(0), 1);
        assert_eq!(stored_depth(1_024), 1);
        assert_eq!(stored_depth(4_096), 2);
        assert_eq!(stored_depth(1_000_000), 4);
        assert_eq!(stored_depth(10_000_000), 5);
        assert_eq!(stored_depth(1_000_000_000), 6);
        assert_eq!(stored_depth(u64::MAX), MAX_STORED_DEPTH);
    }

    fn sum_of(digests: &[[u8; 32]]) -> Node {
        digests
            .iter()
            .fold(Node::EMPTY, |acc, d| acc + Node::of_digest(d))
    }

    proptest! {
        #[test]
        fn sums_form_a_group(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), c in any::<[u8; 32]>()) {
            let (a, b, c) = (Node::of_digest(&a), Node::of_digest(&b), Node::of_digest(&c));
            prop_assert_eq!(a + b, b + a);
            prop_assert_eq!((a + b) + c, a + (b + c));
            prop_assert_eq!(a + b - b, a);
            prop_assert_eq!(a - a, Node::EMPTY);
            prop_assert_eq!(a + -a, Node::EMPTY);
        }

        #[test]
        fn sum_does_not_depend_on_order(mut ds in proptest::collection::vec(any::<[u8; 32]>(), 0..40), seed in any::<u64>()) {
            let forward = sum_of(&ds);
            // A deterministic shuffle.
            let n = ds.len();
            for i in (1..n).rev() {
                let j = (seed.wrapping_mul(i as u64 + 1) >> 7) as usize % (i + 1);
                ds.swap(i, j);
            }
            prop_assert_eq!(sum_of(&ds), forward);
        }

        #[test]
        fn aggregator_equals_naive_grouping(
            mut positions in proptest::collection::vec(any::<u64>(), 0..200),
            bucket in any::<bool>(),
            depth in 1u8..=5,
        ) {
            if bucket {
                // Everything in one level-3 bucket.
                for p in positions.iter_mut() { *p = 0x1230_0000_0000_0000 | (*p >> 12); }
            }
            positions.sort_unstable();
            let mut naive: BTreeMap<Prefix, Node> = BTreeMap::new();
            let mut agg = Aggregator::new(depth);
            let mut emitted: Vec<(Prefix, Node)> = Vec::new();
            for (i, &pos) in positions.iter().enumerate() {
                let n = Node::of_digest(&digest(i as u64));
                for (p, d) in ancestor_deltas(pos, n, depth) {
                    let e = naive.entry(p).or_default();
                    *e += d;
                }
                agg.push(pos, n, |p, n| emitted.push((p, n)));
            }
            let root = agg.finish(|p, n| emitted.push((p, n)));
            prop_assert_eq!(root, naive.get(&Prefix::ROOT).copied().unwrap_or_default());
            // Per level, emitted nodes come in ascending prefix order.
            for level in 1..=depth {
                let at: Vec<Prefix> = emitted.iter().filter(|(p, _)| p.level() == level).map(|(p, _)| *p).collect();
                prop_assert!(at.windows(2).all(|w| w[0] < w[1]));
            }
            if positions.is_empty() {
                naive.insert(Prefix::ROOT, Node::EMPTY);
            }
            let emitted: BTreeMap<Prefix, Node> = emitted.into_iter().collect();
            prop_assert_eq!(emitted, naive);
        }

        #[test]
        fn diff_equals_naive(
            left in proptest::collection::btree_map(0u64..64, any::<u8>(), 0..40),
            right in proptest::collection::btree_map(0u64..64, any::<u8>(), 0..40),
        ) {
            let to_nodes = |m: &BTreeMap<u64, u8>| -> Vec<(Prefix, Node)> {
                m.iter().map(|(&p, &s)| (Prefix::new(2, p).unwrap(), Node::of_digest(&digest(u64::from(s))))).collect()
            };
            let (l, r) = (to_nodes(&left), to_nodes(&right));
            let got: Vec<Prefix> = diff_nodes(&l, &r).into_iter().map(|d| d.prefix).collect();
            let want: Vec<Prefix> = (0u64..64)
                .filter(|p| left.get(p) != right.get(p))
                .map(|p| Prefix::new(2, p).unwrap())
                .collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn prefix_of_is_consistent(pos in any::<u64>(), level in 0u8..=MAX_LEVEL) {
            let p = Prefix::of(pos, level);
            prop_assert!(p.range().contains(&pos));
            prop_assert!(p.contains(pos));
            prop_assert_eq!(Prefix::new(level, p.value()), Ok(p));
            if let Some(parent) = p.parent() {
                prop_assert_eq!(parent, Prefix::of(pos, level - 1));
                prop_assert_eq!(p.ancestor(level - 1), parent);
            }
        }
    }
}
