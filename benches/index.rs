//! Index maintenance on RocksDB: full builds of 1M (and, with
//! `ARBOR_BENCH_10M=1`, 10M) synthetic ~200-byte records, and incremental
//! updates in batches of 1,000 and 10,000 against a 1M-record index.
//!
//! Run: `cargo bench --bench index`. Targets: build ≥ 400K records/s with
//! peak RSS ≤ 1 GiB at 10M; incremental ≥ 150K changes/s. Peak RSS is
//! printed after the builds (VmHWM of the bench process).

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use arbor::arbor_index::{Change, Index, IndexError};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tempfile::TempDir;

fn bench_build(c: &mut Criterion) {
    let mut sizes = vec![1_000_000u64];
    if std::env::var_os("ARBOR_BENCH_10M").is_some() {
        sizes.push(10_000_000);
    }
    let mut group = c.benchmark_group("full_build");
    group.sample_size(10);
    for n in sizes {
        group.throughput(Throughput::Elements(n));
        group.measurement_time(Duration::from_secs(if n > 1_000_000 { 300 } else { 30 }));
        group.bench_function(format!("{n}_records"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = TempDir::new().expect("temp dir");
                    let index =
                        Index::open(dir.path().join("index"), common::config()).expect("open");
                    let start = Instant::now();
                    index
                        .build((0..n).map(|i| Ok::<_, IndexError>(common::row(i, 0))), None)
                        .expect("build");
                    total += start.elapsed();
                }
                total
            })
        });
        if let Some(mib) = common::peak_rss_mib() {
            eprintln!("full_build/{n}_records: peak RSS of the bench process so far {mib:.0} MiB");
        }
    }
    group.finish();
}

fn bench_incremental(c: &mut Criterion) {
    let n = 1_000_000u64;
    let (_dir, index) = common::built(n);
    let mut group = c.benchmark_group("incremental");
    let mut version = 1u64;
    let mut cursor = 0u64;
    // Live traffic arrives in small batches; bulk corrections in large ones.
    for batch in [1_000u64, 10_000] {
        group.throughput(Throughput::Elements(batch));
        group.bench_function(format!("apply_{batch}_updates_on_1M"), |b| {
            b.iter_batched(
                || {
                    version += 1;
                    // Spread updates over the whole key space, as live traffic does.
                    let changes: Vec<Change> = (0..batch)
                        .map(|i| {
                            cursor = (cursor + 7_919 * (i + 1)) % n;
                            Change::Upsert(common::row(cursor, version))
                        })
                        .collect();
                    changes
                },
                |changes| index.apply(&changes, None).expect("apply"),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_build, bench_incremental);
criterion_main!(benches);
