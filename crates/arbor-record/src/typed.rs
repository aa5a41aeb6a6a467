//! The typed text form of values: `{"type": "decimal", "value": "1.10"}`.
//!
//! Used by the test vectors (`tests/vectors/`) and by anything that must write
//! a value as JSON without losing its type (NULL vs `""`, `1.10` as a decimal,
//! `-0.0` and NaN as floats). Parsing normalises, so the typed form of `1.10`
//! reads back as the value `1.1`.

use serde::{Deserialize, Serialize};

use crate::error::ValueError;
use crate::value::{
    CanonicalJson, Date, Decimal, Timestamp, Value, ValueKind, format_uuid, parse_uuid,
};

/// A value as a JSON object with its type name and a text (or JSON) payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypedValue {
    /// `null` or a [`ValueKind`] name.
    #[serde(rename = "type")]
    pub kind: String,
    /// The payload: text for every kind but `bool` (a JSON bool), `json` (any
    /// JSON) and `null` (absent).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub value: serde_json::Value,
}

impl TypedValue {
    /// The typed form of a value.
    pub fn from_value(v: &Value) -> TypedValue {
        use serde_json::Value as J;
        let (kind, value) = match v {
            Value::Null => ("null", J::Null),
            Value::Bool(b) => ("bool", J::Bool(*b)),
            Value::Integer(i) => ("integer", J::String(i.to_string())),
            Value::Decimal(d) => ("decimal", J::String(d.as_str().to_owned())),
            Value::Float(x) => ("float", J::String(format!("{:?}", x.get()))),
            Value::Text(s) => ("text", J::String(s.clone())),
            Value::Bytes(b) => ("bytes", J::String(hex::encode(b))),
            Value::Date(d) => ("date", J::String(d.to_string())),
            Value::Timestamp(t) => ("timestamp", J::String(t.to_string())),
            Value::Uuid(u) => ("uuid", J::String(format_uuid(u))),
            Value::Json(j) => (
                "json",
                serde_json::from_str(j.as_str()).expect("canonical json is json"),
            ),
        };
        TypedValue {
            kind: kind.to_owned(),
            value,
        }
    }

    /// Parses and normalises the typed form.
    pub fn to_value(&self) -> Result<Value, ValueError> {
        if self.kind == "null" {
            return Ok(Value::Null);
        }
        let kind = ValueKind::from_name(&self.kind)
            .ok_or_else(|| ValueError::UnknownType(self.kind.clone()))?;
        if kind == ValueKind::Json {
            return Ok(Value::Json(CanonicalJson::from_value(&self.value)));
        }
        if kind == ValueKind::Bool {
            return self
                .value
                .as_bool()
                .map(Value::Bool)
                .ok_or_else(|| number_error("bool", &self.value.to_string()));
        }
        let text = self
            .value
            .as_str()
            .ok_or_else(|| number_error(kind.name(), &self.value.to_string()))?;
        Ok(match kind {
            ValueKind::Integer => {
                Value::Integer(text.parse().map_err(|_| number_error("integer", text))?)
            }
            ValueKind::Decimal => Value::Decimal(Decimal::parse(text)?),
            ValueKind::Float => {
                Value::float(text.parse().map_err(|_| number_error("float", text))?)
            }
            ValueKind::Text => Value::Text(text.to_owned()),
            ValueKind::Bytes => {
                Value::Bytes(hex::decode(text).map_err(|_| number_error("bytes", text))?)
            }
            ValueKind::Date => Value::Date(Date::parse(text)?),
            ValueKind::Timestamp => Value::Timestamp(Timestamp::parse(text)?),
            ValueKind::Uuid => Value::Uuid(parse_uuid(text)?),
            ValueKind::Bool | ValueKind::Json => unreachable!("handled above"),
        })
    }
}

fn number_error(kind: &'static str, text: &str) -> ValueError {
    ValueError::Number {
        kind,
        text: text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_form_round_trips_and_normalises() {
        let t: TypedValue = serde_json::from_str(r#"{"type":"decimal","value":"1.10"}"#).unwrap();
        assert_eq!(
            t.to_value().unwrap(),
            Value::Decimal(Decimal::parse("1.1").unwrap())
        );
        let nan: TypedValue = serde_json::from_str(r#"{"type":"float","value":"NaN"}"#).unwrap();
        assert_eq!(nan.to_value().unwrap(), Value::float(f64::NAN));
        let null: TypedValue = serde_json::from_str(r#"{"type":"null"}"#).unwrap();
        assert_eq!(null.to_value().unwrap(), Value::Null);
        for v in [
            Value::Null,
            Value::Bool(true),
            Value::Integer(-(1i128 << 100)),
            Value::float(-2.5e-300),
            Value::Bytes(vec![0, 255]),
            Value::Timestamp(Timestamp(-1)),
            Value::Json(CanonicalJson::parse(r#"{"b":[1,2],"a":null}"#).unwrap()),
        ] {
            let back = TypedValue::from_value(&v).to_value().unwrap();
            assert_eq!(back, v);
        }
        let bad: TypedValue = serde_json::from_str(r#"{"type":"money","value":"1"}"#).unwrap();
        assert_eq!(bad.to_value(), Err(ValueError::UnknownType("money".into())));
    }
}
