//! Real-time sync latency, PostgreSQL → MariaDB: from a row's commit in
//! PostgreSQL to the same row written in MariaDB by arbor, at a steady
//! rate of single-row transactions.
//!
//! Two release agents run as processes: one beside PostgreSQL with logical
//! capture and a `realtime`, `execute` one-way sync job, one beside
//! MariaDB accepting repairs. A writer commits `ARBOR_SYNC_RATES` (default
//! `100,1000`) single-row inserts and updates per second for
//! `ARBOR_SYNC_SECS` (default 20) seconds, each stamping
//! `updated_at = clock_timestamp()`. A MariaDB trigger records, for every
//! row arbor writes, `NOW(6) - updated_at`: the latency of that version of
//! the row (a version superseded before it was carried over is not
//! counted; its successor is). Same machine, one clock. At the end both
//! tables must hold the same rows.
//!
//! Needs `ARBOR_TEST_POSTGRES_URL` (wal_level=logical),
//! `ARBOR_TEST_MYSQL_URL` and `ARBOR_BIN` (a release arbor): run it through
//! `tools/bench/sync_lag.sh`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Agent(Child, String);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(bin: &str, dir: &std::path::Path, config: &str) -> Agent {
    let mut child = Command::new(bin)
        .args(["agent", "--config", config])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start an agent");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the agent's address");
    let addr = line.trim().trim_start_matches("listening on ").to_owned();
    Agent(child, format!("http://{addr}"))
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn run(bin: &str, pg_url: &str, my_url: &str, rate: u64, secs: u64) {
    let mut pg = postgres::Client::connect(pg_url, postgres::NoTls).expect("connect PostgreSQL");
    let mut my = mysql::Conn::new(mysql::Opts::from_url(my_url).expect("MySQL URL"))
        .expect("connect MariaDB");
    let slot = "arbor_bench_sync";
    let _ = pg.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    );
    pg.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS {slot};
         DROP TABLE IF EXISTS bench_rt;
         CREATE TABLE bench_rt (id bigint PRIMARY KEY, v bigint NOT NULL, updated_at timestamptz NOT NULL);"
    ))
    .expect("PostgreSQL table");
    my.query_drop(
        "DROP TABLE IF EXISTS bench_rt; DROP TABLE IF EXISTS bench_rt_lag;
         CREATE TABLE bench_rt (id bigint PRIMARY KEY, v bigint NOT NULL, updated_at datetime(6) NOT NULL);
         CREATE TABLE bench_rt_lag (us bigint NOT NULL);
         CREATE TRIGGER bench_rt_ins AFTER INSERT ON bench_rt FOR EACH ROW
           INSERT INTO bench_rt_lag VALUES (TIMESTAMPDIFF(MICROSECOND, NEW.updated_at, NOW(6)));
         CREATE TRIGGER bench_rt_upd AFTER UPDATE ON bench_rt FOR EACH ROW
           INSERT INTO bench_rt_lag VALUES (TIMESTAMPDIFF(MICROSECOND, NEW.updated_at, NOW(6)));",
    )
    .expect("MariaDB tables");

    let dir = tempfile::TempDir::new().expect("temp dir");
    let dataset = "key = [{ source = \"id\", kind = \"integer\" }]\n\
        columns = [{ source = \"v\", kind = \"integer\" }, { source = \"updated_at\", kind = \"timestamp\" }]\n";
    let head = |data: &str| {
        format!(
            "[agent]\ninsecure = true\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\n\n[[dataset]]\nname = \"rt\"\nsecret = \"bench\"\n"
        )
    };
    std::fs::write(
        dir.path().join("my.toml"),
        format!(
            "{}source = {{ kind = \"mysql\", url_env = \"ARBOR_TEST_MYSQL_URL\", table = \"bench_rt\" }}\n{dataset}allow_repairs = true\n",
            head("my-data")
        ),
    )
    .expect("write config");
    let target = agent(bin, dir.path(), "my.toml");
    std::fs::write(
        dir.path().join("pg.toml"),
        format!(
            "{}source = {{ kind = \"postgres\", url_env = \"ARBOR_TEST_POSTGRES_URL\", table = \"bench_rt\" }}\n{dataset}\
             serve_values = true\n\
             capture = {{ mode = \"logical\", slot = \"{slot}\", publication = \"{slot}\", create = true, interval_ms = 10 }}\n\n\
             [[sync]]\nname = \"live\"\ndataset = \"rt\"\npeers = [{{ address = \"{}\" }}]\nrealtime = true\nexecute = true\n",
            head("pg-data"),
            target.1
        ),
    )
    .expect("write config");
    let source = agent(bin, dir.path(), "pg.toml");
    // Ready when a compare answers.
    let ready = Command::new(bin)
        .args([
            "compare",
            "--agent",
            &source.1,
            "--dataset",
            "rt",
            "--peer",
            &target.1,
            "--wait",
            "120",
            "--limit",
            "0",
        ])
        .output()
        .expect("compare");
    assert!(
        ready.status.code().is_some_and(|c| c <= 1),
        "agents not ready"
    );

    // The writer: 40 % inserts of new rows, 60 % updates of earlier ones.
    let total = rate * secs;
    let started = Instant::now();
    let mut inserted = 0u64;
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let sql = if inserted == 0 || i % 5 < 2 {
            inserted += 1;
            format!("INSERT INTO bench_rt VALUES ({inserted}, 0, clock_timestamp())")
        } else {
            let id = 1 + (i.wrapping_mul(0x9e37_79b9) % inserted);
            format!("UPDATE bench_rt SET v = v + 1, updated_at = clock_timestamp() WHERE id = {id}")
        };
        pg.batch_execute(&sql).expect("write");
    }
    let wrote = started.elapsed();

    // Drain: until MariaDB holds exactly the PostgreSQL rows.
    let rows = |pg: &mut postgres::Client| -> Vec<(i64, i64)> {
        pg.query("SELECT id, v FROM bench_rt ORDER BY id", &[])
            .expect("read PostgreSQL")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let want = rows(&mut pg);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut equal = false;
    while Instant::now() < deadline {
        let got: Vec<(i64, i64)> = my
            .query("SELECT id, v FROM bench_rt ORDER BY id")
            .expect("read MariaDB");
        if got == want {
            equal = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut lags: Vec<i64> = my.query("SELECT us FROM bench_rt_lag").expect("read lags");
    lags.sort_unstable();
    let jobs = Command::new(bin)
        .args(["sync", "jobs", "--agent", &source.1, "--json"])
        .output()
        .expect("jobs");
    let job: serde_json::Value =
        serde_json::from_slice(&jobs.stdout).unwrap_or(serde_json::Value::Null);
    drop(source);
    drop(target);
    let _ = pg.execute("SELECT pg_drop_replication_slot($1)", &[&slot]);
    let _ = pg.batch_execute(&format!("DROP PUBLICATION {slot}; DROP TABLE bench_rt"));
    let _ = my.query_drop("DROP TABLE bench_rt; DROP TABLE bench_rt_lag");

    println!(
        "sync_lag: {rate} commits/s for {secs} s ({total} single-row transactions in {:.1} s; {} rows at the end)",
        wrote.as_secs_f64(),
        want.len()
    );
    println!(
        "  PostgreSQL commit -> MariaDB write: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} row writes, {} sync runs",
        percentile(&lags, 0.50),
        percentile(&lags, 0.99),
        percentile(&lags, 1.0),
        lags.len(),
        job["runs"]
    );
    let last = &job["last_run"]["pairs"][0]["report"];
    println!(
        "  last run: {} ms (compare {} ms, fetch {} ms, write {} ms, verify {} ms)",
        last["elapsed_ms"],
        last["compare_ms"],
        last["fetch_ms"],
        last["write_ms"],
        last["verify_ms"]
    );
    println!(
        "  MariaDB equals PostgreSQL at the end: {}",
        if equal { "yes" } else { "NO" }
    );
    assert!(equal, "the target did not converge");
}

fn main() {
    let (Ok(pg), Ok(my), Ok(bin)) = (
        std::env::var("ARBOR_TEST_POSTGRES_URL"),
        std::env::var("ARBOR_TEST_MYSQL_URL"),
        std::env::var("ARBOR_BIN"),
    ) else {
        eprintln!("sync_lag: run tools/bench/sync_lag.sh (needs the test databases and ARBOR_BIN)");
        return;
    };
    let secs = env_or("ARBOR_SYNC_SECS", 20u64);
    let rates: String = env_or("ARBOR_SYNC_RATES", "100,1000".to_string());
    for rate in rates
        .split(',')
        .filter_map(|r| r.trim().parse::<u64>().ok())
    {
        run(&bin, &pg, &my, rate, secs);
    }
}
