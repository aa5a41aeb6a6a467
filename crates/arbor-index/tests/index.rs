//! The index against its own invariants: the tree is a function of the
//! record set (not of order, batching or history), verify catches every kind
//! of tampering, and bad bytes or parameters are typed errors.

use std::collections::BTreeMap;

use arbor_index::{Change, ChangeTime, Index, IndexConfig, IndexError, IndexSnapshot, Leaf, cf};
use arbor_record::{Column, DatasetKeys, Record, Schema, Value, ValueKind};
use arbor_tree::{Node, Prefix};
use proptest::prelude::*;
use tempfile::TempDir;

fn schema() -> Schema {
    Schema::new(
        vec![Column::new("id", ValueKind::Integer)],
        vec![Column::new("v", ValueKind::Integer)],
    )
    .expect("valid schema")
}

fn config(secret: &[u8]) -> IndexConfig {
    IndexConfig {
        keys: DatasetKeys::derive(secret),
        schema_fingerprint: schema().fingerprint(),
    }
}

fn record(k: i64, v: i64) -> Record {
    Record::new(
        vec![Value::Integer(k.into())],
        vec![Value::Integer(v.into())],
    )
}

fn build(dir: &TempDir, name: &str, rows: impl IntoIterator<Item = (i64, i64)>) -> Index {
    let index = Index::open(dir.path().join(name), config(b"test")).expect("open");
    index
        .build(
            rows.into_iter()
                .map(|(k, v)| Ok::<_, IndexError>(record(k, v))),
            None,
        )
        .expect("build");
    index
}

/// The whole logical tree down to `levels`, plus every leaf: equal for two
/// indexes exactly when they hold the same records (whatever their stored depth).
fn logical_tree(s: &IndexSnapshot<'_>, levels: u8) -> (Vec<(Prefix, Node)>, Vec<Leaf>) {
    let mut all = vec![(Prefix::ROOT, s.root().unwrap())];
    let mut frontier = vec![Prefix::ROOT];
    for _ in 0..levels {
        let children = s.children(&frontier).unwrap();
        frontier = children.iter().map(|(p, _)| *p).collect();
        all.extend(children);
    }
    (all, s.leaves(&[Prefix::ROOT]).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Incremental changes in any batching reach the tree of a fresh build of
    /// the final records, and verify passes along the way.
    #[test]
    fn incremental_equals_fresh_build(
        base in proptest::collection::btree_map(0i64..400, any::<i64>(), 0..300),
        ops in proptest::collection::vec((0i64..400, proptest::option::of(any::<i64>())), 0..300),
        batch in 1usize..64,
    ) {
        let dir = TempDir::new().unwrap();
        let inc = build(&dir, "inc", base.clone());
        let mut want = base.clone();
        let changes: Vec<Change> = ops.iter().map(|&(k, v)| match v {
            Some(v) => { want.insert(k, v); Change::Upsert(record(k, v)) }
            None => { want.remove(&k); Change::Delete(vec![Value::Integer(k.into())]) }
        }).collect();
        for chunk in changes.chunks(batch) {
            inc.apply(chunk, None).unwrap();
        }
        let fresh = build(&dir, "fresh", want.clone());
        let (a, b) = (inc.snapshot().unwrap(), fresh.snapshot().unwrap());
        prop_assert_eq!(a.root().unwrap().count, want.len() as u64);
        prop_assert_eq!(logical_tree(&a, 4), logical_tree(&b, 4));
        prop_assert!(inc.verify().unwrap().is_ok());
        prop_assert!(fresh.verify().unwrap().is_ok());
    }

    /// The root does not depend on the order records arrive in.
    #[test]
    fn root_ignores_insertion_order(rows in proptest::collection::btree_map(any::<i64>(), any::<i64>(), 0..200), seed in any::<u64>()) {
        let dir = TempDir::new().unwrap();
        let mut shuffled: Vec<(i64, i64)> = rows.clone().into_iter().collect();
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let a = build(&dir, "a", rows.clone());
        let b = build(&dir, "b", shuffled);
        // And one record at a time, from empty.
        let c = Index::open(dir.path().join("c"), config(b"test")).unwrap();
        for (&k, &v) in rows.iter().rev() {
            c.apply(&[Change::Upsert(record(k, v))], None).unwrap();
        }
        let root = |i: &Index| i.snapshot().unwrap().root().unwrap();
        prop_assert_eq!(root(&a), root(&b));
        prop_assert_eq!(root(&a), root(&c));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A rescan reaches the tree of a fresh build of what the source holds
    /// now: inserts, updates and vanished records included.
    #[test]
    fn rescan_equals_fresh_build(
        before in proptest::collection::btree_map(0i64..600, any::<i64>(), 0..400),
        now in proptest::collection::btree_map(0i64..600, any::<i64>(), 0..400),
    ) {
        let dir = TempDir::new().unwrap();
        let index = build(&dir, "r", before.clone());
        let stats = index
            .rescan(now.iter().map(|(&k, &v)| Ok::<_, IndexError>(record(k, v))), Some(b"scan-2"))
            .unwrap();
        let vanished = before.keys().filter(|k| !now.contains_key(k)).count() as u64;
        let inserted = now.keys().filter(|k| !before.contains_key(k)).count() as u64;
        let updated = now.iter().filter(|(k, v)| before.get(k).is_some_and(|b| b != *v)).count() as u64;
        prop_assert_eq!((stats.vanished, stats.applied.inserted, stats.applied.updated), (vanished, inserted, updated));
        let fresh = build(&dir, "f", now.clone());
        let (a, b) = (index.snapshot().unwrap(), fresh.snapshot().unwrap());
        prop_assert_eq!(logical_tree(&a, 4), logical_tree(&b, 4));
        let described = a.describe().unwrap();
        prop_assert_eq!(described.watermark.as_deref(), Some(&b"scan-2"[..]));
        prop_assert!(index.verify().unwrap().is_ok());
    }
}

#[test]
fn one_rescan_pass_brings_indexes_under_two_keys_to_the_same_records() {
    // The indexes of one dataset under an old and a new key, apart (one
    // missed changes the other saw), are fed by one read of the source: each
    // ends equal to a fresh build under its own key, with every record read
    // once per index and the same watermark.
    let dir = TempDir::new().unwrap();
    let n = arbor_index::BUILD_CHUNK_RECORDS as i64 + 300;
    let old = Index::open(dir.path().join("old"), config(b"old key")).unwrap();
    old.build((0..n).map(|k| Ok::<_, IndexError>(record(k, k))), None)
        .unwrap();
    let new = Index::open(dir.path().join("new"), config(b"new key")).unwrap();
    new.build(
        (0..n)
            .filter(|k| k % 7 != 0)
            .map(|k| Ok::<_, IndexError>(record(k, -k))),
        None,
    )
    .unwrap();
    let now = || (0..n + 50).filter(|k| k % 11 != 3).map(|k| (k, k * 2));
    let mut reads = 0u64;
    let stats = arbor_index::rescan_each(
        &[&new, &old],
        now().map(|(k, v)| {
            reads += 1;
            Ok::<_, IndexError>(record(k, v))
        }),
        Some(b"one pass"),
        arbor_index::KeyRepeats::Refuse { show_key: true },
    )
    .unwrap();
    let expected = now().count() as u64;
    assert_eq!(reads, expected, "the source is read once");
    assert_eq!(stats.len(), 2);
    assert!(
        stats.iter().all(|s| s.records_read == expected),
        "{stats:?}"
    );
    let vanished_old = (0..n).filter(|k| k % 11 == 3).count() as u64;
    let vanished_new = (0..n).filter(|k| k % 11 == 3 && k % 7 != 0).count() as u64;
    assert_eq!(
        (stats[0].vanished, stats[1].vanished),
        (vanished_new, vanished_old)
    );
    for (index, secret, name) in [(&new, &b"new key"[..], "fn"), (&old, &b"old key"[..], "fo")] {
        let fresh = Index::open(dir.path().join(name), config(secret)).unwrap();
        fresh
            .build(now().map(|(k, v)| Ok::<_, IndexError>(record(k, v))), None)
            .unwrap();
        let (a, b) = (index.snapshot().unwrap(), fresh.snapshot().unwrap());
        assert_eq!(logical_tree(&a, 3), logical_tree(&b, 3));
        assert_eq!(
            a.describe().unwrap().watermark.as_deref(),
            Some(&b"one pass"[..])
        );
        assert!(index.verify().unwrap().is_ok());
    }
}

#[test]
fn a_build_keeps_the_last_record_of_a_repeated_key_across_batches_and_appends() {
    // Three batches of the source, spilled one record per append: a key
    // repeated across batches or within one keeps its last record.
    let n = 2 * arbor_index::BUILD_CHUNK_RECORDS as i64 + 5_000;
    let rows = || {
        (0..n)
            .map(|k| (k, k * 3))
            .chain([(5, -1), (n - 1, -2), (5, -3)])
    };
    let dir = TempDir::new().unwrap();
    let many = Index::open(dir.path().join("many"), config(b"test")).unwrap();
    many.set_build_spill_bytes(1);
    let stats = many
        .build(rows().map(|(k, v)| Ok::<_, IndexError>(record(k, v))), None)
        .unwrap();
    assert_eq!(stats.records, n as u64);
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for (k, v) in rows() {
        last.insert(k, v);
    }
    assert_eq!((last[&5], last[&(n - 1)]), (-3, -2));
    let one = build(&dir, "one", last.clone());
    let (a, b) = (many.snapshot().unwrap(), one.snapshot().unwrap());
    assert_eq!(logical_tree(&a, 4), logical_tree(&b, 4));
    assert!(many.verify().unwrap().is_ok());
}

#[test]
fn apply_counts_what_it_did_and_repeated_keys_in_a_batch_see_each_other() {
    let dir = TempDir::new().unwrap();
    let index = build(&dir, "i", [(1, 1), (2, 2)]);
    let stats = index
        .apply(
            &[
                Change::Upsert(record(1, 1)),            // unchanged
                Change::Upsert(record(2, 20)),           // updated
                Change::Upsert(record(3, 3)),            // inserted
                Change::Upsert(record(3, 30)),           // updated (same batch)
                Change::Delete(vec![Value::Integer(4)]), // absent
                Change::Delete(vec![Value::Integer(1)]), // deleted
            ],
            Some(b"wm-1"),
        )
        .unwrap();
    assert_eq!(
        (
            stats.inserted,
            stats.updated,
            stats.unchanged,
            stats.deleted,
            stats.absent
        ),
        (1, 2, 1, 1, 1)
    );
    let fresh = build(&dir, "f", [(2, 20), (3, 30)]);
    let d = index.snapshot().unwrap().describe().unwrap();
    assert_eq!(d.root, fresh.snapshot().unwrap().root().unwrap());
    assert_eq!(d.watermark.as_deref(), Some(&b"wm-1"[..]));
    assert!(index.verify().unwrap().is_ok());
}

#[test]
fn deletes_leave_tombstones_until_the_key_comes_back() {
    let dir = TempDir::new().unwrap();
    let index = build(&dir, "t", [(1, 1), (2, 2)]);
    let key = |k: i64| arbor_record::tuple_bytes(&[Value::Integer(k.into())]);
    assert_eq!(index.tombstone_of(&key(1)).unwrap(), None);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    index
        .apply(
            &[
                Change::Delete(vec![Value::Integer(1)]),
                Change::Delete(vec![Value::Integer(9)]), // absent: no tombstone
            ],
            None,
        )
        .unwrap();
    let at = index.tombstone_of(&key(1)).unwrap().expect("a tombstone");
    assert!(at >= before, "{at} < {before}");
    assert_eq!(index.tombstone_of(&key(9)).unwrap(), None);
    assert_eq!(index.tombstone_of(&key(2)).unwrap(), None);
    // Built records have no known write; an incremental one has.
    assert_eq!(index.changed_at(&key(2)).unwrap(), None);
    index.apply(&[Change::Upsert(record(1, 5))], None).unwrap();
    assert_eq!(index.tombstone_of(&key(1)).unwrap(), None);
    let written = index.changed_at(&key(1)).unwrap().expect("a change time");
    assert!(written >= at, "{written} < {at}");
    // An upsert that changes nothing is no write.
    index.apply(&[Change::Upsert(record(2, 2))], None).unwrap();
    assert_eq!(index.changed_at(&key(2)).unwrap(), None);
    // Retention: only tombstones older than the cut go.
    index
        .apply(&[Change::Delete(vec![Value::Integer(2)])], None)
        .unwrap();
    assert_eq!(index.prune_tombstones(before).unwrap(), 0);
    assert!(index.tombstone_of(&key(2)).unwrap().is_some());
    assert_eq!(index.prune_tombstones(i64::MAX).unwrap(), 1);
    assert_eq!(index.tombstone_of(&key(2)).unwrap(), None);
    assert_eq!(index.changed_at(&key(1)).unwrap(), None);
}

#[test]
fn timed_changes_keep_their_own_times() {
    let dir = TempDir::new().unwrap();
    let index = build(&dir, "t", [(1, 1), (2, 2), (3, 3)]);
    let key = |k: i64| arbor_record::tuple_bytes(&[Value::Integer(k.into())]);
    let before = arbor_index::now_us();
    index
        .apply_timed(
            &[
                Change::Upsert(record(1, 10)),
                Change::Delete(vec![Value::Integer(2)]),
                // The last effective change of a key in a batch sets its time.
                Change::Upsert(record(4, 4)),
                Change::Upsert(record(4, 40)),
                // No change: no time.
                Change::Upsert(record(3, 3)),
                // Not known: none recorded for an upsert, now for a delete.
                Change::Upsert(record(5, 5)),
            ],
            &[
                ChangeTime::Made(Some(1_000)),
                ChangeTime::Made(Some(2_000)),
                ChangeTime::Made(Some(3_000)),
                ChangeTime::Made(Some(4_000)),
                ChangeTime::Made(Some(9_000)),
                ChangeTime::Made(None),
            ],
            None,
        )
        .unwrap();
    assert_eq!(index.changed_at(&key(1)).unwrap(), Some(1_000));
    assert_eq!(index.tombstone_of(&key(2)).unwrap(), Some(2_000));
    assert_eq!(index.changed_at(&key(4)).unwrap(), Some(4_000));
    assert_eq!(index.changed_at(&key(3)).unwrap(), None);
    assert_eq!(index.changed_at(&key(5)).unwrap(), None);
    index
        .apply_timed(
            &[Change::Delete(vec![Value::Integer(5)])],
            &[ChangeTime::Made(None)],
            None,
        )
        .unwrap();
    assert!(index.tombstone_of(&key(5)).unwrap().unwrap() >= before);
    // A repair's own write keeps its copied time even where capture
    // indexed it first (the index already holds it as written); a change
    // made elsewhere that changes nothing records nothing.
    index
        .apply(
            &[
                Change::Upsert(record(6, 6)),
                Change::Delete(vec![Value::Integer(1)]),
            ],
            None,
        )
        .unwrap();
    assert!(index.changed_at(&key(6)).unwrap().unwrap() >= before);
    index
        .apply_timed(
            &[
                Change::Upsert(record(6, 6)),
                Change::Delete(vec![Value::Integer(1)]),
                Change::Upsert(record(4, 40)),
            ],
            &[
                ChangeTime::Ours(Some(500)),
                ChangeTime::Ours(Some(600)),
                ChangeTime::Made(Some(700)),
            ],
            None,
        )
        .unwrap();
    assert_eq!(index.changed_at(&key(6)).unwrap(), Some(500));
    assert_eq!(index.tombstone_of(&key(1)).unwrap(), Some(600));
    assert_eq!(index.changed_at(&key(4)).unwrap(), Some(4_000));
    // A time for every change, or nothing is applied.
    assert!(matches!(
        index.apply_timed(&[Change::Upsert(record(7, 7))], &[], None),
        Err(IndexError::InvalidRequest(_))
    ));
    assert_eq!(index.changed_at(&key(7)).unwrap(), None);
}

/// A rescan finds what changed while nobody looked: it dates those rows to
/// when the index was last current (the build's or last rescan's start, or
/// a capture's mark), not to now, and a row found again after this index
/// saw it deleted to just after that delete.
#[test]
fn a_rescan_dates_what_it_finds_to_when_the_index_was_last_current() {
    let dir = TempDir::new().unwrap();
    let before_build = arbor_index::now_us();
    let index = build(&dir, "t", [(1, 1), (2, 2), (3, 3)]);
    let key = |k: i64| arbor_record::tuple_bytes(&[Value::Integer(k.into())]);
    let built_as_of = index.current_as_of().unwrap().expect("set by the build");
    assert!(built_as_of >= before_build);
    index
        .apply(&[Change::Delete(vec![Value::Integer(3)])], None)
        .unwrap();
    let deleted = index.tombstone_of(&key(3)).unwrap().unwrap();
    // Marks only move forward.
    index.mark_current(built_as_of - 1).unwrap();
    assert_eq!(index.current_as_of().unwrap(), Some(built_as_of));
    let before_rescan = arbor_index::now_us();
    // Changed: 1 updated, 4 new, 3 back after its delete.
    index
        .rescan(
            [(1, 10), (2, 2), (3, 3), (4, 4)]
                .into_iter()
                .map(|(k, v)| Ok::<_, IndexError>(record(k, v))),
            None,
        )
        .unwrap();
    assert_eq!(index.changed_at(&key(1)).unwrap(), Some(built_as_of));
    assert_eq!(index.changed_at(&key(4)).unwrap(), Some(built_as_of));
    assert_eq!(index.changed_at(&key(2)).unwrap(), None);
    assert_eq!(index.changed_at(&key(3)).unwrap(), Some(deleted + 1));
    assert_eq!(index.tombstone_of(&key(3)).unwrap(), None);
    let rescanned_as_of = index.current_as_of().unwrap().unwrap();
    assert!(rescanned_as_of >= before_rescan);
    // A capture's mark moves it on; the next rescan dates from there.
    let marked = arbor_index::now_us();
    index.mark_current(marked).unwrap();
    index
        .rescan(
            [(1, 10), (2, 20), (3, 3), (4, 4)]
                .into_iter()
                .map(|(k, v)| Ok::<_, IndexError>(record(k, v))),
            None,
        )
        .unwrap();
    assert_eq!(index.changed_at(&key(2)).unwrap(), Some(marked));
    assert_eq!(index.changed_at(&key(1)).unwrap(), Some(built_as_of));
}

#[test]
fn a_rebuild_leaves_tombstones_for_the_records_it_no_longer_finds() {
    let dir = TempDir::new().unwrap();
    let index = build(&dir, "t", (1..=5).map(|k| (k, k)));
    let key = |k: i64| arbor_record::tuple_bytes(&[Value::Integer(k.into())]);
    // Rebuilt from a system where 4 and 5 were deleted meanwhile.
    index
        .build((1..=3).map(|k| Ok::<_, IndexError>(record(k, k))), None)
        .unwrap();
    for k in 1..=3 {
        assert_eq!(index.tombstone_of(&key(k)).unwrap(), None, "{k}");
    }
    for k in 4..=5 {
        assert!(index.tombstone_of(&key(k)).unwrap().is_some(), "{k}");
    }
    assert!(index.verify().unwrap().is_ok());
    // A first build of an empty index leaves none.
    let fresh = build(&dir, "u", (1..=3).map(|k| (k, k)));
    assert_eq!(fresh.tombstone_of(&key(4)).unwrap(), None);
}

#[test]
fn reopen_keeps_everything() {
    let dir = TempDir::new().unwrap();
    let root = {
        let index = build(&dir, "i", (0..5000).map(|k| (k, k * 7)));
        index
            .apply(&[Change::Delete(vec![Value::Integer(17)])], None)
            .unwrap();
        index.snapshot().unwrap().root().unwrap()
    };
    let index = Index::open(dir.path().join("i"), config(b"test")).unwrap();
    assert_eq!(index.snapshot().unwrap().root().unwrap(), root);
    assert_eq!(root.count, 4999);
    assert!(index.verify().unwrap().is_ok());
}

#[test]
fn a_snapshot_does_not_see_later_changes() {
    let dir = TempDir::new().unwrap();
    let index = build(&dir, "i", (0..100).map(|k| (k, k)));
    let snap = index.snapshot().unwrap();
    let before = snap.root().unwrap();
    index
        .apply(&[Change::Upsert(record(1000, 1))], None)
        .unwrap();
    assert_eq!(snap.root().unwrap(), before);
    assert_eq!(snap.leaves(&[Prefix::ROOT]).unwrap().len(), 100);
    assert_eq!(index.snapshot().unwrap().root().unwrap().count, 101);
}

#[test]
fn mismatched_parameters_are_named_errors() {
    let dir = TempDir::new().unwrap();
    drop(build(&dir, "i", [(1, 1)]));
    let path = dir.path().join("i");
    match Index::open(&path, config(b"another secret")) {
        Err(IndexError::KeyId { stored, expected }) => assert_ne!(stored, expected),
        other => panic!("expected a key id error, got {other:?}"),
    }
    let other_schema = IndexConfig {
        keys: DatasetKeys::derive(b"test"),
        schema_fingerprint: [0; 32],
    };
    assert!(matches!(
        Index::open(&path, other_schema),
        Err(IndexError::Schema { .. })
    ));

    for (key, value, want) in [
        (
            cf::meta::ENCODING_VERSION,
            1u32.to_le_bytes(),
            "canonical encoding v1",
        ),
        (cf::meta::FORMAT, 9u32.to_le_bytes(), "has format 9"),
    ] {
        let saved = raw_get(&path, cf::META, key);
        raw_put(&path, cf::META, key, &value);
        let err = Index::open(&path, config(b"test")).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
        raw_put(&path, cf::META, key, &saved);
    }
    assert!(Index::open(&path, config(b"test")).is_ok());
}

fn raw_db(path: &std::path::Path) -> rocksdb::DB {
    let opts = rocksdb::Options::default();
    let cfs = cf::ALL.iter().map(|&name| {
        let mut o = rocksdb::Options::default();
        if name == cf::NODES {
            o.set_merge_operator_associative(cf::NODE_MERGE_OPERATOR, cf::merge_nodes);
        }
        rocksdb::ColumnFamilyDescriptor::new(name, o)
    });
    rocksdb::DB::open_cf_descriptors(&opts, path, cfs).expect("raw open")
}

fn raw_put(path: &std::path::Path, cf_name: &str, key: &[u8], value: &[u8]) {
    let db = raw_db(path);
    db.put_cf(db.cf_handle(cf_name).unwrap(), key, value)
        .unwrap();
}

fn raw_get(path: &std::path::Path, cf_name: &str, key: &[u8]) -> Vec<u8> {
    let db = raw_db(path);
    db.get_cf(db.cf_handle(cf_name).unwrap(), key)
        .unwrap()
        .unwrap()
}

#[test]
fn corrupt_bytes_are_typed_errors_and_verify_finds_tampering() {
    let dir = TempDir::new().unwrap();
    let rows: BTreeMap<i64, i64> = (0..3000).map(|k| (k, k)).collect();
    let path = dir.path().join("i");
    let (depth, some_leaf) = {
        let index = build(&dir, "i", rows.clone());
        let s = index.snapshot().unwrap();
        (s.depth(), s.leaves(&[Prefix::ROOT]).unwrap()[10].clone())
    };
    let node_at = Prefix::of(some_leaf.position, depth);

    // A stored node with a wrong sum: verify names it.
    let good_node = raw_get(&path, cf::NODES, &cf::node_key(node_at));
    let mut bad = Node::from_bytes(&good_node).unwrap();
    bad.count += 1;
    raw_put(&path, cf::NODES, &cf::node_key(node_at), &bad.to_bytes());
    {
        let index = Index::open(&path, config(b"test")).unwrap();
        let report = index.verify().unwrap();
        assert_eq!(report.node_mismatches, 1);
        assert_eq!(report.mismatches[0].prefix, node_at);
        assert_eq!(report.mismatches[0].stored, bad);
    }

    // A node value of the wrong length: reads fail with Corrupt, no panic.
    raw_put(&path, cf::NODES, &cf::node_key(node_at), &[1, 2, 3]);
    {
        let index = Index::open(&path, config(b"test")).unwrap();
        let parent = node_at.parent().unwrap();
        let err = index.snapshot().unwrap().children(&[parent]).unwrap_err();
        assert!(
            matches!(err, IndexError::Corrupt { cf: "nodes", .. }),
            "{err}"
        );
        assert!(index.verify().is_err());
    }
    raw_put(&path, cf::NODES, &cf::node_key(node_at), &good_node);

    // A record digest of the wrong length, and a record at the wrong position.
    let rk = cf::record_key(some_leaf.position, &some_leaf.key);
    raw_put(&path, cf::RECORDS, &rk, &[0; 31]);
    let misplaced = cf::record_key(some_leaf.position ^ 1, &some_leaf.key);
    {
        let index = Index::open(&path, config(b"test")).unwrap();
        let err = index
            .snapshot()
            .unwrap()
            .leaves(&[Prefix::ROOT])
            .unwrap_err();
        assert!(
            matches!(err, IndexError::Corrupt { cf: "records", .. }),
            "{err}"
        );
        let report = index.verify().unwrap();
        assert_eq!(report.bad_records, 1);
        // Deleting that key reads the corrupt digest: the batch is refused
        // whole, the insert before it included.
        let key = arbor_record::decode_tuple(&some_leaf.key).unwrap();
        let before = index.snapshot().unwrap().root().unwrap();
        let err = index
            .apply(
                &[Change::Upsert(record(99_999, 1)), Change::Delete(key)],
                None,
            )
            .unwrap_err();
        assert!(
            matches!(err, IndexError::Corrupt { cf: "records", .. }),
            "{err}"
        );
        assert_eq!(index.snapshot().unwrap().root().unwrap(), before);
    }
    raw_put(&path, cf::RECORDS, &rk, &some_leaf.digest.0);
    raw_put(&path, cf::RECORDS, &misplaced, &some_leaf.digest.0);
    {
        let index = Index::open(&path, config(b"test")).unwrap();
        let report = index.verify().unwrap();
        assert!(report.bad_records >= 1, "{report:?}");
        assert!(
            report
                .records_with_problems
                .iter()
                .any(|b| b.reason.contains("position"))
        );
    }

    // A malformed merge operand: RocksDB reports corruption, we return it.
    {
        let db = raw_db(&path);
        let nodes = db.cf_handle(cf::NODES).unwrap();
        db.merge_cf(nodes, cf::node_key(Prefix::ROOT), [9u8; 5])
            .unwrap();
    }
    let index = Index::open(&path, config(b"test")).unwrap();
    let err = index.snapshot().unwrap().root().unwrap_err();
    assert!(matches!(err, IndexError::Storage { .. }), "{err}");
}

#[test]
fn an_interrupted_build_is_reported_not_read() {
    let dir = TempDir::new().unwrap();
    let index = build(&dir, "i", (0..100).map(|k| (k, k)));
    // The source fails half way: the index stays marked as building.
    let failing = (0..50_000i64).map(|k| {
        if k == 40_000 {
            Err("source connection reset".to_string())
        } else {
            Ok(record(k, k))
        }
    });
    let err = index.build(failing, None).unwrap_err();
    assert!(matches!(err, IndexError::Source(_)), "{err}");
    assert!(!index.is_ready().unwrap());
    assert!(matches!(
        index.snapshot(),
        Err(IndexError::IncompleteBuild { .. })
    ));
    assert!(matches!(
        index.apply(&[Change::Upsert(record(1, 1))], None),
        Err(IndexError::IncompleteBuild { .. })
    ));
    index
        .build((0..10).map(|k| Ok::<_, IndexError>(record(k, k))), None)
        .unwrap();
    assert_eq!(index.snapshot().unwrap().root().unwrap().count, 10);
}

/// A key read twice is a duplicate in the system when the read cannot meet
/// a row twice: the build and the rescan refuse it, naming one (unless the
/// keys are sensitive), and the rescan removes nothing; otherwise the last
/// copy wins.
#[test]
fn keys_read_twice_are_refused_unless_the_read_may_repeat_them() {
    let dir = TempDir::new().unwrap();
    let index = Index::open(dir.path().join("i"), config(b"test")).unwrap();
    let keys = config(b"test").keys;
    let rows = [record(1, 10), record(2, 20), record(1, 11), record(3, 30)];
    let build = |repeats: arbor_index::KeyRepeats| {
        index.build_batches(None, &|_| {}, |feed| {
            feed.push(vec![arbor_record::HashedBatch::hash_records(&keys, &rows)])
                .unwrap();
            feed.key_repeats(repeats);
            Ok::<(), IndexError>(())
        })
    };
    let e = build(arbor_index::KeyRepeats::Refuse { show_key: true }).unwrap_err();
    assert!(
        matches!(&e, IndexError::RepeatedKeys { count: 1, example: Some(k) } if k == "1"),
        "{e:?}"
    );
    assert!(e.to_string().contains("e.g. key 1:"), "{e}");
    let e = build(arbor_index::KeyRepeats::Refuse { show_key: false }).unwrap_err();
    assert!(
        matches!(&e, IndexError::RepeatedKeys { example: None, .. }),
        "{e:?}"
    );
    let stats = build(arbor_index::KeyRepeats::LastWins).unwrap();
    assert_eq!((stats.records_read, stats.records), (4, 3));

    // A rescan that meets key 2 twice and no longer sees key 3 refuses
    // before removing anything.
    let again = [record(1, 11), record(2, 20), record(2, 21)];
    let e = arbor_index::rescan_each(
        &[&index],
        again.iter().cloned().map(Ok::<_, IndexError>),
        None,
        arbor_index::KeyRepeats::Refuse { show_key: true },
    )
    .unwrap_err();
    assert!(
        matches!(e, IndexError::RepeatedKeys { count: 1, .. }),
        "{e:?}"
    );
    assert_eq!(index.snapshot().unwrap().describe().unwrap().count(), 3);
}
