//! Canonical encoding + keyed hashing of ~200-byte rows on one core: the
//! per-record cost under every index build and rescan. `one_core` hashes
//! record by record (as an apply does); `one_core_many_at_a_time` hashes
//! encoded rows sixteen per SIMD compression (as builds and rescans do,
//! see `arbor_record::many`).
//!
//! Run: `cargo bench --bench hash`. Target: ≥ 1.5M rows/s per core.
//! Reference results are in the issue notes, with date and machine.

#[path = "common/mod.rs"]
mod common;

use arbor_record::{EncodedRows, HashedBatch, encode_tuple};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench_hash(c: &mut Criterion) {
    let keys = common::config().keys;
    let rows: Vec<_> = (0..10_000).map(|i| common::row(i, 0)).collect();
    let avg = rows.iter().map(common::row_bytes).sum::<usize>() / rows.len();
    let mut group = c.benchmark_group(format!("encode_hash_{avg}B_rows"));
    group.throughput(Throughput::Elements(rows.len() as u64));
    group.bench_function("one_core", |b| {
        let mut scratch = Vec::new();
        b.iter(|| {
            for r in &rows {
                std::hint::black_box(r.hash(&keys, &mut scratch));
            }
        })
    });
    group.bench_function("one_core_many_at_a_time", |b| {
        let mut row = Vec::new();
        b.iter(|| {
            let mut encoded = EncodedRows::with_capacity(rows.len());
            for r in &rows {
                row.clear();
                encode_tuple(&mut row, &r.key);
                let key_len = row.len();
                encode_tuple(&mut row, &r.values);
                encoded.push(&row, key_len);
            }
            std::hint::black_box(HashedBatch::hash_rows(&keys, &encoded))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_hash);
criterion_main!(benches);
