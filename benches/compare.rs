//! In-process compare of two RocksDB indexes through `LocalPeer`s: 1M vs 1M
//! records with 0.1 % drift of each kind (1,000 missing on each side, 1,000
//! changed), and, with `ARBOR_BENCH_10M=1`, identical 10M vs 10M.
//!
//! Run: `cargo bench --bench compare`. Targets: ≤ 250 ms for the 1M compare,
//! round trips ≤ levels + 2, ≤ 1 KiB on the wire per divergent record (the
//! right side's traffic, as if it were remote); identical: one round trip.
//! The cost figures are printed once before the timing.

#[path = "common/mod.rs"]
mod common;

use arbor::arbor_index::{Change, Index, IndexError};
use arbor::arbor_sync::{CompareOptions, CompareStats, LocalPeer, compare};
use criterion::{Criterion, criterion_group, criterion_main};
use tempfile::TempDir;

const DRIFT_EACH: u64 = 1_000;

/// Left: rows 0..n. Right: the same, minus 1,000 rows, 1,000 changed, 1,000 extra.
fn drifted(n: u64) -> (TempDir, Index, Index) {
    let (dir, left) = common::built(n);
    let right = Index::open(dir.path().join("right"), common::config()).expect("open");
    let step = n / (3 * DRIFT_EACH);
    right
        .build(
            (0..n)
                .filter(|i| !(i % step == 0 && i / step < DRIFT_EACH))
                .map(|i| {
                    let changed = i % step == 1 && i / step < DRIFT_EACH;
                    Ok::<_, IndexError>(common::row(i, u64::from(changed)))
                }),
            None,
        )
        .expect("build right");
    let extra: Vec<Change> = (0..DRIFT_EACH)
        .map(|i| Change::Upsert(common::row(n + i, 0)))
        .collect();
    right.apply(&extra, None).expect("extra rows");
    (dir, left, right)
}

fn run(rt: &tokio::runtime::Runtime, left: &Index, right: &Index) -> CompareStats {
    run_with(rt, left, right, &CompareOptions::default())
}

fn run_with(
    rt: &tokio::runtime::Runtime,
    left: &Index,
    right: &Index,
    options: &CompareOptions,
) -> CompareStats {
    let (l, r) = (
        LocalPeer::new(left, "orders").expect("peer"),
        LocalPeer::new(right, "orders").expect("peer"),
    );
    rt.block_on(compare(&l, &r, options, |d| {
        std::hint::black_box(d);
    }))
    .expect("compare")
}

fn report(name: &str, s: &CompareStats) {
    let drift = s.drift().max(1);
    eprintln!(
        "{name}: drift {} (missing_left {}, missing_right {}, changed {}), round trips {}, levels {}, nodes {}, leaves {}, right-side wire bytes {} ({} per divergent record)",
        s.drift(),
        s.missing_left,
        s.missing_right,
        s.changed,
        s.round_trips,
        s.levels,
        s.nodes_received,
        s.leaves_received,
        s.right.total_bytes(),
        s.right.total_bytes() / drift
    );
}

fn bench_compare(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let n = 1_000_000;
    let (_dir, left, right) = drifted(n);
    let stats = run(&rt, &left, &right);
    assert_eq!(
        stats.drift(),
        3 * DRIFT_EACH,
        "bench data must drift exactly"
    );
    report("compare_1M_0.1pct", &stats);
    // Bytes and round trips against the leaf threshold (where descent
    // stops and leaves are exchanged), to check the default.
    for t in [1, 2, 4, 8, 12, 16, 24] {
        let options = CompareOptions {
            leaf_threshold: t,
            ..CompareOptions::default()
        };
        report(
            &format!("compare_1M_0.1pct_leaf_threshold_{t}"),
            &run_with(&rt, &left, &right, &options),
        );
    }
    let mut group = c.benchmark_group("compare");
    group.sample_size(20);
    group.bench_function("1M_vs_1M_0.1pct_drift", |b| {
        b.iter(|| run(&rt, &left, &right))
    });
    if std::env::var_os("ARBOR_BENCH_10M").is_some() {
        let (_d1, a) = common::built(10_000_000);
        let (_d2, b2) = common::built(10_000_000);
        let s = run(&rt, &a, &b2);
        report("compare_10M_identical", &s);
        group.bench_function("10M_vs_10M_identical", |b| b.iter(|| run(&rt, &a, &b2)));
    }
    group.finish();
}

criterion_group!(benches, bench_compare);
criterion_main!(benches);
