//! Per-column transforms: how a system's values are brought to the form
//! both sides agree on, before hashing. They are the place for deliberate,
//! lossy normalisation (the canonical encoding itself never loses anything):
//!
//! ```toml
//! { source = "email", kind = "text", transform = { trim = true, case = "lower", empty_as_null = true } }
//! { source = "name", kind = "text", transform = { unicode = "nfc" } }   # café = cafe\u{301}
//! { source = "amount", kind = "decimal", transform = { scale = 2 } }    # half away from zero
//! { source = "ratio", kind = "float", transform = { round = 6 } }       # 6 decimal digits
//! { source = "seen", kind = "timestamp", transform = { precision = "ms", offset = "+02:00" } }
//! ```
//!
//! Key columns take the text transforms that define an identity (Unicode
//! form, `trim`, `trim_end`, `case`): what a case- or accent-blind
//! collation does inside a database, done the same way on every engine
//! (see [`Transforms::check_key`] and `docs/config.md`).
//!
//! Order: NULL/empty handling, then Unicode normalisation, trim and case,
//! then the numeric and time rules. `offset` says which fixed UTC offset a zone-less timestamp was
//! written in; `precision` truncates toward the past.

use arbor_record::value::{Decimal, Timestamp};
use arbor_record::{Value, ValueKind};
use serde::{Deserialize, Serialize};

/// Letter case folding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Case {
    /// Unicode lower case.
    Lower,
    /// Unicode upper case.
    Upper,
}

/// A Unicode normalisation form (UAX #15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum UnicodeForm {
    /// Canonical composition: `e` + U+0301 becomes `é`; what most systems
    /// store.
    Nfc,
    /// Compatibility composition: also folds look-alikes (`ﬁ` → `fi`, full
    /// width digits → ASCII).
    Nfkc,
}

/// Timestamp precision to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Whole seconds.
    S,
    /// Milliseconds.
    Ms,
    /// Microseconds (what the encoding keeps anyway).
    Us,
}

/// The transforms of one column; all off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Transforms {
    /// Text: strip leading and trailing white space.
    #[serde(default)]
    pub trim: bool,
    /// Text: strip trailing spaces (U+0020) only, as MySQL's and
    /// MariaDB's PAD SPACE collations ignore them when comparing.
    #[serde(default)]
    pub trim_end: bool,
    /// Text: fold letter case.
    #[serde(default)]
    pub case: Option<Case>,
    /// Text: bring to this Unicode normalisation form, so that `café`
    /// written precomposed and decomposed compare equal.
    #[serde(default)]
    pub unicode: Option<UnicodeForm>,
    /// Text: read `""` (after trimming) as NULL.
    #[serde(default)]
    pub empty_as_null: bool,
    /// Text: read NULL as `""`.
    #[serde(default)]
    pub null_as_empty: bool,
    /// Decimal: round to this many fraction digits (half away from zero).
    #[serde(default)]
    pub scale: Option<u32>,
    /// Float: round to this many decimal digits.
    #[serde(default)]
    pub round: Option<u32>,
    /// Timestamp: keep this precision (truncating).
    #[serde(default)]
    pub precision: Option<Precision>,
    /// Timestamp: the fixed UTC offset (`+02:00`) zone-less values were
    /// written in. Values read with an explicit offset are already UTC.
    #[serde(default)]
    pub offset: Option<String>,
}

impl Transforms {
    /// Checks the transforms fit the column's kind; returns the offset in
    /// seconds, if any.
    pub fn check(&self, kind: ValueKind) -> Result<(), String> {
        let text_only = self.trim
            || self.trim_end
            || self.case.is_some()
            || self.unicode.is_some()
            || self.empty_as_null
            || self.null_as_empty;
        if text_only && kind != ValueKind::Text {
            return Err(format!(
                "trim, trim_end, case, unicode, empty_as_null and null_as_empty apply to text, not {kind}"
            ));
        }
        if self.empty_as_null && self.null_as_empty {
            return Err("empty_as_null and null_as_empty contradict each other".into());
        }
        if self.scale.is_some() && kind != ValueKind::Decimal {
            return Err(format!("scale applies to decimal, not {kind}"));
        }
        if self.round.is_some() && kind != ValueKind::Float {
            return Err(format!("round applies to float, not {kind}"));
        }
        if (self.precision.is_some() || self.offset.is_some()) && kind != ValueKind::Timestamp {
            return Err(format!(
                "precision and offset apply to timestamp, not {kind}"
            ));
        }
        if let Some(o) = &self.offset {
            offset_seconds(o)?;
        }
        if self.scale.is_some_and(|s| s > 1000) || self.round.is_some_and(|r| r > 17) {
            return Err("scale is at most 1000 and round at most 17".into());
        }
        Ok(())
    }

    /// Checks the transforms may shape a key column: only those that
    /// define which spellings are one key (Unicode form, trims, case); a
    /// key is never NULL, rounded or shifted.
    pub fn check_key(&self, kind: ValueKind) -> Result<(), String> {
        self.check(kind)?;
        let identity_only = Transforms {
            trim: self.trim,
            trim_end: self.trim_end,
            case: self.case,
            unicode: self.unicode,
            ..Transforms::default()
        };
        if *self != identity_only {
            return Err(
                "a key column takes only unicode, trim, trim_end and case: a key is never NULL, rounded or shifted"
                    .into(),
            );
        }
        Ok(())
    }

    /// What a key column's transforms do, for the schema fingerprint (two
    /// peers compare keys only if they shape them alike); `None` for none.
    pub fn key_form(&self) -> Option<String> {
        let mut parts = Vec::new();
        match self.unicode {
            Some(UnicodeForm::Nfc) => parts.push("nfc"),
            Some(UnicodeForm::Nfkc) => parts.push("nfkc"),
            None => {}
        }
        if self.trim {
            parts.push("trim");
        }
        if self.trim_end {
            parts.push("trim_end");
        }
        match self.case {
            Some(Case::Lower) => parts.push("lower"),
            Some(Case::Upper) => parts.push("upper"),
            None => {}
        }
        (!parts.is_empty()).then(|| parts.join("+"))
    }

    /// Whether nothing is set.
    pub fn is_identity(&self) -> bool {
        *self == Transforms::default()
    }

    /// Applies the transforms to one value of a column of this kind:
    /// [`Transforms::apply_exact`], then [`Transforms::apply_lossy`].
    pub fn apply(&self, value: Value) -> Value {
        self.apply_lossy(self.apply_exact(value))
    }

    /// The transforms that lose nothing, only restate a value: `offset`
    /// (a zone-less timestamp written at +02:00 is this instant in UTC).
    /// A repair writes source values in this form, never the lossy one.
    pub fn apply_exact(&self, value: Value) -> Value {
        match value {
            Value::Timestamp(t) if self.offset_us() != 0 => {
                Value::Timestamp(Timestamp(t.0 - self.offset_us()))
            }
            other => other,
        }
    }

    /// [`Transforms::apply_exact`] undone: the value as this column stores
    /// it (a UTC instant written back at the column's offset).
    pub fn unapply_exact(&self, value: Value) -> Value {
        match value {
            Value::Timestamp(t) if self.offset_us() != 0 => {
                Value::Timestamp(Timestamp(t.0 + self.offset_us()))
            }
            other => other,
        }
    }

    /// Whether a transform loses information (trims, case, Unicode form,
    /// NULL and empty, rounding, precision): then two stored values may
    /// compare equal, and only the stored one may be written.
    pub fn is_lossy(&self) -> bool {
        // Every field but `offset`, spelled out: this runs per value a
        // repair checks, and must not allocate.
        let Transforms {
            trim,
            trim_end,
            case,
            unicode,
            empty_as_null,
            null_as_empty,
            scale,
            round,
            precision,
            offset: _,
        } = self;
        *trim
            || *trim_end
            || case.is_some()
            || unicode.is_some()
            || *empty_as_null
            || *null_as_empty
            || scale.is_some()
            || round.is_some()
            || precision.is_some()
    }

    /// This column's exact transforms alone (see [`Transforms::apply_exact`]).
    pub fn exact_only(&self) -> Transforms {
        Transforms {
            offset: self.offset.clone(),
            ..Transforms::default()
        }
    }

    /// The offset in microseconds east of UTC (checked at start-up: a bad
    /// one never reaches here).
    fn offset_us(&self) -> i64 {
        self.offset
            .as_deref()
            .and_then(|o| offset_seconds(o).ok())
            .unwrap_or(0)
            * 1_000_000
    }

    /// The transforms that may lose information, applied to a value
    /// already in exact form.
    pub fn apply_lossy(&self, value: Value) -> Value {
        match value {
            Value::Null if self.null_as_empty => Value::text(""),
            Value::Text(mut s) => {
                use unicode_normalization::UnicodeNormalization;
                match self.unicode {
                    Some(UnicodeForm::Nfc) => s = s.nfc().collect(),
                    Some(UnicodeForm::Nfkc) => s = s.nfkc().collect(),
                    None => {}
                }
                if self.trim {
                    s = s.trim().to_owned();
                }
                if self.trim_end {
                    s.truncate(s.trim_end_matches(' ').len());
                }
                match self.case {
                    Some(Case::Lower) => s = s.to_lowercase(),
                    Some(Case::Upper) => s = s.to_uppercase(),
                    None => {}
                }
                if self.empty_as_null && s.is_empty() {
                    Value::Null
                } else {
                    Value::Text(s)
                }
            }
            Value::Decimal(d) => match self.scale {
                Some(scale) => Value::Decimal(round_decimal(&d, scale)),
                None => Value::Decimal(d),
            },
            Value::Float(x) => match self.round {
                Some(digits) if x.get().is_finite() => Value::float(
                    format!("{:.*}", digits as usize, x.get())
                        .parse::<f64>()
                        .unwrap_or(x.get()),
                ),
                _ => Value::Float(x),
            },
            Value::Timestamp(t) => {
                let mut us = t.0;
                let unit = match self.precision {
                    Some(Precision::S) => 1_000_000,
                    Some(Precision::Ms) => 1_000,
                    Some(Precision::Us) | None => 1,
                };
                us -= us.rem_euclid(unit);
                Value::Timestamp(Timestamp(us))
            }
            other => other,
        }
    }
}

/// `+02:00`, `-0530`, `Z` → seconds east of UTC.
fn offset_seconds(o: &str) -> Result<i64, String> {
    if o == "Z" || o == "+00:00" || o == "UTC" {
        return Ok(0);
    }
    let bad = || format!("offset {o:?} is not ±HH:MM");
    let (sign, rest) = match o.as_bytes().first() {
        Some(b'+') => (1, &o[1..]),
        Some(b'-') => (-1, &o[1..]),
        _ => return Err(bad()),
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let h: i64 = digits[..2].parse().map_err(|_| bad())?;
    let m: i64 = digits[2..].parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

/// Rounds a normalised decimal to `scale` fraction digits, half away from zero.
fn round_decimal(d: &Decimal, scale: u32) -> Decimal {
    let text = d.as_str();
    let (negative, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if frac.len() <= scale as usize {
        return d.clone();
    }
    let keep = &frac[..scale as usize];
    let round_up = frac.as_bytes()[scale as usize] >= b'5';
    // Work on the digits as one integer string, then put the point back.
    let mut digits: Vec<u8> = int.bytes().chain(keep.bytes()).collect();
    if round_up {
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, b'1');
                break;
            }
            i -= 1;
            if digits[i] == b'9' {
                digits[i] = b'0';
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let split = digits.len() - scale as usize;
    let (i, f) = digits.split_at(split);
    let rebuilt = format!(
        "{}{}.{}",
        if negative { "-" } else { "" },
        String::from_utf8_lossy(i),
        String::from_utf8_lossy(f)
    );
    // Re-normalise: trailing zeros and "-0" go away.
    Decimal::parse(&rebuilt).unwrap_or_else(|_| d.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Value {
        Value::Decimal(Decimal::parse(s).unwrap())
    }

    #[test]
    fn text_transforms() {
        let t = Transforms {
            trim: true,
            case: Some(Case::Lower),
            empty_as_null: true,
            ..Transforms::default()
        };
        assert_eq!(
            t.apply(Value::text("  Ada@Example.COM ")),
            Value::text("ada@example.com")
        );
        assert_eq!(t.apply(Value::text("   ")), Value::Null);
        let n = Transforms {
            null_as_empty: true,
            ..Transforms::default()
        };
        assert_eq!(n.apply(Value::Null), Value::text(""));
    }

    #[test]
    fn keys_take_only_the_transforms_that_define_an_identity() {
        let key = Transforms {
            unicode: Some(UnicodeForm::Nfc),
            trim_end: true,
            case: Some(Case::Lower),
            ..Transforms::default()
        };
        assert_eq!(key.check_key(ValueKind::Text), Ok(()));
        assert_eq!(key.key_form().as_deref(), Some("nfc+trim_end+lower"));
        assert_eq!(Transforms::default().key_form(), None);
        // Trailing spaces only, as PAD SPACE collations compare.
        assert_eq!(
            key.apply(Value::text(" Cafe\u{301}\t  ")),
            Value::text(" café\t")
        );
        for refused in [
            Transforms {
                empty_as_null: true,
                ..Transforms::default()
            },
            Transforms {
                null_as_empty: true,
                ..Transforms::default()
            },
        ] {
            assert!(
                refused
                    .check_key(ValueKind::Text)
                    .unwrap_err()
                    .contains("only unicode, trim, trim_end and case")
            );
        }
        assert!(key.check_key(ValueKind::Integer).is_err());
    }

    #[test]
    fn unicode_forms_make_composed_and_decomposed_text_meet() {
        let nfc = Transforms {
            unicode: Some(UnicodeForm::Nfc),
            ..Transforms::default()
        };
        assert_eq!(nfc.apply(Value::text("cafe\u{301}")), Value::text("café"));
        assert_eq!(nfc.apply(Value::text("café")), Value::text("café"));
        // NFC keeps compatibility characters; NFKC folds them.
        assert_eq!(nfc.apply(Value::text("ﬁ１")), Value::text("ﬁ１"));
        let nfkc = Transforms {
            unicode: Some(UnicodeForm::Nfkc),
            case: Some(Case::Lower),
            ..Transforms::default()
        };
        assert_eq!(nfkc.apply(Value::text("ＦＩ ﬁ１")), Value::text("fi fi1"));
        assert!(
            nfc.check(ValueKind::Integer)
                .unwrap_err()
                .contains("unicode")
        );
    }

    #[test]
    fn decimal_scale_rounds_half_away_from_zero() {
        let t = Transforms {
            scale: Some(2),
            ..Transforms::default()
        };
        assert_eq!(t.apply(dec("1.005")), dec("1.01"));
        assert_eq!(t.apply(dec("-1.005")), dec("-1.01"));
        assert_eq!(t.apply(dec("9.999")), dec("10"));
        assert_eq!(t.apply(dec("1.004")), dec("1"));
        assert_eq!(t.apply(dec("-0.001")), dec("0"));
        assert_eq!(t.apply(dec("12")), dec("12"));
    }

    #[test]
    fn float_and_timestamp_transforms() {
        let f = Transforms {
            round: Some(2),
            ..Transforms::default()
        };
        assert_eq!(f.apply(Value::float(0.1 + 0.2)), Value::float(0.3));
        let ts = Transforms {
            precision: Some(Precision::Ms),
            offset: Some("+02:00".into()),
            ..Transforms::default()
        };
        let local = Value::Timestamp(Timestamp::parse("2024-01-01T12:00:00.123456Z").unwrap());
        assert_eq!(
            ts.apply(local),
            Value::Timestamp(Timestamp::parse("2024-01-01T10:00:00.123Z").unwrap())
        );
        let before_epoch = Transforms {
            precision: Some(Precision::S),
            ..Transforms::default()
        };
        assert_eq!(
            before_epoch.apply(Value::Timestamp(Timestamp(-1))),
            Value::Timestamp(Timestamp(-1_000_000))
        );
    }

    #[test]
    fn transforms_must_fit_their_kind() {
        let t = Transforms {
            trim: true,
            ..Transforms::default()
        };
        assert!(t.check(ValueKind::Integer).is_err());
        assert!(t.check(ValueKind::Text).is_ok());
        let o = Transforms {
            offset: Some("+25:00".into()),
            ..Transforms::default()
        };
        assert!(o.check(ValueKind::Timestamp).is_err());
    }
}
