//! A one-way repair between two datasets of this process with no gRPC at
//! all (issue 17; this crate links no tonic): local [`Sides`] compare them through `LocalPeer`s and
//! writes through the agent's [`Repairs`] (sink, journal, index follow-up),
//! the same code `RepairService` serves. The oracle is the two SQLite
//! tables, row by row.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arbor_agent::config::{AgentConfig, Overrides};
use arbor_agent::dataset::{AgentState, ServiceLimits};
use arbor_agent::maintain::catch_up;
use arbor_agent::repair::Repairs;
use arbor_agent::startup::open_datasets;
use arbor_agent::sync::{
    ActionKind, Extra, InProcess, Policy, SideAt, Sides, SyncOptions, execute_with, plan_with,
};
use arbor_index::RunStore;
use rusqlite::Connection;
use tempfile::TempDir;

type Rows = BTreeMap<i64, (String, Option<String>)>;

/// The rows of a table, balances as decimals (a repair writes the canonical
/// decimal: `24.5` for `24.50`, the same number).
fn rows(db: &Path) -> Rows {
    let c = Connection::open(db).unwrap();
    let mut stmt = c
        .prepare("SELECT id, name, balance FROM customers")
        .unwrap();
    stmt.query_map([], |r| {
        let balance: Option<String> = r.get(2)?;
        Ok((
            r.get(0)?,
            (
                r.get(1)?,
                balance.map(|b| {
                    arbor_record::Decimal::parse(&b)
                        .unwrap()
                        .as_str()
                        .to_owned()
                }),
            ),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn create(db: &Path, rows: impl IntoIterator<Item = (i64, String, Option<String>)>) {
    let c = Connection::open(db).unwrap();
    c.execute_batch(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, balance TEXT)",
    )
    .unwrap();
    for (id, name, balance) in rows {
        c.execute(
            "INSERT INTO customers VALUES (?1, ?2, ?3)",
            rusqlite::params![id, name, balance],
        )
        .unwrap();
    }
}

/// A one-way sync from `crm` to `erp`, deleting target-only rows, in
/// batches of 7.
fn options() -> SyncOptions {
    SyncOptions {
        source: "(this process)".into(),
        target: "(this process)".into(),
        dataset: "crm".into(),
        target_dataset: "erp".into(),
        policy: Policy::OneWay(Extra::Delete),
        batch: 7,
        max_rows_per_sec: 0,
        retry_for: arbor_agent::sync::DEFAULT_RETRY_FOR,
        only_keys: None,
        max_skew: arbor_agent::sync::DEFAULT_MAX_SKEW,
        max_share: arbor_agent::sync::DEFAULT_MAX_SHARE,
    }
}

/// One process holding datasets `crm` (the source, serving values) and
/// `erp` (the target, taking repairs) over `crm.db` and `erp.db` in `dir`,
/// both indexed: the two local sides of a sync.
fn local_pair(dir: &TempDir) -> Sides<InProcess> {
    local_pair_with_repairs(dir).0
}

/// [`local_pair`], and the process's repairs (its datasets' state).
fn local_pair_with_repairs(dir: &TempDir) -> (Sides<InProcess>, Repairs) {
    let config = dir.path().join("agent.toml");
    let dataset = |name: &str, extra: &str| {
        format!(
            "[[dataset]]\nname = \"{name}\"\nsecret = \"a test secret of enough length\"\n\
             source = {{ kind = \"sqlite\", path = \"{name}.db\", table = \"customers\" }}\n\
             key = [{{ source = \"id\", kind = \"integer\" }}]\n\
             columns = [{{ source = \"name\", kind = \"text\" }}, {{ source = \"balance\", kind = \"decimal\" }}]\n\
             {extra}\n"
        )
    };
    std::fs::write(
        &config,
        format!(
            "[agent]\ndata_dir = \"data\"\n\n{}{}",
            dataset("crm", "serve_values = true"),
            dataset("erp", "allow_repairs = true")
        ),
    )
    .unwrap();
    let config = AgentConfig::load(&config, &Overrides::default()).unwrap();
    let datasets = open_datasets(&config).unwrap();
    for (name, ds) in &datasets {
        catch_up(ds, name).unwrap();
    }
    let state = Arc::new(AgentState::with_datasets(
        datasets,
        ServiceLimits::default(),
    ));
    let runs = Arc::new(RunStore::open(dir.path().join("runs")).unwrap());
    let repairs = Repairs::new(state, runs, &config.datasets);
    let sides = Sides::new(
        SideAt::Local {
            repairs: repairs.clone(),
            dataset: "crm".into(),
        },
        SideAt::Local {
            repairs: repairs.clone(),
            dataset: "erp".into(),
        },
        arbor_agent::sync::DEFAULT_RETRY_FOR,
        InProcess,
    );
    (sides, repairs)
}

#[test]
fn a_one_way_repair_between_datasets_of_one_process_needs_no_grpc() {
    let dir = TempDir::new().unwrap();
    let truth = |id: i64| (id, format!("customer {id}"), Some(format!("{}.50", id * 3)));
    create(&dir.path().join("crm.db"), (1..=50).map(truth));
    // The copy: 5 rows changed, 10 missing, 4 extra.
    create(
        &dir.path().join("erp.db"),
        (1..=40)
            .map(|id| match id % 8 {
                0 => (id, format!("customer {id} (old)"), None),
                _ => truth(id),
            })
            .chain((100..104).map(truth)),
    );
    let sides = local_pair(&dir);
    let opts = options();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (actions, report) = rt.block_on(plan_with(&opts, &sides, false)).unwrap();
    assert_eq!(report.drift, 19, "{report:?}");
    let count = |kind| actions.iter().filter(|a| a.action == kind).count();
    assert_eq!(count(ActionKind::Upsert), 15);
    assert_eq!(count(ActionKind::Delete), 4);
    let report = rt
        .block_on(execute_with(&opts, &sides, &actions, report))
        .unwrap();
    assert_eq!(report.applied, 19, "{report:?}");
    assert_eq!(report.drift_after, Some(0), "{report:?}");
    assert_eq!(
        rows(&dir.path().join("erp.db")),
        rows(&dir.path().join("crm.db"))
    );
    // Nothing left to do; the same plan run again is answered by the journal.
    let (again, _) = rt.block_on(plan_with(&opts, &sides, false)).unwrap();
    assert!(again.is_empty(), "{again:?}");
    let replay = rt
        .block_on(execute_with(
            &opts,
            &sides,
            &actions,
            arbor_agent::sync::SyncReport {
                run_id: report.run_id.clone(),
                key_id: report.key_id.clone(),
                ..Default::default()
            },
        ))
        .unwrap();
    assert_eq!(replay.replayed_batches, 3, "{replay:?}");
    assert_eq!(replay.applied, 19, "journalled outcomes: {replay:?}");
}

/// A plan that would update or delete more than the allowed share of a
/// side's records is refused before anything is written (a wrong mapping or
/// source of truth looks like mass drift); inserts do not count, and a
/// larger `max_share` lets it through.
#[test]
fn a_plan_that_changes_most_of_a_target_is_refused() {
    let dir = TempDir::new().unwrap();
    let row = |id: i64, name: &str| (id, format!("{name} {id}"), Some("1".to_owned()));
    create(
        &dir.path().join("crm.db"),
        (1..=400).map(|id| row(id, "new name")),
    );
    // All 300 of the target's rows would change: 200 updates and 100
    // deletes; the 200 inserts do not count.
    create(
        &dir.path().join("erp.db"),
        (1..=200).chain(1001..=1100).map(|id| row(id, "old name")),
    );
    let sides = local_pair(&dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt
        .block_on(plan_with(&options(), &sides, false))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("update or delete 300 of the 300 records of the target") && e.contains("50.0 %"),
        "{e}"
    );
    assert_eq!(
        rows(&dir.path().join("erp.db")).len(),
        300,
        "nothing written"
    );
    let opts = SyncOptions {
        max_share: 1.0,
        ..options()
    };
    let (actions, report) = rt.block_on(plan_with(&opts, &sides, false)).unwrap();
    let report = rt
        .block_on(execute_with(&opts, &sides, &actions, report))
        .unwrap();
    assert_eq!(report.drift_after, Some(0), "{report:?}");
    assert_eq!(
        rows(&dir.path().join("erp.db")),
        rows(&dir.path().join("crm.db"))
    );
}

/// A local side still being indexed (an agent that just started catches up
/// with its system first) is waited for, as a remote one is through its
/// retries: a run started meanwhile completes once the index is ready.
#[test]
fn a_local_side_still_indexing_is_waited_for() {
    let dir = TempDir::new().unwrap();
    let row = |id: i64| (id, format!("customer {id}"), Some("1".to_owned()));
    create(&dir.path().join("crm.db"), (1..=20).map(row));
    create(&dir.path().join("erp.db"), (1..=10).map(row));
    let (sides, repairs) = local_pair_with_repairs(&dir);
    let crm = std::sync::Arc::clone(repairs.state().dataset("crm").unwrap());
    crm.indexing
        .store(true, std::sync::atomic::Ordering::Release);
    let ready = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        crm.indexing
            .store(false, std::sync::atomic::Ordering::Release);
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = std::time::Instant::now();
    let (actions, report) = rt.block_on(plan_with(&options(), &sides, false)).unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(400));
    ready.join().unwrap();
    let report = rt
        .block_on(execute_with(&options(), &sides, &actions, report))
        .unwrap();
    assert_eq!(report.applied, 10, "{report:?}");
    assert_eq!(report.drift_after, Some(0), "{report:?}");
}
