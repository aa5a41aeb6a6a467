//! Pushed changes and rescans (issue 18): a batch pushed while a rescan
//! reads the system waits for the pass (refused as unavailable) instead of
//! being applied and then overwritten by the rescan's older view of the
//! rows. Found by the ingest crash campaign: an agent restarted under
//! pushes rescans its system at start, and a delete pushed meanwhile came
//! back.

use arbor_agent::config::{AgentConfig, Overrides};
use arbor_agent::error::OpError;
use arbor_agent::maintain::{catch_up, rescan};
use arbor_agent::startup::open_datasets;
use arbor_index::Change;
use arbor_record::Value;
use rusqlite::Connection;
use tempfile::TempDir;

#[test]
fn a_batch_pushed_during_a_rescan_waits_for_it_and_survives_it() {
    let dir = TempDir::new().unwrap();
    let db = Connection::open(dir.path().join("t.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');",
    )
    .unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[agent]\ndata_dir = \"data\"\n\n[[dataset]]\nname = \"t\"\n\
         secret = \"a test secret of enough length\"\n\
         source = { kind = \"sqlite\", path = \"t.db\", table = \"t\" }\n\
         key = [{ source = \"id\", kind = \"integer\" }]\n\
         columns = [{ source = \"v\", kind = \"text\" }]\n\
         capture = { mode = \"push\" }\n",
    )
    .unwrap();
    let config = AgentConfig::load(&config, &Overrides::default()).unwrap();
    let datasets = open_datasets(&config).unwrap();
    let ds = &datasets["t"];
    catch_up(ds, "t").unwrap();
    // The system deletes row 2, then pushes the delete.
    db.execute("DELETE FROM t WHERE id = 2", []).unwrap();
    let delete = [Change::Delete(vec![Value::Integer(2)])];
    {
        // A rescan holds the system for its whole pass.
        let _pass = ds.source.as_ref().unwrap().lock().unwrap();
        let refused = ds.apply_pushed(&delete, Some(b"push 1"));
        assert!(
            matches!(&refused, Err(OpError::Unavailable(m)) if m.contains("rescan")),
            "{refused:?}"
        );
    }
    // Once the pass is over, the pusher's retry lands, and a later rescan
    // agrees with it.
    let applied = ds.apply_pushed(&delete, Some(b"push 1")).unwrap();
    assert_eq!(applied.deleted, 1);
    rescan(ds, "t").unwrap();
    let index = ds.index();
    let described = index.snapshot().and_then(|s| s.describe()).unwrap();
    assert_eq!(described.root.count, 2);
}
