//! Equal digests across engines: one fixture, written in each engine's own
//! forms, loaded into PostgreSQL, MariaDB, SQLite and a CSV file, indexed
//! through each connector: every index must have the same root.
//!
//! The edge values: NULL vs '', 1.10 vs 1.1 vs 1.100000, -0.0, time zones
//! and microseconds, unicode, empty strings, the largest bigint, JSON with
//! keys in different orders and 1.0 vs 1, uuids as uuid / char(36) / BLOB /
//! 32 upper-case hex digits, bytes as bytea / blob / hex.

use std::collections::BTreeMap;

use arbor_agent::maintain::build_from_source;
use arbor_index::{Index, IndexConfig};
use arbor_record::{DatasetKeys, ValueKind};
use arbor_source::postgres::ScanOptions;
use arbor_source::relation::Relation;
use arbor_source::{
    ColumnMapping, FileSource, Format, Mapping, MysqlSource, PostgresSource, Source, SqliteSource,
};
use arbor_tree::Prefix;
use mysql::prelude::Queryable;
use tempfile::TempDir;

fn mapping() -> Mapping {
    let c = |name: &str, kind| ColumnMapping::new(name, name, kind);
    Mapping::new(
        vec![c("id", ValueKind::Integer)],
        vec![
            c("big", ValueKind::Integer),
            c("txt", ValueKind::Text),
            c("amount", ValueKind::Decimal),
            c("ratio", ValueKind::Float),
            c("flag", ValueKind::Bool),
            c("born", ValueKind::Date),
            c("seen", ValueKind::Timestamp),
            c("doc", ValueKind::Json),
            c("uid", ValueKind::Uuid),
            c("raw", ValueKind::Bytes),
        ],
    )
    .expect("fixture mapping")
}

/// Indexes a source and returns its leaves: (position, key, digest) sorted.
fn leaves_of(
    dir: &TempDir,
    name: &str,
    source: &mut dyn Source,
) -> (arbor_tree::Node, BTreeMap<Vec<u8>, String>) {
    let config = IndexConfig {
        keys: DatasetKeys::derive(b"cross-engine fixture"),
        schema_fingerprint: mapping().schema().fingerprint(),
    };
    let index = Index::open(dir.path().join(name), config).unwrap();
    build_from_source(&index, source, true)
        .unwrap_or_else(|e| panic!("{name}: {e}: {:?}", std::error::Error::source(&e)));
    let snap = index.snapshot().unwrap();
    let leaves = snap
        .leaves(&[Prefix::ROOT])
        .unwrap()
        .into_iter()
        .map(|l| (l.key, l.digest.to_string()))
        .collect();
    (snap.root().unwrap(), leaves)
}

const PG_ROWS: &str = "
    (1, 9223372036854775807, 'Zoë 日本 🌳', '1.10', 1.5, true, '1969-07-20',
     '2024-03-01 05:29:59.123456+05:30', '{\"b\": 1.0, \"a\": [true, null]}', '123e4567-e89b-12d3-a456-426614174000', '\\x00ff0a'),
    (2, -5, '', '-0.000', '-0', false, '2024-02-29', '1970-01-01 00:00:00.5+00', '[]',
     '00000000-0000-0000-0000-000000000001', '\\x'),
    (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)";

#[test]
fn one_fixture_gives_one_root_in_every_engine() {
    let dir = TempDir::new().unwrap();
    let mut roots = Vec::new();

    // PostgreSQL: native types, a time zone offset, jsonb reorders keys.
    let pg_url = std::env::var("ARBOR_TEST_POSTGRES_URL")
        .expect("ARBOR_TEST_POSTGRES_URL is not set: run the tests through tools/test.sh");
    let mut pg = postgres::Client::connect(&pg_url, postgres::NoTls).unwrap();
    let table = format!("fixture_{}", std::process::id());
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (id int4 PRIMARY KEY, big int8, txt text, amount numeric(20,6), ratio float8,
           flag bool, born date, seen timestamptz, doc jsonb, uid uuid, raw bytea);
         INSERT INTO {table} VALUES {PG_ROWS}"
    ))
    .unwrap();
    let mut s = PostgresSource::new(
        pg_url,
        Relation::Table(table.clone()),
        mapping(),
        ScanOptions::default(),
    );
    roots.push(("postgres", leaves_of(&dir, "pg", &mut s)));
    pg.batch_execute(&format!("DROP TABLE {table}")).unwrap();

    // MariaDB: UTC datetime, char(36) uuid, decimal(20,6), JSON as text.
    let my_url = std::env::var("ARBOR_TEST_MYSQL_URL")
        .expect("ARBOR_TEST_MYSQL_URL is not set: run the tests through tools/test.sh");
    let mut my = mysql::Conn::new(mysql::Opts::from_url(&my_url).unwrap()).unwrap();
    my.query_drop(format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (id int PRIMARY KEY, big bigint, txt varchar(50), amount decimal(20,6), ratio double,
           flag tinyint(1), born date, seen datetime(6), doc json, uid char(36), raw blob) CHARACTER SET utf8mb4;
         INSERT INTO {table} VALUES
           (1, 9223372036854775807, 'Zoë 日本 🌳', 1.1, 1.5, 1, '1969-07-20', '2024-02-29 23:59:59.123456',
            '{{\"a\": [true, null], \"b\": 1}}', '123e4567-e89b-12d3-a456-426614174000', X'00ff0a'),
           (2, -5, '', 0, -0.0, 0, '2024-02-29', '1970-01-01 00:00:00.500000', '[ ]',
            '00000000-0000-0000-0000-000000000001', X''),
           (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
    ))
    .unwrap();
    let mut s = MysqlSource::new(
        my_url,
        Relation::Table(table.clone()),
        mapping(),
        ScanOptions::default(),
    );
    roots.push(("mariadb", leaves_of(&dir, "my", &mut s)));
    my.query_drop(format!("DROP TABLE {table}")).unwrap();

    // SQLite: dynamic types; decimal as TEXT, uuid as a 16-byte BLOB.
    let db = dir.path().join("fixture.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, big INTEGER, txt TEXT, amount TEXT, ratio REAL, flag INTEGER,
           born TEXT, seen TEXT, doc TEXT, uid BLOB, raw BLOB);
         INSERT INTO t VALUES
           (1, 9223372036854775807, 'Zoë 日本 🌳', '1.1', 1.5, 1, '1969-07-20', '2024-02-29T23:59:59.123456Z',
            '{\"b\":1,\"a\":[true,null]}', X'123e4567e89b12d3a456426614174000', X'00ff0a'),
           (2, -5, '', '-0', -0.0, 0, '2024-02-29', '1970-01-01 00:00:00.5', '[]',
            X'00000000000000000000000000000001', X''),
           (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
    )
    .unwrap();
    drop(c);
    let mut s = SqliteSource::open(&db, Relation::Table("t".into()), mapping()).unwrap();
    roots.push(("sqlite", leaves_of(&dir, "sqlite", &mut s)));

    // CSV: text everywhere, another offset, upper-case hex uuid, \N for NULL.
    let csv = dir.path().join("fixture.csv");
    std::fs::write(
        &csv,
        "id,big,txt,amount,ratio,flag,born,seen,doc,uid,raw\n\
         1,9223372036854775807,Zoë 日本 🌳,1.100,1.5,true,1969-07-20,2024-02-29 18:59:59.123456-05:00,\
         \"{\"\"a\"\":[true,null],\"\"b\"\":1.0}\",123E4567E89B12D3A456426614174000,00ff0a\n\
         2,-5,,-0.0,-0.0,false,2024-02-29,1970-01-01T00:00:00.500Z,[],00000000-0000-0000-0000-000000000001,\n\
         3,\\N,\\N,\\N,\\N,\\N,\\N,\\N,\\N,\\N,\\N\n",
    )
    .unwrap();
    let mut s = FileSource::new(&csv, Format::Csv, mapping(), None);
    roots.push(("csv", leaves_of(&dir, "csv", &mut s)));

    let (first_name, (first_root, first_leaves)) = &roots[0];
    assert_eq!(first_root.count, 3);
    for (name, (root, leaves)) in &roots[1..] {
        if root != first_root {
            // Name the rows that differ before failing.
            for (key, digest) in first_leaves {
                if leaves.get(key) != Some(digest) {
                    eprintln!(
                        "row {} differs between {first_name} and {name}",
                        arbor_agent::report::display_key(key)
                    );
                }
            }
        }
        assert_eq!(root, first_root, "{name} and {first_name} disagree");
    }
}

#[test]
fn transforms_make_dirty_data_meet_clean_data() {
    use arbor_source::transform::{Case, Precision, Transforms};
    let dir = TempDir::new().unwrap();
    let clean = Mapping::new(
        vec![ColumnMapping::new("id", "id", ValueKind::Integer)],
        vec![
            ColumnMapping::new("email", "email", ValueKind::Text),
            ColumnMapping::new("amount", "amount", ValueKind::Decimal),
            ColumnMapping::new("seen", "seen", ValueKind::Timestamp),
            ColumnMapping::new("note", "note", ValueKind::Text),
        ],
    )
    .unwrap();
    let csv = dir.path().join("clean.csv");
    std::fs::write(
        &csv,
        "id,email,amount,seen,note\n1,ada@example.com,10.01,2024-01-01T10:00:00.123Z,\\N\n2,bob@example.com,3,2024-06-01T22:30:00Z,hi\n",
    )
    .unwrap();
    let db = dir.path().join("dirty.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT, amount TEXT, seen TEXT, note TEXT);
         INSERT INTO t VALUES (1, '  Ada@Example.COM ', '10.005', '2024-01-01 12:00:00.123999', '');
         INSERT INTO t VALUES (2, 'BOB@example.com', '2.995', '2024-06-02 00:30:00', 'hi');",
    )
    .unwrap();
    drop(c);
    let with = |t: Transforms, name: &str, kind| {
        let mut m = ColumnMapping::new(name, name, kind);
        m.transforms = t;
        m
    };
    let dirty = Mapping::new(
        vec![ColumnMapping::new("id", "id", ValueKind::Integer)],
        vec![
            with(
                Transforms {
                    trim: true,
                    case: Some(Case::Lower),
                    ..Transforms::default()
                },
                "email",
                ValueKind::Text,
            ),
            with(
                Transforms {
                    scale: Some(2),
                    ..Transforms::default()
                },
                "amount",
                ValueKind::Decimal,
            ),
            with(
                Transforms {
                    precision: Some(Precision::Ms),
                    offset: Some("+02:00".into()),
                    ..Transforms::default()
                },
                "seen",
                ValueKind::Timestamp,
            ),
            with(
                Transforms {
                    empty_as_null: true,
                    ..Transforms::default()
                },
                "note",
                ValueKind::Text,
            ),
        ],
    )
    .unwrap();
    let root = |name: &str, s: &mut dyn Source| -> arbor_tree::Node {
        let config = IndexConfig {
            keys: DatasetKeys::derive(b"transforms"),
            schema_fingerprint: clean.schema().fingerprint(),
        };
        let index = Index::open(dir.path().join(name), config).unwrap();
        build_from_source(&index, s, true).unwrap();
        index.snapshot().unwrap().root().unwrap()
    };
    let clean_root = root(
        "clean",
        &mut FileSource::new(&csv, Format::Csv, clean.clone(), None),
    );
    let dirty_root = root(
        "dirty",
        &mut SqliteSource::open(&db, Relation::Table("t".into()), dirty).unwrap(),
    );
    let raw_root = root(
        "raw",
        &mut SqliteSource::open(&db, Relation::Table("t".into()), clean.clone()).unwrap(),
    );
    assert_eq!(
        dirty_root, clean_root,
        "transforms bring the dirty system to the clean form"
    );
    assert_ne!(raw_root, clean_root, "without them the two differ");
}
