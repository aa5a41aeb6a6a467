//! A differential generator, so that the next wrong answer is found here
//! first: random rows over every kind with edge values (numbers beyond 64
//! bits and long fractions, JSON numbers in every spelling, padding, case
//! and Unicode forms, empty and NULL, dates and instants from year 1000 to
//! 9999, uuids in either case, the extreme 64-bit keys) are written into
//! PostgreSQL, MariaDB, SQLite, a CSV file and a JSONL file with the storage
//! types a legacy schema would use, and each is indexed through its
//! connector. The oracles:
//!
//! * the same rows give the same leaves (key and digest) in every engine;
//! * random drift (changed values, deleted and added rows) applied in one
//!   engine shows as exactly the drifted keys against the others.
//!
//! Two more families: text keys under normalising key transforms, spelled
//! differently in every engine (`normalised_keys`), and unsigned 64-bit
//! keys in the storage types legacy schemas give them (`unsigned_keys`).
//!
//! `ARBOR_DIFFERENTIAL_CASES` sets the number of generated datasets
//! (default 20, what CI runs in a few seconds; a long run sets thousands).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use arbor_agent::maintain::build_from_source;
use arbor_index::{Index, IndexConfig};
use arbor_record::value::{Date, Timestamp, format_uuid};
use arbor_record::{DatasetKeys, Value, ValueKind};
use arbor_source::postgres::ScanOptions;
use arbor_source::relation::Relation;
use arbor_source::{
    ColumnMapping, FileSource, Format, Mapping, MysqlSource, PostgresSource, Source, SqliteSource,
};
use arbor_tree::Prefix;
use mysql::prelude::Queryable;
use proptest::prelude::*;
use tempfile::TempDir;

/// One logical row: every value as the text a system would be given.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    txt: Option<String>,
    /// A decimal, as JSON would also accept it.
    amount: Option<String>,
    /// A JSON document in any spelling.
    doc: Option<String>,
    /// A uuid, and whether text forms of it are upper-case.
    uid: Option<([u8; 16], bool)>,
    /// Microseconds since the epoch.
    seen: Option<i64>,
    flag: Option<bool>,
    /// Days since the epoch.
    born: Option<i32>,
    /// A finite float, written in its shortest round-trip form.
    ratio: Option<f64>,
    raw: Option<Vec<u8>>,
}

/// What is done to one engine's copy of the rows.
#[derive(Debug, Clone)]
enum Drift {
    /// Row `.0`'s column `.1` (of [`COLUMNS`]) changed, by as little as
    /// its kind allows: the last digit of a long number, a combining
    /// accent, one microsecond.
    Change(usize, usize),
    Delete(usize),
    Add(i64),
}

const COLUMNS: [(&str, ValueKind); 9] = [
    ("txt", ValueKind::Text),
    ("amount", ValueKind::Decimal),
    ("doc", ValueKind::Json),
    ("uid", ValueKind::Uuid),
    ("seen", ValueKind::Timestamp),
    ("flag", ValueKind::Bool),
    ("born", ValueKind::Date),
    ("ratio", ValueKind::Float),
    ("raw", ValueKind::Bytes),
];

fn mapping() -> Mapping {
    let c = |name: &str, kind| ColumnMapping::new(name, name, kind);
    Mapping::new(
        vec![c("id", ValueKind::Integer)],
        COLUMNS.iter().map(|&(n, k)| c(n, k)).collect(),
    )
    .expect("mapping")
}

/// Year 1000-01-01 and 9999-12-31, in days and microseconds since 1970.
const FIRST_DAY: i32 = -354_285;
const LAST_DAY: i32 = 2_932_896;
const MICROS_PER_DAY: i64 = 86_400_000_000;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("café".to_owned()),
        Just("cafe\u{301}".to_owned()),
        Just("Zoë 日本 🌳".to_owned()),
        Just("trailing  ".to_owned()),
        Just("  leading".to_owned()),
        Just("CASE case".to_owned()),
        "[a-zA-Z0-9 ,;\"'\\\\\t\né€]{0,16}",
    ]
    // `\N` is the CSV null marker: as text it would read as NULL.
    .prop_filter("the CSV null marker", |s| s != "\\N")
}

fn decimal() -> impl Strategy<Value = String> {
    (any::<bool>(), "[1-9][0-9]{0,28}|0", "[0-9]{0,6}").prop_map(|(neg, int, frac)| {
        let sign = if neg { "-" } else { "" };
        if frac.is_empty() {
            format!("{sign}{int}")
        } else {
            format!("{sign}{int}.{frac}")
        }
    })
}

fn json() -> impl Strategy<Value = String> {
    // Numbers a 64-bit float cannot tell apart, often.
    let number = prop_oneof![
        3 => Just("12345678901234567890123".to_owned()),
        1 => Just("12345678901234567890124".to_owned()),
        3 => Just("0.1000000000000000001".to_owned()),
        1 => Just("0.1".to_owned()),
        1 => Just("1.50".to_owned()),
        1 => Just("1.5e3".to_owned()),
        1 => Just("1E-7".to_owned()),
        1 => Just("-0".to_owned()),
        1 => Just("18446744073709551617".to_owned()),
        2 => decimal(),
    ];
    (number, text(), any::<bool>()).prop_map(|(n, s, order)| {
        let s = serde_json::to_string(&s).expect("a string serialises");
        if order {
            format!("{{\"n\": {n}, \"s\": {s}, \"a\": [{n}, null]}}")
        } else {
            format!("{{\"a\":[{n},null],\"s\":{s},\"n\":{n}}}")
        }
    })
}

fn row() -> impl Strategy<Value = Row> {
    (
        proptest::option::of(text()),
        proptest::option::of(decimal()),
        proptest::option::of(json()),
        proptest::option::of((any::<[u8; 16]>(), any::<bool>())),
        proptest::option::of(
            i64::from(FIRST_DAY) * MICROS_PER_DAY..(i64::from(LAST_DAY) + 1) * MICROS_PER_DAY,
        ),
        proptest::option::of(any::<bool>()),
        proptest::option::of(FIRST_DAY..=LAST_DAY),
        proptest::option::of(float()),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
    )
        .prop_map(
            |(txt, amount, doc, uid, seen, flag, born, ratio, raw)| Row {
                txt,
                amount,
                doc,
                uid,
                seen,
                flag,
                born,
                ratio,
                raw,
            },
        )
}

/// Finite floats, the awkward ones often.
fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(-0.0),
        Just(0.1),
        Just(0.1 + 0.2),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        Just(-1e-300),
        Just(123_456_789.125),
        any::<f64>().prop_filter("finite", |x| x.is_finite()),
    ]
}

fn key() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0),
        -1_000i64..1_000,
        any::<i64>()
    ]
}

/// A dataset and the drift applied to one engine's copy of it.
fn case() -> impl Strategy<Value = (BTreeMap<i64, Row>, Vec<Drift>, usize)> {
    proptest::collection::btree_map(key(), row(), 1..24).prop_flat_map(|rows| {
        let n = rows.len();
        let drift = prop_oneof![
            (0..n, 0..COLUMNS.len()).prop_map(|(i, c)| Drift::Change(i, c)),
            (0..n).prop_map(Drift::Delete),
            key().prop_map(Drift::Add),
        ];
        (
            Just(rows),
            proptest::collection::vec(drift, 0..4),
            0..ENGINES.len(),
        )
    })
}

/// Changes one column of `r` by as little as its kind allows, to a value
/// that differs logically (never only in spelling, which is no drift).
fn nudge(r: &mut Row, column: usize) {
    const LONG: &str = "12345678901234567890123";
    const LONG_NEXT: &str = "12345678901234567890124";
    const FINE: &str = "0.1000000000000000001";
    match COLUMNS[column].0 {
        "txt" => {
            r.txt = Some(match r.txt.take() {
                Some(t) if t.contains("café") => t.replace("café", "cafe\u{301}"),
                Some(t) if t.ends_with(' ') => t.trim_end().to_owned(),
                Some(t) => format!("{t} "),
                None => String::new(),
            })
        }
        // Another digit in front: a different number, still within
        // DECIMAL(36,6).
        "amount" => {
            r.amount = Some(match r.amount.take() {
                Some(a) => format!("1{}", a.trim_start_matches('-')),
                None => "0".into(),
            })
        }
        "doc" => {
            r.doc = Some(match r.doc.take() {
                Some(d) if d.contains(LONG) => d.replace(LONG, LONG_NEXT),
                Some(d) if d.contains(FINE) => d.replace(FINE, "0.1"),
                _ => format!("{{\"n\": {LONG}}}"),
            })
        }
        "uid" => {
            let (mut bytes, upper) = r.uid.unwrap_or(([0; 16], false));
            bytes[15] ^= 1;
            r.uid = Some((bytes, upper));
        }
        "seen" => {
            let last = (i64::from(LAST_DAY) + 1) * MICROS_PER_DAY - 1;
            r.seen = Some(match r.seen {
                Some(s) if s == last => s - 1,
                Some(s) => s + 1,
                None => 0,
            })
        }
        "flag" => r.flag = Some(!r.flag.unwrap_or(false)),
        "born" => {
            r.born = Some(match r.born {
                Some(d) if d == LAST_DAY => d - 1,
                Some(d) => d + 1,
                None => 0,
            })
        }
        // The next float: every engine must tell it apart.
        "ratio" => {
            r.ratio = Some(match r.ratio {
                Some(x) if x.abs() == 0.0 => f64::MIN_POSITIVE,
                Some(x) if x == f64::MAX || x == f64::MIN => x / 2.0,
                Some(x) => f64::from_bits(x.to_bits() + 1),
                None => 0.5,
            })
        }
        "raw" => {
            let mut b = r.raw.take().unwrap_or_default();
            match b.last_mut() {
                Some(last) => *last ^= 1,
                None => b.push(0),
            }
            r.raw = Some(b);
        }
        other => unreachable!("column {other}"),
    }
}

/// The rows after `drift`, and the keys it changed.
fn drifted(rows: &BTreeMap<i64, Row>, drift: &[Drift]) -> (BTreeMap<i64, Row>, BTreeSet<i64>) {
    let ids: Vec<i64> = rows.keys().copied().collect();
    let mut out = rows.clone();
    for d in drift {
        match d {
            // A row deleted before is changed no more.
            Drift::Change(i, column) => {
                if let Some(r) = out.get_mut(&ids[*i]) {
                    nudge(r, *column);
                }
            }
            Drift::Delete(i) => {
                out.remove(&ids[*i]);
            }
            Drift::Add(id) => {
                out.entry(*id).or_insert(Row {
                    txt: Some("added".into()),
                    amount: None,
                    doc: None,
                    uid: None,
                    seen: None,
                    flag: None,
                    born: None,
                    ratio: None,
                    raw: None,
                });
            }
        }
    }
    // The oracle: a naive comparison of the logical rows.
    let all: BTreeSet<i64> = rows.keys().chain(out.keys()).copied().collect();
    let changed = all
        .into_iter()
        .filter(|id| rows.get(id) != out.get(id))
        .collect();
    (out, changed)
}

const ENGINES: [&str; 5] = ["postgres", "mariadb", "sqlite", "csv", "jsonl"];

fn uuid_text(uid: &([u8; 16], bool)) -> String {
    let t = format_uuid(&uid.0);
    if uid.1 { t.to_uppercase() } else { t }
}

fn instant(micros: i64) -> String {
    Timestamp(micros).to_string()
}

fn day(days: i32) -> String {
    Date(days).to_string()
}

static TABLES: AtomicU64 = AtomicU64::new(0);

fn table_name() -> String {
    table_in("diff")
}

/// A fresh table name of one test's `family`, which [`drop_tables`] of
/// that family drops (tests run side by side in one process).
fn table_in(family: &str) -> String {
    format!(
        "{family}_{}_{}",
        std::process::id(),
        TABLES.fetch_add(1, Ordering::Relaxed)
    )
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through tools/test.sh, which starts the databases")
    })
}

/// Writes `rows` into `engine` and returns its connector.
fn write(engine: &str, dir: &TempDir, rows: &BTreeMap<i64, Row>) -> Box<dyn Source> {
    let name = table_name();
    match engine {
        "postgres" => {
            let url = env("ARBOR_TEST_POSTGRES_URL");
            let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            pg.batch_execute(&format!(
                "CREATE TABLE {name} (id int8 PRIMARY KEY, txt text, amount numeric, doc jsonb,
                   uid uuid, seen timestamptz, flag bool, born date, ratio float8, raw bytea)"
            ))
            .unwrap();
            let insert = format!(
                "INSERT INTO {name} VALUES ($1::text::int8, $2::text, $3::text::numeric,
                   $4::text::jsonb, $5::text::uuid, $6::text::timestamptz, $7::text::bool,
                   $8::text::date, $9::text::float8, $10::text::bytea)"
            );
            for (id, r) in rows {
                let values: [Option<String>; 10] = [
                    Some(id.to_string()),
                    r.txt.clone(),
                    r.amount.clone(),
                    r.doc.clone(),
                    r.uid.as_ref().map(uuid_text),
                    r.seen
                        .map(|s| instant(s).replace('T', " ").replace('Z', "+00")),
                    r.flag.map(|f| f.to_string()),
                    r.born.map(day),
                    r.ratio.map(|x| format!("{x:?}")),
                    r.raw.as_ref().map(|b| format!("\\x{}", hex::encode(b))),
                ];
                let params: Vec<&(dyn postgres::types::ToSql + Sync)> = values
                    .iter()
                    .map(|v| v as &(dyn postgres::types::ToSql + Sync))
                    .collect();
                pg.execute(insert.as_str(), &params).unwrap();
            }
            Box::new(PostgresSource::new(
                url,
                Relation::Table(name),
                mapping(),
                ScanOptions {
                    chunk_rows: 5,
                    ..ScanOptions::default()
                },
            ))
        }
        "mariadb" => {
            let url = env("ARBOR_TEST_MYSQL_URL");
            let mut my = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
            my.query_drop(format!(
                "CREATE TABLE {name} (id BIGINT PRIMARY KEY, txt TEXT, amount DECIMAL(36,6), doc JSON,
                   uid CHAR(36), seen DATETIME(6), flag TINYINT(1), born DATE, ratio DOUBLE, raw BLOB)
                 CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            ))
            .unwrap();
            for (id, r) in rows {
                let text = |v: Option<String>| v.map_or(mysql::Value::NULL, mysql::Value::from);
                let values: Vec<mysql::Value> = vec![
                    mysql::Value::from(*id),
                    text(r.txt.clone()),
                    text(r.amount.clone()),
                    text(r.doc.clone()),
                    text(r.uid.as_ref().map(uuid_text)),
                    text(
                        r.seen
                            .map(|s| instant(s).replace('T', " ").replace('Z', "")),
                    ),
                    text(r.flag.map(|f| if f { "1" } else { "0" }.to_owned())),
                    text(r.born.map(day)),
                    r.ratio.map_or(mysql::Value::NULL, mysql::Value::Double),
                    r.raw
                        .clone()
                        .map_or(mysql::Value::NULL, mysql::Value::Bytes),
                ];
                my.exec_drop(
                    format!("INSERT INTO {name} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                    values,
                )
                .unwrap();
            }
            Box::new(MysqlSource::new(
                url,
                Relation::Table(name),
                mapping(),
                ScanOptions {
                    chunk_rows: 5,
                    ..ScanOptions::default()
                },
            ))
        }
        "sqlite" => {
            let path = dir.path().join(format!("{name}.db"));
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, txt TEXT, amount TEXT, doc TEXT, uid TEXT,
                   seen TEXT, flag INTEGER, born TEXT, ratio REAL, raw BLOB)",
            )
            .unwrap();
            for (id, r) in rows {
                c.execute(
                    "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    rusqlite::params![
                        id,
                        r.txt,
                        r.amount,
                        r.doc,
                        r.uid.as_ref().map(uuid_text),
                        r.seen.map(instant),
                        r.flag,
                        r.born.map(day),
                        r.ratio,
                        r.raw,
                    ],
                )
                .unwrap();
            }
            drop(c);
            Box::new(SqliteSource::open(&path, Relation::Table("t".into()), mapping()).unwrap())
        }
        "csv" => {
            let path = dir.path().join(format!("{name}.csv"));
            let field = |v: Option<String>| match v {
                None => "\\N".to_owned(),
                Some(s) if s.contains([',', '"', '\n', '\r']) || s.trim() != s => {
                    format!("\"{}\"", s.replace('"', "\"\""))
                }
                Some(s) => s,
            };
            let mut text = String::from("id,txt,amount,doc,uid,seen,flag,born,ratio,raw\n");
            for (id, r) in rows {
                let fields = [
                    Some(id.to_string()),
                    r.txt.clone(),
                    r.amount.clone(),
                    r.doc.clone(),
                    r.uid.as_ref().map(uuid_text),
                    r.seen.map(instant),
                    r.flag.map(|f| if f { "t" } else { "false" }.to_owned()),
                    r.born.map(day),
                    r.ratio.map(|x| format!("{x:?}")),
                    r.raw.as_ref().map(hex::encode),
                ];
                let line: Vec<String> = fields.into_iter().map(field).collect();
                text.push_str(&line.join(","));
                text.push('\n');
            }
            std::fs::write(&path, text).unwrap();
            Box::new(FileSource::new(&path, Format::Csv, mapping(), None))
        }
        "jsonl" => {
            use serde_json::Value as J;
            let path = dir.path().join(format!("{name}.jsonl"));
            let number = |t: &str| serde_json::from_str::<J>(t).expect("a JSON number");
            let mut text = String::new();
            for (id, r) in rows {
                let mut o = serde_json::Map::new();
                o.insert("id".into(), number(&id.to_string()));
                let put = |o: &mut serde_json::Map<String, J>, k: &str, v: Option<J>| {
                    o.insert(k.into(), v.unwrap_or(J::Null));
                };
                put(&mut o, "txt", r.txt.clone().map(J::String));
                // Exact decimals as JSON numbers, JSON as JSON.
                put(&mut o, "amount", r.amount.as_deref().map(number));
                put(&mut o, "doc", r.doc.as_deref().map(number));
                put(
                    &mut o,
                    "uid",
                    r.uid.as_ref().map(|u| J::String(uuid_text(u))),
                );
                put(&mut o, "seen", r.seen.map(|s| J::String(instant(s))));
                put(&mut o, "flag", r.flag.map(J::Bool));
                put(&mut o, "born", r.born.map(|d| J::String(day(d))));
                put(&mut o, "ratio", r.ratio.map(|x| number(&format!("{x:?}"))));
                put(
                    &mut o,
                    "raw",
                    r.raw.as_ref().map(|b| J::String(hex::encode(b))),
                );
                text.push_str(&serde_json::to_string(&J::Object(o)).unwrap());
                text.push('\n');
            }
            std::fs::write(&path, text).unwrap();
            Box::new(FileSource::new(&path, Format::Jsonl, mapping(), None))
        }
        other => unreachable!("engine {other}"),
    }
}

/// Drops the tables this process made in the two servers.
fn drop_tables() {
    drop_family("diff");
}

/// Drops the tables of `family` this process made in the two servers.
fn drop_family(family: &str) {
    let prefix = format!("{family}_{}_", std::process::id());
    let mut pg =
        postgres::Client::connect(&env("ARBOR_TEST_POSTGRES_URL"), postgres::NoTls).unwrap();
    for row in pg
        .query(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE $1 || '%'",
            &[&prefix],
        )
        .unwrap()
    {
        let name: String = row.get(0);
        pg.batch_execute(&format!("DROP TABLE {name}")).unwrap();
    }
    let mut my =
        mysql::Conn::new(mysql::Opts::from_url(&env("ARBOR_TEST_MYSQL_URL")).unwrap()).unwrap();
    let names: Vec<String> = my
        .exec(
            "SELECT table_name FROM information_schema.tables
             WHERE table_schema = DATABASE() AND table_name LIKE CONCAT(?, '%')",
            (prefix,),
        )
        .unwrap();
    for name in names {
        my.query_drop(format!("DROP TABLE {name}")).unwrap();
    }
}

/// A source's leaves (canonical key → digest), indexed through `mapping`
/// in an index named after a table of `family`; the build's error, if any.
fn try_leaves(
    dir: &TempDir,
    source: &mut dyn Source,
    mapping: &Mapping,
    family: &str,
) -> Result<BTreeMap<Vec<u8>, String>, arbor_index::IndexError> {
    let config = IndexConfig {
        keys: DatasetKeys::derive(b"differential"),
        schema_fingerprint: mapping.schema().fingerprint(),
    };
    let index = Index::open(dir.path().join(table_in(family)), config).unwrap();
    build_from_source(&index, source, true)?;
    let snap = index.snapshot().unwrap();
    Ok(snap
        .leaves(&[Prefix::ROOT])
        .unwrap()
        .into_iter()
        .map(|l| (l.key, l.digest.to_string()))
        .collect())
}

/// Indexes a source of this test: its leaves, canonical key to digest.
fn leaves(dir: &TempDir, source: &mut dyn Source) -> BTreeMap<Vec<u8>, String> {
    try_leaves(dir, source, &mapping(), "diff").unwrap_or_else(|e| panic!("{e}"))
}

/// The keys whose leaves differ between two indexes (the drift found).
fn differing(
    want: &BTreeMap<Vec<u8>, String>,
    got: &BTreeMap<Vec<u8>, String>,
) -> BTreeSet<Vec<u8>> {
    want.keys()
        .chain(got.keys())
        .filter(|k| want.get(*k) != got.get(*k))
        .cloned()
        .collect()
}

/// The canonical key of an integer key.
fn key_bytes(id: impl Into<i128>) -> Vec<u8> {
    arbor_record::tuple_bytes(&[Value::Integer(id.into())])
}

/// A runner of `ARBOR_DIFFERENTIAL_CASES` cases (default 20).
fn runner() -> proptest::test_runner::TestRunner {
    let cases = std::env::var("ARBOR_DIFFERENTIAL_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    })
}

#[test]
fn every_engine_agrees_and_drift_is_exact() {
    let mut runner = runner();
    // Counted in cells: the runner takes a `Fn`.
    let (datasets, rows_written, drifted_keys) = (
        std::cell::Cell::new(0u64),
        std::cell::Cell::new(0u64),
        std::cell::Cell::new(0u64),
    );
    runner
        .run(&case(), |(rows, drift, target)| {
            let dir = TempDir::new().unwrap();
            drop_tables();
            let mut seen: Vec<(&str, BTreeMap<Vec<u8>, String>)> = Vec::new();
            for engine in ENGINES {
                let mut source = write(engine, &dir, &rows);
                seen.push((engine, leaves(&dir, source.as_mut())));
            }
            let (first, want) = &seen[0];
            prop_assert_eq!(want.len(), rows.len());
            for (engine, got) in &seen[1..] {
                for (key, digest) in want {
                    prop_assert_eq!(
                        got.get(key),
                        Some(digest),
                        "{} and {} disagree on key {}",
                        first,
                        engine,
                        arbor_agent::report::display_key(key)
                    );
                }
                prop_assert_eq!(got.len(), want.len(), "{} and {}", first, engine);
            }
            let (after, oracle) = drifted(&rows, &drift);
            let mut source = write(ENGINES[target], &dir, &after);
            let got = leaves(&dir, source.as_mut());
            let oracle_keys: BTreeSet<Vec<u8>> = oracle.iter().map(|&id| key_bytes(id)).collect();
            prop_assert_eq!(
                differing(want, &got),
                oracle_keys,
                "drift in {}",
                ENGINES[target]
            );
            datasets.set(datasets.get() + 1);
            rows_written.set(
                rows_written.get() + rows.len() as u64 * ENGINES.len() as u64 + after.len() as u64,
            );
            drifted_keys.set(drifted_keys.get() + oracle.len() as u64);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    drop_tables();
    eprintln!(
        "differential: {} datasets, {} rows written over {} engines, {} drifted keys found exactly",
        datasets.get(),
        rows_written.get(),
        ENGINES.len(),
        drifted_keys.get()
    );
}

/// A `(key, v)` table in every engine, the key in each engine's storage
/// type for the test (SQLite and the files hold its text).
struct KeyValueTable {
    family: &'static str,
    postgres: &'static str,
    mariadb: &'static str,
    mariadb_collation: &'static str,
    /// Whether JSONL writes the key as a number rather than a string.
    json_number: bool,
    chunk_rows: u64,
}

impl KeyValueTable {
    /// Writes `rows` (key text, value) into `engine`; its connector reads
    /// them through `mapping` (key column `k`, value column `v`).
    fn write(
        &self,
        engine: &str,
        dir: &TempDir,
        mapping: Mapping,
        rows: &[(String, String)],
    ) -> Box<dyn Source> {
        let name = table_in(self.family);
        let options = ScanOptions {
            chunk_rows: self.chunk_rows,
            ..ScanOptions::default()
        };
        match engine {
            "postgres" => {
                let url = env("ARBOR_TEST_POSTGRES_URL");
                let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                let key = self.postgres;
                pg.batch_execute(&format!(
                    "CREATE TABLE {name} (k {key} PRIMARY KEY, v text)"
                ))
                .unwrap();
                for (k, v) in rows {
                    pg.execute(
                        &format!("INSERT INTO {name} VALUES ($1::text::{key}, $2)"),
                        &[k, v],
                    )
                    .unwrap();
                }
                Box::new(PostgresSource::new(
                    url,
                    Relation::Table(name),
                    mapping,
                    options,
                ))
            }
            "mariadb" => {
                let url = env("ARBOR_TEST_MYSQL_URL");
                let mut my = mysql::Conn::new(mysql::Opts::from_url(&url).unwrap()).unwrap();
                my.query_drop(format!(
                    "CREATE TABLE {name} (k {} PRIMARY KEY, v TEXT){}",
                    self.mariadb, self.mariadb_collation
                ))
                .unwrap();
                for (k, v) in rows {
                    my.exec_drop(format!("INSERT INTO {name} VALUES (?, ?)"), (k, v))
                        .unwrap();
                }
                Box::new(MysqlSource::new(
                    url,
                    Relation::Table(name),
                    mapping,
                    options,
                ))
            }
            "sqlite" => {
                let path = dir.path().join(format!("{name}.db"));
                let c = rusqlite::Connection::open(&path).unwrap();
                c.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
                    .unwrap();
                for (k, v) in rows {
                    c.execute("INSERT INTO t VALUES (?1, ?2)", rusqlite::params![k, v])
                        .unwrap();
                }
                drop(c);
                Box::new(SqliteSource::open(&path, Relation::Table("t".into()), mapping).unwrap())
            }
            "csv" => {
                let path = dir.path().join(format!("{name}.csv"));
                let mut w = csv::Writer::from_path(&path).unwrap();
                w.write_record(["k", "v"]).unwrap();
                for (k, v) in rows {
                    w.write_record([k, v]).unwrap();
                }
                w.flush().unwrap();
                Box::new(FileSource::new(&path, Format::Csv, mapping, None))
            }
            "jsonl" => {
                use serde_json::Value as J;
                let path = dir.path().join(format!("{name}.jsonl"));
                let text: String = rows
                    .iter()
                    .map(|(k, v)| {
                        let k = if self.json_number {
                            serde_json::from_str::<J>(k).expect("a JSON number")
                        } else {
                            J::String(k.clone())
                        };
                        format!("{}\n", serde_json::json!({"k": k, "v": v}))
                    })
                    .collect();
                std::fs::write(&path, text).unwrap();
                Box::new(FileSource::new(&path, Format::Jsonl, mapping, None))
            }
            other => unreachable!("engine {other}"),
        }
    }
}

/// Key spellings: the normalised text keys below are one key however each
/// engine spells them (case, composed or decomposed accents, trailing
/// spaces), under `unicode = "nfc", trim_end = true, case = "lower"`.
mod normalised_keys {
    use super::*;
    use arbor_source::transform::{Case, Transforms, UnicodeForm};
    use unicode_normalization::UnicodeNormalization;

    /// Prefix of this test's tables.
    const FAMILY: &str = "dkey";

    /// A logical key (already in its normalised form) and its value.
    type Rows = BTreeMap<String, String>;

    /// How one engine spells one key: upper-case, decomposed, trailing
    /// spaces.
    type Spelling = (bool, bool, u8);

    fn mapping() -> Mapping {
        let mut k = ColumnMapping::new("k", "k", ValueKind::Text);
        k.transforms = Transforms {
            unicode: Some(UnicodeForm::Nfc),
            trim_end: true,
            case: Some(Case::Lower),
            ..Transforms::default()
        };
        Mapping::new(vec![k], vec![ColumnMapping::new("v", "v", ValueKind::Text)]).expect("mapping")
    }

    fn normal(s: &str) -> String {
        s.nfc()
            .collect::<String>()
            .trim_end_matches(' ')
            .to_lowercase()
    }

    fn spell(key: &str, (upper, decomposed, spaces): Spelling) -> String {
        let cased = if upper {
            key.to_uppercase()
        } else {
            key.to_owned()
        };
        let formed: String = if decomposed {
            cased.nfd().collect()
        } else {
            cased.nfc().collect()
        };
        format!("{formed}{}", " ".repeat(spaces.into()))
    }

    fn logical_key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("café".to_owned()),
            Just("zoë".to_owned()),
            Just("straße".to_owned()),
            Just("ångström".to_owned()),
            Just("a b".to_owned()),
            Just(String::new()),
            "[a-zé]{1,6}",
        ]
        // Keys are generated normalised; upper-casing `ß` gives `SS`,
        // which folds back to `ss`, another key: such keys are kept only
        // in their lower-case spelling (see `spelling`).
        .prop_map(|k| normal(&k))
    }

    fn spelling() -> impl Strategy<Value = Spelling> {
        (any::<bool>(), any::<bool>(), 0u8..3)
    }

    /// Spells `key` as told, unless its upper case is another key.
    fn spelled(key: &str, s: Spelling) -> String {
        let s = if normal(&key.to_uppercase()) == key {
            s
        } else {
            (false, s.1, s.2)
        };
        spell(key, s)
    }

    #[derive(Debug, Clone)]
    enum Drift {
        Change(usize),
        Delete(usize),
        Add(String),
        /// Another spelling of an existing key: no drift at all.
        Respell(usize, Spelling),
    }

    /// Rows, per engine spellings, the drift of one engine's copy, and
    /// whether that copy also gets a second spelling of one key.
    fn case() -> impl Strategy<Value = (Rows, Vec<Vec<Spelling>>, Vec<Drift>, usize, bool)> {
        proptest::collection::btree_map(logical_key(), "[a-z ]{0,5}", 1..12).prop_flat_map(|rows| {
            let n = rows.len();
            let drift = prop_oneof![
                (0..n).prop_map(Drift::Change),
                (0..n).prop_map(Drift::Delete),
                logical_key().prop_map(Drift::Add),
                (0..n, spelling()).prop_map(|(i, s)| Drift::Respell(i, s)),
            ];
            (
                Just(rows),
                proptest::collection::vec(proptest::collection::vec(spelling(), n), ENGINES.len()),
                proptest::collection::vec(drift, 0..4),
                0..ENGINES.len(),
                proptest::bool::weighted(0.2),
            )
        })
    }

    /// Writes rows spelled as given (key, value) into `engine`.
    fn write(engine: &str, dir: &TempDir, rows: &[(String, String)]) -> Box<dyn Source> {
        // A binary collation in MariaDB, so that `Bob` and `bob` may be two
        // rows (a duplicate under the transforms); its binary collations
        // pad, so trailing spaces alone never are.
        let shape = KeyValueTable {
            family: FAMILY,
            postgres: "text",
            mariadb: "VARCHAR(64)",
            mariadb_collation: " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
            json_number: false,
            chunk_rows: 2,
        };
        shape.write(engine, dir, mapping(), rows)
    }

    fn leaves(
        dir: &TempDir,
        source: &mut dyn Source,
    ) -> Result<BTreeMap<Vec<u8>, String>, arbor_index::IndexError> {
        try_leaves(dir, source, &mapping(), FAMILY)
    }

    fn key_bytes(key: &str) -> Vec<u8> {
        arbor_record::tuple_bytes(&[Value::text(key)])
    }

    #[test]
    fn every_engine_agrees_on_normalised_keys_however_spelled() {
        let mut runner = runner();
        let (datasets, refusals) = (std::cell::Cell::new(0u64), std::cell::Cell::new(0u64));
        runner
            .run(&case(), |(rows, spellings, drift, target, twice)| {
                let dir = TempDir::new().unwrap();
                drop_family(FAMILY);
                let keys: Vec<&String> = rows.keys().collect();
                let mut seen = Vec::new();
                for (e, engine) in ENGINES.iter().enumerate() {
                    let spelled_rows: Vec<(String, String)> = rows
                        .iter()
                        .zip(&spellings[e])
                        .map(|((k, v), &s)| (spelled(k, s), v.clone()))
                        .collect();
                    let mut source = write(engine, &dir, &spelled_rows);
                    let got =
                        leaves(&dir, source.as_mut()).unwrap_or_else(|e| panic!("{engine}: {e}"));
                    // Lookups by the normalised key find every spelling.
                    let mut wanted: Vec<Vec<Value>> =
                        keys.iter().map(|k| vec![Value::text(k.as_str())]).collect();
                    wanted.push(vec![Value::text("no such key")]);
                    let found = source.fetch(&wanted).unwrap();
                    for ((k, v), f) in rows.iter().zip(&found) {
                        let f = f
                            .as_ref()
                            .unwrap_or_else(|| panic!("{engine}: no row for {k:?}"));
                        prop_assert_eq!(&f.values, &vec![Value::text(v.as_str())], "{}", engine);
                    }
                    prop_assert!(found.last().unwrap().is_none());
                    seen.push((*engine, got));
                }
                let (first, want) = &seen[0];
                prop_assert_eq!(want.len(), rows.len());
                for (engine, got) in &seen[1..] {
                    prop_assert_eq!(got, want, "{} and {}", first, engine);
                }
                // Drift, in the target engine's spelling.
                let mut after: BTreeMap<String, (String, Spelling)> = rows
                    .iter()
                    .zip(&spellings[target])
                    .map(|((k, v), &s)| (k.clone(), (v.clone(), s)))
                    .collect();
                for d in &drift {
                    match d {
                        Drift::Change(i) => {
                            if let Some((v, _)) = after.get_mut(keys[*i]) {
                                v.push('!');
                            }
                        }
                        Drift::Delete(i) => {
                            after.remove(keys[*i]);
                        }
                        Drift::Add(k) => {
                            after
                                .entry(k.clone())
                                .or_insert(("added".into(), (true, true, 1)));
                        }
                        Drift::Respell(i, s) => {
                            if let Some((_, spelling)) = after.get_mut(keys[*i]) {
                                *spelling = *s;
                            }
                        }
                    }
                }
                let oracle: BTreeSet<Vec<u8>> = rows
                    .keys()
                    .chain(after.keys())
                    .filter(|k| rows.get(*k) != after.get(*k).map(|(v, _)| v))
                    .map(|k| key_bytes(k))
                    .collect();
                let mut written: Vec<(String, String)> = after
                    .iter()
                    .map(|(k, (v, s))| (spelled(k, *s), v.clone()))
                    .collect();
                // A second spelling of one key (other letter case): a
                // duplicate in the system, refused, never resolved by order.
                let again = written
                    .iter()
                    .find(|(k, _)| k.to_uppercase() != *k && normal(&k.to_uppercase()) == normal(k))
                    .map(|(k, v)| {
                        let other = if k.to_lowercase() == *k {
                            k.to_uppercase()
                        } else {
                            k.to_lowercase()
                        };
                        (other, format!("{v}?"))
                    });
                if let (true, Some(again)) = (twice, again) {
                    written.push(again);
                    let mut source = write(ENGINES[target], &dir, &written);
                    let e = leaves(&dir, source.as_mut()).expect_err("a key spelled twice");
                    prop_assert!(
                        matches!(e, arbor_index::IndexError::RepeatedKeys { .. }),
                        "{}: {}",
                        ENGINES[target],
                        e
                    );
                    refusals.set(refusals.get() + 1);
                } else {
                    let mut source = write(ENGINES[target], &dir, &written);
                    let got = leaves(&dir, source.as_mut()).unwrap();
                    prop_assert_eq!(
                        differing(want, &got),
                        oracle,
                        "drift in {}",
                        ENGINES[target]
                    );
                }
                datasets.set(datasets.get() + 1);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        drop_family(FAMILY);
        eprintln!(
            "differential (normalised keys): {} datasets over {} engines, {} duplicate spellings refused",
            datasets.get(),
            ENGINES.len(),
            refusals.get()
        );
    }
}

/// Unsigned 64-bit keys, as legacy schemas store them: MariaDB `BIGINT
/// UNSIGNED`, PostgreSQL `numeric(20,0)`, SQLite TEXT (its INTEGER stops at
/// 2^63 - 1), and plain numbers in CSV and JSONL; each database walked one
/// row per chunk, so every key is once a chunk's bound.
mod unsigned_keys {
    use super::*;

    const FAMILY: &str = "dunsigned";

    fn mapping() -> Mapping {
        Mapping::new(
            vec![ColumnMapping::new("k", "id", ValueKind::Integer)],
            vec![ColumnMapping::new("v", "v", ValueKind::Text)],
        )
        .expect("mapping")
    }

    fn key() -> impl Strategy<Value = u64> {
        const HALF: u64 = 1 << 63;
        prop_oneof![
            Just(0),
            Just(HALF - 1),
            Just(HALF),
            Just(HALF + 1),
            Just(u64::MAX - 1),
            Just(u64::MAX),
            any::<u64>(),
        ]
    }

    /// Writes `rows` into `engine`, keys in its unsigned storage type.
    fn write(engine: &str, dir: &TempDir, rows: &BTreeMap<u64, String>) -> Box<dyn Source> {
        let shape = KeyValueTable {
            family: FAMILY,
            postgres: "numeric(20,0)",
            mariadb: "BIGINT UNSIGNED",
            mariadb_collation: "",
            json_number: true,
            chunk_rows: 1,
        };
        let rows: Vec<(String, String)> = rows
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        shape.write(engine, dir, mapping(), &rows)
    }

    fn leaves(dir: &TempDir, source: &mut dyn Source) -> BTreeMap<Vec<u8>, String> {
        try_leaves(dir, source, &mapping(), FAMILY).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_engine_agrees_on_unsigned_keys_walked_one_row_per_chunk() {
        let case = (
            proptest::collection::btree_map(key(), "[a-z]{0,4}", 1..10),
            proptest::collection::vec((any::<bool>(), key()), 0..4),
            0..ENGINES.len(),
        );
        let mut runner = runner();
        let datasets = std::cell::Cell::new(0u64);
        runner
            .run(&case, |(rows, drift, target)| {
                let dir = TempDir::new().unwrap();
                drop_family(FAMILY);
                let mut seen = Vec::new();
                for engine in ENGINES {
                    let mut source = write(engine, &dir, &rows);
                    let got = leaves(&dir, source.as_mut());
                    let mut wanted: Vec<Vec<Value>> = rows
                        .keys()
                        .map(|&id| vec![Value::Integer(id.into())])
                        .collect();
                    wanted.push(vec![Value::Integer(-1)]);
                    let found = source.fetch(&wanted).unwrap();
                    for ((id, v), f) in rows.iter().zip(&found) {
                        let f = f
                            .as_ref()
                            .unwrap_or_else(|| panic!("{engine}: no row {id}"));
                        prop_assert_eq!(&f.values, &vec![Value::text(v.as_str())], "{}", engine);
                    }
                    prop_assert!(found.last().unwrap().is_none());
                    seen.push((engine, got));
                }
                let (first, want) = &seen[0];
                let expected: BTreeSet<Vec<u8>> = rows.keys().map(|&id| key_bytes(id)).collect();
                prop_assert_eq!(&want.keys().cloned().collect::<BTreeSet<_>>(), &expected);
                for (engine, got) in &seen[1..] {
                    prop_assert_eq!(got, want, "{} and {}", first, engine);
                }
                // Drift: a key deleted (if present) or added with a new value.
                let mut after = rows.clone();
                for (delete, id) in &drift {
                    if *delete {
                        after.remove(id);
                    } else {
                        after.insert(*id, "added".into());
                    }
                }
                let oracle: BTreeSet<Vec<u8>> = rows
                    .keys()
                    .chain(after.keys())
                    .filter(|id| rows.get(*id) != after.get(*id))
                    .map(|&id| key_bytes(id))
                    .collect();
                let mut source = write(ENGINES[target], &dir, &after);
                let got = leaves(&dir, source.as_mut());
                prop_assert_eq!(
                    differing(want, &got),
                    oracle,
                    "drift in {}",
                    ENGINES[target]
                );
                datasets.set(datasets.get() + 1);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
        drop_family(FAMILY);
        eprintln!(
            "differential (unsigned keys): {} datasets over {} engines",
            datasets.get(),
            ENGINES.len()
        );
    }
}
