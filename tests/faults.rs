//! Network faults between agents and between the CLI and an agent (issue
//! 18): a proxy on loopback stands between two parties and cuts
//! connections mid-stream, delays and throttles what flows back, or
//! swallows replies (a half-open link). The oracle is the systems
//! themselves: a compare either reports exactly the drift the two SQLite
//! files hold or fails cleanly (exit 2, a stored failed run), never a false
//! report; a sync never applies a write twice (a trigger on the target
//! counts every update) and ends with the target equal to the source.
//!
//! `ARBOR_FAULT_CASES` (default 3) sets how many cut points each fault test
//! tries; the long mode in `docs/reliability.md` runs more.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// What the proxy does to a connection.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// A connection is cut (both directions closed) once `after` bytes came
    /// back from upstream on it; `connections` connections are, the first
    /// ones to get that far.
    Cut { after: usize, connections: usize },
    /// Every chunk coming back waits `delay` plus up to `jitter`, and the
    /// link carries at most `bytes_per_sec`.
    Slow {
        delay: Duration,
        jitter: Duration,
        bytes_per_sec: usize,
    },
    /// A connection stops forwarding replies after `after` bytes but stays
    /// open (the caller hears nothing more); `connections` connections do,
    /// the first ones to get that far.
    HalfOpen { after: usize, connections: usize },
}

/// A TCP proxy on a loopback port chosen at run time in front of
/// `upstream`, injecting `fault`.
struct FaultProxy {
    address: String,
    /// Connections the fault struck.
    struck: Arc<AtomicUsize>,
}

impl FaultProxy {
    fn start(upstream: &str, fault: Fault) -> FaultProxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("an agent address");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let struck = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&struck);
        let limit = match fault {
            Fault::Cut { connections, .. } | Fault::HalfOpen { connections, .. } => connections,
            Fault::Slow { .. } => 0,
        };
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let back = match fault {
                    Fault::Cut { after, .. } => Back::CutAfter(after),
                    Fault::HalfOpen { after, .. } => Back::SwallowAfter(after),
                    Fault::Slow {
                        delay,
                        jitter,
                        bytes_per_sec,
                    } => Back::Slow(delay, jitter, bytes_per_sec),
                };
                let (c, s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(c, s, Back::Pass, None));
                let strikes = (Arc::clone(&counter), limit);
                std::thread::spawn(move || pump(server, client, back, Some(strikes)));
            }
        });
        FaultProxy { address, struck }
    }

    fn struck(&self) -> usize {
        self.struck.load(Ordering::Relaxed)
    }
}

/// What happens to the bytes of one direction.
#[derive(Debug, Clone, Copy)]
enum Back {
    Pass,
    CutAfter(usize),
    SwallowAfter(usize),
    Slow(Duration, Duration, usize),
}

/// Copies `from` to `to` under `back` until either side closes. `strikes`:
/// the proxy's count of connections struck, and how many may be.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    back: Back,
    strikes: Option<(Arc<AtomicUsize>, usize)>,
) {
    let mut buf = [0u8; 16 * 1024];
    let mut passed = 0usize;
    // A small LCG: jitter needs spread, not quality.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    // Claims one of the strikes left; false once they are all used.
    let strike = || match &strikes {
        Some((struck, limit)) => struck
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < *limit).then_some(n + 1)
            })
            .is_ok(),
        None => false,
    };
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match back {
            Back::CutAfter(limit) if passed + n >= limit && strike() => {
                let _ = to.write_all(&buf[..limit.saturating_sub(passed)]);
                break;
            }
            Back::SwallowAfter(limit) if passed + n >= limit && strike() => {
                let _ = to.write_all(&buf[..limit.saturating_sub(passed)]);
                // Keep reading (the sender sees a live peer) and drop it all.
                while matches!(from.read(&mut buf), Ok(n) if n > 0) {}
                return;
            }
            Back::Slow(delay, jitter, bytes_per_sec) => {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let spread = jitter.mul_f64((seed >> 11) as f64 / (1u64 << 53) as f64);
                let wire = Duration::from_secs_f64(n as f64 / bytes_per_sec as f64);
                std::thread::sleep(delay + spread + wire);
            }
            _ => {}
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        passed += n;
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Cut points: spread over the first 15 kB coming back, where the
/// handshake, the describe, the node levels, the leaves and the batches'
/// answers go by (the scenarios below carry a little more than that).
fn cut_points() -> Vec<usize> {
    let cases: usize = std::env::var("ARBOR_FAULT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    (0..cases).map(|i| 200 + (i * 7_919) % 15_000).collect()
}

/// A compare whose peer is behind `fault` reports exactly the seeded drift
/// or fails cleanly: `Ok(true)` reported, `Ok(false)` failed cleanly.
fn compare_through(dir: &Path, agent: &AgentProcess, proxy: &FaultProxy) -> bool {
    let (code, summary, drift) = compare(dir, &agent.address, &proxy.address);
    match code {
        1 => {
            assert_eq!(summary["status"], "completed", "{summary}");
            assert_eq!(drift_set(&drift), expected(dir), "a false report");
            true
        }
        2 => {
            assert_eq!(summary["status"], "failed", "{summary}");
            assert!(drift.is_empty(), "a failed run shows no drift");
            let error = summary["error"].as_str().unwrap_or_default();
            assert!(!error.is_empty(), "a failed run says why: {summary}");
            false
        }
        other => panic!("compare exit {other}, not 1 (drift) or 2 (failed): {summary}"),
    }
}

#[test]
fn a_compare_over_a_link_that_cuts_reports_the_drift_or_fails_cleanly() {
    let dir = demo(5_000, 25);
    let crm = AgentProcess::start(dir.path(), "crm.toml");
    let erp = AgentProcess::start(dir.path(), "erp.toml");
    let (mut reported, mut failed) = (0, 0);
    for after in cut_points() {
        let proxy = FaultProxy::start(
            &erp.address,
            Fault::Cut {
                after,
                connections: 2,
            },
        );
        if compare_through(dir.path(), &crm, &proxy) {
            reported += 1;
        } else {
            failed += 1;
        }
        assert!(
            proxy.struck() > 0,
            "the cut at {after} bytes never happened"
        );
    }
    eprintln!("cut links: {reported} compares reported the drift, {failed} failed cleanly");
}

#[test]
fn a_compare_over_a_slow_jittery_narrow_link_reports_the_exact_drift() {
    let dir = demo(5_000, 25);
    let crm = AgentProcess::start(dir.path(), "crm.toml");
    let erp = AgentProcess::start(dir.path(), "erp.toml");
    let proxy = FaultProxy::start(
        &erp.address,
        Fault::Slow {
            delay: Duration::from_millis(2),
            jitter: Duration::from_millis(8),
            bytes_per_sec: 2 << 20,
        },
    );
    assert!(
        compare_through(dir.path(), &crm, &proxy),
        "a slow link is no reason to fail"
    );
}

/// A target whose every update is counted: `writes` gets a row per UPDATE.
pub(super) fn counted_pair(dir: &Path, rows: i64) {
    for side in ["src", "dst"] {
        let db = Connection::open(dir.join(format!("{side}.db"))).unwrap();
        db.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
             CREATE TABLE writes (id INTEGER);
             CREATE TRIGGER counted AFTER UPDATE ON t BEGIN INSERT INTO writes VALUES (NEW.id); END;",
        )
        .unwrap();
        let v = if side == "src" { "new" } else { "old" };
        for id in 1..=rows {
            db.execute("INSERT INTO t VALUES (?1, ?2)", rusqlite::params![id, v])
                .unwrap();
        }
        table_t_agent(
            dir,
            side,
            "columns = [{ source = \"v\", kind = \"text\" }]\n",
            if side == "src" {
                "serve_values = true"
            } else {
                "allow_repairs = true"
            },
        );
    }
}

/// Updates per key on the target, and its values.
pub(super) fn target_state(dir: &Path) -> (BTreeMap<i64, i64>, BTreeSet<String>) {
    let db = Connection::open(dir.join("dst.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT id, count(*) FROM writes GROUP BY id")
        .unwrap();
    let counts = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut stmt = db.prepare("SELECT DISTINCT v FROM t").unwrap();
    let values = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (counts, values)
}

#[test]
fn a_sync_over_links_that_cut_or_go_silent_applies_every_write_once() {
    const ROWS: i64 = 300;
    let mut outcomes = Vec::new();
    for (i, after) in cut_points().into_iter().enumerate() {
        let dir = TempDir::new().unwrap();
        counted_pair(dir.path(), ROWS);
        let src = AgentProcess::start(dir.path(), "src.toml");
        let dst = AgentProcess::start(dir.path(), "dst.toml");
        // Alternate the faults: a cut link, then one that goes silent.
        let fault = if i % 2 == 0 {
            Fault::Cut {
                after,
                connections: 2,
            }
        } else {
            Fault::HalfOpen {
                after,
                connections: 1,
            }
        };
        let proxy = FaultProxy::start(&dst.address, fault);
        let out = sync_run_at(
            dir.path(),
            &src.address,
            &proxy.address,
            &[
                "--execute",
                "--json",
                "--batch",
                "40",
                "--max-share",
                "1",
                "--retry-secs",
                "60",
            ],
        );
        let code = out.status.code();
        if code != Some(0) {
            // A clean failure: a rerun without the fault finishes the job.
            assert_eq!(code, Some(2), "{}", said(&out));
            let rerun = sync_run(
                dir.path(),
                &src,
                &dst,
                &["--execute", "--json", "--max-share", "1"],
            );
            assert_eq!(rerun.status.code(), Some(0), "{}", said(&rerun));
        }
        let (counts, values) = target_state(dir.path());
        assert_eq!(
            counts.len() as i64,
            ROWS,
            "every row was written ({fault:?})"
        );
        assert!(
            counts.values().all(|&n| n == 1),
            "a write applied twice under {fault:?}: {:?}",
            counts.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
        );
        assert_eq!(values, BTreeSet::from(["new".to_owned()]));
        assert!(proxy.struck() > 0, "{fault:?} never struck");
        outcomes.push((fault, code));
    }
    eprintln!("sync under faults: {outcomes:?}");
}

/// A step of a database-fault test run later (release a lock, drop a
/// table).
type Later = Box<dyn FnOnce()>;

/// The server of a database-fault test.
#[derive(Debug, Clone, Copy)]
enum Server {
    Postgres,
    Mariadb,
}

/// Issue 18, database faults: another session holds a lock on the table
/// while the agent starts and builds its index. The build fails with the
/// server's statement timeout, compares say so, and once the lock is
/// released the agent's own retry builds an index with the root of the
/// same rows in SQLite.
fn a_locked_table(server: Server) {
    use mysql::prelude::Queryable;
    let dir = demo(3_000, 0);
    // The table, and a session that takes it and keeps it.
    let (source, release, drop_table): (String, Later, Later) = match server {
        Server::Postgres => {
            let (mut pg, url, table) = crm_into_postgres(dir.path());
            let mut holder = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            holder
                .batch_execute(&format!(
                    "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
                ))
                .unwrap();
            (
                format!(
                    "{{ kind = \"postgres\", url_env = \"ARBOR_TEST_POSTGRES_URL\", table = \"{table}\", statement_timeout_secs = 1 }}"
                ),
                Box::new(move || holder.batch_execute("COMMIT").unwrap()),
                Box::new(move || pg.batch_execute(&format!("DROP TABLE {table}")).unwrap()),
            )
        }
        Server::Mariadb => {
            let (mut my, table) = crm_into_mariadb(dir.path());
            let url = std::env::var("ARBOR_TEST_MYSQL_URL").unwrap();
            let mut holder = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
            holder
                .query_drop(format!("LOCK TABLES {table} WRITE"))
                .unwrap();
            (
                format!(
                    "{{ kind = \"mysql\", url_env = \"ARBOR_TEST_MYSQL_URL\", table = \"{table}\", statement_timeout_secs = 1 }}"
                ),
                Box::new(move || holder.query_drop("UNLOCK TABLES").unwrap()),
                Box::new(move || my.query_drop(format!("DROP TABLE {table}")).unwrap()),
            )
        }
    };
    let config = std::fs::read_to_string(dir.path().join("crm.toml"))
        .unwrap()
        .replace("crm-data", "db-data")
        .replace(
            "source = { kind = \"sqlite\", path = \"crm.db\", table = \"customers\" }",
            &format!("source = {source}"),
        );
    std::fs::write(dir.path().join("db.toml"), config).unwrap();
    let sqlite = AgentProcess::start(dir.path(), "crm.toml");
    let database = AgentProcess::start(dir.path(), "db.toml");
    let (code, summary, drift) = compare(dir.path(), &sqlite.address, &database.address);
    assert_eq!(code, 2, "{summary}");
    assert!(drift.is_empty());
    let error = summary["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("failed to index")
            && (error.contains("statement timeout") || error.contains("max_statement_time")),
        "the failure names the build and the timeout: {error}"
    );
    release();
    // The agent retries on its own (first after 5 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, summary, _) = compare(dir.path(), &sqlite.address, &database.address);
        if code == 0 {
            assert_eq!(summary["left"]["root"], summary["right"]["root"]);
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {summary}");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop_table();
}

#[test]
fn a_postgres_table_locked_during_the_build_is_reported_and_built_once_released() {
    a_locked_table(Server::Postgres);
}

#[test]
fn a_mariadb_table_locked_during_the_build_is_reported_and_built_once_released() {
    a_locked_table(Server::Mariadb);
}

/// A tmpfs of `size` mounted at `at`, unmounted when dropped.
struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot mount a tmpfs at {} (the full-disk test runs as root, as tools/test.sh does)",
            at.display()
        );
        SmallDisk { at: at.to_owned() }
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.at)
            .status()
            .unwrap();
        assert!(status.success(), "cannot resize {}", self.at.display());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

#[test]
fn a_full_disk_fails_the_build_clearly_and_it_recovers_once_space_returns() {
    const ROWS: i64 = 200_000;
    let dir = TempDir::new().unwrap();
    super::crashes::table_agent(dir.path(), "fresh", ROWS, 0, "");
    std::fs::copy(dir.path().join("fresh.db"), dir.path().join("small.db")).unwrap();
    super::crashes::table_agent(dir.path(), "small", ROWS, 0, "");
    // The agent's data directory on a filesystem too small for its index.
    let disk = SmallDisk::mount(&dir.path().join("small-data"), "3m");
    let small = AgentProcess::start(dir.path(), "small.toml");
    // The CLI's own words, not a parsed summary: a dataset that failed to
    // index is refused before any summary.
    let attempt = |left: &str, right: &str| {
        let out = cli_compare(dir.path(), left, right, &["--json"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let error = loop {
        let (code, stderr) = attempt(&small.address, &small.address);
        assert_ne!(code, Some(0), "an index cannot fit in 3 MiB");
        if stderr.contains("failed to index") {
            break stderr;
        }
        assert!(
            Instant::now() < deadline,
            "the build never failed: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        error.contains("No space left on device") && error.contains("small-data"),
        "the error names the full disk and where: {error}"
    );
    eprintln!("full disk: {error}");
    // Space comes back: the agent's own retry builds the index.
    disk.resize("512m");
    let fresh = AgentProcess::start(dir.path(), "fresh.toml");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (code, stderr) = attempt(&small.address, &fresh.address);
        if code == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery once space returned: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (code, summary, drift) = compare(dir.path(), &small.address, &fresh.address);
    assert_eq!(code, 0, "{summary}");
    assert!(drift.is_empty());
    assert_eq!(summary["left"]["root"], summary["right"]["root"]);
    assert_eq!(summary["left"]["count"], ROWS);
    // And what it wrote opens again: no corrupt index.
    drop(small);
    let again = AgentProcess::start(dir.path(), "small.toml");
    let (code, summary, _) = compare(dir.path(), &again.address, &fresh.address);
    assert_eq!(code, 0, "{summary}");
    drop((again, fresh));
    drop(disk);
}

/// A black hole: accepts connections and never says a byte, not even the
/// HTTP/2 handshake. Its connections stay open until it is dropped.
struct BlackHole {
    address: String,
    _held: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl BlackHole {
    fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = Arc::clone(&held);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                keep.lock().unwrap().push(stream);
            }
        });
        BlackHole {
            address,
            _held: held,
        }
    }
}

/// Longest a call to a black hole may take: the CLI's 10 s health check;
/// for an agent's job, its 60 s retry span plus one 10 s Describe, with
/// room for a loaded machine.
const BLACK_HOLE_BOUND: Duration = Duration::from_secs(100);

#[test]
fn a_peer_or_agent_that_never_answers_fails_the_call_in_bounded_time() {
    let dir = demo(500, 5);
    let hole = BlackHole::start();
    let hole_at = hole.address.trim_start_matches("http://").to_owned();
    // An agent with a sync job whose peer never answers: the agent itself
    // connects, so its own deadlines must end the run.
    let config = std::fs::read_to_string(dir.path().join("crm.toml")).unwrap()
        + &format!(
            "\n[[sync]]\nname = \"into-the-hole\"\ndataset = \"customers\"\npeers = [{{ address = \"{}\" }}]\n\
             policy = \"one_way\"\nschedule = \"0 3 * * *\"\n",
            hole.address
        );
    std::fs::write(dir.path().join("hub.toml"), config).unwrap();
    let hub = AgentProcess::start(dir.path(), "hub.toml");
    for (what, left, right) in [
        ("the CLI's peer", &hub.address, &hole.address),
        ("the CLI's agent", &hole.address, &hub.address),
    ] {
        let started = Instant::now();
        let out = cli_compare(dir.path(), left, right, &["--json"]);
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!(
            "black hole as {what}: exit {:?} after {took:?}\n{stderr}",
            out.status.code()
        );
        assert!(took < BLACK_HOLE_BOUND, "{what}: took {took:?}");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: a black hole is a failure"
        );
        assert!(
            stderr.contains(&hole_at),
            "{what}: the error names the address that never answered"
        );
    }
    // The job runs in the agent; the trigger's own call may end first.
    let started = Instant::now();
    let trigger = Command::new(ARBOR)
        .args([
            "sync",
            "trigger",
            "--agent",
            &hub.address,
            "--job",
            "into-the-hole",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = loop {
        let out = arbor(
            dir.path(),
            &["sync", "jobs", "--agent", &hub.address, "--json"],
        );
        let job: Json = serde_json::from_slice(&out.stdout).unwrap();
        if !job["last_run"].is_null() && job["running"] == false {
            break job["last_run"].clone();
        }
        assert!(
            started.elapsed() < BLACK_HOLE_BOUND,
            "the job against a black hole never ended: {job}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let took = started.elapsed();
    eprintln!("black hole as an agent's job peer: ended after {took:?}: {run}");
    let text = run.to_string();
    assert!(text.contains("failed"), "the run failed: {run}");
    assert!(
        text.contains(&hole_at),
        "the run's error names the peer: {run}"
    );
    drop(trigger);
}
