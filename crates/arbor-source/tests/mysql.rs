//! The MySQL/MariaDB source against a real server: `ARBOR_TEST_MYSQL_URL`,
//! which `tools/test.sh` exports. One sequential test, because the resume
//! check kills every other connection of the test user server-side.

use std::collections::BTreeSet;

use arbor_record::value::{Date, Decimal, Timestamp, parse_uuid};
use arbor_record::{CanonicalJson, Record, Value, ValueKind};
use arbor_source::postgres::ScanOptions;
use arbor_source::relation::Relation;
use arbor_source::{ColumnMapping, Mapping, MysqlSource, Source};
use mysql::prelude::Queryable;

fn url() -> String {
    std::env::var("ARBOR_TEST_MYSQL_URL")
        .expect("ARBOR_TEST_MYSQL_URL is not set: run the tests through tools/test.sh, which starts MariaDB")
}

fn col(source: &str, kind: ValueKind) -> ColumnMapping {
    ColumnMapping::new(source, source, kind)
}

fn admin() -> mysql::Conn {
    mysql::Conn::new(mysql::Opts::from_url(&url()).unwrap()).expect("connect as admin")
}

#[test]
fn mysql_source_reads_types_checks_schemas_and_resumes() {
    let mut admin = admin();
    let t = format!("arbor_t_{}", std::process::id());
    admin
        .query_drop(format!(
            "DROP TABLE IF EXISTS {t};
             CREATE TABLE {t} (id bigint primary key, flag tinyint(1), i2 smallint, u bigint unsigned,
               n decimal(30,6), f float, d double, v varchar(50), tx text, bl blob, dt date,
               ts datetime(6), tz timestamp(6) NULL, j json, uc char(36), ub binary(16))"
        ))
        .unwrap();
    admin
        .query_drop(format!(
            "SET time_zone = '+00:00';
             INSERT INTO {t} VALUES
             (1, 1, -32768, 18446744073709551615, 1.100000, 1.5, -0.0, 'é', 'tab\there', X'00ff0a', '2024-02-29',
              '2024-02-29 23:59:59.123456', '2024-02-29 23:59:59.123456', '{{\"b\": 1.0, \"a\": [true]}}',
              '123e4567-e89b-12d3-a456-426614174000', X'123e4567e89b12d3a456426614174000'),
             (2, NULL, NULL, NULL, NULL, NULL, NULL, '', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
             (3, 0, 0, 0, -123456789012345678901234.5, 1.1, 1e300, 'x', 'line\nbreak', X'', '1969-07-20',
              '1970-01-01 00:00:00', '1970-01-01 00:00:01', '[]', '00000000-0000-0000-0000-000000000000',
              X'00000000000000000000000000000000')"
        ))
        .unwrap();
    let kinds = [
        ("flag", ValueKind::Bool),
        ("i2", ValueKind::Integer),
        ("u", ValueKind::Integer),
        ("n", ValueKind::Decimal),
        ("f", ValueKind::Float),
        ("d", ValueKind::Float),
        ("v", ValueKind::Text),
        ("tx", ValueKind::Text),
        ("bl", ValueKind::Bytes),
        ("dt", ValueKind::Date),
        ("ts", ValueKind::Timestamp),
        ("tz", ValueKind::Timestamp),
        ("j", ValueKind::Json),
        ("uc", ValueKind::Uuid),
        ("ub", ValueKind::Uuid),
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
    let mut s = MysqlSource::new(url(), Relation::Table(t.clone()), mapping.clone(), options);
    s.check().unwrap();
    let mut rows: Vec<Record> = Vec::new();
    s.scan(&mut |r| {
        rows.push(r);
        Ok(())
    })
    .unwrap();
    assert_eq!(rows.len(), 3);
    let get = |r: &Record, name: &str| -> Value {
        let i = mapping
            .columns()
            .iter()
            .position(|c| c.source == name)
            .unwrap();
        r.values[i].clone()
    };
    let r = &rows[0];
    assert_eq!(get(r, "flag"), Value::Bool(true));
    assert_eq!(get(r, "i2"), Value::Integer(-32768));
    assert_eq!(get(r, "u"), Value::Integer(u64::MAX.into()));
    assert_eq!(get(r, "n"), Value::Decimal(Decimal::parse("1.1").unwrap()));
    assert_eq!(get(r, "f"), Value::float(1.5));
    assert_eq!(get(r, "d"), Value::float(0.0));
    assert_eq!(get(r, "v"), Value::text("é"));
    assert_eq!(get(r, "tx"), Value::text("tab\there"));
    assert_eq!(get(r, "bl"), Value::Bytes(vec![0, 255, 10]));
    assert_eq!(
        get(r, "dt"),
        Value::Date(Date::parse("2024-02-29").unwrap())
    );
    let instant = Value::Timestamp(Timestamp::parse("2024-02-29T23:59:59.123456Z").unwrap());
    assert_eq!(get(r, "ts"), instant);
    assert_eq!(get(r, "tz"), instant);
    assert_eq!(
        get(r, "j"),
        Value::Json(CanonicalJson::parse(r#"{"a":[true],"b":1}"#).unwrap())
    );
    let u = Value::Uuid(parse_uuid("123e4567-e89b-12d3-a456-426614174000").unwrap());
    assert_eq!(get(r, "uc"), u);
    assert_eq!(get(r, "ub"), u);
    let r = &rows[1];
    assert_eq!(get(r, "v"), Value::text(""), "empty text is not NULL");
    assert_eq!(get(r, "tx"), Value::Null);
    let r = &rows[2];
    assert_eq!(
        get(r, "f"),
        Value::float(1.1),
        "FLOAT reads as its shortest decimal, like PostgreSQL's float4"
    );
    assert_eq!(get(r, "d"), Value::float(1e300));
    assert_eq!(get(r, "tx"), Value::text("line\nbreak"));
    assert_eq!(get(r, "bl"), Value::Bytes(vec![]));
    assert_eq!(get(r, "tz"), Value::Timestamp(Timestamp(1_000_000)));
    let fetched = s
        .fetch(&[vec![Value::Integer(3)], vec![Value::Integer(4)]])
        .unwrap();
    assert_eq!(fetched[0].as_ref(), Some(&rows[2]));
    assert_eq!(fetched[1], None);

    // Wrong column name and wrong type are named.
    let bad = Mapping::new(
        vec![col("id", ValueKind::Integer)],
        vec![col("vv", ValueKind::Text)],
    )
    .unwrap();
    let e = MysqlSource::new(
        url(),
        Relation::Table(t.clone()),
        bad,
        ScanOptions::default(),
    )
    .check()
    .unwrap_err()
    .to_string();
    assert!(e.contains("vv"), "{e}");
    let bad = Mapping::new(
        vec![col("id", ValueKind::Integer)],
        vec![col("v", ValueKind::Integer)],
    )
    .unwrap();
    let e = MysqlSource::new(
        url(),
        Relation::Table(t.clone()),
        bad,
        ScanOptions::default(),
    )
    .check()
    .unwrap_err()
    .to_string();
    assert!(e.contains("\"v\"") && e.contains("integer"), "{e}");
    // Polling by a watermark column (here the datetime one).
    let by_id = Mapping::new(
        vec![col("id", ValueKind::Integer)],
        vec![col("v", ValueKind::Text)],
    )
    .unwrap();
    let mut p = MysqlSource::new(
        url(),
        Relation::Table(t.clone()),
        by_id,
        ScanOptions::default(),
    );
    let mut ids = Vec::new();
    let mark = p
        .changed_since("ts", Some("1971-01-01 00:00:00"), &mut |r| {
            ids.push(r.key[0].clone());
            Ok(())
        })
        .unwrap();
    assert_eq!(ids, vec![Value::Integer(1)]);
    assert_eq!(mark.as_deref(), Some("2024-02-29 23:59:59.123456"));
    admin.query_drop(format!("DROP TABLE {t}")).unwrap();

    // A scan resumes after the server kills its connection, twice.
    let big = format!("arbor_big_{}", std::process::id());
    // Rows 1..=5000 from a cross join of digits (recursive CTEs stop at the
    // server's recursion limit).
    let digits = "(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
                  UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)";
    admin
        .query_drop(format!(
            "DROP TABLE IF EXISTS {big}; CREATE TABLE {big} (id int primary key, v varchar(20));
             INSERT INTO {big} SELECT n, CONCAT('row ', n) FROM (
               SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 1 AS n
               FROM {digits} a, {digits} b, {digits} c, {digits} e) g WHERE n <= 5000"
        ))
        .unwrap();
    let mapping = Mapping::new(
        vec![col("id", ValueKind::Integer)],
        vec![col("v", ValueKind::Text)],
    )
    .unwrap();
    let options = ScanOptions {
        chunk_rows: 250,
        reconnect_backoff: std::time::Duration::from_millis(50),
        ..ScanOptions::default()
    };
    let mut s = MysqlSource::new(url(), Relation::Table(big.clone()), mapping, options);
    let mut seen = Vec::new();
    let mut killed = 0;
    s.scan(&mut |r| {
        seen.push(r.key[0].clone());
        if seen.len() == 1_000 || seen.len() == 3_333 {
            let ids: Vec<u64> = admin
                .query("SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND USER = 'arbor'")
                .unwrap();
            for id in ids {
                if admin.query_drop(format!("KILL {id}")).is_ok() {
                    killed += 1;
                }
            }
        }
        Ok(())
    })
    .unwrap();
    assert!(killed >= 2, "the test must really cut the connection");
    let distinct: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), 5_000, "no row read twice");
    assert_eq!(distinct.len(), 5_000, "no row skipped");
    admin.query_drop(format!("DROP TABLE {big}")).unwrap();

    // Rows from 100 bytes to 300 KB, wide ones scattered and in a run: each
    // read once, in chunks of `chunk_bytes` plus one row at most, though
    // the default 50,000 rows would take the table in one.
    const CHUNK_BYTES: u64 = 1 << 20;
    const WIDE: usize = 300_000;
    let wide = format!("arbor_wide_{}", std::process::id());
    admin
        .query_drop(format!(
            "DROP TABLE IF EXISTS {wide}; CREATE TABLE {wide} (id int primary key, pad longtext);
             INSERT INTO {wide} SELECT n, REPEAT(CHAR(97 + n % 26), CASE WHEN n % 7 = 0 OR n BETWEEN 300 AND 339
                 THEN {WIDE} + n ELSE 100 + n % 50 END) FROM (
               SELECT a.d + 10 * b.d + 100 * c.d + 1 AS n
               FROM {digits} a, {digits} b, {digits} c) g WHERE n <= 600"
        ))
        .unwrap();
    let want: BTreeSet<(Value, usize)> = (1..=600usize)
        .map(|i| {
            let wide = i % 7 == 0 || (300..=339).contains(&i);
            let len = if wide { WIDE + i } else { 100 + i % 50 };
            (Value::Integer(i as i128), len)
        })
        .collect();
    let mapping = Mapping::new(
        vec![col("id", ValueKind::Integer)],
        vec![col("pad", ValueKind::Text)],
    )
    .unwrap();
    let options = ScanOptions {
        chunk_bytes: CHUNK_BYTES,
        ..ScanOptions::default()
    };
    let mut s = MysqlSource::new(url(), Relation::Table(wide.clone()), mapping, options);
    let mut got = Vec::new();
    s.scan(&mut |r| {
        let len = match &r.values[0] {
            Value::Text(p) => p.len(),
            other => panic!("unexpected value {other:?}"),
        };
        got.push((r.key[0].clone(), len));
        Ok(())
    })
    .unwrap();
    assert_eq!(got.len(), want.len(), "a row read twice");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want);
    let largest = s.chunk_stats().largest_chunk_bytes();
    assert!(
        largest <= CHUNK_BYTES + WIDE as u64 + 4_096,
        "a chunk of {largest} bytes"
    );
    admin.query_drop(format!("DROP TABLE {wide}")).unwrap();

    awkward_keys_are_walked_one_row_per_chunk(&mut admin);
    json_numbers_keep_every_digit(&mut admin);
}

/// MariaDB's JSON is text: its numbers keep every digit.
fn json_numbers_keep_every_digit(admin: &mut mysql::Conn) {
    let t = format!("arbor_json_{}", std::process::id());
    admin
        .query_drop(format!(
            r#"DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id int primary key, j json);
               INSERT INTO {t} VALUES (1, '{{"n": 12345678901234567890123, "x": 0.1000000000000000001}}'),
                                      (2, '{{"n": 12345678901234567890124, "x": 0.1}}')"#
        ))
        .unwrap();
    let mapping = Mapping::new(
        vec![col("id", ValueKind::Integer)],
        vec![col("j", ValueKind::Json)],
    )
    .unwrap();
    let mut s = MysqlSource::new(
        url(),
        Relation::Table(t.clone()),
        mapping,
        ScanOptions::default(),
    );
    let mut got = Vec::new();
    s.scan(&mut |r| {
        got.push(r.values[0].clone());
        Ok(())
    })
    .unwrap();
    let json = |t: &str| Value::Json(CanonicalJson::parse(t).unwrap());
    assert_eq!(
        got,
        vec![
            json(r#"{"n":12345678901234567890123,"x":0.1000000000000000001}"#),
            json(r#"{"n":12345678901234567890124,"x":0.1}"#),
        ]
    );
    admin.query_drop(format!("DROP TABLE {t}")).unwrap();
}

/// Keys whose stored form sorts differently from their canonical one:
/// walked one row per chunk, every row is read once and the walk ends.
fn awkward_keys_are_walked_one_row_per_chunk(admin: &mut mysql::Conn) {
    let uuids = [
        "00000000-0000-0000-0000-00000000000A",
        "0000000A-0000-0000-0000-000000000000",
        "1ABCDEF0-1234-4321-ABCD-0123456789AB",
        "1abcdef0-1234-4321-abcd-0123456789ac",
        // Lower-cased, A… sorts after B… in a binary collation.
        "A0000000-0000-0000-0000-000000000000",
        "B0000000-0000-0000-0000-000000000000",
        "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
    ];
    let uuid = |t: &str| Value::Uuid(parse_uuid(t).unwrap());
    // What, the key column's type, its values as SQL, as read, its kind.
    type Case<'a> = (&'a str, &'a str, Vec<String>, Vec<Value>, ValueKind);
    let cases: Vec<Case> = vec![
        (
            "char(36) utf8mb4_bin, either case",
            "CHAR(36) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
            uuids.iter().map(|u| format!("'{u}'")).collect(),
            uuids.iter().map(|u| uuid(u)).collect(),
            ValueKind::Uuid,
        ),
        (
            "char(32)",
            "CHAR(32)",
            uuids
                .iter()
                .map(|u| format!("'{}'", u.replace('-', "")))
                .collect(),
            uuids.iter().map(|u| uuid(u)).collect(),
            ValueKind::Uuid,
        ),
        (
            "binary(16)",
            "BINARY(16)",
            uuids
                .iter()
                .map(|u| format!("UNHEX('{}')", u.replace('-', "")))
                .collect(),
            uuids.iter().map(|u| uuid(u)).collect(),
            ValueKind::Uuid,
        ),
        (
            "bigint unsigned beyond 2^63",
            "BIGINT UNSIGNED",
            [
                "0",
                "9223372036854775807",
                "9223372036854775808",
                "18446744073709551614",
                "18446744073709551615",
            ]
            .iter()
            .map(|n| n.to_string())
            .collect(),
            [
                0u64,
                9223372036854775807,
                9223372036854775808,
                18446744073709551614,
                u64::MAX,
            ]
            .iter()
            .map(|&n| Value::Integer(n.into()))
            .collect(),
            ValueKind::Integer,
        ),
    ];
    for (what, column, literals, want, kind) in cases {
        let t = format!("arbor_keys_{}", std::process::id());
        let values: Vec<String> = literals.iter().map(|l| format!("({l}, 'x')")).collect();
        admin
            .query_drop(format!(
                "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id {column} PRIMARY KEY, v varchar(5));
                 INSERT INTO {t} VALUES {}",
                values.join(", ")
            ))
            .unwrap();
        let mapping = Mapping::new(vec![col("id", kind)], vec![col("v", ValueKind::Text)]).unwrap();
        let options = ScanOptions {
            chunk_rows: 1,
            ..ScanOptions::default()
        };
        let mut s = MysqlSource::new(url(), Relation::Table(t.clone()), mapping, options);
        let mut got = Vec::new();
        s.scan(&mut |r| {
            got.push(r.key[0].clone());
            assert!(
                got.len() <= want.len(),
                "{what}: the walk does not end: {got:?}"
            );
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut want = want.clone();
        want.sort_by_key(|v| format!("{v:?}"));
        got.sort_by_key(|v| format!("{v:?}"));
        assert_eq!(got, want, "{what}");
        // Looked up by key, each is found as stored.
        let keys: Vec<Vec<Value>> = want.iter().map(|k| vec![k.clone()]).collect();
        let found = s.fetch(&keys).unwrap_or_else(|e| panic!("{what}: {e}"));
        let found: Vec<Value> = found
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| panic!("{what}: a key was not found"))
                    .key[0]
                    .clone()
            })
            .collect();
        assert_eq!(found, want, "{what}");
        admin.query_drop(format!("DROP TABLE {t}")).unwrap();
    }
}
