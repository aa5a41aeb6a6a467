//! The soak (issue 18): two-way real-time sync between PostgreSQL and
//! MariaDB under continuous writes on both sides, with the agents killed
//! (SIGKILL) and restarted at random.
//!
//! The first half of the soak is chaos: writes on both sides and an agent
//! killed every few seconds. The second half is steady: the same writes,
//! no kills, the agents' resident memory sampled every second. Then the
//! writes stop and the oracle is checked:
//!
//! * both tables are equal, and every write is accounted for under the
//!   rule: each email holds the last one PostgreSQL wrote (PostgreSQL owns
//!   email), each balance the last one MariaDB wrote (MariaDB owns
//!   balance), rows inserted on PostgreSQL are on both sides unless
//!   PostgreSQL deleted them (some about 100 ms after their insert, while
//!   their copy may be on its way), and then on neither;
//! * no echo loop: once quiet, neither side's job runs again;
//! * memory is flat: over the steady half, after a quarter of it as
//!   warm-up, neither agent's RSS outside RocksDB's caches grows by 10 %
//!   or more (in the long mode; a one-minute soak only catches a runaway,
//!   50 %), and the caches (block cache and memtables, read from the
//!   agent's metrics) stay within their configured bounds: they fill as
//!   the index is written and read, which is no leak.
//!
//! `ARBOR_SOAK_SECS` (default 60) sets the length; the long mode in
//! `docs/reliability.md` runs 1,200. `ARBOR_CRASH_SEED` replays the kills.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::crashes::{campaign_seed, delay};
use super::*;

/// Rows of the demo table (ids 0 to 499), which both writers update.
const ROWS: i64 = 500;
/// How old a young row PostgreSQL deletes is, at least: about the time a
/// real-time job takes to copy it to MariaDB.
const YOUNG: Duration = Duration::from_millis(100);
/// Pause between one writer's writes: about 150 a second on each side.
const WRITE_PAUSE: Duration = Duration::from_millis(5);
/// Most growth of RSS outside RocksDB's caches over the steady half, after
/// its warm-up, in the long mode (a steady half of at least [`FLAT_AFTER`]).
const MAX_RSS_GROWTH: f64 = 0.10;
/// A steady half this long or longer is held to [`MAX_RSS_GROWTH`].
const FLAT_AFTER: Duration = Duration::from_secs(300);
/// Most such growth in a shorter soak (CI's minute), where allocator
/// arenas and connection pools are still settling: only a runaway fails.
const MAX_SHORT_RSS_GROWTH: f64 = 0.50;

fn soak_secs() -> u64 {
    std::env::var("ARBOR_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

/// Resident memory of a process, in KiB.
/// RocksDB's configured bounds in an agent, KiB: the block cache and the
/// memtable budget, with half the budget again as slack (a flush starts
/// near it, and writes go on meanwhile).
const ROCKSDB_BOUND_KIB: u64 =
    ((arbor_index::BLOCK_CACHE_BYTES + arbor_index::MEMTABLE_BUDGET_BYTES * 3 / 2) / 1024) as u64;

/// One agent's memory at one moment.
#[derive(Debug, Clone, Copy)]
struct Memory {
    /// Resident set size.
    rss_kib: u64,
    /// RocksDB's block cache and memtables, from the agent's metrics.
    rocksdb_kib: u64,
}

impl Memory {
    fn of(agent: &AgentProcess, metrics_port: u16) -> Memory {
        let samples = scrape_metrics(metrics_port);
        let bytes =
            samples["arbor_rocksdb_block_cache_bytes"] + samples["arbor_rocksdb_memtable_bytes"];
        Memory {
            rss_kib: rss_kib(agent.child.id()),
            rocksdb_kib: (bytes / 1024.0) as u64,
        }
    }

    /// RSS less what RocksDB's bounded caches hold.
    fn outside_rocksdb(self) -> u64 {
        self.rss_kib.saturating_sub(self.rocksdb_kib)
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for {pid}"))
}

/// What PostgreSQL's writer did: the last email of each row it updated,
/// the rows it inserted and those it deleted again.
#[derive(Default)]
struct PgWrites {
    emails: BTreeMap<i64, String>,
    inserted: BTreeSet<i64>,
    deleted: BTreeSet<i64>,
    count: u64,
}

fn postgres_writer(
    url: String,
    table: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<PgWrites> {
    std::thread::spawn(move || {
        let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut w = PgWrites::default();
        let mut live = std::collections::VecDeque::new();
        while !stop.load(Ordering::Relaxed) {
            let n = w.count as i64;
            match n % 5 {
                0 => {
                    let id = 1_000_000 + n;
                    pg.batch_execute(&format!(
                        "INSERT INTO {table} (customer_id, email, full_name) VALUES ({id}, 'ins{n}@pg', 'Inserted {n}')"
                    ))
                    .unwrap();
                    w.inserted.insert(id);
                    live.push_back((id, Instant::now()));
                }
                // Every other insert goes again: alternately a young row,
                // while its copy may still be on its way to MariaDB (the
                // delete once undone, docs/reliability.md), and the oldest.
                1 if (n / 5) % 2 == 0 => {
                    let pick = if (n / 5) % 4 == 0 {
                        live.iter()
                            .rposition(|&(_, at): &(i64, Instant)| at.elapsed() >= YOUNG)
                    } else {
                        (!live.is_empty()).then_some(0)
                    };
                    if let Some((id, _)) = pick.and_then(|i| live.remove(i)) {
                        pg.batch_execute(&format!("DELETE FROM {table} WHERE customer_id = {id}"))
                            .unwrap();
                        w.deleted.insert(id);
                    }
                }
                _ => {
                    let id = (n * 7_919) % ROWS;
                    let email = format!("e{n}@pg");
                    pg.batch_execute(&format!(
                        "UPDATE {table} SET email = '{email}' WHERE customer_id = {id}"
                    ))
                    .unwrap();
                    w.emails.insert(id, email);
                }
            }
            w.count += 1;
            std::thread::sleep(WRITE_PAUSE);
        }
        w
    })
}

/// What MariaDB's writer did: the last balance of each row it updated.
#[derive(Default)]
struct MyWrites {
    balances: BTreeMap<i64, i64>,
    count: u64,
}

fn mariadb_writer(table: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<MyWrites> {
    std::thread::spawn(move || {
        use mysql::prelude::Queryable;
        let url = std::env::var("ARBOR_TEST_MYSQL_URL").unwrap();
        let mut my = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
        let mut w = MyWrites::default();
        while !stop.load(Ordering::Relaxed) {
            let n = w.count as i64;
            let id = (n * 104_729) % ROWS;
            let balance = 10_000 + n;
            my.query_drop(format!(
                "UPDATE {table} SET balance = {balance} WHERE customer_id = {id}"
            ))
            .unwrap();
            w.balances.insert(id, balance);
            w.count += 1;
            std::thread::sleep(WRITE_PAUSE);
        }
        w
    })
}

/// A balance as a number, however each server prints it.
fn amount(balance: &Option<String>) -> Option<f64> {
    balance.as_deref().map(|b| b.parse::<f64>().unwrap())
}

#[test]
fn two_way_realtime_sync_under_writes_and_restarts_converges_with_flat_memory() {
    let dir = demo(ROWS as u64, 0);
    let Some(mut pair) = RealtimePair::new(dir.path()) else {
        return;
    };
    let original = postgres_customers(&mut pair.pg, &pair.pg_table);
    let mut agents = [
        AgentProcess::start(dir.path(), "pg.toml"),
        AgentProcess::start(dir.path(), "my.toml"),
    ];
    let configs = ["pg.toml", "my.toml"];
    let (code, summary, _) = compare(dir.path(), &agents[0].address, &agents[1].address);
    assert_eq!(code, 0, "{summary}");

    let stop = Arc::new(AtomicBool::new(false));
    let url = std::env::var("ARBOR_TEST_POSTGRES_URL").unwrap();
    let pg_writer = postgres_writer(url, pair.pg_table.clone(), Arc::clone(&stop));
    let my_writer = mariadb_writer(pair.my_table.clone(), Arc::clone(&stop));

    // Chaos: an agent killed every 2 to 8 s, restarted at once.
    let secs = soak_secs();
    let seed = campaign_seed();
    let chaos_end = Instant::now() + Duration::from_secs(secs / 2);
    let mut kills = 0u64;
    while Instant::now() < chaos_end {
        std::thread::sleep(delay(seed ^ kills, 2_000..8_000).min(chaos_end - Instant::now()));
        let which = (seed ^ kills.wrapping_mul(0x9e37)) as usize % 2;
        eprintln!("soak: seed {seed}, kill {kills}: {}", configs[which]);
        agents[which].child.kill().unwrap();
        agents[which].child.wait().unwrap();
        agents[which] = AgentProcess::start(dir.path(), configs[which]);
        kills += 1;
    }

    // Steady: the same writes, no kills; memory sampled every second:
    // each agent's RSS, and what of it is RocksDB's bounded caches.
    let steady_end = Instant::now() + Duration::from_secs(secs - secs / 2);
    let mut samples: Vec<[Memory; 2]> = Vec::new();
    while Instant::now() < steady_end {
        samples.push([0, 1].map(|i| Memory::of(&agents[i], pair.metrics[i])));
        std::thread::sleep(Duration::from_secs(1));
    }
    stop.store(true, Ordering::Relaxed);
    let (pg_writes, my_writes) = (pg_writer.join().unwrap(), my_writer.join().unwrap());
    eprintln!(
        "soak: {secs} s, {kills} kills, {} PostgreSQL writes, {} MariaDB writes",
        pg_writes.count, my_writes.count
    );

    // The oracle, once both sides are equal.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (p, m) = loop {
        let p = postgres_customers(&mut pair.pg, &pair.pg_table);
        let m = mariadb_customers(&mut pair.my, &pair.my_table);
        if p == m {
            break (p, m);
        }
        let differ: Vec<_> = p
            .iter()
            .filter(|(k, v)| m.get(k) != Some(v))
            .map(|(k, v)| (k, v, m.get(k)))
            .take(3)
            .collect();
        assert!(
            Instant::now() < deadline,
            "the sides did not converge: {} rows on PostgreSQL, {} on MariaDB, e.g. {differ:?}",
            p.len(),
            m.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(original.len() as i64, ROWS);
    let gone: Vec<&i64> = original.keys().filter(|id| !p.contains_key(id)).collect();
    assert!(
        gone.is_empty(),
        "rows nobody deleted are gone from both sides: {gone:?}"
    );
    for id in 0..ROWS {
        let row = &p[&id];
        let email = pg_writes.emails.get(&id).unwrap_or(&original[&id].0);
        assert_eq!(&row.0, email, "row {id}: PostgreSQL owns email");
        let balance = my_writes
            .balances
            .get(&id)
            .map(|&b| b as f64)
            .or_else(|| amount(&original[&id].2));
        assert_eq!(amount(&row.2), balance, "row {id}: MariaDB owns balance");
    }
    for id in &pg_writes.inserted {
        assert_eq!(
            p.contains_key(id),
            !pg_writes.deleted.contains(id),
            "row {id}, inserted on PostgreSQL{}",
            if pg_writes.deleted.contains(id) {
                " and deleted"
            } else {
                ""
            }
        );
    }
    assert_eq!(
        p.len() as i64,
        ROWS + (pg_writes.inserted.len() - pg_writes.deleted.len()) as i64
    );
    drop(m);

    // No echo loop: quiet, neither job runs again.
    let runs = |agent: &str| -> u64 {
        let out = arbor(dir.path(), &["sync", "jobs", "--agent", agent, "--json"]);
        let job: Json = serde_json::from_slice(&out.stdout).unwrap();
        job["runs"].as_u64().unwrap()
    };
    std::thread::sleep(Duration::from_secs(3));
    let before = (runs(&agents[0].address), runs(&agents[1].address));
    std::thread::sleep(Duration::from_secs(3));
    let after = (runs(&agents[0].address), runs(&agents[1].address));
    assert_eq!(before, after, "a job keeps running (an echo loop)");

    // Flat memory over the steady half, after a quarter of it as warm-up:
    // RSS outside RocksDB's caches (which fill up to their configured
    // bounds as the index is written and read, and are no leak), and the
    // caches within those bounds.
    let warm = samples.len() / 4;
    let bound = if Duration::from_secs(secs - secs / 2) >= FLAT_AFTER {
        MAX_RSS_GROWTH
    } else {
        MAX_SHORT_RSS_GROWTH
    };
    for (side, name) in configs.iter().enumerate() {
        let rss: Vec<u64> = samples.iter().map(|s| s[side].rss_kib).collect();
        let caches: Vec<u64> = samples.iter().map(|s| s[side].rocksdb_kib).collect();
        let rest: Vec<u64> = samples.iter().map(|s| s[side].outside_rocksdb()).collect();
        let growth = |series: &[u64]| {
            let peak = *series[warm..].iter().max().unwrap();
            (series[warm], peak, peak as f64 / series[warm] as f64 - 1.0)
        };
        let (rss_base, rss_peak, rss_growth) = growth(&rss);
        let (base, peak, rest_growth) = growth(&rest);
        eprintln!(
            "soak: {name} RSS {rss_base} KiB after warm-up, peak {rss_peak} KiB ({:+.1} %); \
             outside RocksDB's caches {base} KiB, peak {peak} KiB ({:+.1} %); \
             RocksDB's caches {} KiB → peak {} KiB",
            rss_growth * 100.0,
            rest_growth * 100.0,
            caches[warm],
            caches[warm..].iter().max().unwrap(),
        );
        eprintln!(
            "soak: {name} samples (RSS, caches) KiB {:?}",
            rss.iter().zip(&caches).collect::<Vec<_>>()
        );
        assert!(
            rest_growth < bound,
            "{name}: RSS outside RocksDB's caches grew {:.1} % over the steady half: {rest:?}",
            rest_growth * 100.0
        );
        let most = caches.iter().max().unwrap();
        assert!(
            *most <= ROCKSDB_BOUND_KIB,
            "{name}: RocksDB's caches reached {most} KiB, past their bounds ({ROCKSDB_BOUND_KIB} KiB)"
        );
    }
    drop(agents);
    pair.drop_tables();
}
