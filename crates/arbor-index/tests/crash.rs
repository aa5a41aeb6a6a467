//! Crash safety: a child process applying changes (or running a full build)
//! is killed with SIGKILL at random points. After each kill the index must
//! open, `verify` must pass, and its tree must equal a fresh build of the
//! records it holds: nothing half applied.
//!
//! The child is this test binary re-run with `--ignored --exact <name>` and
//! the index directory in `ARBOR_CRASH_DIR`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbor_index::{Change, Index, IndexConfig, IndexError, Leaf};
use arbor_record::{DatasetKeys, Record, Value};
use arbor_tree::Prefix;
use tempfile::TempDir;

const DIR_ENV: &str = "ARBOR_CRASH_DIR";
const SEED_ENV: &str = "ARBOR_CRASH_SEED";
const KEYS: u64 = 20_000;
const KILLS_DURING_UPDATES: usize = 8;
const KILLS_DURING_BUILDS: usize = 3;

fn config() -> IndexConfig {
    IndexConfig {
        keys: DatasetKeys::derive(b"crash test secret"),
        schema_fingerprint: [7; 32],
    }
}

fn record(k: u64, v: u64) -> Record {
    Record::new(
        vec![Value::Integer(k.into())],
        vec![
            Value::Integer(v.into()),
            Value::text("x".repeat((v % 50) as usize)),
        ],
    )
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: enough to scatter keys and sleep times.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1
}

/// Child: apply random batches forever (until killed).
#[test]
#[ignore = "run by crash_during_updates as a child process"]
fn crash_child_updates() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let mut rng = Rng(std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1));
    let index = Index::open(&dir, config()).expect("child opens the index");
    loop {
        let n = 1 + rng.next() % 500;
        let changes: Vec<Change> = (0..n)
            .map(|_| {
                let k = rng.next() % KEYS;
                if rng.next().is_multiple_of(4) {
                    Change::Delete(vec![Value::Integer(k.into())])
                } else {
                    Change::Upsert(record(k, rng.next() % 1000))
                }
            })
            .collect();
        index
            .apply(&changes, Some(&rng.next().to_be_bytes()))
            .expect("child applies");
    }
}

/// Child: run full builds forever (until killed).
#[test]
#[ignore = "run by crash_during_builds as a child process"]
fn crash_child_builds() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let index = Index::open(&dir, config()).expect("child opens the index");
    let mut round = 0u64;
    loop {
        round += 1;
        index
            .build(
                (0..200_000u64).map(|k| Ok::<_, IndexError>(record(k, k ^ round))),
                None,
            )
            .expect("child builds");
    }
}

fn run_child_and_kill(test: &str, dir: &Path, rng: &mut Rng) {
    let mut child = Command::new(std::env::current_exe().expect("test binary path"))
        .args(["--ignored", "--exact", test, "--test-threads=1"])
        .env(DIR_ENV, dir)
        .env(SEED_ENV, rng.next().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    std::thread::sleep(Duration::from_millis(150 + rng.next() % 900));
    child.kill().expect("SIGKILL child"); // Child::kill sends SIGKILL on Unix.
    let status = child.wait().expect("reap child");
    assert!(!status.success(), "child exited on its own: {status}");
}

/// After a crash: verify passes and the tree equals a fresh build of the
/// records the index holds.
fn check_consistent(dir: &Path, scratch: &Path) -> u64 {
    let index = Index::open(dir, config()).expect("reopen after crash");
    let report = index.verify().expect("verify runs");
    assert!(report.is_ok(), "verify after crash: {report:?}");
    let snap = index.snapshot().unwrap();
    let leaves: Vec<Leaf> = snap.leaves(&[Prefix::ROOT]).unwrap();
    let _ = std::fs::remove_dir_all(scratch);
    let fresh = Index::open(scratch, config()).unwrap();
    fresh
        .build_hashed(
            leaves.iter().map(|l| {
                Ok::<_, IndexError>(arbor_record::HashedRecord {
                    position: l.position,
                    key: l.key.clone(),
                    digest: l.digest,
                })
            }),
            None,
        )
        .unwrap();
    let fresh_snap = fresh.snapshot().unwrap();
    assert_eq!(snap.root().unwrap(), fresh_snap.root().unwrap());
    let mut frontier = vec![Prefix::ROOT];
    for _ in 0..3 {
        let a = snap.children(&frontier).unwrap();
        assert_eq!(a, fresh_snap.children(&frontier).unwrap());
        frontier = a.into_iter().map(|(p, _)| p).collect();
    }
    leaves.len() as u64
}

#[test]
fn crash_during_updates() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("index");
    {
        let index = Index::open(&dir, config()).unwrap();
        index
            .build(
                (0..KEYS / 2).map(|k| Ok::<_, IndexError>(record(k, k))),
                None,
            )
            .unwrap();
    }
    let mut rng = Rng(seed());
    let mut counts = Vec::new();
    for _ in 0..KILLS_DURING_UPDATES {
        run_child_and_kill("crash_child_updates", &dir, &mut rng);
        counts.push(check_consistent(&dir, &tmp.path().join("fresh")));
    }
    // The children did change the index between kills.
    counts.dedup();
    assert!(counts.len() > 1, "record counts never changed: {counts:?}");
}

#[test]
fn crash_during_builds() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("index");
    let mut rng = Rng(seed());
    for _ in 0..KILLS_DURING_BUILDS {
        run_child_and_kill("crash_child_builds", &dir, &mut rng);
        let index = Index::open(&dir, config()).expect("reopen after crash");
        if index.is_ready().unwrap() {
            drop(index);
            let n = check_consistent(&dir, &tmp.path().join("fresh"));
            assert_eq!(n, 200_000, "a committed build holds every record");
        } else {
            // Killed mid-build: refused, never half read.
            assert!(matches!(
                index.snapshot(),
                Err(IndexError::IncompleteBuild { .. })
            ));
        }
    }
    // Whatever state the kills left, a rebuild recovers.
    let index = Index::open(&dir, config()).unwrap();
    index
        .build(
            (0..1000u64).map(|k| Ok::<_, IndexError>(record(k, k))),
            None,
        )
        .unwrap();
    drop(index);
    assert_eq!(check_consistent(&dir, &tmp.path().join("fresh")), 1000);
}
