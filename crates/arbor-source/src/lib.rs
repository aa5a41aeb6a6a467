//! Connectors: reading a system's records through a dataset mapping.
//!
//! A [`Mapping`] says which source columns form the key, which are compared,
//! their canonical names and kinds. A [`Source`] streams every row of a
//! dataset as a [`Record`] in the mapping's canonical
//! column order, and fetches rows by key (for column digests and repairs).
//! Connectors open their systems **read-only**.
//!
//! ```text
//!   system row ──read──▶ typed values (per declared kind) ──mapping──▶ Record
//! ```
//!
//! Today: SQLite ([`sqlite`], the embedded default). PostgreSQL, MySQL and
//! CSV/JSONL follow the same trait.

pub mod files;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod keyset;
pub mod mapping;
pub mod mysql;
mod pgbinary;
pub mod pglogical;
pub mod postgres;
pub mod relation;
pub mod sink;
pub mod sqlite;
pub mod text;
pub mod transform;

use arbor_record::{DatasetKeys, HashedBatch, Record, Value};

use thiserror::Error;

pub use files::{FileSource, Format};
pub use mapping::{ColumnMapping, Mapping};
pub use mysql::MysqlSource;
pub use postgres::PostgresSource;
pub use relation::Relation;
pub use sqlite::SqliteSource;

/// Errors of reading a source.
#[derive(Debug, Error)]
pub enum SourceError {
    /// The system could not be opened or reached.
    #[error("cannot open {what}: {reason}")]
    Open {
        /// Which system (a path or address, never a password).
        what: String,
        /// Why.
        reason: String,
    },
    /// The dataset's shape does not match its mapping.
    #[error("dataset {dataset}: {problem}")]
    Schema {
        /// The dataset (table or query).
        dataset: String,
        /// What does not match, naming the column.
        problem: String,
    },
    /// A value could not be read as its declared kind.
    #[error("dataset {dataset}, column {column:?}: {problem}")]
    Value {
        /// The dataset.
        dataset: String,
        /// The source column.
        column: String,
        /// What was wrong (never the value of a redacted column).
        problem: String,
    },
    /// The system failed while reading.
    #[error("reading {dataset} failed: {reason}")]
    Read {
        /// The dataset.
        dataset: String,
        /// Why.
        reason: String,
    },
    /// The system refused a repair batch; none of it was written.
    #[error("writing to {dataset} failed, batch rolled back: {reason}")]
    Write {
        /// The dataset.
        dataset: String,
        /// The system's reason.
        reason: String,
    },
    /// A caller asked the scan to stop (its consumer went away).
    #[error("scan stopped by its consumer")]
    Stopped,
}

impl SourceError {
    /// Whether trying again later may succeed: the system could not be
    /// reached, or a read failed (a dropped connection, a timeout), as
    /// opposed to a mapping that does not fit the schema or a bad value.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Open { .. } | SourceError::Read { .. })
    }
}

/// A dataset in a system, read through a mapping.
pub trait Source: Send {
    /// The mapping this source reads through.
    fn mapping(&self) -> &Mapping;

    /// Checks that the dataset exists and has every mapped column, reading
    /// nothing but its shape.
    fn check(&mut self) -> Result<(), SourceError>;

    /// Streams every record to `visit`, in no particular order; returns the
    /// number of records read. `visit` may stop the scan by returning an error.
    fn scan(
        &mut self,
        visit: &mut dyn FnMut(Record) -> Result<(), SourceError>,
    ) -> Result<u64, SourceError>;

    /// Streams every record, hashed with `keys`, to `visit` in batches (in
    /// no particular order; the batches of one chunk of the source in one
    /// call); returns the number of records read. This is
    /// what a full build reads. By default a thread scans while this one
    /// hashes; a connector that can encode rows as it reads them does
    /// better (PostgreSQL's binary COPY).
    fn scan_hashed(
        &mut self,
        keys: &DatasetKeys,
        visit: &mut dyn FnMut(Vec<HashedBatch>) -> Result<(), SourceError>,
    ) -> Result<u64, SourceError> {
        hash_while_scanning(self, keys, visit)
    }

    /// Whether the last [`Source::scan_hashed`] may have met a row twice
    /// (a PostgreSQL block walk meets a row an update moved ahead of it),
    /// so that a key read twice is not a duplicate in the system. No by
    /// default.
    fn build_may_repeat_keys(&self) -> bool {
        false
    }

    /// The current record of each key (`None` if absent), in key order.
    /// Keys are records' keys: where the mapping normalises keys
    /// ([`Mapping::normalises_keys`]) a database connector cannot ask for
    /// them and reads the dataset instead ([`fetch_by_scan`]).
    fn fetch(&mut self, keys: &[Vec<Value>]) -> Result<Vec<Option<Record>>, SourceError>;

    /// Polling: visits the records whose `column` (an `updated_at` or
    /// version column, not necessarily mapped) is at or after `since`
    /// (everything if `None`), and returns the greatest value seen as text,
    /// the next call's `since`. At-or-after rather than after: a row
    /// committed late with the same value as the last one seen is not
    /// missed; re-reading a few rows costs only unchanged applies.
    fn changed_since(
        &mut self,
        column: &str,
        since: Option<&str>,
        visit: &mut dyn FnMut(Record) -> Result<(), SourceError>,
    ) -> Result<Option<String>, SourceError> {
        let _ = (since, visit);
        Err(SourceError::Schema {
            dataset: "(this source)".into(),
            problem: format!("polling on {column:?} needs a database source; use rescan capture"),
        })
    }
}

/// [`Source::fetch`] by reading the whole dataset and keeping the records
/// asked for: what a file source always does, and what a database does
/// when its mapping normalises keys. A normalised key (`bob` for a row
/// stored as `Bob `) names no stored value a statement could select, and
/// only the same transforms, applied in the same code, find every
/// spelling of it on every engine. One read per call, so callers pass
/// keys in large groups ([`fetch_each`]).
pub fn fetch_by_scan<S: Source + ?Sized>(
    source: &mut S,
    keys: &[Vec<Value>],
) -> Result<Vec<Option<Record>>, SourceError> {
    let wanted: std::collections::HashMap<&Vec<Value>, usize> =
        keys.iter().enumerate().map(|(i, k)| (k, i)).collect();
    let mut out = vec![None; keys.len()];
    source.scan(&mut |r| {
        if let Some(&i) = wanted.get(&r.key) {
            out[i] = Some(r);
        }
        Ok(())
    })?;
    Ok(out)
}

/// Looks `keys` up with `fetch` (a [`Source::fetch`]) in groups of at
/// most `max_keys` keys and about `bytes` of rows, handing each group's
/// keys and rows (`None` where a key has no row) to `visit` before the next
/// is read: however wide the rows, one group is held at a time. Groups
/// start small and follow the size of the rows found.
pub fn fetch_each<E>(
    keys: &[Vec<Value>],
    bytes: usize,
    max_keys: usize,
    mut fetch: impl FnMut(&[Vec<Value>]) -> Result<Vec<Option<Record>>, E>,
    mut visit: impl FnMut(&[Vec<Value>], Vec<Option<Record>>) -> Result<(), E>,
) -> Result<(), E> {
    let budget = keyset::RowBudget::new(bytes as u64, max_keys as u64);
    keyset::in_groups(keys, budget, |group| {
        let rows = fetch(group)?;
        let found = rows.iter().flatten();
        let size = found.clone().map(|r| r.mem_bytes() as u64).sum();
        // Keys without a row count as rows of no size: a group of absent
        // keys grows the next one.
        let sized = (found.count().max(1) as u64, size);
        visit(group, rows)?;
        Ok(sized)
    })
}

/// Records hashed per batch by [`Source::scan_hashed`]'s default.
const HASH_BATCH_RECORDS: usize = 32_768;

/// [`Source::scan_hashed`] for any source: a scoped thread scans, this
/// one hashes each batch on the rayon pool and hands it on.
fn hash_while_scanning<S: Source + ?Sized>(
    source: &mut S,
    keys: &DatasetKeys,
    visit: &mut dyn FnMut(Vec<HashedBatch>) -> Result<(), SourceError>,
) -> Result<u64, SourceError> {
    scan_in_batches(source, HASH_BATCH_RECORDS, |batches| {
        let mut records = 0;
        for batch in batches {
            let batch = batch?;
            records += batch.len() as u64;
            visit(vec![HashedBatch::hash_records(keys, &batch)])?;
        }
        Ok(records)
    })
}

/// Bytes of records a batch of [`scan_in_batches`] holds at most (plus one
/// record): wide rows make batches of fewer records.
pub const BATCH_BYTES: usize = 8 << 20;

/// Runs `source.scan` on a scoped thread and hands its records to
/// `consume`, on this thread, in batches of `batch_records` (or of
/// [`BATCH_BYTES`], whichever is reached first) as they come.
/// A failed scan's error is the last item, so a consumer never takes a
/// scan cut short for a complete one; a consumer that stops early stops
/// the scan.
pub fn scan_in_batches<S: Source + ?Sized, R>(
    source: &mut S,
    batch_records: usize,
    consume: impl FnOnce(&mut dyn Iterator<Item = Result<Vec<Record>, SourceError>>) -> R,
) -> R {
    let batch_records = batch_records.max(1);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let scanner = scope.spawn(move || {
            let mut batch = Vec::new();
            let mut bytes = 0;
            let scanned = source.scan(&mut |r| {
                bytes += r.mem_bytes();
                batch.push(r);
                if batch.len() == batch_records || bytes >= BATCH_BYTES {
                    bytes = 0;
                    let full = std::mem::take(&mut batch);
                    tx.send((Ok(full), false))
                        .map_err(|_| SourceError::Stopped)?;
                }
                Ok(())
            });
            // A closed channel means the consumer stopped: nobody listens.
            let _ = tx.send((scanned.map(|_| batch), true));
        });
        let mut batches = Batches { rx, done: false };
        let out = consume(&mut batches);
        // Dropping the receiver stops a scanner the consumer left early.
        drop(batches);
        let _ = scanner.join();
        out
    })
}

/// The batches of [`scan_in_batches`]: each item with whether it is the
/// last. A scanner gone before its last item (it panicked) ends the
/// batches with an error rather than passing for a complete scan.
struct Batches {
    rx: std::sync::mpsc::Receiver<(Result<Vec<Record>, SourceError>, bool)>,
    done: bool,
}

impl Iterator for Batches {
    type Item = Result<Vec<Record>, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.rx.recv() {
            Ok((item, last)) => {
                self.done = last;
                Some(item)
            }
            Err(_) => {
                self.done = true;
                Some(Err(SourceError::Read {
                    dataset: "(scan)".into(),
                    reason: "the scanning thread stopped before the end of the scan".into(),
                }))
            }
        }
    }
}

/// What a value error says of a NULL in a key column.
pub(crate) const NULL_KEY: &str = "key column is NULL";

/// What an error says instead of a redacted column's value.
pub const WITHHELD: &str =
    "a value that does not read as the column's kind (withheld: redacted column)";

/// A source whose errors never carry a redacted column's value.
struct Redacting {
    inner: Box<dyn Source>,
}

impl Redacting {
    fn scrub(&self, e: SourceError) -> SourceError {
        match e {
            SourceError::Value {
                dataset,
                column,
                problem,
            } if self.inner.mapping().is_redacted(&column) => {
                let _ = problem;
                SourceError::Value {
                    dataset,
                    column,
                    problem: WITHHELD.to_owned(),
                }
            }
            other => other,
        }
    }
}

impl Source for Redacting {
    fn mapping(&self) -> &Mapping {
        self.inner.mapping()
    }

    fn check(&mut self) -> Result<(), SourceError> {
        self.inner.check().map_err(|e| self.scrub(e))
    }

    fn scan(
        &mut self,
        visit: &mut dyn FnMut(Record) -> Result<(), SourceError>,
    ) -> Result<u64, SourceError> {
        let r = self.inner.scan(visit);
        r.map_err(|e| self.scrub(e))
    }

    fn scan_hashed(
        &mut self,
        keys: &DatasetKeys,
        visit: &mut dyn FnMut(Vec<HashedBatch>) -> Result<(), SourceError>,
    ) -> Result<u64, SourceError> {
        let r = self.inner.scan_hashed(keys, visit);
        r.map_err(|e| self.scrub(e))
    }

    fn build_may_repeat_keys(&self) -> bool {
        self.inner.build_may_repeat_keys()
    }

    fn fetch(&mut self, keys: &[Vec<Value>]) -> Result<Vec<Option<Record>>, SourceError> {
        let r = self.inner.fetch(keys);
        r.map_err(|e| self.scrub(e))
    }

    fn changed_since(
        &mut self,
        column: &str,
        since: Option<&str>,
        visit: &mut dyn FnMut(Record) -> Result<(), SourceError>,
    ) -> Result<Option<String>, SourceError> {
        let r = self.inner.changed_since(column, since, visit);
        r.map_err(|e| self.scrub(e))
    }
}

/// Wraps a source so its errors withhold redacted columns' values (a
/// source without redacted columns is returned as it is).
pub fn redacting(source: Box<dyn Source>) -> Box<dyn Source> {
    if source.mapping().redacted_names().is_empty() {
        source
    } else {
        Box::new(Redacting { inner: source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_record::ValueKind;

    /// Records 0..n, then the scan's end: `Ok`, an error, or a panic.
    struct Counting {
        mapping: Mapping,
        n: i128,
        end: &'static str,
        visited: i128,
    }

    impl Counting {
        fn new(n: i128, end: &'static str) -> Counting {
            let key = ColumnMapping::new("id", "id", ValueKind::Integer);
            Counting {
                mapping: Mapping::new(vec![key], vec![]).unwrap(),
                n,
                end,
                visited: 0,
            }
        }
    }

    impl Source for Counting {
        fn mapping(&self) -> &Mapping {
            &self.mapping
        }

        fn check(&mut self) -> Result<(), SourceError> {
            Ok(())
        }

        fn scan(
            &mut self,
            visit: &mut dyn FnMut(Record) -> Result<(), SourceError>,
        ) -> Result<u64, SourceError> {
            for i in 0..self.n {
                visit(Record::new(vec![Value::Integer(i)], vec![]))?;
                self.visited += 1;
            }
            match self.end {
                "error" => Err(SourceError::Read {
                    dataset: "counting".into(),
                    reason: "the system went away".into(),
                }),
                "panic" => panic!("a connector bug"),
                _ => Ok(self.n as u64),
            }
        }

        fn fetch(&mut self, _: &[Vec<Value>]) -> Result<Vec<Option<Record>>, SourceError> {
            Ok(Vec::new())
        }
    }

    fn collect(source: &mut Counting) -> (usize, Option<String>) {
        scan_in_batches(source, 3, |batches| {
            let mut n = 0;
            for b in batches {
                match b {
                    Ok(records) => n += records.len(),
                    Err(e) => return (n, Some(e.to_string())),
                }
            }
            (n, None)
        })
    }

    #[test]
    fn batches_end_with_the_scans_error_and_never_pass_a_cut_scan_for_whole() {
        assert_eq!(collect(&mut Counting::new(10, "ok")), (10, None));
        assert_eq!(collect(&mut Counting::new(0, "ok")), (0, None));
        let (n, e) = collect(&mut Counting::new(10, "error"));
        assert_eq!(n, 9, "the partial last batch is not handed out");
        assert!(e.unwrap().contains("went away"));
        let (_, e) = collect(&mut Counting::new(10, "panic"));
        assert!(e.unwrap().contains("stopped before the end"));
    }

    #[test]
    fn a_consumer_that_stops_stops_the_scan() {
        let mut source = Counting::new(1_000_000, "ok");
        let first = scan_in_batches(&mut source, 10, |batches| batches.next());
        assert_eq!(first.unwrap().unwrap().len(), 10);
        assert!(source.visited < 1_000, "visited {}", source.visited);
    }
}
