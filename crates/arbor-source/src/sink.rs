//! Sinks: repaired records written back into a system, each write
//! conditional on the row the plan saw.
//!
//! A [`Write`] carries the digest the plan expected the target row to have
//! (`None`: absent). Inside one short transaction the sink locks and reads
//! the current rows, hashes them like the index does, and per write:
//!
//! | current digest        | outcome                                   |
//! |-----------------------|-------------------------------------------|
//! | = expected            | written ([`Outcome::Applied`])            |
//! | = the write's result  | nothing to do ([`Outcome::AlreadyApplied`]) |
//! | anything else         | skipped ([`Outcome::Conflict`]): the row changed since the plan |
//!
//! The middle row makes a batch idempotent: replayed after a crash, writes
//! that already landed are recognised instead of applied twice, and a row
//! someone changed meanwhile is never overwritten. A batch either commits
//! whole or not at all.
//!
//! Values are written as SQL literals the database coerces to the column's
//! type (the same text forms [`crate::text`] reads back), so the plan can be
//! printed as the exact SQL that would run.

use arbor_record::value::format_uuid;
use arbor_record::{DatasetKeys, Digest, Record, Value};

use crate::SourceError;
use crate::mapping::Mapping;

/// What a write does to its row.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Make the row hold this record (insert or update).
    Upsert(Record),
    /// Remove the row.
    Delete,
}

/// One planned write.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// The row's key, in key order.
    pub key: Vec<Value>,
    /// The digest the plan saw on the target (`None`: no row).
    pub expected: Option<Digest>,
    /// What to do.
    pub change: Change,
    /// When the change was made on the side it comes from (µs since the
    /// Unix epoch): the time the written side's index records for it, so
    /// that a copied row or a carried delete keeps its own time rather than
    /// the repair's. `None`: not known. Sinks do not read it.
    pub made_at_us: Option<i64>,
}

/// What became of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written.
    Applied,
    /// The row already was as the write would leave it.
    AlreadyApplied,
    /// The row changed since the plan: left alone.
    Conflict {
        /// Its digest now (`None`: absent).
        current: Option<Digest>,
    },
}

/// A system that repairs can write to.
pub trait Sink: Send {
    /// Applies `writes` in one transaction, each only if its row is as
    /// planned: its current digest, under `keys` (those of the compare that
    /// planned the writes, which during a key rotation are not always the
    /// dataset's first key), equals the expected one. An outcome per write,
    /// in order. On error nothing of the batch was written.
    fn apply(&mut self, writes: &[Write], keys: &DatasetKeys) -> Result<Vec<Outcome>, SourceError>;

    /// The SQL statement a write would run (for dry runs).
    fn render(&self, write: &Write) -> Result<String, SourceError>;
}

/// The SQL flavour of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MySQL and MariaDB.
    Mysql,
    /// SQLite.
    Sqlite,
}

/// A value no SQL literal of the dialect can carry.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum LiteralError {
    /// An infinite or NaN float: SQLite and MySQL hold neither.
    #[error("{0} cannot be stored in this database")]
    NonFinite(f64),
}

impl Dialect {
    /// Quotes an identifier.
    pub fn ident(self, name: &str) -> String {
        match self {
            Dialect::Mysql => format!("`{}`", name.replace('`', "``")),
            _ => format!("\"{}\"", name.replace('"', "\"\"")),
        }
    }

    /// A table name, schema-qualified or not.
    pub fn table(self, name: &str) -> String {
        name.split('.')
            .map(|p| self.ident(p))
            .collect::<Vec<_>>()
            .join(".")
    }

    fn string(self, s: &str) -> String {
        match self {
            // MySQL reads backslashes as escapes unless told otherwise.
            Dialect::Mysql => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''")),
            _ => format!("'{}'", s.replace('\'', "''")),
        }
    }

    /// A value as a literal the database coerces to the column's type.
    pub fn literal(self, v: &Value) -> Result<String, LiteralError> {
        Ok(match v {
            Value::Null => "NULL".into(),
            Value::Bool(b) => match self {
                Dialect::Postgres => if *b { "true" } else { "false" }.into(),
                _ => if *b { "1" } else { "0" }.into(),
            },
            Value::Integer(i) => match self {
                // Quoted, so PostgreSQL coerces it to the column's type.
                Dialect::Postgres => format!("'{i}'"),
                _ => i.to_string(),
            },
            Value::Decimal(d) => match self {
                Dialect::Sqlite => self.string(d.as_str()),
                _ => format!("'{}'", d.as_str()),
            },
            Value::Float(x) => {
                let x = x.get();
                if x.is_finite() {
                    format!("{x:?}")
                } else if self == Dialect::Postgres {
                    let t = if x.is_nan() {
                        "NaN"
                    } else if x > 0.0 {
                        "Infinity"
                    } else {
                        "-Infinity"
                    };
                    format!("'{t}'")
                } else {
                    return Err(LiteralError::NonFinite(x));
                }
            }
            Value::Text(s) => self.string(s),
            Value::Bytes(b) => match self {
                Dialect::Postgres => format!("'\\x{}'", hex::encode(b)),
                _ => format!("X'{}'", hex::encode(b)),
            },
            Value::Date(d) => format!("'{d}'"),
            Value::Timestamp(t) => {
                // RFC 3339 UTC; MySQL wants a space and no zone.
                let s = t.to_string();
                match self {
                    Dialect::Mysql => {
                        format!("'{}'", s.trim_end_matches('Z').replacen('T', " ", 1))
                    }
                    _ => format!("'{s}'"),
                }
            }
            Value::Uuid(u) => format!("'{}'", format_uuid(u)),
            Value::Json(j) => self.string(j.as_str()),
        })
    }
}

/// The statements of writes against one table, and the conditional logic
/// every dialect shares.
#[derive(Debug, Clone)]
pub struct Statements {
    dialect: Dialect,
    table: String,
    mapping: Mapping,
    /// Mapped value columns stored as 16 raw bytes (MySQL `binary(16)`
    /// uuids): written as `X'…'`.
    binary_uuid: Vec<bool>,
}

impl Statements {
    /// Statements for `table` (unquoted, maybe schema-qualified).
    pub fn new(dialect: Dialect, table: &str, mapping: Mapping) -> Statements {
        let n = mapping.key().len() + mapping.columns().len();
        Statements {
            dialect,
            table: dialect.table(table),
            mapping,
            binary_uuid: vec![false; n],
        }
    }

    /// Marks mapped columns (select-list order) whose uuids are raw bytes.
    pub fn with_binary_uuids(mut self, flags: Vec<bool>) -> Statements {
        if flags.len() == self.binary_uuid.len() {
            self.binary_uuid = flags;
        }
        self
    }

    /// The dialect.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn lit(&self, column: usize, v: &Value) -> Result<String, LiteralError> {
        match v {
            Value::Uuid(u) if self.binary_uuid.get(column).copied().unwrap_or(false) => {
                Ok(format!("X'{}'", hex::encode(u)))
            }
            _ => self.dialect.literal(v),
        }
    }

    fn where_key(&self, key: &[Value]) -> Result<String, LiteralError> {
        let parts = self
            .mapping
            .key()
            .iter()
            .zip(key)
            .enumerate()
            .map(|(i, (c, v))| {
                Ok(format!(
                    "{} = {}",
                    self.dialect.ident(&c.source),
                    self.lit(i, v)?
                ))
            })
            .collect::<Result<Vec<_>, LiteralError>>()?;
        Ok(parts.join(" AND "))
    }

    /// The select list: key columns, then value columns.
    pub fn columns(&self) -> String {
        self.mapping
            .all_columns()
            .map(|c| self.dialect.ident(&c.source))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `SELECT … WHERE key IN (…)` for the given keys, locking the rows
    /// where the dialect can.
    pub fn select_current(&self, keys: &[&[Value]]) -> Result<String, LiteralError> {
        let lock = match self.dialect {
            Dialect::Sqlite => "",
            _ => " FOR UPDATE",
        };
        Ok(format!(
            "SELECT {} FROM {} WHERE {}{lock}",
            self.columns(),
            self.table,
            keys_condition(self.dialect, &self.mapping, keys)?
        ))
    }

    /// The statement of a write, given whether its row exists now.
    pub fn statement(&self, write: &Write, exists: bool) -> Result<String, LiteralError> {
        let nkey = self.mapping.key().len();
        match (&write.change, exists) {
            (Change::Delete, _) => Ok(format!(
                "DELETE FROM {} WHERE {}",
                self.table,
                self.where_key(&write.key)?
            )),
            (Change::Upsert(r), true) => {
                if self.mapping.columns().is_empty() {
                    // Nothing but the key: the row is already right.
                    return Ok(format!(
                        "SELECT 1 FROM {} WHERE {}",
                        self.table,
                        self.where_key(&write.key)?
                    ));
                }
                let stored = self.mapping.to_stored(&r.values);
                let sets = self
                    .mapping
                    .columns()
                    .iter()
                    .zip(&stored)
                    .enumerate()
                    .map(|(i, (c, v))| {
                        Ok(format!(
                            "{} = {}",
                            self.dialect.ident(&c.source),
                            self.lit(nkey + i, v)?
                        ))
                    })
                    .collect::<Result<Vec<_>, LiteralError>>()?;
                Ok(format!(
                    "UPDATE {} SET {} WHERE {}",
                    self.table,
                    sets.join(", "),
                    self.where_key(&write.key)?
                ))
            }
            (Change::Upsert(r), false) => {
                let stored = self.mapping.to_stored(&r.values);
                let values = r
                    .key
                    .iter()
                    .chain(&stored)
                    .enumerate()
                    .map(|(i, v)| self.lit(i, v))
                    .collect::<Result<Vec<_>, LiteralError>>()?;
                Ok(format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    self.table,
                    self.columns(),
                    values.join(", ")
                ))
            }
        }
    }

    /// The statement a write runs when its row is as planned.
    pub fn planned_statement(&self, write: &Write) -> Result<String, LiteralError> {
        self.statement(write, write.expected.is_some())
    }
}

/// A condition matching exactly these keys: `k IN (…)` for a one-column
/// key (an index range lookup in every engine), else `(a = … AND b = …) OR …`.
pub fn keys_condition(
    dialect: Dialect,
    mapping: &Mapping,
    keys: &[&[Value]],
) -> Result<String, LiteralError> {
    keys_condition_with(dialect, mapping, keys, |_, v| Ok(vec![dialect.literal(v)?]))
}

/// [`keys_condition`] where a key value may be stored in several forms:
/// `forms(column, value)` gives the literals that match it in key column
/// `column` (`k IN (…every form of every key…)` for a one-column key).
pub fn keys_condition_with(
    dialect: Dialect,
    mapping: &Mapping,
    keys: &[&[Value]],
    forms: impl Fn(usize, &Value) -> Result<Vec<String>, LiteralError>,
) -> Result<String, LiteralError> {
    let cols = mapping.key();
    if keys.is_empty() {
        return Ok("1 = 0".into());
    }
    let matches = |column: usize, v: &Value| -> Result<String, LiteralError> {
        let forms = forms(column, v)?;
        let name = dialect.ident(&cols[column].source);
        Ok(match forms.as_slice() {
            [one] => format!("{name} = {one}"),
            _ => format!("{name} IN ({})", forms.join(", ")),
        })
    };
    if cols.len() == 1 {
        let list = keys
            .iter()
            .map(|k| forms(0, &k[0]))
            .collect::<Result<Vec<_>, _>>()?
            .concat();
        return Ok(format!(
            "{} IN ({})",
            dialect.ident(&cols[0].source),
            list.join(", ")
        ));
    }
    let conds = keys
        .iter()
        .map(|k| {
            let parts = (0..cols.len())
                .zip(k.iter())
                .map(|(i, v)| matches(i, v))
                .collect::<Result<Vec<_>, LiteralError>>()?;
            Ok(format!("({})", parts.join(" AND ")))
        })
        .collect::<Result<Vec<_>, LiteralError>>()?;
    Ok(conds.join(" OR "))
}

/// What a database sink writes to: the table, and the context its errors
/// name it by (`shown:table`; `shown` is the url without its password).
pub(crate) fn target(
    shown: &str,
    relation: crate::relation::Relation,
    mapping: Mapping,
) -> Result<(String, crate::keyset::ChunkContext), SourceError> {
    let table = target_table(relation, shown)?;
    let context = crate::keyset::ChunkContext {
        mapping,
        dataset: format!("{shown}:{table}"),
    };
    Ok((table, context))
}

/// The table a repair writes to: a dataset read through a query (or a
/// filter) cannot be written back. `dataset` names it in the error.
pub fn target_table(
    relation: crate::relation::Relation,
    dataset: &str,
) -> Result<String, SourceError> {
    match relation {
        crate::relation::Relation::Table(t) => Ok(t),
        crate::relation::Relation::Query(_) => Err(SourceError::Schema {
            dataset: format!("{dataset}:(query)"),
            problem: "a query cannot be a repair target; name the table (without a filter)".into(),
        }),
    }
}

/// Per write, its outcome and whether to run its statement, given the rows
/// as they are now (by write, in order).
pub fn decide(
    keys: &DatasetKeys,
    mapping: &Mapping,
    writes: &[Write],
    current: &[Option<Record>],
) -> Vec<(Outcome, bool)> {
    let mut scratch = Vec::new();
    writes
        .iter()
        .zip(current)
        .map(|(w, cur)| {
            let now = cur.as_ref().map(|r| r.hash(keys, &mut scratch).digest);
            // Writes carry values as stored; rows are read compared.
            let after = match &w.change {
                Change::Upsert(r) => {
                    Some(mapping.compared(r.clone()).hash(keys, &mut scratch).digest)
                }
                Change::Delete => None,
            };
            if now == after {
                (Outcome::AlreadyApplied, false)
            } else if now == w.expected {
                (Outcome::Applied, true)
            } else {
                (Outcome::Conflict { current: now }, false)
            }
        })
        .collect()
}

/// Checks a batch before any of it runs: every key complete, no key twice
/// (one transaction cannot apply two plans to one row).
pub fn check_batch(mapping: &Mapping, writes: &[Write], dataset: &str) -> Result<(), SourceError> {
    let mut seen = std::collections::HashSet::new();
    for w in writes {
        if w.key.len() != mapping.key().len() {
            return Err(SourceError::Value {
                dataset: dataset.to_owned(),
                column: "(key)".into(),
                problem: format!(
                    "a write has {} key values, the key has {} columns",
                    w.key.len(),
                    mapping.key().len()
                ),
            });
        }
        if let Change::Upsert(r) = &w.change
            && (r.key != w.key || r.values.len() != mapping.columns().len())
        {
            return Err(SourceError::Value {
                dataset: dataset.to_owned(),
                column: "(record)".into(),
                problem: "a write's record does not match its key or the mapped columns".into(),
            });
        }
        if !seen.insert(arbor_record::tuple_bytes(&w.key)) {
            return Err(SourceError::Value {
                dataset: dataset.to_owned(),
                column: "(key)".into(),
                problem: "a batch names one key twice".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ColumnMapping;
    use arbor_record::ValueKind;

    fn mapping() -> Mapping {
        Mapping::new(
            vec![ColumnMapping::new("id", "id", ValueKind::Integer)],
            vec![
                ColumnMapping::new("name", "name", ValueKind::Text),
                ColumnMapping::new("at", "at", ValueKind::Timestamp),
            ],
        )
        .unwrap()
    }

    fn rec(id: i128, name: &str) -> Record {
        Record::new(
            vec![Value::Integer(id)],
            // Canonical column order: sorted by name.
            vec![
                Value::Timestamp(arbor_record::value::Timestamp(1_500_000)),
                Value::text(name),
            ],
        )
    }

    #[test]
    fn writes_decide_by_the_digest_they_expected() {
        let keys = DatasetKeys::derive(b"s");
        let digest = |r: &Record| r.hash(&keys, &mut Vec::new()).digest;
        let (old, new) = (rec(1, "old"), rec(1, "new"));
        let w = Write {
            key: vec![Value::Integer(1)],
            expected: Some(digest(&old)),
            change: Change::Upsert(new.clone()),
            made_at_us: None,
        };
        let got = decide(
            &keys,
            &mapping(),
            &[w.clone(), w.clone(), w.clone(), w],
            &[Some(old), Some(new), Some(rec(1, "someone else")), None],
        );
        assert_eq!(got[0], (Outcome::Applied, true));
        assert_eq!(got[1], (Outcome::AlreadyApplied, false));
        assert!(matches!(
            got[2],
            (Outcome::Conflict { current: Some(_) }, false)
        ));
        assert_eq!(got[3], (Outcome::Conflict { current: None }, false));
        // A delete of a row already gone is done.
        let del = Write {
            key: vec![Value::Integer(2)],
            expected: Some(digest(&rec(2, "x"))),
            change: Change::Delete,
            made_at_us: None,
        };
        assert_eq!(
            decide(&keys, &mapping(), &[del], &[None])[0],
            (Outcome::AlreadyApplied, false)
        );
    }

    #[test]
    fn statements_quote_per_dialect() {
        let w = Write {
            key: vec![Value::Integer(7)],
            expected: None,
            change: Change::Upsert(rec(7, "o'brien \\ co")),
            made_at_us: None,
        };
        let pg = Statements::new(Dialect::Postgres, "crm.customers", mapping());
        assert_eq!(
            pg.planned_statement(&w).unwrap(),
            "INSERT INTO \"crm\".\"customers\" (\"id\", \"at\", \"name\") VALUES ('7', '1970-01-01T00:00:01.500000Z', 'o''brien \\ co')"
        );
        let my = Statements::new(Dialect::Mysql, "customers", mapping());
        assert_eq!(
            my.statement(&w, true).unwrap(),
            "UPDATE `customers` SET `at` = '1970-01-01 00:00:01.500000', `name` = 'o''brien \\\\ co' WHERE `id` = 7"
        );
        let del = Write {
            change: Change::Delete,
            ..w
        };
        assert_eq!(
            Statements::new(Dialect::Sqlite, "t", mapping())
                .planned_statement(&del)
                .unwrap(),
            "DELETE FROM \"t\" WHERE \"id\" = 7"
        );
        assert_eq!(
            pg.select_current(&[&[Value::Integer(1)], &[Value::Integer(2)]])
                .unwrap(),
            "SELECT \"id\", \"at\", \"name\" FROM \"crm\".\"customers\" WHERE \"id\" IN ('1', '2') FOR UPDATE"
        );
    }

    #[test]
    fn a_batch_naming_a_key_twice_is_refused() {
        let w = Write {
            key: vec![Value::Integer(1)],
            expected: None,
            change: Change::Delete,
            made_at_us: None,
        };
        assert!(check_batch(&mapping(), &[w.clone(), w], "t").is_err());
    }
}
