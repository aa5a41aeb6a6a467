//! The PostgreSQL source against a real server: `ARBOR_TEST_POSTGRES_URL`,
//! which `tools/test.sh` exports (a running server on 127.0.0.1:5432, or a
//! private instance it starts).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use arbor_record::value::{Date, Decimal, Timestamp, parse_uuid};
use arbor_record::{CanonicalJson, HashedBatch, Record, Value, ValueKind};
use arbor_source::postgres::{PostgresSource, ScanOptions};
use arbor_source::relation::Relation;
use arbor_source::{ColumnMapping, Mapping, Source, SourceError};
use postgres::{Client, NoTls};

fn url() -> String {
    std::env::var("ARBOR_TEST_POSTGRES_URL")
        .expect("ARBOR_TEST_POSTGRES_URL is not set: run the tests through tools/test.sh, which starts PostgreSQL")
}

/// A table of its own for each test, dropped at the end.
struct Table {
    admin: Client,
    name: String,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The tests of this file run one at a time: one of them restarts the server.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

impl Table {
    fn create(columns: &str) -> Table {
        let mut admin = Client::connect(&url(), NoTls).expect("connect as admin");
        let name = format!(
            "arbor_t_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        admin
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} ({columns})"
            ))
            .expect("create test table");
        Table { admin, name }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let _ = self
            .admin
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", self.name));
    }
}

fn col(source: &str, kind: ValueKind) -> ColumnMapping {
    ColumnMapping::new(source, source, kind)
}

fn scan_all(s: &mut dyn Source) -> Result<Vec<Record>, SourceError> {
    let mut out = Vec::new();
    s.scan(&mut |r| {
        out.push(r);
        Ok(())
    })?;
    Ok(out)
}

#[test]
fn every_type_reads_as_its_canonical_value() {
    let _serial = serial();
    let mut t = Table::create(
        "id int8 primary key, i2 int2, i4 int4, n numeric(30,6), f4 float4, f8 float8, t text, v varchar(20),
         c char(5), b bool, by bytea, d date, ts timestamp(6), tz timestamptz, u uuid, j json, jb jsonb",
    );
    t.admin
        .batch_execute(&format!(
            "INSERT INTO {0} VALUES
             (1, -32768, 2147483647, 1.100000, 1.5, -0.0, 'tab\there', 'é', 'ab', true, '\\x00ff0a', '2024-02-29',
              '2024-02-29 23:59:59.123456', '2024-03-01 05:29:59.123456+05:30', '123e4567-e89b-12d3-a456-426614174000',
              '{{\"b\": 1.0, \"a\": [true]}}', '{{\"b\": 1.0, \"a\": [true]}}'),
             (2, NULL, NULL, NULL, NULL, NULL, '', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
             (9223372036854775807, 0, 0, -123456789012345678901234.5, 'NaN', 'Infinity', 'line
break', 'x', 'x', false, '\\x', '1969-07-20', '1970-01-01 00:00:00', '1970-01-01 00:00:00+00',
              '00000000-0000-0000-0000-000000000000', '[]', 'null')",
            t.name
        ))
        .unwrap();
    let kinds = [
        ("i2", ValueKind::Integer),
        ("i4", ValueKind::Integer),
        ("n", ValueKind::Decimal),
        ("f4", ValueKind::Float),
        ("f8", ValueKind::Float),
        ("t", ValueKind::Text),
        ("v", ValueKind::Text),
        ("c", ValueKind::Text),
        ("b", ValueKind::Bool),
        ("by", ValueKind::Bytes),
        ("d", ValueKind::Date),
        ("ts", ValueKind::Timestamp),
        ("tz", ValueKind::Timestamp),
        ("u", ValueKind::Uuid),
        ("j", ValueKind::Json),
        ("jb", ValueKind::Json),
    ];
    let mapping = Mapping::new(
        vec![col("id", ValueKind::Integer)],
        kinds.iter().map(|(n, k)| col(n, *k)).collect(),
    )
    .unwrap();
    let options = ScanOptions {
        chunk_rows: 2,
        ..ScanOptions::default()
    };
    let mut s = PostgresSource::new(
        url(),
        Relation::Table(t.name.clone()),
        mapping.clone(),
        options,
    );
    s.check().unwrap();
    let rows = scan_all(&mut s).unwrap();
    assert_eq!(rows.len(), 3);
    // Values are in canonical (name) order: b by c d f4 f8 i2 i4 j jb n t ts tz u v
    let get = |r: &Record, name: &str| -> Value {
        let i = mapping
            .columns()
            .iter()
            .position(|c| c.source == name)
            .unwrap();
        r.values[i].clone()
    };
    let r = &rows[0];
    assert_eq!(r.key, vec![Value::Integer(1)]);
    assert_eq!(get(r, "i2"), Value::Integer(-32768));
    assert_eq!(get(r, "n"), Value::Decimal(Decimal::parse("1.1").unwrap()));
    assert_eq!(get(r, "f4"), Value::float(1.5));
    assert_eq!(get(r, "f8"), Value::float(0.0));
    assert_eq!(get(r, "t"), Value::text("tab\there"));
    assert_eq!(get(r, "v"), Value::text("é"));
    assert_eq!(
        get(r, "c"),
        Value::text("ab"),
        "char(n) is read without its padding, as MariaDB reads it"
    );
    assert_eq!(get(r, "b"), Value::Bool(true));
    assert_eq!(get(r, "by"), Value::Bytes(vec![0, 255, 10]));
    assert_eq!(get(r, "d"), Value::Date(Date::parse("2024-02-29").unwrap()));
    let instant = Value::Timestamp(Timestamp::parse("2024-02-29T23:59:59.123456Z").unwrap());
    assert_eq!(get(r, "ts"), instant);
    assert_eq!(get(r, "tz"), instant);
    assert_eq!(
        get(r, "u"),
        Value::Uuid(parse_uuid("123e4567-e89b-12d3-a456-426614174000").unwrap())
    );
    let json = Value::Json(CanonicalJson::parse(r#"{"a":[true],"b":1}"#).unwrap());
    assert_eq!(get(r, "j"), json);
    assert_eq!(get(r, "jb"), json);
    let r = &rows[1];
    assert_eq!(get(r, "t"), Value::text(""), "empty text is not NULL");
    assert_eq!(get(r, "v"), Value::Null);
    let r = &rows[2];
    assert_eq!(r.key, vec![Value::Integer(i64::MAX.into())]);
    assert_eq!(
        get(r, "n"),
        Value::Decimal(Decimal::parse("-123456789012345678901234.5").unwrap())
    );
    assert_eq!(get(r, "f4"), Value::float(f64::NAN));
    assert_eq!(get(r, "f8"), Value::float(f64::INFINITY));
    assert_eq!(get(r, "t"), Value::text("line\nbreak"));
    assert_eq!(get(r, "by"), Value::Bytes(vec![]));
    assert_eq!(
        get(r, "jb"),
        Value::Json(CanonicalJson::parse("null").unwrap())
    );
    // Fetch by key reads the same values.
    let fetched = s
        .fetch(&[vec![Value::Integer(1)], vec![Value::Integer(3)]])
        .unwrap();
    assert_eq!(fetched[0].as_ref(), Some(&rows[0]));
    assert_eq!(fetched[1], None);
}

/// Full scans read binary COPY; lookups by key, polling and logical
/// capture read text. Both readings of every edge value must agree, or a
/// build and a later change would hash one row two ways.
#[test]
fn binary_scans_and_text_lookups_read_every_value_alike() {
    let _serial = serial();
    // One column per type, one row per edge value (NULL where a column has
    // fewer edge values than the longest).
    let columns: &[(&str, &str, ValueKind, &[&str])] = &[
        ("i2", "int2", ValueKind::Integer, &["-32768", "32767", "0"]),
        (
            "i4",
            "int4",
            ValueKind::Integer,
            &["-2147483648", "2147483647"],
        ),
        (
            "i8",
            "int8",
            ValueKind::Integer,
            &["-9223372036854775808", "9223372036854775807"],
        ),
        ("i4d", "int4", ValueKind::Decimal, &["-7", "0", "120"]),
        (
            "n",
            "numeric",
            ValueKind::Decimal,
            &[
                "0",
                "-0.000",
                "0.0001",
                "10000",
                "1e20",
                "123456789.123456789",
                "-0.5",
                "99999999.99990000",
                "1e-30",
                "-1e100",
                "0.00012300",
                "1234.5678e4",
            ],
        ),
        (
            "f4",
            "float4",
            ValueKind::Float,
            &[
                "0.1",
                "1e10",
                "3.4028235e38",
                "1.4e-45",
                "-0",
                "NaN",
                "Infinity",
                "-Infinity",
                "16777217",
                "0.33333334",
                "1.17549435e-38",
                "123.456",
            ],
        ),
        (
            "f8",
            "float8",
            ValueKind::Float,
            &[
                "0.1",
                "1e308",
                "5e-324",
                "-0",
                "0.3333333333333333",
                "-2.5e-10",
            ],
        ),
        (
            "t",
            "text",
            ValueKind::Text,
            &[
                "",
                "é",
                "tab\there",
                "back\\slash",
                "🦀 crab",
                "line\nbreak",
            ],
        ),
        ("c", "char(5)", ValueKind::Text, &["ab", "", "abcde"]),
        ("nm", "name", ValueKind::Text, &["pg_class", ""]),
        (
            "by",
            "bytea",
            ValueKind::Bytes,
            &["\\x", "\\x00ff0a", "\\xdeadbeef"],
        ),
        ("b", "bool", ValueKind::Bool, &["true", "false"]),
        (
            "d",
            "date",
            ValueKind::Date,
            &[
                "0001-01-01",
                "1969-12-31",
                "1970-01-01",
                "2000-01-01",
                "9999-12-31",
                "10000-01-01",
            ],
        ),
        (
            "ts",
            "timestamp(6)",
            ValueKind::Timestamp,
            &[
                "0001-01-01 00:00:00",
                "1969-12-31 23:59:59.999999",
                "2000-01-01 00:00:00",
                "1999-12-31 23:59:59.000001",
                "12000-06-30 12:00:00.5",
            ],
        ),
        (
            "tz",
            "timestamptz",
            ValueKind::Timestamp,
            &[
                "2024-03-01 05:29:59.123456+05:30",
                "0001-01-01 00:00:00+00",
                "1970-01-01 00:00:00-01",
            ],
        ),
        (
            "u",
            "uuid",
            ValueKind::Uuid,
            &[
                "123e4567-e89b-12d3-a456-426614174000",
                "00000000-0000-0000-0000-000000000000",
            ],
        ),
        (
            "j",
            "json",
            ValueKind::Json,
            &[r#"{"b": 1.0, "a": [1e2, -0.0, "x"]}"#, r#""str""#, "null"],
        ),
        (
            "jb",
            "jsonb",
            ValueKind::Json,
            &[r#"{"b": 1.0, "a": [1e2, -0.0, "x"]}"#, "[]", "12.50"],
        ),
    ];
    let defs: Vec<String> = columns
        .iter()
        .map(|(n, t, _, _)| format!("{n} {t}"))
        .collect();
    let mut t = Table::create(&format!("id int4 primary key, {}", defs.join(", ")));
    let rows = columns.iter().map(|c| c.3.len()).max().unwrap();
    for row in 0..rows {
        let values: Vec<String> = columns
            .iter()
            .map(|(_, _, _, edge)| match edge.get(row) {
                Some(v) => format!("'{}'", v.replace('\'', "''")),
                None => "NULL".into(),
            })
            .collect();
        t.admin
            .batch_execute(&format!(
                "INSERT INTO {} VALUES ({row}, {})",
                t.name,
                values.join(", ")
            ))
            .unwrap();
    }
    let mapping = Mapping::new(
        vec![col("id", ValueKind::Integer)],
        columns.iter().map(|(n, _, k, _)| col(n, *k)).collect(),
    )
    .unwrap();
    let options = ScanOptions {
        chunk_rows: 5,
        ..ScanOptions::default()
    };
    let mut s = PostgresSource::new(url(), Relation::Table(t.name.clone()), mapping, options);
    let scanned = scan_all(&mut s).unwrap();
    assert_eq!(scanned.len(), rows);
    let keys: Vec<Vec<Value>> = (0..rows as i128).map(|i| vec![Value::Integer(i)]).collect();
    let fetched: Vec<Record> = s
        .fetch(&keys)
        .unwrap()
        .into_iter()
        .map(Option::unwrap)
        .collect();
    for (binary, text) in scanned.iter().zip(&fetched) {
        assert_eq!(binary, text, "binary and text readings differ");
    }
    // The build's path encodes fields without values: same hashes.
    let dataset_keys = arbor_record::DatasetKeys::derive(b"equivalence");
    let mut scratch = Vec::new();
    let mut want: Vec<_> = fetched
        .iter()
        .map(|r| r.hash(&dataset_keys, &mut scratch))
        .collect();
    let mut got = Vec::new();
    s.scan_hashed(&dataset_keys, &mut |batches| {
        got.extend(batches.iter().flat_map(HashedBatch::to_records));
        Ok(())
    })
    .unwrap();
    want.sort_by_key(|r| r.position);
    got.sort_by_key(|r| r.position);
    assert_eq!(got, want);

    // Values the text reading refuses, the binary reading refuses too,
    // naming the column.
    for (ty, bad) in [
        ("date", "0044-03-15 BC"),
        ("date", "infinity"),
        ("timestamp", "-infinity"),
        ("timestamptz", "0001-12-31 23:00:00 BC"),
        ("numeric", "NaN"),
        ("numeric", "-Infinity"),
    ] {
        let mut t = Table::create(&format!("id int4 primary key, x {ty}"));
        t.admin
            .batch_execute(&format!("INSERT INTO {} VALUES (1, '{bad}')", t.name))
            .unwrap();
        let kind = match ty {
            "date" => ValueKind::Date,
            "numeric" => ValueKind::Decimal,
            _ => ValueKind::Timestamp,
        };
        let mapping =
            Mapping::new(vec![col("id", ValueKind::Integer)], vec![col("x", kind)]).unwrap();
        let mut s = PostgresSource::new(
            url(),
            Relation::Table(t.name.clone()),
            mapping,
            ScanOptions::default(),
        );
        let scan = scan_all(&mut s).unwrap_err().to_string();
        let hashed = s
            .scan_hashed(&dataset_keys, &mut |_| Ok(()))
            .unwrap_err()
            .to_string();
        let fetch = s.fetch(&[vec![Value::Integer(1)]]).unwrap_err().to_string();
        for e in [&scan, &hashed, &fetch] {
            assert!(e.contains("\"x\""), "{ty} {bad}: {e}");
        }
    }
}

#[test]
fn wrong_columns_and_types_are_named() {
    let _serial = serial();
    let t = Table::create("id int4 primary key, email text, balance numeric");
    let bad_name = Mapping::new(
        vec![col("id", ValueKind::Integer)],
        vec![col("emial", ValueKind::Text)],
    )
    .unwrap();
    let mut s = PostgresSource::new(
        url(),
        Relation::Table(t.name.clone()),
        bad_name,
        ScanOptions::default(),
    );
    let e = s.check().unwrap_err().to_string();
    assert!(e.contains("emial"), "{e}");
    let bad_type = Mapping::new(
        vec![col("id", ValueKind::Integer)],
        vec![col("email", ValueKind::Integer)],
    )
    .unwrap();
    let mut s = PostgresSource::new(
        url(),
        Relation::Table(t.name.clone()),
        bad_type,
        ScanOptions::default(),
    );
    let e = s.check().unwrap_err().to_string();
    assert!(
        e.contains("\"email\" is text") && e.contains("integer"),
        "{e}"
    );
    let mut s = PostgresSource::new(
        "postgres://arbor:wrong-password@127.0.0.1:1/nope",
        Relation::Table("x".into()),
        Mapping::new(vec![col("id", ValueKind::Integer)], vec![]).unwrap(),
        ScanOptions::default(),
    );
    let e = s.check().unwrap_err().to_string();
    assert!(
        e.contains("127.0.0.1:1") && !e.contains("wrong-password"),
        "{e}"
    );
}

/// How a scan walks a table: a build's scan of a table with planner
/// statistics reads block ranges; any other scan walks in key order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Walk {
    ByKey,
    ByBlocks,
}

/// Scans a table of `rows` (id, v) rows in chunks of `chunk_rows`, calling
/// `interrupt` with the table once each count in `at` has been seen; then
/// checks every row was seen exactly once. Returns how many interruptions
/// `interrupt` reported as effective.
fn scan_interrupted(
    rows: usize,
    chunk_rows: u64,
    at: &[usize],
    walk: Walk,
    mut interrupt: impl FnMut(&mut Table) -> u64,
) -> u64 {
    let mut t = Table::create("id int4 primary key, v text");
    t.admin
        .batch_execute(&format!(
            "ALTER TABLE {0} SET (autovacuum_enabled = false);
             INSERT INTO {0} SELECT g, 'row ' || g FROM generate_series(1, {rows}) g;",
            t.name
        ))
        .unwrap();
    // Statistics in both cases: what decides the walk is the kind of scan.
    t.admin
        .batch_execute(&format!("ANALYZE {}", t.name))
        .unwrap();
    let mapping = Mapping::new(
        vec![col("id", ValueKind::Integer)],
        vec![col("v", ValueKind::Text)],
    )
    .unwrap();
    let options = ScanOptions {
        chunk_rows,
        reconnect_backoff: std::time::Duration::from_millis(100),
        reconnect_attempts: 20,
        ..ScanOptions::default()
    };
    let mut s = PostgresSource::new(url(), Relation::Table(t.name.clone()), mapping, options);
    // Canonical keys as handed out: one by one from a scan (rescans walk
    // by key), a chunk at a time from a build's hashed scan.
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut effective = 0;
    let mut statements = Vec::new();
    let mut most_connections = 0;
    let mut handle = |keys: Vec<Vec<u8>>| {
        let before = seen.len();
        seen.extend(keys);
        for &mark in at {
            if before < mark && mark <= seen.len() {
                // The scan's last statements show how it walks the table,
                // and over how many connections.
                let rows = t
                    .admin
                    .query(
                        "SELECT query FROM pg_stat_activity WHERE application_name = 'arbor'",
                        &[],
                    )
                    .unwrap();
                most_connections = most_connections.max(rows.len());
                statements.extend(rows.iter().map(|row| row.get::<_, String>(0)));
                effective += interrupt(&mut t);
            }
        }
    };
    let dataset_keys = arbor_record::DatasetKeys::derive(b"walk");
    if walk == Walk::ByKey {
        // A build first: the rescan after it still walks by key.
        s.scan_hashed(&dataset_keys, &mut |_| Ok(())).unwrap();
    }
    match walk {
        Walk::ByKey => s
            .scan(&mut |r| {
                handle(vec![arbor_record::tuple_bytes(&r.key)]);
                Ok(())
            })
            .unwrap(),
        Walk::ByBlocks => s
            .scan_hashed(
                &arbor_record::DatasetKeys::derive(b"walk"),
                &mut |batches| {
                    handle(
                        batches
                            .iter()
                            .flat_map(|b| b.entries().iter().map(|e| b.key(e).to_vec()))
                            .collect(),
                    );
                    Ok(())
                },
            )
            .unwrap(),
    };
    let marker = match walk {
        Walk::ByKey => "ORDER BY",
        Walk::ByBlocks => "ctid >=",
    };
    assert!(
        statements.iter().any(|q| q.contains(marker)),
        "{walk:?}: {statements:?}"
    );
    // A build reads over two connections by default; a rescan over one.
    let connections = match walk {
        Walk::ByKey => 1,
        Walk::ByBlocks => 2,
    };
    // Sampled only when the test cuts connections: a lane still
    // reconnecting (backoff) may be missing from a sample, so a build shows
    // at most two, a rescan exactly one.
    assert!(
        (1..=connections).contains(&most_connections),
        "{walk:?}: {statements:?}"
    );
    let distinct: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), rows, "no row read twice");
    assert_eq!(distinct.len(), rows, "no row skipped");
    effective
}

#[test]
fn a_scan_resumes_after_the_server_drops_the_connection() {
    let _serial = serial();
    // Twice mid-scan, the server terminates the source's connection.
    for walk in [Walk::ByKey, Walk::ByBlocks] {
        let killed = scan_interrupted(5_000, 250, &[1_000, 3_333], walk, |t| {
            t.admin
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE application_name = 'arbor' AND pid <> pg_backend_pid()",
                    &[],
                )
                .unwrap()
        });
        assert!(
            killed >= 2,
            "{walk:?}: the test must really cut the connection"
        );
    }
}

#[test]
fn a_query_is_a_dataset_and_text_keys_page_correctly() {
    let _serial = serial();
    let mut t = Table::create("code text primary key, n int4");
    t.admin
        .batch_execute(&format!(
            "INSERT INTO {} SELECT 'k' || g || '''q', g FROM generate_series(1, 300) g",
            t.name
        ))
        .unwrap();
    let mapping = Mapping::new(
        vec![col("code", ValueKind::Text)],
        vec![col("n", ValueKind::Integer)],
    )
    .unwrap();
    let options = ScanOptions {
        chunk_rows: 7,
        ..ScanOptions::default()
    };
    let mut s = PostgresSource::new(
        url(),
        Relation::Query(format!(
            "SELECT code, n * 2 AS n FROM {} WHERE n <= 200",
            t.name
        )),
        mapping,
        options,
    );
    let rows = scan_all(&mut s).unwrap();
    assert_eq!(rows.len(), 200);
    let keys: BTreeSet<_> = rows.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys.len(), 200);
    assert!(
        rows.iter()
            .all(|r| matches!(&r.values[0], Value::Integer(n) if n % 2 == 0))
    );
}

#[test]
fn changed_since_reads_rows_at_or_after_a_watermark() {
    let _serial = serial();
    let mut t = Table::create("id int4 primary key, v text, updated_at timestamptz");
    t.admin
        .batch_execute(&format!(
            "INSERT INTO {} VALUES (1, 'a', '2024-01-01 00:00:00+00'), (2, 'b', '2024-01-02 00:00:00+00'),
             (3, 'c', '2024-01-03 00:00:00+00')",
            t.name
        ))
        .unwrap();
    let mapping = Mapping::new(
        vec![col("id", ValueKind::Integer)],
        vec![col("v", ValueKind::Text)],
    )
    .unwrap();
    let mut s = PostgresSource::new(
        url(),
        Relation::Table(t.name.clone()),
        mapping,
        ScanOptions::default(),
    );
    let mut ids = Vec::new();
    let mark = s
        .changed_since("updated_at", None, &mut |r| {
            ids.push(r.key[0].clone());
            Ok(())
        })
        .unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(mark.as_deref(), Some("2024-01-03 00:00:00+00"));
    ids.clear();
    let mark = s
        .changed_since("updated_at", Some("2024-01-02 00:00:00+00"), &mut |r| {
            ids.push(r.key[0].clone());
            Ok(())
        })
        .unwrap();
    assert_eq!(ids, vec![Value::Integer(2), Value::Integer(3)]);
    assert_eq!(mark.as_deref(), Some("2024-01-03 00:00:00+00"));
}

#[test]
fn a_scan_resumes_across_a_server_restart() {
    let _serial = serial();
    // tools/databases.sh exports the restart command of the private
    // instance it starts; a shared server on :5432 is not restarted.
    let Ok(restart) = std::env::var("ARBOR_TEST_POSTGRES_RESTART") else {
        let why = "the PostgreSQL server is not a private instance of tools/databases.sh";
        // Under CI tools/test.sh provides a private instance: no skip.
        if std::env::var_os("CI").is_some() {
            panic!("cannot run: {why}");
        }
        eprintln!("skipped: {why}");
        return;
    };
    let restarts = scan_interrupted(20_000, 500, &[7_000], Walk::ByBlocks, |t| {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(&restart)
            .status()
            .unwrap();
        assert!(status.success(), "restart command failed: {restart}");
        // The admin connection died with the server: reconnect to drop the table.
        t.admin = Client::connect(&url(), NoTls).unwrap();
        1
    });
    assert_eq!(restarts, 1);
}

/// Rows from 100 bytes to 300 KB, wide ones scattered and in runs, read by
/// a build (block walk over two connections) and a rescan (keyset): every
/// row exactly once, and no chunk larger than `chunk_bytes` plus one row,
/// though the default 50,000 rows would take the whole table in one chunk.
#[test]
fn wide_rows_are_read_in_chunks_bounded_in_bytes() {
    let _serial = serial();
    const CHUNK_BYTES: u64 = 1 << 20;
    const WIDE: usize = 300_000;
    let mut t = Table::create("id int8 primary key, pad text");
    // Wide rows every 7th id and in a run of 40; `repeat` compresses on
    // disk, so the table's size on disk says nothing of its COPY size.
    t.admin
        .batch_execute(&format!(
            "INSERT INTO {0} SELECT i, repeat(chr(97 + i % 26), CASE WHEN i % 7 = 0 OR i BETWEEN 300 AND 339
                 THEN {WIDE} + i ELSE 100 + i % 50 END)
             FROM generate_series(1, 600) AS i;
             ANALYZE {0}",
            t.name
        ))
        .unwrap();
    let want: BTreeSet<(i128, usize)> = (1..=600i128)
        .map(|i| {
            let wide = i % 7 == 0 || (300..=339).contains(&i);
            let len = if wide {
                WIDE + i as usize
            } else {
                100 + (i % 50) as usize
            };
            (i, len)
        })
        .collect();
    let mapping = Mapping::new(
        vec![col("id", ValueKind::Integer)],
        vec![col("pad", ValueKind::Text)],
    )
    .unwrap();
    let options = ScanOptions {
        chunk_bytes: CHUNK_BYTES,
        build_connections: 2,
        ..ScanOptions::default()
    };
    let bound = CHUNK_BYTES + WIDE as u64 + 4_096;

    // The rescan's keyset walk.
    let mut s = PostgresSource::new(
        url(),
        Relation::Table(t.name.clone()),
        mapping.clone(),
        options,
    );
    let rows = scan_all(&mut s).unwrap();
    let got: BTreeSet<(i128, usize)> = rows
        .iter()
        .map(|r| match (&r.key[0], &r.values[0]) {
            (Value::Integer(i), Value::Text(p)) => (*i, p.len()),
            other => panic!("unexpected row {other:?}"),
        })
        .collect();
    assert_eq!(rows.len(), want.len(), "a row read twice");
    assert_eq!(got, want);
    let largest = s.chunk_stats().largest_chunk_bytes();
    assert!(largest <= bound, "a keyset chunk of {largest} bytes");

    // The build's block walk, hashed from the wire: the same records.
    let keys = arbor_record::DatasetKeys::derive(b"wide");
    let mut b = PostgresSource::new(url(), Relation::Table(t.name.clone()), mapping, options);
    let mut hashed = Vec::new();
    b.scan_hashed(&keys, &mut |batches| {
        hashed.extend(batches.iter().flat_map(HashedBatch::to_records));
        Ok(())
    })
    .unwrap();
    let digest = |r: arbor_record::HashedRecord| (r.key, *r.digest.as_bytes());
    let want_hashed: BTreeSet<_> = HashedBatch::hash_records(&keys, &rows)
        .to_records()
        .into_iter()
        .map(digest)
        .collect();
    assert_eq!(hashed.len(), want_hashed.len(), "a row read twice");
    assert_eq!(
        hashed.into_iter().map(digest).collect::<BTreeSet<_>>(),
        want_hashed
    );
    let largest = b.chunk_stats().largest_chunk_bytes();
    assert!(largest <= bound, "a block-walk chunk of {largest} bytes");
}

/// `char(n)` is read without its blank padding, as MariaDB reads it and as
/// a `text` column holds it, keys included (and the keyset walk over them).
#[test]
fn char_columns_are_read_without_their_padding() {
    let _serial = serial();
    let mut t = Table::create("id char(6) primary key, c char(10), v varchar(10), x text");
    t.admin
        .batch_execute(&format!(
            "INSERT INTO {0} VALUES ('a', 'x', 'x  ', 'x  '), ('b ', '', NULL, ''), ('c  c', NULL, 'y', 'y')",
            t.name
        ))
        .unwrap();
    let mapping = Mapping::new(
        vec![col("id", ValueKind::Text)],
        vec![
            col("c", ValueKind::Text),
            col("v", ValueKind::Text),
            col("x", ValueKind::Text),
        ],
    )
    .unwrap();
    let options = ScanOptions {
        chunk_rows: 1,
        ..ScanOptions::default()
    };
    let mut s = PostgresSource::new(url(), Relation::Table(t.name.clone()), mapping, options);
    let text = |s: &str| Value::text(s);
    let want = vec![
        Record::new(vec![text("a")], vec![text("x"), text("x  "), text("x  ")]),
        Record::new(vec![text("b")], vec![text(""), Value::Null, text("")]),
        Record::new(vec![text("c  c")], vec![Value::Null, text("y"), text("y")]),
    ];
    assert_eq!(scan_all(&mut s).unwrap(), want);
    // Looked up by key, and read again after a second check.
    let fetched = s.fetch(&[vec![text("b")], vec![text("c  c")]]).unwrap();
    assert_eq!(fetched, vec![Some(want[1].clone()), Some(want[2].clone())]);
    assert_eq!(scan_all(&mut s).unwrap(), want);
}

/// json and jsonb numbers keep every digit: no two different numbers read
/// as one, whether scanned (binary) or looked up by key (text).
#[test]
fn json_numbers_keep_every_digit() {
    let _serial = serial();
    let mut t = Table::create("id int8 primary key, j jsonb, jt json");
    t.admin
        .batch_execute(&format!(
            r#"INSERT INTO {0} VALUES
               (1, '{{"n": 12345678901234567890123, "x": 0.1000000000000000001}}',
                   '{{"n": 12345678901234567890123.5}}'),
               (2, '{{"n": 12345678901234567890124, "x": 0.1}}', '{{"n": 1.5e3}}')"#,
            t.name
        ))
        .unwrap();
    let mapping = Mapping::new(
        vec![col("id", ValueKind::Integer)],
        vec![col("j", ValueKind::Json), col("jt", ValueKind::Json)],
    )
    .unwrap();
    let mut s = PostgresSource::new(
        url(),
        Relation::Table(t.name.clone()),
        mapping,
        ScanOptions::default(),
    );
    let json = |t: &str| Value::Json(CanonicalJson::parse(t).unwrap());
    let want = vec![
        Record::new(
            vec![Value::Integer(1)],
            vec![
                json(r#"{"n":12345678901234567890123,"x":0.1000000000000000001}"#),
                json(r#"{"n":12345678901234567890123.5}"#),
            ],
        ),
        Record::new(
            vec![Value::Integer(2)],
            vec![
                json(r#"{"n":12345678901234567890124,"x":0.1}"#),
                json(r#"{"n":1500}"#),
            ],
        ),
    ];
    assert_eq!(scan_all(&mut s).unwrap(), want);
    assert_ne!(want[0].values[0], want[1].values[0]);
    let fetched = s
        .fetch(&[vec![Value::Integer(1)], vec![Value::Integer(2)]])
        .unwrap();
    assert_eq!(fetched, vec![Some(want[0].clone()), Some(want[1].clone())]);
}

/// A value that does not read as its kind is named by column and by the
/// key of its row, in a rescan's scan and in a build's hashed scan; not
/// when the dataset's keys are sensitive.
#[test]
fn value_errors_name_the_row_by_its_key() {
    let _serial = serial();
    let mut t = Table::create("id int8 primary key, n numeric");
    t.admin
        .batch_execute(&format!(
            "INSERT INTO {0} VALUES (1, 1.5), (7, 'NaN'), (9, 2); ANALYZE {0}",
            t.name
        ))
        .unwrap();
    let mapping = Mapping::new(
        vec![col("id", ValueKind::Integer)],
        vec![col("n", ValueKind::Decimal)],
    )
    .unwrap();
    let source = |m: Mapping| {
        PostgresSource::new(
            url(),
            Relation::Table(t.name.clone()),
            m,
            ScanOptions::default(),
        )
    };
    let e = scan_all(&mut source(mapping.clone()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("row with key 7,") && e.contains("\"n\""), "{e}");
    let keys = arbor_record::DatasetKeys::derive(b"errors");
    let e = source(mapping.clone())
        .scan_hashed(&keys, &mut |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("row with key 7,") && e.contains("\"n\""), "{e}");
    let e = scan_all(&mut source(mapping.with_sensitive_keys(true)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"n\"") && !e.contains("(7)"), "{e}");
}
