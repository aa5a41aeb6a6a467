//! Process-level crashes (issue 18): a real agent is killed with SIGKILL at
//! a random moment, restarted on its data directory, and checked against
//! an oracle.
//!
//! * During its full build: once ready again, the agent is in sync with a
//!   fresh agent built from a copy of the same system (same root: one
//!   round trip, no drift).
//! * While it follows a table by polling under a steady write load: once
//!   the writes stop, the restarted agent's index reaches that of a fresh
//!   build of the table (no acknowledged change lost).
//! * While it follows a table by rescanning (every second) under the same
//!   load: the same oracle.
//! * The source or the target of a sync run during its execution: the run fails cleanly
//!   or finishes; a rerun finishes; every row was updated exactly once (a
//!   trigger on the target counts updates) and the target equals the
//!   source.
//!
//! * While it follows PostgreSQL by logical capture, while changes are
//!   pushed to it (IngestChanges), and during a key rotation: the same
//!   oracle, a fresh build of the system.
//!
//! `ARBOR_CRASH_KILLS` (default 3) sets the kills per scenario; the long
//! mode in `docs/reliability.md` runs 100. Each kill prints its seed and
//! delay, so a failure can be replayed.

use super::*;

/// Kills per scenario.
fn kills() -> usize {
    std::env::var("ARBOR_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// A delay in `range` milliseconds from `seed` (splitmix64).
pub(super) fn delay(seed: u64, range: std::ops::Range<u64>) -> Duration {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    Duration::from_millis(range.start + z % (range.end - range.start))
}

/// The seed of a campaign: `ARBOR_CRASH_SEED`, else the clock.
pub(super) fn campaign_seed() -> u64 {
    std::env::var("ARBOR_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// An SQLite table `t (id, v)` of `rows` rows in `dir/NAME.db`, and an
/// agent config `NAME.toml` over it listening on `port` (0: any).
pub(super) fn table_agent(dir: &Path, name: &str, rows: i64, port: u16, extra: &str) {
    let db = Connection::open(dir.join(format!("{name}.db"))).unwrap();
    db.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
         INSERT OR IGNORE INTO t SELECT i, 'value ' || i FROM n;"
    ))
    .unwrap();
    table_t_agent(
        dir,
        name,
        "columns = [{ source = \"v\", kind = \"text\" }]\n",
        extra,
    );
    if port != 0 {
        on_port(dir, name, port);
    }
}

/// Makes `NAME.toml` listen on `port`.
fn on_port(dir: &Path, name: &str, port: u16) {
    let path = dir.join(format!("{name}.toml"));
    let config = std::fs::read_to_string(&path)
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(path, config).unwrap();
}

/// Compares `left` with `right` (dataset `customers`) until both serve:
/// (exit code, summary, drift).
fn compare_ready(dir: &Path, left: &str, right: &str) -> (i32, Json, Vec<Json>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, summary, drift) = compare(dir, left, right);
        let indexing = summary["error"]
            .as_str()
            .is_some_and(|e| e.contains("being indexed"));
        if code == 2 && indexing && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        return (code, summary, drift);
    }
}

#[test]
fn an_agent_killed_during_its_build_comes_back_equal_to_a_fresh_build() {
    const ROWS: i64 = 150_000;
    let dir = TempDir::new().unwrap();
    table_agent(dir.path(), "fresh", ROWS, 0, "");
    let started = Instant::now();
    let fresh = AgentProcess::start(dir.path(), "fresh.toml");
    // Kills land within the time a build takes, measured on the fresh one.
    let (code, _, _) = compare_ready(dir.path(), &fresh.address, &fresh.address);
    assert_eq!(code, 0);
    let build_ms = (started.elapsed().as_millis() as u64).max(100);
    eprintln!("crash: a build of {ROWS} rows takes about {build_ms} ms");
    let seed = campaign_seed();
    for k in 0..kills() {
        let name = format!("killed{k}");
        std::fs::copy(
            dir.path().join("fresh.db"),
            dir.path().join(format!("{name}.db")),
        )
        .unwrap();
        table_agent(dir.path(), &name, ROWS, 0, "");
        let config = format!("{name}.toml");
        // Killed once or twice while it builds, then left to finish.
        for strike in 0..=(k % 2) {
            let mut agent = AgentProcess::start(dir.path(), &config);
            let wait = delay(seed ^ ((k as u64) << 8 | strike as u64), 20..build_ms);
            eprintln!("crash: build of {name}, seed {seed}, kill {strike} after {wait:?}");
            std::thread::sleep(wait);
            agent.child.kill().unwrap();
            agent.child.wait().unwrap();
        }
        let back = AgentProcess::start(dir.path(), &config);
        let (code, summary, drift) = compare_ready(dir.path(), &back.address, &fresh.address);
        assert_eq!(
            code, 0,
            "after the kills {name} differs from a fresh build: {summary}"
        );
        assert!(drift.is_empty(), "{drift:?}");
        assert_eq!(summary["left"]["count"], ROWS, "{summary}");
        assert_eq!(
            summary["left"]["root"], summary["right"]["root"],
            "{summary}"
        );
        drop(back);
        forget_agent(dir.path(), &name);
    }
}

/// Removes an agent's system and data directory once its case is checked:
/// a long campaign would otherwise keep every index it built.
fn forget_agent(dir: &Path, name: &str) {
    std::fs::remove_dir_all(dir.join(format!("{name}-data"))).unwrap();
    std::fs::remove_file(dir.join(format!("{name}.db"))).unwrap();
}

/// Which agent of a sync run is killed.
#[derive(Debug, Clone, Copy)]
enum Killed {
    Source,
    Target,
}

/// Starts a sync run of `customers` from `src` to `dst`, executed in
/// batches of 50 throttled to 1,000 rows a second (about two seconds for
/// 2,000 rows), retrying for a minute: a fault injected meanwhile lands
/// inside it.
pub(super) fn throttled_sync(dir: &Path, src: &AgentProcess, dst: &AgentProcess) -> Child {
    Command::new(ARBOR)
        .args([
            "sync",
            "run",
            "--source",
            &src.address,
            "--target",
            &dst.address,
            "--dataset",
            "customers",
            "--execute",
            "--json",
            "--batch",
            "50",
            "--max-share",
            "1",
            "--max-rows-per-sec",
            "1000",
            "--retry-secs",
            "60",
        ])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a throttled run that met a fault: it must end 0 or 2, never
/// anything else; then a rerun must finish what it left. Returns the first
/// run's exit code.
pub(super) fn end_and_rerun(
    dir: &Path,
    run: Child,
    src: &AgentProcess,
    dst: &AgentProcess,
) -> Option<i32> {
    let out = run.wait_with_output().unwrap();
    let code = out.status.code();
    eprintln!("sync run through the fault: {}", said(&out));
    assert!(matches!(code, Some(0) | Some(2)), "{}", said(&out));
    let rerun = sync_run(dir, src, dst, &["--execute", "--json", "--max-share", "1"]);
    assert_eq!(rerun.status.code(), Some(0), "{}", said(&rerun));
    code
}

/// Kills `killed` during a throttled sync run from `src` to `dst` and
/// restarts it on its port; then checks every row was updated once.
fn killed_during_a_sync(killed: Killed) {
    const ROWS: i64 = 2_000;
    let seed = campaign_seed();
    for k in 0..kills() {
        let dir = TempDir::new().unwrap();
        super::faults::counted_pair(dir.path(), ROWS);
        // Both on fixed ports, so the run's retries find them again.
        let (src_port, dst_port) = (free_port(), free_port());
        on_port(dir.path(), "src", src_port);
        on_port(dir.path(), "dst", dst_port);
        let mut src = AgentProcess::start(dir.path(), "src.toml");
        let mut dst = AgentProcess::start(dir.path(), "dst.toml");
        // Throttled, so the run lasts about two seconds and the kill lands
        // inside it.
        let run = throttled_sync(dir.path(), &src, &dst);
        let wait = delay(seed ^ k as u64, 300..2_200);
        eprintln!("crash: sync {killed:?}, seed {seed}, kill after {wait:?}");
        std::thread::sleep(wait);
        let (victim, config) = match killed {
            Killed::Source => (&mut src, "src.toml"),
            Killed::Target => (&mut dst, "dst.toml"),
        };
        victim.child.kill().unwrap();
        victim.child.wait().unwrap();
        *victim = AgentProcess::start(dir.path(), config);
        let code = end_and_rerun(dir.path(), run, &src, &dst);
        let (counts, values) = super::faults::target_state(dir.path());
        assert_eq!(counts.len() as i64, ROWS, "every row was written");
        assert!(
            counts.values().all(|&n| n == 1),
            "a write applied twice after a kill at {wait:?} (seed {seed}): {:?}",
            counts
                .iter()
                .filter(|(_, n)| **n > 1)
                .take(5)
                .collect::<Vec<_>>()
        );
        assert_eq!(values, BTreeSet::from(["new".to_owned()]));
        eprintln!("crash: sync {killed:?} kill {k}: first run exit {code:?}");
    }
}

#[test]
fn a_target_killed_during_a_sync_applies_every_write_once() {
    killed_during_a_sync(Killed::Target);
}

#[test]
fn a_source_killed_during_a_sync_applies_every_write_once() {
    killed_during_a_sync(Killed::Source);
}

/// Writes to the demo's `customers` in `db` until `stop`: updates of
/// existing rows and inserts of new ones, each with a later `updated_at`.
fn steady_writes(
    db: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let c = Connection::open(db).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut n: u64 = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let at = format!(
                "2026-12-{:02} {:02}:{:02}:{:02}",
                10 + n / 86_400,
                n / 3_600 % 24,
                n / 60 % 60,
                n % 60
            );
            let sql = if n.is_multiple_of(3) {
                format!(
                    "INSERT INTO customers VALUES ({}, 'w{n}@example.org', 'New {n}', '1.00', '{at}')",
                    1_000_000 + n
                )
            } else {
                format!(
                    "UPDATE customers SET email = 'w{n}@example.org', updated_at = '{at}' WHERE customer_id = {}",
                    1 + n * 37 % 3_000
                )
            };
            c.execute_batch(&sql).unwrap();
            n += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        n
    })
}

/// Kills an agent following the demo table with `capture` while writes go
/// on, restarts it, and checks it reaches a fresh build once they stop.
fn killed_while_following_writes(mode: &str, capture: &str) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let seed = campaign_seed();
    for k in 0..kills() {
        let dir = demo(3_000, 0);
        followed_copy(dir.path(), "polled", capture);
        let mut polled = AgentProcess::start(dir.path(), "polled.toml");
        let stop = Arc::new(AtomicBool::new(false));
        let writer = steady_writes(dir.path().join("polled.db"), Arc::clone(&stop));
        let wait = delay(seed ^ k as u64, 300..2_500);
        eprintln!("crash: {mode} agent, seed {seed}, kill after {wait:?}");
        std::thread::sleep(wait);
        polled.child.kill().unwrap();
        polled.child.wait().unwrap();
        drop(polled);
        let polled = AgentProcess::start(dir.path(), "polled.toml");
        std::thread::sleep(Duration::from_millis(1_500));
        stop.store(true, Ordering::Relaxed);
        let writes = writer.join().unwrap();
        // The oracle: a fresh build of the system as the writes left it.
        copy_of(dir.path(), "polled", "oracle", "");
        let oracle = AgentProcess::start(dir.path(), "oracle.toml");
        let summary = wait_for_drift(dir.path(), &oracle.address, &polled.address, &Drift::new());
        assert_eq!(
            summary["left"]["root"], summary["right"]["root"],
            "{summary}"
        );
        eprintln!("crash: {mode} agent kill {k}: {writes} writes, none lost");
    }
}

#[test]
fn an_agent_killed_while_polling_under_writes_loses_no_change() {
    killed_while_following_writes(
        "polling",
        "capture = { mode = \"poll\", column = \"updated_at\", interval_secs = 1, rescan_interval_secs = 3600 }\n",
    );
}

#[test]
fn an_agent_killed_while_rescanning_under_writes_loses_no_change() {
    killed_while_following_writes(
        "rescanning",
        "capture = { mode = \"rescan\", interval_secs = 1 }\n",
    );
}

/// A database server the demo's customers were copied into.
#[derive(Debug, Clone, Copy)]
pub(super) enum Server {
    Postgres,
    Mariadb,
}

/// A connection to a [`Server`] that comes back after the server restarts.
enum ServerConn {
    Postgres(Box<postgres::Client>),
    Mariadb(mysql::Conn),
}

impl ServerConn {
    fn connect(server: Server) -> Result<ServerConn, String> {
        match server {
            Server::Postgres => {
                let url = std::env::var("ARBOR_TEST_POSTGRES_URL").unwrap();
                postgres::Client::connect(&url, postgres::NoTls)
                    .map(|c| ServerConn::Postgres(Box::new(c)))
                    .map_err(|e| e.to_string())
            }
            Server::Mariadb => {
                let url = std::env::var("ARBOR_TEST_MYSQL_URL").unwrap();
                mysql::Conn::new(mysql::Opts::from_url(&url).unwrap())
                    .map(ServerConn::Mariadb)
                    .map_err(|e| e.to_string())
            }
        }
    }

    fn execute(&mut self, sql: &str) -> Result<(), String> {
        match self {
            ServerConn::Postgres(pg) => pg.batch_execute(sql).map_err(|e| e.to_string()),
            ServerConn::Mariadb(my) => {
                mysql::prelude::Queryable::query_drop(my, sql).map_err(|e| e.to_string())
            }
        }
    }
}

/// Writes to a table of the demo's shape on `server` until `stop`:
/// inserts, updates and deletes in turn, one transaction each (about 200
/// a second). A write that fails (the server restarting) is retried on a
/// new connection. Returns the number of writes that succeeded.
pub(super) fn steady_server_writes(
    server: Server,
    table: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    first_id: i64,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut conn = ServerConn::connect(server).unwrap();
        let mut n: u64 = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let id = first_id + n as i64;
            let sql = match n % 4 {
                0 | 1 => format!(
                    "INSERT INTO {table} (customer_id, email, full_name, balance) \
                     VALUES ({id}, 'w{n}@example.org', 'New {n}', {n}.25)"
                ),
                2 => format!(
                    "UPDATE {table} SET email = 'u{n}@example.org', balance = balance + 1 \
                     WHERE customer_id = {}",
                    1 + (n * 37) as i64 % 2_000
                ),
                _ => format!("DELETE FROM {table} WHERE customer_id = {}", id - 3),
            };
            if let Err(e) = conn.execute(&sql) {
                eprintln!("crash: a write to {server:?} failed ({e}); reconnecting");
                let deadline = Instant::now() + Duration::from_secs(60);
                conn = loop {
                    std::thread::sleep(Duration::from_millis(100));
                    match ServerConn::connect(server) {
                        Ok(c) => break c,
                        Err(e) => assert!(Instant::now() < deadline, "{server:?} is gone: {e}"),
                    }
                };
                // An insert whose commit was lost may be there or not: the
                // next turn writes new ids, and the oracle is the table.
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        n
    })
}

/// The demo's customers in a PostgreSQL table followed by logical
/// capture, with the configs of agents over it.
pub(super) struct LogicalFollow {
    pub table: String,
    slot: String,
    _guard: SlotGuard,
}

impl LogicalFollow {
    /// `None` where the server cannot capture logically (a failure under CI).
    pub fn new(dir: &Path, prefix: &str) -> Option<LogicalFollow> {
        let (mut pg, url, table) = crm_into_postgres(dir);
        if !logical_capture_available(&mut pg) {
            return None;
        }
        let slot = format!("{prefix}_{}", std::process::id());
        let _guard = SlotGuard {
            url,
            slot: slot.clone(),
        };
        Some(LogicalFollow {
            table,
            slot,
            _guard,
        })
    }

    /// Writes `NAME.toml`: an agent over the table, following it by
    /// logical capture or (`follow` false) building it once.
    pub fn config(&self, dir: &Path, name: &str, follow: bool) {
        let capture = if follow {
            format!(
                "capture = {{ mode = \"logical\", slot = \"{0}\", publication = \"{0}\", create = true, interval_ms = 50 }}\n",
                self.slot
            )
        } else {
            String::new()
        };
        std::fs::write(
            dir.join(format!("{name}.toml")),
            server_config(
                name,
                "postgres",
                "ARBOR_TEST_POSTGRES_URL",
                &self.table,
                &capture,
            ),
        )
        .unwrap();
    }
}

/// An agent config over the demo's customers in a server's `table`.
pub(super) fn server_config(
    name: &str,
    kind: &str,
    url_env: &str,
    table: &str,
    capture: &str,
) -> String {
    format!(
        "[agent]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{name}-data\"\n\n[[dataset]]\nname = \"customers\"\n\
         secret = \"arbor demo secret: use secret_env or secret_file in production\"\n\
         source = {{ kind = \"{kind}\", url_env = \"{url_env}\", table = \"{table}\" }}\n\
         key = [{{ source = \"customer_id\", name = \"id\", kind = \"integer\" }}]\n\
         columns = [\n  {{ source = \"email\", kind = \"text\" }},\n  {{ source = \"full_name\", name = \"name\", kind = \"text\" }},\n\
           {{ source = \"balance\", kind = \"decimal\" }},\n]\n{capture}"
    )
}

#[test]
fn an_agent_killed_while_capturing_logically_under_writes_loses_no_change() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = demo(2_000, 0);
    let Some(follow) = LogicalFollow::new(dir.path(), "arbor_crash") else {
        return;
    };
    follow.config(dir.path(), "logical", true);
    let seed = campaign_seed();
    let mut agent = AgentProcess::start(dir.path(), "logical.toml");
    let (code, summary, _) = compare_ready(dir.path(), &agent.address, &agent.address);
    assert_eq!(code, 0, "{summary}");
    let mut total = 0;
    for k in 0..kills() {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = steady_server_writes(
            Server::Postgres,
            follow.table.clone(),
            Arc::clone(&stop),
            1_000_000 * (k as i64 + 1),
        );
        let wait = delay(seed ^ k as u64, 200..2_000);
        eprintln!("crash: logical capture, seed {seed}, kill {k} after {wait:?}");
        std::thread::sleep(wait);
        agent.child.kill().unwrap();
        agent.child.wait().unwrap();
        drop(agent);
        // Writes go on while it is down and while it starts again.
        std::thread::sleep(Duration::from_millis(300));
        agent = AgentProcess::start(dir.path(), "logical.toml");
        std::thread::sleep(Duration::from_millis(1_000));
        stop.store(true, Ordering::Relaxed);
        let writes = writer.join().unwrap();
        total += writes;
        // The oracle: a fresh build of the table as the writes left it.
        let fresh_name = format!("fresh{k}");
        follow.config(dir.path(), &fresh_name, false);
        let fresh = AgentProcess::start(dir.path(), &format!("{fresh_name}.toml"));
        let summary = wait_in_sync(dir.path(), &fresh.address, &agent.address);
        assert_eq!(
            summary["left"]["root"], summary["right"]["root"],
            "{summary}"
        );
        eprintln!("crash: logical capture kill {k}: {writes} writes, none lost");
    }
    eprintln!("crash: logical capture: {} kills, {total} writes", kills());
}

#[test]
fn an_agent_killed_during_a_key_rotation_comes_back_serving_and_finishes_it() {
    const ROWS: i64 = 150_000;
    let next = "next_secret = \"the rotated key, of enough length\"\n";
    let dir = TempDir::new().unwrap();
    table_agent(dir.path(), "fresh", ROWS, 0, next);
    let fresh = AgentProcess::start(dir.path(), "fresh.toml");
    let (code, _, _) = compare_ready(dir.path(), &fresh.address, &fresh.address);
    assert_eq!(code, 0);
    // The oracle rotates whole; kills land within the time that takes.
    let started = Instant::now();
    let rotated = rotate_keys(dir.path(), &fresh.address);
    assert!(rotated.status.success(), "{}", said(&rotated));
    let rotate_ms = (started.elapsed().as_millis() as u64).max(100);
    let k2 = serde_json::from_slice::<Json>(&rotated.stdout).unwrap()["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    eprintln!("crash: a rotation of {ROWS} rows takes about {rotate_ms} ms");
    let seed = campaign_seed();
    for k in 0..kills() {
        let name = format!("rotated{k}");
        std::fs::copy(
            dir.path().join("fresh.db"),
            dir.path().join(format!("{name}.db")),
        )
        .unwrap();
        table_agent(dir.path(), &name, ROWS, 0, next);
        let config = format!("{name}.toml");
        let mut agent = AgentProcess::start(dir.path(), &config);
        let (code, _, _) = compare_ready(dir.path(), &agent.address, &agent.address);
        assert_eq!(code, 0);
        let rotation = Command::new(ARBOR)
            .args([
                "keys",
                "rotate",
                "--agent",
                &agent.address,
                "--dataset",
                "customers",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let wait = delay(seed ^ k as u64, 20..rotate_ms);
        eprintln!("crash: key rotation of {name}, seed {seed}, kill after {wait:?}");
        std::thread::sleep(wait);
        agent.child.kill().unwrap();
        agent.child.wait().unwrap();
        rotation.wait_with_output().unwrap();
        drop(agent);
        let back = AgentProcess::start(dir.path(), &config);
        // Back and serving, under whichever key it settled on.
        let (code, summary, drift) = compare_ready(dir.path(), &back.address, &fresh.address);
        assert_eq!(code, 0, "after a kill mid-rotation: {summary}");
        assert!(drift.is_empty());
        let finished = summary["left"]["key_id"] == k2.as_str();
        if !finished {
            // The rotation did not survive the kill: it runs again whole.
            let again = rotate_keys(dir.path(), &back.address);
            assert!(again.status.success(), "{}", said(&again));
            let r: Json = serde_json::from_slice(&again.stdout).unwrap();
            assert_eq!(r["key_id"], k2.as_str(), "{r}");
            assert_eq!(r["records"], ROWS, "{r}");
        }
        let (code, summary, _) = compare_ready(dir.path(), &back.address, &fresh.address);
        assert_eq!(code, 0, "{summary}");
        assert_eq!(summary["left"]["key_id"], k2.as_str(), "{summary}");
        assert_eq!(
            summary["left"]["root"], summary["right"]["root"],
            "{summary}"
        );
        eprintln!(
            "crash: key rotation kill {k}: rotation {} before the kill",
            if finished { "finished" } else { "not finished" }
        );
        drop(back);
        forget_agent(dir.path(), &name);
    }
}

/// Pushes batches of changes to `address` until `stop`, each first
/// committed to the SQLite table `t` in `db` (as an integration beside a
/// system would), then sent with IngestChanges and retried until the
/// agent acknowledges it (an agent killed meanwhile comes back on the
/// same port). Returns the batches acknowledged.
fn steady_ingest(
    db: PathBuf,
    address: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    use arbor::proto::v1 as pb;
    use pb::change_event::Op;
    use pb::typed_value::Value as V;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut sqlite = Connection::open(db).unwrap();
        let mut n: i64 = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let int = |i: i64| pb::TypedValue {
                value: Some(V::Integer(i.to_string())),
            };
            let text = |t: String| pb::TypedValue {
                value: Some(V::Text(t)),
            };
            // Ten updates of existing rows, one new row, and the delete of
            // the row the batch before last added.
            let mut changes = Vec::new();
            let tx = sqlite.transaction().unwrap();
            for i in 0..10 {
                let id = 1 + (n * 10 + i) * 37 % 2_000;
                let v = format!("batch {n}");
                tx.execute(
                    "UPDATE t SET v = ?2 WHERE id = ?1",
                    rusqlite::params![id, v],
                )
                .unwrap();
                changes.push(pb::ChangeEvent {
                    op: Op::Upsert as i32,
                    key: vec![int(id)],
                    values: vec![text(v)],
                });
            }
            let new = 100_000 + n;
            tx.execute("INSERT INTO t VALUES (?1, 'new')", [new])
                .unwrap();
            changes.push(pb::ChangeEvent {
                op: Op::Upsert as i32,
                key: vec![int(new)],
                values: vec![text("new".into())],
            });
            if n >= 2 {
                tx.execute("DELETE FROM t WHERE id = ?1", [new - 2])
                    .unwrap();
                changes.push(pb::ChangeEvent {
                    op: Op::Delete as i32,
                    key: vec![int(new - 2)],
                    values: vec![],
                });
            }
            tx.commit().unwrap();
            let request = pb::IngestRequest {
                dataset: "customers".into(),
                changes,
                watermark: format!("batch {n}").into_bytes(),
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            runtime.block_on(async {
                loop {
                    let sent = async {
                        let mut client = pb::ingest_service_client::IngestServiceClient::connect(
                            address.clone(),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                        client
                            .ingest_changes(request.clone())
                            .await
                            .map_err(|s| s.to_string())
                    };
                    match sent.await {
                        Ok(_) => break,
                        Err(e) => {
                            assert!(Instant::now() < deadline, "ingest never acknowledged: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        n as u64
    })
}

#[test]
fn an_agent_killed_while_changes_are_pushed_to_it_loses_no_acknowledged_change() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = TempDir::new().unwrap();
    let port = free_port();
    table_agent(
        dir.path(),
        "pushed",
        2_000,
        port,
        "capture = { mode = \"push\" }\n",
    );
    let mut agent = AgentProcess::start(dir.path(), "pushed.toml");
    let (code, _, _) = compare_ready(dir.path(), &agent.address, &agent.address);
    assert_eq!(code, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = steady_ingest(
        dir.path().join("pushed.db"),
        agent.address.clone(),
        Arc::clone(&stop),
    );
    let seed = campaign_seed();
    for k in 0..kills() {
        let wait = delay(seed ^ k as u64, 200..1_500);
        eprintln!("crash: ingest, seed {seed}, kill {k} after {wait:?}");
        std::thread::sleep(wait);
        agent.child.kill().unwrap();
        agent.child.wait().unwrap();
        drop(agent);
        agent = AgentProcess::start(dir.path(), "pushed.toml");
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let batches = pusher.join().unwrap();
    // The oracle: a fresh build of the table every acknowledged batch was
    // committed to first.
    std::fs::copy(dir.path().join("pushed.db"), dir.path().join("oracle.db")).unwrap();
    table_agent(dir.path(), "oracle", 0, 0, "");
    let oracle = AgentProcess::start(dir.path(), "oracle.toml");
    let (code, summary, drift) = compare_ready(dir.path(), &agent.address, &oracle.address);
    assert_eq!(
        code,
        0,
        "{summary}\nfirst drift: {:?}",
        drift.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(summary["left"]["root"], summary["right"]["root"]);
    eprintln!(
        "crash: ingest: {} kills, {batches} batches acknowledged, none lost",
        kills()
    );
}
