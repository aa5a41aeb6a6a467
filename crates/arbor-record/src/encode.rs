//! Canonical encoding v2: the exact bytes that are hashed and stored (v2
//! keeps every digit of a JSON number; see `CanonicalJson`).
//!
//! ```text
//! tuple   := varint(count) value*
//! value   := tag:u8 payload
//!   0x00 null       (no payload)
//!   0x01 bool       0x00 | 0x01
//!   0x02 integer    len:u8 (1..=16) ‖ minimal two's-complement big-endian bytes
//!   0x03 decimal    varint(len) ‖ normalised ASCII text (see `Decimal`)
//!   0x04 float      8 bytes: big-endian canonical IEEE-754 bits
//!   0x05 text       varint(len) ‖ UTF-8 bytes
//!   0x06 bytes      varint(len) ‖ bytes
//!   0x07 date       4 bytes: big-endian i32 days since 1970-01-01
//!   0x08 timestamp  8 bytes: big-endian i64 microseconds since the epoch, UTC
//!   0x09 uuid       16 bytes
//!   0x0a json       varint(len) ‖ canonical JSON text (see `CanonicalJson`)
//! varint  := unsigned LEB128, at most 10 bytes, no redundant trailing 0x80 groups
//! ```
//!
//! Every value has exactly one encoding and the decoder rejects any other
//! (a non-minimal integer or varint, `-0.0`, a decimal or JSON text not in
//! normal form), so `decode(encode(v)) == v` and `encode(decode(b)) == b`.
//! A tuple is self-delimiting, so `canon(key) ‖ canon(values)` is unambiguous.

use crate::error::DecodeError;
use crate::value::{CanonicalF64, CanonicalJson, Date, Decimal, Timestamp, Value};

/// The version of the canonical encoding this crate implements.
pub const ENCODING_VERSION: u32 = 2;

const TAG_NULL: u8 = 0x00;
const TAG_BOOL: u8 = 0x01;
const TAG_INTEGER: u8 = 0x02;
const TAG_DECIMAL: u8 = 0x03;
const TAG_FLOAT: u8 = 0x04;
const TAG_TEXT: u8 = 0x05;
const TAG_BYTES: u8 = 0x06;
const TAG_DATE: u8 = 0x07;
const TAG_TIMESTAMP: u8 = 0x08;
const TAG_UUID: u8 = 0x09;
const TAG_JSON: u8 = 0x0a;

/// Longest LEB128 encoding of a u64.
const MAX_VARINT_LEN: usize = 10;

/// Appends the LEB128 encoding of `v`.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The number of bytes [`put_varint`] writes for `v`.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends the canonical encoding of one value.
pub fn encode_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(TAG_NULL),
        Value::Bool(b) => {
            out.push(TAG_BOOL);
            out.push(u8::from(*b));
        }
        Value::Integer(i) => {
            out.push(TAG_INTEGER);
            let bytes = i.to_be_bytes();
            let len = minimal_int_len(*i);
            out.push(len as u8);
            out.extend_from_slice(&bytes[16 - len..]);
        }
        Value::Decimal(d) => put_len_prefixed(out, TAG_DECIMAL, d.as_str().as_bytes()),
        Value::Float(x) => {
            out.push(TAG_FLOAT);
            out.extend_from_slice(&x.bits().to_be_bytes());
        }
        Value::Text(s) => put_len_prefixed(out, TAG_TEXT, s.as_bytes()),
        Value::Bytes(b) => put_len_prefixed(out, TAG_BYTES, b),
        Value::Date(d) => {
            out.push(TAG_DATE);
            out.extend_from_slice(&d.0.to_be_bytes());
        }
        Value::Timestamp(t) => {
            out.push(TAG_TIMESTAMP);
            out.extend_from_slice(&t.0.to_be_bytes());
        }
        Value::Uuid(u) => {
            out.push(TAG_UUID);
            out.extend_from_slice(u);
        }
        Value::Json(j) => put_len_prefixed(out, TAG_JSON, j.as_str().as_bytes()),
    }
}

/// Appends the canonical encoding of a text value without building a
/// [`Value`] (connectors that encode straight from the wire).
pub fn encode_text(out: &mut Vec<u8>, text: &str) {
    put_len_prefixed(out, TAG_TEXT, text.as_bytes());
}

/// Appends the canonical encoding of a bytes value without building a [`Value`].
pub fn encode_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len_prefixed(out, TAG_BYTES, bytes);
}

/// Appends the canonical encoding of a decimal already in normal form (see
/// [`Decimal`]); `None` if `normalised` is not, so nothing unnormalised is
/// ever hashed.
pub fn encode_normalised_decimal(out: &mut Vec<u8>, normalised: &str) -> Option<()> {
    if !crate::value::is_normalised_decimal(normalised) {
        return None;
    }
    put_len_prefixed(out, TAG_DECIMAL, normalised.as_bytes());
    Some(())
}

/// Appends the canonical encoding of a tuple (a key or a row's values).
pub fn encode_tuple(out: &mut Vec<u8>, values: &[Value]) {
    put_varint(out, values.len() as u64);
    for v in values {
        encode_value(out, v);
    }
}

/// The canonical encoding of a tuple as a new vector.
pub fn tuple_bytes(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + values.len() * 9);
    encode_tuple(&mut out, values);
    out
}

/// A tuple's values for people: `7` or `(7, abc)` (two or more values in
/// parentheses).
pub fn display_tuple(values: &[Value]) -> String {
    let shown: Vec<String> = values.iter().map(Value::to_string).collect();
    match shown.as_slice() {
        [one] => one.clone(),
        _ => format!("({})", shown.join(", ")),
    }
}

/// [`display_tuple`] of a canonical tuple; its bytes in hex if it does not
/// decode.
pub fn display_canonical_tuple(bytes: &[u8]) -> String {
    match decode_tuple(bytes) {
        Ok(values) => display_tuple(&values),
        Err(_) => format!("0x{}", hex::encode(bytes)),
    }
}

/// Decodes a whole buffer holding exactly one tuple.
pub fn decode_tuple(bytes: &[u8]) -> Result<Vec<Value>, DecodeError> {
    let mut r = Reader { bytes, pos: 0 };
    let values = r.tuple()?;
    if r.pos != bytes.len() {
        return Err(r.error("trailing bytes after tuple"));
    }
    Ok(values)
}

fn put_len_prefixed(out: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    out.push(tag);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Bytes needed for `i` in two's complement with no redundant sign bytes.
fn minimal_int_len(i: i128) -> usize {
    let redundant = if i < 0 {
        i.leading_ones()
    } else {
        i.leading_zeros()
    };
    // Keep one sign bit: a byte can go only if all of its 8 bits and the
    // next byte's top bit are sign bits.
    let droppable = (redundant.saturating_sub(1) / 8) as usize;
    (16 - droppable).max(1)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, reason: &'static str) -> DecodeError {
        DecodeError {
            offset: self.pos,
            reason,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| self.error("unexpected end of input"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut v: u64 = 0;
        for i in 0..MAX_VARINT_LEN {
            let b = self.take(1)?[0];
            let bits = u64::from(b & 0x7f);
            if i == MAX_VARINT_LEN - 1 && b > 1 {
                self.pos = start;
                return Err(self.error("varint overflows u64"));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    self.pos = start;
                    return Err(self.error("non-minimal varint"));
                }
                return Ok(v);
            }
        }
        self.pos = start;
        Err(self.error("varint too long"))
    }

    fn len_prefixed(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| self.error("length overflows usize"))?;
        self.take(len)
    }

    fn utf8(&mut self) -> Result<&'a str, DecodeError> {
        let start = self.pos;
        let raw = self.len_prefixed()?;
        std::str::from_utf8(raw).map_err(|_| DecodeError {
            offset: start,
            reason: "text is not UTF-8",
        })
    }

    fn tuple(&mut self) -> Result<Vec<Value>, DecodeError> {
        let count = self.varint()?;
        // Every value takes at least one byte: a count beyond what is left is
        // corrupt, and checking first keeps a hostile count from allocating.
        if count > (self.bytes.len() - self.pos) as u64 {
            return Err(self.error("tuple count exceeds remaining bytes"));
        }
        let mut values = Vec::with_capacity(count as usize);
        for _ in 0..count {
            values.push(self.value()?);
        }
        Ok(values)
    }

    fn value(&mut self) -> Result<Value, DecodeError> {
        let at = self.pos;
        let fail = |reason| DecodeError { offset: at, reason };
        let tag = self.take(1)?[0];
        Ok(match tag {
            TAG_NULL => Value::Null,
            TAG_BOOL => match self.take(1)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                _ => return Err(fail("bool is neither 0 nor 1")),
            },
            TAG_INTEGER => {
                let len = self.take(1)?[0] as usize;
                if !(1..=16).contains(&len) {
                    return Err(fail("integer length not in 1..=16"));
                }
                let raw = self.take(len)?;
                let fill = if raw[0] & 0x80 != 0 { 0xff } else { 0x00 };
                let mut buf = [fill; 16];
                buf[16 - len..].copy_from_slice(raw);
                let i = i128::from_be_bytes(buf);
                if minimal_int_len(i) != len {
                    return Err(fail("non-minimal integer"));
                }
                Value::Integer(i)
            }
            TAG_DECIMAL => {
                let s = self.utf8()?;
                Value::Decimal(
                    Decimal::from_normalised(s).ok_or_else(|| fail("decimal not normalised"))?,
                )
            }
            TAG_FLOAT => {
                let bits = u64::from_be_bytes(self.array::<8>()?);
                Value::Float(
                    CanonicalF64::from_canonical_bits(bits)
                        .ok_or_else(|| fail("float not canonical"))?,
                )
            }
            TAG_TEXT => Value::Text(self.utf8()?.to_owned()),
            TAG_BYTES => Value::Bytes(self.len_prefixed()?.to_vec()),
            TAG_DATE => Value::Date(Date(i32::from_be_bytes(self.array::<4>()?))),
            TAG_TIMESTAMP => Value::Timestamp(Timestamp(i64::from_be_bytes(self.array::<8>()?))),
            TAG_UUID => Value::Uuid(self.array::<16>()?),
            TAG_JSON => {
                let s = self.utf8()?;
                Value::Json(
                    CanonicalJson::from_canonical(s).ok_or_else(|| fail("json not canonical"))?,
                )
            }
            _ => return Err(fail("unknown value tag")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::parse_uuid;
    use proptest::prelude::*;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode_value(&mut out, v);
        out
    }

    #[test]
    fn exact_bytes_of_each_type() {
        assert_eq!(enc(&Value::Null), [0x00]);
        assert_eq!(enc(&Value::Bool(true)), [0x01, 0x01]);
        assert_eq!(enc(&Value::Integer(0)), [0x02, 0x01, 0x00]);
        assert_eq!(enc(&Value::Integer(127)), [0x02, 0x01, 0x7f]);
        assert_eq!(enc(&Value::Integer(128)), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(enc(&Value::Integer(-1)), [0x02, 0x01, 0xff]);
        assert_eq!(enc(&Value::Integer(-128)), [0x02, 0x01, 0x80]);
        assert_eq!(enc(&Value::Integer(-129)), [0x02, 0x02, 0xff, 0x7f]);
        assert_eq!(
            enc(&Value::Integer(u64::MAX as i128)),
            [
                0x02, 0x09, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
            ]
        );
        assert_eq!(enc(&Value::Integer(i128::MIN)).len(), 18);
        assert_eq!(
            enc(&Value::Decimal(Decimal::parse("1.10").unwrap())),
            [0x03, 0x03, b'1', b'.', b'1']
        );
        assert_eq!(
            enc(&Value::float(1.0)),
            [0x04, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(enc(&Value::float(-0.0)), [0x04, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(enc(&Value::text("")), [0x05, 0x00]);
        assert_eq!(enc(&Value::text("é")), [0x05, 0x02, 0xc3, 0xa9]);
        assert_eq!(enc(&Value::Bytes(vec![1, 2])), [0x06, 0x02, 1, 2]);
        assert_eq!(enc(&Value::Date(Date(-1))), [0x07, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            enc(&Value::Timestamp(Timestamp(1))),
            [0x08, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        let u = parse_uuid("00000000-0000-0000-0000-0000000000ff").unwrap();
        let mut want = vec![0x09];
        want.extend_from_slice(&u);
        assert_eq!(enc(&Value::Uuid(u)), want);
        assert_eq!(
            enc(&Value::Json(
                CanonicalJson::parse("{\"b\":1, \"a\":2}").unwrap()
            )),
            [&[0x0a, 13][..], br#"{"a":2,"b":1}"#].concat()
        );
        assert_eq!(
            tuple_bytes(&[Value::Integer(1), Value::Null]),
            [0x02, 0x02, 0x01, 0x01, 0x00]
        );
    }

    #[test]
    fn null_and_empty_text_differ() {
        assert_ne!(tuple_bytes(&[Value::Null]), tuple_bytes(&[Value::text("")]));
    }

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }

    #[test]
    fn decoder_rejects_non_canonical_forms() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x01, 0x01, 0x02], "bool is neither 0 nor 1"),
            (&[0x01, 0x02, 0x02, 0x00, 0x01], "non-minimal integer"),
            (&[0x01, 0x02, 0x00], "integer length not in 1..=16"),
            (
                &[0x01, 0x04, 0x80, 0, 0, 0, 0, 0, 0, 0],
                "float not canonical",
            ),
            (
                &[0x01, 0x03, 0x03, b'1', b'.', b'0'],
                "decimal not normalised",
            ),
            (&[0x01, 0x05, 0x01, 0xff], "text is not UTF-8"),
            (&[0x01, 0x05, 0x80, 0x00], "non-minimal varint"),
            (&[0x01, 0x0b], "unknown value tag"),
            (&[0x05, 0x00], "tuple count exceeds remaining bytes"),
            (&[0x01, 0x00, 0x00], "trailing bytes after tuple"),
            (&[0x01, 0x05, 0x05, b'a'], "unexpected end of input"),
        ];
        for (bytes, reason) in cases {
            let err = decode_tuple(bytes).unwrap_err();
            assert_eq!(err.reason, *reason, "{bytes:x?}");
        }
    }

    pub(crate) fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i128>().prop_map(Value::Integer),
            any::<i64>().prop_map(|i| Value::Integer(i as i128)),
            (any::<i64>(), 0u32..30).prop_map(|(m, s)| {
                let text = format!("{m}e-{s}");
                Value::Decimal(Decimal::parse(&text).expect("generated decimal parses"))
            }),
            any::<f64>().prop_map(Value::float),
            ".*".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
            (-1_000_000i32..1_000_000).prop_map(|d| Value::Date(Date(d))),
            any::<i64>().prop_map(|t| Value::Timestamp(Timestamp(t))),
            any::<[u8; 16]>().prop_map(Value::Uuid),
            (any::<i32>(), ".{0,8}", any::<bool>()).prop_map(|(n, s, b)| {
                let j = serde_json::json!({ "s": s, "n": n, "nested": [b, null, 1.5] });
                Value::Json(CanonicalJson::from_value(&j))
            }),
        ]
    }

    proptest! {
        #[test]
        fn tuples_round_trip(values in proptest::collection::vec(any_value(), 0..8)) {
            let bytes = tuple_bytes(&values);
            let back = decode_tuple(&bytes).expect("own encoding decodes");
            prop_assert_eq!(&back, &values);
            prop_assert_eq!(tuple_bytes(&back), bytes);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(values) = decode_tuple(&bytes) {
                // Whatever decodes must be the one canonical form of its values.
                prop_assert_eq!(tuple_bytes(&values), bytes);
            }
        }

        #[test]
        fn truncations_are_errors(values in proptest::collection::vec(any_value(), 1..6), cut in any::<prop::sample::Index>()) {
            let bytes = tuple_bytes(&values);
            let cut = cut.index(bytes.len());
            prop_assert!(decode_tuple(&bytes[..cut]).is_err());
        }
    }
}
