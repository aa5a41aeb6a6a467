//! The descent: find every drifting key between two peers, touching only the
//! branches that differ.
//!
//! ```text
//! round 1      Describe both ─ parameters must match; equal roots → in sync
//! round 2..    one children request per level, carrying every differing
//!              parent of that level; diff the children
//! last rounds  leaf exchange for the differing nodes that are small
//!              (≤ leaf_threshold records) or one-sided; classify by merge-join
//! ```
//!
//! A node goes to the leaf exchange when reading its records costs less than
//! descending another level: `max(count) ≤ leaf_threshold`, or when it is empty
//! on one side (every record under it drifts) and fits one leaf batch. Leaf
//! batches hold at most `max_leaf_batch` records, so memory stays bounded when
//! the drift is huge (at the price of more round trips); for small drift the
//! whole compare takes at most depth + 2 round trips.
//!
//! Everything a peer returns is checked against what was asked — children
//! under the requested parents, leaves inside the requested ranges, sorted,
//! and as many leaves as the node counted — so a faulty peer produces a
//! protocol error, never a wrong report.

use std::cmp::Ordering;
use std::fmt;

use arbor_index::{Description, Leaf};
use arbor_record::{Digest, KeyId};
use arbor_tree::{MAX_LEVEL, Node, NodeDiff, Prefix, diff_nodes};
use thiserror::Error;
use tracing::{debug, info, instrument};

use crate::peer::{Peer, PeerError};
use crate::wire;

/// Default [`CompareOptions::leaf_threshold`]: a level of descent costs up
/// to 16 children of ~10 bytes per differing parent (gap-encoded prefix,
/// count, 8-byte fingerprint, in columns), a leaf ~50 bytes. Measured with
/// `cargo bench --bench compare` (1M records, 0.1 % drift; it sweeps the
/// threshold): 8 sends the fewest bytes (325 per divergent record, against
/// 384 at 12) without adding a round trip; lower thresholds save a little
/// more but descend further, one round trip per level.
pub const DEFAULT_LEAF_THRESHOLD: u64 = 8;
/// Default [`CompareOptions::max_leaf_batch`].
pub const DEFAULT_MAX_LEAF_BATCH: u64 = 65_536;
/// Default [`CompareOptions::max_parents_per_request`]: 8,192 parents bring
/// back at most 131,072 children, about 6 MiB on the wire.
pub const DEFAULT_MAX_PARENTS_PER_REQUEST: usize = 8_192;

/// Tuning of a compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompareOptions {
    /// Differing nodes with at most this many records (on either side) are
    /// resolved by exchanging their leaves instead of descending.
    pub leaf_threshold: u64,
    /// Most records one leaf request may cover; bounds memory and message size.
    pub max_leaf_batch: u64,
    /// Most parents in one children request; a level with more differing
    /// parents takes several requests (each counted as a round trip).
    pub max_parents_per_request: usize,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            leaf_threshold: DEFAULT_LEAF_THRESHOLD,
            max_leaf_batch: DEFAULT_MAX_LEAF_BATCH,
            max_parents_per_request: DEFAULT_MAX_PARENTS_PER_REQUEST,
        }
    }
}

/// Which side of a compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The left peer.
    Left,
    /// The right peer.
    Right,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Left => "left",
            Side::Right => "right",
        })
    }
}

/// Why a compare could not produce a report.
#[derive(Debug, Error)]
pub enum CompareError {
    /// One side failed.
    #[error("{side} peer failed")]
    Peer {
        /// Which side.
        side: Side,
        /// Its error.
        #[source]
        source: PeerError,
    },
    /// The two sides hash differently, so comparing them would be meaningless.
    #[error("cannot compare: {what} differs (left {left}, right {right})")]
    Incompatible {
        /// `encoding version`, `key id` or `schema`.
        what: &'static str,
        /// The left side's value.
        left: String,
        /// The right side's value.
        right: String,
    },
    /// A side answered with something it was not asked for.
    #[error("{side} peer broke the protocol: {detail}")]
    Protocol {
        /// Which side.
        side: Side,
        /// What was wrong.
        detail: String,
    },
}

/// How a key drifts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DriftKind {
    /// Present on the right only.
    MissingLeft,
    /// Present on the left only.
    MissingRight,
    /// Present on both with different digests.
    Changed,
}

impl DriftKind {
    /// The report name: `missing_left`, `missing_right`, `changed`.
    pub fn name(self) -> &'static str {
        match self {
            DriftKind::MissingLeft => "missing_left",
            DriftKind::MissingRight => "missing_right",
            DriftKind::Changed => "changed",
        }
    }
}

/// One drifting key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Drift {
    /// How it drifts.
    pub kind: DriftKind,
    /// Its position.
    pub position: u64,
    /// Its canonical key.
    pub key: Vec<u8>,
    /// Its digest on the left, if present there.
    pub left: Option<Digest>,
    /// Its digest on the right, if present there.
    pub right: Option<Digest>,
}

/// Requests and bytes exchanged with one side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Requests sent.
    pub requests: u64,
    /// Bytes of the requests as encoded for the wire.
    pub request_bytes: u64,
    /// Bytes of the responses as encoded for the wire.
    pub response_bytes: u64,
}

impl Traffic {
    /// Both directions.
    pub fn total_bytes(&self) -> u64 {
        self.request_bytes + self.response_bytes
    }
}

/// What a compare cost and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompareStats {
    /// Sequential request rounds (both sides are asked concurrently in each).
    pub round_trips: u64,
    /// Levels descended below the root.
    pub levels: u64,
    /// Node entries received from both sides.
    pub nodes_received: u64,
    /// Leaves received from both sides.
    pub leaves_received: u64,
    /// Traffic with the left side.
    pub left: Traffic,
    /// Traffic with the right side.
    pub right: Traffic,
    /// Records on the left.
    pub left_count: u64,
    /// Records on the right.
    pub right_count: u64,
    /// Drift found, by kind.
    pub missing_left: u64,
    /// See `missing_left`.
    pub missing_right: u64,
    /// See `missing_left`.
    pub changed: u64,
    /// What the left side described (parameters, root, watermark).
    pub left_description: Option<Description>,
    /// What the right side described.
    pub right_description: Option<Description>,
}

impl CompareStats {
    /// Drifting keys in all.
    pub fn drift(&self) -> u64 {
        self.missing_left + self.missing_right + self.changed
    }

    fn count(&mut self, kind: DriftKind) {
        match kind {
            DriftKind::MissingLeft => self.missing_left += 1,
            DriftKind::MissingRight => self.missing_right += 1,
            DriftKind::Changed => self.changed += 1,
        }
    }
}

fn peer_err(side: Side) -> impl FnOnce(PeerError) -> CompareError {
    move |source| CompareError::Peer { side, source }
}

fn protocol(side: Side, detail: impl Into<String>) -> CompareError {
    CompareError::Protocol {
        side,
        detail: detail.into(),
    }
}

/// Compares two peers and calls `on_drift` for every drifting key, in
/// (position, key) order within each leaf batch. Both peers are told to
/// [finish](Peer::finish) afterwards, whatever the outcome.
#[instrument(skip_all, fields(left = left.dataset(), right = right.dataset()))]
pub async fn compare<L: Peer, R: Peer>(
    left: &L,
    right: &R,
    options: &CompareOptions,
    on_drift: impl FnMut(Drift),
) -> Result<CompareStats, CompareError> {
    let outcome = descend(left, right, options, on_drift).await;
    tokio::join!(left.finish(), right.finish());
    outcome
}

/// The descent itself (see the module diagram). (Long on purpose: one loop
/// over levels whose steps share the frontier, the budgets and the stats;
/// split, each piece would carry all of them.)
async fn descend<L: Peer, R: Peer>(
    left: &L,
    right: &R,
    options: &CompareOptions,
    mut on_drift: impl FnMut(Drift),
) -> Result<CompareStats, CompareError> {
    let mut stats = CompareStats::default();
    let (dl, dr) = tokio::join!(left.describe(), right.describe());
    let (mut dl, mut dr) = (
        dl.map_err(peer_err(Side::Left))?,
        dr.map_err(peer_err(Side::Right))?,
    );
    stats.round_trips += 1;
    stats.left = traffic(
        wire::describe_request(left.dataset()),
        wire::describe_response(&dl),
    );
    stats.right = traffic(
        wire::describe_request(right.dataset()),
        wire::describe_response(&dr),
    );
    if dl.key_id != dr.key_id {
        // During a key rotation one side may still hold an index under the
        // other's key: the right side is asked first, then the left.
        let rt = &mut stats.round_trips;
        if let Some(d) = switch_key(right, dl.key_id, Side::Right, rt, &mut stats.right).await? {
            dr = d;
        } else if let Some(d) = switch_key(left, dr.key_id, Side::Left, rt, &mut stats.left).await?
        {
            dl = d;
        }
    }
    stats.left_description = Some(dl.clone());
    stats.right_description = Some(dr.clone());
    check_compatible(&dl, &dr)?;
    stats.left_count = dl.count();
    stats.right_count = dr.count();
    if dl.root == dr.root {
        info!(records = dl.count(), "in sync after describe");
        return Ok(stats);
    }

    // Descend level by level; collect the nodes to settle by leaf exchange.
    let mut frontier = vec![NodeDiff {
        prefix: Prefix::ROOT,
        left: dl.root,
        right: dr.root,
    }];
    let mut to_leaves: Vec<NodeDiff> = Vec::new();
    while !frontier.is_empty() {
        let mut parents = Vec::new();
        for d in frontier {
            if settles_by_leaves(&d, options) {
                to_leaves.push(d);
            } else {
                parents.push(d.prefix);
            }
        }
        if parents.is_empty() {
            break;
        }
        stats.levels += 1;
        frontier = Vec::new();
        for chunk in parents.chunks(options.max_parents_per_request.max(1)) {
            let (cl, cr) = tokio::join!(left.children(chunk), right.children(chunk));
            let (cl, cr) = (
                cl.map_err(peer_err(Side::Left))?,
                cr.map_err(peer_err(Side::Right))?,
            );
            stats.round_trips += 1;
            check_children(Side::Left, chunk, &cl)?;
            check_children(Side::Right, chunk, &cr)?;
            add_traffic(
                &mut stats.left,
                wire::nodes_request(left.dataset(), chunk),
                wire::nodes_response(&cl),
            );
            add_traffic(
                &mut stats.right,
                wire::nodes_request(right.dataset(), chunk),
                wire::nodes_response(&cr),
            );
            stats.nodes_received += (cl.len() + cr.len()) as u64;
            frontier.extend(diff_nodes(&cl, &cr));
        }
        debug!(
            level = stats.levels,
            differing = frontier.len(),
            "descended one level"
        );
    }

    to_leaves.sort_by_key(|d| d.prefix.range().into_inner().0);
    for batch in leaf_batches(&to_leaves, options.max_leaf_batch) {
        let ranges_l: Vec<Prefix> = batch
            .iter()
            .filter(|d| d.left.count > 0)
            .map(|d| d.prefix)
            .collect();
        let ranges_r: Vec<Prefix> = batch
            .iter()
            .filter(|d| d.right.count > 0)
            .map(|d| d.prefix)
            .collect();
        let (ll, lr) = tokio::join!(
            fetch_leaves(left, &ranges_l),
            fetch_leaves(right, &ranges_r)
        );
        let (ll, lr) = (
            ll.map_err(peer_err(Side::Left))?,
            lr.map_err(peer_err(Side::Right))?,
        );
        stats.round_trips += 1;
        check_leaves(Side::Left, batch, |d| d.left.count, &ll)?;
        check_leaves(Side::Right, batch, |d| d.right.count, &lr)?;
        if !ranges_l.is_empty() {
            add_traffic(
                &mut stats.left,
                wire::leaves_request(left.dataset(), &ranges_l),
                wire::leaves_response(&ll),
            );
        }
        if !ranges_r.is_empty() {
            add_traffic(
                &mut stats.right,
                wire::leaves_request(right.dataset(), &ranges_r),
                wire::leaves_response(&lr),
            );
        }
        stats.leaves_received += (ll.len() + lr.len()) as u64;
        classify(&ll, &lr, |d| {
            stats.count(d.kind);
            on_drift(d);
        });
    }
    info!(
        drift = stats.drift(),
        round_trips = stats.round_trips,
        right_bytes = stats.right.total_bytes(),
        "compare finished"
    );
    Ok(stats)
}

/// Compares and collects the drift, sorted by (position, key).
pub async fn compare_collect<L: Peer, R: Peer>(
    left: &L,
    right: &R,
    options: &CompareOptions,
) -> Result<(Vec<Drift>, CompareStats), CompareError> {
    let mut drift = Vec::new();
    let stats = compare(left, right, options, |d| drift.push(d)).await?;
    drift.sort_by(|a, b| (a.position, &a.key).cmp(&(b.position, &b.key)));
    Ok((drift, stats))
}

fn settles_by_leaves(d: &NodeDiff, options: &CompareOptions) -> bool {
    let most = d.left.count.max(d.right.count);
    let one_sided = d.left.count == 0 || d.right.count == 0;
    d.prefix.level() == MAX_LEVEL
        || most <= options.leaf_threshold
        || (one_sided && most <= options.max_leaf_batch)
}

/// Splits the sorted leaf work into batches of at most `max` records (a
/// single larger node — possible only at the deepest level — gets its own).
fn leaf_batches(nodes: &[NodeDiff], max: u64) -> Vec<&[NodeDiff]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut weight = 0u64;
    for (i, d) in nodes.iter().enumerate() {
        let w = d.left.count.max(d.right.count);
        if i > start && weight + w > max {
            out.push(&nodes[start..i]);
            start = i;
            weight = 0;
        }
        weight += w;
    }
    if start < nodes.len() {
        out.push(&nodes[start..]);
    }
    out
}

async fn fetch_leaves<P: Peer>(peer: &P, ranges: &[Prefix]) -> Result<Vec<Leaf>, PeerError> {
    if ranges.is_empty() {
        Ok(Vec::new())
    } else {
        peer.leaves(ranges).await
    }
}

/// Asks `peer` to describe its dataset under `key` ([`Peer::switch_key`]);
/// when it can, counts the round trip and its bytes.
async fn switch_key<P: Peer>(
    peer: &P,
    key: KeyId,
    side: Side,
    round_trips: &mut u64,
    traffic: &mut Traffic,
) -> Result<Option<Description>, CompareError> {
    let switched = peer.switch_key(key).await.map_err(peer_err(side))?;
    if let Some(d) = &switched {
        *round_trips += 1;
        add_traffic(
            traffic,
            wire::describe_request(peer.dataset()) + wire::KEY_ID_FIELD_BYTES,
            wire::describe_response(d),
        );
    }
    Ok(switched)
}

fn traffic(request: u64, response: u64) -> Traffic {
    Traffic {
        requests: 1,
        request_bytes: request,
        response_bytes: response,
    }
}

fn add_traffic(t: &mut Traffic, request: u64, response: u64) {
    t.requests += 1;
    t.request_bytes += request;
    t.response_bytes += response;
}

fn check_compatible(l: &Description, r: &Description) -> Result<(), CompareError> {
    if l.encoding_version != r.encoding_version {
        return Err(CompareError::Incompatible {
            what: "canonical encoding version",
            left: l.encoding_version.to_string(),
            right: r.encoding_version.to_string(),
        });
    }
    if l.key_id != r.key_id {
        return Err(CompareError::Incompatible {
            what: "hashing key id",
            left: l.key_id.to_string(),
            right: r.key_id.to_string(),
        });
    }
    if l.schema_fingerprint != r.schema_fingerprint {
        return Err(CompareError::Incompatible {
            what: "schema fingerprint",
            left: hex(&l.schema_fingerprint),
            right: hex(&r.schema_fingerprint),
        });
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Children must be strictly ascending, each under one of the (sorted)
/// parents, and non-empty.
fn check_children(
    side: Side,
    parents: &[Prefix],
    children: &[(Prefix, Node)],
) -> Result<(), CompareError> {
    let mut parent_idx = 0;
    let mut last: Option<Prefix> = None;
    for &(child, node) in children {
        if last.is_some_and(|l| l >= child) {
            return Err(protocol(side, format!("children out of order at {child}")));
        }
        last = Some(child);
        if node.is_empty() {
            return Err(protocol(side, format!("empty node {child} returned")));
        }
        let parent = child.parent();
        while parent_idx < parents.len() && Some(parents[parent_idx]) < parent {
            parent_idx += 1;
        }
        if parents.get(parent_idx).copied() != parent {
            return Err(protocol(
                side,
                format!("{child} is not under a requested parent"),
            ));
        }
    }
    Ok(())
}

/// Leaves must be strictly ascending by (position, key), inside the
/// requested ranges, and exactly as many per range as the node counted.
fn check_leaves(
    side: Side,
    batch: &[NodeDiff],
    count_of: impl Fn(&NodeDiff) -> u64,
    leaves: &[Leaf],
) -> Result<(), CompareError> {
    let outside = |leaf: &Leaf| {
        protocol(
            side,
            format!(
                "leaf at {:#018x} is outside the requested ranges",
                leaf.position
            ),
        )
    };
    let closed = |d: &NodeDiff, seen: u64| {
        if seen == count_of(d) {
            Ok(())
        } else {
            Err(protocol(
                side,
                format!(
                    "{} holds {seen} leaves but its node counted {}",
                    d.prefix,
                    count_of(d)
                ),
            ))
        }
    };
    let mut ranges = batch.iter().filter(|d| count_of(d) > 0);
    let mut current = ranges.next();
    let mut seen = 0u64;
    let mut last: Option<(u64, &[u8])> = None;
    for leaf in leaves {
        let here = (leaf.position, leaf.key.as_slice());
        if last.is_some_and(|l| l >= here) {
            return Err(protocol(
                side,
                format!("leaves out of order at position {:#018x}", leaf.position),
            ));
        }
        last = Some(here);
        // Close the ranges that end before this leaf.
        while let Some(d) = current.filter(|d| !d.prefix.contains(leaf.position)) {
            if *d.prefix.range().end() >= leaf.position {
                return Err(outside(leaf));
            }
            closed(d, seen)?;
            current = ranges.next();
            seen = 0;
        }
        if current.is_none() {
            return Err(outside(leaf));
        }
        seen += 1;
    }
    while let Some(d) = current {
        closed(d, seen)?;
        current = ranges.next();
        seen = 0;
    }
    Ok(())
}

/// Merge-joins two sorted leaf lists into drift.
fn classify(left: &[Leaf], right: &[Leaf], mut emit: impl FnMut(Drift)) {
    let (mut i, mut j) = (0, 0);
    loop {
        let ord = match (left.get(i), right.get(j)) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(l), Some(r)) => (l.position, &l.key).cmp(&(r.position, &r.key)),
        };
        match ord {
            Ordering::Less => {
                let l = &left[i];
                emit(Drift {
                    kind: DriftKind::MissingRight,
                    position: l.position,
                    key: l.key.clone(),
                    left: Some(l.digest),
                    right: None,
                });
                i += 1;
            }
            Ordering::Greater => {
                let r = &right[j];
                emit(Drift {
                    kind: DriftKind::MissingLeft,
                    position: r.position,
                    key: r.key.clone(),
                    left: None,
                    right: Some(r.digest),
                });
                j += 1;
            }
            Ordering::Equal => {
                let (l, r) = (&left[i], &right[j]);
                if l.digest != r.digest {
                    emit(Drift {
                        kind: DriftKind::Changed,
                        position: l.position,
                        key: l.key.clone(),
                        left: Some(l.digest),
                        right: Some(r.digest),
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(position: u64, key: u8, d: u8) -> Leaf {
        Leaf {
            position,
            key: vec![1, key],
            digest: Digest([d; 32]),
        }
    }

    fn nd(level: u8, value: u64, l: u64, r: u64) -> NodeDiff {
        let n = |c| Node {
            sum: arbor_tree::Sum256::ZERO,
            count: c,
        };
        NodeDiff {
            prefix: Prefix::new(level, value).unwrap(),
            left: n(l),
            right: n(r),
        }
    }

    #[test]
    fn classify_covers_every_kind() {
        let l = [leaf(1, 1, 1), leaf(2, 2, 2), leaf(2, 3, 3)];
        let r = [leaf(2, 2, 9), leaf(2, 3, 3), leaf(5, 4, 4)];
        let mut got = Vec::new();
        classify(&l, &r, |d| got.push((d.kind, d.position)));
        assert_eq!(
            got,
            [
                (DriftKind::MissingRight, 1),
                (DriftKind::Changed, 2),
                (DriftKind::MissingLeft, 5)
            ]
        );
    }

    #[test]
    fn leaf_checks_catch_a_lying_peer() {
        let batch = [nd(1, 0, 2, 0), nd(1, 3, 1, 0)];
        let at = |hi: u64, k| leaf(hi << 60 | 5, k, 0);
        assert!(
            check_leaves(
                Side::Left,
                &batch,
                |d| d.left.count,
                &[at(0, 1), at(0, 2), at(3, 1)]
            )
            .is_ok()
        );
        // Too few under the first range.
        let e =
            check_leaves(Side::Left, &batch, |d| d.left.count, &[at(0, 1), at(3, 1)]).unwrap_err();
        assert!(e.to_string().contains("holds 1 leaves"), "{e}");
        // Outside every range.
        assert!(
            check_leaves(
                Side::Left,
                &batch,
                |d| d.left.count,
                &[at(0, 1), at(0, 2), at(4, 1)]
            )
            .is_err()
        );
        // Out of order.
        assert!(
            check_leaves(
                Side::Left,
                &batch,
                |d| d.left.count,
                &[at(0, 2), at(0, 1), at(3, 1)]
            )
            .is_err()
        );
        // Missing the last range entirely.
        assert!(check_leaves(Side::Left, &batch, |d| d.left.count, &[at(0, 1), at(0, 2)]).is_err());
    }

    #[test]
    fn children_checks_catch_a_lying_peer() {
        let parents = [Prefix::new(1, 2).unwrap(), Prefix::new(1, 7).unwrap()];
        let n = Node::of_digest(&[1; 32]);
        let c = |v| (Prefix::new(2, v).unwrap(), n);
        assert!(check_children(Side::Right, &parents, &[c(0x20), c(0x2f), c(0x70)]).is_ok());
        assert!(check_children(Side::Right, &parents, &[c(0x20), c(0x30)]).is_err());
        assert!(check_children(Side::Right, &parents, &[c(0x2f), c(0x20)]).is_err());
        assert!(
            check_children(
                Side::Right,
                &parents,
                &[(Prefix::new(2, 0x21).unwrap(), Node::EMPTY)]
            )
            .is_err()
        );
    }

    #[test]
    fn leaf_batches_respect_the_cap() {
        let nodes: Vec<NodeDiff> = (0..10).map(|i| nd(2, i, 3, 4)).collect();
        let batches = leaf_batches(&nodes, 10);
        assert_eq!(
            batches.iter().map(|b| b.len()).collect::<Vec<_>>(),
            [2, 2, 2, 2, 2]
        );
        assert_eq!(leaf_batches(&nodes, 1).len(), 10);
        assert!(leaf_batches(&[], 10).is_empty());
    }
}
