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

impl Relation {
    /// How errors and logs name the dataset: `{where}:{table}`, or
    /// `{where}:(query)` (a query's text may hold anything).
    pub fn dataset_name(&self, place: &str) -> String {
        match self {
            Relation::Table(t) => format!("{place}:{t}"),
            Relation::Query(_) => format!("{place}:(query)"),
        }
    }

    /// The relation as a FROM item, identifiers quoted by `ident`.
    pub fn from_item(&self, ident: fn(&str) -> String) -> String {
        match self {
            Relation::Table(t) => table_ident(t, ident),
            Relation::Query(q) => format!("({q}) AS arbor_q"),
        }
    }
}

/// A table name, schema-qualified or not, each part quoted by `ident`:
/// `public.customers` → `"public"."customers"`.
pub fn table_ident(name: &str, ident: fn(&str) -> String) -> String {
    name.split('.').map(ident).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote(s: &str) -> String {
        format!("\"{}\"", s.replace('"', "\"\""))
    }

    #[test]
    fn tables_and_queries_are_named_and_quoted() {
        let t = Relation::Table("public.customers".into());
        assert_eq!(
            t.dataset_name("postgres://db"),
            "postgres://db:public.customers"
        );
        assert_eq!(t.from_item(quote), "\"public\".\"customers\"");
        let q = Relation::Query("SELECT 1 AS id".into());
        assert_eq!(q.dataset_name("x"), "x:(query)");
        assert_eq!(q.from_item(quote), "(SELECT 1 AS id) AS arbor_q");
    }
}
