//! Real-time lag of logical capture: from a PostgreSQL commit to the change
//! being durable in the index, at a steady rate of single-row transactions.
//!
//! A writer commits `ARBOR_LAG_RATE` (default 1,000) transactions per second
//! for `ARBOR_LAG_SECS` (default 20) seconds — updates, inserts and deletes
//! of a 100,000-row table — while a follower (the agent's own
//! [`Follower::step`] loop) applies them. Lag per transaction is the commit
//! timestamp PostgreSQL records to the moment the index write is fsynced
//! (one clock: same machine). Runs once per follower pause in
//! `ARBOR_LAG_INTERVALS_MS` (default `100,10`; 100 is the agent default).
//! At the end the followed index must equal a fresh build of the table.
//!
//! Needs `ARBOR_TEST_POSTGRES_URL` with wal_level=logical: run it through
//! `tools/bench/pg_lag.sh`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arbor::arbor_index::{Index, IndexConfig};
use arbor::arbor_record::{DatasetKeys, ValueKind};
use arbor::arbor_source::keyset::ScanOptions;
use arbor::arbor_source::relation::Relation;
use arbor::arbor_source::{ColumnMapping, Mapping, PostgresSource, Source};
use arbor_agent::config::LogicalCapture;
use arbor_agent::dataset::Dataset;
use arbor_agent::logical;

const TABLE: &str = "bench_lag";
const ROWS: i64 = 100_000;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mapping() -> Mapping {
    Mapping::new(
        vec![ColumnMapping::new("id", "id", ValueKind::Integer)],
        vec![
            ColumnMapping::new("v", "v", ValueKind::Integer),
            ColumnMapping::new("note", "note", ValueKind::Text),
            ColumnMapping::new("updated_at", "updated_at", ValueKind::Timestamp),
        ],
    )
    .expect("bench mapping")
}

fn dataset(url: &str, dir: &std::path::Path) -> Dataset {
    let config = IndexConfig {
        keys: DatasetKeys::derive(b"lag bench"),
        schema_fingerprint: mapping().schema().fingerprint(),
    };
    let index = Arc::new(Index::open(dir, config).expect("open index"));
    let source: Box<dyn Source> = Box::new(PostgresSource::new(
        url,
        Relation::Table(TABLE.into()),
        mapping(),
        ScanOptions::default(),
    ));
    let ds = Dataset::new(index, Some(source), Some(mapping()));
    ds.indexing.store(true, Ordering::Release);
    ds
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn run(url: &str, interval: Duration, rate: u64, secs: u64) {
    let mut pg = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS {TABLE};
         CREATE TABLE {TABLE} (id bigint PRIMARY KEY, v bigint NOT NULL, note text, updated_at timestamptz NOT NULL);
         INSERT INTO {TABLE} SELECT g, g, 'row ' || g, now() FROM generate_series(1, {ROWS}) g;"
    ))
    .expect("load the table");
    let slot = "arbor_bench_lag".to_string();
    let _ = pg.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    );
    pg.batch_execute(&format!("DROP PUBLICATION IF EXISTS {slot}"))
        .expect("drop publication");

    let dir = tempfile::TempDir::new().expect("temp dir");
    let ds = dataset(url, dir.path());
    let capture = LogicalCapture {
        table: TABLE.into(),
        filtered: false,
        slot: slot.clone(),
        publication: slot.clone(),
        create: true,
        interval,
        max_changes: 10_000,
    };
    let (mut follower, needs_build) =
        logical::prepare(&ds, "lag", url, &capture, Duration::from_secs(60)).expect("prepare");
    assert!(needs_build);
    arbor_agent::maintain::reindex(&ds, "lag", true).expect("build");
    follower.built(&ds).expect("mark built");

    // The follower: the agent's loop, on a thread.
    let stop = Arc::new(AtomicBool::new(false));
    let ds = Arc::new(ds);
    let follow = {
        let (ds, stop) = (Arc::clone(&ds), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut lags = Vec::new();
            let mut steps = 0u64;
            let mut quiet_since: Option<Instant> = None;
            loop {
                let s = follower.step(&ds, "lag").expect("step");
                steps += 1;
                lags.extend(s.lags.iter().copied());
                if s.transactions == 0 {
                    // After the writer stops, drain until the slot is quiet.
                    if stop.load(Ordering::Acquire)
                        && quiet_since.get_or_insert_with(Instant::now).elapsed()
                            > Duration::from_secs(1)
                    {
                        break;
                    }
                    std::thread::sleep(interval);
                } else {
                    quiet_since = None;
                }
            }
            (lags, steps)
        })
    };

    // The writer: single-row transactions at a steady rate.
    let total = rate * secs;
    let started = Instant::now();
    let mut next_id = ROWS + 1;
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let id = 1 + (i.wrapping_mul(0x9e37_79b9) % ROWS as u64) as i64;
        let sql = match i % 10 {
            0 => {
                next_id += 1;
                format!("INSERT INTO {TABLE} VALUES ({next_id}, {i}, 'new', now())")
            }
            1 => format!("DELETE FROM {TABLE} WHERE id = {id}"),
            _ => format!("UPDATE {TABLE} SET v = v + 1, updated_at = now() WHERE id = {id}"),
        };
        pg.batch_execute(&sql).expect("write");
    }
    let wrote = started.elapsed();
    stop.store(true, Ordering::Release);
    let (mut lags, steps) = follow.join().expect("follower thread");
    lags.sort();

    // Exactness: the followed index equals a fresh build of the table.
    let fresh_dir = tempfile::TempDir::new().expect("temp dir");
    let fresh = dataset(url, fresh_dir.path());
    arbor_agent::maintain::reindex(&fresh, "fresh", true).expect("fresh build");
    let root = |d: &Dataset| {
        d.index()
            .snapshot()
            .and_then(|s| s.describe())
            .expect("describe")
            .root
    };
    let equal = root(&ds) == root(&fresh);
    let _ = pg.execute("SELECT pg_drop_replication_slot($1)", &[&slot]);
    let _ = pg.batch_execute(&format!("DROP PUBLICATION {slot}; DROP TABLE {TABLE}"));

    println!(
        "pg_lag: {rate} commits/s for {secs} s ({total} single-row transactions written in {:.1} s), follower pause {} ms",
        wrote.as_secs_f64(),
        interval.as_millis()
    );
    println!(
        "  lag commit -> index (fsynced): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} transactions, {} steps",
        ms(percentile(&lags, 0.50)),
        ms(percentile(&lags, 0.99)),
        ms(percentile(&lags, 1.0)),
        lags.len(),
        steps
    );
    println!(
        "  followed index equals a fresh build: {}",
        if equal { "yes" } else { "NO" }
    );
    assert_eq!(
        lags.len() as u64,
        total,
        "every transaction was applied once"
    );
    assert!(equal, "the followed index drifted from the table");
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // useful either: this bench only runs on request.
    let Ok(url) = std::env::var("ARBOR_TEST_POSTGRES_URL") else {
        eprintln!("pg_lag: ARBOR_TEST_POSTGRES_URL is not set; run tools/bench/pg_lag.sh");
        return;
    };
    let rate = env_or("ARBOR_LAG_RATE", 1_000u64);
    let secs = env_or("ARBOR_LAG_SECS", 20u64);
    let intervals: String = env_or("ARBOR_LAG_INTERVALS_MS", "100,10".to_string());
    for ms in intervals
        .split(',')
        .filter_map(|s| s.trim().parse::<u64>().ok())
    {
        run(&url, Duration::from_millis(ms), rate, secs);
    }
}
