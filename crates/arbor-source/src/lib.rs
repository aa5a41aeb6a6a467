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
pub mod keyset;
pub mod mapping;
pub mod mysql;
mod pgbinary;
pub mod pglogical;
pub mod postgres;
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

    /// The current record of each key (`None` if absent), in key order.
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

/// Records hashed per batch by [`Source::scan_hashed`]'s default.
const HASH_BATCH_RECORDS: usize = 32_768;

/// [`Source::scan_hashed`] for any source: a scoped thread scans, this
/// one hashes each batch on the rayon pool and hands it on.
fn hash_while_scanning<S: Source + ?Sized>(
    source: &mut S,
    keys: &DatasetKeys,
    visit: &mut dyn FnMut(Vec<HashedBatch>) -> Result<(), SourceError>,
) -> Result<u64, SourceError> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Record>>(2);
        let scanner = scope.spawn(move || {
            let mut batch = Vec::with_capacity(HASH_BATCH_RECORDS);
            let scanned = source.scan(&mut |r| {
                batch.push(r);
                if batch.len() == HASH_BATCH_RECORDS {
                    let full =
                        std::mem::replace(&mut batch, Vec::with_capacity(HASH_BATCH_RECORDS));
                    tx.send(full).map_err(|_| SourceError::Stopped)?;
                }
                Ok(())
            });
            if scanned.is_ok() && !batch.is_empty() {
                // A closed channel means the consumer failed; its error wins.
                let _ = tx.send(batch);
            }
            scanned
        });
        let consumed = rx
            .into_iter()
            .try_for_each(|records| visit(vec![HashedBatch::hash_records(keys, &records)]));
        // Dropping the receiver (above) stops a scanner still sending.
        let scanned = scanner.join().unwrap_or_else(|_| {
            Err(SourceError::Read {
                dataset: "(scan)".into(),
                reason: "the scanning thread panicked".into(),
            })
        });
        consumed?;
        scanned
    })
}

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
