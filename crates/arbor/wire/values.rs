//! Typed values on the wire: [`arbor_record::Value`] to and from
//! `TypedValue`, checked as the record crate builds them.

use super::{Malformed, malformed};
use crate::proto::v1 as pb;

/// A typed value from the wire (normalised as the record crate builds them).
pub fn typed_value(
    field: &'static str,
    v: &pb::TypedValue,
) -> Result<arbor_record::Value, Malformed> {
    use arbor_record::Value;
    use arbor_record::value::{Date, Decimal, Timestamp};
    use pb::typed_value::Value as V;
    let bad = |e: &dyn std::fmt::Display| malformed(field, e.to_string());
    Ok(
        match v
            .value
            .as_ref()
            .ok_or_else(|| malformed(field, "no value set"))?
        {
            V::Null(_) => Value::Null,
            V::Bool(b) => Value::Bool(*b),
            V::Integer(t) => Value::Integer(
                t.parse()
                    .map_err(|_| malformed(field, format!("{t:?} is not an integer")))?,
            ),
            V::Decimal(t) => Value::Decimal(Decimal::parse(t).map_err(|e| bad(&e))?),
            V::Float(x) => Value::float(*x),
            V::Text(t) => Value::Text(t.clone()),
            V::Bytes(b) => Value::Bytes(b.clone()),
            V::Date(t) => Value::Date(Date::parse(t).map_err(|e| bad(&e))?),
            V::Timestamp(t) => Value::Timestamp(Timestamp::parse(t).map_err(|e| bad(&e))?),
            V::Uuid(b) => Value::Uuid(b.as_slice().try_into().map_err(|_| {
                malformed(field, format!("uuid has {} bytes, expected 16", b.len()))
            })?),
            V::Json(t) => Value::Json(arbor_record::CanonicalJson::parse(t).map_err(|e| bad(&e))?),
        },
    )
}

/// A typed value for the wire (the inverse of [`typed_value`]).
pub fn wire_value(v: &arbor_record::Value) -> pb::TypedValue {
    use arbor_record::Value;
    use pb::typed_value::Value as V;
    let value = match v {
        Value::Null => V::Null(true),
        Value::Bool(b) => V::Bool(*b),
        Value::Integer(i) => V::Integer(i.to_string()),
        Value::Decimal(d) => V::Decimal(d.as_str().to_owned()),
        Value::Float(x) => V::Float(x.get()),
        Value::Text(t) => V::Text(t.clone()),
        Value::Bytes(b) => V::Bytes(b.clone()),
        Value::Date(d) => V::Date(d.to_string()),
        Value::Timestamp(t) => V::Timestamp(t.to_string()),
        Value::Uuid(u) => V::Uuid(u.to_vec()),
        Value::Json(j) => V::Json(j.as_str().to_owned()),
    };
    pb::TypedValue { value: Some(value) }
}
