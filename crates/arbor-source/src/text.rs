//! Reading values from their text form, as databases print them and files
//! hold them. One set of rules for every text-speaking connector, so the
//! same logical value read from PostgreSQL, MySQL or a CSV file becomes the
//! same [`Value`].
//!
//! | kind      | accepted text                                                   |
//! |-----------|-----------------------------------------------------------------|
//! | integer   | decimal digits with an optional sign                            |
//! | bool      | `t`, `true`, `1` / `f`, `false`, `0` (any case)                 |
//! | decimal   | see [`Decimal::parse`] (exponents allowed)                      |
//! | float     | Rust float syntax, `Infinity`, `-Infinity`, `NaN`               |
//! | text      | anything                                                        |
//! | bytes     | hex, with an optional `\x` or `0x` prefix                       |
//! | date      | `YYYY-MM-DD`                                                    |
//! | timestamp | RFC 3339 or `YYYY-MM-DD HH:MM:SS[.ffffff][±HH[:MM]]`, UTC if no offset |
//! | uuid      | 36-character or 32-hex-digit form                               |
//! | json      | any JSON                                                        |

use arbor_record::value::{Date, Decimal, Timestamp, parse_uuid};
use arbor_record::{CanonicalJson, Value, ValueKind};

/// Reads `text` as a value of `kind`; the error says what was expected.
pub fn parse(kind: ValueKind, text: &str) -> Result<Value, String> {
    let bad = |e: &dyn std::fmt::Display| format!("expected {kind}: {e}");
    Ok(match kind {
        ValueKind::Integer => Value::Integer(
            text.trim()
                .parse::<i128>()
                .map_err(|_| format!("expected integer, found {:?}", clip(text)))?,
        ),
        ValueKind::Bool => match text.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "1" => Value::Bool(true),
            "f" | "false" | "0" => Value::Bool(false),
            _ => return Err(format!("expected bool, found {:?}", clip(text))),
        },
        ValueKind::Decimal => Value::Decimal(Decimal::parse(text).map_err(|e| bad(&e))?),
        ValueKind::Float => Value::float(match text.trim() {
            "Infinity" | "inf" | "+Infinity" => f64::INFINITY,
            "-Infinity" | "-inf" => f64::NEG_INFINITY,
            "NaN" | "nan" => f64::NAN,
            t => t
                .parse::<f64>()
                .map_err(|_| format!("expected float, found {:?}", clip(text)))?,
        }),
        ValueKind::Text => Value::Text(text.to_owned()),
        ValueKind::Bytes => {
            let h = text
                .strip_prefix("\\x")
                .or_else(|| text.strip_prefix("0x"))
                .unwrap_or(text);
            Value::Bytes(hex::decode(h).map_err(|_| "expected bytes as hex".to_string())?)
        }
        ValueKind::Date => Value::Date(Date::parse(text.trim()).map_err(|e| bad(&e))?),
        ValueKind::Timestamp => {
            Value::Timestamp(Timestamp::parse(text.trim()).map_err(|e| bad(&e))?)
        }
        ValueKind::Uuid => Value::Uuid(parse_uuid(text.trim()).map_err(|e| bad(&e))?),
        ValueKind::Json => Value::Json(CanonicalJson::parse(text).map_err(|e| bad(&e))?),
    })
}

/// At most 40 characters of a value for an error message.
fn clip(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_text_forms_parse_to_the_same_values() {
        assert_eq!(
            parse(ValueKind::Bool, "t").unwrap(),
            parse(ValueKind::Bool, "1").unwrap()
        );
        assert_eq!(
            parse(ValueKind::Decimal, "1.10").unwrap(),
            parse(ValueKind::Decimal, "1.1").unwrap()
        );
        assert_eq!(
            parse(ValueKind::Timestamp, "2024-01-01 10:00:00+00").unwrap(),
            parse(ValueKind::Timestamp, "2024-01-01T10:00:00Z").unwrap()
        );
        assert_eq!(
            parse(ValueKind::Bytes, "\\x00ff").unwrap(),
            parse(ValueKind::Bytes, "00FF").unwrap()
        );
        assert_eq!(
            parse(ValueKind::Float, "-Infinity").unwrap(),
            Value::float(f64::NEG_INFINITY)
        );
        assert_eq!(parse(ValueKind::Float, "-0").unwrap(), Value::float(0.0));
        let e = parse(ValueKind::Integer, "12x").unwrap_err();
        assert!(e.contains("expected integer"), "{e}");
        assert!(parse(ValueKind::Bool, "yes").is_err());
    }
}
