//! Dataset mappings: from a system's column names to canonical names and
//! kinds, so `customers.email` in one system can meet `clients.mail` in
//! another.

use arbor_record::{Column, Record, Schema, SchemaError, ValueKind};

use crate::transform::Transforms;
use serde::{Deserialize, Serialize};

/// One mapped column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ColumnMapping {
    /// The column's name in the system.
    pub source: String,
    /// The canonical name both sides agree on (default: the source name).
    #[serde(default)]
    pub name: Option<String>,
    /// The canonical kind values are read as.
    pub kind: ValueKind,
    /// Normalisation before hashing (trim, case, scale, …); none by default.
    #[serde(default, rename = "transform")]
    pub transforms: Transforms,
    /// A secret column: compared, but its name never appears in reports and
    /// its values never in errors or logs.
    #[serde(default)]
    pub redact: bool,
}

impl ColumnMapping {
    /// A column read as `kind` under the canonical name `name`.
    pub fn new(
        source: impl Into<String>,
        name: impl Into<String>,
        kind: ValueKind,
    ) -> ColumnMapping {
        ColumnMapping {
            source: source.into(),
            name: Some(name.into()),
            kind,
            transforms: Transforms::default(),
            redact: false,
        }
    }

    /// The canonical name.
    pub fn canonical(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.source)
    }
}

/// How a dataset's rows become records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    key: Vec<ColumnMapping>,
    /// Value columns in canonical (name) order, matching the schema.
    columns: Vec<ColumnMapping>,
    schema: Schema,
    /// Keys are sensitive: errors never show one.
    sensitive_keys: bool,
    /// A key column has transforms (known once: every record asks).
    normalises_keys: bool,
}

/// Kinds a key column may have: exact, totally ordered, stable across engines.
pub const KEY_KINDS: [ValueKind; 3] = [ValueKind::Integer, ValueKind::Text, ValueKind::Uuid];

impl Mapping {
    /// Checks a mapping: key columns of key kinds, unique canonical names.
    pub fn new(
        key: Vec<ColumnMapping>,
        mut columns: Vec<ColumnMapping>,
    ) -> Result<Mapping, SchemaError> {
        for k in &key {
            if !KEY_KINDS.contains(&k.kind) {
                return Err(SchemaError::Kind {
                    column: k.canonical().to_owned(),
                    expected: ValueKind::Integer,
                    found: k.kind,
                });
            }
        }
        for c in &columns {
            if let Err(problem) = c.transforms.check(c.kind) {
                return Err(SchemaError::Transform {
                    column: c.canonical().to_owned(),
                    problem,
                });
            }
        }
        for k in &key {
            if let Err(problem) = k.transforms.check_key(k.kind) {
                return Err(SchemaError::Transform {
                    column: k.canonical().to_owned(),
                    problem,
                });
            }
        }
        columns.sort_by(|a, b| a.canonical().cmp(b.canonical()));
        let schema = Schema::new(
            key.iter()
                .map(|c| Column::new(c.canonical(), c.kind).with_form(c.transforms.key_form()))
                .collect(),
            columns
                .iter()
                .map(|c| Column::new(c.canonical(), c.kind))
                .collect(),
        )?;
        let normalises_keys = key.iter().any(|k| !k.transforms.is_identity());
        Ok(Mapping {
            key,
            columns,
            schema,
            sensitive_keys: false,
            normalises_keys,
        })
    }

    /// This mapping with keys that errors never show (`key_sensitive`).
    pub fn with_sensitive_keys(mut self, sensitive: bool) -> Mapping {
        self.sensitive_keys = sensitive;
        self
    }

    /// Whether errors may show a row's key.
    pub fn keys_shown(&self) -> bool {
        !self.sensitive_keys
    }

    /// Whether a key column is normalised (Unicode form, trims, case):
    /// then a record's key is not the value stored, and the system cannot
    /// be asked for a row by it (see [`crate::fetch_by_scan`]).
    pub fn normalises_keys(&self) -> bool {
        self.normalises_keys
    }

    /// The key of the record a row with this stored key becomes.
    pub fn key_of(&self, mut stored: Vec<arbor_record::Value>) -> Vec<arbor_record::Value> {
        if self.normalises_keys {
            reshape(
                &mut stored,
                &self.key,
                |t| !t.is_identity(),
                Transforms::apply,
            );
        }
        stored
    }

    /// Whether a value column's transforms lose information (see
    /// [`Transforms::is_lossy`]).
    pub fn has_lossy_values(&self) -> bool {
        self.columns.iter().any(|c| c.transforms.is_lossy())
    }

    /// This mapping reading values as stored: value columns keep only
    /// their exact transforms (`offset`), so records carry the source's
    /// own values, the ones a repair writes. Keys and schema are unchanged.
    pub fn stored_values(&self) -> Mapping {
        let mut m = self.clone();
        for c in &mut m.columns {
            c.transforms = c.transforms.exact_only();
        }
        m
    }

    /// A record read through [`Mapping::stored_values`] (any system's, in
    /// exact form) brought to this mapping's compared form: what its digest
    /// is checked as.
    pub fn compared(&self, mut record: Record) -> Record {
        reshape(
            &mut record.values,
            &self.columns,
            Transforms::is_lossy,
            Transforms::apply_lossy,
        );
        record
    }

    /// Values in exact form as this system stores them (its `offset`
    /// undone): what a repair writes.
    pub fn to_stored(&self, values: &[arbor_record::Value]) -> Vec<arbor_record::Value> {
        values
            .iter()
            .zip(&self.columns)
            .map(|(v, c)| c.transforms.unapply_exact(v.clone()))
            .collect()
    }

    /// Key columns, then value columns: the order of a row's select list.
    pub fn all_columns(&self) -> impl Iterator<Item = &ColumnMapping> + Clone {
        self.key.iter().chain(&self.columns)
    }

    /// Key columns, in key order.
    pub fn key(&self) -> &[ColumnMapping] {
        &self.key
    }

    /// Value columns, in canonical order.
    pub fn columns(&self) -> &[ColumnMapping] {
        &self.columns
    }

    /// Whether the column with this source name is redacted.
    pub fn is_redacted(&self, source: &str) -> bool {
        self.all_columns().any(|c| c.redact && c.source == source)
    }

    /// Canonical names of the redacted columns.
    pub fn redacted_names(&self) -> Vec<String> {
        self.all_columns()
            .filter(|c| c.redact)
            .map(|c| c.canonical().to_owned())
            .collect()
    }

    /// The canonical schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Builds a record from a row read in select-list order (key columns,
    /// then value columns), applying the transforms. A NULL key value is
    /// refused: the error is the source name of that key column.
    pub fn record(&self, mut row: Vec<arbor_record::Value>) -> Result<Record, &str> {
        let values = row.split_off(self.key.len());
        if let Some(i) = row.iter().position(|v| *v == arbor_record::Value::Null) {
            return Err(&self.key[i].source);
        }
        Ok(self.apply(Record::new(row, values)))
    }

    /// Applies the transforms (of key and value columns) to a record read
    /// from the system.
    pub fn apply(&self, mut record: Record) -> Record {
        record.key = self.key_of(record.key);
        reshape(
            &mut record.values,
            &self.columns,
            |t| !t.is_identity(),
            Transforms::apply,
        );
        record
    }
}

/// Replaces each value whose column's transforms pass `applies` by
/// `transform` of it (values and columns in the same order).
fn reshape(
    values: &mut [arbor_record::Value],
    columns: &[ColumnMapping],
    applies: impl Fn(&Transforms) -> bool,
    transform: impl Fn(&Transforms, arbor_record::Value) -> arbor_record::Value,
) {
    for (v, c) in values.iter_mut().zip(columns) {
        if applies(&c.transforms) {
            *v = transform(
                &c.transforms,
                std::mem::replace(v, arbor_record::Value::Null),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn different_source_names_meet_under_canonical_names() {
        let crm = Mapping::new(
            vec![ColumnMapping::new("customer_id", "id", ValueKind::Integer)],
            vec![
                ColumnMapping::new("email", "email", ValueKind::Text),
                ColumnMapping::new("full_name", "name", ValueKind::Text),
            ],
        )
        .unwrap();
        let erp = Mapping::new(
            vec![ColumnMapping::new("client_no", "id", ValueKind::Integer)],
            vec![
                ColumnMapping::new("display_name", "name", ValueKind::Text),
                ColumnMapping::new("mail", "email", ValueKind::Text),
            ],
        )
        .unwrap();
        assert_eq!(crm.schema().fingerprint(), erp.schema().fingerprint());
        assert_eq!(erp.columns()[0].source, "mail");
    }

    #[test]
    fn float_keys_are_refused() {
        let err =
            Mapping::new(vec![ColumnMapping::new("x", "x", ValueKind::Float)], vec![]).unwrap_err();
        assert!(err.to_string().contains("\"x\""), "{err}");
    }

    #[test]
    fn normalised_keys_shape_records_and_the_fingerprint() {
        use crate::transform::{Case, UnicodeForm};
        use arbor_record::Value;
        let folded = |transforms: Transforms| {
            let mut k = ColumnMapping::new("email", "email", ValueKind::Text);
            k.transforms = transforms;
            Mapping::new(vec![k], vec![ColumnMapping::new("n", "n", ValueKind::Text)])
        };
        let plain = folded(Transforms::default()).unwrap();
        let mapping = folded(Transforms {
            unicode: Some(UnicodeForm::Nfc),
            trim_end: true,
            case: Some(Case::Lower),
            ..Transforms::default()
        })
        .unwrap();
        assert!(mapping.normalises_keys() && !plain.normalises_keys());
        assert_ne!(mapping.schema().fingerprint(), plain.schema().fingerprint());
        let r = mapping
            .record(vec![
                Value::text("Ze\u{301}lie@X.org  "),
                Value::text(" A "),
            ])
            .unwrap();
        assert_eq!(r.key, vec![Value::text("zélie@x.org")]);
        assert_eq!(r.values, vec![Value::text(" A ")]);
        assert_eq!(mapping.key_of(vec![Value::text("ZÉLIE@x.ORG ")]), r.key);
        // A key is never made NULL.
        let e = folded(Transforms {
            empty_as_null: true,
            ..Transforms::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("\"email\""), "{e}");
    }

    #[test]
    fn stored_values_keep_only_what_an_offset_restates() {
        use crate::transform::Case;
        use arbor_record::Value;
        use arbor_record::value::Timestamp;
        let mut email = ColumnMapping::new("email", "email", ValueKind::Text);
        email.transforms = Transforms {
            trim: true,
            case: Some(Case::Lower),
            ..Transforms::default()
        };
        let mut at = ColumnMapping::new("at", "at", ValueKind::Timestamp);
        at.transforms = Transforms {
            offset: Some("+02:00".into()),
            precision: Some(crate::transform::Precision::S),
            ..Transforms::default()
        };
        let mapping = Mapping::new(
            vec![ColumnMapping::new("id", "id", ValueKind::Integer)],
            vec![email, at],
        )
        .unwrap();
        assert!(mapping.has_lossy_values());
        let hour = 3_600_000_000;
        let row = || {
            vec![
                Value::Integer(1),
                Value::Timestamp(Timestamp(12 * hour + 1)),
                Value::text(" Ann@X "),
            ]
        };
        let stored = mapping.stored_values().record(row()).unwrap();
        // As stored, restated in UTC: nothing lost.
        assert_eq!(
            stored.values,
            vec![
                Value::Timestamp(Timestamp(10 * hour + 1)),
                Value::text(" Ann@X ")
            ]
        );
        // Brought to the compared form, it is what a plain read gives.
        assert_eq!(
            mapping.compared(stored.clone()),
            mapping.record(row()).unwrap()
        );
        // Written back at the column's offset.
        assert_eq!(mapping.to_stored(&stored.values), row()[1..].to_vec());
    }
}
