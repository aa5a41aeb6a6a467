//! The canonical encoding's test vectors: `tests/vectors/canonical-v2.json`
//! at the top of the repository. Each vector is a typed row (as the typed
//! JSON form, possibly not normalised) and the bytes, position and digests it
//! must produce. Any connector or port of the encoding must reproduce them.
//!
//! Regenerate after a deliberate change (which must also bump the encoding
//! version): `ARBOR_BLESS=1 cargo test -p arbor-record --test vectors`.

use std::path::PathBuf;

use arbor_record::{DatasetKeys, TypedValue, Value, tuple_bytes};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct VectorFile {
    encoding_version: u32,
    about: String,
    vectors: Vec<Vector>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Vector {
    name: String,
    /// The dataset secret, as UTF-8 text.
    secret: String,
    key: Vec<TypedValue>,
    /// Value column names, in canonical order.
    columns: Vec<String>,
    values: Vec<TypedValue>,
    key_id: String,
    canonical_key: String,
    canonical_values: String,
    position: String,
    digest: String,
    column_digests: Vec<String>,
}

/// The vector file of the checkout under test, found when the test runs
/// (cargo sets `CARGO_MANIFEST_DIR`): a target directory shared between
/// clones may hold a binary built from another one.
fn path() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../../tests/vectors/canonical-v2.json")
}

fn typed(j: serde_json::Value) -> TypedValue {
    serde_json::from_value(j).expect("typed value literal")
}

fn parse(values: &[TypedValue]) -> Vec<Value> {
    values
        .iter()
        .map(|t| t.to_value().expect("vector value parses"))
        .collect()
}

fn compute(
    name: &str,
    secret: &str,
    key: Vec<TypedValue>,
    columns: Vec<&str>,
    values: Vec<TypedValue>,
) -> Vector {
    let keys = DatasetKeys::derive(secret.as_bytes());
    let (k, v) = (parse(&key), parse(&values));
    let canonical_key = tuple_bytes(&k);
    let canonical_values = tuple_bytes(&v);
    Vector {
        name: name.to_owned(),
        secret: secret.to_owned(),
        key,
        columns: columns.iter().map(|c| c.to_string()).collect(),
        values,
        key_id: keys.key_id().to_string(),
        position: format!("{:016x}", keys.position_of_encoded_key(&canonical_key)),
        digest: keys
            .digest_of_encoded(&canonical_key, &canonical_values)
            .to_string(),
        column_digests: columns
            .iter()
            .zip(&v)
            .map(|(c, val)| keys.column_digest(&canonical_key, c, val).to_string())
            .collect(),
        canonical_key: hex::encode(canonical_key),
        canonical_values: hex::encode(canonical_values),
    }
}

/// The inputs the vector file is generated from.
fn inputs() -> Vec<Vector> {
    let id = |i: i64| vec![typed(json!({"type": "integer", "value": i.to_string()}))];
    let one = |t: &str, v: serde_json::Value| vec![typed(json!({"type": t, "value": v}))];
    let s = "arbor test vectors v1";
    let mut out = vec![
        compute(
            "null",
            s,
            id(1),
            vec!["c"],
            vec![typed(json!({"type": "null"}))],
        ),
        compute(
            "empty text is not null",
            s,
            id(1),
            vec!["c"],
            one("text", json!("")),
        ),
        compute(
            "bool",
            s,
            id(2),
            vec!["c"],
            vec![typed(json!({"type": "bool", "value": true}))],
        ),
        compute(
            "integer zero",
            s,
            id(3),
            vec!["c"],
            one("integer", json!("0")),
        ),
        compute(
            "integer negative",
            s,
            id(3),
            vec!["c"],
            one("integer", json!("-129")),
        ),
        compute(
            "integer u64 max",
            s,
            id(3),
            vec!["c"],
            one("integer", json!("18446744073709551615")),
        ),
        compute(
            "integer i64 min",
            s,
            id(3),
            vec!["c"],
            one("integer", json!("-9223372036854775808")),
        ),
        compute(
            "decimal 1.10",
            s,
            id(4),
            vec!["c"],
            one("decimal", json!("1.10")),
        ),
        compute(
            "decimal 1.1 (same bytes as 1.10)",
            s,
            id(4),
            vec!["c"],
            one("decimal", json!("1.1")),
        ),
        compute(
            "decimal negative zero",
            s,
            id(4),
            vec!["c"],
            one("decimal", json!("-0.000")),
        ),
        compute(
            "decimal big",
            s,
            id(4),
            vec!["c"],
            one(
                "decimal",
                json!("-123456789012345678901234567890.000000001"),
            ),
        ),
        compute("float", s, id(5), vec!["c"], one("float", json!("1.5"))),
        compute(
            "float negative zero (same bytes as 0.0)",
            s,
            id(5),
            vec!["c"],
            one("float", json!("-0.0")),
        ),
        compute(
            "float zero",
            s,
            id(5),
            vec!["c"],
            one("float", json!("0.0")),
        ),
        compute("float nan", s, id(5), vec!["c"], one("float", json!("NaN"))),
        compute(
            "float infinity",
            s,
            id(5),
            vec!["c"],
            one("float", json!("-inf")),
        ),
        compute(
            "text unicode",
            s,
            id(6),
            vec!["c"],
            one("text", json!("Zoë 日本 🌳")),
        ),
        compute("bytes", s, id(7), vec!["c"], one("bytes", json!("00ff10"))),
        compute(
            "date",
            s,
            id(8),
            vec!["c"],
            one("date", json!("2024-02-29")),
        ),
        compute(
            "date before 1970",
            s,
            id(8),
            vec!["c"],
            one("date", json!("1969-07-20")),
        ),
        compute(
            "timestamp utc",
            s,
            id(9),
            vec!["c"],
            one("timestamp", json!("2024-02-29T23:59:59.123456Z")),
        ),
        compute(
            "timestamp with offset (same instant)",
            s,
            id(9),
            vec!["c"],
            one("timestamp", json!("2024-03-01T05:29:59.123456+05:30")),
        ),
        compute(
            "timestamp millis",
            s,
            id(9),
            vec!["c"],
            one("timestamp", json!("2024-01-01T00:00:00.5Z")),
        ),
        compute(
            "uuid",
            s,
            id(10),
            vec!["c"],
            one("uuid", json!("123e4567-e89b-12d3-a456-426614174000")),
        ),
        compute(
            "json",
            s,
            id(11),
            vec!["c"],
            vec![typed(
                json!({"type": "json", "value": {"b": [1.0, 2.5], "a": {"z": null, "y": "é"}}}),
            )],
        ),
        compute(
            "json other key order (same bytes)",
            s,
            id(11),
            vec!["c"],
            vec![typed(
                json!({"type": "json", "value": {"a": {"y": "é", "z": null}, "b": [1, 2.5]}}),
            )],
        ),
        compute(
            "json numbers keep every digit",
            s,
            id(12),
            vec!["c"],
            vec![typed(
                json!({"type": "json", "value": serde_json::from_str::<serde_json::Value>(
                r#"{"big": 12345678901234567890123, "frac": 0.1000000000000000001,
                    "exp": 1.5e3, "small": 1E-7, "zero": -0.0, "u64": 18446744073709551617}"#,
            ).expect("JSON")}),
            )],
        ),
        compute(
            "text key",
            s,
            vec![typed(json!({"type": "text", "value": "cust-0042"}))],
            vec!["c"],
            one("integer", json!("1")),
        ),
        compute(
            "uuid key",
            s,
            vec![typed(
                json!({"type": "uuid", "value": "00000000-0000-0000-0000-000000000001"}),
            )],
            vec!["c"],
            one("integer", json!("1")),
        ),
        compute(
            "composite key",
            s,
            vec![
                typed(json!({"type": "integer", "value": "7"})),
                typed(json!({"type": "text", "value": "eu-west"})),
            ],
            vec!["c"],
            one("integer", json!("1")),
        ),
    ];
    out.push(compute(
        "customer row",
        s,
        id(42),
        vec!["balance", "created_at", "email", "name", "vip"],
        vec![
            typed(json!({"type": "decimal", "value": "1234.50"})),
            typed(json!({"type": "timestamp", "value": "2023-06-01T12:00:00Z"})),
            typed(json!({"type": "text", "value": "ada@example.com"})),
            typed(json!({"type": "text", "value": "Ada Lovelace"})),
            typed(json!({"type": "bool", "value": false})),
        ],
    ));
    out.push(compute(
        "another secret",
        "another secret",
        id(42),
        vec!["c"],
        one("integer", json!("1")),
    ));
    out
}

#[test]
fn vectors_reproduce() {
    let generated = VectorFile {
        encoding_version: arbor_record::ENCODING_VERSION,
        about: "arbor canonical encoding v2 test vectors: typed input -> canonical bytes, position, digest (see crates/arbor-record)".into(),
        vectors: inputs(),
    };
    if std::env::var_os("ARBOR_BLESS").is_some() {
        let text = serde_json::to_string_pretty(&generated).expect("serialise vectors") + "\n";
        std::fs::write(path(), text).expect("write vectors");
        return;
    }
    let text = std::fs::read_to_string(path()).expect("tests/vectors/canonical-v2.json exists");
    let stored: VectorFile = serde_json::from_str(&text).expect("vector file parses");
    assert_eq!(stored.encoding_version, arbor_record::ENCODING_VERSION);
    // Recompute every stored vector from its own inputs.
    for v in &stored.vectors {
        let columns: Vec<&str> = v.columns.iter().map(String::as_str).collect();
        let again = compute(&v.name, &v.secret, v.key.clone(), columns, v.values.clone());
        assert_eq!(&again, v, "vector {:?} no longer reproduces", v.name);
    }
    assert_eq!(
        stored.vectors.len(),
        generated.vectors.len(),
        "vector file is stale: bless it"
    );
}

#[test]
fn equivalent_inputs_share_bytes() {
    let stored: VectorFile =
        serde_json::from_str(&std::fs::read_to_string(path()).expect("vector file"))
            .expect("parses");
    let by_name = |n: &str| {
        stored
            .vectors
            .iter()
            .find(|v| v.name == n)
            .unwrap_or_else(|| panic!("vector {n}"))
    };
    for (a, b) in [
        ("decimal 1.10", "decimal 1.1 (same bytes as 1.10)"),
        ("float zero", "float negative zero (same bytes as 0.0)"),
        ("timestamp utc", "timestamp with offset (same instant)"),
        ("json", "json other key order (same bytes)"),
    ] {
        assert_eq!(by_name(a).digest, by_name(b).digest, "{a} vs {b}");
    }
    assert_ne!(
        by_name("null").digest,
        by_name("empty text is not null").digest
    );
    assert_eq!(by_name("decimal 1.10").canonical_values, "010303312e31");
}
