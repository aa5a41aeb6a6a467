//! What a SQL dataset reads: a table (or view) by name, or a query whose
//! result columns are mapped like a table's. Shared by the SQLite,
//! PostgreSQL and MySQL connectors and their sinks.

/// A table or a query of a SQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    /// A table (or view) by name.
    Table(String),
    /// A query; its result columns are mapped like a table's.
    Query(String),
}
