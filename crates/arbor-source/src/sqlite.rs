//! SQLite, the embedded default: a dataset is a table or a query in a
//! database file, opened read-only and streamed row by row.
//!
//! SQLite stores values dynamically typed, so each value is read as its
//! column's declared kind, accepting only lossless representations:
//!
//! | kind      | accepted storage                                              |
//! |-----------|---------------------------------------------------------------|
//! | integer   | INTEGER, TEXT of a whole number (unsigned 64-bit values above 2^63) |
//! | bool      | INTEGER 0 or 1                                                |
//! | decimal   | TEXT (parsed exactly), INTEGER, REAL (its shortest decimal)   |
//! | float     | REAL, INTEGER                                                 |
//! | text      | TEXT                                                          |
//! | bytes     | BLOB                                                          |
//! | date      | TEXT `YYYY-MM-DD`                                             |
//! | timestamp | TEXT RFC 3339 or `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC if no offset), INTEGER Unix seconds |
//! | uuid      | TEXT (36 or 32 hex), BLOB of 16 bytes                         |
//! | json      | TEXT                                                          |
//!
//! NULL is NULL for every kind. Anything else is an error naming the column.

use std::path::{Path, PathBuf};

use arbor_record::value::{Date, Decimal, Timestamp, parse_uuid};
use arbor_record::{CanonicalJson, Record, Value, ValueKind};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use tracing::{debug, instrument};

use crate::mapping::{ColumnMapping, Mapping};
use crate::relation::Relation;
use crate::{Source, SourceError};

/// A dataset in a SQLite database file.
pub struct SqliteSource {
    path: PathBuf,
    relation: Relation,
    mapping: Mapping,
    conn: Connection,
    /// The relation as a FROM item.
    from: String,
    /// `SELECT key..., columns... FROM relation`
    select: String,
}

/// Quotes an identifier for SQLite.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl SqliteSource {
    /// Opens `path` read-only. The file must exist: a typo must not create
    /// an empty database that then "differs everywhere".
    pub fn open(
        path: impl AsRef<Path>,
        relation: Relation,
        mapping: Mapping,
    ) -> Result<SqliteSource, SourceError> {
        let path = path.as_ref().to_path_buf();
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(|e| SourceError::Open {
            what: format!("sqlite database {}", path.display()),
            reason: e.to_string(),
        })?;
        let from = match &relation {
            Relation::Table(t) => ident(t),
            Relation::Query(q) => format!("({q})"),
        };
        let cols: Vec<String> = mapping.all_columns().map(|c| ident(&c.source)).collect();
        let select = format!("SELECT {} FROM {from}", cols.join(", "));
        Ok(SqliteSource {
            path,
            relation,
            mapping,
            conn,
            from,
            select,
        })
    }

    fn dataset(&self) -> String {
        match &self.relation {
            Relation::Table(t) => format!("{}:{t}", self.path.display()),
            Relation::Query(_) => format!("{}:(query)", self.path.display()),
        }
    }

    /// SQLite reads a double-quoted name that matches no column as a string
    /// literal, so a misspelt column would silently become a constant:
    /// compare the mapping against the relation's real columns instead.
    fn verify_columns(&self) -> Result<(), SourceError> {
        let probe = format!("SELECT * FROM {} LIMIT 0", self.from);
        let schema_err = |problem: String| SourceError::Schema {
            dataset: self.dataset(),
            problem,
        };
        let stmt = self
            .conn
            .prepare(&probe)
            .map_err(|e| schema_err(e.to_string()))?;
        let names: Vec<String> = stmt.column_names().map(str::to_owned).collect();
        let present: Vec<String> = names.iter().map(|c| c.to_lowercase()).collect();
        for c in self.mapping.all_columns() {
            if !present.contains(&c.source.to_lowercase()) {
                return Err(schema_err(format!(
                    "column {:?} (mapped to {:?}) does not exist; the columns are {}",
                    c.source,
                    c.canonical(),
                    names.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The record of `row`, the `position`-th row of a scan (from 1), which
    /// names it in errors: by its key, or by position when the key is NULL.
    fn read_row(&self, row: &rusqlite::Row<'_>, position: u64) -> Result<Record, SourceError> {
        let key_len = self.mapping.key().len();
        let cols = self.mapping.all_columns();
        let mut values = Vec::with_capacity(key_len + self.mapping.columns().len());
        for (i, c) in cols.enumerate() {
            let value = self.value(row, i, c).map_err(|e| match e {
                SourceError::Value {
                    dataset,
                    column,
                    problem,
                } if i >= key_len && self.mapping.keys_shown() => SourceError::Value {
                    dataset: format!(
                        "{dataset}, row with key {}",
                        arbor_record::display_tuple(&values[..key_len])
                    ),
                    column,
                    problem,
                },
                e => e,
            })?;
            values.push(value);
        }
        self.mapping
            .record(values)
            .map_err(|column| SourceError::Value {
                dataset: format!("{}, row {position} of the scan", self.dataset()),
                column: column.to_owned(),
                problem: crate::NULL_KEY.into(),
            })
    }

    fn value(
        &self,
        row: &rusqlite::Row<'_>,
        idx: usize,
        c: &ColumnMapping,
    ) -> Result<Value, SourceError> {
        let raw = row.get_ref(idx).map_err(|e| SourceError::Read {
            dataset: self.dataset(),
            reason: e.to_string(),
        })?;
        convert(raw, c.kind).map_err(|problem| SourceError::Value {
            dataset: self.dataset(),
            column: c.source.clone(),
            problem,
        })
    }
}

fn storage(v: &ValueRef<'_>) -> &'static str {
    match v {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "INTEGER",
        ValueRef::Real(_) => "REAL",
        ValueRef::Text(_) => "TEXT",
        ValueRef::Blob(_) => "BLOB",
    }
}

fn text(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|_| "TEXT is not valid UTF-8".to_string())
}

/// Reads one SQLite value as `kind` (see the module table).
pub fn convert(v: ValueRef<'_>, kind: ValueKind) -> Result<Value, String> {
    let wrong = || format!("expected {kind}, found {}", storage(&v));
    Ok(match (kind, v) {
        (_, ValueRef::Null) => Value::Null,
        (ValueKind::Integer, ValueRef::Integer(i)) => Value::Integer(i.into()),
        // SQLite's INTEGER stops at 2^63 - 1: a legacy table keeps unsigned
        // 64-bit values as TEXT. Read exactly; never through a REAL.
        (ValueKind::Integer, ValueRef::Text(t)) => {
            let t = text(t)?;
            Value::Integer(
                t.parse::<i128>()
                    .map_err(|_| format!("expected integer, found TEXT {t:?}"))?,
            )
        }
        (ValueKind::Bool, ValueRef::Integer(0)) => Value::Bool(false),
        (ValueKind::Bool, ValueRef::Integer(1)) => Value::Bool(true),
        (ValueKind::Decimal, ValueRef::Integer(i)) => {
            Value::Decimal(Decimal::parse(&i.to_string()).map_err(|e| e.to_string())?)
        }
        (ValueKind::Decimal, ValueRef::Real(x)) => {
            Value::Decimal(Decimal::parse(&format!("{x:?}")).map_err(|e| e.to_string())?)
        }
        (ValueKind::Decimal, ValueRef::Text(t)) => {
            Value::Decimal(Decimal::parse(text(t)?).map_err(|e| e.to_string())?)
        }
        (ValueKind::Float, ValueRef::Real(x)) => Value::float(x),
        (ValueKind::Float, ValueRef::Integer(i)) => Value::float(i as f64),
        (ValueKind::Text, ValueRef::Text(t)) => Value::Text(text(t)?.to_owned()),
        (ValueKind::Bytes, ValueRef::Blob(b)) => Value::Bytes(b.to_vec()),
        (ValueKind::Date, ValueRef::Text(t)) => {
            Value::Date(Date::parse(text(t)?).map_err(|e| e.to_string())?)
        }
        (ValueKind::Timestamp, ValueRef::Text(t)) => {
            Value::Timestamp(Timestamp::parse(text(t)?).map_err(|e| e.to_string())?)
        }
        (ValueKind::Timestamp, ValueRef::Integer(s)) => Value::Timestamp(Timestamp(
            s.checked_mul(1_000_000)
                .ok_or_else(|| format!("{s} seconds overflow a timestamp"))?,
        )),
        (ValueKind::Uuid, ValueRef::Text(t)) => {
            Value::Uuid(parse_uuid(text(t)?).map_err(|e| e.to_string())?)
        }
        (ValueKind::Uuid, ValueRef::Blob(b)) => Value::Uuid(
            b.try_into()
                .map_err(|_| format!("uuid BLOB has {} bytes, expected 16", b.len()))?,
        ),
        (ValueKind::Json, ValueRef::Text(t)) => {
            Value::Json(CanonicalJson::parse(text(t)?).map_err(|e| e.to_string())?)
        }
        (ValueKind::Bool, ValueRef::Integer(i)) => {
            return Err(format!("expected bool (0 or 1), found {i}"));
        }
        _ => return Err(wrong()),
    })
}

impl Source for SqliteSource {
    fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    fn check(&mut self) -> Result<(), SourceError> {
        self.verify_columns()
    }

    #[instrument(skip_all, fields(dataset = %self.dataset()))]
    fn scan(
        &mut self,
        visit: &mut dyn FnMut(Record) -> Result<(), SourceError>,
    ) -> Result<u64, SourceError> {
        let read_err = |e: rusqlite::Error| SourceError::Read {
            dataset: self.dataset(),
            reason: e.to_string(),
        };
        self.verify_columns()?;
        let mut stmt = self
            .conn
            .prepare(&self.select)
            .map_err(|e| SourceError::Schema {
                dataset: self.dataset(),
                problem: e.to_string(),
            })?;
        let mut rows = stmt.query([]).map_err(read_err)?;
        let mut n = 0u64;
        while let Some(row) = rows.next().map_err(read_err)? {
            n += 1;
            visit(self.read_row(row, n)?)?;
        }
        debug!(rows = n, "scan finished");
        Ok(n)
    }

    fn changed_since(
        &mut self,
        column: &str,
        since: Option<&str>,
        visit: &mut dyn FnMut(Record) -> Result<(), SourceError>,
    ) -> Result<Option<String>, SourceError> {
        self.verify_columns()?;
        let read_err = |e: rusqlite::Error| SourceError::Read {
            dataset: self.dataset(),
            reason: e.to_string(),
        };
        let cols: Vec<String> = self
            .mapping
            .all_columns()
            .map(|c| ident(&c.source))
            .collect();
        let filter = if since.is_some() {
            format!(" WHERE {} >= ?1", ident(column))
        } else {
            String::new()
        };
        let sql = format!(
            "SELECT {}, {} FROM {}{filter} ORDER BY {}",
            cols.join(", "),
            ident(column),
            self.from,
            ident(column)
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| SourceError::Schema {
            dataset: self.dataset(),
            problem: e.to_string(),
        })?;
        let mut rows = match since {
            Some(s) => stmt.query([s]).map_err(read_err)?,
            None => stmt.query([]).map_err(read_err)?,
        };
        let mut last = None;
        let mut polled = 0;
        let n = cols.len();
        while let Some(row) = rows.next().map_err(read_err)? {
            let mark = match row.get_ref(n).map_err(read_err)? {
                ValueRef::Null => None,
                ValueRef::Integer(i) => Some(i.to_string()),
                ValueRef::Real(x) => Some(x.to_string()),
                ValueRef::Text(t) | ValueRef::Blob(t) => {
                    Some(String::from_utf8_lossy(t).into_owned())
                }
            };
            polled += 1;
            visit(self.read_row(row, polled)?)?;
            if mark.is_some() {
                last = mark;
            }
        }
        Ok(last.or_else(|| since.map(str::to_owned)))
    }

    fn fetch(&mut self, keys: &[Vec<Value>]) -> Result<Vec<Option<Record>>, SourceError> {
        if self.mapping.normalises_keys() {
            return crate::fetch_by_scan(self, keys);
        }
        self.verify_columns()?;
        let cond: Vec<String> = self
            .mapping
            .key()
            .iter()
            .map(|c| format!("{} = ?", ident(&c.source)))
            .collect();
        let sql = format!(
            "SELECT * FROM ({}) WHERE {}",
            self.select,
            cond.join(" AND ")
        );
        let read_err = |e: rusqlite::Error| SourceError::Read {
            dataset: self.dataset(),
            reason: e.to_string(),
        };
        let mut stmt = self.conn.prepare(&sql).map_err(read_err)?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let params: Vec<rusqlite::types::Value> = key
                .iter()
                .map(key_param)
                .collect::<Result<_, _>>()
                .map_err(|problem| SourceError::Value {
                    dataset: self.dataset(),
                    column: "(key)".into(),
                    problem,
                })?;
            let mut rows = stmt
                .query(rusqlite::params_from_iter(params))
                .map_err(read_err)?;
            out.push(match rows.next().map_err(read_err)? {
                Some(row) => Some(self.read_row(row, 1)?),
                None => None,
            });
        }
        Ok(out)
    }
}

/// A key value as a SQLite parameter (key kinds only).
fn key_param(v: &Value) -> Result<rusqlite::types::Value, String> {
    use rusqlite::types::Value as S;
    Ok(match v {
        // Beyond 64-bit signed, a key can only be stored as TEXT (see
        // `convert`); compared as text, it finds exactly that row.
        Value::Integer(i) => match i64::try_from(*i) {
            Ok(i) => S::Integer(i),
            Err(_) => S::Text(i.to_string()),
        },
        Value::Text(t) => S::Text(t.clone()),
        Value::Uuid(u) => S::Text(arbor_record::value::format_uuid(u)),
        other => return Err(format!("{other} cannot be a key")),
    })
}

/// Repairs written into a SQLite table (see [`crate::sink`]).
///
/// Writes go through a read-write connection in `BEGIN IMMEDIATE`
/// transactions: the write lock is taken first, so the rows read to check
/// each write cannot change before the batch commits.
pub struct SqliteSink {
    conn: Connection,
    reader: SqliteSource,
    statements: crate::sink::Statements,
    dataset: String,
}

impl SqliteSink {
    /// Opens the table of `relation` for repairs. The file must exist, and
    /// the dataset must be a table (a query cannot be written to).
    pub fn open(
        path: impl AsRef<Path>,
        relation: Relation,
        mapping: Mapping,
    ) -> Result<SqliteSink, SourceError> {
        let path = path.as_ref().to_path_buf();
        let table = crate::sink::target_table(relation.clone(), &path.display().to_string())?;
        let statements =
            crate::sink::Statements::new(crate::sink::Dialect::Sqlite, &table, mapping.clone());
        let mut reader = SqliteSource::open(&path, relation.clone(), mapping)?;
        crate::Source::check(&mut reader)?;
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| SourceError::Open {
            what: format!("sqlite database {} (read-write)", path.display()),
            reason: e.to_string(),
        })?;
        // Wait for other writers rather than fail at once.
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| SourceError::Open {
                what: format!("sqlite database {}", path.display()),
                reason: e.to_string(),
            })?;
        Ok(SqliteSink {
            dataset: reader.dataset(),
            conn,
            reader,
            statements,
        })
    }
}

impl crate::sink::Sink for SqliteSink {
    fn apply(
        &mut self,
        writes: &[crate::sink::Write],
        keys: &arbor_record::DatasetKeys,
    ) -> Result<Vec<crate::sink::Outcome>, SourceError> {
        crate::sink::check_batch(crate::Source::mapping(&self.reader), writes, &self.dataset)?;
        let dataset = self.dataset.clone();
        let write_err = |e: rusqlite::Error| SourceError::Write {
            dataset: dataset.clone(),
            reason: e.to_string(),
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(write_err)?;
        let wanted: Vec<Vec<Value>> = writes.iter().map(|w| w.key.clone()).collect();
        // Committed state, read while this transaction holds the write lock.
        let current = crate::Source::fetch(&mut self.reader, &wanted)?;
        let decided =
            crate::sink::decide(keys, crate::Source::mapping(&self.reader), writes, &current);
        for ((w, (_, run)), cur) in writes.iter().zip(&decided).zip(&current) {
            if *run {
                let sql = self.statements.statement(w, cur.is_some()).map_err(|p| {
                    SourceError::Value {
                        dataset: self.dataset.clone(),
                        column: "(write)".into(),
                        problem: p.to_string(),
                    }
                })?;
                tx.execute_batch(&sql).map_err(write_err)?;
            }
        }
        tx.commit().map_err(write_err)?;
        Ok(decided.into_iter().map(|(o, _)| o).collect())
    }

    fn render(&self, write: &crate::sink::Write) -> Result<String, SourceError> {
        self.statements
            .planned_statement(write)
            .map_err(|p| SourceError::Value {
                dataset: self.dataset.clone(),
                column: "(write)".into(),
                problem: p.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::ColumnMapping;

    fn mapping() -> Mapping {
        Mapping::new(
            vec![ColumnMapping::new("id", "id", ValueKind::Integer)],
            vec![
                ColumnMapping::new("name", "name", ValueKind::Text),
                ColumnMapping::new("balance", "balance", ValueKind::Decimal),
                ColumnMapping::new("seen", "seen_at", ValueKind::Timestamp),
            ],
        )
        .unwrap()
    }

    fn db(dir: &tempfile::TempDir) -> PathBuf {
        let path = dir.path().join("crm.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, balance NUMERIC, seen TEXT);
             INSERT INTO customers VALUES (1, 'Ada', '10.50', '2024-01-01 10:00:00');
             INSERT INTO customers VALUES (2, NULL, 3, '2024-01-02T10:00:00+01:00');
             INSERT INTO customers VALUES (3, '', 2.25, NULL);",
        )
        .unwrap();
        path
    }

    #[test]
    fn scans_and_fetches_through_the_mapping() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut s =
            SqliteSource::open(db(&dir), Relation::Table("customers".into()), mapping()).unwrap();
        s.check().unwrap();
        let mut got = Vec::new();
        assert_eq!(
            s.scan(&mut |r| {
                got.push(r);
                Ok(())
            })
            .unwrap(),
            3
        );
        // Canonical order: balance, name, seen_at.
        assert_eq!(
            got[0].values[0],
            Value::Decimal(Decimal::parse("10.5").unwrap())
        );
        assert_eq!(got[0].values[1], Value::text("Ada"));
        assert_eq!(got[1].values[1], Value::Null);
        assert_eq!(got[2].values[1], Value::text(""));
        assert_eq!(
            got[1].values[2],
            Value::Timestamp(Timestamp::parse("2024-01-02T09:00:00Z").unwrap())
        );
        let fetched = s
            .fetch(&[vec![Value::Integer(2)], vec![Value::Integer(9)]])
            .unwrap();
        assert_eq!(fetched[0].as_ref(), Some(&got[1]));
        assert_eq!(fetched[1], None);
    }

    #[test]
    fn errors_name_what_and_where() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = db(&dir);
        let missing = SqliteSource::open(
            dir.path().join("nope.db"),
            Relation::Table("t".into()),
            mapping(),
        );
        assert!(matches!(missing, Err(SourceError::Open { .. })));
        let bad_col = Mapping::new(
            vec![ColumnMapping::new("id", "id", ValueKind::Integer)],
            vec![ColumnMapping::new("emial", "email", ValueKind::Text)],
        )
        .unwrap();
        let mut s =
            SqliteSource::open(&path, Relation::Table("customers".into()), bad_col).unwrap();
        let err = s.check().unwrap_err().to_string();
        assert!(err.contains("emial"), "{err}");
        let wrong_kind = Mapping::new(
            vec![ColumnMapping::new("id", "id", ValueKind::Integer)],
            vec![ColumnMapping::new("name", "name", ValueKind::Integer)],
        )
        .unwrap();
        let mut s =
            SqliteSource::open(&path, Relation::Table("customers".into()), wrong_kind).unwrap();
        let err = s.scan(&mut |_| Ok(())).unwrap_err().to_string();
        assert!(
            err.contains("\"name\"")
                && err.contains("expected integer, found TEXT")
                && err.contains("row with key 1"),
            "{err}"
        );
        // A NULL key (sorted first) is named by its row's place in the scan.
        let mut s = SqliteSource::open(
            &path,
            Relation::Query("SELECT NULLIF(id, 2) AS id, name FROM customers ORDER BY id".into()),
            Mapping::new(
                vec![ColumnMapping::new("id", "id", ValueKind::Integer)],
                vec![ColumnMapping::new("name", "name", ValueKind::Text)],
            )
            .unwrap(),
        )
        .unwrap();
        let err = s.scan(&mut |_| Ok(())).unwrap_err().to_string();
        assert!(
            err.contains("row 1 of the scan") && err.contains("NULL"),
            "{err}"
        );
    }

    #[test]
    fn queries_are_datasets_too() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut s = SqliteSource::open(
            db(&dir),
            Relation::Query(
                "SELECT id, upper(name) AS name, balance, seen FROM customers WHERE id < 3".into(),
            ),
            mapping(),
        )
        .unwrap();
        let mut n = 0;
        s.scan(&mut |r| {
            if r.key[0] == Value::Integer(1) {
                assert_eq!(r.values[1], Value::text("ADA"));
            }
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 2);
    }
}
