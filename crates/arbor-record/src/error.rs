//! Errors of value parsing, decoding and schemas.

use thiserror::Error;

/// A value that could not be parsed into its typed, normalised form.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValueError {
    /// Not a decimal number (or an exponent beyond [`crate::value::MAX_DECIMAL_EXPONENT`]).
    #[error("invalid decimal {0:?}")]
    Decimal(String),
    /// Not a valid `YYYY-MM-DD` date.
    #[error("invalid date {0:?}")]
    Date(String),
    /// Not a valid RFC 3339 timestamp with at most microsecond precision.
    #[error("invalid timestamp {0:?}")]
    Timestamp(String),
    /// Not a UUID.
    #[error("invalid uuid {0:?}")]
    Uuid(String),
    /// Not JSON.
    #[error("invalid json: {0}")]
    Json(String),
    /// Not a number of the named kind.
    #[error("invalid {kind} {text:?}")]
    Number {
        /// The kind that was expected.
        kind: &'static str,
        /// The text that failed.
        text: String,
    },
    /// The typed form names an unknown type.
    #[error("unknown value type {0:?}")]
    UnknownType(String),
}

/// Bytes that are not a canonical encoding of the expected shape.
///
/// `offset` is where in the input the problem was found.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("corrupt canonical encoding at byte {offset}: {reason}")]
pub struct DecodeError {
    /// Byte offset of the problem.
    pub offset: usize,
    /// What was wrong.
    pub reason: &'static str,
}

/// A schema that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SchemaError {
    /// A dataset needs at least one key column.
    #[error("schema has no key column")]
    NoKey,
    /// Two columns share a canonical name.
    #[error("column {0:?} appears twice")]
    DuplicateColumn(String),
    /// A column name is empty.
    #[error("column name is empty")]
    EmptyName,
    /// A record does not match the schema's shape.
    #[error("record has {found} {part} columns, schema has {expected}")]
    Arity {
        /// `key` or `value`.
        part: &'static str,
        /// Columns in the schema.
        expected: usize,
        /// Columns in the record.
        found: usize,
    },
    /// A column's transforms do not fit it.
    #[error("column {column:?}: {problem}")]
    Transform {
        /// The canonical column name.
        column: String,
        /// What does not fit.
        problem: String,
    },
    /// A value's type does not match its column.
    #[error("column {column:?} expects {expected}, got {found}")]
    Kind {
        /// The canonical column name.
        column: String,
        /// The declared kind.
        expected: crate::ValueKind,
        /// The value's kind.
        found: crate::ValueKind,
    },
}
