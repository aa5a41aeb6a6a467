//! The descent against a naive oracle: for random datasets and random drift,
//! the drift found between two RocksDB indexes is exactly the set difference
//! of two BTreeMaps.

use std::collections::{BTreeMap, BTreeSet};

use arbor_index::{Change, Index, IndexConfig, IndexError};
use arbor_record::{DatasetKeys, Digest, HashedRecord, Record, Value, tuple_bytes};
use arbor_sync::{CompareError, CompareOptions, DriftKind, LocalPeer, compare_collect};
use arbor_tree::MAX_LEVEL;
use proptest::prelude::*;
use tempfile::TempDir;

type Rows = BTreeMap<i64, i64>;

fn config(secret: &[u8]) -> IndexConfig {
    IndexConfig {
        keys: DatasetKeys::derive(secret),
        schema_fingerprint: [1; 32],
    }
}

fn record(k: i64, v: i64) -> Record {
    Record::new(
        vec![Value::Integer(k.into())],
        vec![Value::Integer(v.into())],
    )
}

fn open(dir: &TempDir, name: &str) -> Index {
    Index::open(dir.path().join(name), config(b"oracle")).unwrap()
}

fn build(dir: &TempDir, name: &str, rows: &Rows) -> Index {
    let index = open(dir, name);
    index
        .build(
            rows.iter()
                .map(|(&k, &v)| Ok::<_, IndexError>(record(k, v))),
            None,
        )
        .unwrap();
    index
}

/// The oracle: (kind, canonical key) of every drifting key.
fn oracle(left: &Rows, right: &Rows) -> BTreeSet<(DriftKind, Vec<u8>)> {
    let key = |k: i64| tuple_bytes(&[Value::Integer(k.into())]);
    let mut out = BTreeSet::new();
    for (k, v) in left {
        match right.get(k) {
            None => out.insert((DriftKind::MissingRight, key(*k))),
            Some(w) if w != v => out.insert((DriftKind::Changed, key(*k))),
            Some(_) => false,
        };
    }
    for k in right.keys() {
        if !left.contains_key(k) {
            out.insert((DriftKind::MissingLeft, key(*k)));
        }
    }
    out
}

fn run(
    left: &Index,
    right: &Index,
    options: &CompareOptions,
) -> (BTreeSet<(DriftKind, Vec<u8>)>, arbor_sync::CompareStats) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (l, r) = (
        LocalPeer::new(left, "left").unwrap(),
        LocalPeer::new(right, "right").unwrap(),
    );
    let (drift, stats) = rt.block_on(compare_collect(&l, &r, options)).unwrap();
    let set: BTreeSet<_> = drift.iter().map(|d| (d.kind, d.key.clone())).collect();
    assert_eq!(set.len(), drift.len(), "a key was reported twice");
    (set, stats)
}

/// A drift plan: per op, a key and what happens to it on the right.
#[derive(Debug, Clone)]
enum Op {
    Insert(i64, i64),
    Delete(usize),
    Change(usize, i64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            (any::<i64>(), any::<i64>()).prop_map(|(k, v)| Op::Insert(k, v)),
            any::<usize>().prop_map(Op::Delete),
            (any::<usize>(), any::<i64>()).prop_map(|(i, v)| Op::Change(i, v)),
        ],
        0..80,
    )
}

fn apply_ops(base: &Rows, ops: &[Op]) -> Rows {
    let mut right = base.clone();
    let keys: Vec<i64> = base.keys().copied().collect();
    for op in ops {
        match *op {
            Op::Insert(k, v) => {
                right.insert(k, v);
            }
            Op::Delete(i) if !keys.is_empty() => {
                right.remove(&keys[i % keys.len()]);
            }
            Op::Change(i, v) if !keys.is_empty() => {
                right.insert(keys[i % keys.len()], v);
            }
            _ => {}
        }
    }
    right
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Both sides built from scratch; any drift; any leaf threshold.
    #[test]
    fn drift_equals_set_difference(
        base in proptest::collection::btree_map(any::<i64>(), any::<i64>(), 0..1500),
        ops in ops(),
        threshold in prop_oneof![Just(0u64), 1u64..40, Just(1_000_000)],
        batch in prop_oneof![Just(1u64), 2u64..200, Just(arbor_sync::DEFAULT_MAX_LEAF_BATCH)],
        parents in prop_oneof![Just(1usize), 2usize..20, Just(arbor_sync::DEFAULT_MAX_PARENTS_PER_REQUEST)],
    ) {
        let dir = TempDir::new().unwrap();
        let right_rows = apply_ops(&base, &ops);
        let (l, r) = (build(&dir, "l", &base), build(&dir, "r", &right_rows));
        let options = CompareOptions { leaf_threshold: threshold, max_leaf_batch: batch, max_parents_per_request: parents };
        let (got, stats) = run(&l, &r, &options);
        let want = oracle(&base, &right_rows);
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(stats.drift(), want.len() as u64);
        prop_assert_eq!((stats.left_count, stats.right_count), (base.len() as u64, right_rows.len() as u64));
        if want.is_empty() {
            prop_assert_eq!(stats.round_trips, 1);
        }
    }

    /// The right side reaches its state by incremental changes, not a build.
    #[test]
    fn drift_after_incremental_changes(
        base in proptest::collection::btree_map(0i64..3000, any::<i64>(), 0..800),
        ops in ops(),
        chunk in 1usize..50,
    ) {
        let dir = TempDir::new().unwrap();
        let right_rows = apply_ops(&base, &ops);
        let l = build(&dir, "l", &base);
        let r = build(&dir, "r", &base);
        let mut changes: Vec<Change> = right_rows.iter().filter(|(k, v)| base.get(k) != Some(v)).map(|(&k, &v)| Change::Upsert(record(k, v))).collect();
        changes.extend(base.keys().filter(|k| !right_rows.contains_key(k)).map(|&k| Change::Delete(vec![Value::Integer(k.into())])));
        for c in changes.chunks(chunk) {
            r.apply(c, None).unwrap();
        }
        let (got, _) = run(&l, &r, &CompareOptions::default());
        prop_assert_eq!(got, oracle(&base, &right_rows));
        // And the other way round: kinds swap.
        let (back, _) = run(&r, &l, &CompareOptions::default());
        prop_assert_eq!(back, oracle(&right_rows, &base));
    }

    /// Every record in one narrow bucket, with shared positions: the descent
    /// must go to the deepest level and still be exact.
    #[test]
    fn one_bucket_and_shared_positions(
        left in proptest::collection::btree_map(0u16..400, any::<u8>(), 0..300),
        right in proptest::collection::btree_map(0u16..400, any::<u8>(), 0..300),
        threshold in 0u64..8,
    ) {
        let dir = TempDir::new().unwrap();
        // Positions share their top 48 bits, and ids i and i+64 share a position.
        let hashed = |m: &BTreeMap<u16, u8>| -> Vec<HashedRecord> {
            m.iter().map(|(&id, &v)| HashedRecord {
                position: 0x5eed_0000_0000_0000 | 0x0000_abcd_0000_0000 | u64::from(id % 64),
                key: tuple_bytes(&[Value::Integer(id.into())]),
                // Like the real row digest, this one covers the whole key:
                // two keys at one position never share a digest.
                digest: Digest(*blake3::hash(&[&[v][..], &id.to_be_bytes()].concat()).as_bytes()),
            }).collect()
        };
        let (hl, hr) = (hashed(&left), hashed(&right));
        let l = open(&dir, "l");
        l.build_hashed(hl.iter().cloned().map(Ok::<_, IndexError>), None).unwrap();
        let r = open(&dir, "r");
        r.build_hashed(hr.iter().cloned().map(Ok::<_, IndexError>), None).unwrap();
        let to_rows = |h: &[HashedRecord]| -> BTreeMap<Vec<u8>, Digest> { h.iter().map(|x| (x.key.clone(), x.digest)).collect() };
        let (ml, mr) = (to_rows(&hl), to_rows(&hr));
        let mut want = BTreeSet::new();
        for (k, d) in &ml {
            match mr.get(k) {
                None => { want.insert((DriftKind::MissingRight, k.clone())); }
                Some(e) if e != d => { want.insert((DriftKind::Changed, k.clone())); }
                _ => {}
            }
        }
        for k in mr.keys() {
            if !ml.contains_key(k) { want.insert((DriftKind::MissingLeft, k.clone())); }
        }
        let (got, stats) = run(&l, &r, &CompareOptions { leaf_threshold: threshold, ..CompareOptions::default() });
        prop_assert_eq!(got, want);
        prop_assert!(stats.levels <= u64::from(MAX_LEVEL));
    }
}

#[test]
fn edge_cases_empty_sides() {
    let dir = TempDir::new().unwrap();
    let empty = Rows::new();
    let some: Rows = (0..5000).map(|k| (k, k)).collect();
    let (e1, e2, s) = (
        build(&dir, "e1", &empty),
        build(&dir, "e2", &empty),
        build(&dir, "s", &some),
    );
    let (got, stats) = run(&e1, &e2, &CompareOptions::default());
    assert!(got.is_empty());
    assert_eq!(stats.round_trips, 1);
    let (got, stats) = run(&e1, &s, &CompareOptions::default());
    assert_eq!(got, oracle(&empty, &some));
    assert_eq!(stats.missing_left, 5000);
    // One side empty: no descent needed, straight to leaves.
    assert_eq!(stats.round_trips, 2);
    let (got, _) = run(&s, &e1, &CompareOptions::default());
    assert_eq!(got, oracle(&some, &empty));
    // A small leaf batch still finds everything, in more round trips.
    let (got, stats) = run(
        &s,
        &e1,
        &CompareOptions {
            max_leaf_batch: 100,
            ..CompareOptions::default()
        },
    );
    assert_eq!(got.len(), 5000);
    assert!(stats.round_trips > 2);
}

#[test]
fn identical_datasets_take_one_round_trip() {
    let dir = TempDir::new().unwrap();
    let rows: Rows = (0..20_000).map(|k| (k * 3, k)).collect();
    let (a, b) = (build(&dir, "a", &rows), build(&dir, "b", &rows));
    let (got, stats) = run(&a, &b, &CompareOptions::default());
    assert!(got.is_empty());
    assert_eq!(stats.round_trips, 1);
    assert_eq!(stats.nodes_received, 0);
}

#[test]
fn mismatched_parameters_are_errors_not_drift() {
    let dir = TempDir::new().unwrap();
    let rows: Rows = (0..100).map(|k| (k, k)).collect();
    let a = build(&dir, "a", &rows);
    let other_key = Index::open(dir.path().join("b"), config(b"another secret")).unwrap();
    other_key
        .build(
            rows.iter()
                .map(|(&k, &v)| Ok::<_, IndexError>(record(k, v))),
            None,
        )
        .unwrap();
    let other_schema = Index::open(
        dir.path().join("c"),
        IndexConfig {
            keys: DatasetKeys::derive(b"oracle"),
            schema_fingerprint: [2; 32],
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let la = LocalPeer::new(&a, "a").unwrap();
    for (other, what) in [
        (&other_key, "hashing key id"),
        (&other_schema, "schema fingerprint"),
    ] {
        let lb = LocalPeer::new(other, "b").unwrap();
        match rt.block_on(compare_collect(&la, &lb, &CompareOptions::default())) {
            Err(CompareError::Incompatible { what: w, .. }) => assert_eq!(w, what),
            other => panic!("expected incompatibility, got {other:?}"),
        }
    }
}

#[test]
fn drift_costs_few_round_trips_and_bytes() {
    // 20k records, 30 drifting keys: round trips stay within depth + 2 and
    // bytes per drifting key stay far below a copy of the data.
    let dir = TempDir::new().unwrap();
    let base: Rows = (0..20_000).map(|k| (k, k)).collect();
    let mut right = base.clone();
    for k in 0..10 {
        right.remove(&(k * 1000));
        right.insert(k * 1000 + 1, -1);
        right.insert(100_000 + k, 1);
    }
    let (l, r) = (build(&dir, "l", &base), build(&dir, "r", &right));
    let depth = u64::from(l.snapshot().unwrap().depth());
    let (got, stats) = run(&l, &r, &CompareOptions::default());
    assert_eq!(got, oracle(&base, &right));
    assert_eq!(got.len(), 30);
    // Describe, one round per level descended, one leaf round; the descent
    // goes at most two levels below the stored depth for this few records.
    assert_eq!(stats.round_trips, stats.levels + 2, "{stats:?}");
    assert!(stats.levels <= depth + 2, "{stats:?}");
    let per_drift = stats.right.total_bytes() / got.len() as u64;
    assert!(
        per_drift < 2048,
        "{per_drift} bytes per drifting key: {stats:?}"
    );
}
