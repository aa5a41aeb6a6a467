//! Key rotation state on disk, below the agent: indexes under two keys, and
//! the repair of one that lags the other after a crash between the two
//! applies of a batch.

use std::sync::atomic::Ordering;

use arbor_agent::config::{AgentConfig, Overrides};
use arbor_index::Change;
use arbor_record::{Record, Value};
use rusqlite::Connection;
use tempfile::TempDir;

fn describe(index: &arbor_index::Index) -> arbor_index::Description {
    index.snapshot().and_then(|s| s.describe()).unwrap()
}

#[test]
fn an_index_lagging_the_current_key_is_rebuilt_from_the_system() {
    let dir = TempDir::new().unwrap();
    let db = Connection::open(dir.path().join("crm.db")).unwrap();
    db.execute_batch(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT NOT NULL);
         INSERT INTO customers VALUES (1, 'a@example.org'), (2, 'b@example.org'), (3, 'c@example.org');",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("agent.toml"),
        "[agent]\ndata_dir = \"data\"\n\n[[dataset]]\nname = \"customers\"\n\
         secret = \"first key\"\nnext_secret = \"second key\"\n\
         source = { kind = \"sqlite\", path = \"crm.db\", table = \"customers\" }\n\
         key = [{ source = \"id\", kind = \"integer\" }]\n\
         columns = [{ source = \"email\", kind = \"text\" }]\n",
    )
    .unwrap();
    let config = AgentConfig::load(&dir.path().join("agent.toml"), &Overrides::default()).unwrap();
    let d = &config.datasets[0];
    let datasets = arbor_agent::startup::open_datasets(&config).unwrap();
    let ds = &datasets["customers"];
    arbor_agent::maintain::reindex(ds, "customers", true).unwrap();
    // Only the current key's index exists until a rotation builds the other.
    assert_eq!(ds.indexes().len(), 1);
    let r = arbor_agent::keys::rotate(&config, d, ds).unwrap();
    assert!(r.built);
    assert_eq!(r.records, 3);
    assert_eq!(ds.indexes().len(), 2);
    assert!(!ds.rotating.load(Ordering::Acquire));

    // A batch that reached only the old index (a crash between the two
    // applies): its watermark and tree now differ from the current one's.
    let old = ds.indexes()[1].clone();
    let before = describe(&old);
    old.apply(
        &[Change::Upsert(Record::new(
            vec![Value::Integer(9.into())],
            vec![Value::Text("stray@example.org".into())],
        ))],
        Some(b"stray batch"),
    )
    .unwrap();
    assert_ne!(describe(&old).root, before.root);
    arbor_agent::keys::rebuild_lagging(ds, "customers").unwrap();
    let after = describe(&old);
    assert_eq!(after.root, before.root, "rebuilt from the system's 3 rows");
    assert_eq!(after.watermark, describe(&ds.index()).watermark);
    assert!(old.verify().unwrap().is_ok());

    // Indexes that agree are left alone.
    arbor_agent::keys::rebuild_lagging(ds, "customers").unwrap();
    assert_eq!(describe(&old).root, before.root);
}
