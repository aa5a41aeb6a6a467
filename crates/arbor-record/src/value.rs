//! Typed values and their normalisation.
//!
//! A [`Value`] is what a connector hands to the engine after applying the
//! dataset's mapping. Constructors normalise, so two values that are equal
//! logically (`1.10` and `1.1`, `-0.0` and `0.0`, JSON objects with keys in
//! different orders) are equal as Rust values and encode to the same bytes.

use std::fmt;

use crate::error::ValueError;

/// One typed value of a record.
///
/// Variants hold normalised data: build decimals, floats, timestamps and JSON
/// through their constructors ([`Decimal::parse`], [`Value::float`],
/// [`Timestamp::parse`], [`CanonicalJson::parse`]) rather than by hand.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    /// SQL NULL (distinct from the empty string).
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer; `i128` holds every SQL integer type, unsigned 64-bit included.
    Integer(i128),
    /// An exact decimal, normalised (see [`Decimal`]).
    Decimal(Decimal),
    /// A float, stored as canonical IEEE-754 bits (see [`Value::float`]).
    Float(CanonicalF64),
    /// UTF-8 text.
    Text(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A calendar date.
    Date(Date),
    /// An instant, UTC, microsecond precision.
    Timestamp(Timestamp),
    /// A UUID as its 16 bytes.
    Uuid([u8; 16]),
    /// A JSON document in canonical text form (see [`CanonicalJson`]).
    Json(CanonicalJson),
}

/// The type of a column, used by schemas and their fingerprints.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    /// True or false ([`Value::Bool`]).
    Bool,
    /// A whole number, signed or unsigned 64-bit ([`Value::Integer`]).
    Integer,
    /// An exact decimal of any precision ([`Value::Decimal`]).
    Decimal,
    /// A 64-bit binary float ([`Value::Float`]).
    Float,
    /// UTF-8 text, compared as exact bytes ([`Value::Text`]).
    Text,
    /// Raw bytes ([`Value::Bytes`]).
    Bytes,
    /// A calendar date ([`Value::Date`]).
    Date,
    /// An instant in UTC, to the microsecond ([`Value::Timestamp`]).
    Timestamp,
    /// A UUID, whatever its storage form ([`Value::Uuid`]).
    Uuid,
    /// A JSON document in canonical form ([`Value::Json`]).
    Json,
}

impl ValueKind {
    /// The lowercase name used in configs, vectors and messages.
    pub fn name(self) -> &'static str {
        match self {
            ValueKind::Bool => "bool",
            ValueKind::Integer => "integer",
            ValueKind::Decimal => "decimal",
            ValueKind::Float => "float",
            ValueKind::Text => "text",
            ValueKind::Bytes => "bytes",
            ValueKind::Date => "date",
            ValueKind::Timestamp => "timestamp",
            ValueKind::Uuid => "uuid",
            ValueKind::Json => "json",
        }
    }

    /// Parses a name as printed by [`ValueKind::name`].
    pub fn from_name(name: &str) -> Option<ValueKind> {
        Some(match name {
            "bool" => ValueKind::Bool,
            "integer" => ValueKind::Integer,
            "decimal" => ValueKind::Decimal,
            "float" => ValueKind::Float,
            "text" => ValueKind::Text,
            "bytes" => ValueKind::Bytes,
            "date" => ValueKind::Date,
            "timestamp" => ValueKind::Timestamp,
            "uuid" => ValueKind::Uuid,
            "json" => ValueKind::Json,
            _ => return None,
        })
    }
}

impl fmt::Display for ValueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Value {
    /// Bytes this value occupies in memory, its heap part included: what
    /// byte budgets of scans and fetches count.
    pub fn mem_bytes(&self) -> usize {
        let heap = match self {
            Value::Text(s) => s.len(),
            Value::Bytes(b) => b.len(),
            Value::Decimal(d) => d.as_str().len(),
            Value::Json(j) => j.as_str().len(),
            _ => 0,
        };
        std::mem::size_of::<Value>() + heap
    }

    /// A float value with `-0.0` folded into `0.0` and every NaN into one NaN.
    pub fn float(x: f64) -> Value {
        Value::Float(CanonicalF64::new(x))
    }

    /// A text value.
    pub fn text(s: impl Into<String>) -> Value {
        Value::Text(s.into())
    }

    /// The kind of this value, or `None` for NULL (which fits every kind).
    pub fn kind(&self) -> Option<ValueKind> {
        Some(match self {
            Value::Null => return None,
            Value::Bool(_) => ValueKind::Bool,
            Value::Integer(_) => ValueKind::Integer,
            Value::Decimal(_) => ValueKind::Decimal,
            Value::Float(_) => ValueKind::Float,
            Value::Text(_) => ValueKind::Text,
            Value::Bytes(_) => ValueKind::Bytes,
            Value::Date(_) => ValueKind::Date,
            Value::Timestamp(_) => ValueKind::Timestamp,
            Value::Uuid(_) => ValueKind::Uuid,
            Value::Json(_) => ValueKind::Json,
        })
    }
}

impl fmt::Display for Value {
    /// A human form for reports: not an encoding, never parsed back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Decimal(d) => f.write_str(d.as_str()),
            Value::Float(x) => write!(f, "{}", x.get()),
            Value::Text(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => write!(f, "0x{}", hex::encode(b)),
            Value::Date(d) => write!(f, "{d}"),
            Value::Timestamp(t) => write!(f, "{t}"),
            Value::Uuid(u) => f.write_str(&format_uuid(u)),
            Value::Json(j) => f.write_str(j.as_str()),
        }
    }
}

/// An `f64` whose bits are canonical: no negative zero, one NaN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CanonicalF64(u64);

impl CanonicalF64 {
    /// The one NaN bit pattern arbor encodes (quiet NaN, positive, zero payload).
    pub const NAN_BITS: u64 = 0x7ff8_0000_0000_0000;

    /// Canonicalises `x`.
    pub fn new(x: f64) -> CanonicalF64 {
        if x.is_nan() {
            CanonicalF64(Self::NAN_BITS)
        } else if x == 0.0 {
            CanonicalF64(0)
        } else {
            CanonicalF64(x.to_bits())
        }
    }

    /// Accepts bits only if they are already canonical.
    pub fn from_canonical_bits(bits: u64) -> Option<CanonicalF64> {
        let c = CanonicalF64::new(f64::from_bits(bits));
        (c.0 == bits).then_some(c)
    }

    /// The float.
    pub fn get(self) -> f64 {
        f64::from_bits(self.0)
    }

    /// The canonical bits.
    pub fn bits(self) -> u64 {
        self.0
    }
}

/// Longest decimal exponent accepted by [`Decimal::parse`]; stops `1e999999999`
/// from turning into a gigabyte of zeros.
pub const MAX_DECIMAL_EXPONENT: i64 = 1024;

/// An exact decimal number in normalised text form.
///
/// Normal form: an optional `-`, the integer digits without leading zeros
/// (`0` when the integer part is zero), then, only when the fraction is not
/// zero, `.` and the fraction digits without trailing zeros. Zero is `0`,
/// never `-0`. So `1.10`, `+1.1`, `01.1` and `0.011e2` all normalise to `1.1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Decimal(String);

impl Decimal {
    /// Parses `[+-]digits[.digits][e[+-]digits]` and normalises it.
    pub fn parse(text: &str) -> Result<Decimal, ValueError> {
        let bad = || ValueError::Decimal(text.to_owned());
        let s = text.trim();
        let (negative, s) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let (mantissa, exponent) = match s.find(['e', 'E']) {
            Some(i) => {
                let exp: i64 = s[i + 1..].parse().map_err(|_| bad())?;
                if exp.abs() > MAX_DECIMAL_EXPONENT {
                    return Err(bad());
                }
                (&s[..i], exp)
            }
            None => (s, 0),
        };
        let (int_part, frac_part) = match mantissa.find('.') {
            Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
            None => (mantissa, ""),
        };
        if int_part.is_empty() && frac_part.is_empty()
            || !int_part.bytes().all(|b| b.is_ascii_digit())
            || !frac_part.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        // All digits, and where the decimal point sits after the exponent.
        let digits: Vec<u8> = int_part.bytes().chain(frac_part.bytes()).collect();
        let point = int_part.len() as i64 + exponent;
        let (int_digits, frac_digits): (Vec<u8>, Vec<u8>) = if point <= 0 {
            let mut frac = vec![b'0'; (-point) as usize];
            frac.extend_from_slice(&digits);
            (Vec::new(), frac)
        } else if point as usize >= digits.len() {
            let mut int = digits.clone();
            int.resize(point as usize, b'0');
            (int, Vec::new())
        } else {
            let (a, b) = digits.split_at(point as usize);
            (a.to_vec(), b.to_vec())
        };
        let int_trimmed: &[u8] = {
            let start = int_digits
                .iter()
                .position(|&d| d != b'0')
                .unwrap_or(int_digits.len());
            &int_digits[start..]
        };
        let frac_trimmed: &[u8] = {
            let end = frac_digits
                .iter()
                .rposition(|&d| d != b'0')
                .map_or(0, |i| i + 1);
            &frac_digits[..end]
        };
        let mut out = String::with_capacity(int_trimmed.len() + frac_trimmed.len() + 3);
        let is_zero = int_trimmed.is_empty() && frac_trimmed.is_empty();
        if negative && !is_zero {
            out.push('-');
        }
        if int_trimmed.is_empty() {
            out.push('0');
        } else {
            out.extend(int_trimmed.iter().map(|&b| b as char));
        }
        if !frac_trimmed.is_empty() {
            out.push('.');
            out.extend(frac_trimmed.iter().map(|&b| b as char));
        }
        Ok(Decimal(out))
    }

    /// Accepts `text` only if it is already in normal form (used by the decoder).
    pub fn from_normalised(text: &str) -> Option<Decimal> {
        is_normalised_decimal(text).then(|| Decimal(text.to_owned()))
    }

    /// The normal form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `text` is a decimal in the normal form of [`Decimal`]: `-?`, the
/// integer digits (`0`, or no leading zero), then `.` and fraction digits
/// ending in a non-zero digit, if any; never `-0`.
pub fn is_normalised_decimal(text: &str) -> bool {
    let b = text.as_bytes();
    let (negative, b) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    let int_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
    let (int, rest) = b.split_at(int_len);
    let int_ok = int == b"0" || (!int.is_empty() && int[0] != b'0');
    let frac_ok = match rest.split_first() {
        None => true,
        Some((b'.', frac)) => {
            frac.iter().all(u8::is_ascii_digit) && frac.last().is_some_and(|&d| d != b'0')
        }
        Some(_) => false,
    };
    let zero = int == b"0" && rest.is_empty();
    int_ok && frac_ok && !(negative && zero)
}

/// A calendar date: days since 1970-01-01 in the proleptic Gregorian calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Date(pub i32);

impl Date {
    /// The date of a civil year, month (1–12) and day (1–31), checked.
    pub fn from_ymd(year: i32, month: u32, day: u32) -> Result<Date, ValueError> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return Err(ValueError::Date(format!("{year:04}-{month:02}-{day:02}")));
        }
        let days = days_from_civil(year as i64, month, day);
        i32::try_from(days)
            .map(Date)
            .map_err(|_| ValueError::Date(format!("{year}-{month}-{day}")))
    }

    /// Parses `YYYY-MM-DD` (a leading `-` for years before 0).
    pub fn parse(text: &str) -> Result<Date, ValueError> {
        let bad = || ValueError::Date(text.to_owned());
        let (neg, body) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let mut parts = body.splitn(3, '-');
        let (y, m, d) = (parts.next(), parts.next(), parts.next());
        let (Some(y), Some(m), Some(d)) = (y, m, d) else {
            return Err(bad());
        };
        if m.len() != 2 || d.len() != 2 || y.len() < 4 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        let day: u32 = d.parse().map_err(|_| bad())?;
        Date::from_ymd(if neg { -year } else { year }, month, day).map_err(|_| bad())
    }

    /// The civil (year, month, day).
    pub fn to_ymd(self) -> (i64, u32, u32) {
        civil_from_days(self.0 as i64)
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.to_ymd();
        write!(f, "{}-{m:02}-{d:02}", Year(y))
    }
}

/// A year as ISO 8601 writes it: at least four digits, `-` before year 0.
struct Year(i64);

impl fmt::Display for Year {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < 0 {
            write!(f, "-{:04}", -self.0)
        } else {
            write!(f, "{:04}", self.0)
        }
    }
}

const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// An instant: microseconds since 1970-01-01T00:00:00Z.
///
/// Microseconds are the finest precision PostgreSQL and MySQL store, so every
/// engine's timestamps fit without rounding; coarser precision is a mapping
/// transform, not part of the encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Parses RFC 3339 (`2024-02-29T23:59:59.123456Z`, `...+05:30`), also with a
    /// space instead of `T`. Without an offset the time is taken as UTC. More
    /// than six fraction digits is an error, not a silent rounding.
    pub fn parse(text: &str) -> Result<Timestamp, ValueError> {
        let bad = || ValueError::Timestamp(text.to_owned());
        let sep = text.find(['T', 't', ' ']).ok_or_else(bad)?;
        let date = Date::parse(&text[..sep]).map_err(|_| bad())?;
        let rest = &text[sep + 1..];
        let (clock, offset_seconds) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
            (c, 0)
        } else if let Some(i) = rest.rfind(['+', '-']) {
            let off = &rest[i + 1..];
            let sign = if rest.as_bytes()[i] == b'-' { -1 } else { 1 };
            let (h, m) = match off.split_once(':') {
                Some((h, m)) => (h, m),
                None if off.len() == 4 => off.split_at(2),
                None if off.len() == 2 => (off, "00"),
                None => return Err(bad()),
            };
            let h: i64 = h.parse().map_err(|_| bad())?;
            let m: i64 = m.parse().map_err(|_| bad())?;
            if h > 23 || m > 59 {
                return Err(bad());
            }
            (&rest[..i], sign * (h * 3600 + m * 60))
        } else {
            (rest, 0)
        };
        let (hms, frac) = match clock.split_once('.') {
            Some((a, b)) => (a, b),
            None => (clock, ""),
        };
        let mut hms_parts = hms.split(':');
        let mut next = || -> Result<i64, ValueError> {
            let p = hms_parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        let (h, mi, s) = (next()?, next()?, next()?);
        if hms_parts.next().is_some() || h > 23 || mi > 59 || s > 59 {
            return Err(bad());
        }
        if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let micros: i64 = if frac.is_empty() {
            0
        } else {
            frac.parse::<i64>().map_err(|_| bad())? * 10i64.pow(6 - frac.len() as u32)
        };
        let seconds = date.0 as i64 * SECONDS_PER_DAY + h * 3600 + mi * 60 + s - offset_seconds;
        seconds
            .checked_mul(MICROS_PER_SECOND)
            .and_then(|us| us.checked_add(micros))
            .map(Timestamp)
            .ok_or_else(bad)
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with exactly six fraction digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(MICROS_PER_SECOND);
        let micros = self.0.rem_euclid(MICROS_PER_SECOND);
        let days = secs.div_euclid(SECONDS_PER_DAY);
        let tod = secs.rem_euclid(SECONDS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            Year(y),
            tod / 3600,
            tod / 60 % 60,
            tod % 60
        )
    }
}

/// Parses a UUID in its 36-character hyphenated form, or 32 hex digits.
pub fn parse_uuid(text: &str) -> Result<[u8; 16], ValueError> {
    let hexdigits: String = text.chars().filter(|&c| c != '-').collect();
    let hyphens_ok = text.len() == 32
        || (text.len() == 36
            && [8, 13, 18, 23]
                .iter()
                .all(|&i| text.as_bytes().get(i) == Some(&b'-')));
    let mut out = [0u8; 16];
    if !hyphens_ok || hex::decode_to_slice(&hexdigits, &mut out).is_err() {
        return Err(ValueError::Uuid(text.to_owned()));
    }
    Ok(out)
}

/// Formats 16 bytes as a lowercase hyphenated UUID.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A JSON document in canonical text form.
///
/// Canonical form: no insignificant white space; object members sorted by the
/// UTF-8 bytes of their names (a repeated name keeps its last value, as most
/// parsers do); strings escaped as `serde_json` writes them; numbers exactly
/// as written, in [`Decimal`]'s normal form (`1.0` → `1`, `1.5e3` → `1500`,
/// `1e-7` → `0.0000001`), never through a 64-bit float, so
/// `12345678901234567890123` and `0.1000000000000000001` keep every digit
/// (canonical encoding v2; v1 rounded numbers beyond 64-bit integers to the
/// nearest float). A number whose exponent is beyond
/// [`MAX_DECIMAL_EXPONENT`] is kept as written, with a lower-case `e`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CanonicalJson(String);

impl CanonicalJson {
    /// Parses any JSON text and canonicalises it.
    pub fn parse(text: &str) -> Result<CanonicalJson, ValueError> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ValueError::Json(e.to_string()))?;
        Ok(CanonicalJson::from_value(&v))
    }

    /// Canonicalises an already parsed JSON value.
    pub fn from_value(v: &serde_json::Value) -> CanonicalJson {
        let mut out = String::new();
        write_canonical_json(v, &mut out);
        CanonicalJson(out)
    }

    /// Accepts `text` only if it is already canonical (used by the decoder).
    pub fn from_canonical(text: &str) -> Option<CanonicalJson> {
        let c = CanonicalJson::parse(text).ok()?;
        (c.0 == text).then_some(c)
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn write_canonical_json(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value as J;
    match v {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Number(n) => {
            // With serde_json's `arbitrary_precision`, a number is its text.
            let text = n.to_string();
            match Decimal::parse(&text) {
                Ok(d) => out.push_str(d.as_str()),
                Err(_) => out.push_str(&huge_exponent_number(&text)),
            }
        }
        J::String(s) => push_json_string(s, out),
        J::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical_json(item, out);
            }
            out.push(']');
        }
        J::Object(map) => {
            // Sort explicitly: serde_json's map keeps insertion order when any
            // crate in the build enables `preserve_order`.
            let mut members: Vec<(&String, &serde_json::Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_string(k, out);
                out.push(':');
                write_canonical_json(item, out);
            }
            out.push('}');
        }
    }
}

/// A JSON number whose exponent is too large to expand: its mantissa in
/// [`Decimal`]'s normal form, `e`, and the exponent without `+` or leading
/// zeros (`1.50E+2000` → `1.5e2000`).
fn huge_exponent_number(text: &str) -> String {
    let (mantissa, exponent) = text.split_at(text.find(['e', 'E']).unwrap_or(text.len()));
    let mantissa = Decimal::parse(mantissa).map_or_else(|_| mantissa.to_owned(), |d| d.0);
    let exponent = exponent.get(1..).unwrap_or("");
    let (sign, digits) = match exponent.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", exponent.strip_prefix('+').unwrap_or(exponent)),
    };
    let digits = digits.trim_start_matches('0');
    format!(
        "{mantissa}e{sign}{}",
        if digits.is_empty() { "0" } else { digits }
    )
}

fn push_json_string(s: &str, out: &mut String) {
    // Serialising a &str cannot fail.
    out.push_str(&serde_json::to_string(s).expect("a string always serialises"));
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count (inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_numbers_keep_every_digit_in_one_normal_form() {
        let c = |t: &str| CanonicalJson::parse(t).unwrap().as_str().to_owned();
        for (a, b) in [
            ("12345678901234567890123", "12345678901234567890124"),
            ("{\"x\":0.1000000000000000001}", "{\"x\":0.1}"),
            ("18446744073709551617", "18446744073709551616"),
            ("0.30000000000000001", "0.3"),
        ] {
            assert_ne!(c(a), c(b), "{a} and {b} are different numbers");
        }
        for (a, b) in [
            ("1.0", "1"),
            ("1.5e3", "1500"),
            ("1E-7", "0.0000001"),
            ("-0.0", "0"),
            ("[1.10, 2.5e0]", "[1.1,2.5]"),
        ] {
            assert_eq!(c(a), c(b), "{a} and {b} are the same number");
        }
        assert_eq!(
            c("12345678901234567890.123456789"),
            "12345678901234567890.123456789"
        );
        // Beyond the decimal exponent limit: kept as written, not expanded.
        assert_eq!(c("1E2000"), "1e2000");
        assert_eq!(c("1.50E+02000"), "1.5e2000");
        assert_eq!(c("-2e-3000"), "-2e-3000");
        assert!(CanonicalJson::from_canonical("1.0").is_none());
        assert!(CanonicalJson::from_canonical("1").is_some());
    }

    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The fast normal-form check agrees with normalising and comparing.
        #[test]
        fn normal_form_check_agrees_with_parse(text in "[-+]?[0-9]{0,4}(\\.[0-9]{0,4})?") {
            let by_parse = Decimal::parse(&text).is_ok_and(|d| d.as_str() == text);
            prop_assert_eq!(is_normalised_decimal(&text), by_parse, "{:?}", text);
        }
    }

    #[test]
    fn decimals_normalise() {
        for (input, want) in [
            ("1.10", "1.1"),
            ("+1.1", "1.1"),
            ("01.100", "1.1"),
            ("0.011e2", "1.1"),
            ("-0.000", "0"),
            ("0", "0"),
            (".5", "0.5"),
            ("5.", "5"),
            (
                "-12345678901234567890123456789.000100",
                "-12345678901234567890123456789.0001",
            ),
            ("1e3", "1000"),
            ("1.5E-3", "0.0015"),
            ("100", "100"),
        ] {
            assert_eq!(Decimal::parse(input).unwrap().as_str(), want, "{input}");
        }
        for bad in ["", ".", "-", "1.2.3", "abc", "1e", "1e99999", "1,5", "--1"] {
            assert!(Decimal::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn floats_canonicalise() {
        assert_eq!(Value::float(-0.0), Value::float(0.0));
        assert_eq!(Value::float(f64::NAN), Value::float(-f64::NAN));
        assert_ne!(Value::float(1.0), Value::float(1.0 + f64::EPSILON));
        assert!(CanonicalF64::from_canonical_bits((-0.0f64).to_bits()).is_none());
    }

    #[test]
    fn dates_round_trip_through_the_calendar() {
        assert_eq!(Date::parse("1970-01-01").unwrap(), Date(0));
        assert_eq!(Date::parse("2000-03-01").unwrap(), Date(11_017));
        assert_eq!(Date::parse("1969-12-31").unwrap(), Date(-1));
        assert!(Date::parse("2023-02-29").is_err());
        assert!(Date::parse("2024-02-29").is_ok());
        for days in (-800_000..800_000).step_by(997) {
            let d = Date(days);
            assert_eq!(Date::parse(&d.to_string()).unwrap(), d);
        }
    }

    #[test]
    fn timestamps_parse_offsets_and_precision() {
        let utc = Timestamp::parse("2024-02-29T23:59:59.123456Z").unwrap();
        assert_eq!(
            Timestamp::parse("2024-03-01T05:29:59.123456+05:30").unwrap(),
            utc
        );
        assert_eq!(Timestamp::parse("2024-02-29 23:59:59.123456").unwrap(), utc);
        assert_eq!(utc.to_string(), "2024-02-29T23:59:59.123456Z");
        assert_eq!(
            Timestamp::parse("1970-01-01T00:00:00Z").unwrap(),
            Timestamp(0)
        );
        assert_eq!(
            Timestamp::parse("1969-12-31T23:59:59.5Z").unwrap(),
            Timestamp(-500_000)
        );
        assert!(Timestamp::parse("2024-01-01T00:00:00.1234567Z").is_err());
        assert!(Timestamp::parse("2024-01-01T24:00:00Z").is_err());
        assert!(Timestamp::parse("2024-01-01").is_err());
    }

    #[test]
    fn json_is_canonical() {
        let a = CanonicalJson::parse(r#"{ "b": [1.0, 2.5, {"z":null,"a":true}], "a": "x\u00e9" }"#)
            .unwrap();
        let b = CanonicalJson::parse(r#"{"a":"xé","b":[1,2.5,{"a":true,"z":null}]}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), r#"{"a":"xé","b":[1,2.5,{"a":true,"z":null}]}"#);
        assert!(CanonicalJson::from_canonical(a.as_str()).is_some());
        assert!(CanonicalJson::from_canonical(r#"{"b":1,"a":2}"#).is_none());
        assert!(CanonicalJson::parse("{").is_err());
    }

    #[test]
    fn uuids_parse_both_forms() {
        let a = parse_uuid("123e4567-e89b-12d3-a456-426614174000").unwrap();
        let b = parse_uuid("123E4567E89B12D3A456426614174000").unwrap();
        assert_eq!(a, b);
        assert_eq!(format_uuid(&a), "123e4567-e89b-12d3-a456-426614174000");
        assert!(parse_uuid("123e4567-e89b-12d3-a456-42661417400").is_err());
        assert!(parse_uuid("123e4567e-89b-12d3-a456-426614174000").is_err());
    }
}
