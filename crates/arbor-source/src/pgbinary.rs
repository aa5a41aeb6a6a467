//! PostgreSQL's binary `COPY` format: a chunk split into rows, and fields
//! read either as [`Value`]s or straight into canonical bytes.
//!
//! Full scans read binary rather than text: the server formats nothing
//! (timestamps and numerics are the costly ones to print), and arbor parses
//! nothing but lengths. A build encodes each field into the canonical
//! encoding without building a [`Value`] or allocating, then hashes the row
//! ([`hash_rows`]). Every other path (lookups by key, polling, logical
//! capture) reads text through [`crate::text`], so the two readings must
//! agree value for value; `tests/postgres.rs` checks that they do on edge
//! values of every supported type, against a live server.
//!
//! Where the text form is refused (dates before year 1, infinite dates and
//! timestamps, numeric `NaN` and infinities), the binary reading refuses too.

use arbor_record::encode::{
    encode_bytes, encode_normalised_decimal, encode_text, encode_value, put_varint,
};
use arbor_record::value::{Date, Decimal, Timestamp};
use arbor_record::{CanonicalJson, DatasetKeys, EncodedRows, HashedBatch, Value, ValueKind};
use postgres::types::Type;

use crate::SourceError;
use crate::keyset::ChunkContext;
use crate::mapping::ColumnMapping;

/// The header every binary COPY stream starts with.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Header flag: each row carries an OID (never asked for).
const FLAG_OIDS: u32 = 1 << 16;

/// The field count that ends binary COPY output.
const TRAILER: [u8; 2] = [0xff, 0xff];
/// Days from 1970-01-01 (arbor's epoch) to 2000-01-01 (PostgreSQL's).
const PG_EPOCH_DAYS: i64 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS * MICROS_PER_DAY;
const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;
/// 0001-01-01 in days since 1970-01-01: PostgreSQL prints earlier dates
/// with a ` BC` suffix, which the text reading refuses.
const FIRST_AD_DAY: i64 = -719_162;

/// How one column's binary form is read, fixed by its PostgreSQL type and
/// the kind it is mapped to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// `int2`, `int4`, `int8` (the width in bytes) read as integers.
    Integer(usize),
    /// The same, read as decimals.
    IntegerDecimal(usize),
    /// `bool`.
    Bool,
    /// `numeric`.
    Numeric,
    /// `numeric` read as an integer: `numeric(20,0)` is how a PostgreSQL
    /// copy of an unsigned 64-bit column is typically declared.
    NumericInteger,
    /// `float4`.
    Float4,
    /// `float8`.
    Float8,
    /// `text`, `varchar`, `bpchar`, `name`.
    Text,
    /// `bytea`.
    Bytea,
    /// `date`.
    Date,
    /// `timestamp`, `timestamptz`.
    Timestamp,
    /// `uuid`.
    Uuid,
    /// `json`.
    Json,
    /// `jsonb` (a version byte, then text).
    Jsonb,
}

impl Field {
    /// The reading of a column of type `t` as `kind`; `None` where the
    /// type cannot be read as that kind without loss.
    pub(crate) fn of(kind: ValueKind, t: &Type) -> Option<Field> {
        let width = match *t {
            Type::INT2 => Some(2),
            Type::INT4 => Some(4),
            Type::INT8 => Some(8),
            _ => None,
        };
        Some(match (kind, width) {
            (ValueKind::Integer, Some(w)) => Field::Integer(w),
            (ValueKind::Decimal, Some(w)) => Field::IntegerDecimal(w),
            (ValueKind::Decimal, None) if *t == Type::NUMERIC => Field::Numeric,
            (ValueKind::Integer, None) if *t == Type::NUMERIC => Field::NumericInteger,
            (ValueKind::Bool, _) if *t == Type::BOOL => Field::Bool,
            (ValueKind::Float, _) if *t == Type::FLOAT4 => Field::Float4,
            (ValueKind::Float, _) if *t == Type::FLOAT8 => Field::Float8,
            (ValueKind::Text, _)
                if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(t) =>
            {
                Field::Text
            }
            (ValueKind::Bytes, _) if *t == Type::BYTEA => Field::Bytea,
            (ValueKind::Date, _) if *t == Type::DATE => Field::Date,
            (ValueKind::Timestamp, _) if [Type::TIMESTAMP, Type::TIMESTAMPTZ].contains(t) => {
                Field::Timestamp
            }
            (ValueKind::Uuid, _) if *t == Type::UUID => Field::Uuid,
            (ValueKind::Json, _) if *t == Type::JSON => Field::Json,
            (ValueKind::Json, _) if *t == Type::JSONB => Field::Jsonb,
            _ => return None,
        })
    }

    /// Reads a (non-NULL) field as a value.
    pub(crate) fn decode(self, b: &[u8]) -> Result<Value, BinaryError> {
        Ok(match self {
            Field::Integer(w) => Value::Integer(int(b, w)?.into()),
            Field::IntegerDecimal(w) => Value::Decimal(
                Decimal::parse(&int(b, w)?.to_string())
                    .map_err(|e| BinaryError::Unrepresentable(e.to_string()))?,
            ),
            Field::Bool => Value::Bool(match b {
                [0] => false,
                [1] => true,
                _ => return Err(malformed("bool", b)),
            }),
            Field::Numeric => {
                let mut text = String::new();
                numeric_text(b, &mut text)?;
                Value::Decimal(
                    Decimal::from_normalised(&text).ok_or_else(|| malformed("numeric", b))?,
                )
            }
            Field::NumericInteger => {
                let mut text = String::new();
                numeric_text(b, &mut text)?;
                // Normalised: a whole number has no point.
                Value::Integer(text.parse::<i128>().map_err(|_| {
                    BinaryError::Unrepresentable(format!(
                        "numeric {text} is not a whole number an integer column can hold"
                    ))
                })?)
            }
            Field::Float4 => Value::float(float4(b)?),
            Field::Float8 => Value::float(f64::from_be_bytes(fixed(b, "float8")?)),
            Field::Text => Value::Text(utf8(b)?.to_owned()),
            Field::Bytea => Value::Bytes(b.to_vec()),
            Field::Date => Value::Date(date(b)?),
            Field::Timestamp => Value::Timestamp(timestamp(b)?),
            Field::Uuid => Value::Uuid(fixed(b, "uuid")?),
            Field::Json => Value::Json(json(utf8(b)?)?),
            Field::Jsonb => match b.split_first() {
                Some((1, text)) => Value::Json(json(utf8(text)?)?),
                _ => return Err(malformed("jsonb", b)),
            },
        })
    }

    /// Appends a (non-NULL) field's canonical encoding to `out`, the same
    /// bytes as encoding [`Field::decode`]'s value; `scratch` is reused
    /// between calls.
    pub(crate) fn encode(
        self,
        b: &[u8],
        out: &mut Vec<u8>,
        scratch: &mut String,
    ) -> Result<(), BinaryError> {
        match self {
            Field::Text => encode_text(out, utf8(b)?),
            Field::Bytea => encode_bytes(out, b),
            Field::Numeric => {
                scratch.clear();
                numeric_text(b, scratch)?;
                encode_normalised_decimal(out, scratch).ok_or_else(|| malformed("numeric", b))?;
            }
            // Through a value: for fixed-size kinds it owns no heap memory
            // (building one costs nothing and the encoding stays in one
            // place); JSON must be put in canonical form anyway.
            _ => encode_value(out, &self.decode(b)?),
        }
        Ok(())
    }
}

/// Why bytes of PostgreSQL's binary format could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    /// A value's bytes do not have its type's layout.
    #[error("malformed binary {kind} value ({len} bytes)")]
    Malformed {
        /// The type.
        kind: &'static str,
        /// Its length.
        len: usize,
    },
    /// A well-formed value the column's kind cannot hold (infinity, NaN, a
    /// date before year 1, text that is not UTF-8).
    #[error("{0}")]
    Unrepresentable(String),
    /// The COPY stream's framing is broken.
    #[error("malformed binary COPY data at byte {at}: {problem}")]
    Framing {
        /// The byte offset.
        at: usize,
        /// What is wrong there.
        problem: String,
    },
}

fn malformed(kind: &'static str, b: &[u8]) -> BinaryError {
    BinaryError::Malformed { kind, len: b.len() }
}

fn fixed<const N: usize>(b: &[u8], what: &'static str) -> Result<[u8; N], BinaryError> {
    b.try_into().map_err(|_| malformed(what, b))
}

fn int(b: &[u8], width: usize) -> Result<i64, BinaryError> {
    match (width, b.len()) {
        (2, 2) => Ok(i16::from_be_bytes(fixed(b, "int2")?).into()),
        (4, 4) => Ok(i32::from_be_bytes(fixed(b, "int4")?).into()),
        (8, 8) => Ok(i64::from_be_bytes(fixed(b, "int8")?)),
        _ => Err(malformed("integer", b)),
    }
}

fn utf8(b: &[u8]) -> Result<&str, BinaryError> {
    std::str::from_utf8(b).map_err(|_| BinaryError::Unrepresentable("value is not UTF-8".into()))
}

fn json(text: &str) -> Result<CanonicalJson, BinaryError> {
    CanonicalJson::parse(text)
        .map_err(|e| BinaryError::Unrepresentable(format!("expected json: {e}")))
}

/// A `float4` as the text reading sees it: PostgreSQL prints the shortest
/// decimal that reads back as the same `float4`, and that decimal is then
/// read as an `f64` (so `0.1::float4` is `0.1`, not `0.10000000149…`).
fn float4(b: &[u8]) -> Result<f64, BinaryError> {
    let x = f32::from_be_bytes(fixed(b, "float4")?);
    if !x.is_finite() {
        return Ok(f64::from(x));
    }
    // Rust prints the shortest round-tripping decimal too.
    x.to_string()
        .parse::<f64>()
        .map_err(|_| malformed("float4", b))
}

fn date(b: &[u8]) -> Result<Date, BinaryError> {
    let days = i64::from(i32::from_be_bytes(fixed(b, "date")?)) + PG_EPOCH_DAYS;
    // Infinite dates are i32::MIN and i32::MAX, far outside this range.
    if days < FIRST_AD_DAY || days > i64::from(i32::MAX) - PG_EPOCH_DAYS {
        return Err(BinaryError::Unrepresentable(
            "expected date: a date before year 1, or infinite".into(),
        ));
    }
    i32::try_from(days)
        .map(Date)
        .map_err(|_| malformed("date", b))
}

fn timestamp(b: &[u8]) -> Result<Timestamp, BinaryError> {
    let raw = i64::from_be_bytes(fixed(b, "timestamp")?);
    if raw == i64::MIN || raw == i64::MAX {
        return Err(BinaryError::Unrepresentable(
            "expected timestamp: infinite timestamps are not supported".into(),
        ));
    }
    let micros = raw
        .checked_add(PG_EPOCH_MICROS)
        .ok_or_else(|| malformed("timestamp", b))?;
    if micros.div_euclid(MICROS_PER_DAY) < FIRST_AD_DAY {
        return Err(BinaryError::Unrepresentable(
            "expected timestamp: a time before year 1".into(),
        ));
    }
    Ok(Timestamp(micros))
}

/// Writes a binary `numeric` in the normal form of [`Decimal`] (no
/// leading or trailing zeros, `0` for zero). `NaN` and the infinities are
/// refused, as their text forms are.
///
/// The wire form: `ndigits`, `weight`, `sign`, `dscale` (each 16 bits),
/// then `ndigits` base-10000 digits; the value is
/// `Σ digit[i] × 10000^(weight − i)`.
fn numeric_text(b: &[u8], out: &mut String) -> Result<(), BinaryError> {
    let word = |i: usize| -> Option<u16> {
        let w = b.get(2 * i..2 * i + 2)?;
        Some(u16::from_be_bytes([w[0], w[1]]))
    };
    let (Some(ndigits), Some(weight), Some(sign)) = (word(0), word(1), word(2)) else {
        return Err(malformed("numeric", b));
    };
    let (ndigits, weight) = (i64::from(ndigits as i16), i64::from(weight as i16));
    if ndigits < 0 || b.len() as i64 != 8 + 2 * ndigits {
        return Err(malformed("numeric", b));
    }
    let negative = match sign {
        0x0000 => false,
        0x4000 => true,
        0xC000 => {
            return Err(BinaryError::Unrepresentable(
                "expected decimal: NaN is not a decimal".into(),
            ));
        }
        0xD000 | 0xF000 => {
            return Err(BinaryError::Unrepresentable(
                "expected decimal: infinity is not a decimal".into(),
            ));
        }
        _ => return Err(malformed("numeric", b)),
    };
    let digit = |i: i64| -> Result<u16, BinaryError> {
        if i < 0 || i >= ndigits {
            return Ok(0);
        }
        match word(4 + i as usize) {
            Some(d) if d < 10_000 => Ok(d),
            _ => Err(malformed("numeric", b)),
        }
    };
    let start = out.len();
    if negative {
        out.push('-');
    }
    let int_start = out.len();
    for i in 0..=weight {
        let d = digit(i)?;
        if out.len() == int_start {
            if d != 0 {
                out.push_str(&d.to_string());
            }
        } else {
            push4(out, d);
        }
    }
    let zero_int = out.len() == int_start;
    if zero_int {
        out.push('0');
    }
    if ndigits - 1 > weight {
        out.push('.');
        for i in weight + 1..ndigits {
            push4(out, digit(i)?);
        }
        let trimmed = out.trim_end_matches('0').len();
        out.truncate(trimmed);
        if out.ends_with('.') {
            out.pop();
        }
    }
    if negative && zero_int && out.len() == int_start + 1 {
        // -0 is 0.
        out.remove(start);
    }
    Ok(())
}

/// Appends a base-10000 digit as four decimal digits.
fn push4(out: &mut String, d: u16) {
    for div in [1000, 100, 10, 1] {
        out.push(char::from(b'0' + (d / div % 10) as u8));
    }
}

/// Reads the framing of one binary COPY output and returns where each row
/// starts (at its field count). Every row must have `fields` fields and
/// every length must fit: after this, [`row_fields`] cannot run out of
/// bytes.
pub(crate) fn split_rows(raw: &[u8], fields: usize) -> Result<Vec<usize>, BinaryError> {
    let bad = |at: usize, what: &str| BinaryError::Framing {
        at,
        problem: what.to_owned(),
    };
    if raw.get(..SIGNATURE.len()) != Some(&SIGNATURE[..]) {
        return Err(bad(0, "no PGCOPY signature"));
    }
    let mut at = SIGNATURE.len();
    let flags = be_u32(raw, at).ok_or_else(|| bad(at, "header cut short"))?;
    if flags & FLAG_OIDS != 0 {
        return Err(bad(at, "rows carry OIDs"));
    }
    let ext = be_u32(raw, at + 4).ok_or_else(|| bad(at, "header cut short"))?;
    at += 8 + ext as usize;
    let mut rows = Vec::new();
    loop {
        let count = be_u16(raw, at).ok_or_else(|| bad(at, "stream ends without a trailer"))?;
        if count == 0xffff {
            if at + 2 != raw.len() {
                return Err(bad(at, "bytes after the trailer"));
            }
            return Ok(rows);
        }
        if usize::from(count) != fields {
            return Err(bad(
                at,
                &format!("a row of {count} fields, expected {fields}"),
            ));
        }
        rows.push(at);
        at += 2;
        for _ in 0..fields {
            let len = be_u32(raw, at).ok_or_else(|| bad(at, "row cut short"))? as i32;
            at += 4;
            if len == -1 {
                continue;
            }
            if len < 0 || at + len as usize > raw.len() {
                return Err(bad(at, "field length past the end"));
            }
            at += len as usize;
        }
    }
}

/// Ends binary COPY output that was cut off mid-stream after its last
/// complete row, with a trailer, so that [`split_rows`] reads the rows it
/// holds. Fails if not even the header is complete.
pub(crate) fn close_cut(raw: &mut Vec<u8>, fields: usize) -> Result<(), BinaryError> {
    let bad = |at: usize, what: &str| BinaryError::Framing {
        at,
        problem: what.to_owned(),
    };
    if raw.get(..SIGNATURE.len()) != Some(&SIGNATURE[..]) {
        return Err(bad(0, "no PGCOPY signature"));
    }
    let ext = be_u32(raw, SIGNATURE.len() + 4).ok_or_else(|| bad(0, "header cut short"))?;
    let mut end = SIGNATURE.len() + 8 + ext as usize;
    if end > raw.len() {
        return Err(bad(0, "header cut short"));
    }
    // `end` is after the last complete row; each pass tries one more.
    'rows: loop {
        let mut at = end;
        match be_u16(raw, at) {
            Some(count) if usize::from(count) == fields => at += 2,
            _ => break,
        }
        for _ in 0..fields {
            let Some(len) = be_u32(raw, at) else {
                break 'rows;
            };
            at += 4;
            let len = len as i32;
            if len > 0 {
                at += len as usize;
            }
            if at > raw.len() {
                break 'rows;
            }
        }
        end = at;
    }
    raw.truncate(end);
    raw.extend_from_slice(&TRAILER);
    Ok(())
}

fn be_u16(raw: &[u8], at: usize) -> Option<u16> {
    let b = raw.get(at..at + 2)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

fn be_u32(raw: &[u8], at: usize) -> Option<u32> {
    let b = raw.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The fields of the row starting at `at` (see [`split_rows`]), `None`
/// for NULL, into `out`.
pub(crate) fn row_fields<'a>(raw: &'a [u8], at: usize, out: &mut Vec<Option<&'a [u8]>>) {
    out.clear();
    let Some(count) = be_u16(raw, at) else {
        return;
    };
    let mut at = at + 2;
    for _ in 0..count {
        let Some(len) = be_u32(raw, at) else {
            return;
        };
        at += 4;
        let len = len as i32;
        if len < 0 {
            out.push(None);
            continue;
        }
        let Some(field) = raw.get(at..at + len as usize) else {
            return;
        };
        out.push(Some(field));
        at += len as usize;
    }
}

/// What reading a chunk needs: the mapping and the dataset (as for text
/// chunks), and each select-list column's reading.
pub(crate) struct BinaryContext {
    /// The mapping (transforms, NULL keys) and the dataset for messages.
    pub chunk: ChunkContext,
    /// One reading per select-list column: the key, then the values.
    pub fields: Vec<Field>,
}

impl BinaryContext {
    fn columns(&self) -> impl Iterator<Item = &ColumnMapping> {
        let mapping = &self.chunk.mapping;
        mapping.all_columns()
    }

    fn value_error(&self, column: &ColumnMapping, problem: impl ToString) -> SourceError {
        self.chunk.value_error(&column.source, problem.to_string())
    }

    fn short_row(&self) -> SourceError {
        SourceError::Read {
            dataset: self.chunk.dataset.clone(),
            reason: "a binary COPY row has fewer fields than mapped".into(),
        }
    }

    /// The values of the row at `at`, in select-list order, the first
    /// `take` of them (all if `None`), before transforms.
    pub fn values(
        &self,
        raw: &[u8],
        at: usize,
        take: Option<usize>,
    ) -> Result<Vec<Value>, SourceError> {
        let mut fields = Vec::with_capacity(self.fields.len());
        row_fields(raw, at, &mut fields);
        let wanted = take.unwrap_or(self.fields.len()).min(self.fields.len());
        if fields.len() < wanted {
            return Err(self.short_row());
        }
        let key_len = self.chunk.mapping.key().len();
        let mut values = Vec::with_capacity(wanted);
        for (i, ((c, f), bytes)) in self.columns().zip(&self.fields).zip(fields).enumerate() {
            if i == wanted {
                break;
            }
            values.push(match bytes {
                None => Value::Null,
                Some(b) => f.decode(b).map_err(|p| {
                    let key = (i >= key_len).then(|| &values[..key_len]);
                    self.chunk.in_row(self.value_error(c, p), key)
                })?,
            });
        }
        Ok(values)
    }

    /// Hashes the rows at `rows` into a batch, encoding each field
    /// straight into the canonical encoding.
    pub fn hash_rows(
        &self,
        keys: &DatasetKeys,
        raw: &[u8],
        rows: &[usize],
    ) -> Result<HashedBatch, SourceError> {
        let key_len = self.chunk.mapping.key().len();
        let columns: Vec<&ColumnMapping> = self.columns().collect();
        let mut encoded = EncodedRows::with_capacity(rows.len());
        let mut fields = Vec::with_capacity(self.fields.len());
        let mut row = Vec::with_capacity(256);
        let mut scratch = String::new();
        for &at in rows {
            row_fields(raw, at, &mut fields);
            if fields.len() != self.fields.len() {
                return Err(self.short_row());
            }
            // canon(key) ‖ canon(values), side by side: hashed in one call.
            row.clear();
            put_varint(&mut row, key_len as u64);
            for i in 0..key_len {
                let c = columns[i];
                let b = fields[i].ok_or_else(|| self.value_error(c, crate::NULL_KEY))?;
                if c.transforms.is_identity() {
                    self.fields[i]
                        .encode(b, &mut row, &mut scratch)
                        .map_err(|p| self.value_error(c, p))?;
                } else {
                    // A normalised key (`bob` for `Bob `): decoded, shaped
                    // and encoded like any transformed value.
                    let v = self.fields[i]
                        .decode(b)
                        .map_err(|p| self.value_error(c, p))?;
                    encode_value(&mut row, &c.transforms.apply(v));
                }
            }
            let key_bytes = row.len();
            put_varint(&mut row, (self.fields.len() - key_len) as u64);
            // A value error names the row by its key (decoded only then).
            let in_row = |e: SourceError| match self.values(raw, at, Some(key_len)) {
                Ok(key) => self.chunk.in_row(e, Some(&key)),
                Err(_) => e,
            };
            for i in key_len..self.fields.len() {
                let c = columns[i];
                match fields[i] {
                    None => encode_value(&mut row, &Value::Null),
                    Some(b) if c.transforms.is_identity() => self.fields[i]
                        .encode(b, &mut row, &mut scratch)
                        .map_err(|p| in_row(self.value_error(c, p)))?,
                    Some(b) => {
                        let v = self.fields[i]
                            .decode(b)
                            .map_err(|p| in_row(self.value_error(c, p)))?;
                        encode_value(&mut row, &c.transforms.apply(v));
                    }
                }
            }
            encoded.push(&row, key_bytes);
        }
        Ok(HashedBatch::hash_rows(keys, &encoded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_reads_as_an_integer_only_when_whole() {
        // 18446744073709551615 = 1844 6744 0737 0955 1615 (base 10000).
        let max = numeric(5, 4, 0, &[1844, 6744, 737, 955, 1615]);
        assert_eq!(
            Field::NumericInteger.decode(&max),
            Ok(Value::Integer(u64::MAX.into()))
        );
        let negative = numeric(1, 0, 0x4000, &[12]);
        assert_eq!(
            Field::NumericInteger.decode(&negative),
            Ok(Value::Integer(-12))
        );
        // 1.5
        let e = Field::NumericInteger
            .decode(&numeric(2, 0, 0, &[1, 5000]))
            .unwrap_err();
        assert!(
            e.to_string().contains("numeric 1.5 is not a whole number"),
            "{e}"
        );
        assert_eq!(
            Field::of(ValueKind::Integer, &Type::NUMERIC),
            Some(Field::NumericInteger)
        );
    }

    fn numeric(ndigits: i16, weight: i16, sign: u16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [ndigits as u16, weight as u16, sign, 0] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    fn text(b: &[u8]) -> Result<String, BinaryError> {
        let mut s = String::new();
        numeric_text(b, &mut s).map(|()| s)
    }

    #[test]
    fn numerics_come_out_in_normal_form() {
        for (digits, weight, sign, want) in [
            (vec![], 0, 0, "0"),
            (vec![], 0, 0x4000, "0"),
            (vec![1, 2345], 0, 0, "1.2345"),
            (vec![12, 3400], 1, 0x4000, "-123400"),
            (vec![123, 4500], 0, 0, "123.45"),
            (vec![5000], -1, 0, "0.5"),
            (vec![5], -2, 0x4000, "-0.00000005"),
            (vec![1], 3, 0, "1000000000000"),
            (vec![9999, 9999], 0, 0, "9999.9999"),
        ] {
            let b = numeric(digits.len() as i16, weight, sign, &digits);
            let got = text(&b).unwrap();
            assert_eq!(got, want);
            assert_eq!(Decimal::parse(want).unwrap().as_str(), want);
        }
        assert!(
            text(&numeric(0, 0, 0xC000, &[]))
                .unwrap_err()
                .to_string()
                .contains("NaN")
        );
        assert!(text(&numeric(0, 0, 0xD000, &[])).is_err());
        assert!(text(&numeric(1, 0, 0, &[10_000])).is_err());
        assert!(text(&numeric(2, 0, 0, &[1])).is_err());
        assert!(text(&[0, 1]).is_err());
    }

    fn copy(rows: &[&[Option<&[u8]>]]) -> Vec<u8> {
        let mut b = SIGNATURE.to_vec();
        b.extend_from_slice(&[0; 8]);
        for r in rows {
            b.extend_from_slice(&(r.len() as u16).to_be_bytes());
            for f in *r {
                match f {
                    None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        b.extend_from_slice(v);
                    }
                }
            }
        }
        b.extend_from_slice(&[0xff, 0xff]);
        b
    }

    #[test]
    fn rows_split_and_framing_errors_are_named() {
        let raw = copy(&[&[Some(b"ab"), None], &[Some(b""), Some(b"xyz")]]);
        let rows = split_rows(&raw, 2).unwrap();
        assert_eq!(rows.len(), 2);
        let mut fields = Vec::new();
        row_fields(&raw, rows[1], &mut fields);
        assert_eq!(fields, vec![Some(&b""[..]), Some(&b"xyz"[..])]);
        row_fields(&raw, rows[0], &mut fields);
        assert_eq!(fields, vec![Some(&b"ab"[..]), None]);

        assert!(
            split_rows(&raw, 3)
                .unwrap_err()
                .to_string()
                .contains("expected 3")
        );
        assert!(
            split_rows(b"hello", 2)
                .unwrap_err()
                .to_string()
                .contains("signature")
        );
        for cut in SIGNATURE.len()..raw.len() {
            assert!(split_rows(&raw[..cut], 2).is_err(), "cut at {cut}");
        }
        let mut long = raw.clone();
        long.push(0);
        assert!(
            split_rows(&long, 2)
                .unwrap_err()
                .to_string()
                .contains("after the trailer")
        );
    }

    proptest::proptest! {
        /// Output cut off anywhere after its header reads as the rows that
        /// arrived whole: never a row cut short, never one skipped.
        #[test]
        fn a_cut_stream_keeps_exactly_its_complete_rows(
            rows in proptest::collection::vec(
                proptest::collection::vec(proptest::option::of(
                    proptest::collection::vec(proptest::num::u8::ANY, 0..40)), 3),
                0..12),
            cut in proptest::num::usize::ANY,
        ) {
            let borrowed: Vec<Vec<Option<&[u8]>>> = rows
                .iter()
                .map(|r| r.iter().map(|f| f.as_deref()).collect())
                .collect();
            let refs: Vec<&[Option<&[u8]>]> = borrowed.iter().map(Vec::as_slice).collect();
            let whole = copy(&refs);
            let header = SIGNATURE.len() + 8;
            let cut = header + cut % (whole.len() - header + 1);
            let mut raw = whole[..cut].to_vec();
            close_cut(&mut raw, 3).unwrap();
            let starts = split_rows(&raw, 3).unwrap();
            // Row i ends where row i + 1 (or the trailer) starts.
            let mut ends = split_rows(&whole, 3).unwrap();
            ends.push(whole.len() - TRAILER.len());
            let complete = ends.iter().skip(1).filter(|&&end| end <= cut).count();
            proptest::prop_assert_eq!(starts.len(), complete);
            let mut fields = Vec::new();
            for (i, &at) in starts.iter().enumerate() {
                row_fields(&raw, at, &mut fields);
                proptest::prop_assert_eq!(&fields, &borrowed[i]);
            }
        }
    }

    #[test]
    fn a_cut_without_a_whole_header_is_refused() {
        let raw = copy(&[&[Some(b"ab"), None]]);
        for cut in 0..SIGNATURE.len() + 8 {
            assert!(
                close_cut(&mut raw[..cut].to_vec(), 2).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn dates_and_timestamps_before_year_one_or_infinite_are_refused() {
        let d = |days: i32| Field::Date.decode(&days.to_be_bytes());
        assert_eq!(d(0).unwrap(), Value::Date(Date(PG_EPOCH_DAYS as i32)));
        assert!(d(i32::MAX).is_err());
        assert!(d(i32::MIN).is_err());
        assert!(d((FIRST_AD_DAY - PG_EPOCH_DAYS) as i32).is_ok());
        assert!(d((FIRST_AD_DAY - PG_EPOCH_DAYS - 1) as i32).is_err());
        let t = |us: i64| Field::Timestamp.decode(&us.to_be_bytes());
        assert_eq!(t(0).unwrap(), Value::Timestamp(Timestamp(PG_EPOCH_MICROS)));
        assert!(t(i64::MAX).is_err());
        assert!(t(i64::MIN).is_err());
        let first_ad = FIRST_AD_DAY * MICROS_PER_DAY - PG_EPOCH_MICROS;
        assert!(t(first_ad).is_ok());
        assert!(t(first_ad - 1).is_err());
    }

    #[test]
    fn float4_reads_as_its_shortest_decimal() {
        let f = |x: f32| Field::Float4.decode(&x.to_be_bytes()).unwrap();
        assert_eq!(f(0.1), Value::float(0.1));
        assert_eq!(f(-0.0), Value::float(0.0));
        assert_eq!(f(f32::INFINITY), Value::float(f64::INFINITY));
        assert_eq!(f(f32::NAN), Value::float(f64::NAN));
        assert_eq!(f(1e10), Value::float(1e10));
    }

    #[test]
    fn encoding_a_field_matches_encoding_its_value() {
        let cases: Vec<(Field, Vec<u8>)> = vec![
            (Field::Integer(4), 7i32.to_be_bytes().to_vec()),
            (Field::Integer(8), (-1i64).to_be_bytes().to_vec()),
            (Field::IntegerDecimal(2), (-30i16).to_be_bytes().to_vec()),
            (Field::Numeric, numeric(2, 0, 0, &[123, 4500])),
            (Field::Text, "héllo".as_bytes().to_vec()),
            (Field::Bytea, vec![0, 255]),
            (Field::Bool, vec![1]),
            (Field::Float8, 2.5f64.to_be_bytes().to_vec()),
            (Field::Date, 100i32.to_be_bytes().to_vec()),
            (Field::Timestamp, 5i64.to_be_bytes().to_vec()),
            (Field::Uuid, vec![7; 16]),
            (Field::Json, br#"{"b": 1, "a": [1.0]}"#.to_vec()),
            (Field::Jsonb, b"\x01{\"a\": 2}".to_vec()),
        ];
        let mut scratch = String::new();
        for (field, bytes) in cases {
            let mut direct = Vec::new();
            field.encode(&bytes, &mut direct, &mut scratch).unwrap();
            let mut via_value = Vec::new();
            encode_value(&mut via_value, &field.decode(&bytes).unwrap());
            assert_eq!(direct, via_value, "{field:?}");
        }
        assert!(
            Field::Text
                .encode(&[0xff], &mut Vec::new(), &mut scratch)
                .is_err()
        );
        assert!(Field::Jsonb.decode(b"\x02{}").is_err());
        assert!(Field::Integer(4).decode(&[0; 8]).is_err());
    }
}
