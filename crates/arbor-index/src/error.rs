//! Errors of the index.

use std::path::PathBuf;

use arbor_record::KeyId;
use thiserror::Error;

/// Boxed error of a record source feeding a build.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong opening, writing or reading an index.
#[derive(Debug, Error)]
pub enum IndexError {
    /// RocksDB failed (IO, corruption it detected, a failed merge).
    #[error("rocksdb failed to {op}: {source}")]
    Storage {
        /// What the index was doing.
        op: &'static str,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },
    /// A file of the index's own (a build's sorted runs) could not be written.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What the index was doing.
        op: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Bytes read back from RocksDB are not what the index writes.
    #[error("corrupt entry in column family {cf} at key {key}: {reason}")]
    Corrupt {
        /// The column family.
        cf: &'static str,
        /// The entry's key, hex (at most 64 bytes of it).
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The index was written by another on-disk format.
    #[error("index at {path} has format {stored}, this build reads format {supported}")]
    Format {
        /// The index directory.
        path: PathBuf,
        /// The stored format.
        stored: u32,
        /// The format this build reads.
        supported: u32,
    },
    /// The system holds more than one row under a key: which one the index
    /// would keep depends on read order, and a conflict inside one system
    /// is drift, so the build or rescan is refused.
    #[error(
        "{count} key(s) were read more than once{}: a key must identify one row \
         (fix the duplicates in the system, or map key columns that are unique)",
        example.as_ref().map(|k| format!(", e.g. key {k}")).unwrap_or_default()
    )]
    RepeatedKeys {
        /// Keys read more than once (at least).
        count: u64,
        /// One of them, unless the dataset's keys are sensitive.
        example: Option<String>,
    },
    /// The index hashes records with another canonical encoding version.
    #[error("index uses canonical encoding v{stored}, expected v{expected}")]
    EncodingVersion {
        /// The stored version.
        stored: u32,
        /// The version asked for.
        expected: u32,
    },
    /// The index was built with another dataset secret.
    #[error("index was built with key id {stored}, the configured secret has key id {expected}")]
    KeyId {
        /// Key id of the stored index.
        stored: KeyId,
        /// Key id of the configured secret.
        expected: KeyId,
    },
    /// The index was built for another schema.
    #[error("index was built for schema {stored}, the configured schema is {expected}")]
    Schema {
        /// Stored fingerprint, hex.
        stored: String,
        /// Configured fingerprint, hex.
        expected: String,
    },
    /// A full build started and never committed (the process died); the index
    /// must be rebuilt before it is used.
    #[error("index at {path} holds an unfinished full build: rebuild it")]
    IncompleteBuild {
        /// The index directory.
        path: PathBuf,
    },
    /// The record source failed during a build.
    #[error("reading records from the source failed")]
    Source(#[source] SourceError),
    /// A read asked for something that cannot exist.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl IndexError {
    /// The index no longer matches the configuration (schema, secret,
    /// encoding, format) or holds an unfinished build: rebuilding it from
    /// the system is the way out.
    pub fn needs_rebuild(&self) -> bool {
        matches!(
            self,
            IndexError::Format { .. }
                | IndexError::EncodingVersion { .. }
                | IndexError::KeyId { .. }
                | IndexError::Schema { .. }
                | IndexError::IncompleteBuild { .. }
        )
    }

    /// RocksDB refused the index's lock: another process has it open.
    pub fn is_locked(&self) -> bool {
        matches!(self, IndexError::Storage { source, .. } if source.to_string().contains("lock"))
    }

    pub(crate) fn storage(op: &'static str) -> impl FnOnce(rocksdb::Error) -> IndexError {
        move |source| IndexError::Storage { op, source }
    }

    pub(crate) fn corrupt(cf: &'static str, key: &[u8], reason: impl Into<String>) -> IndexError {
        IndexError::Corrupt {
            cf,
            key: hex::encode(&key[..key.len().min(64)]),
            reason: reason.into(),
        }
    }
}
