//! Schemas: the canonical column names and kinds of a dataset, and their
//! fingerprint.
//!
//! Two peers may only compare datasets whose schemas have the same
//! fingerprint: equal fingerprints mean the same key columns in the same order
//! and the same value columns with the same kinds, so equal rows hash equal.

use crate::encode::{ENCODING_VERSION, put_varint};
use crate::error::SchemaError;
use crate::value::{Value, ValueKind};

/// A named, typed column.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Column {
    /// Canonical name (the name both systems' mappings agree on).
    pub name: String,
    /// The column's kind.
    pub kind: ValueKind,
    /// How a key column's values are normalised before they identify a
    /// record (`nfc+trim_end+lower`, say); `None` for values as stored.
    /// Part of the fingerprint: peers that shape keys differently never
    /// compare.
    pub form: Option<String>,
}

impl Column {
    /// A column.
    pub fn new(name: impl Into<String>, kind: ValueKind) -> Column {
        Column {
            name: name.into(),
            kind,
            form: None,
        }
    }

    /// This column with its values normalised as `form` says.
    pub fn with_form(mut self, form: Option<String>) -> Column {
        self.form = form;
        self
    }
}

/// The shape of a dataset's records.
///
/// Key columns keep their declared order (it is part of the key's encoding);
/// value columns are sorted by canonical name, so two mappings that list the
/// same columns in different orders agree.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Schema {
    key: Vec<Column>,
    values: Vec<Column>,
}

impl Schema {
    /// Checks and normalises a schema.
    pub fn new(key: Vec<Column>, mut values: Vec<Column>) -> Result<Schema, SchemaError> {
        if key.is_empty() {
            return Err(SchemaError::NoKey);
        }
        values.sort_by(|a, b| a.name.cmp(&b.name));
        let mut seen = std::collections::BTreeSet::new();
        for c in key.iter().chain(&values) {
            if c.name.is_empty() {
                return Err(SchemaError::EmptyName);
            }
            if !seen.insert(c.name.as_str()) {
                return Err(SchemaError::DuplicateColumn(c.name.clone()));
            }
        }
        Ok(Schema { key, values })
    }

    /// Key columns in key order.
    pub fn key(&self) -> &[Column] {
        &self.key
    }

    /// Value columns in canonical (name) order.
    pub fn values(&self) -> &[Column] {
        &self.values
    }

    /// blake3 of the encoding version and every column's name and kind.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut buf = Vec::new();
        buf.extend_from_slice(b"arbor schema");
        put_varint(&mut buf, u64::from(ENCODING_VERSION));
        for part in [&self.key, &self.values] {
            put_varint(&mut buf, part.len() as u64);
            for c in part {
                put_varint(&mut buf, c.name.len() as u64);
                buf.extend_from_slice(c.name.as_bytes());
                // `text/nfc+lower`: a column without a form hashes as it
                // always did, so existing indexes keep their fingerprint.
                let kind = match &c.form {
                    None => c.kind.name().to_owned(),
                    Some(form) => format!("{}/{form}", c.kind.name()),
                };
                put_varint(&mut buf, kind.len() as u64);
                buf.extend_from_slice(kind.as_bytes());
            }
        }
        *blake3::hash(&buf).as_bytes()
    }

    /// Checks that a record's key and values fit this schema (NULL fits any kind).
    pub fn check(&self, key: &[Value], values: &[Value]) -> Result<(), SchemaError> {
        for (part, cols, vals) in [("key", &self.key, key), ("value", &self.values, values)] {
            if cols.len() != vals.len() {
                return Err(SchemaError::Arity {
                    part,
                    expected: cols.len(),
                    found: vals.len(),
                });
            }
            for (c, v) in cols.iter().zip(vals) {
                if let Some(found) = v.kind()
                    && found != c.kind
                {
                    return Err(SchemaError::Kind {
                        column: c.name.clone(),
                        expected: c.kind,
                        found,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_form_is_part_of_the_fingerprint() {
        let schema = |form: Option<&str>| {
            Schema::new(
                vec![Column::new("id", ValueKind::Text).with_form(form.map(str::to_owned))],
                vec![],
            )
            .unwrap()
            .fingerprint()
        };
        assert_ne!(schema(None), schema(Some("nfc")));
        assert_ne!(schema(Some("nfc")), schema(Some("nfc+lower")));
        // Without a form, the fingerprint is what it was before forms.
        let mut buf = b"arbor schema".to_vec();
        put_varint(&mut buf, u64::from(ENCODING_VERSION));
        buf.extend_from_slice(&[1, 2]);
        buf.extend_from_slice(b"id");
        buf.extend_from_slice(&[4]);
        buf.extend_from_slice(b"text");
        buf.push(0);
        assert_eq!(schema(None), *blake3::hash(&buf).as_bytes());
    }

    #[test]
    fn value_order_does_not_matter_key_order_does() {
        let a = Schema::new(
            vec![Column::new("id", ValueKind::Integer)],
            vec![
                Column::new("b", ValueKind::Text),
                Column::new("a", ValueKind::Date),
            ],
        )
        .unwrap();
        let b = Schema::new(
            vec![Column::new("id", ValueKind::Integer)],
            vec![
                Column::new("a", ValueKind::Date),
                Column::new("b", ValueKind::Text),
            ],
        )
        .unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = Schema::new(
            vec![Column::new("id", ValueKind::Integer)],
            vec![
                Column::new("a", ValueKind::Text),
                Column::new("b", ValueKind::Text),
            ],
        )
        .unwrap();
        assert_ne!(a.fingerprint(), c.fingerprint());
        let k1 = Schema::new(
            vec![
                Column::new("x", ValueKind::Integer),
                Column::new("y", ValueKind::Integer),
            ],
            vec![],
        )
        .unwrap();
        let k2 = Schema::new(
            vec![
                Column::new("y", ValueKind::Integer),
                Column::new("x", ValueKind::Integer),
            ],
            vec![],
        )
        .unwrap();
        assert_ne!(k1.fingerprint(), k2.fingerprint());
    }

    #[test]
    fn bad_schemas_and_records_are_named() {
        assert_eq!(Schema::new(vec![], vec![]), Err(SchemaError::NoKey));
        assert_eq!(
            Schema::new(
                vec![Column::new("id", ValueKind::Integer)],
                vec![Column::new("id", ValueKind::Text)]
            ),
            Err(SchemaError::DuplicateColumn("id".into()))
        );
        let s = Schema::new(
            vec![Column::new("id", ValueKind::Integer)],
            vec![Column::new("name", ValueKind::Text)],
        )
        .unwrap();
        assert!(s.check(&[Value::Integer(1)], &[Value::Null]).is_ok());
        assert_eq!(
            s.check(&[Value::Integer(1)], &[Value::Integer(2)]),
            Err(SchemaError::Kind {
                column: "name".into(),
                expected: ValueKind::Text,
                found: ValueKind::Integer
            })
        );
        assert!(matches!(
            s.check(&[Value::Integer(1)], &[]),
            Err(SchemaError::Arity { part: "value", .. })
        ));
    }
}
